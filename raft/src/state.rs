//! `GatekeeperState`: the replicated state machine, with pure apply logic.
//!
//! [`GatekeeperState::apply`] is a pure function of the state, the command and the log index: no
//! IO, no clock, no randomness. Every node applying the same log reaches the same state and the
//! same replies. Times come inside commands (the proposer's clock), never from the applier.
//!
//! Invalid commands are **rejected deterministically** (a [`Reply::Rejected`] with a stable code,
//! state unchanged) rather than panicked on. Chain events arrive in [`Command::ChainBlocks`]
//! commands, each covering a range of one finalized block's event records; the committed
//! [`ChainCursor`] (block number + hash + event index) is the only progress record. A block range
//! at or before the cursor is answered [`Reply::Duplicate`] and changes nothing; a range that does
//! not continue the cursor exactly (a gap, another parent hash, another chain) is rejected, so
//! every event is applied exactly once whoever proposes it (docs/chain.md).
//!
//! Commands are encoded as versioned JSON (`{"v":1,"cmd":…}`) so old log entries keep applying
//! after new command variants are added; see [`encode_command`] / [`decode_command`].

use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
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

/// One decoded event and its index among the block's event records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedEvent {
    /// Index of the event record in the block.
    pub index: u32,
    /// The event.
    pub event: ChainEvent,
}

/// A range of one finalized block's event records, as the chain watcher proposes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBlock {
    /// Hash of the chain's genesis block: a cluster follows one chain only.
    pub genesis_hash: Bytes32,
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: Bytes32,
    /// Parent block hash (checked against the cursor: no block is skipped).
    pub parent_hash: Bytes32,
    /// First event record index covered.
    pub from_index: u32,
    /// One past the last event record index covered.
    pub to_index: u32,
    /// Whether `to_index` is the block's event count (the block is finished by this command).
    pub complete: bool,
    /// The decoded events of the profile, ascending by index, within `from_index..to_index`.
    pub events: Vec<IndexedEvent>,
    /// Events of a known name whose shape did not decode; recorded, never applied.
    pub undecodable: Vec<IgnoredEvent>,
    /// Proposer's clock, ms (starts a requested rotation's deadline).
    pub proposed_at_ms: u64,
    /// Deadline given to a rotation this range starts, ms after `proposed_at_ms` (0: none).
    pub rotation_deadline_ms: u64,
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
}

/// How many ignored chain events the state remembers.
pub const RECENT_IGNORED: usize = 16;

/// A chain event, already decoded by the watcher (profile-independent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum ChainEvent {
    /// A worker registered.
    WorkerRegistered {
        /// Worker key.
        worker: Bytes32,
        /// Provider.
        attestation_provider: String,
        /// Confidence level.
        confidence_level: u8,
    },
    /// A worker deregistered.
    WorkerDeregistered {
        /// Worker key.
        worker: Bytes32,
    },
    /// A worker slashed.
    WorkerSlashed {
        /// Worker key.
        worker: Bytes32,
        /// Reason.
        reason: String,
    },
    /// A rotation was requested.
    MasterKeyRotationRequested {
        /// Chain's rotation id.
        rotation_id: String,
    },
    /// A cluster was created with initial workers.
    ClusterCreated {
        /// Cluster id.
        cluster: Bytes32,
        /// Initial workers.
        workers: Vec<Bytes32>,
        /// Scheme.
        scheme: Scheme,
    },
    /// A worker joined a cluster.
    WorkerAddedToCluster {
        /// Worker.
        worker: Bytes32,
        /// Cluster.
        cluster: Bytes32,
    },
    /// A worker left a cluster.
    WorkerRemovedFromCluster {
        /// Worker.
        worker: Bytes32,
        /// Cluster.
        cluster: Bytes32,
    },
    /// A contract was instantiated on a cluster.
    ContractInstantiated {
        /// Contract.
        contract: Bytes32,
        /// Cluster.
        cluster: Bytes32,
    },
    /// Phala: a computing session (an account) was bound to a worker.
    SessionBound {
        /// Session account.
        session: Bytes32,
        /// Worker key.
        worker: Bytes32,
    },
    /// Phala: a session was unbound from its worker.
    SessionUnbound {
        /// Session account.
        session: Bytes32,
        /// Worker key.
        worker: Bytes32,
    },
    /// Phala: the worker bound to a session stopped answering heartbeats.
    SessionUnresponsive {
        /// Session account.
        session: Bytes32,
    },
    /// Phala: the worker bound to a session answers heartbeats again.
    SessionResponsive {
        /// Session account.
        session: Bytes32,
    },
    /// Phala: the worker bound to a session lost stake (slashed on reclaim).
    SessionSlashed {
        /// Session account.
        session: Bytes32,
        /// Reason.
        reason: String,
    },
}

