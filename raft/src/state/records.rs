//! Record types of the replicated state: members, epochs and their dealings, workers, clusters,
//! rotations, chain progress, and the hex-serialized byte types they are built from.

use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// 32 bytes (keys, ids, hashes), serialized as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Bytes32(pub [u8; 32]);

impl fmt::Debug for Bytes32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Bytes32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        let a: [u8; 32] = v
            .try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 hex-encoded bytes"))?;
        Ok(Bytes32(a))
    }
}

/// Arbitrary bytes, serialized as lowercase hex.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct HexBytes(pub Vec<u8>);

impl fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl Serialize for HexBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .map(HexBytes)
            .map_err(serde::de::Error::custom)
    }
}

/// A cluster member as recorded in the state (Raft membership holds only addresses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Raft node id.
    pub node_id: NodeId,
    /// RaftService address.
    pub raft_address: String,
    /// API address.
    pub api_address: String,
    /// Enclave identity sr25519 public key.
    pub identity_public_key: Bytes32,
    /// Enclave HPKE X25519 public key.
    pub hpke_public_key: Bytes32,
    /// Encoded attestation evidence the member registered with.
    pub attestation: HexBytes,
    /// SHA-256 of the SubjectPublicKeyInfo of the node's TLS certificate, bound into the
    /// registration evidence (its report data); the cluster listener admits this key as the
    /// member. `None` for a node without TLS (development plaintext).
    #[serde(default)]
    pub tls_spki: Option<Bytes32>,
    /// Admin listener address (operators; a follower names the leader's in `NOT_LEADER`).
    #[serde(default)]
    pub admin_address: Option<String>,
}

/// Status of a master-key epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochStatus {
    /// Shares dealt, not every member has acknowledged yet.
    Dealing,
    /// Usable.
    Active,
    /// Below `min_epoch`; refused.
    Retired,
    /// Rotation deadline passed before dealing completed; never used.
    Aborted,
}

/// One member's encrypted share in a dealing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedShare {
    /// Holder.
    pub node_id: NodeId,
    /// Shamir index (1..=255).
    pub index: u8,
    /// HPKE envelope: encapsulated key.
    pub encapped_key: Bytes32,
    /// HPKE envelope: ciphertext.
    pub ciphertext: HexBytes,
    /// The member HPKE key the share was sealed to (a member that re-registers with a new key
    /// needs a re-dealing). Added within v1; older entries decode with zeros.
    #[serde(default)]
    pub recipient_hpke: Bytes32,
}

/// A dealing of an epoch's master secret to a member set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealingRecord {
    /// 0 at creation, +1 per re-dealing.
    pub generation: u64,
    /// Feldman commitments (compressed Ristretto points, `C_0` first).
    pub commitments: Vec<Bytes32>,
    /// XChaCha20 nonce of the wrapped master secret.
    pub wrapped_nonce: HexBytes,
    /// The wrapped master secret.
    pub wrapped_ciphertext: HexBytes,
    /// One sealed share per member.
    pub shares: Vec<SealedShare>,
    /// Members that verified their share.
    pub acked: BTreeSet<NodeId>,
}

/// A master-key epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number.
    pub epoch: u64,
    /// Shares needed.
    pub threshold: u8,
    /// Master sr25519 public key.
    pub master_public_key: Bytes32,
    /// Cluster signing public key of the epoch.
    pub cluster_signing_public_key: Bytes32,
    /// Status.
    pub status: EpochStatus,
    /// The current dealing.
    pub dealing: DealingRecord,
}

/// Worker status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum WorkerStatus {
    /// May receive keys.
    Active,
    /// Slashed at `block` for `reason`; refused keys.
    Slashed {
        /// Block of the slash.
        block: u64,
        /// Reason given on chain.
        reason: String,
    },
    /// Deregistered at `block`; refused keys.
    Removed {
        /// Block of the deregistration.
        block: u64,
    },
    /// Reported unresponsive at `block` (Phala's `WorkerEnterUnresponsive`); refused keys until
    /// the chain reports it responsive again or it re-registers.
    Unresponsive {
        /// Block of the report.
        block: u64,
    },
}

