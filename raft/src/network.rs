//! The Raft network over gRPC (`gatekeeper.raft.v1.RaftService`).
//!
//! * **Connection reuse**: one lazily connected tonic `Channel` per peer (HTTP/2, multiplexed),
//!   kept across openraft's `new_client` calls and replaced only when the peer's address changes.
//! * **Timeouts**: every RPC carries openraft's hard TTL as its gRPC deadline; snapshots get at
//!   least [`NetworkConfig::snapshot_timeout`].
//! * **Backoff**: every failed RPC (unreachable, an error status) and every answer this node
//!   refuses is reported as `Unreachable`, so openraft pauses replication to that peer with
//!   capped exponential backoff (50 ms doubling to 500 ms) instead of asking again at once; an
//!   expired deadline does not back off (the call already waited its whole TTL). Lines about
//!   refused answers are logged at most once a second ([`crate::lograte`]).
//! * **Size limit**: messages are capped at [`NetworkConfig::max_message_bytes`]; snapshots are
//!   streamed in chunks of [`NetworkConfig::snapshot_chunk_bytes`], well below it, and a whole
//!   snapshot at [`NetworkConfig::max_snapshot_bytes`].
//! * **Untrusted peers**: the server refuses (`INVALID_ARGUMENT`) every message [`crate::checks`]
//!   finds malformed or rewriting committed entries before openraft sees it, and the client
//!   treats such answers as network errors. A received snapshot is streamed to a file under the
//!   data dir while its framing and checksum are checked, then decoded into the state with the
//!   state machine's own decoder ([`crate::snapshot::validate`]) and its certificate verified
//!   against the voters and keys this node knows ([`crate::snapshot::verify_received`]); only a
//!   snapshot that passes reaches openraft. One snapshot is received at a time.
//! * **Fault hook**: when [`Faults::set_isolated`] is on, this node drops every Raft RPC it sends
//!   or receives (used by failover drills and partition tests).

use crate::checks::{self, LocalView, Refused};
use crate::convert::{self, ConvertError};
use crate::election::Elections;
use crate::log_store::LogStore;
use crate::now_ms;
use crate::pledge::Pledge;
use crate::sm_store::SmStore;
use crate::snapshot::{self, SnapshotDataError};
use crate::{Command, Node, NodeId, TypeConfig};
use gatekeeper_proto::raft::v1 as pb;
use gatekeeper_proto::raft::v1::raft_service_client::RaftServiceClient;
use gatekeeper_proto::raft::v1::raft_service_server::RaftService;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Raft, Snapshot, SnapshotMeta, StoredMembership, Vote};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{self, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex as AsyncMutex, Semaphore};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// TLS towards peers: tonic's client config (the cluster CA and this node's certificate as its
/// client identity), swappable when the node re-reads its certificate (SIGHUP). Channels made
/// under an older config are replaced on their next use. Each peer's certificate is verified for
/// the host of its Raft address.
#[derive(Clone, Default)]
pub struct PeerTls(Arc<RwLock<Option<(ClientTlsConfig, u64)>>>);

impl PeerTls {
    /// TLS with `config` (its `domain_name` is set per peer).
    pub fn new(config: ClientTlsConfig) -> Self {
        Self(Arc::new(RwLock::new(Some((config, 0)))))
    }

    /// Replaces the config; new channels use it.
    pub fn set(&self, config: ClientTlsConfig) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        let generation = g.as_ref().map_or(0, |(_, n)| n + 1);
        *g = Some((config, generation));
    }

    fn current(&self) -> Option<(ClientTlsConfig, u64)> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.current() {
            Some((_, generation)) => write!(f, "PeerTls(generation {generation})"),
            None => f.write_str("PeerTls(plaintext)"),
        }
    }
}

/// The host part of `host:port` (`[v6]:port` gives `v6`).
pub fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    address.rsplit_once(':').map_or(address, |(h, _)| h)
}

/// Network tunables. Defaults are documented on each field.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// TLS towards peers; `None` is plaintext (development mode only).
    pub tls: Option<PeerTls>,
    /// Largest gRPC message sent or accepted. Default 8 MiB.
    pub max_message_bytes: usize,
    /// Snapshot stream chunk size. Default 1 MiB.
    pub snapshot_chunk_bytes: usize,
    /// Minimum deadline for a whole snapshot transfer. Default 60 s.
    pub snapshot_timeout: Duration,
    /// TCP connect timeout. Default 1 s.
    pub connect_timeout: Duration,
    /// Largest snapshot received (or sent). Default 256 MiB: see
    /// [`DEFAULT_MAX_SNAPSHOT_BYTES`].
    pub max_snapshot_bytes: u64,
    /// The leader checks who may make each proposal before appending it
    /// ([`check_proposal`]). Off only in the development test hook `unchecked_proposals`, which
    /// lets forged entries reach the log so tests can see every node refuse them at apply.
    pub check_proposals: bool,
}

/// Default cap on a snapshot: 256 MiB. A snapshot is the JSON of the whole state; a worker costs
/// about 330 bytes in it (with its cluster), a session or contract binding about 135, a member
/// with DCAP evidence about 10 KiB. A state at Phala's scale (~40,000 workers and as many
/// sessions, a few thousand contracts, a dozen members) is about 20 MiB, so the cap leaves more
/// than ten times that in reserve, while bounding what a peer can make this node write to disk
/// and decode (the decoded state takes a few times its JSON size in memory).
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            tls: None,
            max_message_bytes: 8 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            check_proposals: true,
        }
    }
}

/// Fault hooks shared by the client and server halves of one node.
#[derive(Clone, Default, Debug)]
pub struct Faults {
    isolated: Arc<AtomicBool>,
}

impl Faults {
    /// Drop (true) or pass (false) every Raft RPC in and out.
    pub fn set_isolated(&self, on: bool) {
        self.isolated.store(on, Ordering::SeqCst);
    }

    /// Whether the node is isolated.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }
}

/// When this node last accepted an AppendEntries from a leader (unix ms; 0 = never), and from
/// which leader.
#[derive(Clone, Default, Debug)]
pub struct LeaderContact {
    at: Arc<AtomicU64>,
    /// The leader of the last contact, plus one (0 = none recorded).
    leader: Arc<AtomicU64>,
}

impl LeaderContact {
    /// Records contact now.
    pub fn touch(&self) {
        self.at.store(now_ms(), Ordering::Relaxed);
    }

    /// Records contact now with `leader`, a leader whose election this node verified.
    pub fn touch_from(&self, leader: NodeId) {
        self.leader
            .store(leader.saturating_add(1), Ordering::Relaxed);
        self.touch();
    }

    /// Milliseconds since the last contact, or `None` if never.
    pub fn millis_since(&self) -> Option<u64> {
        match self.at.load(Ordering::Relaxed) {
            0 => None,
            t => Some(now_ms().saturating_sub(t)),
        }
    }

    /// The leader of the last contact recorded with [`LeaderContact::touch_from`].
    pub fn leader(&self) -> Option<NodeId> {
        self.leader.load(Ordering::Relaxed).checked_sub(1)
    }
}

/// Entry bytes one AppendEntries carries at most (besides a first entry larger than that):
/// an eighth of the message cap, at least 64 KiB.
pub fn append_budget(max_message_bytes: usize) -> usize {
    (max_message_bytes / 8).max(64 << 10)
}

/// How many of `entries`, from the first, fit in `budget` bytes (at least one).
pub fn entries_within(entries: &[openraft::Entry<TypeConfig>], budget: usize) -> usize {
    let mut total = 0usize;
    for (i, e) in entries.iter().enumerate() {
        total = total.saturating_add(match &e.payload {
            openraft::EntryPayload::Normal(c) => c.0.len() + 64,
            openraft::EntryPayload::Membership(m) => 256 + 128 * m.nodes().count(),
            openraft::EntryPayload::Blank => 64,
        });
        if total > budget && i > 0 {
            return i;
        }
    }
    entries.len()
}

/// A cached channel to a peer: its address, the [`PeerTls`] generation it was made with, the
/// channel.
type CachedChannel = (String, u64, Channel);

/// Creates per-peer clients; owns the channel cache.
#[derive(Clone)]
pub struct Network {
    channels: Arc<Mutex<HashMap<NodeId, CachedChannel>>>,
    confirmed: Confirmed,
    /// The local Raft (set once it exists): its leader's progress tells when a follower's
    /// replication starts afresh, so its reversion floor is dropped.
    raft: Arc<std::sync::OnceLock<Raft<TypeConfig>>>,
    faults: Faults,
    config: NetworkConfig,
    /// Vote grants this node received as a candidate, sent as its proof of election.
    elections: Elections,
    /// Consecutive failed snapshot transfers per follower (their backoff).
    snapshot_failures: Arc<Mutex<HashMap<NodeId, u32>>>,
    /// When this leader last stood again because a peer answered with a newer vote, and how
    /// many times it did with less than [`STAND_AGAIN_MEMORY`] between two.
    stood_again: Arc<Mutex<Option<(std::time::Instant, u32)>>>,
    /// A vote this node gave outside openraft: it does not stand in that term or below.
    pledge: Pledge,
    /// Where peers' answers are recorded (failure tolerance in `/metrics`).
    telemetry: crate::telemetry::RaftTelemetry,
}

impl Network {
    /// A network with the given fault hooks and tunables.
    pub fn new(faults: Faults, config: NetworkConfig) -> Self {
        Self {
            channels: Default::default(),
            confirmed: Default::default(),
            raft: Default::default(),
            faults,
            config,
            elections: Elections::default(),
            snapshot_failures: Default::default(),
            stood_again: Default::default(),
            pledge: Pledge::in_memory(),
            telemetry: Default::default(),
        }
    }

