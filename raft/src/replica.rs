//! A running replica: storage + network + openraft, with writes that reach the leader from any
//! node and reads in two consistency modes.
//!
//! * **Writes** go to the local Raft; on a follower they are forwarded once to the leader over
//!   `RaftService.ClientWrite`. With no known leader the write fails with
//!   [`ReplicaError::NoLeader`] naming the last known leader.
//! * **Linearizable reads**: the leader runs openraft's `ensure_linearizable` (read-index: confirm
//!   leadership with a quorum, wait for the state machine to reach the commit index); a follower
//!   asks the leader for that read index (`RaftService.ReadIndex`) and waits until it has applied
//!   it locally.
//! * **Stale reads**: served from the local state machine with no network round trip, only if
//!   this node heard from a leader within `max_stale` (the leader itself always qualifies); the
//!   answer carries how long ago that was.

use crate::convert;
use crate::log_store::LogStore;
use crate::network::{Faults, LeaderContact, Network, NetworkConfig, RaftServer};
use crate::pledge::Pledge;
use crate::sm_store::{Applied, SmOpenError, SmStore};
use crate::state::{self, CommandSigner, Lane, RejectCode, Reply};
use crate::{Node, NodeId, TypeConfig};
use gatekeeper_proto::raft::v1 as pb;
use gatekeeper_proto::raft::v1::raft_service_client::RaftServiceClient;
use openraft::error::RaftError;
use openraft::{ChangeMembers, LogId, Raft, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How a replica is set up.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Data directory (`log/`, `sm/`, `sm.id`, `snapshots/`).
    pub data_dir: PathBuf,
    /// openraft configuration (timeouts, snapshot policy).
    pub raft: openraft::Config,
    /// Network tunables.
    pub network: NetworkConfig,
    /// Longest time without leader contact for which stale reads are still served.
    pub max_stale: Duration,
    /// How long a follower waits to apply a read index, or a forwarded write may take.
    pub request_timeout: Duration,
}

/// Failures of replica operations. Each maps to one gRPC status in the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// Opening storage failed (the node must not start).
    #[error(transparent)]
    StateMachine(#[from] SmOpenError),
    /// Opening the log failed (the node must not start).
    #[error("cannot open raft log {path}: {source}")]
    Log {
        /// Log directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// openraft refused the configuration.
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// No leader is known, or the leader could not be reached.
    #[error("no reachable leader (last known: {last_known:?}): {detail}")]
    NoLeader {
        /// Last leader this node knew of.
        last_known: Option<NodeId>,
        /// What failed.
        detail: String,
    },
    /// The cluster is already initialised.
    #[error("cluster already initialised")]
    AlreadyInitialized,
    /// The request is invalid (bad member list, unknown node…).
    #[error("{0}")]
    Invalid(String),
    /// The operation timed out; it may or may not have taken effect.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The leader refused the proposal before it reached the log (its proposer may not make
    /// it, or its proof does not verify); nothing changed.
    #[error("proposal refused: {message}")]
    Refused {
        /// Stable code.
        code: RejectCode,
        /// Why.
        message: String,
    },
    /// Stale read refused: no leader contact within the bound.
    #[error("stale read refused: last leader contact {since_ms:?} ms ago exceeds {max_ms} ms")]
    TooStale {
        /// Milliseconds since leader contact (None: never).
        since_ms: Option<u64>,
        /// The configured bound.
        max_ms: u64,
    },
    /// Raft stopped or failed.
    #[error("raft failure: {0}")]
    Raft(String),
}

/// The outcome of a committed write.
#[derive(Clone, Debug)]
pub struct WriteOutcome {
    /// Log id of the entry.
    pub log_id: LogId<NodeId>,
    /// The state machine's reply.
    pub reply: Reply,
    /// The leader that committed it.
    pub leader_id: NodeId,
}

/// A member as shown by status.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberView {
    /// Node id.
    pub id: NodeId,
    /// Raft address.
    pub raft_address: String,
    /// API address.
    pub api_address: String,
    /// Voter (true) or learner (false).
    pub voter: bool,
}

/// A point-in-time view of this replica.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusView {
    /// This node.
    pub node_id: NodeId,
    /// leader | follower | candidate | learner | uninitialized | shutdown.
    pub role: String,
    /// Known leader.
    pub leader_id: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub last_applied: Option<u64>,
    /// Commit index, when known locally (openraft 0.9 metrics do not expose it: equals
    /// `last_applied` on the leader, else absent).
    pub commit_index: Option<u64>,
    /// Members (voters and learners).
    pub members: Vec<MemberView>,
    /// Audit sequence of the applied state.
    pub audit_sequence: u64,
    /// What is wrong with this node's place in the cluster, in words ([`condition`]); `None`
    /// when nothing is.
    pub condition: Option<String>,
}

/// The facts [`condition`] judges.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConditionFacts {
    pub role: &'static str,
    pub in_membership: bool,
    /// Other members in this node's membership.
    pub other_members: usize,
    pub quorum_ack_ms: Option<u64>,
    pub leader_contact_ms: Option<u64>,
    pub leader_known: bool,
    pub election_timeout_max_ms: u64,
    pub nonmember_refusers: Vec<NodeId>,
}

/// What `status` says about a node whose role alone would mislead: removed from the cluster, a
/// leader that cannot reach a quorum, a node without a leader. Pure.
pub(crate) fn condition(f: &ConditionFacts) -> Option<String> {
    if f.role == "uninitialized" || f.role == "shutdown" {
        return None;
    }
    if !f.in_membership {
        return Some(
            "removed from the cluster: this node is not in the membership it applied".into(),
        );
    }
    let quiet = f.election_timeout_max_ms;
    if f.role == "leader" {
        return match f.quorum_ack_ms {
            Some(ms) if ms > quiet => Some(format!(
                "isolated, cannot reach a quorum: no majority acknowledged this leader for {:.1} s; it commits nothing",
                ms as f64 / 1000.0
            )),
            // Acknowledged lately, or just elected (no acknowledgement measured yet).
            _ => None,
        };
    }
    // A majority of the other members refuse it as a non-member (one lagging peer's view
    // alone does not decide).
    if f.other_members > 0 && f.nonmember_refusers.len() > f.other_members / 2 {
        return Some(format!(
            "removed from the cluster: member(s) {:?} refuse this node as not in their membership",
            f.nonmember_refusers
        ));
    }
    if !f.leader_known {
        return Some(match f.leader_contact_ms {
            Some(ms) => format!(
                "no leader: last heard from one {:.1} s ago (an election is running, or this node is cut off)",
                ms as f64 / 1000.0
            ),
            None => "no leader yet".into(),
        });
    }
    None
}

