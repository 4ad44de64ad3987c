//! The keeper: drives the master-key lifecycle from the replicated state (design.md §6).
//!
//! Every node runs one loop. Each tick it compares the committed state with what it should be and
//! takes at most a few steps, each idempotent and safe to repeat after a crash or leader change:
//!
//! 1. **register** — a member whose record lacks its current enclave keys writes `UpsertMember`
//!    (identity key, HPKE key, evidence over both);
//! 2. **deal** (leader) — once the cluster is initialised and every voter is registered, the
//!    leader's enclave creates epoch 0 and the leader commits `InstallEpoch`; when the voters
//!    differ from an epoch's share holders it re-deals (`Redeal`, generation + 1); a rotation in
//!    progress gets its epoch dealt, or aborted after its deadline;
//! 3. **ack** — a node opens its share of each current dealing inside its enclave, verifies it
//!    against the commitments and commits `AckShare`;
//! 4. **unseal** — for each active epoch whose master is not in memory, it collects verified
//!    shares from peers (`PeerService.FetchShare`) until it has `t`, then rebuilds the master.

use crate::attestation::Policy;
use crate::enclave::{DealingPublic, Enclave, EnclaveError, Recipient};
use crate::peer_service::fetch_share;
use gatekeeper_raft::now_ms;
use gatekeeper_raft::replica::Replica;
use gatekeeper_raft::state::{
    Bytes32, Command, DealingRecord, EpochRecord, EpochStatus, GatekeeperState, HexBytes,
    MemberRecord, RotationOutcome, SealedShare,
};
use keyring::envelope::Envelope;
use keyring::shares::{Commitments, DealingContext, WrappedMaster};
use keyring::{GatekeeperId, Sr25519PublicKey};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What `admin status` shows about sealing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealView {
    /// `sealed` | `unsealing` | `unsealed`.
    pub state: String,
    /// While unsealing: shares held.
    pub collected: u32,
    /// While unsealing: shares needed.
    pub threshold: u32,
    /// The epoch being unsealed.
    pub epoch: u64,
}

/// Whether a member's registration evidence (recorded with its keys) passes the member policy:
/// the evidence must bind `report_data(identity, hpke, 0…)`. The age limit does not apply here —
/// registration binds keys, it does not prove freshness (FetchShare checks fresh evidence per
/// request). Shares are dealt only to members that pass.
pub fn member_evidence_ok(policy: &Policy, m: &MemberRecord) -> Result<(), String> {
    if policy.kind == crate::attestation::PolicyKind::None {
        return Ok(());
    }
    let hpke =
        keyring::X25519PublicKey::from_slice(&m.hpke_public_key.0).map_err(|e| e.to_string())?;
    let rd = keyring::sign::report_data(&m.identity_public_key.0, &hpke, &[0; 32]);
    let kind = match policy.kind {
        crate::attestation::PolicyKind::Dev => crate::attestation::EvidenceKind::Dev,
        _ => crate::attestation::EvidenceKind::SgxDcap,
    };
    let mut p = policy.clone();
    p.max_evidence_age_secs = u64::MAX / 2;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    p.verify(Some((kind, &m.attestation.0, None)), &rd, now)
        .map(|_| ())
        .map_err(|e| format!("node {}: {e}", m.node_id))
}

/// The active epochs of `state`, ascending.
pub fn active_epochs(state: &GatekeeperState) -> Vec<u64> {
    state
        .epochs
        .values()
        .filter(|e| e.status == EpochStatus::Active)
        .map(|e| e.epoch)
        .collect()
}

/// Whether `enclave` holds the master secret of every epoch in `active` (and there is one):
/// what "unsealed" means in `admin status`, `/metrics` and the keeper.
pub fn holds_every(enclave: &dyn Enclave, active: &[u64]) -> bool {
    !active.is_empty() && active.iter().all(|e| enclave.has_master(*e))
}