    /// Records peers' answers in `telemetry` (shared with the replica).
    pub fn with_telemetry(mut self, telemetry: crate::telemetry::RaftTelemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Shares the node's vote pledge ([`crate::pledge`]) with the server half.
    pub fn with_pledge(mut self, pledge: Pledge) -> Self {
        self.pledge = pledge;
        self
    }

    /// Uses `elections` for proofs of election (shared with the server half).
    pub fn with_elections(mut self, elections: Elections) -> Self {
        self.elections = elections;
        self
    }

    /// The cached channel to `target` at `addr` (created lazily; replaced if the address
    /// changed). Shared by Raft replication and the replica's forwarded writes and read-index calls.
    pub(crate) fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let tls = self.config.tls.as_ref().and_then(|t| t.current());
        let generation = tls.as_ref().map_or(0, |(_, g)| *g);
        let mut map = self.channels.lock().expect("channel cache lock");
        if let Some((a, g, ch)) = map.get(&target) {
            if a == addr && *g == generation {
                return Ok(ch.clone());
            }
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad raft address {addr:?} for node {target}: {e}"))?;
        if let Some((tls, _)) = tls {
            endpoint = endpoint
                .tls_config(tls.domain_name(host_of(addr)))
                .map_err(|e| format!("TLS settings for node {target} at {addr}: {e}"))?;
        }
        let ch = endpoint
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .connect_lazy();
        map.insert(target, (addr.to_string(), generation, ch.clone()));
        Ok(ch)
    }
}

/// The node a vote "for no one" names: what a leader adopts from a follower's newer vote instead
/// of that vote itself (see [`Network::newer_vote_answer`]). Not a valid node id.
pub const NO_CANDIDATE: NodeId = NodeId::MAX;

/// A leader stands again at once the first time, then after a gap doubling from the minimum
/// election timeout this many times at most (64 times it).
const STAND_AGAIN_MAX_DOUBLINGS: u32 = 6;

/// How long a stand-again counts towards the next gap: longer than the largest gap (64 times an
/// election timeout of up to ~10 s), so a member repeating its answer never resets it.
const STAND_AGAIN_MEMORY: Duration = Duration::from_secs(1800);

/// For how many minimum election timeouts after its last message a node does not vote back the
/// leader it followed (see the vote handler).
const SILENT_LEADER_WINDOW: u64 = 10;

/// How long a leader that stands again waits for openraft to step down first.
const STEP_DOWN_WAIT: Duration = Duration::from_secs(2);

impl Network {
    /// What this leader takes from a follower's answer that it holds `newer`, a vote above the
    /// leader's `sent`: openraft would adopt `newer` as its own vote, which is a vote for the
    /// candidate it names, and step down. A member holding its certificate sent such answers on
    /// purpose, then asked for votes as soon as the followers' stickiness window closed and won
    /// (attack round 6: 7 of 7). A committed `newer` proves nothing either: answers carry no
    /// grants.
    ///
    /// So the leader adopts only the newer *term*, voting for no one ([`NO_CANDIDATE`]), steps
    /// down, and at once stands for election in the term above; its followers, whose last leader
    /// it is, grant it at once (the stickiness exemption in the vote handler) while they still
    /// refuse everyone else. An honest node that campaigned while cut off is brought back the
    /// same way. The first time at once, then after a gap that doubles each time (from the
    /// minimum election timeout up to 64 times it; reset after a minute without): answers in
    /// between are refused (the peer is retried), so a member repeating the answer costs a short
    /// election now and then, never the leadership.
    fn newer_vote_answer(
        &self,
        target: NodeId,
        sent: &Vote<NodeId>,
        newer: &Vote<NodeId>,
    ) -> Result<Vote<NodeId>, Refused> {
        let Some(raft) = self.raft.get() else {
            return Err(Refused("this node's raft is not running".into()));
        };
        let adopted = Vote::new(newer.leader_id.term, NO_CANDIDATE);
        if adopted <= *sent {
            return Err(Refused(format!(
                "vote {newer} is not in a term above this node's vote {sent}"
            )));
        }
        let quiet = Duration::from_millis(raft.config().election_timeout_min);
        // Standing again in a term the followers refuse as too far above theirs would leave
        // the cluster leaderless until the member's own candidacy (found by review).
        if newer.leader_id.term
            >= sent
                .leader_id
                .term
                .saturating_add(checks::MAX_TERM_STEP / 2)
        {
            return Err(Refused(format!(
                "vote {newer} is more than 2^23 terms above this node's {sent}"
            )));
        }
        {
            let mut last = self.stood_again.lock().expect("stood-again lock");
            let times = match *last {
                Some((t, n)) if t.elapsed() < STAND_AGAIN_MEMORY => {
                    let gap = quiet * (1u32 << n.min(STAND_AGAIN_MAX_DOUBLINGS));
                    if t.elapsed() < gap {
                        return Err(Refused(format!(
                            "vote {newer}: this node stood for election again {} ms ago, and \
                             does not before {} ms",
                            t.elapsed().as_millis(),
                            gap.as_millis()
                        )));
                    }
                    n + 1
                }
                _ => 0,
            };
            *last = Some((std::time::Instant::now(), times));
        }
        tracing::warn!(
            peer = target, vote = %newer, own_vote = %sent,
            "a peer answered with a newer vote: not adopting it, standing for election again \
             at once"
        );
        let raft = raft.clone();
        let term = newer.leader_id.term;
        tokio::spawn(async move {
            // openraft steps down when it handles the answer returned below; stand once it has.
            let mut m = raft.metrics();
            let stepped_down = m.wait_for(|m| {
                m.current_term >= term
                    && !matches!(
                        m.state,
                        openraft::ServerState::Leader | openraft::ServerState::Candidate
                    )
            });
            match tokio::time::timeout(STEP_DOWN_WAIT, stepped_down).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            if raft.metrics().borrow().state == openraft::ServerState::Leader {
                return;
            }
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "cannot stand for election");
            }
        });
        Ok(adopted)
    }
}

impl Network {
    /// This node pledged `pledge` and now stands in a term at or below it, which the pledge
    /// forbids: the leader it pledged to is gone. openraft raises its term by one per election,
    /// which from a pledge far above would take as many election timeouts; so its vote is moved
    /// to the pledged term at once, for no one (a local vote request naming [`NO_CANDIDATE`]),
    /// and its next candidacy is in the term above (found by review).
    fn rise_to_pledged_term(&self, pledge: Vote<NodeId>) {
        let Some(raft) = self.raft.get().cloned() else {
            return;
        };
        if let Some(n) = PLEDGED_CANDIDACY.pass(std::time::Instant::now()) {
            tracing::warn!(
                pledge = %pledge, refused_since_last_line = n,
                "this node stands below the term of a vote it pledged: moving to that term"
            );
        }
        tokio::spawn(async move {
            let any_log = openraft::LogId::new(
                openraft::CommittedLeaderId::new(u64::MAX, NO_CANDIDATE),
                u64::MAX,
            );
            let req = VoteRequest::new(
                Vote::new(pledge.leader_id.term, NO_CANDIDATE),
                Some(any_log),
            );
            if let Err(e) = raft.vote(req).await {
                tracing::warn!(error = %e, "cannot move to the pledged term");
            }
        });
    }

    /// Gives the network its Raft (called once, right after `Raft::new`).
    pub(crate) fn set_raft(&self, raft: Raft<TypeConfig>) {
        let _ = self.raft.set(raft);
    }

    /// Whether this leader's progress for `target` is fresh (nothing matched yet): then openraft
    /// holds no floor for it either (e.g. the node left and was joined again), and neither may
    /// the reversion guard.
    fn progress_is_fresh(&self, target: NodeId) -> bool {
        let Some(raft) = self.raft.get() else {
            return true;
        };
        let m = raft.metrics();
        let m = m.borrow();
        m.replication
            .as_ref()
            .and_then(|r| r.get(&target).copied().flatten())
            .is_none()
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        if self.progress_is_fresh(target) {
            self.confirmed
                .lock()
                .expect("confirmed lock")
                .remove(&target);
        }
        PeerClient {
            target,
            address: node.raft_address.clone(),
            network: self.clone(),
            confirmed: self.confirmed.clone(),
            faults: self.faults.clone(),
            config: self.config.clone(),
        }
    }
}

/// Per follower, the highest log index it confirmed holding to the leader with this vote.
/// openraft asserts that a follower's log never goes back below what it confirmed (its leader
/// panics otherwise: "follower log reversion is not allowed"), so such an answer — a follower
/// that lost its data, or a member lying — is refused here before openraft sees it.
type Confirmed = Arc<Mutex<HashMap<NodeId, (Vote<NodeId>, u64)>>>;

/// "follower log reversion refused" is logged at most once a second.
static REVERSIONS: crate::lograte::LogGate = crate::lograte::LogGate::new(Duration::from_secs(1));

/// The longest pause after a failed RPC: below the shortest election timeout a deployment may
/// configure with the default heartbeat (2 × 250 ms), so a follower that failed a few calls
/// still hears from its leader before it starts an election.
const BACKOFF_CAP: Duration = Duration::from_millis(500);

/// The client for one peer.
pub struct PeerClient {
    target: NodeId,
    address: String,
    network: Network,
    confirmed: Confirmed,
    faults: Faults,
    config: NetworkConfig,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

fn status_to_rpc<E: std::error::Error>(target: NodeId, s: Status) -> RpcErr<E> {
    let e = io::Error::other(format!("node {target}: {}: {}", s.code(), s.message()));
    match s.code() {
        // The deadline expired (here or at the peer): the call already took the whole TTL, so
        // asking again at the next heartbeat cannot spin; backing off would starve a slow but
        // live follower of heartbeats until it starts an election.
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Network(NetworkError::new(&e))
        }
        // Every other failure backs off (openraft asks again at once after a plain network
        // error: a peer that refuses or fails every message at once would otherwise be asked
        // ~1000 times a second).
        _ => RPCError::Unreachable(Unreachable::new(&e)),
    }
}

