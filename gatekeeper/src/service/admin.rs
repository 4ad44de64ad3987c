//! `gatekeeper.v1.AdminService` on a node.

use crate::clock;
use crate::config::NodeConfig;
use crate::error::{self, ApiError, ApiResult, ErrorCode, LEADER_ADMIN_METADATA};
use crate::keeper::SealView;
use crate::operator;
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::admin_service_server::AdminService;
use gatekeeper_raft::replica::{Replica, ReplicaError, StatusView};
use gatekeeper_raft::state::{Bytes32, EpochStatus};
use gatekeeper_raft::state::{Command, Lane, OperatorKey, OperatorProof, Reply};
use gatekeeper_raft::Node;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// The AdminService implementation.
#[derive(Clone)]
pub struct AdminServer {
    replica: Replica,
    config: NodeConfig,
    seal: Arc<Mutex<SealView>>,
    enclave: Arc<dyn crate::enclave::Enclave>,
    member_policy: crate::attestation::Policy,
    chain: Option<(
        crate::chain::ChainSettings,
        Arc<Mutex<crate::chain::ChainView>>,
    )>,
}

impl AdminServer {
    /// Serves `replica`.
    pub fn new(
        replica: Replica,
        config: NodeConfig,
        seal: Arc<Mutex<SealView>>,
        enclave: Arc<dyn crate::enclave::Enclave>,
        member_policy: crate::attestation::Policy,
    ) -> Self {
        Self {
            replica,
            config,
            seal,
            enclave,
            member_policy,
            chain: None,
        }
    }