impl ChainEvent {
    /// The event's name, as in docs/chain.md.
    pub fn name(&self) -> &'static str {
        match self {
            ChainEvent::WorkerRegistered { .. } => "WorkerRegistered",
            ChainEvent::WorkerDeregistered { .. } => "WorkerDeregistered",
            ChainEvent::WorkerSlashed { .. } => "WorkerSlashed",
            ChainEvent::MasterKeyRotationRequested { .. } => "MasterKeyRotationRequested",
            ChainEvent::ClusterCreated { .. } => "ClusterCreated",
            ChainEvent::WorkerAddedToCluster { .. } => "WorkerAddedToCluster",
            ChainEvent::WorkerRemovedFromCluster { .. } => "WorkerRemovedFromCluster",
            ChainEvent::ContractInstantiated { .. } => "ContractInstantiated",
            ChainEvent::SessionBound { .. } => "SessionBound",
            ChainEvent::SessionUnbound { .. } => "SessionUnbound",
            ChainEvent::SessionUnresponsive { .. } => "SessionUnresponsive",
            ChainEvent::SessionResponsive { .. } => "SessionResponsive",
            ChainEvent::SessionSlashed { .. } => "SessionSlashed",
        }
    }
}

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

/// Every command the state machine accepts (version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Command {
    /// Fix the cluster id. Once only.
    InitCluster {
        /// The new id.
        gatekeeper_id: Bytes32,
        /// Shares needed for epoch 0 (None: a majority of the voters). Added within v1: entries
        /// written before it decode with the default.
        #[serde(default)]
        threshold: Option<u8>,
        /// The node that deals epoch 0 (it holds an imported master secret); None: the leader.
        #[serde(default)]
        genesis_dealer: Option<NodeId>,
    },
    /// DEVELOPMENT PATH: a chain-shaped event entered by an operator (`AdminService.ApplyDevEvent`)
    /// without a chain. Same effects as an event in a [`Command::ChainBlocks`] but does not move
    /// the chain cursor; refused by AdminService in production mode.
    DevEvent {
        /// The event.
        event: ChainEvent,
    },
    /// Add or update a member's record (keys, addresses, evidence).
    UpsertMember(MemberRecord),
    /// Remove a member's record.
    RemoveMember {
        /// Node.
        node_id: NodeId,
    },
    /// Install a new epoch (genesis or rotation) in `dealing` status.
    InstallEpoch(EpochRecord),
    /// A member verified its share of `(epoch, generation)`.
    AckShare {
        /// Epoch.
        epoch: u64,
        /// Generation.
        generation: u64,
        /// Member.
        node_id: NodeId,
    },
    /// Replace an epoch's dealing with a fresh one (membership change).
    Redeal {
        /// Epoch.
        epoch: u64,
        /// The new dealing; its generation must be the current one + 1.
        dealing: DealingRecord,
    },
    /// Retire every epoch below `min_epoch`.
    SetMinEpoch {
        /// New minimum; may not pass the current epoch.
        min_epoch: u64,
    },
    /// Start a rotation towards `epoch`.
    StartRotation {
        /// Id; never reused.
        rotation_id: String,
        /// Proposer time, ms.
        requested_at_ms: u64,
        /// Deadline, ms.
        deadline_ms: u64,
    },
    /// Abort the rotation in progress.
    AbortRotation {
        /// Id of the rotation.
        rotation_id: String,
        /// Why.
        reason: String,
    },
    /// Consecutive ranges of finalized blocks' events, proposed by the chain watcher on the
    /// leader; applied in order, all or nothing.
    ChainBlocks {
        /// The ranges, each continuing the one before (the first continues the cursor).
        blocks: Vec<ChainBlock>,
    },
    /// A test/benchmark write: sets `key` to `value` in a small opaque map.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
}

