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

mod apply;
mod chain;
mod checkpoint;
mod commands;
mod membership;
mod proposal;
mod records;
mod table;

pub use checkpoint::{
    checkpoint_signing_bytes, verify_certificate, Anchor, CheckpointCertificate, CheckpointVote,
    CHECKPOINT_TAG,
};
pub use commands::{
    decode_command, encode_command, ChainBlock, ChainBootstrapPart, ChainEvent, Command,
    IndexedEvent, RejectCode, Reply, COMMAND_VERSION, MAX_CANARY_KEY_BYTES, MAX_CANARY_VALUE_BYTES,
};
pub use membership::check_membership_change;
pub use proposal::{
    authorize, check_operator_fresh, command_name, decode_entry, encode_proposal,
    operator_signing_bytes, sign_proposal, sign_proposal_json, signing_bytes,
    verify_operator_signature, ApplyContext, CommandSigner, Decoded, Lane, OperatorKey,
    OperatorProof, Proof, MAX_OPERATOR_SKEW_MS, PROPOSAL_VERSION,
};
pub use records::{
    Bytes32, ChainBootstrapProgress, ChainCursor, ChainRecord, ClusterRecord, DealingRecord,
    EpochRecord, EpochStatus, HexBytes, IgnoredEvent, MemberRecord, RotationOutcome,
    RotationRecord, Scheme, SealedShare, WorkerRecord, WorkerStatus, RECENT_IGNORED,
};
pub use table::{RecordChange, StoredRecord, Table, TableKey};

use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Declares the keyed tables of [`GatekeeperState`] once: [`TABLES`] and the methods that take
/// their changes, all their records, load a record, and move them out and back. A table added
/// to the state but not here would not be persisted, so this list is the only one.
macro_rules! keyed_tables {
    ($($field:ident),+ $(,)?) => {
        /// The keyed tables of [`GatekeeperState`], each stored as its own tree (`sm_store`);
        /// the rest of the state is one small record.
        pub const TABLES: &[&str] = &[$(stringify!($field)),+];

        impl GatekeeperState {
            /// The keyed tables' records changed since the last call, by table name
            /// ([`TABLES`] order), and forgets them.
            pub fn take_table_changes(&mut self) -> Vec<(&'static str, Vec<RecordChange>)> {
                vec![$((stringify!($field), self.$field.take_changes())),+]
            }

            /// A copy of the keyed tables for a full rewrite (cheap: persistent maps), and
            /// forgets their changes.
            pub fn tables_for_rewrite(&mut self) -> Tables {
                Tables(GatekeeperState {
                    $($field: self.$field.take_all(),)+
                    ..GatekeeperState::default()
                })
            }

            /// Adds a stored record of table `table` (loading the state back).
            pub fn load_record(
                &mut self,
                table: &str,
                key: &[u8],
                value: &[u8],
            ) -> Result<(), String> {
                match table {
                    $(stringify!($field) => self.$field.load(key, value),)+
                    other => Err(format!("unknown table {other}")),
                }
            }

            /// Moves the keyed tables out (the state left holds everything else: what the
            /// store keeps as one small record), to be put back with
            /// [`GatekeeperState::put_tables`].
            pub fn take_tables(&mut self) -> Tables {
                Tables(GatekeeperState {
                    $($field: std::mem::take(&mut self.$field),)+
                    ..GatekeeperState::default()
                })
            }

            /// Puts back what [`GatekeeperState::take_tables`] took.
            pub fn put_tables(&mut self, t: Tables) {
                let t = t.0;
                $(self.$field = t.$field;)+
            }
        }

        impl Tables {
            /// Calls `f` with each table's index in [`TABLES`] and its records, encoded, at
            /// most `chunk` at a time.
            pub fn for_each_chunk<E>(
                &self,
                chunk: usize,
                mut f: impl FnMut(usize, Vec<StoredRecord>) -> Result<(), E>,
            ) -> Result<(), E> {
                let mut i = 0;
                $(
                    self.0.$field.for_each_chunk(chunk, |r| f(i, r))?;
                    i += 1;
                )+
                let _ = i;
                Ok(())
            }
        }
    };
}

keyed_tables!(
    members,
    epochs,
    workers,
    clusters,
    contracts,
    sessions,
    kv,
    canary_writers,
);