    /// Admits a learner as a voter once it has caught up with the log and registered evidence
    /// that passes the member policy, within `join_timeout_ms`. Otherwise the learner is removed
    /// again, so a join of a node that never runs leaves no dead voter (nor learner) behind.
    async fn admit(&self, node_id: u64, node: Node) -> ApiResult<u64> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.config.join_timeout();
        let not_ready = |why: String, removed: Result<(), String>| {
            let outcome = match removed {
                Ok(()) => "it was removed again".to_string(),
                Err(e) => format!(
                    "removing it as a learner failed ({e}): run `admin leave --node-id {node_id}`"
                ),
            };
            ApiError::new(
                ErrorCode::LearnerNotReady,
                format!("node {node_id} was not made a voter: {why}; {outcome}"),
            )
        };
        // A record left by an earlier incarnation of this node id (left, then joined again before
        // the keeper removed it) must not count as this node's registration.
        let stale = {
            let members = self.membership();
            let applied = self.replica.sm.read();
            applied.state.members.contains_key(&node_id)
                && !members.iter().any(|(id, _)| *id == node_id)
        };
        if stale {
            self.write_retrying(&Command::RemoveMember { node_id })
                .await?;
        }
        let index = match self
            .replica
            .add_learner(node_id, node, self.config.join_timeout())
            .await
        {
            Ok(index) => index,
            Err(ReplicaError::Timeout(why)) => {
                let removed = self.remove_learner(node_id).await;
                return Err(not_ready(why, removed));
            }
            Err(e) => return Err(error::replica(e)),
        };
        loop {
            let ready = operator::learner_ready(
                &self.replica.sm.read().state,
                node_id,
                &self.member_policy,
                clock::now_secs(),
            );
            match ready {
                Ok(()) => break,
                Err(why) if tokio::time::Instant::now() >= deadline => {
                    let removed = self.remove_learner(node_id).await;
                    return Err(not_ready(
                        format!(
                            "it caught up but within {} ms {why}",
                            self.config.join_timeout_ms
                        ),
                        removed,
                    ));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        self.replica
            .promote(node_id)
            .await
            .map_err(error::replica)?;
        tracing::info!(node = node_id, "node joined as a voter");
        Ok(index)
    }

    async fn remove_learner(&self, node_id: u64) -> Result<(), String> {
        match self.replica.leave(node_id).await {
            Ok(_) => {
                tracing::warn!(node = node_id, "removed a learner that was not ready");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(node = node_id, error = %e, "could not remove a learner that was not ready");
                Err(e.to_string())
            }
        }
    }

    /// Reports the chain watcher's view in `Status`.
    pub fn with_chain(
        mut self,
        settings: crate::chain::ChainSettings,
        view: Arc<Mutex<crate::chain::ChainView>>,
    ) -> Self {
        self.chain = Some((settings, view));
        self
    }

    /// Adds or removes an operator: the signed command must be `expected`.
    async fn operators_change(
        &self,
        caller: Option<String>,
        auth: Option<&pb::OperatorAuthorization>,
        kind: &str,
        expected: Command,
    ) -> Result<Response<pb::OperatorsResponse>, Status> {
        let operator = exact_operator_command(
            auth,
            caller.as_deref(),
            kind,
            &expected,
            &format!("authorization.command_json is another {kind} than this call's"),
        )?;
        let out = self.propose(&expected, operator).await?;
        let operators = self
            .replica
            .read_linearizable(|a| a.state.operators.keys().cloned().collect())
            .await
            .map_err(error::replica)?;
        Ok(Response::new(pb::OperatorsResponse {
            log_index: out.log_id.index,
            operators,
        }))
    }

    /// Proposes an operator command: signed by the operator when `operator` carries its JSON and
    /// proof, else by this node alone (a cluster without registered operators).
    async fn propose(
        &self,
        command: &Command,
        operator: OperatorSigned,
    ) -> ApiResult<gatekeeper_raft::replica::WriteOutcome> {
        self.wait_registered().await?;
        let out = match operator {
            Some((json, proof)) => self.replica.write_operator_command(&json, &proof).await,
            None => self.replica.write(command, Lane::Admin).await,
        }
        .map_err(error::replica)?;
        accepted(out)
    }

    /// Waits (up to the request timeout) until this node's member record is committed: it signs
    /// its proposals with its enclave key, which every node checks against that record, and
    /// right after `init` the record may not be there yet.
    async fn wait_registered(&self) -> ApiResult<()> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout();
        while !self
            .replica
            .sm
            .read()
            .state
            .members
            .contains_key(&self.config.node_id)
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    ErrorCode::InvalidState,
                    "this node has not registered its enclave keys yet (it proposes commands in \
                     its own name); retry shortly",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Writes a command, retrying while no leader is known (right after init), up to the
    /// request timeout.
    async fn write_retrying(
        &self,
        c: &Command,
    ) -> ApiResult<gatekeeper_raft::replica::WriteOutcome> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout();
        loop {
            match self.replica.write(c, Lane::Admin).await {
                Ok(o) => return Ok(o),
                Err(ReplicaError::NoLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(error::replica(e)),
            }
        }
    }

    /// The Raft membership: (node id, voter).
    fn membership(&self) -> Vec<(u64, bool)> {
        self.replica
            .status()
            .members
            .iter()
            .map(|m| (m.id, m.voter))
            .collect()
    }

    /// `NOT_LEADER` for a membership call on a follower, naming the leader and, when its member
    /// record has one, its admin address (in `gatekeeper-leader-admin`), where the operator's
    /// client retries. Operator calls are not forwarded: the leader authenticates the operator's
    /// certificate itself.
    fn not_leader(&self) -> ApiError {
        let (id, _) = self.replica.leader_api_address();
        let Some(id) = id else {
            return ApiError::new(ErrorCode::NoLeader, "no leader is known");
        };
        let admin = self
            .replica
            .sm
            .read()
            .state
            .members
            .get(&id)
            .and_then(|m| m.admin_address.clone());
        match admin {
            Some(addr) => ApiError::new(
                ErrorCode::NotLeader,
                format!("membership changes run on the leader: node {id}, admin address {addr}"),
            )
            .with_metadata(LEADER_ADMIN_METADATA, addr),
            None => ApiError::new(
                ErrorCode::NotLeader,
                format!(
                    "membership changes run on the leader: node {id} (its admin address is not \
                     registered; call its admin listener)"
                ),
            ),
        }
    }
}

fn epochs_pb(state: &gatekeeper_raft::state::GatekeeperState) -> Vec<pb::EpochInfo> {
    state
        .epochs
        .values()
        .map(|e| pb::EpochInfo {
            epoch: e.epoch,
            status: match e.status {
                EpochStatus::Dealing => pb::EpochStatus::Dealing,
                EpochStatus::Active => pb::EpochStatus::Active,
                EpochStatus::Retired => pb::EpochStatus::Retired,
                EpochStatus::Aborted => pb::EpochStatus::Aborted,
            } as i32,
            master_public_key: e.master_public_key.0.to_vec(),
            cluster_signing_public_key: e.cluster_signing_public_key.0.to_vec(),
            threshold: u32::from(e.threshold),
            scheme: pb::DerivationScheme::Native as i32,
        })
        .collect()
}

/// An operator command with its JSON as signed and the operator's proof; `None` when unsigned.
type OperatorSigned = Option<(String, OperatorProof)>;

/// The command an admin call proposes: the one the operator signed, checked to be a `kind`
/// ([`operator::signed_command`]), when the call carries an authorization; else `unsigned()`,
/// proposed by this node alone (refused at the leader once the cluster has operators).
fn operator_command(
    auth: Option<&pb::OperatorAuthorization>,
    caller: Option<&str>,
    kind: &str,
    unsigned: impl FnOnce() -> ApiResult<Command>,
) -> ApiResult<(Command, OperatorSigned)> {
    match auth {
        Some(a) => {
            let (c, p) = operator::signed_command(a, caller, kind, clock::now_ms())?;
            Ok((c, Some((a.command_json.clone(), p))))
        }
        None => Ok((unsigned()?, None)),
    }
}

/// [`operator_command`] for a call that names its command exactly (join, operator changes): a
/// signed command must be `expected`, else the call is refused with `mismatch`.
fn exact_operator_command(
    auth: Option<&pb::OperatorAuthorization>,
    caller: Option<&str>,
    kind: &str,
    expected: &Command,
    mismatch: &str,
) -> ApiResult<OperatorSigned> {
    let (command, signed) = operator_command(auth, caller, kind, || Ok(expected.clone()))?;
    if &command != expected {
        return Err(invalid(mismatch));
    }
    Ok(signed)
}

/// A committed command's outcome, with a rejection turned into its error.
fn accepted(
    out: gatekeeper_raft::replica::WriteOutcome,
) -> ApiResult<gatekeeper_raft::replica::WriteOutcome> {
    match out.reply {
        Reply::Rejected { code, message } => Err(error::rejected(code, message)),
        _ => Ok(out),
    }
}

/// A fresh rotation id for an unsigned rotate call.
fn fresh_rotation_id() -> String {
    let mut b = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    format!("admin-{}", hex::encode(b))
}

/// The caller's operator name: its client certificate's common name (none without TLS).
fn caller_name<T>(request: &Request<T>) -> Option<String> {
    crate::tls::connect_info(request)
        .and_then(|i| i.peer.as_ref())
        .and_then(|p| p.common_name.clone())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, message)
}

fn role(s: &str) -> pb::Role {
    match s {
        "leader" => pb::Role::Leader,
        "follower" => pb::Role::Follower,
        "candidate" => pb::Role::Candidate,
        "learner" => pb::Role::Learner,
        "uninitialized" => pb::Role::Uninitialized,
        _ => pb::Role::Unspecified,
    }
}

fn members_pb(
    s: &StatusView,
    admin_addresses: &std::collections::BTreeMap<u64, String>,
) -> Vec<pb::Member> {
    s.members
        .iter()
        .map(|m| pb::Member {
            node_id: m.id,
            raft_address: m.raft_address.clone(),
            api_address: m.api_address.clone(),
            voter: m.voter,
            identity_public_key: vec![],
            hpke_public_key: vec![],
            admin_address: admin_addresses.get(&m.id).cloned().unwrap_or_default(),
        })
        .collect()
}

/// The admin addresses the members registered.
fn admin_addresses(replica: &Replica) -> std::collections::BTreeMap<u64, String> {
    replica
        .sm
        .read()
        .state
        .members
        .values()
        .filter_map(|m| m.admin_address.clone().map(|a| (m.node_id, a)))
        .collect()
}

#[tonic::async_trait]
impl AdminService for AdminServer {
    async fn status(
        &self,
        _r: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.replica.status();
        // One read of the state machine, released before anything else runs: a second read
        // guard taken while a writer (the apply task) waits would deadlock (std's RwLock lets a
        // waiting writer block new readers).
        let (active, epochs, gatekeeper_id, chain_record, operators, checkpoint, rotation) = {
            let applied = self.replica.sm.read();
            let st = &applied.state;
            let rotation = st.rotation.as_ref().map(|r| {
                let dealing = st.epochs.get(&r.epoch).map(|e| &e.dealing);
                let (outcome, reason) = match &r.outcome {
                    gatekeeper_raft::state::RotationOutcome::InProgress => ("in_progress", ""),
                    gatekeeper_raft::state::RotationOutcome::Completed => ("completed", ""),
                    gatekeeper_raft::state::RotationOutcome::Aborted(why) => {
                        ("aborted", why.as_str())
                    }
                };
                pb::RotationStatus {
                    rotation_id: r.rotation_id.clone(),
                    epoch: r.epoch,
                    outcome: outcome.into(),
                    reason: reason.into(),
                    deadline_ms: r.deadline_ms,
                    acked: dealing
                        .map(|d| d.acked.iter().copied().collect())
                        .unwrap_or_default(),
                    shares: dealing.map_or(0, |d| d.shares.len() as u32),
                }
            });
            (
                crate::epochs::active_epochs(st),
                epochs_pb(st),
                st.gatekeeper_id.map(|g| g.0.to_vec()).unwrap_or_default(),
                st.chain.clone(),
                st.operators.keys().cloned().collect(),
                st.checkpoint.as_ref().map(|c| pb::CheckpointStatus {
                    certified_index: c.index,
                    voters: c.voters.iter().copied().collect(),
                    signatures: c.signatures.len() as u32,
                    snapshot_index: self.replica.sm.snapshot_index(),
                }),
                rotation,
            )
        };
        // "unsealed" is computed now, from the committed epochs and the enclave, never from a
        // cached view: a new active epoch makes a node sealed until it holds it.
        let seal = {
            let cached = self.seal.lock().expect("seal lock").clone();
            let unsealed = crate::epochs::holds_every(self.enclave.as_ref(), &active);
            let v = crate::keeper::reported_seal(&cached, unsealed, &active);
            let state = match v.state.as_str() {
                "unsealed" => pb::SealState::Unsealed,
                "unsealing" => pb::SealState::Unsealing,
                _ => pb::SealState::Sealed,
            };
            pb::SealStatus {
                state: state as i32,
                shares_collected: v.collected,
                threshold: v.threshold,
                epoch: v.epoch,
            }
        };
        let chain = self.chain.as_ref().map(|(settings, view)| {
            let view = view.lock().unwrap_or_else(|e| e.into_inner()).clone();
            crate::chain::status(settings, &view, &chain_record)
        });
        Ok(Response::new(pb::StatusResponse {
            node_id: s.node_id,
            role: role(&s.role) as i32,
            leader_id: s.leader_id,
            term: s.term,
            last_log_index: s.last_log_index.unwrap_or(0),
            last_applied: s.last_applied.unwrap_or(0),
            commit_index: s.commit_index.unwrap_or(0),
            members: members_pb(&s, &admin_addresses(&self.replica)),
            seal: Some(seal),
            epochs,
            gatekeeper_id,
            chain,
            audit_sequence: s.audit_sequence,
            enclave_identity_public_key: self.enclave.identity_public_key().as_bytes().to_vec(),
            enclave_hpke_public_key: self.enclave.hpke_public_key().as_bytes().to_vec(),
            operators,
            checkpoint,
            rotation,
            condition: s.condition.clone().unwrap_or_default(),
        }))
    }