/// A running replica. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    /// This node.
    pub node_id: NodeId,
    /// The openraft handle.
    pub raft: Raft<TypeConfig>,
    /// The state machine store.
    pub sm: SmStore,
    log: LogStore,
    network: Network,
    /// Fault hooks.
    pub faults: Faults,
    contact: LeaderContact,
    config: Arc<ReplicaConfig>,
    signer: Arc<std::sync::RwLock<Option<Arc<dyn CommandSigner>>>>,
    /// Coalesced read-index rounds.
    reads: Arc<std::sync::Mutex<ReadRounds>>,
    /// Touched while this node leads (vote stickiness, see `RaftServer::with_led`).
    led: LeaderContact,
    /// A vote given outside openraft (see [`crate::pledge`]).
    pledge: Pledge,
    /// Proofs of election (shares the signer).
    elections: crate::election::Elections,
    /// Last sequence used per lane.
    sequences: Arc<std::sync::Mutex<std::collections::HashMap<Lane, u64>>>,
    /// Group commit of this node's proposals ([`crate::batch`]).
    batcher: crate::batch::Batcher,
    /// Held from signing a proposal to queueing it, so a lane's proposals reach the log in the
    /// order of their sequences (one that overtook another made that one a replay).
    submit_order: Arc<std::sync::Mutex<()>>,
}

/// Touches `led` every 50 ms while this node leads with a quorum (acknowledged within the
/// minimum election timeout), until Raft stops. A leader without one (e.g. it resumed
/// leadership from its persisted vote after a restart and its followers refuse it for lack of
/// a proof of election) does not count as a leader for vote stickiness.
async fn track_leadership(raft: Raft<TypeConfig>, led: LeaderContact) {
    let mut metrics = raft.metrics();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let quiet = raft.config().election_timeout_min;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = raft_stopped(&mut metrics) => return,
        }
        if leads_with_quorum(&metrics.borrow(), quiet) {
            led.touch();
        }
    }
}

/// Whether a follower should stand for election now, instead of waiting for openraft's timer.
///
/// openraft makes a follower that knows a leader wait `leader_lease + election_timeout` since it
/// last heard from it (the lease is `election_timeout_max`, the timeout drawn from
/// `[min, max)`), so after a leader dies nobody stands for `max + min` to `2 × max`; the
/// survivors' leases (what makes them refuse a candidate) expired at `max`. Standing once this
/// node's own view of the lease expired (`lease_ms` since the last contact) plus `jitter_ms`
/// (drawn per attempt, so two survivors rarely split the vote) brings the election to
/// `max + jitter`. Only a voter that follows a leader it has heard from stands this way (never a
/// node that never had a leader, a learner, a candidate — openraft retries those — or a leader),
/// at most once per `cooldown_ms`.
pub(crate) fn should_stand(
    state: ServerState,
    voter: bool,
    contact_ms: Option<u64>,
    lease_ms: u64,
    jitter_ms: u64,
    since_last_stand_ms: Option<u64>,
    cooldown_ms: u64,
) -> bool {
    state == ServerState::Follower
        && voter
        && contact_ms.is_some_and(|age| age >= lease_ms.saturating_add(jitter_ms))
        && since_last_stand_ms.is_none_or(|s| s >= cooldown_ms)
}

/// Stands for election when [`should_stand`] says so, checked every 50 ms until Raft stops.
async fn stand_when_lease_expires(raft: Raft<TypeConfig>, contact: LeaderContact, id: NodeId) {
    let mut metrics = raft.metrics();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let (min, lease) = (
        raft.config().election_timeout_min,
        raft.config().election_timeout_max,
    );
    let draw = |salt: u64| {
        // Jitter in [0, min/2): enough apart to avoid a split vote on a LAN, small beside the
        // timeout. Drawn from the clock and the node id (no randomness dependency needed).
        let x = crate::now_ms()
            .wrapping_mul(6364136223846793005)
            .wrapping_add(id.wrapping_mul(1442695040888963407) ^ salt);
        (x >> 33) % (min / 2).max(1)
    };
    let mut jitter = draw(0);
    let mut last: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = raft_stopped(&mut metrics) => return,
        }
        let (state, voter) = {
            let m = metrics.borrow();
            (
                m.state,
                m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id),
            )
        };
        let since = last.map(|t| t.elapsed().as_millis() as u64);
        if should_stand(
            state,
            voter,
            contact.millis_since(),
            lease,
            jitter,
            since,
            lease,
        ) {
            tracing::info!(
                silent_ms = contact.millis_since().unwrap_or_default(),
                "no word from the leader past its lease: standing for election"
            );
            if raft.trigger().elect().await.is_err() {
                return;
            }
            last = Some(std::time::Instant::now());
            jitter = draw(jitter + 1);
        }
    }
}

/// Whether these metrics show a leader a quorum acknowledged within `quiet_ms`.
pub(crate) fn leads_with_quorum(m: &openraft::RaftMetrics<NodeId, Node>, quiet_ms: u64) -> bool {
    m.state == ServerState::Leader && m.millis_since_quorum_ack.is_some_and(|ms| ms < quiet_ms)
}

/// One read round's outcome, published to every caller that joined it (`None` until done).
type RoundResult = tokio::sync::watch::Sender<Option<Result<(), RoundError>>>;

/// The read round waiting to start (callers join it) and whether a round runner is active.
#[derive(Default)]
struct ReadRounds {
    pending: Option<Arc<RoundResult>>,
    running: bool,
}

/// A failed read round, as every caller that shared it gets it back.
#[derive(Clone, Debug)]
enum RoundError {
    NoLeader {
        last_known: Option<NodeId>,
        detail: String,
    },
    Timeout(String),
    Other(String),
}

impl RoundError {
    fn of(e: &ReplicaError) -> Self {
        match e {
            ReplicaError::NoLeader { last_known, detail } => RoundError::NoLeader {
                last_known: *last_known,
                detail: detail.clone(),
            },
            ReplicaError::Timeout(m) => RoundError::Timeout(m.clone()),
            other => RoundError::Other(other.to_string()),
        }
    }

    fn to_error(&self) -> ReplicaError {
        match self {
            RoundError::NoLeader { last_known, detail } => ReplicaError::NoLeader {
                last_known: *last_known,
                detail: detail.clone(),
            },
            RoundError::Timeout(m) => ReplicaError::Timeout(m.clone()),
            RoundError::Other(m) => ReplicaError::Raft(m.clone()),
        }
    }
}

