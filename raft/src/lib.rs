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
//! * [`telemetry`] — the replica's Prometheus instruments (apply, log flush, proposals,
//!   leader changes, peers' answers).
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
pub mod telemetry;

use std::fmt;

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
///
/// In the log (JSON) it is a base64 string; logs written before are read too, where it was a
/// JSON array of byte values, 3.6 times the command's size on disk (attack round 11: a member's
/// allowed 1 MiB a second became 3.7 MB a second of log on every node).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command(pub Vec<u8>);

impl serde::Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command: a base64 string, or an array of byte values")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Command, E> {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(Command)
                    .map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Command, E> {
                Ok(Command(v.to_vec()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Command, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Command(out))
            }
        }
        d.deserialize_any(V)
    }
}

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
        // A snapshot's data is a file from its position to its end, streamed, never held in
        // memory whole (sm_store's snapshot files, network's transfers).
        SnapshotData = tokio::fs::File,
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

    #[test]
    fn commands_are_base64_in_the_log_and_old_byte_arrays_still_read() {
        let c = Command(b"{\"v\":2}\0\xff".to_vec());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, "\"eyJ2IjoyfQD/\"");
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), c);
        // As logs before this version stored it.
        let old = serde_json::to_string(&c.0).unwrap();
        assert_eq!(old, "[123,34,118,34,58,50,125,0,255]");
        assert_eq!(serde_json::from_str::<Command>(&old).unwrap(), c);
        assert!(serde_json::from_str::<Command>("\"not base64!\"").is_err());
        assert!(serde_json::from_str::<Command>("[256]").is_err());
        assert!(serde_json::from_str::<Command>("7").is_err());
    }
}