/// Stable rejection codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum RejectCode {
    /// The command could not be decoded.
    MalformedCommand,
    /// The cluster is already initialised.
    AlreadyInitialized,
    /// The cluster is not initialised.
    NotInitialized,
    /// A referenced member does not exist.
    UnknownMember,
    /// A referenced epoch does not exist.
    UnknownEpoch,
    /// An epoch with that number exists or the number is not the next one.
    EpochOutOfOrder,
    /// A dealing is inconsistent (threshold, shares, generation, commitments).
    InvalidDealing,
    /// A referenced worker does not exist.
    UnknownWorker,
    /// A referenced cluster does not exist.
    UnknownCluster,
    /// The object already exists.
    AlreadyExists,
    /// A rotation is in progress, or none is.
    RotationConflict,
    /// The request is not allowed in this state.
    InvalidState,
    /// A chain block that does not belong to the followed chain (another genesis, or a hash or
    /// parent hash that differs from the committed cursor's).
    ChainMismatch,
    /// A chain block range that does not continue the committed cursor (a skipped block or
    /// event range).
    ChainGap,
}

/// The state machine's answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reply")]
pub enum Reply {
    /// Applied; the audit sequence number it got.
    Applied {
        /// Audit sequence.
        audit_sequence: u64,
    },
    /// A chain event already applied (at or before the cursor); nothing changed.
    Duplicate,
    /// Refused; nothing changed.
    Rejected {
        /// Stable code.
        code: RejectCode,
        /// Human-readable reason.
        message: String,
    },
}