/// What changed between two views of Raft that an operator should read in the log (INFO):
/// this node became leader, follows another, lost its leader; the membership changed. Pure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RaftEvent {
    /// This node leads (in `term`).
    BecameLeader { term: u64 },
    /// This node follows `leader` (in `term`).
    Following { leader: NodeId, term: u64 },
    /// No leader is known any more (an election runs; `previous` led before).
    LeaderLost { previous: NodeId, term: u64 },
    /// A new membership was appended at `index`.
    Membership {
        index: u64,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
}

/// The events between `before` and `after` (see [`RaftEvent`]).
pub(crate) fn raft_events(
    node_id: NodeId,
    before: &openraft::RaftMetrics<NodeId, Node>,
    after: &openraft::RaftMetrics<NodeId, Node>,
) -> Vec<RaftEvent> {
    let mut out = Vec::new();
    if before.current_leader != after.current_leader {
        let term = after.current_term;
        out.push(match (after.current_leader, before.current_leader) {
            (Some(id), _) if id == node_id => RaftEvent::BecameLeader { term },
            (Some(leader), _) => RaftEvent::Following { leader, term },
            (None, Some(previous)) => RaftEvent::LeaderLost { previous, term },
            (None, None) => unreachable!("the leader changed"),
        });
    }
    if before.membership_config.log_id() != after.membership_config.log_id() {
        let m = after.membership_config.membership();
        let voters: Vec<NodeId> = m.voter_ids().collect();
        let learners: Vec<NodeId> = m.learner_ids().collect();
        out.push(RaftEvent::Membership {
            index: after.membership_config.log_id().map_or(0, |l| l.index),
            voters,
            learners,
        });
    }
    out
}

/// Logs leadership and membership changes at INFO ([`raft_events`]) and counts leader changes,
/// until Raft stops.
async fn observe_raft(
    raft: Raft<TypeConfig>,
    node_id: NodeId,
    telemetry: crate::telemetry::RaftTelemetry,
) {
    let mut rx = raft.metrics();
    let mut before = rx.borrow_and_update().clone();
    while rx.changed().await.is_ok() {
        let after = rx.borrow_and_update().clone();
        if after.state == ServerState::Shutdown {
            return;
        }
        for event in raft_events(node_id, &before, &after) {
            match event {
                RaftEvent::BecameLeader { term } => {
                    telemetry.leader_changes.inc();
                    tracing::info!(term, "became leader");
                }
                RaftEvent::Following { leader, term } => {
                    telemetry.leader_changes.inc();
                    tracing::info!(leader, term, "following a new leader");
                }
                RaftEvent::LeaderLost { previous, term } => {
                    telemetry.leader_changes.inc();
                    tracing::info!(previous, term, "leader lost; an election is running");
                }
                RaftEvent::Membership {
                    index,
                    voters,
                    learners,
                } => {
                    let in_it = voters.contains(&node_id) || learners.contains(&node_id);
                    tracing::info!(
                        index,
                        ?voters,
                        ?learners,
                        this_node_is_member = in_it,
                        "membership changed"
                    );
                }
            }
        }
        before = after;
    }
}