    async fn members(
        &self,
        _r: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let s = self.replica.status();
        Ok(Response::new(pb::MembersResponse {
            members: members_pb(&s, &admin_addresses(&self.replica)),
            leader_id: s.leader_id,
        }))
    }

    async fn init(
        &self,
        request: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        // The initialising operator becomes the cluster's first operator: its certificate's
        // P-256 key signs operator commands from now on (none without TLS: development).
        let operator = crate::tls::connect_info(&request)
            .and_then(|i| i.peer.clone())
            .map(|peer| -> Result<OperatorKey, ApiError> {
                let name = peer.common_name.clone().ok_or_else(|| {
                    invalid("the operator certificate has no common name to register")
                })?;
                let point = crate::tls::cert::p256_public_key(&peer.leaf)
                    .map_err(|e| invalid(format!("operator certificate: {e}")))?;
                Ok(OperatorKey {
                    name,
                    public_key: gatekeeper_raft::state::HexBytes(point),
                })
            })
            .transpose()?;
        let r = request.into_inner();
        // Checked first: an initialised cluster refuses before any argument is looked at or any
        // secret is staged in the enclave.
        if self.replica.sm.read().state.gatekeeper_id.is_some() {
            return Err(ApiError::new(
                ErrorCode::AlreadyInitialized,
                "cluster already initialised",
            )
            .into());
        }
        let plan = operator::plan_init(
            &r,
            (
                self.config.node_id,
                Node {
                    raft_address: self.config.raft_address(),
                    api_address: self.config.api_address(),
                },
            ),
        )?;
        let imported_public = match &r.imported_master_secret {
            None => None,
            Some(e) => {
                let env = keyring::envelope::Envelope::from_parts(
                    e.version,
                    &e.encapped_key,
                    e.ciphertext.clone(),
                )
                .map_err(|x| ApiError::field("imported_master_secret", &x))?;
                Some(
                    self.enclave
                        .stage_import(&env)
                        .map_err(|x| invalid(format!("imported_master_secret: {x}")))?,
                )
            }
        };
        let threshold = plan.threshold;
        let effective_threshold = plan.effective_threshold();
        let initial: Vec<(u64, String)> = plan
            .members
            .iter()
            .map(|(id, n)| (*id, n.raft_address.clone()))
            .collect();
        match self.replica.initialize(plan.members).await {
            Ok(()) => {}
            // Raft was initialised but InitCluster never committed (a failed earlier attempt):
            // finish that init instead of refusing forever.
            Err(ReplicaError::AlreadyInitialized)
                if self.replica.sm.read().state.gatekeeper_id.is_none() => {}
            Err(e) => return Err(error::replica(e).into()),
        }
        // InitCluster is never forwarded (a forwarded one could be anyone's): this node
        // proposes it as the leader, calling an election if another initial voter won.
        let deadline = tokio::time::Instant::now() + self.config.request_timeout();
        let leads_with_membership = || {
            self.replica.is_leader()
                && self
                    .replica
                    .sm
                    .read()
                    .last_membership
                    .membership()
                    .voter_ids()
                    .any(|v| v == self.config.node_id)
        };
        while !leads_with_membership() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    ErrorCode::NoLeader,
                    "this node did not become the leader to initialise the cluster in time; \
                     run init again",
                )
                .into());
            }
            if !self.replica.is_leader() {
                let _ = self.replica.raft.trigger().elect().await;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            } else {
                // Leading, but the initial membership is not applied yet.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        let mut id = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let out = self
            .write_retrying(&Command::InitCluster {
                gatekeeper_id: Bytes32(id),
                threshold,
                genesis_dealer: imported_public.map(|_| self.config.node_id),
                production: self.config.mode == crate::config::Mode::Production,
                operators: operator.into_iter().collect(),
                members: initial,
            })
            .await?;
        accepted(out)?;
        Ok(Response::new(pb::InitResponse {
            gatekeeper_id: id.to_vec(),
            epoch: 0,
            master_public_key: imported_public
                .map(|p| p.as_bytes().to_vec())
                .unwrap_or_default(),
            threshold: effective_threshold,
        }))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let name = caller_name(&request);
        let r = request.into_inner();
        if !self.replica.is_leader() {
            return Err(self.not_leader().into());
        }
        operator::check_join(&self.membership(), r.node_id)?;
        // The operator's authorization for the node to register its identity, committed before
        // the node is added.
        let expected = Command::AuthorizeJoin {
            node_id: r.node_id,
            raft_address: r.raft_address.clone(),
        };
        let operator = exact_operator_command(
            r.authorization.as_ref(),
            name.as_deref(),
            "AuthorizeJoin",
            &expected,
            "authorization.command_json authorizes another node or address than this join",
        )?;
        self.propose(&expected, operator).await?;
        // Admission runs in its own task: if this call is cancelled (the client's deadline), it
        // still finishes, including removing a learner that was not ready.
        let this = self.clone();
        let node = Node {
            raft_address: r.raft_address,
            api_address: r.api_address,
        };
        let node_id = r.node_id;
        let index = tokio::spawn(async move { this.admit(node_id, node).await })
            .await
            .map_err(ApiError::internal)??;
        Ok(Response::new(pb::JoinResponse {
            log_index: index,
            voter: true,
        }))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        let name = caller_name(&request);
        let r = request.into_inner();
        if !self.replica.is_leader() {
            return Err(self.not_leader().into());
        }
        // Membership first: `status()` takes its own state-machine read, and a second read
        // guard held across it could deadlock against a waiting writer (std's RwLock).
        let members = self.membership();
        {
            let applied = self.replica.sm.read();
            operator::check_leave(&members, &applied.state, r.node_id)?;
        }
        // The operator's decision, committed (and verified by every node) before the
        // membership change.
        let expected = Command::AuthorizeLeave { node_id: r.node_id };
        let operator = exact_operator_command(
            r.authorization.as_ref(),
            name.as_deref(),
            "AuthorizeLeave",
            &expected,
            "authorization.command_json authorizes another node's leave",
        )?;
        self.propose(&expected, operator).await?;
        let index = self
            .replica
            .leave(r.node_id)
            .await
            .map_err(error::replica)?;
        Ok(Response::new(pb::LeaveResponse { log_index: index }))
    }

    async fn add_operator(
        &self,
        request: Request<pb::AddOperatorRequest>,
    ) -> Result<Response<pb::OperatorsResponse>, Status> {
        let name = caller_name(&request);
        let r = request.into_inner();
        let expected = Command::AddOperator(OperatorKey {
            name: r.name.clone(),
            public_key: gatekeeper_raft::state::HexBytes(r.public_key.clone()),
        });
        self.operators_change(name, r.authorization.as_ref(), "AddOperator", expected)
            .await
    }

    async fn remove_operator(
        &self,
        request: Request<pb::RemoveOperatorRequest>,
    ) -> Result<Response<pb::OperatorsResponse>, Status> {
        let name = caller_name(&request);
        let r = request.into_inner();
        let expected = Command::RemoveOperator {
            name: r.name.clone(),
        };
        self.operators_change(name, r.authorization.as_ref(), "RemoveOperator", expected)
            .await
    }

    type SaveSnapshotStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::SaveSnapshotChunk, Status>>;

    async fn save_snapshot(
        &self,
        _request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let sm = self.replica.sm.clone();
        let source = self.replica.node_id;
        let read_err = |e: std::io::Error| {
            ApiError::new(ErrorCode::Internal, format!("reading the snapshot: {e}"))
        };
        // The snapshot is hashed whole first (its manifest names the SHA-256), then sent.
        let (meta, file, len, sha) = tokio::task::spawn_blocking(move || {
            use sha2::Digest;
            use std::io::{Read, Seek};
            let Some((meta, mut file, len)) = sm.latest_snapshot_file()? else {
                return Ok(None);
            };
            let mut h = sha2::Sha256::new();
            std::io::copy(&mut (&mut file).take(len), &mut h)?;
            file.seek(std::io::SeekFrom::Start(0))?;
            Ok::<_, std::io::Error>(Some((meta, file, len, hex::encode(h.finalize()))))
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
        .map_err(read_err)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NoSnapshot,
                "this node has no snapshot yet (no checkpoint certified so far)",
            )
        })?;
        let manifest = {
            let applied = self.replica.sm.read();
            let m = meta.last_membership.membership();
            let voters = m.voter_ids().collect();
            let nodes: Vec<(u64, Node)> = m.nodes().map(|(id, n)| (*id, n.clone())).collect();
            let (members, epochs) = crate::backup::describe(&applied.state, &voters, &nodes);
            crate::backup::Manifest {
                format: 1,
                gatekeeper_id: applied
                    .state
                    .gatekeeper_id
                    .map(|g| hex::encode(g.0))
                    .unwrap_or_default(),
                source_node: source,
                created_at_ms: clock::now_ms(),
                index: meta.last_log_id.map_or(0, |l| l.index),
                term: meta.last_log_id.map_or(0, |l| l.leader_id.term),
                snapshot_bytes: len,
                snapshot_sha256: sha,
                members,
                epochs,
            }
        };
        let manifest_json = serde_json::to_string(&manifest)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        tracing::info!(
            index = manifest.index,
            bytes = len,
            "streaming the newest snapshot to an operator (backup)"
        );
        // 1 MiB chunks: well under the admin listener's message cap (8 MiB, not configurable).
        let chunk = 1usize << 20;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = file.take(len);
            let mut first = Some(manifest_json);
            loop {
                let mut data = vec![0u8; chunk];
                let n = match file.read(&mut data) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(read_err(e).into()));
                        return;
                    }
                };
                data.truncate(n);
                if n == 0 && first.is_none() {
                    return;
                }
                let chunk = pb::SaveSnapshotChunk {
                    manifest_json: first.take().unwrap_or_default(),
                    data,
                };
                if tx.blocking_send(Ok(chunk)).is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        let name = caller_name(&request);
        let r = request.into_inner();
        let (command, operator) = operator_command(
            r.authorization.as_ref(),
            name.as_deref(),
            "StartRotation",
            || {
                Ok(operator::rotation(
                    &r,
                    self.config.rotation_deadline_ms,
                    clock::now_ms(),
                    fresh_rotation_id,
                ))
            },
        )?;
        let Command::StartRotation { rotation_id, .. } = &command else {
            unreachable!("a StartRotation was checked or built")
        };
        let rotation_id = rotation_id.clone();
        self.propose(&command, operator).await?;
        tracing::info!(rotation = %rotation_id, reason = %r.reason, "rotation started");
        // Read back through a linearizable read: the write may have been committed by another
        // node and this one may not have applied it yet.
        let epoch = self
            .replica
            .read_linearizable(|a| {
                a.state
                    .rotation
                    .as_ref()
                    .filter(|x| x.rotation_id == rotation_id)
                    .map(|x| x.epoch)
            })
            .await
            .map_err(error::replica)?
            .unwrap_or_default();
        Ok(Response::new(pb::RotateResponse {
            rotation_id,
            epoch,
            status: pb::EpochStatus::Dealing as i32,
            master_public_key: vec![],
        }))
    }

    async fn retire(
        &self,
        request: Request<pb::RetireRequest>,
    ) -> Result<Response<pb::RetireResponse>, Status> {
        let name = caller_name(&request);
        let r = request.into_inner();
        let (command, operator) = operator_command(
            r.authorization.as_ref(),
            name.as_deref(),
            "SetMinEpoch",
            || {
                Ok(Command::SetMinEpoch {
                    min_epoch: r.min_epoch,
                })
            },
        )?;
        let Command::SetMinEpoch { min_epoch } = command else {
            unreachable!("a SetMinEpoch was checked or built")
        };
        let before = operator::retiring(&self.replica.sm.read().state, min_epoch);
        self.propose(&command, operator).await?;
        Ok(Response::new(pb::RetireResponse {
            retired: before,
            min_epoch,
        }))
    }

    async fn apply_dev_event(
        &self,
        request: Request<pb::ApplyDevEventRequest>,
    ) -> Result<Response<pb::ApplyDevEventResponse>, Status> {
        operator::allow_dev_events(self.config.mode)?;
        let name = caller_name(&request);
        let mut r = request.into_inner();
        let auth = r.authorization.take();
        let (command, operator) =
            operator_command(auth.as_ref(), name.as_deref(), "DevEvent", || {
                Ok(Command::DevEvent {
                    event: operator::dev_event(r)?,
                })
            })?;
        let out = self.propose(&command, operator).await?;
        match out.reply {
            Reply::Applied { audit_sequence } => Ok(Response::new(pb::ApplyDevEventResponse {
                log_index: out.log_id.index,
                audit_sequence,
            })),
            // (`propose` already turned a rejection into its error.)
            _ => Err(ApiError::new(ErrorCode::Duplicate, "duplicate event").into()),
        }
    }

    async fn write_canary(
        &self,
        request: Request<pb::WriteCanaryRequest>,
    ) -> Result<Response<pb::WriteCanaryResponse>, Status> {
        let name = caller_name(&request);
        let r = request.into_inner();
        operator::check_canary(&r.key, &r.value)?;
        let put = Command::Put {
            key: r.key,
            value: r.value,
        };
        let out = match r.authorization.as_ref() {
            // Signed (required in production): the operator's proof goes into the log.
            Some(auth) => {
                let signed = exact_operator_command(
                    Some(auth),
                    name.as_deref(),
                    "Put",
                    &put,
                    "authorization.command_json is not this write's key and value",
                )?;
                self.propose(&put, signed).await?
            }
            // Vouched for by this node (development).
            None => {
                self.wait_registered().await?;
                self.replica
                    .write(&put, Lane::Canary)
                    .await
                    .map_err(error::replica)?
            }
        };
        match out.reply {
            Reply::Applied { audit_sequence } => Ok(Response::new(pb::WriteCanaryResponse {
                log_index: out.log_id.index,
                audit_sequence,
                leader_id: out.leader_id,
            })),
            Reply::Duplicate => Err(ApiError::new(ErrorCode::Duplicate, "duplicate").into()),
            Reply::Rejected { code, message } => Err(error::rejected(code, message).into()),
        }
    }

    async fn read_canary(
        &self,
        request: Request<pb::ReadCanaryRequest>,
    ) -> Result<Response<pb::ReadCanaryResponse>, Status> {
        let r = request.into_inner();
        let stale = r.consistency == pb::ReadConsistency::Stale as i32;
        let read = |a: &gatekeeper_raft::sm_store::Applied| {
            (
                a.state.kv.get(&r.key).cloned(),
                a.last_applied.map_or(0, |l| l.index),
            )
        };
        let ((value, applied_index), staleness_ms) = if stale {
            self.replica.read_stale(read).map_err(error::replica)?
        } else {
            (
                self.replica
                    .read_linearizable(read)
                    .await
                    .map_err(error::replica)?,
                0,
            )
        };
        Ok(Response::new(pb::ReadCanaryResponse {
            value,
            applied_index,
            served_by: self.config.node_id,
            staleness_ms,
        }))
    }

    async fn set_fault(
        &self,
        request: Request<pb::SetFaultRequest>,
    ) -> Result<Response<pb::SetFaultResponse>, Status> {
        operator::allow_fault_hooks(self.config.fault_hooks)?;
        let isolate = request.into_inner().isolate;
        self.replica.faults.set_isolated(isolate);
        tracing::warn!(isolated = isolate, "fault hook changed");
        Ok(Response::new(pb::SetFaultResponse { isolated: isolate }))
    }
}