/// Response metadata naming why a cluster listener refused a caller, when a caller can act on
/// it ([`NOT_IN_MEMBERSHIP`]).
pub const REFUSAL_METADATA: &str = "gatekeeper-refusal";

/// [`REFUSAL_METADATA`]: the caller is not in the refusing node's membership.
pub const NOT_IN_MEMBERSHIP: &str = "not-in-membership";

/// A peer's refusal because this node is not in its membership (its admission says so).
fn is_nonmember_refusal(s: &Status) -> bool {
    s.metadata()
        .get(REFUSAL_METADATA)
        .is_some_and(|v| v.as_bytes() == NOT_IN_MEMBERSHIP.as_bytes())
}

fn bad_reply<E: std::error::Error>(e: ConvertError) -> RpcErr<E> {
    // Undecodable answers back off too (see `refused_reply`).
    RPCError::Unreachable(Unreachable::new(&e))
}

/// Refused answers are logged at most once a second: a peer answering at once, over and over,
/// must not fill the disk.
/// Messages from leaders without a proof of election: logged at most once a second.
static UNPROVEN_LEADERS: crate::lograte::LogGate =
    crate::lograte::LogGate::new(Duration::from_secs(1));

/// Vote refusals naming a newer vote are logged at most once a second.
static NEWER_VOTE_REFUSALS: crate::lograte::LogGate =
    crate::lograte::LogGate::new(Duration::from_secs(1));

/// Candidacies a pledge holds back are logged at most once a second.
static PLEDGED_CANDIDACY: crate::lograte::LogGate =
    crate::lograte::LogGate::new(Duration::from_secs(1));

/// Refused membership changes are logged at most once a second.
static UNAUTHORIZED_MEMBERSHIP: crate::lograte::LogGate =
    crate::lograte::LogGate::new(Duration::from_secs(1));

static REFUSED_ANSWERS: crate::lograte::LogGate =
    crate::lograte::LogGate::new(Duration::from_secs(1));

/// A refused answer is reported as `Unreachable`, so openraft backs off before asking that peer
/// again (50 ms doubling to 500 ms) instead of retrying at once.
fn refused_reply<E: std::error::Error>(target: NodeId, e: Refused) -> RpcErr<E> {
    if let Some(left_out) = REFUSED_ANSWERS.pass(std::time::Instant::now()) {
        tracing::warn!(
            peer = target, reason = %e, refused_since_last_line = left_out,
            "refused an answer from a peer"
        );
    }
    RPCError::Unreachable(Unreachable::new(&io::Error::other(format!(
        "node {target} answered with a message this node refuses: {e}"
    ))))
}

/// Decides whether an append-entries answer from `target` goes back below `floor`, the highest
/// index it already confirmed to this leader under the same vote. `Ok(Some(i))` is the new
/// floor, `Ok(None)` leaves it as it is.
///
/// A conflict at or below the floor, or a partial success short of it, is a reversion: the
/// follower lost entries it acknowledged (openraft's leader would panic on it). A success at a
/// lower index is not: it says only that the follower holds that entry (a follower truncates
/// only on a conflict), and openraft's leadership check for reads sends its heartbeat at the
/// leader's view of `matching`, which may lag behind what a replication answer that just came
/// back confirmed (refusing it failed linearizable reads with "not enough for a quorum").
fn reversion_check(
    target: NodeId,
    floor: Option<u64>,
    rpc: &AppendEntriesRequest<TypeConfig>,
    resp: &AppendEntriesResponse<NodeId>,
) -> Result<Option<u64>, Refused> {
    let prev = rpc.prev_log_id.map(|l| l.index);
    let reached = match resp {
        AppendEntriesResponse::Success => rpc.entries.last().map(|e| e.log_id.index).or(prev),
        AppendEntriesResponse::PartialSuccess(m) => {
            let m = m.map(|l| l.index);
            if let Some(floor) = floor.filter(|&f| m.is_none_or(|m| m < f)) {
                return Err(Refused(format!(
                    "node {target} accepted entries only up to {m:?} after confirming {floor}"
                )));
            }
            m
        }
        AppendEntriesResponse::Conflict => {
            if let (Some(floor), Some(p)) = (floor, prev) {
                if p <= floor {
                    return Err(Refused(format!(
                        "node {target} says its log conflicts at index {p}, but it confirmed \
                         holding entries up to {floor}: it lost its data or misbehaves. Not \
                         replicating to it; if it lost its disk, `leave` it and `join` it again"
                    )));
                }
            }
            None
        }
        AppendEntriesResponse::HigherVote(_) => None,
    };
    Ok(reached.map(|r| r.max(floor.unwrap_or(0))))
}

impl PeerClient {
    /// Refuses an answer that goes back below what this follower already confirmed to this
    /// leader (see [`Confirmed`] and [`reversion_check`]); records what a success confirms.
    fn check_no_reversion(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        resp: &AppendEntriesResponse<NodeId>,
    ) -> Result<(), Refused> {
        let mut map = self.confirmed.lock().expect("confirmed lock");
        let floor = match map.get(&self.target) {
            Some((vote, index)) if *vote == rpc.vote => Some(*index),
            _ => None,
        };
        match reversion_check(self.target, floor, rpc, resp) {
            Ok(Some(reached)) => {
                map.insert(self.target, (rpc.vote, reached));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                drop(map);
                if let Some(n) = REVERSIONS.pass(std::time::Instant::now()) {
                    tracing::error!(
                        peer = self.target, reason = %e, refused_since_last_line = n,
                        "follower log reversion refused"
                    );
                }
                Err(e)
            }
        }
    }