fn reject(code: RejectCode, message: impl Into<String>) -> Reply {
    Reply::Rejected {
        code,
        message: message.into(),
    }
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatekeeperState {
    /// Fixed at init.
    pub gatekeeper_id: Option<Bytes32>,
    /// Threshold requested for epoch 0 at init (None: majority).
    #[serde(default)]
    pub genesis_threshold: Option<u8>,
    /// Node that deals epoch 0 (None: the leader).
    #[serde(default)]
    pub genesis_dealer: Option<NodeId>,
    /// Member records.
    pub members: BTreeMap<NodeId, MemberRecord>,
    /// Master-key epochs.
    pub epochs: BTreeMap<u64, EpochRecord>,
    /// Epochs below this are retired.
    pub min_epoch: u64,
    /// Worker registry.
    pub workers: BTreeMap<Bytes32, WorkerRecord>,
    /// Compute clusters.
    pub clusters: BTreeMap<Bytes32, ClusterRecord>,
    /// Contract → cluster.
    pub contracts: BTreeMap<Bytes32, Bytes32>,
    /// The followed chain: genesis, cursor, counters. Added within v1 (older snapshots load with
    /// the default).
    #[serde(default)]
    pub chain: ChainRecord,
    /// Phala profile: session account -> worker key.
    #[serde(default)]
    pub sessions: BTreeMap<Bytes32, Bytes32>,
    /// Rotation ids requested on chain that could not start yet (one in progress, or no active
    /// epoch); the leader starts them in order.
    #[serde(default)]
    pub pending_rotations: Vec<String>,
    /// The rotation in progress or last finished.
    pub rotation: Option<RotationRecord>,
    /// Every rotation id ever started.
    pub rotation_ids: BTreeSet<String>,
    /// Test/benchmark key-value writes.
    pub kv: BTreeMap<String, String>,
    /// Monotonic audit sequence: +1 per applied command.
    pub audit_sequence: u64,
}

impl GatekeeperState {
    /// The highest active epoch.
    pub fn current_epoch(&self) -> Option<u64> {
        self.epochs
            .values()
            .rev()
            .find(|e| e.status == EpochStatus::Active)
            .map(|e| e.epoch)
    }

    /// Applies one command. Pure and deterministic; see the module docs.
    ///
    /// Every branch of the apply logic **validates completely before it mutates anything**, so a
    /// rejected command leaves the state exactly as it was without copying it (a copy per command
    /// made each write O(state size)). The tests assert this for every rejection they provoke.
    pub fn apply(&mut self, command: &Command) -> Reply {
        match self.apply_inner(command) {
            Ok(true) => {
                self.audit_sequence += 1;
                Reply::Applied {
                    audit_sequence: self.audit_sequence,
                }
            }
            Ok(false) => Reply::Duplicate,
            Err(r) => r,
        }
    }

    /// Applies an encoded command; undecodable bytes are rejected, not panicked on.
    pub fn apply_encoded(&mut self, bytes: &[u8]) -> Reply {
        match decode_command(bytes) {
            Ok(c) => self.apply(&c),
            Err(e) => reject(RejectCode::MalformedCommand, e),
        }
    }

    /// `Ok(true)`: applied; `Ok(false)`: duplicate chain event; `Err`: rejected, with nothing
    /// modified (validate first, then mutate).
    fn apply_inner(&mut self, command: &Command) -> Result<bool, Reply> {
        use RejectCode::*;
        match command {
            Command::InitCluster {
                gatekeeper_id,
                threshold,
                genesis_dealer,
            } => {
                if self.gatekeeper_id.is_some() {
                    return Err(reject(AlreadyInitialized, "cluster already initialised"));
                }
                if *threshold == Some(0) {
                    return Err(reject(InvalidDealing, "threshold must be at least 1"));
                }
                self.gatekeeper_id = Some(*gatekeeper_id);
                self.genesis_threshold = *threshold;
                self.genesis_dealer = *genesis_dealer;
            }
            Command::DevEvent { event } => {
                let block = self.chain.cursor.map_or(0, |c| c.block);
                self.apply_chain_event(block, event, 0, 0)?;
            }
            Command::UpsertMember(m) => {
                if m.raft_address.is_empty() || m.api_address.is_empty() {
                    return Err(reject(InvalidState, "member addresses must not be empty"));
                }
                self.members.insert(m.node_id, m.clone());
            }
            Command::RemoveMember { node_id } => {
                if self.members.remove(node_id).is_none() {
                    return Err(reject(
                        UnknownMember,
                        format!("node {node_id} is not a member"),
                    ));
                }
            }
            Command::InstallEpoch(e) => {
                self.require_init()?;
                let expected = self.epochs.keys().next_back().map_or(0, |l| l + 1);
                if e.epoch != expected {
                    return Err(reject(
                        EpochOutOfOrder,
                        format!("epoch {} installed, {expected} expected", e.epoch),
                    ));
                }
                if e.status != EpochStatus::Dealing {
                    return Err(reject(
                        InvalidDealing,
                        "a new epoch starts in dealing status",
                    ));
                }
                self.check_dealing(e.threshold, &e.dealing)?;
                if e.dealing.generation != 0 || !e.dealing.acked.is_empty() {
                    return Err(reject(
                        InvalidDealing,
                        "a new epoch starts at generation 0 with no acks",
                    ));
                }
                if let Some(r) = &mut self.rotation {
                    if r.outcome == RotationOutcome::InProgress && r.epoch != e.epoch {
                        return Err(reject(
                            RotationConflict,
                            format!("rotation {} is dealing epoch {}", r.rotation_id, r.epoch),
                        ));
                    }
                }
                self.epochs.insert(e.epoch, e.clone());
            }
            Command::AckShare {
                epoch,
                generation,
                node_id,
            } => {
                let members: BTreeSet<NodeId> = self.members.keys().copied().collect();
                let e = self.epoch_mut(*epoch)?;
                if e.dealing.generation != *generation {
                    return Err(reject(
                        InvalidDealing,
                        format!(
                            "ack for generation {generation}, current is {}",
                            e.dealing.generation
                        ),
                    ));
                }
                if !e.dealing.shares.iter().any(|s| s.node_id == *node_id) {
                    return Err(reject(
                        UnknownMember,
                        format!("node {node_id} holds no share of epoch {epoch}"),
                    ));
                }
                e.dealing.acked.insert(*node_id);
                let holders: BTreeSet<NodeId> =
                    e.dealing.shares.iter().map(|s| s.node_id).collect();
                if e.status == EpochStatus::Dealing
                    && e.dealing.acked == holders
                    && holders.is_subset(&members)
                {
                    e.status = EpochStatus::Active;
                    let ep = e.epoch;
                    if let Some(r) = &mut self.rotation {
                        if r.epoch == ep && r.outcome == RotationOutcome::InProgress {
                            r.outcome = RotationOutcome::Completed;
                        }
                    }
                }
            }
            Command::Redeal { epoch, dealing } => {
                let threshold = self.epoch_mut(*epoch)?.threshold;
                self.check_dealing(threshold, dealing)?;
                let e = self.epoch_mut(*epoch)?;
                if matches!(e.status, EpochStatus::Retired | EpochStatus::Aborted) {
                    return Err(reject(
                        InvalidState,
                        format!("epoch {epoch} is {:?}", e.status),
                    ));
                }
                if dealing.generation != e.dealing.generation + 1 || !dealing.acked.is_empty() {
                    return Err(reject(
                        InvalidDealing,
                        format!(
                            "re-dealing must be generation {} with no acks",
                            e.dealing.generation + 1
                        ),
                    ));
                }
                e.dealing = dealing.clone();
            }
            Command::SetMinEpoch { min_epoch } => {
                let current = self
                    .current_epoch()
                    .ok_or_else(|| reject(InvalidState, "no active epoch"))?;
                if *min_epoch > current {
                    return Err(reject(
                        InvalidState,
                        format!("min_epoch {min_epoch} would retire the current epoch {current}"),
                    ));
                }
                if *min_epoch < self.min_epoch {
                    return Err(reject(
                        InvalidState,
                        format!(
                            "min_epoch cannot go back from {} to {min_epoch}",
                            self.min_epoch
                        ),
                    ));
                }
                self.min_epoch = *min_epoch;
                for e in self.epochs.values_mut() {
                    if e.epoch < *min_epoch && e.status == EpochStatus::Active {
                        e.status = EpochStatus::Retired;
                    }
                }
            }
            Command::StartRotation {
                rotation_id,
                requested_at_ms,
                deadline_ms,
            } => {
                self.start_rotation(rotation_id, *requested_at_ms, *deadline_ms)?;
                self.pending_rotations.retain(|p| p != rotation_id);
            }
            Command::AbortRotation {
                rotation_id,
                reason,
            } => {
                let r = self
                    .rotation
                    .as_mut()
                    .filter(|r| {
                        r.rotation_id == *rotation_id && r.outcome == RotationOutcome::InProgress
                    })
                    .ok_or_else(|| {
                        reject(
                            RotationConflict,
                            format!("rotation {rotation_id} is not in progress"),
                        )
                    })?;
                r.outcome = RotationOutcome::Aborted(reason.clone());
                let ep = r.epoch;
                if let Some(e) = self.epochs.get_mut(&ep) {
                    if e.status == EpochStatus::Dealing {
                        e.status = EpochStatus::Aborted;
                    }
                }
            }
            Command::ChainBlocks { blocks } => {
                if blocks.is_empty() {
                    return Err(reject(MalformedCommand, "no chain blocks"));
                }
                // Validate the whole batch against the cursor it would leave, then apply.
                let mut chain = self.chain.clone();
                let mut fresh = Vec::with_capacity(blocks.len());
                for b in blocks {
                    if check_chain_block(&chain, b)? {
                        chain.genesis_hash = Some(b.genesis_hash);
                        chain.cursor = Some(cursor_after(b));
                        fresh.push(b);
                    } else if !fresh.is_empty() {
                        return Err(reject(
                            ChainGap,
                            format!("block {} repeats a range of this batch", b.number),
                        ));
                    }
                }
                if fresh.is_empty() {
                    return Ok(false);
                }
                for b in fresh {
                    self.apply_chain_block(b);
                }
            }
            Command::Put { key, value } => {
                self.kv.insert(key.clone(), value.clone());
            }
        }
        Ok(true)
    }

    fn require_init(&self) -> Result<(), Reply> {
        if self.gatekeeper_id.is_none() {
            return Err(reject(
                RejectCode::NotInitialized,
                "cluster not initialised",
            ));
        }
        Ok(())
    }

    fn epoch_mut(&mut self, epoch: u64) -> Result<&mut EpochRecord, Reply> {
        self.epochs
            .get_mut(&epoch)
            .ok_or_else(|| reject(RejectCode::UnknownEpoch, format!("no epoch {epoch}")))
    }

    fn check_dealing(&self, threshold: u8, d: &DealingRecord) -> Result<(), Reply> {
        let bad = |m: String| Err(reject(RejectCode::InvalidDealing, m));
        let n = d.shares.len();
        if threshold == 0 || usize::from(threshold) > n {
            return bad(format!("threshold {threshold} with {n} shares"));
        }
        if d.commitments.len() != usize::from(threshold) {
            return bad(format!(
                "{} commitments for threshold {threshold}",
                d.commitments.len()
            ));
        }
        let mut nodes = BTreeSet::new();
        let mut indices = BTreeSet::new();
        for s in &d.shares {
            if s.index == 0 || !indices.insert(s.index) {
                return bad(format!("share index {} zero or repeated", s.index));
            }
            if !nodes.insert(s.node_id) {
                return bad(format!("node {} holds two shares", s.node_id));
            }
            if !self.members.contains_key(&s.node_id) {
                return Err(reject(
                    RejectCode::UnknownMember,
                    format!("share for non-member {}", s.node_id),
                ));
            }
        }
        Ok(())
    }

    fn start_rotation(&mut self, id: &str, at: u64, deadline: u64) -> Result<(), Reply> {
        use RejectCode::*;
        self.require_init()?;
        if id.is_empty() {
            return Err(reject(InvalidState, "rotation id must not be empty"));
        }
        if self.rotation_ids.contains(id) {
            return Err(reject(
                AlreadyExists,
                format!("rotation {id} already started"),
            ));
        }
        if let Some(r) = &self.rotation {
            if r.outcome == RotationOutcome::InProgress {
                return Err(reject(
                    RotationConflict,
                    format!("rotation {} is in progress", r.rotation_id),
                ));
            }
        }
        if self.current_epoch().is_none() {
            return Err(reject(InvalidState, "no active epoch to rotate from"));
        }
        let epoch = self.epochs.keys().next_back().map_or(0, |l| l + 1);
        self.rotation_ids.insert(id.to_string());
        self.rotation = Some(RotationRecord {
            rotation_id: id.to_string(),
            requested_at_ms: at,
            deadline_ms: deadline,
            epoch,
            outcome: RotationOutcome::InProgress,
        });
        Ok(())
    }

    /// Applies a checked block range: every event on its own (an event that does not apply to
    /// the state is recorded as ignored, with the reason), then the cursor.
    fn apply_chain_block(&mut self, b: &ChainBlock) {
        let mut ignored: Vec<IgnoredEvent> = b.undecodable.clone();
        for e in &b.events {
            match self.apply_chain_event(
                b.number,
                &e.event,
                b.proposed_at_ms,
                b.rotation_deadline_ms,
            ) {
                Ok(()) => self.chain.events_applied += 1,
                Err(Reply::Rejected { code, message }) => ignored.push(IgnoredEvent {
                    block: b.number,
                    index: e.index,
                    name: e.event.name().to_string(),
                    reason: format!("{code:?}: {message}"),
                }),
                Err(_) => {}
            }
        }
        ignored.sort_by_key(|i| i.index);
        self.chain.events_ignored += ignored.len() as u64;
        self.chain.recent_ignored.extend(ignored);
        let excess = self
            .chain
            .recent_ignored
            .len()
            .saturating_sub(RECENT_IGNORED);
        self.chain.recent_ignored.drain(..excess);
        self.chain.genesis_hash = Some(b.genesis_hash);
        self.chain.cursor = Some(cursor_after(b));
    }

    /// Applies one chain event (validate first, then mutate). `at_ms`/`deadline_ms` start a
    /// requested rotation.
    fn apply_chain_event(
        &mut self,
        block: u64,
        event: &ChainEvent,
        at_ms: u64,
        deadline_ms: u64,
    ) -> Result<(), Reply> {
        use RejectCode::*;
        match event {
            ChainEvent::WorkerRegistered {
                worker,
                attestation_provider,
                confidence_level,
            } => {
                // Re-registration of a removed or slashed worker re-activates it.
                let clusters = self
                    .workers
                    .get(worker)
                    .map(|w| w.clusters.clone())
                    .unwrap_or_default();
                self.workers.insert(
                    *worker,
                    WorkerRecord {
                        public_key: *worker,
                        attestation_provider: attestation_provider.clone(),
                        confidence_level: *confidence_level,
                        registered_at: block,
                        status: WorkerStatus::Active,
                        clusters,
                    },
                );
            }
            ChainEvent::WorkerDeregistered { worker } => {
                let w = self.worker_mut(worker)?;
                w.status = WorkerStatus::Removed { block };
            }
            ChainEvent::WorkerSlashed { worker, reason } => {
                let w = self.worker_mut(worker)?;
                w.status = WorkerStatus::Slashed {
                    block,
                    reason: reason.clone(),
                };
            }
            ChainEvent::MasterKeyRotationRequested { rotation_id } => {
                // The same rotation id seen twice rotates once: the second is a no-op.
                if rotation_id.is_empty() {
                    return Err(reject(InvalidState, "rotation id must not be empty"));
                }
                if self.rotation_ids.contains(rotation_id)
                    || self.pending_rotations.contains(rotation_id)
                {
                    return Ok(());
                }
                let busy = self
                    .rotation
                    .as_ref()
                    .is_some_and(|r| r.outcome == RotationOutcome::InProgress);
                if busy || self.current_epoch().is_none() || !self.pending_rotations.is_empty() {
                    // Queued: the leader starts it once the cluster can rotate (in order).
                    self.pending_rotations.push(rotation_id.clone());
                } else {
                    let deadline = if deadline_ms == 0 {
                        0
                    } else {
                        at_ms.saturating_add(deadline_ms)
                    };
                    self.start_rotation(rotation_id, at_ms, deadline)?;
                }
            }
            ChainEvent::ClusterCreated {
                cluster,
                workers,
                scheme,
            } => {
                if self.clusters.contains_key(cluster) {
                    return Err(reject(AlreadyExists, format!("cluster {cluster:?} exists")));
                }
                for w in workers {
                    if !self.workers.contains_key(w) {
                        return Err(reject(UnknownWorker, format!("worker {w:?}")));
                    }
                }
                self.clusters.insert(
                    *cluster,
                    ClusterRecord {
                        id: *cluster,
                        scheme: *scheme,
                        created_at: block,
                    },
                );
                for w in workers {
                    self.worker_mut(w)?.clusters.insert(*cluster);
                }
            }
            ChainEvent::WorkerAddedToCluster { worker, cluster } => {
                self.require_cluster(cluster)?;
                self.worker_mut(worker)?.clusters.insert(*cluster);
            }
            ChainEvent::WorkerRemovedFromCluster { worker, cluster } => {
                self.require_cluster(cluster)?;
                self.worker_mut(worker)?.clusters.remove(cluster);
            }
            ChainEvent::ContractInstantiated { contract, cluster } => {
                self.require_cluster(cluster)?;
                if self.contracts.contains_key(contract) {
                    return Err(reject(
                        AlreadyExists,
                        format!("contract {contract:?} exists"),
                    ));
                }
                self.contracts.insert(*contract, *cluster);
            }
            ChainEvent::SessionBound { session, worker } => {
                self.worker_mut(worker)?;
                self.sessions.insert(*session, *worker);
            }
            ChainEvent::SessionUnbound { session, worker } => {
                if self.sessions.get(session) != Some(worker) {
                    return Err(reject(
                        UnknownWorker,
                        format!("session {session:?} is not bound to worker {worker:?}"),
                    ));
                }
                self.sessions.remove(session);
            }
            ChainEvent::SessionUnresponsive { session } => {
                let w = self.session_worker_mut(session)?;
                // A slashed or removed worker stays so; only an active one becomes unresponsive.
                if w.status == WorkerStatus::Active {
                    w.status = WorkerStatus::Unresponsive { block };
                }
            }
            ChainEvent::SessionResponsive { session } => {
                let w = self.session_worker_mut(session)?;
                if matches!(w.status, WorkerStatus::Unresponsive { .. }) {
                    w.status = WorkerStatus::Active;
                }
            }
            ChainEvent::SessionSlashed { session, reason } => {
                let w = self.session_worker_mut(session)?;
                w.status = WorkerStatus::Slashed {
                    block,
                    reason: reason.clone(),
                };
            }
        }
        Ok(())
    }

    fn session_worker_mut(&mut self, session: &Bytes32) -> Result<&mut WorkerRecord, Reply> {
        let w = *self.sessions.get(session).ok_or_else(|| {
            reject(
                RejectCode::UnknownWorker,
                format!("session {session:?} is not bound to a worker"),
            )
        })?;
        self.worker_mut(&w)
    }

    fn worker_mut(&mut self, w: &Bytes32) -> Result<&mut WorkerRecord, Reply> {
        self.workers
            .get_mut(w)
            .ok_or_else(|| reject(RejectCode::UnknownWorker, format!("worker {w:?}")))
    }

    fn require_cluster(&self, c: &Bytes32) -> Result<(), Reply> {
        if self.clusters.contains_key(c) {
            Ok(())
        } else {
            Err(reject(RejectCode::UnknownCluster, format!("cluster {c:?}")))
        }
    }
}

/// Checks that `b` continues `chain`'s cursor. `Ok(false)`: already applied (duplicate); `Err`:
/// rejected.
fn check_chain_block(chain: &ChainRecord, b: &ChainBlock) -> Result<bool, Reply> {
    use RejectCode::*;
    if let Some(g) = chain.genesis_hash {
        if g != b.genesis_hash {
            return Err(reject(
                ChainMismatch,
                format!(
                    "block of a chain with genesis {:?}; this cluster follows genesis {g:?}",
                    b.genesis_hash
                ),
            ));
        }
    }
    if b.from_index > b.to_index {
        return Err(reject(
            MalformedCommand,
            format!("event range {}..{} is reversed", b.from_index, b.to_index),
        ));
    }
    if b.from_index == b.to_index && !b.complete {
        return Err(reject(
            MalformedCommand,
            format!("an empty range of block {} must finish the block", b.number),
        ));
    }
    for i in b
        .events
        .iter()
        .map(|e| e.index)
        .chain(b.undecodable.iter().map(|e| e.index))
    {
        if i < b.from_index || i >= b.to_index {
            return Err(reject(
                MalformedCommand,
                format!(
                    "event index {i} outside the range {}..{}",
                    b.from_index, b.to_index
                ),
            ));
        }
    }
    if b.events.windows(2).any(|w| w[0].index >= w[1].index) {
        return Err(reject(
            MalformedCommand,
            "events are not in ascending index order",
        ));
    }
    let Some(c) = chain.cursor else {
        // The first block the cluster applies: wherever the watcher was told to start.
        if b.from_index != 0 {
            return Err(reject(
                ChainGap,
                format!(
                    "the first applied range of block {} must start at event 0",
                    b.number
                ),
            ));
        }
        return Ok(true);
    };
    if b.number < c.block {
        return Ok(false);
    }
    if b.number == c.block {
        if b.hash != c.block_hash {
            return Err(reject(
                ChainMismatch,
                format!(
                    "block {} has hash {:?} here but {:?} was applied",
                    b.number, b.hash, c.block_hash
                ),
            ));
        }
        if c.block_complete || b.to_index < c.event_index {
            return Ok(false);
        }
        if b.to_index == c.event_index {
            // Nothing new, unless it is the (empty) range that finishes the block.
            return Ok(b.complete && b.from_index == c.event_index);
        }
        if b.from_index != c.event_index {
            return Err(reject(
                ChainGap,
                format!(
                    "block {} is applied up to event {}; a range starting at {} does not continue it",
                    b.number, c.event_index, b.from_index
                ),
            ));
        }
        return Ok(true);
    }
    if !c.block_complete {
        return Err(reject(
            ChainGap,
            format!(
                "block {} is applied only up to event {}; block {} cannot follow",
                c.block, c.event_index, b.number
            ),
        ));
    }
    if b.number != c.block + 1 {
        return Err(reject(
            ChainGap,
            format!(
                "block {} is the next to apply, not block {}",
                c.block + 1,
                b.number
            ),
        ));
    }
    if b.parent_hash != c.block_hash {
        return Err(reject(
            ChainMismatch,
            format!(
                "block {} has parent {:?}, but block {} was applied with hash {:?}",
                b.number, b.parent_hash, c.block, c.block_hash
            ),
        ));
    }
    if b.from_index != 0 {
        return Err(reject(
            ChainGap,
            format!("block {} must be applied from event 0", b.number),
        ));
    }
    Ok(true)
}

/// The cursor after applying `b`.
fn cursor_after(b: &ChainBlock) -> ChainCursor {
    ChainCursor {
        block: b.number,
        block_hash: b.hash,
        event_index: b.to_index,
        block_complete: b.complete,
    }
}

#[derive(Serialize, Deserialize)]
struct Versioned {
    v: u32,
    cmd: serde_json::Value,
}

/// The current command encoding version.
pub const COMMAND_VERSION: u32 = 1;

/// Encodes a command for the Raft log: `{"v":1,"cmd":{…}}`.
pub fn encode_command(c: &Command) -> Vec<u8> {
    serde_json::to_vec(&Versioned {
        v: COMMAND_VERSION,
        cmd: serde_json::to_value(c).expect("commands always serialize"),
    })
    .expect("commands always serialize")
}

/// Decodes a command from the Raft log. Unknown versions and malformed bytes are errors.
pub fn decode_command(bytes: &[u8]) -> Result<Command, String> {
    let v: Versioned = serde_json::from_slice(bytes).map_err(|e| format!("not a command: {e}"))?;
    match v.v {
        1 => serde_json::from_value(v.cmd).map_err(|e| format!("bad v1 command: {e}")),
        other => Err(format!("unknown command version {other}")),
    }
}

#[cfg(test)]
mod tests;