/// Shared handles the keeper works with.
#[derive(Clone)]
pub struct Keeper {
    /// This node's replica.
    pub replica: Replica,
    /// This node's enclave.
    pub enclave: Arc<dyn Enclave>,
    /// Seal status for `admin status`.
    pub seal: Arc<Mutex<SealView>>,
    /// Raft and API addresses of this node.
    pub raft_address: String,
    /// API address of this node.
    pub api_address: String,
    /// Request deadline for peer calls.
    pub request_timeout: Duration,
    /// Attestation policy for members: shares are dealt only to members whose registration
    /// evidence passes it.
    pub member_policy: Policy,
    /// Deadline given to queued (chain-requested) rotations when the leader starts them.
    pub rotation_deadline_ms: u64,
}

/// The dealing context of an epoch record.
pub fn dealing_ctx(gk: &Bytes32, e: &EpochRecord) -> Result<DealingContext, EnclaveError> {
    Ok(DealingContext {
        gatekeeper_id: GatekeeperId(gk.0),
        epoch: e.epoch,
        generation: e.dealing.generation,
        master_public_key: Sr25519PublicKey::from_slice(&e.master_public_key.0)?,
    })
}

/// Parses an epoch's commitments.
pub fn commitments(d: &DealingRecord) -> Result<Commitments, EnclaveError> {
    let raw: Vec<Vec<u8>> = d.commitments.iter().map(|c| c.0.to_vec()).collect();
    Ok(Commitments::from_bytes(&raw)?)
}

fn wrapped(d: &DealingRecord) -> Result<WrappedMaster, EnclaveError> {
    let nonce: [u8; 24] = d
        .wrapped_nonce
        .0
        .as_slice()
        .try_into()
        .map_err(|_| EnclaveError::State("wrapped nonce is not 24 bytes".into()))?;
    Ok(WrappedMaster {
        nonce,
        ciphertext: d.wrapped_ciphertext.0.clone(),
    })
}