    /// A client for the peer, or why it cannot be reached.
    fn client(&self) -> Result<RaftServiceClient<Channel>, Unreachable> {
        if self.faults.is_isolated() {
            return Err(Unreachable::new(&io::Error::other(
                "isolated by fault hook",
            )));
        }
        // From the cache on every call, so a TLS reload (SIGHUP) reaches replication streams
        // that outlive it (openraft keeps a client for a stream's whole life).
        let ch = match self.network.channel(self.target, &self.address) {
            Ok(ch) => ch,
            Err(m) => {
                return Err(Unreachable::new(&io::Error::other(m)));
            }
        };
        Ok(RaftServiceClient::new(ch)
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        // At most a budget of entry bytes per message; the follower's success then covers the
        // entries sent (a partial success for openraft, which sends the rest next). openraft
        // sends up to `max_payload_entries` entries whatever their size: large entries once made
        // a message over the cap, and a follower that had been down never caught up (attack
        // round 11).
        let keep = entries_within(
            &rpc.entries,
            append_budget(self.network.config.max_message_bytes),
        );
        let truncated = keep < rpc.entries.len();
        let rpc = if truncated {
            AppendEntriesRequest {
                entries: rpc.entries[..keep].to_vec(),
                ..rpc
            }
        } else {
            rpc
        };
        let mut msg = convert::append_req_to_pb(&rpc);
        if rpc.vote.is_committed() {
            msg.election = convert::election_to_pb(
                &self
                    .network
                    .elections
                    .proof(rpc.vote.leader_id.term, rpc.vote.leader_id.node_id),
            );
        }
        let mut req = Request::new(msg);
        req.set_timeout(option.hard_ttl());
        let resp = client.append_entries(req).await.map_err(|s| {
            if is_nonmember_refusal(&s) {
                self.network.telemetry.refused_as_nonmember(self.target);
            }
            status_to_rpc(self.target, s)
        })?;
        let resp = convert::append_resp_from_pb(resp.into_inner()).map_err(bad_reply)?;
        checks::check_append_response(&rpc, &resp).map_err(|e| refused_reply(self.target, e))?;
        self.network.telemetry.peer_answered(self.target);
        if let AppendEntriesResponse::HigherVote(newer) = &resp {
            return self
                .network
                .newer_vote_answer(self.target, &rpc.vote, newer)
                .map(AppendEntriesResponse::HigherVote)
                .map_err(|e| refused_reply(self.target, e));
        }
        self.check_no_reversion(&rpc, &resp)
            .map_err(|e| refused_reply(self.target, e))?;
        match resp {
            AppendEntriesResponse::Success if truncated => Ok(
                AppendEntriesResponse::PartialSuccess(rpc.entries.last().map(|e| e.log_id)),
            ),
            resp => Ok(resp),
        }
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        // openraft 0.9 replication sends snapshots through `full_snapshot` (below), which this
        // network streams; the chunk-at-a-time API is not used.
        let e = io::Error::other("chunked install_snapshot is not used: snapshots are streamed");
        Err(RPCError::Network(NetworkError::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let current = self.network.raft.get().map(|r| r.metrics().borrow().vote);
        if let Some(p) = current.and_then(|c| self.network.pledge.in_force(&c)) {
            if crate::pledge::forbids_vote(&p, &rpc.vote) {
                self.network.rise_to_pledged_term(p);
                return Err(RPCError::Unreachable(Unreachable::new(&io::Error::other(
                    format!(
                        "this node voted {p}: it does not stand in term {}",
                        rpc.vote.leader_id.term
                    ),
                ))));
            }
        }
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let mut req = Request::new(convert::vote_req_to_pb(&rpc));
        req.set_timeout(option.hard_ttl());
        let resp = client
            .vote(req)
            .await
            .map_err(|s| {
                if is_nonmember_refusal(&s) {
                    self.network.telemetry.refused_as_nonmember(self.target);
                }
                status_to_rpc(self.target, s)
            })?
            .into_inner();
        let grant = resp.grant.clone();
        let mut resp = convert::vote_resp_from_pb(resp).map_err(bad_reply)?;
        checks::check_vote_response(&rpc, &resp).map_err(|e| refused_reply(self.target, e))?;
        self.network.telemetry.peer_answered(self.target);
        // A grant is for the vote asked, nothing else: openraft takes a "grant" of another vote
        // as a refusal and adopts that vote (a member answered a leader standing again with a
        // granted newer vote of its own: found by review).
        if resp.vote_granted && resp.vote != rpc.vote {
            return Err(refused_reply(
                self.target,
                Refused(format!(
                    "VoteRequest answer: granted, but for vote {} instead of {}",
                    resp.vote, rpc.vote
                )),
            ));
        }
        // openraft adopts a refusal's vote, uncommitted, when it is above its own: a vote for
        // whoever the answer names, and the end of this candidacy. A member answered every
        // candidate with a vote for itself in the next term, collected the grants of those that
        // adopted it, and kept any election from completing meanwhile (attack round 7). A
        // candidate takes nothing from a refusal: it stays a candidate, and learns of a newer
        // term from that candidate's own request, or a newer leader from its messages.
        let mut newer = resp.vote;
        newer.committed = false;
        if !resp.vote_granted && newer > rpc.vote {
            if let Some(n) = NEWER_VOTE_REFUSALS.pass(std::time::Instant::now()) {
                tracing::info!(
                    peer = self.target, vote = %resp.vote, own_vote = %rpc.vote,
                    ignored_since_last_line = n,
                    "a vote refusal names a newer vote: not adopting it"
                );
            }
            resp.vote = rpc.vote;
        }
        if resp.vote_granted {
            self.network.elections.record(
                rpc.vote.leader_id.term,
                rpc.vote.leader_id.node_id,
                self.target,
                grant,
            );
        }
        Ok(resp)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        // openraft retries a failed transfer after a fixed 50 ms: back off here, doubling per
        // consecutive failure to this follower up to 5 s (a follower refusing every snapshot
        // was sent one ~19 times a second; found by attack).
        let failures = self
            .network
            .snapshot_failures
            .lock()
            .expect("snapshot failures lock")
            .get(&self.target)
            .copied()
            .unwrap_or(0);
        if failures > 0 {
            let wait = Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5));
            tokio::time::sleep(wait).await;
        }
        let result = self.send_snapshot(vote, snapshot, cancel, option).await;
        let mut map = self
            .network
            .snapshot_failures
            .lock()
            .expect("snapshot failures lock");
        match &result {
            Ok(_) => {
                map.remove(&self.target);
                self.network.telemetry.peer_answered(self.target);
            }
            Err(StreamingError::Closed(_)) => {}
            Err(_) => *map.entry(self.target).or_insert(0) += 1,
        }
        result
    }

    fn backoff(&self) -> Backoff {
        Backoff::new((0..).map(|i: u32| Duration::from_millis(50u64 << i.min(4)).min(BACKOFF_CAP)))
    }
}

impl PeerClient {
    /// Streams one snapshot to the follower (see `full_snapshot`).
    async fn send_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut client = self.client().map_err(StreamingError::Unreachable)?;
        let network_err = |e: io::Error| StreamingError::Network(NetworkError::new(&e));
        // The data is the file from its position on; it is read chunk by chunk as the stream
        // is sent, never whole.
        let mut file = snapshot.snapshot.into_std().await;
        let start = file.stream_position().map_err(network_err)?;
        let total = file
            .metadata()
            .map_err(network_err)?
            .len()
            .saturating_sub(start);
        if total > self.config.max_snapshot_bytes {
            let e = io::Error::other(format!(
                "the snapshot is {total} bytes, above max_snapshot_bytes ({}): node {} would \
                 refuse it; raise max_snapshot_bytes on every node",
                self.config.max_snapshot_bytes, self.target
            ));
            tracing::error!(error = %e, "cannot send a snapshot");
            return Err(network_err(e));
        }
        let header = pb::SnapshotHeader {
            vote: Some(convert::vote_to_pb(&vote)),
            meta: Some(convert::snapshot_meta_to_pb(&snapshot.meta)),
            total_size: total,
            election: convert::election_to_pb(
                &self
                    .network
                    .elections
                    .proof(vote.leader_id.term, vote.leader_id.node_id),
            ),
        };
        let chunks = file_chunks(
            file,
            start,
            total,
            header,
            self.config.snapshot_chunk_bytes,
            self.target,
        );
        let mut req = Request::new(chunks);
        req.set_timeout(option.hard_ttl().max(self.config.snapshot_timeout));
        let target = self.target;
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            resp = client.install_snapshot(req) => {
                // Every failure but an expired deadline backs off, as for AppendEntries: a
                // follower that refuses every snapshot at once was sent it ~700 times a second
                // (found by attack).
                let resp = resp.map_err(|s| {
                    let e = io::Error::other(format!("node {target}: {}: {}", s.code(), s.message()));
                    match s.code() {
                        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                            StreamingError::Network(NetworkError::new(&e))
                        }
                        _ => StreamingError::Unreachable(Unreachable::new(&e)),
                    }
                })?;
                let answer = convert::vote_from_pb(resp.into_inner().vote)
                    .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
                let refuse = |e: Refused| {
                    tracing::warn!(peer = target, reason = %e, "ignoring an answer from a peer");
                    StreamingError::Unreachable(Unreachable::new(&io::Error::other(e.0)))
                };
                checks::check_snapshot_response(&answer, &vote).map_err(refuse)?;
                let answer = if answer > vote {
                    self.network.newer_vote_answer(target, &vote, &answer).map_err(refuse)?
                } else {
                    answer
                };
                Ok(SnapshotResponse { vote: answer })
            }
        }
    }
}

/// The leader's check of a proposal before it is appended: decodes it and runs
/// [`crate::state::authorize`] against the applied state, as the leader that would append it.
pub fn check_proposal(
    sm: &SmStore,
    leader: NodeId,
    bytes: &[u8],
) -> Result<(), crate::replica::ReplicaError> {
    check_decoded(sm, leader, crate::state::decode_entry(bytes))
        .map_err(|(code, message)| crate::replica::ReplicaError::Refused { code, message })
}

/// [`check_proposal`] of an entry already decoded: the refusal's code and message.
fn check_decoded(
    sm: &SmStore,
    leader: NodeId,
    decoded: Result<crate::state::Decoded, String>,
) -> Result<(), (crate::state::RejectCode, String)> {
    use crate::state::{RejectCode, Reply};
    let d = decoded.map_err(|e| (RejectCode::MalformedCommand, e))?;
    let a = sm.read();
    crate::state::authorize(&a.state, &a.apply_context(leader), &d)
        .and_then(|()| match &d.operator {
            Some(op) => crate::state::check_operator_fresh(op, crate::now_ms()),
            None => Ok(()),
        })
        .map_err(|r| match r {
            Reply::Rejected { code, message } => (code, message),
            other => (
                RejectCode::InvalidState,
                format!("unexpected check result {other:?}"),
            ),
        })
}

