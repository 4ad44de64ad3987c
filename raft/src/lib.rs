//! Gatekeeper's replicated state on openraft 0.9.
//!
//! * [`batch`] — group commit: proposals that arrive together share one log entry.
//! * [`state`] — `GatekeeperState`, the replicated state machine, with pure apply logic.
//! * [`log_store`] — the Raft log and vote in a write-ahead log that fsyncs (raft-log).
//! * [`sm_store`] — the state machine in sled, snapshots as atomically written files;
//!   [`snapshot`] — the snapshot data format and its one decoder.
//! * [`network`] — the Raft transport over gRPC (client with connection reuse, timeouts and
//!   backoff; server; streamed snapshots; fault hooks); [`convert`] maps its messages;
//!   [`checks`] — what a peer's message must satisfy before openraft sees it.
//! * [`private_fs`] — data-dir directories `0700`, files `0600`.
//! * [`replica`] — a running replica: writes forwarded to the leader, linearizable and stale
//!   reads, membership changes, status.
//! * the openraft type configuration ([`TypeConfig`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod batch;
pub mod checks;
pub mod convert;
pub mod election;
pub mod log_store;
pub mod lograte;
pub mod network;
pub mod pledge;
pub mod private_fs;
pub mod replica;
pub mod sm_store;
pub mod snapshot;
pub mod state;

use std::fmt;
// `declare_raft_types!` names the default snapshot type `Cursor<Vec<u8>>` unqualified.
use std::io::Cursor;

/// Wall-clock time in milliseconds since the Unix epoch (0 if the clock is before 1970). Only the
/// runtime reads the clock; the state machine never does.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A Raft node id.
pub type NodeId = u64;

/// A member's network addresses, stored in Raft membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// host:port of the RaftService listener.
    pub raft_address: String,
    /// host:port of the KeyService / AdminService / PeerService listener.
    pub api_address: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_address, self.api_address)
    }
}

/// An encoded state-machine command, exactly as carried in `gatekeeper.raft.v1.Entry.command`.
/// The Raft layer never looks inside: the state machine owns the (versioned) encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Command(pub Vec<u8>);

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} bytes)", self.0.len())
    }
}

/// The state machine's encoded reply to a command.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandReply(pub Vec<u8>);

openraft::declare_raft_types!(
    /// openraft type configuration for Gatekeeper.
    pub TypeConfig:
        D = Command,
        R = CommandReply,
        NodeId = NodeId,
        Node = Node,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_with_commands_round_trip_through_serde() {
        let entry = openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
            payload: openraft::EntryPayload::Normal(Command(vec![1, 2, 3])),
        };
        let json = serde_json::to_string(&entry).unwrap();
        let back: openraft::Entry<TypeConfig> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.log_id, entry.log_id);
        match back.payload {
            openraft::EntryPayload::Normal(c) => assert_eq!(c, Command(vec![1, 2, 3])),
            other => panic!("unexpected payload {other:?}"),
        }
    }
}
