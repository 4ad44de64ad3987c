//! Commands the state machine accepts, its replies, the chain event payloads commands carry, and
//! the versioned log encoding of commands.

use super::records::{Bytes32, DealingRecord, EpochRecord, IgnoredEvent, MemberRecord, Scheme};
use crate::NodeId;
use serde::{Deserialize, Serialize};

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

/// One part of a bootstrap from chain storage: the registry pallets' storage entries
/// `offset..offset + entries` at `block` (in the profile's fixed order: map by map, each in
/// storage-key order), as the events that create the same registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBootstrapPart {
    /// Hash of the chain's genesis block.
    pub genesis_hash: Bytes32,
    /// The finalized block whose storage is read.
    pub block: u64,
    /// Its hash.
    pub block_hash: Bytes32,
    /// Storage entries covered by earlier parts.
    pub offset: u64,
    /// Storage entries this part covers.
    pub entries: u64,
    /// What those entries say, as registry events (no rotation requests).
    pub events: Vec<ChainEvent>,
    /// Entries that did not decode: recorded, never applied.
    pub undecodable: Vec<IgnoredEvent>,
    /// Whether this part ends the bootstrap (the cursor moves to the end of `block`).
    pub last: bool,
}

/// Longest canary key, bytes (checked by the admin service and again at apply).
pub const MAX_CANARY_KEY_BYTES: usize = 256;
/// Longest canary value, bytes.
pub const MAX_CANARY_VALUE_BYTES: usize = 4096;

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
        /// A production cluster: development-only commands are refused for good.
        #[serde(default)]
        production: bool,
        /// The operators who may sign operator commands (the initialising operator).
        #[serde(default)]
        operators: Vec<super::proposal::OperatorKey>,
        /// The initial voters and their Raft addresses: each may register its first identity.
        /// (A list, not a map: integer map keys do not survive serde's internally tagged enums.)
        #[serde(default)]
        members: Vec<(NodeId, String)>,
    },
    /// An operator authorizes node `node_id` at `raft_address` to register a new enclave
    /// identity once (a join, or a re-join after a wipe). Proposed by `admin join`.
    AuthorizeJoin {
        /// Node.
        node_id: NodeId,
        /// Its Raft address, as its member record will carry it.
        raft_address: String,
    },
    /// An operator's decision that a node leaves: committed before the Raft membership change
    /// that removes it; takes back any authorization for it to register an identity (it must
    /// be joined again). Proposed by `admin leave`.
    AuthorizeLeave {
        /// Node.
        node_id: NodeId,
    },
    /// Registers another operator (its name and ECDSA P-256 public key).
    AddOperator(super::proposal::OperatorKey),
    /// Removes an operator (never the last one).
    RemoveOperator {
        /// Its name.
        name: String,
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
    /// The proposing voter's signature of its state at a checkpoint index (see
    /// [`super::checkpoint`]). Applied with the membership in force, never by [`super::GatekeeperState::apply`] alone.
    SignCheckpoint(super::checkpoint::CheckpointVote),
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
    /// A part of the registry read from chain storage at one finalized block: how a cluster
    /// joining a long chain starts without replaying it from genesis (docs/chain.md §4.1). Parts
    /// are applied in order; the last one leaves the cursor at the end of that block.
    ChainBootstrap(ChainBootstrapPart),
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
    /// The proposer may not issue this command, or its proof does not verify.
    Unauthorized,
    /// The proposal's sequence is not above the last one applied for its proposer and lane.
    Replayed,
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

pub(super) fn reject(code: RejectCode, message: impl Into<String>) -> Reply {
    Reply::Rejected {
        code,
        message: message.into(),
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
