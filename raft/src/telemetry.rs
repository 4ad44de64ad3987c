//! What the replica measures about itself, as Prometheus instruments (`prometheus-client`).
//!
//! The instruments live here, where the work happens (the log's flush callback, the state
//! machine's apply, the write path, the Raft transport); the node registers them in its
//! `/metrics` registry next to its own (`gatekeeper::metrics`). Every handle is a cheap clone of
//! a shared instrument. Labels carry only low-cardinality values (a result name, a node id),
//! never anything a client chooses.

use crate::NodeId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static TRACES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the replica's trace spans on (`raft.apply`, `raft.forward_write`); the node does this
/// when it exports traces. Off, no span is made.
pub fn set_traces(on: bool) {
    TRACES.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Writes the current trace context into outgoing request metadata (set by the node when it
/// exports traces).
pub type ContextInjector = fn(&mut tonic::metadata::MetadataMap);

static INJECTOR: std::sync::OnceLock<ContextInjector> = std::sync::OnceLock::new();

/// Sets how forwarded writes carry the trace context to the leader.
pub fn set_context_injector(f: ContextInjector) {
    let _ = INJECTOR.set(f);
}

/// Writes the current trace context into `metadata` (nothing unless an injector is set).
pub fn inject_context(metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(f) = INJECTOR.get() {
        f(metadata)
    }
}

/// Whether the replica makes trace spans.
pub fn traces() -> bool {
    TRACES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Bucket bounds (seconds) for durations of local work: 100 µs to ~3 s.
pub fn local_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.5, 12)
}

/// Bucket bounds for the number of entries in one apply call: 1 to 4096.
fn batch_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 7)
}

/// How a proposal (a write submitted through this node) ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ProposalResult {
    /// Committed and applied; the state machine accepted it.
    Committed,
    /// Refused, by the leader's gate before the log or by the state machine once committed (a
    /// stable error code; nothing changed either way).
    Refused,
    /// Not committed: no leader, the leader unreachable, or the deadline passed.
    Failed,
}

impl ProposalResult {
    fn as_str(self) -> &'static str {
        match self {
            ProposalResult::Committed => "committed",
            ProposalResult::Refused => "refused",
            ProposalResult::Failed => "failed",
        }
    }
}

/// The label set of `gatekeeper_raft_proposals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProposalLabels {
    /// `committed`, `refused` or `failed`.
    pub result: &'static str,
}

/// The replica's instruments.
#[derive(Clone, Debug)]
pub struct RaftTelemetry {
    /// Seconds from handing entries to the log until the flush worker reports them durable
    /// (fsync included): one observation per append call.
    pub log_append_duration: Histogram,
    /// Seconds one apply call of the state machine took.
    pub apply_duration: Histogram,
    /// Entries in one apply call.
    pub apply_batch_entries: Histogram,
    /// Proposals submitted through this node, by result.
    pub proposals: Family<ProposalLabels, Counter>,
    /// Times the leader this node knows of changed (including to "none").
    pub leader_changes: Counter,
    /// When each peer last answered a Raft message from this node.
    peer_answers: Arc<Mutex<HashMap<NodeId, Instant>>>,
    /// When each peer last refused this node because it is not in that peer's membership.
    nonmember_refusals: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Default for RaftTelemetry {
    fn default() -> Self {
        Self {
            log_append_duration: Histogram::new(local_buckets()),
            apply_duration: Histogram::new(local_buckets()),
            apply_batch_entries: Histogram::new(batch_buckets()),
            proposals: Family::default(),
            leader_changes: Counter::default(),
            peer_answers: Arc::default(),
            nonmember_refusals: Arc::default(),
        }
    }
}

impl RaftTelemetry {
    /// Counts one proposal's result.
    pub fn proposal(&self, result: ProposalResult) {
        self.proposals
            .get_or_create(&ProposalLabels {
                result: result.as_str(),
            })
            .inc();
    }

    /// Records that `peer` answered a Raft message (any well-formed answer: it is alive and
    /// reachable).
    pub fn peer_answered(&self, peer: NodeId) {
        self.peer_answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, Instant::now());
    }

    /// Records that `peer` refused a Raft message because this node is not in its membership.
    pub fn refused_as_nonmember(&self, peer: NodeId) {
        self.nonmember_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, Instant::now());
    }

    /// The peers that refused this node as a non-member within `window`.
    pub fn nonmember_refusers(&self, window: Duration) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .nonmember_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, at)| at.elapsed() <= window)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    /// Time since `peer` last answered, if it ever did.
    pub fn since_peer_answered(&self, peer: NodeId) -> Option<Duration> {
        self.peer_answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .map(Instant::elapsed)
    }
}

/// How many more voters may fail before the cluster loses its quorum: `healthy − quorum`, where
/// `quorum` is a majority of `voters` and `healthy` the voters counted as up (negative: quorum
/// already lost). Pure; the leader counts itself and every voter that answered within the
/// election timeout.
pub fn raft_failure_tolerance(voters: usize, healthy: usize) -> i64 {
    let quorum = voters / 2 + 1;
    healthy as i64 - quorum as i64
}

/// How many more share holders may fail before a restarted member can no longer gather the
/// `threshold` shares it needs to rebuild an epoch's master key: `holders_up − threshold`.
pub fn unseal_failure_tolerance(holders_up: usize, threshold: u8) -> i64 {
    holders_up as i64 - i64::from(threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_failure_tolerance_is_healthy_voters_above_a_majority() {
        assert_eq!(raft_failure_tolerance(3, 3), 1);
        assert_eq!(raft_failure_tolerance(3, 2), 0);
        assert_eq!(raft_failure_tolerance(3, 1), -1);
        assert_eq!(raft_failure_tolerance(5, 5), 2);
        assert_eq!(raft_failure_tolerance(4, 4), 1);
        assert_eq!(raft_failure_tolerance(1, 1), 0);
    }

    #[test]
    fn unseal_failure_tolerance_is_holders_above_the_threshold() {
        assert_eq!(unseal_failure_tolerance(3, 2), 1);
        assert_eq!(unseal_failure_tolerance(2, 2), 0);
        assert_eq!(unseal_failure_tolerance(1, 2), -1);
    }

    #[test]
    fn proposals_are_counted_by_result() {
        let t = RaftTelemetry::default();
        t.proposal(ProposalResult::Committed);
        t.proposal(ProposalResult::Committed);
        t.proposal(ProposalResult::Failed);
        let get = |r: &'static str| {
            t.proposals
                .get_or_create(&ProposalLabels { result: r })
                .get()
        };
        assert_eq!((get("committed"), get("refused"), get("failed")), (2, 0, 1));
    }

    #[test]
    fn a_peer_that_never_answered_has_no_age() {
        let t = RaftTelemetry::default();
        assert!(t.since_peer_answered(2).is_none());
        t.peer_answered(2);
        assert!(t.since_peer_answered(2).unwrap() < Duration::from_secs(5));
    }
}