/// Streams `total` bytes of `file` from `start` as snapshot chunks (the first carries
/// `header`, the last has `done`), read on a blocking thread one chunk ahead of the sender. A
/// read error ends the stream early, which the receiver refuses as incomplete.
fn file_chunks(
    mut file: std::fs::File,
    start: u64,
    total: u64,
    header: pb::SnapshotHeader,
    chunk: usize,
    target: NodeId,
) -> tokio_stream::wrappers::ReceiverStream<pb::SnapshotChunk> {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let chunk = chunk.max(1);
    tokio::task::spawn_blocking(move || {
        let mut header = Some(header);
        let mut offset: u64 = 0;
        if let Err(e) = file.seek(SeekFrom::Start(start)) {
            tracing::error!(peer = target, error = %e, "cannot read the snapshot to send");
            return;
        }
        loop {
            let want = (total - offset).min(chunk as u64) as usize;
            let mut data = vec![0u8; want];
            if let Err(e) = file.read_exact(&mut data) {
                tracing::error!(peer = target, error = %e, "cannot read the snapshot to send");
                return;
            }
            let done = offset + want as u64 == total;
            let c = pb::SnapshotChunk {
                header: header.take(),
                offset,
                data,
                done,
            };
            if tx.blocking_send(c).is_err() || done {
                return;
            }
            offset += want as u64;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// One Raft RPC as the admission hook sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftCall {
    /// The RPC: `AppendEntries`, `Vote`, `InstallSnapshot`, `ClientWrite` or `ReadIndex`.
    pub method: &'static str,
    /// The node the message says it comes from (the vote's leader or candidate id); `None` for
    /// `ClientWrite` and `ReadIndex`, which any member may send.
    pub claimed_sender: Option<NodeId>,
}

/// Decides whether the caller of a Raft RPC may make it: given the request's extensions (where
/// the transport put the verified peer certificate) and the call. Runs before any check or
/// openraft sees the message; its error is returned to the caller as is.
pub type Admission = Arc<dyn Fn(&tonic::Extensions, RaftCall) -> Result<(), Status> + Send + Sync>;

/// The server half: answers peers' Raft RPCs with the local `Raft`, after [`crate::checks`].
#[derive(Clone)]
pub struct RaftServer {
    /// Who may call (none: everyone; development plaintext only).
    admission: Option<Admission>,
    raft: Raft<TypeConfig>,
    node_id: NodeId,
    log: LogStore,
    sm: SmStore,
    faults: Faults,
    contact: LeaderContact,
    config: NetworkConfig,
    /// Proofs of election: this node's grants, and the leader it last verified.
    elections: Elections,
    /// When this node last led (see [`RaftServer::with_led`]).
    led: LeaderContact,
    /// A vote this node gave outside openraft ([`crate::pledge`]).
    pledge: Pledge,
    /// Vote requests are decided one at a time (the pledge path and openraft's own).
    vote_turn: Arc<AsyncMutex<()>>,
    /// AppendEntries and snapshot installs pass one at a time, so what the checks read (the
    /// committed log id, the stored log) is still true when openraft handles the message.
    follower_turn: Arc<AsyncMutex<()>>,
    /// One snapshot transfer at a time (openraft sends one per follower).
    snapshot_slot: Arc<Semaphore>,
    /// Group commit of forwarded writes with this node's own ([`crate::batch`]); without
    /// one, each forwarded write is its own entry.
    batcher: Option<crate::batch::Batcher>,
    /// What each proposer may still forward ([`ForwardBudgets`]).
    forwarded: ForwardBudgets,
}

/// Proposals a node may forward to this one: a burst of [`FORWARD_BURST`] proposals and
/// [`FORWARD_BURST_BYTES`], refilled at a quarter of that per second. Far above what a node's
/// own components propose (a few per checkpoint, epoch or operator call, and development
/// canary writes), far below what fills a disk.
#[derive(Clone, Default)]
pub struct ForwardBudgets(Arc<Mutex<HashMap<NodeId, Budget>>>);

/// Proposals and bytes left, and when they were last counted.
type Budget = (f64, f64, std::time::Instant);

/// Forwarded proposals a node may send at once.
pub const FORWARD_BURST: f64 = 512.0;
/// Forwarded proposal bytes a node may send at once.
pub const FORWARD_BURST_BYTES: f64 = (4 << 20) as f64;

impl ForwardBudgets {
    /// Takes one proposal of `bytes` from `node`'s budget at `now`, or refuses it
    /// (`RESOURCE_EXHAUSTED`, the caller retries later).
    pub fn take(&self, node: NodeId, bytes: usize, now: std::time::Instant) -> Result<(), Status> {
        let mut m = self.0.lock().expect("forward budgets lock");
        let (count, size, at) = m
            .entry(node)
            .or_insert((FORWARD_BURST, FORWARD_BURST_BYTES, now));
        let secs = now.saturating_duration_since(*at).as_secs_f64();
        *count = (*count + secs * FORWARD_BURST / 4.0).min(FORWARD_BURST);
        *size = (*size + secs * FORWARD_BURST_BYTES / 4.0).min(FORWARD_BURST_BYTES);
        *at = now;
        if *count < 1.0 || *size < bytes as f64 {
            return Err(Status::resource_exhausted(format!(
                "node {node} forwards proposals faster than {} a second or {} bytes a second: \
                 retry later",
                FORWARD_BURST / 4.0,
                FORWARD_BURST_BYTES / 4.0
            )));
        }
        *count -= 1.0;
        *size -= bytes as f64;
        Ok(())
    }
}

impl RaftServer {
    /// Wraps the local Raft; `log` and `sm` are its stores (read by the checks; `sm` also names
    /// where received snapshots are staged).
    pub fn new(
        raft: Raft<TypeConfig>,
        node_id: NodeId,
        log: LogStore,
        sm: SmStore,
        faults: Faults,
        contact: LeaderContact,
        config: NetworkConfig,
    ) -> Self {
        Self {
            admission: None,
            raft,
            node_id,
            log,
            sm,
            faults,
            contact,
            config,
            elections: Elections::default(),
            led: LeaderContact::default(),
            pledge: Pledge::in_memory(),
            vote_turn: Arc::new(AsyncMutex::new(())),
            follower_turn: Arc::new(AsyncMutex::new(())),
            snapshot_slot: Arc::new(Semaphore::new(1)),
            batcher: None,
            forwarded: ForwardBudgets::default(),
        }
    }

    /// Uses `elections` for proofs of election (shared with the client half).
    pub fn with_elections(mut self, elections: Elections) -> Self {
        self.elections = elections;
        self
    }

    /// `led` is touched while this node leads (the replica does it): a node that led or heard
    /// from a leader within the minimum election timeout grants no vote.
    pub fn with_led(mut self, led: LeaderContact) -> Self {
        self.led = led;
        self
    }

    /// Shares the node's vote pledge ([`crate::pledge`]) with the client half.
    pub fn with_pledge(mut self, pledge: Pledge) -> Self {
        self.pledge = pledge;
        self
    }

    /// Groups forwarded writes with this node's own proposals ([`crate::batch`]).
    pub fn with_batcher(mut self, batcher: crate::batch::Batcher) -> Self {
        self.batcher = Some(batcher);
        self
    }

    /// Refuses a message from a leader of a term older than a vote this node pledged.
    fn check_pledge_for_leader(&self, leader: &Vote<NodeId>) -> Result<(), Status> {
        let current = self.raft.metrics().borrow().vote;
        match self.pledge.in_force(&current) {
            Some(p) if crate::pledge::forbids_leader(&p, leader) => {
                Err(Status::failed_precondition(format!(
                    "node {} voted {p}: it follows no leader of term {}",
                    self.node_id, leader.leader_id.term
                )))
            }
            _ => Ok(()),
        }
    }

    /// Refuses a message of a committed vote whose leader this node has not seen prove its
    /// election ([`crate::election`]). openraft's own vote here is deliberately not consulted:
    /// a leader proves itself in every message.
    fn check_election(
        &self,
        vote: &Vote<NodeId>,
        grants: &[pb::ElectionGrant],
    ) -> Result<(), Status> {
        if !vote.is_committed() {
            return Ok(());
        }
        let (term, leader) = (vote.leader_id.term, vote.leader_id.node_id);
        // Only a proof verified here counts: openraft's own vote may have been taken from a
        // peer's answer (a committed vote in a forged "higher vote" answer made a node follow
        // a member that never proved an election: found by attack).
        if self.elections.is_verified(term, leader) {
            return Ok(());
        }
        let anchor = self.sm.read().anchor();
        let grants = convert::election_from_pb(grants);
        match crate::election::verify_election(term, leader, &grants, &anchor) {
            Ok(_) => {
                self.elections.set_verified(term, leader);
                Ok(())
            }
            Err(e) => {
                if let Some(n) = UNPROVEN_LEADERS.pass(std::time::Instant::now()) {
                    tracing::warn!(
                        leader, term, reason = %e, refused_since_last_line = n,
                        "refused a message from a leader without a proof of election"
                    );
                }
                Err(Status::invalid_argument(format!("refused: {e}")))
            }
        }
    }

    /// The leader this node follows asks for its vote in a newer term: it stands again because a
    /// member answered it with a newer vote (see `Network::newer_vote_answer`). openraft's leader
    /// lease would refuse it like any candidate until the lease expires, and the member, asking
    /// the moment it expired, won (found by test). So this node grants it here, as openraft
    /// would once the lease expired (the candidate's log is not behind this node's), after
    /// recording the vote durably ([`crate::pledge`]). `None`: not that case, openraft decides.
    async fn vote_for_last_leader(
        &self,
        req: &VoteRequest<NodeId>,
        current: &Vote<NodeId>,
    ) -> Result<Option<pb::VoteResponse>, Status> {
        let candidate = req.vote.leader_id;
        let follows = current.is_committed() && current.leader_id.node_id == candidate.node_id;
        // Standing again happens at once; a leader that fell silent first is a candidate like
        // any other (attack round 9).
        let quiet = self.raft.config().election_timeout_min;
        let prompt = self.contact.millis_since().is_some_and(|ms| ms < quiet);
        if !follows || !prompt || req.vote <= *current || req.vote.is_committed() {
            return Ok(None);
        }
        // No entry lands between the comparison of the logs and the grant.
        let _turn = self.follower_turn.lock().await;
        let last = openraft::storage::RaftLogStorage::get_log_state(&mut self.log.clone())
            .await
            .map_err(|e| Status::unavailable(format!("cannot read the raft log: {e}")))?
            .last_log_id;
        if req.last_log_id < last {
            return Ok(None);
        }
        let pledge = self.pledge.clone();
        let given = req.vote;
        let recorded = tokio::task::spawn_blocking(move || pledge.give(given))
            .await
            .map_err(|e| Status::internal(format!("vote pledge task failed: {e}")))?
            .map_err(|e| Status::unavailable(format!("cannot record the vote: {e}")))?;
        if !recorded {
            return Ok(None);
        }
        tracing::info!(
            leader = candidate.node_id,
            term = candidate.term,
            "granted the leader this node follows its vote in a newer term"
        );
        let mut out = convert::vote_resp_to_pb(&VoteResponse::new(req.vote, last, true));
        out.grant = self.elections.grant(candidate.term, candidate.node_id);
        Ok(Some(out))
    }

    /// openraft's vote, read in its core loop (metrics may lag behind a vote just granted).
    async fn current_vote(&self) -> Result<Vote<NodeId>, Status> {
        self.raft
            .with_raft_state(|st| *st.vote_ref())
            .await
            .map_err(fatal)
    }

    /// The first membership entry of `req` no operator authorized (its position in
    /// `req.entries`, and why), checked with [`crate::state::check_membership_change`] against
    /// this node's applied state. The membership in force before an entry is the one before it
    /// in the same message, else this node's effective membership (its committed one when the
    /// entry replaces an uncommitted membership). Not checked before the cluster is initialised
    /// or while no configuration has a voter (bootstrap), nor for an entry this node holds.
    async fn unauthorized_membership(
        &self,
        req: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<Option<(usize, String)>, Status> {
        use openraft::EntryPayload;
        if !self.config.check_proposals
            || !req
                .entries
                .iter()
                .any(|e| matches!(e.payload, EntryPayload::Membership(_)))
        {
            return Ok(None);
        }
        let (effective, committed) = self
            .raft
            .with_raft_state(|st| {
                let e = st.membership_state.effective();
                let c = st.membership_state.committed();
                (
                    (*e.log_id(), e.membership().clone()),
                    (*c.log_id(), c.membership().clone()),
                )
            })
            .await
            .map_err(fatal)?;
        let a = self.sm.read();
        if a.state.gatekeeper_id.is_none() {
            return Ok(None);
        }
        let mut prev: Option<openraft::Membership<NodeId, Node>> = None;
        for (i, e) in req.entries.iter().enumerate() {
            let EntryPayload::Membership(next) = &e.payload else {
                continue;
            };
            let index = e.log_id.index;
            let before = match prev.take() {
                Some(p) => Some(p),
                None if [effective.0, committed.0].contains(&Some(e.log_id)) => None,
                None if effective.0.is_none_or(|l| l.index < index) => Some(effective.1.clone()),
                None if committed.0.is_none_or(|l| l.index < index) => Some(committed.1.clone()),
                None => None,
            };
            if let Some(before) = before.filter(|b| b.voter_ids().next().is_some()) {
                if let Err(why) = crate::state::check_membership_change(&a.state, &before, next) {
                    return Ok(Some((i, why)));
                }
            }
            prev = Some(next.clone());
        }
        Ok(None)
    }

    /// Appends the entries of `req` before position `k`, a membership entry this node's applied
    /// state does not (yet) authorize: the operator's `AuthorizeJoin` / `AuthorizeLeave` comes
    /// before it in the log and may not be applied here yet. Waits (up to 500 ms) until this node
    /// applied everything before the entry, checks again, and appends the rest if it passes;
    /// otherwise answers a partial success up to the entry, so the leader sends it again.
    async fn append_before_membership(
        &self,
        mut req: AppendEntriesRequest<TypeConfig>,
        k: usize,
        why: String,
    ) -> Result<AppendEntriesResponse<NodeId>, Status> {
        let rest = req.entries.split_off(k);
        let kept = req.entries.last().map(|e| e.log_id).or(req.prev_log_id);
        let leader_commit = req.leader_commit;
        req.leader_commit = match (leader_commit, kept) {
            (Some(c), Some(k)) if c.index > k.index => Some(k),
            (c, _) => c,
        };
        let vote = req.vote;
        let first = self.raft.append_entries(req).await.map_err(fatal)?;
        if !matches!(first, AppendEntriesResponse::Success) {
            return Ok(first);
        }
        let before = rest[0].log_id.index.saturating_sub(1);
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while self.sm.read().last_applied.is_none_or(|l| l.index < before)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rest = AppendEntriesRequest {
            vote,
            prev_log_id: kept,
            entries: rest,
            leader_commit,
        };
        match self.unauthorized_membership(&rest).await? {
            None => self.raft.append_entries(rest).await.map_err(fatal),
            Some(_) => {
                if let Some(n) = UNAUTHORIZED_MEMBERSHIP.pass(std::time::Instant::now()) {
                    tracing::warn!(
                        leader = vote.leader_id.node_id, reason = %why,
                        refused_since_last_line = n,
                        "refused a membership change no operator authorized"
                    );
                }
                // Not at once: the leader sends it again as soon as it hears the answer.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(AppendEntriesResponse::PartialSuccess(kept))
            }
        }
    }

    /// Sets the admission hook (see [`Admission`]).
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = Some(admission);
        self
    }

    fn admit(
        &self,
        extensions: &tonic::Extensions,
        method: &'static str,
        claimed_sender: Option<NodeId>,
    ) -> Result<(), Status> {
        match &self.admission {
            Some(a) => a(
                extensions,
                RaftCall {
                    method,
                    claimed_sender,
                },
            ),
            None => Ok(()),
        }
    }

    fn check_fault(&self) -> Result<(), Status> {
        if self.faults.is_isolated() {
            Err(Status::unavailable("isolated by fault hook"))
        } else {
            Ok(())
        }
    }

    /// openraft's vote, committed log id and committed membership, read in its core loop, and
    /// the last purged log id plus the stored log ids at `ranges` (see [`checks::LocalView`]).
    async fn local_view(
        &self,
        ranges: impl FnOnce(Option<openraft::LogId<NodeId>>) -> Vec<(u64, u64)>,
    ) -> Result<LocalView, Status> {
        let (vote, committed, committed_membership) = self
            .raft
            .with_raft_state(|st| {
                let cm = st.membership_state.committed();
                (
                    *st.vote_ref(),
                    st.committed,
                    StoredMembership::new(*cm.log_id(), cm.membership().clone()),
                )
            })
            .await
            .map_err(fatal)?;
        let mut view = LocalView {
            node_id: self.node_id,
            vote,
            committed,
            committed_membership,
            purged: None,
            stored: BTreeMap::new(),
        };
        let mut ranges = ranges(committed);
        if ranges.is_empty() {
            ranges.push((1, 0)); // nothing to read; still learn the purge point
        }
        for (from, to) in ranges {
            let (purged, ids) = self
                .log
                .log_ids(from, to)
                .map_err(|e| Status::unavailable(format!("cannot read the raft log: {e}")))?;
            view.purged = purged;
            view.stored.extend(ids);
        }
        Ok(view)
    }

    /// Receives a snapshot stream into a file, checking its framing as it arrives, then decodes
    /// it with the state machine's decoder. Returns the validated data.
    async fn receive_snapshot(
        &self,
        first: pb::SnapshotChunk,
        stream: &mut Streaming<pb::SnapshotChunk>,
        total: u64,
        meta: &SnapshotMeta<NodeId, Node>,
    ) -> Result<tokio::fs::File, Status> {
        let staged = Staged(self.sm.incoming_snapshot_path());
        let io_err = |e: io::Error| {
            Status::unavailable(format!(
                "cannot stage the snapshot in {}: {e}",
                staged.0.display()
            ))
        };
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(crate::private_fs::FILE_MODE)
            .open(&staged.0)
            .await
            .map_err(io_err)?;
        let mut check = snapshot::StreamCheck::new(total);
        let mut received: u64 = 0;
        let mut chunk = Some(first);
        let mut done = false;
        while let Some(c) = chunk.take() {
            if done {
                return Err(Status::invalid_argument("snapshot chunk after done"));
            }
            if received > 0 && c.header.is_some() {
                return Err(Status::invalid_argument(
                    "snapshot header repeated after the first chunk",
                ));
            }
            if c.offset != received {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {} but {received} bytes received",
                    c.offset
                )));
            }
            let len = c.data.len() as u64;
            if received + len > total {
                return Err(Status::invalid_argument(format!(
                    "snapshot data exceeds total_size {total}"
                )));
            }
            check.update(&c.data).map_err(bad_snapshot)?;
            file.write_all(&c.data).await.map_err(io_err)?;
            received += len;
            done = c.done;
            if !done {
                chunk = stream.message().await?;
            }
        }
        if !done || received != total {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended at {received} of {total} bytes"
            )));
        }
        check.finish().map_err(bad_snapshot)?;
        file.flush().await.map_err(io_err)?;
        let mut file = file.into_std().await;
        // The open file keeps the data; its name goes now (refused or not).
        drop(staged);
        let meta = meta.clone();
        // What this node already knows decides whether the snapshot is proven (the leader's
        // word is not enough: design.md §10.2.2).
        let anchor = self.sm.read().anchor();
        let sm = self.sm.clone();
        let file = tokio::task::spawn_blocking(move || {
            let read = |e: io::Error| SnapshotDataError::Read(e.to_string());
            file.seek(SeekFrom::Start(0)).map_err(read)?;
            // Decoded from the file as it is read: the data is never in memory whole.
            let d = snapshot::validate_from(
                &meta,
                io::BufReader::with_capacity(1 << 20, &mut file),
                total,
            )?;
            snapshot::verify_received(&d, anchor)?;
            // The state machine installs this state as decoded here.
            sm.stage_validated(meta, d.applied);
            file.seek(SeekFrom::Start(0)).map_err(read)?;
            Ok(file)
        })
        .await
        .map_err(|e| Status::internal(format!("snapshot validation task failed: {e}")))?
        .map_err(bad_snapshot)?;
        Ok(tokio::fs::File::from_std(file))
    }
}