/// Refusals of node certificates are logged at most once a second.
static NODE_CERT_REFUSALS: gatekeeper_raft::lograte::LogGate =
    gatekeeper_raft::lograte::LogGate::new(std::time::Duration::from_secs(1));

/// AdminService's interceptor: on a TLS admin listener (`tls`), the verified client certificate
/// must be an operator's ([`operator::check_operator`]); a request without one is refused, also
/// if the connection's details are missing. On a plaintext (development) listener there is no
/// certificate and nothing to check.
pub fn operator_interceptor(
    tls: bool,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |req| check_operator_request(tls, req)
}

#[allow(clippy::result_large_err)]
fn check_operator_request(tls: bool, req: Request<()>) -> Result<Request<()>, Status> {
    if !tls {
        return Ok(req);
    }
    let peer = crate::tls::connect_info(&req).and_then(|i| i.peer.clone());
    let Some(peer) = peer else {
        return Err(ApiError::new(
            ErrorCode::NoClientCertificate,
            "the admin listener needs an operator's client certificate",
        )
        .into());
    };
    operator::check_operator(peer.common_name.as_deref()).map_err(|e| {
        if let Some(left_out) = NODE_CERT_REFUSALS.pass(std::time::Instant::now()) {
            tracing::warn!(
                remote = %peer.remote_addr, error = %e, refused_since_last_line = left_out,
                "admin listener refused a node certificate"
            );
        }
        Status::from(e)
    })?;
    if let Some(info) = crate::tls::connect_info(&req) {
        info.mark_established();
    }
    Ok(req)
}