/// The keyed tables taken out of a state ([`GatekeeperState::take_tables`]).
pub struct Tables(GatekeeperState);

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
    pub members: Table<NodeId, MemberRecord>,
    /// Master-key epochs.
    pub epochs: Table<u64, EpochRecord>,
    /// Epochs below this are retired.
    pub min_epoch: u64,
    /// Worker registry.
    pub workers: Table<Bytes32, WorkerRecord>,
    /// Compute clusters.
    pub clusters: Table<Bytes32, ClusterRecord>,
    /// Contract → cluster.
    pub contracts: Table<Bytes32, Bytes32>,
    /// The followed chain: genesis, cursor, counters. Added within v1 (older snapshots load with
    /// the default).
    #[serde(default)]
    pub chain: ChainRecord,
    /// Phala profile: session account -> worker key.
    #[serde(default)]
    pub sessions: Table<Bytes32, Bytes32>,
    /// Rotation ids requested on chain that could not start yet (one in progress, or no active
    /// epoch); the leader starts them in order.
    #[serde(default)]
    pub pending_rotations: Vec<String>,
    /// The rotation in progress or last finished.
    pub rotation: Option<RotationRecord>,
    /// Every rotation id ever started.
    pub rotation_ids: BTreeSet<String>,
    /// Test/benchmark key-value writes.
    pub kv: Table<String, String>,
    /// Monotonic audit sequence: +1 per applied command.
    pub audit_sequence: u64,
    /// Fixed at init: a production cluster refuses development-only commands whichever path
    /// they came by.
    #[serde(default)]
    pub production: bool,
    /// Highest proposal sequence applied per node and lane (replay protection, see
    /// [`proposal`]).
    #[serde(default)]
    pub sequences: BTreeMap<NodeId, BTreeMap<String, u64>>,
    /// Registered operators: name → ECDSA P-256 public key (uncompressed point). Set at init
    /// from the initialising operator's certificate; empty for a cluster initialised without
    /// TLS.
    #[serde(default)]
    pub operators: BTreeMap<String, HexBytes>,
    /// Highest sequence applied per operator.
    #[serde(default)]
    pub operator_sequences: BTreeMap<String, u64>,
    /// Nodes an operator authorized to register a new enclave identity (once): node → Raft
    /// address. Filled at init (the initial voters) and by `AuthorizeJoin`; consumed by the
    /// registration.
    #[serde(default)]
    pub authorized_joins: BTreeMap<NodeId, String>,
    /// Nodes an operator authorized to hold a place in the Raft membership, at that Raft
    /// address: the initial voters and each `AuthorizeJoin`; `AuthorizeLeave` withdraws its
    /// node's. Followers check membership entries against it ([`check_membership_change`]).
    #[serde(default)]
    pub membership_grants: BTreeMap<NodeId, String>,
    /// Nodes an operator authorized to leave (`AuthorizeLeave`; withdrawn by a later
    /// `AuthorizeJoin` of the node).
    #[serde(default)]
    pub leave_grants: BTreeSet<NodeId>,
    /// Per canary key, the highest sequence each node wrote it with (replays are refused).
    #[serde(default)]
    pub canary_writers: Table<String, BTreeMap<NodeId, u64>>,
    /// Each node's latest checkpoint signature not yet part of a certificate.
    #[serde(default)]
    pub checkpoint_votes: BTreeMap<NodeId, CheckpointVote>,
    /// The latest checkpoint a majority of the voters signed (snapshots are built only there).
    #[serde(default)]
    pub checkpoint: Option<CheckpointCertificate>,
    /// The initial voters named at init: the voters vouching for the state until the first
    /// checkpoint is certified.
    #[serde(default)]
    pub genesis_voters: BTreeSet<NodeId>,
}

impl GatekeeperState {
    /// A copy without the keyed tables that grow with the chain and with writes (workers,
    /// clusters, contracts, sessions, canary values and their writers), at a cost independent
    /// of their size: for planners that never read them (the keeper cloned the whole state every
    /// 200 ms on every node, a share of the write path's profile that grew with the registry).
    pub fn without_registries(&self) -> GatekeeperState {
        let GatekeeperState {
            gatekeeper_id,
            genesis_threshold,
            genesis_dealer,
            members,
            epochs,
            min_epoch,
            workers: _,
            clusters: _,
            contracts: _,
            chain,
            sessions: _,
            pending_rotations,
            rotation,
            rotation_ids,
            kv: _,
            audit_sequence,
            production,
            sequences,
            operators,
            operator_sequences,
            authorized_joins,
            membership_grants,
            leave_grants,
            canary_writers: _,
            checkpoint_votes,
            checkpoint,
            genesis_voters,
        } = self;
        GatekeeperState {
            gatekeeper_id: *gatekeeper_id,
            genesis_threshold: *genesis_threshold,
            genesis_dealer: *genesis_dealer,
            members: members.clone(),
            epochs: epochs.clone(),
            min_epoch: *min_epoch,
            workers: Table::default(),
            clusters: Table::default(),
            contracts: Table::default(),
            chain: chain.clone(),
            sessions: Table::default(),
            pending_rotations: pending_rotations.clone(),
            rotation: rotation.clone(),
            rotation_ids: rotation_ids.clone(),
            kv: Table::default(),
            audit_sequence: *audit_sequence,
            production: *production,
            sequences: sequences.clone(),
            operators: operators.clone(),
            operator_sequences: operator_sequences.clone(),
            authorized_joins: authorized_joins.clone(),
            membership_grants: membership_grants.clone(),
            leave_grants: leave_grants.clone(),
            canary_writers: Table::default(),
            checkpoint_votes: checkpoint_votes.clone(),
            checkpoint: checkpoint.clone(),
            genesis_voters: genesis_voters.clone(),
        }
    }

    /// The highest active epoch.
    pub fn current_epoch(&self) -> Option<u64> {
        self.epochs
            .values()
            .rev()
            .find(|e| e.status == EpochStatus::Active)
            .map(|e| e.epoch)
    }
}

#[cfg(test)]
mod tests;