fn envelope(s: &SealedShare) -> Envelope {
    Envelope {
        version: keyring::envelope::ENVELOPE_VERSION,
        encapped_key: s.encapped_key.0,
        ciphertext: s.ciphertext.0.clone(),
    }
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
        let out = self.replica.write(&c).await.map_err(|e| e.to_string())?;
        match out.reply {
            gatekeeper_raft::state::Reply::Rejected { code, message } => {
                Err(format!("{code:?}: {message}"))
            }
            _ => Ok(()),
        }
    }

    /// One pass over the state. Public for tests.
    pub async fn tick(&self) -> Result<(), String> {
        let status = self.replica.status();
        let me = self.replica.node_id;
        if !status.members.iter().any(|m| m.id == me) {
            self.set_seal("sealed", 0, 0, 0);
            return Ok(());
        }
        let state: GatekeeperState = self.replica.sm.read().state.clone();
        let Some(gk) = state.gatekeeper_id else {
            return Ok(());
        };

        // 1. register
        let identity = Bytes32(*self.enclave.identity_public_key().as_bytes());
        let hpke = Bytes32(*self.enclave.hpke_public_key().as_bytes());
        let registered = state
            .members
            .get(&me)
            .is_some_and(|m| m.identity_public_key == identity && m.hpke_public_key == hpke);
        if !registered {
            let rd =
                keyring::sign::report_data(&identity.0, &self.enclave.hpke_public_key(), &[0; 32]);
            let attestation = self
                .enclave
                .evidence(&rd)
                .map(|(_, e)| e)
                .unwrap_or_default();
            self.write(Command::UpsertMember(MemberRecord {
                node_id: me,
                raft_address: self.raft_address.clone(),
                api_address: self.api_address.clone(),
                identity_public_key: identity,
                hpke_public_key: hpke,
                attestation: HexBytes(attestation),
            }))
            .await?;
            return Ok(());
        }

        let voters: Vec<u64> = status
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        let all_registered = voters.iter().all(|v| state.members.contains_key(v));
        // Deal nothing while any voter's registration evidence fails the member policy.
        let unverified: Vec<String> = voters
            .iter()
            .filter_map(|v| state.members.get(v))
            .filter_map(|m| member_evidence_ok(&self.member_policy, m).err())
            .collect();
        if all_registered && !unverified.is_empty() {
            tracing::warn!(refused = ?unverified, "not dealing: member evidence fails the member policy");
        }
        let all_registered = all_registered && unverified.is_empty();

        // 2. deal (leader only)
        let members: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
        // Genesis: the designated dealer (holding an imported secret), else the leader.
        let dealer = state.genesis_dealer.or(status.leader_id);
        if state.epochs.is_empty() && all_registered && dealer == Some(me) {
            let recipients = self.recipients(&state, &voters);
            let t = state
                .genesis_threshold
                .map(usize::from)
                .unwrap_or_else(|| keyring::shares::default_threshold(recipients.len()));
            let p = self
                .enclave
                .create_epoch(
                    GatekeeperId(gk.0),
                    0,
                    t,
                    &recipients,
                    state.genesis_dealer.is_some(),
                )
                .map_err(|e| e.to_string())?;
            tracing::info!(
                epoch = 0,
                threshold = t,
                imported = state.genesis_dealer.is_some(),
                "dealing genesis epoch"
            );
            return self.install(0, t, &p, &recipients).await;
        }
        if status.leader_id == Some(me) && all_registered {
            self.lead(&state, &gk, &voters, &members).await?;
        }

        // 3. confirm held masters against the committed records, ack own shares, 4. unseal.
        // Each epoch is handled on its own: one failing epoch does not stop the others.
        for e in state.epochs.values() {
            if matches!(e.status, EpochStatus::Retired | EpochStatus::Aborted) {
                continue;
            }
            if let Err(x) = self.epoch_step(&state, &gk, e).await {
                tracing::debug!(epoch = e.epoch, error = %x, "epoch step did not complete; will retry");
            }
        }
        let active = active_epochs(&state);
        if holds_every(self.enclave.as_ref(), &active) {
            self.set_seal("unsealed", 0, 0, 0);
        } else if active.is_empty() {
            self.set_seal("sealed", 0, 0, 0);
        }
        Ok(())
    }

    async fn epoch_step(
        &self,
        state: &GatekeeperState,
        gk: &Bytes32,
        e: &EpochRecord,
    ) -> Result<(), String> {
        let me = self.replica.node_id;
        let pk = Sr25519PublicKey::from_slice(&e.master_public_key.0).map_err(|x| x.to_string())?;
        self.enclave.confirm_epoch(e.epoch, &pk);
        let ctx = dealing_ctx(gk, e).map_err(|x| x.to_string())?;
        let comm = commitments(&e.dealing).map_err(|x| x.to_string())?;
        if let Some(mine) = e.dealing.shares.iter().find(|s| s.node_id == me) {
            let (_, own) = self.enclave.held_shares(e.epoch, e.dealing.generation);
            let opened = own
                || match self
                    .enclave
                    .accept_own_share(&ctx, &comm, mine.index, &envelope(mine))
                {
                    Ok(()) => true,
                    Err(x) => {
                        // E.g. sealed to this node's previous enclave key (wiped and rejoined):
                        // the leader re-deals; meanwhile unseal from peers.
                        tracing::debug!(epoch = e.epoch, error = %x, "own share does not open");
                        false
                    }
                };
            if opened && !e.dealing.acked.contains(&me) {
                self.write(Command::AckShare {
                    epoch: e.epoch,
                    generation: e.dealing.generation,
                    node_id: me,
                })
                .await?;
            }
        }
        if e.status == EpochStatus::Active && !self.enclave.has_master(e.epoch) {
            self.unseal(state, gk, e).await?;
        }
        Ok(())
    }

    fn set_seal(&self, state: &str, collected: u32, threshold: u32, epoch: u64) {
        *self.seal.lock().expect("seal lock") = SealView {
            state: state.into(),
            collected,
            threshold,
            epoch,
        };
    }

    fn recipients(&self, state: &GatekeeperState, voters: &[u64]) -> Vec<Recipient> {
        voters
            .iter()
            .filter_map(|v| state.members.get(v))
            .filter_map(|m| {
                keyring::X25519PublicKey::from_slice(&m.hpke_public_key.0)
                    .ok()
                    .map(|hpke| Recipient {
                        node_id: m.node_id,
                        hpke,
                    })
            })
            .collect()
    }

    async fn lead(
        &self,
        state: &GatekeeperState,
        gk: &Bytes32,
        voters: &[u64],
        members: &BTreeSet<u64>,
    ) -> Result<(), String> {
        // Records of nodes that left Raft membership are removed, so they authorise nothing and
        // a node rejoining under the same id registers afresh.
        if let Some(gone) = state.members.keys().find(|id| !members.contains(id)) {
            tracing::info!(node = gone, "removing the record of a departed member");
            return self.write(Command::RemoveMember { node_id: *gone }).await;
        }
        let recipients = self.recipients(state, voters);
        let gid = GatekeeperId(gk.0);
        if state.epochs.is_empty() {
            return Ok(()); // genesis is dealt in `tick`
        }
        // Rotation.
        if let Some(r) = &state.rotation {
            if r.outcome == RotationOutcome::InProgress {
                let epoch = state.epochs.get(&r.epoch);
                let expired = r.deadline_ms > 0 && now_ms() > r.deadline_ms;
                if expired && epoch.is_none_or(|e| e.status == EpochStatus::Dealing) {
                    return self
                        .write(Command::AbortRotation {
                            rotation_id: r.rotation_id.clone(),
                            reason: "dealing did not complete before the deadline".into(),
                        })
                        .await;
                }
                if epoch.is_none() {
                    // Keep the current epoch's threshold (capped by the member count).
                    let t = state
                        .current_epoch()
                        .and_then(|c| state.epochs.get(&c))
                        .map(|c| usize::from(c.threshold))
                        .unwrap_or_else(|| keyring::shares::default_threshold(recipients.len()))
                        .min(recipients.len())
                        .max(1);
                    let p = self
                        .enclave
                        .create_epoch(gid, r.epoch, t, &recipients, false)
                        .map_err(|e| e.to_string())?;
                    tracing::info!(epoch = r.epoch, rotation = %r.rotation_id, "dealing rotation epoch");
                    return self.install(r.epoch, t, &p, &recipients).await;
                }
            }
        }
        // A chain-requested rotation that had to wait (another one ran, or genesis was not
        // active yet) starts once the cluster can rotate, oldest first.
        let busy = state
            .rotation
            .as_ref()
            .is_some_and(|r| r.outcome == RotationOutcome::InProgress);
        if let Some(next) = state.pending_rotations.first() {
            if !busy && state.current_epoch().is_some() {
                let now = now_ms();
                tracing::info!(rotation = %next, "starting a queued rotation");
                return self
                    .write(Command::StartRotation {
                        rotation_id: next.clone(),
                        requested_at_ms: now,
                        deadline_ms: now.saturating_add(self.rotation_deadline_ms),
                    })
                    .await;
            }
        }
        // Re-dealing after a membership change.
        let want: BTreeSet<u64> = voters.iter().copied().collect();
        for e in state.epochs.values() {
            if !matches!(e.status, EpochStatus::Active | EpochStatus::Dealing) {
                continue;
            }
            let holders: BTreeSet<u64> = e.dealing.shares.iter().map(|s| s.node_id).collect();
            // A holder that re-registered with a new enclave key (wiped and rejoined) cannot
            // open a share sealed to its old key: that needs a re-dealing too.
            let stale_key = e.dealing.shares.iter().any(|s| {
                state
                    .members
                    .get(&s.node_id)
                    .is_some_and(|m| m.hpke_public_key != s.recipient_hpke)
            });
            if (holders != want || stale_key) && self.enclave.has_master(e.epoch) {
                let t = usize::from(e.threshold).min(recipients.len()).max(1);
                let p = self
                    .enclave
                    .redeal(gid, e.epoch, e.dealing.generation + 1, t, &recipients)
                    .map_err(|x| x.to_string())?;
                tracing::info!(
                    epoch = e.epoch,
                    generation = p.generation,
                    "re-dealing to the new member set"
                );
                return self
                    .write(Command::Redeal {
                        epoch: e.epoch,
                        dealing: dealing_record(&p, &recipients),
                    })
                    .await;
            }
        }
        Ok(())
    }

    async fn install(
        &self,
        epoch: u64,
        t: usize,
        p: &DealingPublic,
        recipients: &[Recipient],
    ) -> Result<(), String> {
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
    ) -> Result<(), String> {
        let ctx = dealing_ctx(gk, e).map_err(|x| x.to_string())?;
        let comm = commitments(&e.dealing).map_err(|x| x.to_string())?;
        let t = usize::from(e.threshold);
        let me = self.replica.node_id;
        let (mut held, _) = self.enclave.held_shares(e.epoch, e.dealing.generation);
        self.set_seal("unsealing", held as u32, t as u32, e.epoch);
        for s in &e.dealing.shares {
            if held >= t {
                break;
            }
            if s.node_id == me {
                continue;
            }
            let Some(peer) = state.members.get(&s.node_id) else {
                continue;
            };
            match fetch_share(
                self.enclave.as_ref(),
                me,
                gk,
                e,
                &peer.identity_public_key,
                &peer.api_address,
                self.request_timeout,
            )
            .await
            {
                Ok((index, env)) => {
                    match self.enclave.accept_peer_share(&ctx, &comm, index, &env) {
                        Ok(n) => {
                            held = n;
                            self.set_seal("unsealing", held as u32, t as u32, e.epoch);
                        }
                        Err(x) => {
                            tracing::warn!(peer = s.node_id, error = %x, "peer share refused")
                        }
                    }
                }
                Err(x) => tracing::debug!(peer = s.node_id, error = %x, "share fetch failed"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestation::PolicyKind;
    use gatekeeper_raft::state::HexBytes;

    fn policy(kind: PolicyKind, dev: &keyring::Sr25519Keypair) -> Policy {
        Policy {
            kind,
            allowed_mrenclave: vec![],
            allowed_mrsigner: vec![],
            allowed_mrtd: vec![],
            min_tcb_status: "UpToDate".into(),
            max_evidence_age_secs: 1,
            dev_key: Some(dev.public_key()),
            default_collateral: None,
        }
    }

    fn record(
        identity: [u8; 32],
        hpke: keyring::X25519PublicKey,
        evidence: Vec<u8>,
    ) -> MemberRecord {
        MemberRecord {
            node_id: 7,
            raft_address: "a:1".into(),
            api_address: "a:2".into(),
            identity_public_key: Bytes32(identity),
            hpke_public_key: Bytes32(*hpke.as_bytes()),
            attestation: HexBytes(evidence),
        }
    }

    #[test]
    fn shares_go_only_to_members_whose_registration_evidence_binds_their_keys() {
        let dev = keyring::Sr25519Keypair::from_seed(&[1; 32]);
        let id = keyring::Sr25519Keypair::from_seed(&[2; 32]).public_key();
        let hpke = keyring::X25519SecretKey::generate(&mut rand_core::OsRng).public_key();
        let rd = keyring::sign::report_data(id.as_bytes(), &hpke, &[0; 32]);
        // Issued long ago: the age limit does not apply to registration evidence.
        let good = keyring::dev_attestation::issue(&dev, &rd, 1_000);
        let p = policy(PolicyKind::Dev, &dev);
        member_evidence_ok(&p, &record(*id.as_bytes(), hpke, good.clone())).unwrap();
        // The same evidence presented for another HPKE key (an attacker's) is refused.
        let attacker = keyring::X25519SecretKey::generate(&mut rand_core::OsRng).public_key();
        assert!(member_evidence_ok(&p, &record(*id.as_bytes(), attacker, good)).is_err());
        // No evidence, or evidence from another key, is refused.
        assert!(member_evidence_ok(&p, &record(*id.as_bytes(), hpke, vec![])).is_err());
        let other = keyring::Sr25519Keypair::from_seed(&[3; 32]);
        let forged = keyring::dev_attestation::issue(&other, &rd, 1_000);
        assert!(member_evidence_ok(&p, &record(*id.as_bytes(), hpke, forged)).is_err());
        // The `none` policy accepts anything.
        member_evidence_ok(
            &policy(PolicyKind::None, &dev),
            &record(*id.as_bytes(), hpke, vec![]),
        )
        .unwrap();
    }
}
