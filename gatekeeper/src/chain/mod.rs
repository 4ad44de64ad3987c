//! The chain watcher: follows a Substrate chain's finalized blocks through subxt and commits
//! what they say (workers, slashes, rotations, clusters, contracts) through Raft, each event
//! exactly once (docs/chain.md).
//!
//! * Every node connects and follows finalized heads, so `admin status` shows the chain from
//!   every node and a new leader is ready at once; only the **leader** proposes.
//! * Progress lives only in the replicated state: the committed [`ChainCursor`] (block number,
//!   hash, event index). The leader reads it, fetches the next block(s) by number, checks they
//!   continue it and proposes `ChainBlocks`; the state machine refuses anything that does not
//!   continue the cursor (a gap, a fork, another chain), so a deposed leader racing the new one
//!   cannot apply an event twice or skip one. After a restart or a leader change, watching
//!   resumes from the cursor and fills the gap block by block.
//! * Connection loss and stalls: reconnect with capped exponential backoff (with jitter);
//!   `admin status` and `/metrics` show `connected`, the finalized head, the cursor, the lag and
//!   whether the chain is stalled. Key issuance does not depend on the watcher: it keeps serving
//!   from the last committed state.
//!
//! [`ChainCursor`]: gatekeeper_raft::state::ChainCursor

pub mod bootstrap;
pub mod profile;
pub mod watcher;

use gatekeeper_proto::v1 as pb;
use gatekeeper_raft::state::ChainRecord;
use std::time::{Duration, Instant};

pub use profile::Profile;

/// How the watcher is set up (from the node config).
#[derive(Clone, Debug)]
pub struct ChainSettings {
    /// WebSocket URL of a chain node.
    pub url: String,
    /// Event profile.
    pub profile: Profile,
    /// How a cluster without a cursor starts.
    pub bootstrap: Bootstrap,
    /// With [`Bootstrap::Replay`]: the first block applied.
    pub start_block: u64,
    /// No new finalized block for this long: the chain is reported stalled and the watcher
    /// reconnects (a silent connection looks the same).
    pub stall: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Deadline given to rotations the chain requests.
    pub rotation_deadline_ms: u64,
    /// Deadline of each RPC call to the chain node.
    pub rpc_timeout: Duration,
}

/// How a cluster that has applied nothing of the chain starts following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Read the registry maps at the latest finalized block, commit them, then follow events
    /// from the next block ([`bootstrap`]).
    Storage,
    /// Apply every block's events from `start_block`.
    Replay,
}

/// What the watcher knows about the chain (shared with `admin status` and metrics).
#[derive(Clone, Debug, Default)]
pub struct ChainView {
    /// Whether a session with the chain node is up.
    pub connected: bool,
    /// Latest finalized block number seen.
    pub finalized: Option<u64>,
    /// When `finalized` last increased (or the first one was seen).
    pub finalized_at: Option<Instant>,
    /// The last error (connection, RPC, or a block the state refused), if the last attempt failed.
    pub last_error: Option<String>,
    /// Reconnections so far.
    pub reconnects: u64,
    /// Blocks this node proposed that were committed (as leader).
    pub blocks_proposed: u64,
}

/// The status message of the chain, from the watcher's view and the committed state.
pub fn status(settings: &ChainSettings, view: &ChainView, chain: &ChainRecord) -> pb::ChainStatus {
    let cursor = chain.cursor;
    let boot = chain.bootstrap.or(chain.bootstrapped);
    // The last block fully applied (before the start block when nothing is).
    let done = match cursor {
        Some(c) if c.block_complete => c.block,
        Some(c) => c.block.saturating_sub(1),
        None => settings.start_block.saturating_sub(1),
    };
    let since = view.finalized_at.map(|t| t.elapsed());
    pb::ChainStatus {
        url: settings.url.clone(),
        connected: view.connected,
        finalized: view.finalized.unwrap_or(0),
        cursor_block: cursor.map_or(0, |c| c.block),
        cursor_block_hash: cursor.map_or_else(Vec::new, |c| c.block_hash.0.to_vec()),
        cursor_event_index: cursor.map_or(0, |c| c.event_index),
        lag_blocks: view.finalized.map_or(0, |f| f.saturating_sub(done)),
        profile: settings.profile.as_str().to_string(),
        stalled: since.is_none_or(|s| s > settings.stall),
        last_finalized_age_ms: since.map_or(0, |s| s.as_millis() as u64),
        last_error: view.last_error.clone().unwrap_or_default(),
        events_applied: chain.events_applied,
        events_ignored: chain.events_ignored,
        recent_ignored: chain
            .recent_ignored
            .iter()
            .map(|i| pb::IgnoredChainEvent {
                block: i.block,
                index: i.index,
                name: i.name.clone(),
                reason: i.reason.clone(),
            })
            .collect(),
        cursor_block_complete: cursor.is_some_and(|c| c.block_complete),
        genesis_hash: chain.genesis_hash.map_or_else(Vec::new, |g| g.0.to_vec()),
        reconnects: view.reconnects,
        bootstrap_block: boot.map_or(0, |b| b.block),
        bootstrap_entries: boot.map_or(0, |b| b.entries),
        bootstrap_complete: chain.bootstrapped.is_some(),
    }
}