/// A staged snapshot file, removed when dropped (refused, failed or consumed).
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "cannot remove a staged snapshot");
            }
        }
    }
}

/// FAILED_PRECONDITION naming the leader this node knows in `forward-to-leader` metadata.
fn not_leader(leader: Option<NodeId>) -> Status {
    let mut s = Status::failed_precondition("not the leader");
    if let Some(v) = leader.and_then(|id| id.to_string().parse().ok()) {
        s.metadata_mut().insert("forward-to-leader", v);
    }
    s
}

/// The node a message's vote names (the leader or candidate it claims to come from).
fn vote_sender(vote: Option<&pb::Vote>) -> Option<NodeId> {
    vote.and_then(|v| v.leader_id.as_ref()).map(|l| l.node_id)
}

fn invalid(e: ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// INVALID_ARGUMENT for a message [`crate::checks`] refused (logged: no correct peer sends one).
fn refused(e: Refused) -> Status {
    tracing::warn!(reason = %e, "refused a raft message from a peer");
    Status::invalid_argument(format!("refused: {e}"))
}

/// INVALID_ARGUMENT for snapshot data that is not a valid snapshot.
fn bad_snapshot(e: SnapshotDataError) -> Status {
    if let SnapshotDataError::Read(_) | SnapshotDataError::Write(_) = e {
        // This node's disk, not the peer's data.
        tracing::error!(error = %e, "cannot check a received snapshot");
        return Status::unavailable(format!("cannot check the snapshot: {e}"));
    }
    tracing::warn!(reason = %e, "refused a snapshot from a peer");
    Status::invalid_argument(format!("snapshot refused: {e}"))
}

fn fatal<E: std::fmt::Display>(e: E) -> Status {
    Status::unavailable(format!("raft is not running: {e}"))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.check_fault()?;
        let (_, extensions, mut msg) = request.into_parts();
        let sender = vote_sender(msg.vote.as_ref());
        self.admit(&extensions, "AppendEntries", sender)?;
        let election = std::mem::take(&mut msg.election);
        let mut req = convert::append_req_from_pb(msg).map_err(invalid)?;
        let _turn = self.follower_turn.lock().await;
        let view = self
            .local_view(|committed| checks::indices_to_read(&req, committed))
            .await?;
        checks::check_append_shape(&req, self.node_id, view.vote.leader_id.term)
            .map_err(refused)?;
        // A leader of an older vote (one restored from its persisted vote after a restart, or
        // one cut off meanwhile) is told this node's newer vote, as Raft answers any stale
        // term: it steps down and stands again. The answer changes nothing here, so it needs
        // no proof of election. Refusing it instead left a restored leader that could not prove
        // its election and the node that refused it waiting on each other for good, the third
        // node down (attack round 12: no leader until that node came back).
        if checks::rejected_by_vote(&req.vote, &view) {
            return Ok(Response::new(convert::append_resp_to_pb(
                &AppendEntriesResponse::HigherVote(view.vote),
            )));
        }
        checks::check_append_against_local(&req, &view).map_err(refused)?;
        self.check_election(&req.vote, &election)?;
        self.check_pledge_for_leader(&req.vote)?;
        req.leader_commit = checks::effective_leader_commit(&req);
        let leader = req.vote.leader_id.node_id;
        let resp = match self.unauthorized_membership(&req).await? {
            None => self.raft.append_entries(req).await.map_err(fatal)?,
            Some((k, why)) => self.append_before_membership(req, k, why).await?,
        };
        // Any answer but a newer vote means openraft took the leader's proven vote, a Conflict
        // too: a node whose log refused a leader's entries follows it all the same, and must not
        // vote it back the moment it falls silent (attack round 10: only the follower that
        // accepted the entries applied that rule, the other voted the member back every time).
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.contact.touch_from(leader);
        }
        Ok(Response::new(convert::append_resp_to_pb(&resp)))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.check_fault()?;
        let (_, extensions, msg) = request.into_parts();
        let sender = vote_sender(msg.vote.as_ref());
        self.admit(&extensions, "Vote", sender)?;
        let req = convert::vote_req_from_pb(msg).map_err(invalid)?;
        let term = self.raft.metrics().borrow().vote.leader_id.term;
        checks::check_vote_request(&req, self.node_id, term).map_err(refused)?;
        // A leader grants no vote while it leads: openraft's lease makes followers refuse other
        // candidates, but not the leader itself, whose grant plus the candidate's own made a
        // proof of election for a member the cluster never chose (found by attack). Refused
        // before openraft sees it, so the leader does not step down either.
        {
            let m = self.raft.metrics().borrow().clone();
            let quiet = self.raft.config().election_timeout_min;
            // Also a leader whose followers are slow to answer, as long as it won its term in
            // this lifetime: a member withholding its own acks made the leader's quorum hang on
            // one slow follower, and once that follower lagged, the leader granted the member's
            // waiting vote request (attack round 7).
            let won = m.state == openraft::ServerState::Leader
                && self.elections.won(m.current_term, self.node_id);
            if (won || crate::replica::leads_with_quorum(&m, quiet))
                && req.vote.leader_id.node_id != self.node_id
            {
                return Err(Status::failed_precondition(format!(
                    "node {} leads term {}: it grants no vote while it leads",
                    self.node_id, m.current_term
                )));
            }
        }
        // One vote decision at a time: the pledge path below and openraft's own must not both
        // grant in one term (found by review).
        let _decide = self.vote_turn.lock().await;
        let current = self.current_vote().await?;
        {
            let quiet = self.raft.config().election_timeout_min;
            // Leader stickiness (Raft thesis 4.2.3), for a former leader too: openraft's lease
            // does not cover a node whose vote is no longer committed, e.g. a leader a member
            // made step down with a forged "higher vote" answer, which then granted that
            // member's candidacy at once (found by attack).
            // The leader this node follows is exempt, unless this node led since: it stands
            // again at once when a member's newer vote made it step down (see
            // `Network::newer_vote_answer`), and must win before that member, who asks as soon
            // as the window closes. "Follows": its last accepted message came from that leader,
            // and openraft's committed vote names it.
            let candidate = req.vote.leader_id.node_id;
            let follows_candidate = self.contact.leader() == Some(candidate)
                && current.is_committed()
                && current.leader_id.node_id == candidate;
            let followed = self.contact.millis_since().filter(|_| !follows_candidate);
            let recent = [followed, self.led.millis_since()]
                .into_iter()
                .flatten()
                .min();
            if let Some(ms) = recent.filter(|&ms| ms < quiet) {
                return Err(Status::failed_precondition(format!(
                    "node {} heard from a leader {ms} ms ago: it grants no vote within the \
                     minimum election timeout ({quiet} ms)",
                    self.node_id
                )));
            }
            // The leader that went silent is what this election replaces: the node that
            // followed it does not vote it back for a while. A member that led stopped its
            // heartbeats, out-bid the first honest candidate's term and was voted back at once,
            // every time (attack round 9).
            let silent = self
                .contact
                .millis_since()
                .filter(|_| self.contact.leader() == Some(candidate));
            if let Some(ms) = silent.filter(|&ms| ms >= quiet && ms < quiet * SILENT_LEADER_WINDOW)
            {
                return Err(Status::failed_precondition(format!(
                    "node {} stopped hearing from its leader {candidate} {ms} ms ago: it votes \
                     for another candidate first",
                    self.node_id
                )));
            }
        }
        if let Some(p) = self.pledge.in_force(&current) {
            if crate::pledge::forbids_vote(&p, &req.vote) {
                return Err(Status::failed_precondition(format!(
                    "node {} voted {p}: it grants no other vote in term {} or below",
                    self.node_id, p.leader_id.term
                )));
            }
        }
        if self.contact.leader() == Some(req.vote.leader_id.node_id) {
            if let Some(granted) = self.vote_for_last_leader(&req, &current).await? {
                return Ok(Response::new(granted));
            }
        }
        let candidate = req.vote.leader_id;
        let resp = self.raft.vote(req).await.map_err(fatal)?;
        let mut out = convert::vote_resp_to_pb(&resp);
        if resp.vote_granted {
            out.grant = self.elections.grant(candidate.term, candidate.node_id);
        }
        Ok(Response::new(out))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        self.check_fault()?;
        // The sender is in the first chunk's header: admit the connection's peer now (as a
        // member at all) and its claimed identity once the header is read.
        self.admit(request.extensions(), "InstallSnapshot", None)?;
        let _slot = self
            .snapshot_slot
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::unavailable("another snapshot is being received"))?;
        let (_, extensions, mut stream) = request.into_parts();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let header = first
            .header
            .clone()
            .ok_or_else(|| Status::invalid_argument("first snapshot chunk has no header"))?;
        let total = header.total_size;
        let cap = self.config.max_snapshot_bytes;
        if total > cap {
            return Err(Status::invalid_argument(format!(
                "snapshot of {total} bytes exceeds the limit of {cap} bytes (max_snapshot_bytes)"
            )));
        }
        let vote = convert::vote_from_pb(header.vote).map_err(invalid)?;
        self.admit(&extensions, "InstallSnapshot", Some(vote.leader_id.node_id))?;
        let meta = convert::snapshot_meta_from_pb(
            header
                .meta
                .ok_or_else(|| Status::invalid_argument("snapshot header has no meta"))?,
        )
        .map_err(invalid)?;
        let meta_indices = |committed: Option<openraft::LogId<NodeId>>| {
            let c = committed.map_or(0, |c| c.index);
            [
                meta.last_log_id.map(|l| l.index),
                meta.last_membership.log_id().map(|l| l.index),
            ]
            .into_iter()
            .flatten()
            .filter(|&i| committed.is_some() && i <= c)
            .map(|i| (i, i))
            .collect()
        };
        // The header is checked before any data is taken, and again once the data is in (the
        // committed log may have moved meanwhile).
        let view = self.local_view(meta_indices).await?;
        checks::check_snapshot_meta(&vote, &meta, &view).map_err(refused)?;
        self.check_election(&vote, &header.election)?;
        self.check_pledge_for_leader(&vote)?;
        let data = self
            .receive_snapshot(first, &mut stream, total, &meta)
            .await?;
        let _turn = self.follower_turn.lock().await;
        let view = self.local_view(meta_indices).await?;
        checks::check_snapshot_meta(&vote, &meta, &view).map_err(refused)?;
        self.check_pledge_for_leader(&vote)?;
        let resp = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: Box::new(data),
                },
            )
            .await;
        // A snapshot openraft did not install (an older one) must not stay staged in memory.
        self.sm.clear_validated();
        let resp = resp.map_err(fatal)?;
        // Contact only when openraft took it: an old leader's snapshot it refuses (with a proof
        // of an old term) must not make its sender the leader this node follows (found by
        // review).
        if resp.vote == vote {
            self.contact.touch_from(vote.leader_id.node_id);
        }
        Ok(Response::new(pb::InstallSnapshotResponse {
            vote: Some(convert::vote_to_pb(&resp.vote)),
        }))
    }

    async fn client_write(
        &self,
        request: Request<pb::ClientWriteRequest>,
    ) -> Result<Response<pb::ClientWriteResponse>, Status> {
        self.check_fault()?;
        let (_, extensions, msg) = request.into_parts();
        self.admit(&extensions, "ClientWrite", None)?;
        let cmd = Command(msg.command);
        if cmd.0.len() > self.config.max_message_bytes {
            return Err(Status::resource_exhausted("command too large"));
        }
        if self.config.check_proposals {
            // Decoded once for every check.
            let decoded = crate::state::decode_entry(&cmd.0);
            // A node forwards its own proposals only: the sender must be the proposer, and
            // each proposer has a budget of forwarded proposals (attack round 11: a member
            // sent its padded, signed proposals as fast as the leader took them).
            if let Some(p) = decoded.as_ref().ok().and_then(|d| d.proof.as_ref()) {
                self.admit(&extensions, "ClientWrite", Some(p.node))?;
                self.forwarded
                    .take(p.node, cmd.0.len(), std::time::Instant::now())?;
            }
            let refusal = match decoded {
                // InitCluster is proposed only by the node an operator initialised, once it
                // leads; a forwarded one is someone racing the operator.
                Ok(d) if matches!(d.command, crate::state::Command::InitCluster { .. }) => Some((
                    crate::state::RejectCode::Unauthorized,
                    "InitCluster is never forwarded: it is proposed by the node the operator \
                     initialises"
                        .to_string(),
                )),
                // A proposal its proposer may not make never reaches the log (checked again at
                // apply).
                // Undecodable (a batch frame among them: only a node's own batcher makes
                // those) is refused by every node, leader or not (found by review).
                Err(e) => Some((crate::state::RejectCode::MalformedCommand, e)),
                decoded if self.raft.current_leader().await == Some(self.node_id) => {
                    check_decoded(&self.sm, self.node_id, decoded).err()
                }
                _ => None,
            };
            if let Some((code, message)) = refusal {
                let reply = crate::state::Reply::Rejected { code, message };
                return Ok(Response::new(pb::ClientWriteResponse {
                    log_id: None,
                    response: serde_json::to_vec(&reply).expect("replies serialize"),
                    membership: None,
                }));
            }
        }
        if let Some(batcher) = &self.batcher {
            return match batcher.write(cmd.0).await {
                Ok((log_id, response)) => Ok(Response::new(pb::ClientWriteResponse {
                    log_id: Some(convert::log_id_to_pb(&log_id)),
                    response,
                    membership: None,
                })),
                Err(crate::batch::BatchError::ForwardToLeader(leader)) => Err(not_leader(leader)),
                Err(e) => Err(Status::unavailable(e.to_string())),
            };
        }
        match self.raft.client_write(cmd).await {
            Ok(r) => Ok(Response::new(pb::ClientWriteResponse {
                log_id: Some(convert::log_id_to_pb(&r.log_id)),
                response: r.data.0,
                membership: r.membership.as_ref().map(convert::membership_to_pb),
            })),
            Err(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                Err(not_leader(f.leader_id))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.check_fault()?;
        self.admit(request.extensions(), "ReadIndex", None)?;
        match self.raft.ensure_linearizable().await {
            Ok(l) => Ok(Response::new(pb::ReadIndexResponse {
                read_log_id: l.as_ref().map(convert::log_id_to_pb),
            })),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(not_leader(f.leader_id))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_proposals_are_refused_beyond_the_budget_and_refill() {
        let b = ForwardBudgets::default();
        let t0 = std::time::Instant::now();
        for _ in 0..FORWARD_BURST as usize {
            b.take(2, 100, t0).unwrap();
        }
        let e = b.take(2, 100, t0).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        // Another node's budget is its own.
        b.take(3, 100, t0).unwrap();
        // A second refills a quarter of the burst.
        let t1 = t0 + std::time::Duration::from_secs(1);
        for _ in 0..(FORWARD_BURST / 4.0) as usize {
            b.take(2, 100, t1).unwrap();
        }
        assert!(b.take(2, 100, t1).is_err());
        // Bytes too: a burst of bytes, then nothing until it refills.
        let t2 = t1 + std::time::Duration::from_secs(100);
        b.take(4, FORWARD_BURST_BYTES as usize, t2).unwrap();
        assert!(b.take(4, 1, t2).is_err());
        b.take(4, 1, t2 + std::time::Duration::from_millis(10))
            .unwrap();
    }

    #[test]
    fn an_append_carries_entries_up_to_its_budget_and_always_one() {
        let e = |i: u64, n: usize| openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
            payload: openraft::EntryPayload::Normal(crate::Command(vec![b'x'; n])),
        };
        let budget = append_budget(8 << 20);
        assert_eq!(budget, 1 << 20);
        assert_eq!(append_budget(100), 64 << 10);
        // Twenty entries of 300 KiB: three fit a 1 MiB budget.
        let big: Vec<_> = (1..=20).map(|i| e(i, 300 << 10)).collect();
        assert_eq!(entries_within(&big, budget), 3);
        // One entry larger than the budget still goes (alone).
        assert_eq!(entries_within(&[e(1, 2 << 20), e(2, 10)], budget), 1);
        // Small entries all go; none is none.
        let small: Vec<_> = (1..=300).map(|i| e(i, 100)).collect();
        assert_eq!(entries_within(&small, budget), 300);
        assert_eq!(entries_within(&[], budget), 0);
    }

    #[tokio::test]
    async fn file_chunks_cover_the_data_after_the_start_exactly_once() {
        use tokio_stream::StreamExt;
        let header = |total| pb::SnapshotHeader {
            total_size: total,
            ..Default::default()
        };
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..2600u32).map(|i| i as u8).collect();
        io::Write::write_all(&mut file, &data).unwrap();
        // The data starts at byte 100 (a snapshot file's header line precedes it).
        let chunks: Vec<_> =
            file_chunks(file.try_clone().unwrap(), 100, 2500, header(2500), 1000, 2)
                .collect()
                .await;
        assert_eq!(chunks.len(), 3);
        assert!(chunks[0].header.is_some());
        assert!(chunks[1..].iter().all(|c| c.header.is_none()));
        assert!(chunks[2].done && !chunks[1].done && !chunks[0].done);
        assert_eq!(
            chunks.iter().map(|c| c.offset).collect::<Vec<_>>(),
            [0, 1000, 2000]
        );
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(joined, data[100..]);
        // No data: one chunk, header and done.
        let empty: Vec<_> = file_chunks(file.try_clone().unwrap(), 2600, 0, header(0), 1000, 2)
            .collect()
            .await;
        assert_eq!(empty.len(), 1);
        assert!(empty[0].done && empty[0].header.is_some());
        // A file shorter than announced ends the stream early, without `done` (the receiver
        // refuses it as incomplete).
        let short: Vec<_> = file_chunks(file, 2000, 1500, header(1500), 1000, 2)
            .collect()
            .await;
        assert!(short.iter().all(|c| !c.done), "{}", short.len());
    }

    fn append(prev: Option<u64>, last: Option<u64>) -> AppendEntriesRequest<TypeConfig> {
        let vote = Vote::new_committed(2, 1);
        let id = |i| openraft::LogId::new(openraft::CommittedLeaderId::new(2, 1), i);
        AppendEntriesRequest {
            vote,
            prev_log_id: prev.map(id),
            entries: last
                .map(|i| {
                    vec![openraft::Entry {
                        log_id: id(i),
                        payload: openraft::EntryPayload::Blank,
                    }]
                })
                .unwrap_or_default(),
            leader_commit: None,
        }
    }

    #[test]
    fn a_success_below_the_floor_is_no_reversion_and_keeps_the_floor() {
        // The read check's heartbeat at a lagging `matching` (the chain test's intermittent
        // "not enough for a quorum").
        let ok = AppendEntriesResponse::Success;
        assert_eq!(
            reversion_check(2, Some(10), &append(Some(7), None), &ok),
            Ok(Some(10))
        );
        assert_eq!(
            reversion_check(2, Some(10), &append(Some(10), Some(12)), &ok),
            Ok(Some(12))
        );
        assert_eq!(
            reversion_check(2, None, &append(Some(3), None), &ok),
            Ok(Some(3))
        );
    }

    #[test]
    fn a_conflict_or_partial_success_below_the_floor_is_refused() {
        let conflict = AppendEntriesResponse::Conflict;
        assert!(reversion_check(2, Some(10), &append(Some(10), None), &conflict).is_err());
        assert!(reversion_check(2, Some(10), &append(Some(4), None), &conflict).is_err());
        assert_eq!(
            reversion_check(2, Some(10), &append(Some(11), None), &conflict),
            Ok(None)
        );
        assert_eq!(
            reversion_check(2, None, &append(Some(4), None), &conflict),
            Ok(None)
        );
        let id = openraft::LogId::new(openraft::CommittedLeaderId::new(2, 1), 8);
        let partial = AppendEntriesResponse::PartialSuccess(Some(id));
        assert!(reversion_check(2, Some(10), &append(Some(4), Some(12)), &partial).is_err());
        assert!(reversion_check(
            2,
            Some(10),
            &append(None, Some(12)),
            &AppendEntriesResponse::PartialSuccess(None)
        )
        .is_err());
        assert_eq!(
            reversion_check(2, Some(5), &append(Some(4), Some(12)), &partial),
            Ok(Some(8))
        );
    }
}