/// Resolves once Raft has stopped (its metrics channel closed or it reports shutdown).
async fn raft_stopped(
    metrics: &mut tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Node>>,
) {
    loop {
        if metrics.borrow().state == ServerState::Shutdown {
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Tells openraft to take the newest certified checkpoint as its snapshot whenever there is a
/// new one (openraft then purges the log behind it).
async fn take_certified_snapshots(
    raft: Raft<TypeConfig>,
    mut certified: tokio::sync::watch::Receiver<u64>,
) {
    let mut metrics = raft.metrics();
    loop {
        tokio::select! {
            r = certified.changed() => {
                if r.is_err() {
                    return;
                }
                if let Err(e) = raft.trigger().snapshot().await {
                    tracing::debug!(error = %e, "cannot take the certified snapshot");
                    return;
                }
            }
            _ = raft_stopped(&mut metrics) => return,
        }
    }
}

/// Microseconds since the Unix epoch: a proposal sequence that keeps growing across restarts.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Replica {
    /// Sets the signer of this node's proposals (its enclave identity key). Writes fail until
    /// it is set.
    pub fn set_signer(&self, signer: Arc<dyn CommandSigner>) {
        *self.signer.write().expect("signer lock") = Some(signer);
    }

    /// Signs `command` for `lane` with the next sequence: above the last one used here, the
    /// last one the state applied for this node and lane, and the clock in microseconds.
    fn propose(&self, command: &state::Command, lane: Lane) -> Result<Vec<u8>, ReplicaError> {
        let json = serde_json::to_string(command).expect("commands always serialize");
        self.propose_json(&json, lane, None)
    }

    /// [`Replica::propose`] of the command `json` exactly, carrying an operator's proof.
    fn propose_json(
        &self,
        json: &str,
        lane: Lane,
        operator: Option<&state::OperatorProof>,
    ) -> Result<Vec<u8>, ReplicaError> {
        let signer = self
            .signer
            .read()
            .expect("signer lock")
            .clone()
            .ok_or_else(|| ReplicaError::Config("this node has no command signer".into()))?;
        let a = self.sm.read();
        let applied = a.state.last_sequence(self.node_id, lane);
        let seq = {
            let mut m = self.sequences.lock().expect("sequences lock");
            let last = m.entry(lane).or_insert(0);
            *last = last
                .saturating_add(1)
                .max(applied.saturating_add(1))
                .max(now_us());
            *last
        };
        Ok(state::sign_proposal_json(
            &*signer, &a.state, lane, seq, json, operator,
        ))
    }

    /// Commits an operator command: `json` exactly as the operator signed it, with its proof,
    /// proposed by this node's admin lane (re-signed a few times if a concurrent proposal of
    /// the lane overtook it, like [`Replica::write`]).
    pub async fn write_operator_command(
        &self,
        json: &str,
        operator: &state::OperatorProof,
    ) -> Result<WriteOutcome, ReplicaError> {
        let r = self
            .write_signing(|| self.propose_json(json, Lane::Admin, Some(operator)))
            .await;
        self.count_proposal(&r);
        r
    }

    /// Commits what `propose` signs, signing it again with a new sequence (up to 3 more times)
    /// when a concurrent proposal of the same lane overtook it, at the leader's gate or at
    /// apply. An operator's replayed sequence is not retried: signing again does not change it.
    async fn write_signing(
        &self,
        propose: impl Fn() -> Result<Vec<u8>, ReplicaError>,
    ) -> Result<WriteOutcome, ReplicaError> {
        let lane_replay = |code: &RejectCode, message: &str| {
            *code == RejectCode::Replayed && !message.starts_with("operator")
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (bytes, receipt) = {
                let _order = self.submit_order.lock().expect("submit order lock");
                let bytes = propose()?;
                let receipt = self.submit(&bytes)?;
                (bytes, receipt)
            };
            let r = self.complete(receipt, bytes).await;
            let overtaken = match &r {
                Err(ReplicaError::Refused { code, message }) => lane_replay(code, message),
                Ok(WriteOutcome {
                    reply: Reply::Rejected { code, message },
                    ..
                }) => lane_replay(code, message),
                _ => false,
            };
            if !overtaken || attempt >= 4 {
                return r;
            }
        }
    }

    /// Opens storage and starts Raft. Refuses damaged storage.
    pub async fn open(config: ReplicaConfig) -> Result<Self, ReplicaError> {
        crate::private_fs::create_dir_all(&config.data_dir).map_err(|source| {
            ReplicaError::Log {
                path: config.data_dir.clone(),
                source,
            }
        })?;
        let log_dir = config.data_dir.join("log");
        let sm = SmStore::open(&config.data_dir)?;
        // openraft's snapshot policy becomes the checkpoint interval: openraft itself never
        // snapshots the state of the moment; it takes a checkpoint once a majority of the
        // voters signed it (crate::state::checkpoint).
        let mut raft_settings = config.raft.clone();
        if let openraft::SnapshotPolicy::LogsSinceLast(n) = raft_settings.snapshot_policy {
            sm.set_checkpoint_interval(n);
        }
        raft_settings.snapshot_policy = openraft::SnapshotPolicy::Never;
        let telemetry = sm.telemetry().clone();
        let log = LogStore::open(&log_dir)
            .map_err(|source| ReplicaError::Log {
                path: log_dir.clone(),
                source,
            })?
            .timed_by(telemetry.log_append_duration.clone());
        let pledge_path = config.data_dir.join("vote-pledge");
        let pledge = Pledge::open(&pledge_path).map_err(|source| ReplicaError::Log {
            path: pledge_path,
            source,
        })?;
        let raft_config = Arc::new(
            raft_settings
                .validate()
                .map_err(|e| ReplicaError::Config(e.to_string()))?,
        );
        let faults = Faults::default();
        let signer: Arc<std::sync::RwLock<Option<Arc<dyn CommandSigner>>>> = Arc::default();
        let elections = crate::election::Elections::with_signer(signer.clone());
        let led = LeaderContact::default();
        let network = Network::new(faults.clone(), config.network.clone())
            .with_elections(elections.clone())
            .with_pledge(pledge.clone())
            .with_telemetry(telemetry.clone());
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network.clone(),
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        network.set_raft(raft.clone());
        let batcher = crate::batch::Batcher::start(raft.clone());
        let replica = Self {
            node_id: config.node_id,
            raft,
            sm,
            log,
            network,
            faults,
            contact: LeaderContact::default(),
            config: Arc::new(config),
            signer,
            led,
            pledge,
            reads: Arc::default(),
            elections,
            sequences: Arc::default(),
            batcher,
            submit_order: Arc::default(),
        };
        tokio::spawn(replica.clone().sign_checkpoints());
        tokio::spawn(track_leadership(replica.raft.clone(), replica.led.clone()));
        tokio::spawn(observe_raft(
            replica.raft.clone(),
            replica.node_id,
            replica.sm.telemetry().clone(),
        ));
        tokio::spawn(stand_when_lease_expires(
            replica.raft.clone(),
            replica.contact.clone(),
            replica.node_id,
        ));
        tokio::spawn(take_certified_snapshots(
            replica.raft.clone(),
            replica.sm.subscribe_certified(),
        ));
        Ok(replica)
    }

    /// Signs each checkpoint this node writes and proposes the signature
    /// ([`state::Command::SignCheckpoint`]) until it is applied, a newer checkpoint replaces
    /// it, or Raft stops.
    async fn sign_checkpoints(self) {
        let mut checkpoints = self.sm.subscribe_checkpoints();
        let mut metrics = self.raft.metrics();
        'next: loop {
            let next = *checkpoints.borrow_and_update();
            if let Some((index, digest)) = next {
                let mut delay = Duration::from_millis(100);
                while let Some(retry) = self.sign_checkpoint(index, digest).await {
                    tracing::debug!(index, reason = %retry, "checkpoint signature not committed yet");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = checkpoints.changed() => continue 'next,
                        _ = raft_stopped(&mut metrics) => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
            tokio::select! {
                r = checkpoints.changed() => if r.is_err() { return },
                _ = raft_stopped(&mut metrics) => return,
            }
        }
    }

    /// One attempt at committing this node's signature of checkpoint `index`. `None`: done (or
    /// not this node's to sign); `Some(reason)`: try again later.
    async fn sign_checkpoint(&self, index: u64, digest: state::Bytes32) -> Option<String> {
        let gid = {
            let a = self.sm.read();
            let s = &a.state;
            if s.checkpoint.as_ref().is_some_and(|c| c.index >= index)
                || s.checkpoint_votes
                    .get(&self.node_id)
                    .is_some_and(|v| v.index >= index)
                || !a
                    .last_membership
                    .membership()
                    .voter_ids()
                    .any(|v| v == self.node_id)
            {
                return None;
            }
            if !s.members.contains_key(&self.node_id) {
                return Some("this node is not registered yet".into());
            }
            s.gatekeeper_id?
        };
        let signer = self.signer.read().expect("signer lock").clone();
        let Some(signer) = signer else {
            return Some("no command signer yet".into());
        };
        let signature = signer.sign(&state::checkpoint_signing_bytes(&gid, index, &digest));
        let vote = state::Command::SignCheckpoint(state::CheckpointVote {
            index,
            digest,
            signature: state::HexBytes(signature.to_vec()),
        });
        match self.write(&vote, Lane::Keeper).await {
            Ok(WriteOutcome {
                reply: Reply::Rejected { code, message },
                ..
            }) => {
                tracing::warn!(index, ?code, %message, "checkpoint signature refused");
                None
            }
            Ok(_) => None,
            Err(ReplicaError::Refused { code, message }) => {
                tracing::warn!(index, ?code, %message, "checkpoint signature refused");
                None
            }
            Err(e) => Some(e.to_string()),
        }
    }

    /// The gRPC server half for `RaftService`.
    pub fn raft_server(&self) -> RaftServer {
        RaftServer::new(
            self.raft.clone(),
            self.node_id,
            self.log.clone(),
            self.sm.clone(),
            self.faults.clone(),
            self.contact.clone(),
            self.config.network.clone(),
        )
        .with_elections(self.elections.clone())
        .with_led(self.led.clone())
        .with_pledge(self.pledge.clone())
        .with_batcher(self.batcher.clone())
    }

    /// Bootstraps a new cluster with `members` as voters.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Node>) -> Result<(), ReplicaError> {
        if members.is_empty() || !members.contains_key(&self.node_id) {
            return Err(ReplicaError::Invalid(format!(
                "the initial members must include this node ({})",
                self.node_id
            )));
        }
        let mut addrs = BTreeSet::new();
        for (id, n) in &members {
            if n.raft_address.is_empty() || n.api_address.is_empty() {
                return Err(ReplicaError::Invalid(format!(
                    "member {id} has an empty address"
                )));
            }
            if !addrs.insert(n.raft_address.clone()) {
                return Err(ReplicaError::Invalid(format!(
                    "raft address {} is used twice",
                    n.raft_address
                )));
            }
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
                Err(ReplicaError::AlreadyInitialized)
            }
            Err(e) => Err(ReplicaError::Raft(e.to_string())),
        }
    }

    fn leader(&self) -> (Option<NodeId>, Option<Node>) {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader;
        let node = id.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        (id, node)
    }

    async fn leader_client(
        &self,
    ) -> Result<(NodeId, RaftServiceClient<tonic::transport::Channel>), ReplicaError> {
        let (id, node) = self.leader();
        let (Some(id), Some(node)) = (id, node) else {
            return Err(ReplicaError::NoLeader {
                last_known: id,
                detail: "no leader is known".into(),
            });
        };
        if self.faults.is_isolated() {
            return Err(ReplicaError::NoLeader {
                last_known: Some(id),
                detail: "this node is isolated by a fault hook".into(),
            });
        }
        // Reuse the connection Raft already keeps to the leader: no connect per request.
        let ch = self
            .network
            .channel(id, &node.raft_address)
            .map_err(ReplicaError::Invalid)?;
        Ok((
            id,
            RaftServiceClient::new(ch)
                .max_decoding_message_size(self.config.network.max_message_bytes)
                .max_encoding_message_size(self.config.network.max_message_bytes),
        ))
    }

    /// A request carrying this replica's request deadline.
    fn deadline<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.config.request_timeout);
        r
    }

    /// Commits a command proposed by this node's `lane`, signed by its identity key,
    /// forwarding to the leader when this node is not it. The leader refuses a proposal its
    /// proposer may not make before it reaches the log ([`crate::state::authorize`]); a
    /// proposal overtaken by a later one of the same lane (concurrent writes) is signed again
    /// with a new sequence, a few times.
    pub async fn write(
        &self,
        command: &state::Command,
        lane: Lane,
    ) -> Result<WriteOutcome, ReplicaError> {
        let r = self.write_signing(|| self.propose(command, lane)).await;
        self.count_proposal(&r);
        r
    }

    /// Commits a signed proposal (see [`Replica::write`]).
    pub async fn write_proposal(&self, bytes: Vec<u8>) -> Result<WriteOutcome, ReplicaError> {
        let r = match self.submit(&bytes) {
            Ok(receipt) => self.complete(receipt, bytes).await,
            Err(e) => Err(e),
        };
        self.count_proposal(&r);
        r
    }

    /// Counts one write's result (`gatekeeper_raft_proposals_total`): `refused` whether the
    /// leader's gate or the state machine refused it (nothing changed either way).
    fn count_proposal(&self, r: &Result<WriteOutcome, ReplicaError>) {
        use crate::telemetry::ProposalResult;
        self.sm.telemetry().proposal(match r {
            Ok(WriteOutcome {
                reply: Reply::Rejected { .. },
                ..
            })
            | Err(ReplicaError::Refused { .. }) => ProposalResult::Refused,
            Ok(_) => ProposalResult::Committed,
            Err(_) => ProposalResult::Failed,
        });
    }

    /// Checks a proposal (as the leader) and queues it for the log ([`crate::batch`]).
    fn submit(&self, bytes: &[u8]) -> Result<crate::batch::Receipt, ReplicaError> {
        if self.config.network.check_proposals && self.is_leader() {
            crate::network::check_proposal(&self.sm, self.node_id, bytes)?;
        }
        Ok(self.batcher.submit(bytes.to_vec()))
    }

    /// Waits for a queued proposal's outcome; forwards it to the leader when this node is not.
    async fn complete(
        &self,
        receipt: crate::batch::Receipt,
        bytes: Vec<u8>,
    ) -> Result<WriteOutcome, ReplicaError> {
        let fut = crate::batch::settle(receipt);
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Err(_) => Err(ReplicaError::Timeout("write not committed in time".into())),
            Ok(Ok((log_id, reply))) => Ok(WriteOutcome {
                log_id,
                reply: decode_reply(&reply)?,
                leader_id: self.node_id,
            }),
            Ok(Err(crate::batch::BatchError::ForwardToLeader(_))) => {
                use tracing::Instrument;
                let (leader, mut client) = self.leader_client().await?;
                let span = if crate::telemetry::traces() {
                    tracing::info_span!("raft.forward_write", leader, otel.kind = "client")
                } else {
                    tracing::Span::none()
                };
                // Made inside the span, so the leader's server span continues this trace.
                let request = {
                    let _in = span.enter();
                    let mut r = self.deadline(pb::ClientWriteRequest { command: bytes });
                    crate::telemetry::inject_context(r.metadata_mut());
                    r
                };
                let resp = client
                    .client_write(request)
                    .instrument(span)
                    .await
                    .map_err(|s| ReplicaError::NoLeader {
                        last_known: Some(leader),
                        detail: format!("forwarding to leader {leader}: {}", s.message()),
                    })?
                    .into_inner();
                let Some(log_id) = resp.log_id else {
                    // Refused before it reached the log: the reply says why.
                    return Err(match decode_reply(&resp.response)? {
                        Reply::Rejected { code, message } => {
                            ReplicaError::Refused { code, message }
                        }
                        _ => ReplicaError::Raft("leader reply has no log id".into()),
                    });
                };
                let log_id = convert::log_id_from_pb(log_id);
                Ok(WriteOutcome {
                    log_id,
                    reply: decode_reply(&resp.response)?,
                    leader_id: leader,
                })
            }
            Ok(Err(e)) => Err(ReplicaError::Raft(e.to_string())),
        }
    }

    /// Waits until this node's state includes every write committed before the call.
    /// Concurrent callers share read-index rounds: each joins the next round to start after it
    /// arrived (one quorum round trip serves them all), run in its own task so a caller that
    /// goes away does not cancel it for the others.
    pub async fn linearizable_barrier(&self) -> Result<(), ReplicaError> {
        let mut done = {
            let mut r = self.reads.lock().expect("read rounds lock");
            let round = r
                .pending
                .get_or_insert_with(|| Arc::new(tokio::sync::watch::channel(None).0))
                .clone();
            if !r.running {
                r.running = true;
                tokio::spawn(self.clone().run_read_rounds());
            }
            round.subscribe()
        };
        let result = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ReplicaError::Raft("read round dropped".into()))?
            .clone()
            .expect("waited for a result");
        result.map_err(|e| e.to_error())
    }

    /// Runs pending read rounds one after another until none is waiting.
    async fn run_read_rounds(self) {
        loop {
            let round = {
                let mut r = self.reads.lock().expect("read rounds lock");
                match r.pending.take() {
                    Some(round) => round,
                    None => {
                        r.running = false;
                        return;
                    }
                }
            };
            let result = self.barrier_round().await.map_err(|e| RoundError::of(&e));
            round.send_replace(Some(result));
        }
    }

    /// One read-index round (see [`Replica::linearizable_barrier`]).
    async fn barrier_round(&self) -> Result<(), ReplicaError> {
        if self.faults.is_isolated() {
            return Err(ReplicaError::NoLeader {
                last_known: self.leader().0,
                detail: "this node is isolated by a fault hook".into(),
            });
        }
        let read_log_id = match tokio::time::timeout(
            self.config.request_timeout,
            self.raft.ensure_linearizable(),
        )
        .await
        {
            Err(_) => return Err(ReplicaError::Timeout("read index not confirmed".into())),
            Ok(Ok(_)) => return Ok(()), // leader: ensure_linearizable already waited for apply
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                _,
            )))) => {
                let (leader, mut client) = self.leader_client().await?;
                let resp = client
                    .read_index(self.deadline(pb::ReadIndexRequest {}))
                    .await
                    .map_err(|s| ReplicaError::NoLeader {
                        last_known: Some(leader),
                        detail: format!("read index from leader {leader}: {}", s.message()),
                    })?;
                resp.into_inner().read_log_id.map(convert::log_id_from_pb)
            }
            Ok(Err(e)) => {
                return Err(ReplicaError::NoLeader {
                    last_known: self.leader().0,
                    detail: e.to_string(),
                })
            }
        };
        if let Some(l) = read_log_id {
            self.raft
                .wait(Some(self.config.request_timeout))
                .applied_index_at_least(Some(l.index), "linearizable read")
                .await
                .map_err(|e| ReplicaError::Timeout(e.to_string()))?;
        }
        Ok(())
    }

    /// Runs `f` on the state after a linearizable barrier.
    pub async fn read_linearizable<T>(
        &self,
        f: impl FnOnce(&Applied) -> T,
    ) -> Result<T, ReplicaError> {
        self.linearizable_barrier().await?;
        Ok(f(&self.sm.read()))
    }

    /// Runs `f` on the state after a linearizable barrier; while no leader can be reached (the
    /// barrier fails with `NoLeader` or `Timeout`), on the applied state instead, but only
    /// within `max_stale` of the last sign of a quorum: for a follower, the last message from a
    /// leader; for a leader, the last quorum acknowledgement (an isolated leader is not a
    /// quorum). Returns the staleness in ms when served that way. Key requests use it, so they
    /// keep being served while a new leader is elected (design.md §10.4).
    pub async fn read_linearizable_or_recent<T>(
        &self,
        f: impl FnOnce(&Applied) -> T,
    ) -> Result<(T, Option<u64>), ReplicaError> {
        match self.linearizable_barrier().await {
            Ok(()) => Ok((f(&self.sm.read()), None)),
            Err(e @ (ReplicaError::NoLeader { .. } | ReplicaError::Timeout(_))) => {
                let age = {
                    let m = self.raft.metrics().borrow().clone();
                    if m.state == ServerState::Leader {
                        m.millis_since_quorum_ack
                    } else {
                        self.contact.millis_since()
                    }
                };
                match age {
                    Some(ms)
                        if ms <= self.config.max_stale.as_millis() as u64
                            && !self.faults.is_isolated() =>
                    {
                        Ok((f(&self.sm.read()), Some(ms)))
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `f` on the local state if leader contact is recent enough; returns staleness in ms.
    pub fn read_stale<T>(&self, f: impl FnOnce(&Applied) -> T) -> Result<(T, u64), ReplicaError> {
        let is_leader = {
            let m = self.raft.metrics().borrow().clone();
            m.state == ServerState::Leader && !self.faults.is_isolated()
        };
        let staleness = if is_leader {
            0
        } else {
            let since = self.contact.millis_since();
            let max = self.config.max_stale.as_millis() as u64;
            match since {
                Some(ms) if ms <= max => ms,
                _ => {
                    return Err(ReplicaError::TooStale {
                        since_ms: since,
                        max_ms: max,
                    })
                }
            }
        };
        Ok((f(&self.sm.read()), staleness))
    }

    /// Adds a node as a learner, waits for it to catch up, then promotes it to voter.
    /// Must run on the leader.
    pub async fn join(&self, id: NodeId, node: Node) -> Result<u64, ReplicaError> {
        if node.raft_address.is_empty() || node.api_address.is_empty() {
            return Err(ReplicaError::Invalid("addresses must not be empty".into()));
        }
        let m = self.raft.metrics().borrow().clone();
        if m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id)
        {
            return Err(ReplicaError::Invalid(format!(
                "node {id} is already a voter"
            )));
        }
        let index = self
            .add_learner(id, node, self.config.request_timeout * 6)
            .await?;
        self.promote(id).await?;
        Ok(index)
    }

    /// Adds `id` as a learner (an existing learner keeps the addresses it has) and waits until it
    /// has replicated the log up to that membership entry. A learner that does not catch up
    /// within `timeout` (not running, unreachable, wrong address) is refused with `Timeout` and
    /// stays a learner (the caller decides whether to remove it). Fails at once with `NoLeader`
    /// if this node stops leading, and with `Raft` if Raft stopped. Must run on the leader.
    /// Returns the entry's index.
    pub async fn add_learner(
        &self,
        id: NodeId,
        node: Node,
        timeout: Duration,
    ) -> Result<u64, ReplicaError> {
        if node.raft_address.is_empty() || node.api_address.is_empty() {
            return Err(ReplicaError::Invalid("addresses must not be empty".into()));
        }
        let r = self
            .raft
            .add_learner(id, node, false)
            .await
            .map_err(map_write_err)?;
        let index = r.log_id.index;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut metrics = self.raft.metrics();
        loop {
            let matched = metrics
                .borrow()
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index);
            if matched.is_some_and(|m| m >= index) {
                return Ok(index);
            }
            if metrics.borrow().state != ServerState::Leader {
                return Err(ReplicaError::NoLeader {
                    last_known: metrics.borrow().current_leader,
                    detail: format!("this node stopped leading while node {id} caught up"),
                });
            }
            let changed = tokio::time::timeout_at(deadline, metrics.changed()).await;
            if let Ok(Err(_)) = changed {
                return Err(ReplicaError::Raft(
                    "raft stopped while a learner caught up".into(),
                ));
            }
            if changed.is_err() {
                return Err(ReplicaError::Timeout(format!(
                    "node {id} did not catch up within {} ms (replicated through {}, needs {index}): is it running and reachable at its Raft address?",
                    timeout.as_millis(),
                    matched.map_or_else(|| "nothing".to_string(), |m| m.to_string()),
                )));
            }
        }
    }

    /// Makes the learner `id` a voter. Must run on the leader.
    pub async fn promote(&self, id: NodeId) -> Result<u64, ReplicaError> {
        let r = self
            .raft
            .change_membership(
                ChangeMembers::AddVoterIds([id].into_iter().collect()),
                false,
            )
            .await
            .map_err(map_write_err)?;
        Ok(r.log_id.index)
    }

    /// Removes a node (voter or learner). Must run on the leader.
    pub async fn leave(&self, id: NodeId) -> Result<u64, ReplicaError> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == id);
        let is_node = membership.get_node(&id).is_some();
        if !is_node {
            return Err(ReplicaError::Invalid(format!("node {id} is not a member")));
        }
        let change = if is_voter {
            ChangeMembers::RemoveVoters([id].into_iter().collect())
        } else {
            ChangeMembers::RemoveNodes([id].into_iter().collect())
        };
        let r = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(map_write_err)?;
        Ok(r.log_id.index)
    }

    /// Voters and learners of the effective membership (the latest in the log, committed or
    /// not), with their addresses.
    pub fn membership_nodes(&self) -> BTreeMap<NodeId, Node> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    /// The current leader's API address, when known.
    pub fn leader_api_address(&self) -> (Option<NodeId>, Option<String>) {
        let (id, node) = self.leader();
        (id, node.map(|n| n.api_address))
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// A point-in-time status view.
    pub fn status(&self) -> StatusView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: Vec<MemberView> = membership
            .nodes()
            .map(|(id, n)| MemberView {
                id: *id,
                raft_address: n.raft_address.clone(),
                api_address: n.api_address.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let role = if members.is_empty() {
            "uninitialized"
        } else {
            match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
        };
        let last_applied = m.last_applied.map(|l| l.index);
        let condition = condition(&ConditionFacts {
            role,
            in_membership: members.iter().any(|x| x.id == self.node_id),
            other_members: members.iter().filter(|x| x.id != self.node_id).count(),
            quorum_ack_ms: m.millis_since_quorum_ack,
            leader_contact_ms: self.contact.millis_since(),
            leader_known: m.current_leader.is_some(),
            election_timeout_max_ms: self.raft.config().election_timeout_max,
            nonmember_refusers: self.telemetry().nonmember_refusers(Duration::from_secs(10)),
        });
        StatusView {
            node_id: self.node_id,
            role: role.into(),
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied,
            commit_index: if m.state == ServerState::Leader {
                last_applied
            } else {
                None
            },
            members,
            audit_sequence: self.sm.read().state.audit_sequence,
            condition,
        }
    }

    /// Makes a fresh data dir start from a backup's snapshot file ([`SmStore::restore`]), offline:
    /// the state store and snapshot are written, and the log holds only a vote for this node in
    /// the snapshot's term, so the restored cluster's first election is in a later term than
    /// every entry the snapshot covers (a leader of an earlier term would append entries that
    /// sort before the snapshot's). Refuses a data dir with a log or a state store.
    pub async fn restore_data_dir(
        node_id: NodeId,
        data_dir: &std::path::Path,
        snapshot_file: &std::path::Path,
    ) -> Result<(openraft::SnapshotMeta<NodeId, Node>, Applied), ReplicaError> {
        // Every check before anything is written: on failure below, what exists under these
        // names was written by this restore and is removed.
        if let Some((path, source)) =
            crate::sm_store::not_fresh(data_dir, &["log", "vote-pledge", "sm", "sm.id"])
        {
            return Err(ReplicaError::Log { path, source });
        }
        let r = Self::restore_fresh(node_id, data_dir, snapshot_file).await;
        if r.is_err() {
            // The data dir was fresh (checked above): remove what this restore wrote, so it can
            // run again. An empty snapshots directory may have existed; it is empty again.
            for dir in ["log", "sm"] {
                let _ = std::fs::remove_dir_all(data_dir.join(dir));
            }
            if let Ok(d) = std::fs::read_dir(data_dir.join("snapshots")) {
                for e in d.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_file(data_dir.join("sm.id"));
        }
        r
    }

    async fn restore_fresh(
        node_id: NodeId,
        data_dir: &std::path::Path,
        snapshot_file: &std::path::Path,
    ) -> Result<(openraft::SnapshotMeta<NodeId, Node>, Applied), ReplicaError> {
        use openraft::storage::RaftLogStorage;
        let log_dir = data_dir.join("log");
        let (meta, applied) = SmStore::restore(data_dir, snapshot_file)?;
        let term = meta.last_log_id.map_or(0, |l| l.leader_id.term);
        let mut log = LogStore::open(&log_dir).map_err(|source| ReplicaError::Log {
            path: log_dir.clone(),
            source,
        })?;
        log.save_vote(&openraft::Vote::new(term, node_id))
            .await
            .map_err(|e| ReplicaError::Log {
                path: log_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok((meta, applied))
    }

    /// Milliseconds since this node last heard from a leader (`None`: never).
    pub fn leader_contact_ms(&self) -> Option<u64> {
        self.contact.millis_since()
    }

    /// The replica's instruments ([`crate::telemetry`]).
    pub fn telemetry(&self) -> &crate::telemetry::RaftTelemetry {
        self.sm.telemetry()
    }

    /// The log's flush worker statistics (fsyncs, batches).
    pub fn log_flush_metrics(&self) -> crate::log_store::FlushMetrics {
        self.log.flush_metrics()
    }

    /// Stops Raft and flushes storage.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.sm.checkpoints_written().await;
        let _ = self.sm.flush();
        let _ = &self.log;
    }
}

fn decode_reply(bytes: &[u8]) -> Result<Reply, ReplicaError> {
    serde_json::from_slice(bytes).map_err(|e| ReplicaError::Raft(format!("bad reply: {e}")))
}

fn map_write_err<E: std::fmt::Display>(e: RaftError<NodeId, E>) -> ReplicaError {
    match e {
        RaftError::APIError(api) => ReplicaError::NoLeader {
            last_known: None,
            detail: api.to_string(),
        },
        RaftError::Fatal(f) => ReplicaError::Raft(f.to_string()),
    }
}

#[cfg(test)]
mod stand_tests {
    use super::should_stand;
    use openraft::ServerState::{Candidate, Follower, Leader, Learner};

    #[test]
    fn a_follower_stands_once_the_lease_it_saw_expired_plus_its_jitter() {
        // lease 2000 ms, jitter 300 ms, cooldown 2000 ms.
        let s = |state, voter, contact, since| {
            should_stand(state, voter, contact, 2000, 300, since, 2000)
        };
        assert!(
            !s(Follower, true, Some(2299), None),
            "lease + jitter not over yet"
        );
        assert!(s(Follower, true, Some(2300), None));
        assert!(
            !s(Follower, true, None, None),
            "never had a leader: openraft's timer"
        );
        assert!(!s(Follower, false, Some(9000), None), "not a voter");
        assert!(!s(Learner, false, Some(9000), None));
        assert!(
            !s(Candidate, true, Some(9000), None),
            "openraft retries candidates"
        );
        assert!(!s(Leader, true, Some(9000), None));
        assert!(
            !s(Follower, true, Some(9000), Some(1999)),
            "stood too recently"
        );
        assert!(s(Follower, true, Some(9000), Some(2000)));
    }
}

#[cfg(test)]
mod event_tests {
    use super::{raft_events, RaftEvent};
    use crate::{Node, NodeId};
    use openraft::{CommittedLeaderId, LogId, Membership, RaftMetrics, StoredMembership};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    fn view(
        leader: Option<NodeId>,
        term: u64,
        membership_at: Option<u64>,
    ) -> RaftMetrics<NodeId, Node> {
        let mut m = RaftMetrics::new_initial(1);
        m.current_leader = leader;
        m.current_term = term;
        if let Some(index) = membership_at {
            let nodes: BTreeMap<NodeId, Node> = [
                (1, Node::default()),
                (2, Node::default()),
                (3, Node::default()),
            ]
            .into();
            let membership = Membership::new(vec![BTreeSet::from([1, 2])], nodes);
            m.membership_config = Arc::new(StoredMembership::new(
                Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
                membership,
            ));
        }
        m
    }

    #[test]
    fn leadership_changes_are_named_from_this_nodes_point_of_view() {
        assert_eq!(
            raft_events(1, &view(None, 1, None), &view(Some(1), 2, None)),
            vec![RaftEvent::BecameLeader { term: 2 }]
        );
        assert_eq!(
            raft_events(1, &view(Some(1), 2, None), &view(Some(3), 3, None)),
            vec![RaftEvent::Following { leader: 3, term: 3 }]
        );
        assert_eq!(
            raft_events(1, &view(Some(3), 3, None), &view(None, 4, None)),
            vec![RaftEvent::LeaderLost {
                previous: 3,
                term: 4
            }]
        );
        assert!(
            raft_events(1, &view(Some(3), 3, None), &view(Some(3), 3, None)).is_empty(),
            "nothing changed: nothing to say"
        );
    }

    #[test]
    fn a_new_membership_is_reported_with_its_voters_and_learners() {
        let events = raft_events(1, &view(Some(1), 2, Some(5)), &view(Some(1), 2, Some(9)));
        assert_eq!(
            events,
            vec![RaftEvent::Membership {
                index: 9,
                voters: vec![1, 2],
                learners: vec![3],
            }]
        );
        assert!(raft_events(1, &view(Some(1), 2, Some(9)), &view(Some(1), 2, Some(9))).is_empty());
    }
}

#[cfg(test)]
mod condition_tests {
    use super::{condition, ConditionFacts};

    fn facts(role: &'static str) -> ConditionFacts {
        ConditionFacts {
            role,
            in_membership: true,
            other_members: 2,
            quorum_ack_ms: Some(100),
            leader_contact_ms: Some(50),
            leader_known: true,
            election_timeout_max_ms: 600,
            nonmember_refusers: vec![],
        }
    }

    #[test]
    fn a_healthy_leader_or_follower_has_nothing_to_say() {
        assert_eq!(condition(&facts("leader")), None);
        assert_eq!(condition(&facts("follower")), None);
        assert_eq!(condition(&facts("uninitialized")), None);
    }

    #[test]
    fn a_removed_node_says_so_from_its_own_membership_or_its_peers_refusals() {
        let mut f = facts("follower");
        f.in_membership = false;
        assert!(condition(&f)
            .unwrap()
            .starts_with("removed from the cluster: this node is not in"));
        let mut f = facts("candidate");
        f.leader_known = false;
        f.nonmember_refusers = vec![2];
        assert!(
            !condition(&f).unwrap().starts_with("removed"),
            "one peer of two is not a majority (it may lag)"
        );
        f.nonmember_refusers = vec![2, 3];
        assert_eq!(
            condition(&f).unwrap(),
            "removed from the cluster: member(s) [2, 3] refuse this node as not in their membership"
        );
    }

    #[test]
    fn an_isolated_leader_is_not_called_a_leader_without_saying_it_cannot_commit() {
        let mut f = facts("leader");
        f.quorum_ack_ms = Some(5200);
        assert_eq!(
            condition(&f).unwrap(),
            "isolated, cannot reach a quorum: no majority acknowledged this leader for 5.2 s; it commits nothing"
        );
        f.quorum_ack_ms = None;
        assert_eq!(condition(&f), None, "just elected: nothing measured yet");
    }

    #[test]
    fn a_node_without_a_leader_says_since_when() {
        let mut f = facts("candidate");
        f.leader_known = false;
        f.leader_contact_ms = Some(3000);
        assert_eq!(
            condition(&f).unwrap(),
            "no leader: last heard from one 3.0 s ago (an election is running, or this node is cut off)"
        );
    }
}
