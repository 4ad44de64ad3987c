//! The keeper's runtime: syncs the enclave with the committed epochs, asks [`super::plan`] what
//! to do, and executes the steps (enclave calls, Raft writes, FetchShare calls).

use super::plan::{plan, EnclaveView, Membership, PlanConfig, SealView, Step};
use crate::clock;
use crate::enclave::{DealingPublic, Enclave, Recipient};
use crate::epochs::{commitments, dealing_ctx, envelope, wrapped};
use crate::peer::client::{fetch_share, SharePeer};
use gatekeeper_raft::replica::Replica;
use gatekeeper_raft::state::{
    Bytes32, Command, DealingRecord, EpochRecord, EpochStatus, GatekeeperState, HexBytes, Lane,
    MemberRecord, SealedShare,
};
use keyring::{GatekeeperId, Sr25519PublicKey};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// "Not dealing" lines, at most one a minute.
static BLOCKED: gatekeeper_raft::lograte::LogGate =
    gatekeeper_raft::lograte::LogGate::new(std::time::Duration::from_secs(60));

/// Shared handles the keeper works with.
#[derive(Clone)]
pub struct Keeper {
    /// This node's replica.
    pub replica: Replica,
    /// This node's enclave.
    pub enclave: Arc<dyn Enclave>,
    /// Seal status for `admin status`.
    pub seal: Arc<Mutex<SealView>>,
    /// Raft address of this node.
    pub raft_address: String,
    /// API address of this node.
    pub api_address: String,
    /// Admin address of this node (registered so followers can name the leader's).
    pub admin_address: String,
    /// Request deadline for peer calls.
    pub request_timeout: Duration,
    /// The planner's settings.
    pub config: PlanConfig,
    /// The node's TLS material towards peers (none: development plaintext); its key is
    /// registered in the member record.
    pub tls: Option<crate::tls::NodeTls>,
}

fn dealing_record(p: &DealingPublic, recipients: &[Recipient]) -> DealingRecord {
    DealingRecord {
        generation: p.generation,
        commitments: p
            .commitments
            .as_slice()
            .iter()
            .map(|c| Bytes32(*c))
            .collect(),
        wrapped_nonce: HexBytes(p.wrapped.nonce.to_vec()),
        wrapped_ciphertext: HexBytes(p.wrapped.ciphertext.clone()),
        shares: p
            .shares
            .iter()
            .map(|(node_id, index, env)| SealedShare {
                node_id: *node_id,
                index: *index,
                encapped_key: Bytes32(env.encapped_key),
                ciphertext: HexBytes(env.ciphertext.clone()),
                recipient_hpke: recipients
                    .iter()
                    .find(|r| r.node_id == *node_id)
                    .map(|r| Bytes32(*r.hpke.as_bytes()))
                    .unwrap_or_default(),
            })
            .collect(),
        acked: BTreeSet::new(),
    }
}