/// A worker in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// sr25519 public key.
    pub public_key: Bytes32,
    /// Attestation provider named on chain (`root`, `ias`, `dcap`).
    pub attestation_provider: String,
    /// Confidence level from the chain.
    pub confidence_level: u8,
    /// Block at which it was registered.
    pub registered_at: u64,
    /// Current status.
    pub status: WorkerStatus,
    /// Clusters the worker is assigned to.
    pub clusters: BTreeSet<Bytes32>,
}

/// Derivation scheme of a cluster (mirrors `keyring::derive::Scheme`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// Gatekeeper's own.
    Native,
    /// Phala-compatible.
    Phala,
}

/// A compute cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Cluster id.
    pub id: Bytes32,
    /// Derivation scheme.
    pub scheme: Scheme,
    /// Block at which it was created.
    pub created_at: u64,
}

/// How far the chain has been applied: the only progress record of the chain watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainCursor {
    /// Finalized block number.
    pub block: u64,
    /// Its hash.
    pub block_hash: Bytes32,
    /// Event records of `block` applied so far: indices `0..event_index` (the next index to
    /// apply).
    pub event_index: u32,
    /// Whether every event record of `block` has been applied.
    pub block_complete: bool,
}

/// A chain event the state did not act on, kept for operators (`admin status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredEvent {
    /// Block number.
    pub block: u64,
    /// Index of the event record in the block.
    pub index: u32,
    /// `Pallet.Event` (undecodable) or the decoded event's name (not applicable).
    pub name: String,
    /// Why it was not applied.
    pub reason: String,
}

/// Everything the state knows about the chain it follows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRecord {
    /// Genesis hash of the followed chain (fixed by the first applied block).
    pub genesis_hash: Option<Bytes32>,
    /// Progress.
    pub cursor: Option<ChainCursor>,
    /// Events applied.
    pub events_applied: u64,
    /// Events not applied (undecodable, or not applicable to the state).
    pub events_ignored: u64,
    /// The most recent ignored events (at most [`RECENT_IGNORED`]).
    pub recent_ignored: Vec<IgnoredEvent>,
    /// A bootstrap from chain storage in progress (no cursor until it ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<ChainBootstrapProgress>,
    /// The bootstrap from chain storage the cluster started with, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrapped: Option<ChainBootstrapProgress>,
}

/// How far a bootstrap from chain storage got: the block whose storage is read and how many of
/// its storage entries are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBootstrapProgress {
    /// The block.
    pub block: u64,
    /// Its hash.
    pub block_hash: Bytes32,
    /// Storage entries applied.
    pub entries: u64,
}

/// How many ignored chain events the state remembers.
pub const RECENT_IGNORED: usize = 16;

/// Outcome of a rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationOutcome {
    /// Dealing in progress.
    InProgress,
    /// The new epoch became active.
    Completed,
    /// Aborted (deadline passed or operator), with the reason.
    Aborted(String),
}

/// A rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationRecord {
    /// Rotation id (chain's or operator's).
    pub rotation_id: String,
    /// Proposer time when requested, ms.
    pub requested_at_ms: u64,
    /// Deadline, ms.
    pub deadline_ms: u64,
    /// The epoch being created.
    pub epoch: u64,
    /// Outcome.
    pub outcome: RotationOutcome,
}

#[cfg(test)]
impl MemberRecord {
    /// A member record for tests: node `n` with identity key `identity`, Raft address
    /// `127.0.0.1:<7000 + n>`, API address `127.0.0.1:<8000 + n>`, HPKE key `[9; 32]`, no
    /// evidence.
    pub(crate) fn for_tests(n: NodeId, identity: Bytes32) -> Self {
        MemberRecord {
            node_id: n,
            raft_address: format!("127.0.0.1:{}", 7000 + n),
            api_address: format!("127.0.0.1:{}", 8000 + n),
            identity_public_key: identity,
            hpke_public_key: Bytes32([9; 32]),
            attestation: HexBytes(vec![]),
            tls_spki: None,
            admin_address: None,
        }
    }
}