impl Keeper {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.tick().await {
                tracing::debug!(error = %e, "keeper step did not complete; will retry");
            }
            tokio::select! {
                _ = stop.wait_for(|v| *v) => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn write(&self, c: Command) -> Result<(), String> {
        let out = self
            .replica
            .write(&c, Lane::Keeper)
            .await
            .map_err(|e| e.to_string())?;
        match out.reply {
            gatekeeper_raft::state::Reply::Rejected { code, message } => {
                Err(format!("{code:?}: {message}"))
            }
            _ => Ok(()),
        }
    }

    /// Promotes masters dealt here once committed and drops held masters that are not the
    /// committed ones, then reads what the enclave holds.
    fn sync_enclave(&self, state: &GatekeeperState) -> EnclaveView {
        let mut view = EnclaveView {
            identity: Bytes32(*self.enclave.identity_public_key().as_bytes()),
            hpke: Bytes32(*self.enclave.hpke_public_key().as_bytes()),
            tls_spki: self.tls_spki().map(Bytes32),
            ..Default::default()
        };
        for e in state.epochs.values() {
            if matches!(e.status, EpochStatus::Retired | EpochStatus::Aborted) {
                continue;
            }
            if let Ok(pk) = Sr25519PublicKey::from_slice(&e.master_public_key.0) {
                self.enclave.confirm_epoch(e.epoch, &pk);
            }
            if self.enclave.has_master(e.epoch) {
                view.masters.insert(e.epoch);
            }
            view.shares.insert(
                e.epoch,
                self.enclave.held_shares(e.epoch, e.dealing.generation),
            );
        }
        view
    }

    /// One pass: plan, then execute. Public for tests.
    pub async fn tick(&self) -> Result<(), String> {
        let status = self.replica.status();
        let me = self.replica.node_id;
        // The keeper reads members, epochs, rotations and sequences, never the registries.
        let state: GatekeeperState = self.replica.sm.read().state.without_registries();
        let membership = Membership {
            members: status.members.iter().map(|m| (m.id, m.voter)).collect(),
            leader: status.leader_id,
        };
        let enclave = self.sync_enclave(&state);
        let steps = plan(
            me,
            &state,
            &membership,
            &enclave,
            &self.config,
            clock::now_ms(),
        );
        let mut failed_epochs = BTreeSet::new();
        for step in steps {
            match step.epoch() {
                Some(e) if failed_epochs.contains(&e) => continue,
                Some(e) => {
                    if let Err(x) = self.execute(&state, step).await {
                        tracing::debug!(epoch = e, error = %x, "epoch step did not complete; will retry");
                        failed_epochs.insert(e);
                    }
                }
                None => self.execute(&state, step).await?,
            }
        }
        // An unseal that completed in this pass shows at once.
        let active = crate::epochs::active_epochs(&state);
        if crate::epochs::holds_every(self.enclave.as_ref(), &active) {
            self.set_seal("unsealed", 0, 0, 0);
        }
        Ok(())
    }

    fn gatekeeper_id(state: &GatekeeperState) -> Result<Bytes32, String> {
        state
            .gatekeeper_id
            .ok_or_else(|| "not initialised".to_string())
    }

    fn epoch(state: &GatekeeperState, epoch: u64) -> Result<&EpochRecord, String> {
        state
            .epochs
            .get(&epoch)
            .ok_or_else(|| format!("no epoch {epoch}"))
    }

    /// Runs one step, in a `keeper.<step>` span when traces are on (dealing, rotation,
    /// re-dealing, unsealing: the work an operator follows in a trace).
    async fn execute(&self, state: &GatekeeperState, step: Step) -> Result<(), String> {
        use tracing::Instrument;
        let span = match (&step, crate::traces::enabled()) {
            (Step::Seal(_) | Step::Blocked { .. }, _) | (_, false) => tracing::Span::none(),
            (s, true) => tracing::info_span!(
                "keeper.step",
                otel.name = format!("keeper.{}", s.name()),
                epoch = s.epoch()
            ),
        };
        self.execute_step(state, step).instrument(span).await
    }

    async fn execute_step(&self, state: &GatekeeperState, step: Step) -> Result<(), String> {
        match step {
            Step::Seal(s) => {
                self.set_seal(s, 0, 0, 0);
                Ok(())
            }
            Step::Register => self.register().await,
            Step::Blocked { refused } => {
                // Planned on every tick (200 ms) while it lasts: one line a minute.
                if let Some(n) = BLOCKED.pass(std::time::Instant::now()) {
                    tracing::warn!(
                        ?refused,
                        ticks_since_last_line = n,
                        "not dealing: member evidence fails the member policy"
                    );
                }
                Ok(())
            }
            Step::DealGenesis {
                threshold,
                recipients,
                imported,
            } => {
                tracing::info!(epoch = 0, threshold, imported, "dealing genesis epoch");
                self.deal(state, 0, threshold, &recipients, imported).await
            }
            Step::RemoveMember { node_id } => {
                tracing::info!(node = node_id, "removing the record of a departed member");
                self.write(Command::RemoveMember { node_id }).await
            }
            Step::AbortRotation {
                rotation_id,
                reason,
            } => {
                tracing::warn!(rotation = %rotation_id, %reason, "aborting rotation");
                self.write(Command::AbortRotation {
                    rotation_id,
                    reason,
                })
                .await
            }
            Step::DealRotation {
                epoch,
                rotation_id,
                threshold,
                recipients,
            } => {
                tracing::info!(epoch, rotation = %rotation_id, "dealing rotation epoch");
                self.deal(state, epoch, threshold, &recipients, false).await
            }
            Step::StartRotation {
                rotation_id,
                requested_at_ms,
                deadline_ms,
            } => {
                tracing::info!(rotation = %rotation_id, "starting a queued rotation");
                self.write(Command::StartRotation {
                    rotation_id,
                    requested_at_ms,
                    deadline_ms,
                })
                .await
            }
            Step::Redeal {
                epoch,
                generation,
                threshold,
                recipients,
            } => {
                let gk = Self::gatekeeper_id(state)?;
                let p = self
                    .enclave
                    .redeal(
                        GatekeeperId(gk.0),
                        epoch,
                        generation,
                        threshold,
                        &recipients,
                    )
                    .map_err(|x| x.to_string())?;
                tracing::info!(epoch, generation, "re-dealing to the new member set");
                self.write(Command::Redeal {
                    epoch,
                    dealing: dealing_record(&p, &recipients),
                })
                .await
            }
            Step::OpenOwnShare { epoch, ack } => {
                let e = Self::epoch(state, epoch)?;
                let gk = Self::gatekeeper_id(state)?;
                let me = self.replica.node_id;
                let mine = e
                    .dealing
                    .shares
                    .iter()
                    .find(|s| s.node_id == me)
                    .ok_or("no share for this node")?;
                let ctx = dealing_ctx(&gk, e).map_err(|x| x.to_string())?;
                let comm = commitments(&e.dealing).map_err(|x| x.to_string())?;
                match self
                    .enclave
                    .accept_own_share(&ctx, &comm, mine.index, &envelope(mine))
                {
                    Ok(()) if ack => self.ack(epoch, e.dealing.generation).await,
                    Ok(()) => Ok(()),
                    Err(x) => {
                        // E.g. sealed to this node's previous enclave key (wiped and rejoined):
                        // the leader re-deals; meanwhile unseal from peers.
                        tracing::debug!(epoch, error = %x, "own share does not open");
                        Ok(())
                    }
                }
            }
            Step::Ack { epoch, generation } => self.ack(epoch, generation).await,
            Step::Unseal {
                epoch,
                threshold,
                peers,
            } => {
                let gk = Self::gatekeeper_id(state)?;
                self.unseal(state, &gk, Self::epoch(state, epoch)?, threshold, &peers)
                    .await
            }
        }
    }

    fn tls_spki(&self) -> Option<[u8; 32]> {
        self.tls.as_ref().map(|t| t.spki())
    }

    async fn register(&self) -> Result<(), String> {
        let identity = Bytes32(*self.enclave.identity_public_key().as_bytes());
        let hpke = self.enclave.hpke_public_key();
        let tls_spki = self.tls_spki();
        let rd = crate::attestation::member_report_data(&identity.0, &hpke, tls_spki.as_ref());
        let attestation = self
            .enclave
            .evidence(&rd)
            .map(|(_, e)| e)
            .unwrap_or_default();
        self.write(Command::UpsertMember(MemberRecord {
            node_id: self.replica.node_id,
            raft_address: self.raft_address.clone(),
            api_address: self.api_address.clone(),
            identity_public_key: identity,
            hpke_public_key: Bytes32(*hpke.as_bytes()),
            attestation: HexBytes(attestation),
            tls_spki: tls_spki.map(Bytes32),
            admin_address: Some(self.admin_address.clone()),
        }))
        .await
    }

    async fn ack(&self, epoch: u64, generation: u64) -> Result<(), String> {
        self.write(Command::AckShare {
            epoch,
            generation,
            node_id: self.replica.node_id,
        })
        .await
    }

    fn set_seal(&self, state: &str, collected: u32, threshold: u32, epoch: u64) {
        *self.seal.lock().expect("seal lock") = SealView {
            state: state.into(),
            collected,
            threshold,
            epoch,
        };
    }

    /// Has the enclave create `epoch`'s master (the staged import when `imported`) and commit its
    /// dealing to `recipients`.
    async fn deal(
        &self,
        state: &GatekeeperState,
        epoch: u64,
        t: usize,
        recipients: &[Recipient],
        imported: bool,
    ) -> Result<(), String> {
        let gk = Self::gatekeeper_id(state)?;
        let p = self
            .enclave
            .create_epoch(GatekeeperId(gk.0), epoch, t, recipients, imported)
            .map_err(|e| e.to_string())?;
        let p = &p;
        self.write(Command::InstallEpoch(EpochRecord {
            epoch,
            threshold: u8::try_from(t).map_err(|_| "threshold above 255".to_string())?,
            master_public_key: Bytes32(*p.master_public_key.as_bytes()),
            cluster_signing_public_key: Bytes32(*p.cluster_signing_public_key.as_bytes()),
            status: EpochStatus::Dealing,
            dealing: dealing_record(p, recipients),
        }))
        .await
    }

    async fn unseal(
        &self,
        state: &GatekeeperState,
        gk: &Bytes32,
        e: &EpochRecord,
        t: usize,
        peers: &[u64],
    ) -> Result<(), String> {
        let ctx = dealing_ctx(gk, e).map_err(|x| x.to_string())?;
        let comm = commitments(&e.dealing).map_err(|x| x.to_string())?;
        let me = self.replica.node_id;
        let (mut held, _) = self.enclave.held_shares(e.epoch, e.dealing.generation);
        let tls = self.tls.as_ref().map(|t| t.client());
        self.set_seal("unsealing", held as u32, t as u32, e.epoch);
        for id in peers {
            if held >= t {
                break;
            }
            let Some(peer) = state.members.get(id) else {
                continue;
            };
            match fetch_share(
                self.enclave.as_ref(),
                me,
                gk,
                e,
                SharePeer {
                    identity: &peer.identity_public_key,
                    address: &peer.raft_address,
                    tls: tls.as_ref(),
                    timeout: self.request_timeout,
                },
                clock::now_ms(),
            )
            .await
            {
                Ok((index, env)) => {
                    match self.enclave.accept_peer_share(&ctx, &comm, index, &env) {
                        Ok(n) => {
                            held = n;
                            self.set_seal("unsealing", held as u32, t as u32, e.epoch);
                        }
                        Err(x) => tracing::warn!(peer = id, error = %x, "peer share refused"),
                    }
                }
                Err(x) => tracing::debug!(peer = id, error = %x, "share fetch failed"),
            }
        }
        if held >= t {
            self.enclave
                .reconstruct(
                    &ctx,
                    &comm,
                    &wrapped(&e.dealing).map_err(|x| x.to_string())?,
                )
                .map_err(|x| x.to_string())?;
            tracing::info!(epoch = e.epoch, "epoch unsealed");
        }
        Ok(())
    }
}
