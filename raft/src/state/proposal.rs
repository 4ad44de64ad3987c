//! Proposals: a command together with the proof of who proposed it, and the pure rule that
//! decides, on every node when it applies the entry (and on the leader before the entry is
//! appended), whether that proposer may issue that command (docs/design.md §7.4).
//!
//! A log entry is `{"v":2,"cmd":"<command JSON>","proof":{…}}`. The command travels as a JSON
//! *string*, so the bytes the proposer signed are exactly the bytes every node verifies — no
//! re-serialization, which would make nodes of different versions disagree.
//!
//! The proof names the proposing node, a *lane* (which of its components proposed: keeper,
//! chain watcher, admin service, canary writes), a sequence number and an sr25519 signature by
//! the node's enclave identity key (context `gatekeeper/v1/command`) over [`signing_bytes`]. The
//! state records the highest sequence applied per node and lane; a proposal at or below it is a
//! replay and is refused (canary writes, which are harmless to repeat and written by hundreds of
//! concurrent clients, are not ordered).
//!
//! [`authorize`] is a pure function of the state, the [`ApplyContext`] (the Raft membership in
//! force and the leader that appended the entry) and the proposal. What each command needs is
//! in the table of design.md §7.4; [`authorize`]'s code follows it line by line.

use super::commands::{reject, Command, RejectCode, Reply};
use super::records::{Bytes32, HexBytes};
use super::GatekeeperState;
use crate::NodeId;
use keyring::sign::SigningPurpose;
use keyring::{Signature, Sr25519PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The encoding version of signed entries.
pub const PROPOSAL_VERSION: u32 = 2;

/// Which component of a node proposed a command. Each lane has its own sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Lane {
    /// The master-key keeper (registration, dealing, acks, rotations it drives).
    Keeper,
    /// The chain watcher (`ChainBlocks`).
    Chain,
    /// The admin service on behalf of an authenticated operator.
    Admin,
    /// Canary writes (not ordered: repeating one is harmless).
    Canary,
}

impl Lane {
    /// The lane's name, as signed and as recorded in the state.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Keeper => "keeper",
            Lane::Chain => "chain",
            Lane::Admin => "admin",
            Lane::Canary => "canary",
        }
    }

    /// Whether proposals of this lane must carry increasing sequence numbers.
    pub fn ordered(self) -> bool {
        !matches!(self, Lane::Canary)
    }
}

/// Who proposed a command, and the signature that proves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The proposing node.
    pub node: NodeId,
    /// Its component.
    pub lane: Lane,
    /// Sequence number, increasing per (node, lane) for ordered lanes.
    pub seq: u64,
    /// sr25519 signature by the node's enclave identity key over [`signing_bytes`].
    pub signature: HexBytes,
}

/// The Raft context an entry is applied in: the membership in force at the entry and the leader
/// that appended it (from the entry's log id: only that leader can have appended it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyContext {
    /// The leader that appended the entry.
    pub leader: NodeId,
    /// Voters of the membership in force.
    pub voters: BTreeSet<NodeId>,
    /// Learners of the membership in force.
    pub learners: BTreeSet<NodeId>,
}

impl ApplyContext {
    fn in_membership(&self, n: NodeId) -> bool {
        self.voters.contains(&n) || self.learners.contains(&n)
    }
}

/// An operator's signature over a command, carried next to the proposing node's proof. Operator
/// commands (`StartRotation`, `AbortRotation`, `SetMinEpoch`, `DevEvent`) need one once the
/// cluster has registered operators (at init).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorProof {
    /// The operator's registered name.
    pub name: String,
    /// Sequence number, increasing per operator (the CLI uses the clock in µs).
    pub seq: u64,
    /// ECDSA P-256 SHA-256 signature (ASN.1 DER) over [`operator_signing_bytes`] by the
    /// operator's key (the key of its TLS client certificate).
    pub signature: HexBytes,
}

/// An operator registered in the state: its name and ECDSA P-256 public key (uncompressed SEC1
/// point, 65 bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorKey {
    /// Name (its certificate's common name).
    pub name: String,
    /// Public key.
    pub public_key: HexBytes,
}

/// The exact bytes an operator signs: a domain tag, the cluster id, the operator's name, the
/// sequence, then the command JSON (length-prefixed).
pub fn operator_signing_bytes(
    gatekeeper_id: Option<&Bytes32>,
    name: &str,
    seq: u64,
    command_json: &[u8],
) -> Vec<u8> {
    let name = name.as_bytes();
    let mut m = Vec::with_capacity(80 + name.len() + command_json.len());
    m.extend_from_slice(b"gatekeeper/operator-command/v1\0");
    m.extend_from_slice(&gatekeeper_id.map_or([0u8; 32], |g| g.0));
    m.extend_from_slice(&(name.len() as u64).to_be_bytes());
    m.extend_from_slice(name);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&(command_json.len() as u64).to_be_bytes());
    m.extend_from_slice(command_json);
    m
}

/// Checks an operator's name and key format (an uncompressed P-256 point: 65 bytes, `04` first;
/// a point off the curve is not detected here, and never verifies a signature).
pub fn check_operator_key(o: &OperatorKey) -> Result<(), Reply> {
    let ok = !o.name.is_empty()
        && o.name.len() <= 256
        && o.public_key.0.len() == 65
        && o.public_key.0[0] == 4;
    if ok {
        Ok(())
    } else {
        Err(reject(
            RejectCode::InvalidState,
            format!(
                "operator {:?}: a name (1 to 256 bytes) and an uncompressed P-256 public key are \
                 needed",
                o.name
            ),
        ))
    }
}

/// Whether `signature` (ASN.1 DER) is `public_key`'s (uncompressed P-256 point) over `message`.
pub fn verify_operator_signature(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Signs proposals for one node (its enclave identity key).
pub trait CommandSigner: Send + Sync {
    /// The node the signatures are made for.
    fn node_id(&self) -> NodeId;
    /// Signs `message` with the node's identity key, context `gatekeeper/v1/command`.
    fn sign(&self, message: &[u8]) -> [u8; 64];
}

/// The exact bytes a proof signs: a domain tag, the cluster id (all zero before init), the node,
/// the lane, the sequence, then the command JSON (length-prefixed).
pub fn signing_bytes(
    gatekeeper_id: Option<&Bytes32>,
    node: NodeId,
    lane: Lane,
    seq: u64,
    command_json: &[u8],
) -> Vec<u8> {
    let lane = lane.name().as_bytes();
    let mut m = Vec::with_capacity(80 + command_json.len());
    m.extend_from_slice(b"gatekeeper/command/v2\0");
    m.extend_from_slice(&gatekeeper_id.map_or([0u8; 32], |g| g.0));
    m.extend_from_slice(&node.to_be_bytes());
    m.push(lane.len() as u8);
    m.extend_from_slice(lane);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&(command_json.len() as u64).to_be_bytes());
    m.extend_from_slice(command_json);
    m
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    cmd: String,
    proof: Proof,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operator: Option<OperatorProof>,
}

/// Encodes a signed proposal for the Raft log.
pub fn encode_proposal(
    command_json: &str,
    proof: &Proof,
    operator: Option<&OperatorProof>,
) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        v: PROPOSAL_VERSION,
        cmd: command_json.to_string(),
        proof: proof.clone(),
        operator: operator.cloned(),
    })
    .expect("proposals always serialize")
}

/// Signs `command` as `signer`'s `lane` with sequence `seq`, for a cluster in `state`.
pub fn sign_proposal(
    signer: &dyn CommandSigner,
    state: &GatekeeperState,
    lane: Lane,
    seq: u64,
    command: &Command,
) -> Vec<u8> {
    let json = serde_json::to_string(command).expect("commands always serialize");
    sign_proposal_json(signer, state, lane, seq, &json, None)
}

/// Signs the command `json` (exactly these bytes: an operator may have signed them too) as
/// `signer`'s `lane` with sequence `seq`, carrying `operator`'s proof.
pub fn sign_proposal_json(
    signer: &dyn CommandSigner,
    state: &GatekeeperState,
    lane: Lane,
    seq: u64,
    json: &str,
    operator: Option<&OperatorProof>,
) -> Vec<u8> {
    let node = signer.node_id();
    let sig = signer.sign(&signing_bytes(
        state.gatekeeper_id.as_ref(),
        node,
        lane,
        seq,
        json.as_bytes(),
    ));
    encode_proposal(
        json,
        &Proof {
            node,
            lane,
            seq,
            signature: HexBytes(sig.to_vec()),
        },
        operator,
    )
}

/// A decoded log entry: the command, the exact JSON it was signed as, and its proof (`None`
/// for a version-1 entry, which has none and is refused at apply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The command.
    pub command: Command,
    /// The command's JSON as signed.
    pub command_json: String,
    /// Who proposed it.
    pub proof: Option<Proof>,
    /// The operator who signed it, for operator commands.
    pub operator: Option<OperatorProof>,
}

/// Decodes a log entry of either version. Malformed bytes are an error.
pub fn decode_entry(bytes: &[u8]) -> Result<Decoded, String> {
    if bytes.len() > MAX_CHAIN_PROPOSAL_BYTES.max(MAX_PROPOSAL_BYTES) {
        return Err(format!(
            "a proposal of {} bytes exceeds every proposal size limit",
            bytes.len()
        ));
    }
    let d = decode_entry_unbounded(bytes)?;
    let limit = max_proposal_bytes(&d.command);
    if bytes.len() > limit {
        return Err(format!(
            "a {} proposal of {} bytes exceeds the limit of {limit} bytes",
            command_name(&d.command),
            bytes.len()
        ));
    }
    Ok(d)
}

/// Largest proposal carrying a `ChainBlocks` or `ChainBootstrap` command (the watcher proposes
/// at most 768 KiB of ranges and 512 KiB of bootstrap events at a time, under it).
pub const MAX_CHAIN_PROPOSAL_BYTES: usize = 1 << 20;
/// Largest proposal carrying any other command (a member record with DCAP evidence is about
/// 10 KiB; a dealing for ten members a few KiB).
pub const MAX_PROPOSAL_BYTES: usize = 256 << 10;

/// The size limit of a proposal carrying `command`: padding (unknown fields, whitespace) can
/// no longer make a member's signed proposal megabytes long (attack round 11: 32 MB/s of log
/// on every node, and batches too large to replicate).
pub fn max_proposal_bytes(command: &Command) -> usize {
    match command {
        Command::ChainBlocks { .. } | Command::ChainBootstrap(_) => MAX_CHAIN_PROPOSAL_BYTES,
        _ => MAX_PROPOSAL_BYTES,
    }
}

fn decode_entry_unbounded(bytes: &[u8]) -> Result<Decoded, String> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let v: Version = serde_json::from_slice(bytes).map_err(|e| format!("not a command: {e}"))?;
    if v.v != PROPOSAL_VERSION {
        let command = super::commands::decode_command(bytes)?;
        let command_json = serde_json::to_string(&command).expect("commands always serialize");
        return Ok(Decoded {
            command,
            command_json,
            proof: None,
            operator: None,
        });
    }
    let e: Envelope = serde_json::from_slice(bytes).map_err(|e| format!("bad v2 proposal: {e}"))?;
    let command: Command =
        serde_json::from_str(&e.cmd).map_err(|e| format!("bad v2 command: {e}"))?;
    Ok(Decoded {
        command,
        command_json: e.cmd,
        proof: Some(e.proof),
        operator: e.operator,
    })
}

fn unauthorized(message: impl Into<String>) -> Reply {
    reject(RejectCode::Unauthorized, message)
}

/// How far an operator's signing time (its sequence, in µs) may be from the clock of the node
/// that checks it: the node the call reaches, and the leader before it appends the proposal.
pub const MAX_OPERATOR_SKEW_MS: u64 = 5 * 60 * 1000;

/// Whether an operator's signature is recent at `now_ms` (its sequence is the signing time in
/// µs): the leader refuses a proposal carrying a stale one, so a node that held back an
/// operator's call cannot have it applied later, and one signed ahead of time cannot lock the
/// operator out until then (attack round 12). Not checked at apply, which knows no clock: a
/// compromised leader is the limit (design.md §11).
pub fn check_operator_fresh(op: &OperatorProof, now_ms: u64) -> Result<(), Reply> {
    let signed_ms = op.seq / 1000;
    if signed_ms.abs_diff(now_ms) > MAX_OPERATOR_SKEW_MS {
        let (dir, by) = if signed_ms < now_ms {
            ("ago", now_ms - signed_ms)
        } else {
            ("ahead of the leader's clock", signed_ms - now_ms)
        };
        return Err(reject(
            RejectCode::Unauthorized,
            format!(
                "operator {:?} signed this command {} s {dir}, outside the {} s the leader \
                 accepts: sign it again",
                op.name,
                by / 1000,
                MAX_OPERATOR_SKEW_MS / 1000
            ),
        ));
    }
    Ok(())
}

/// Decides whether the proposal may be applied: a pure function of the state, the context and
/// the proposal (design.md §7.4). `Ok` changes nothing; the caller then records the sequence
/// ([`GatekeeperState::record_sequence`]) and applies the command.
pub fn authorize(state: &GatekeeperState, ctx: &ApplyContext, d: &Decoded) -> Result<(), Reply> {
    let Some(p) = &d.proof else {
        return Err(unauthorized(
            "the command carries no proof of origin (a version-1 entry)",
        ));
    };
    let c = &d.command;
    // Who must have signed it: the key that verifies the signature.
    let key: Option<Bytes32> = match c {
        // Before init no member is registered: the node the operator initialised proposes it.
        Command::InitCluster { .. } => None,
        // A node registers itself, signing with the identity key it registers.
        Command::UpsertMember(m) => Some(m.identity_public_key),
        _ => match state.members.get(&p.node) {
            Some(m) => Some(m.identity_public_key),
            None => {
                return Err(unauthorized(format!(
                    "node {} has no member record: it cannot propose {}",
                    p.node,
                    command_name(c)
                )))
            }
        },
    };
    // The signature first: a proposal that does not verify learns nothing about the state
    // (which rule, which sequence) from its refusal.
    if let Some(key) = key {
        let bad = || unauthorized(format!("bad signature for node {}", p.node));
        let pk = Sr25519PublicKey::from_slice(&key.0).map_err(|_| bad())?;
        let sig: [u8; 64] = p.signature.0.as_slice().try_into().map_err(|_| bad())?;
        let msg = signing_bytes(
            state.gatekeeper_id.as_ref(),
            p.node,
            p.lane,
            p.seq,
            d.command_json.as_bytes(),
        );
        keyring::sign::verify(&pk, SigningPurpose::Command, &msg, &Signature(sig))
            .map_err(|_| bad())?;
    }
    let voter = |what: &str| -> Result<(), Reply> {
        if ctx.voters.contains(&p.node) {
            Ok(())
        } else {
            Err(unauthorized(format!(
                "{what} may be proposed only by a voter; node {} is not one",
                p.node
            )))
        }
    };
    let leader = |what: &str| -> Result<(), Reply> {
        if p.node == ctx.leader {
            Ok(())
        } else {
            Err(unauthorized(format!(
                "{what} may be proposed only by the leader that appends it (node {}), not by \
                 node {}",
                ctx.leader, p.node
            )))
        }
    };
    match c {
        Command::InitCluster { .. } => {
            if state.gatekeeper_id.is_some() {
                return Err(reject(
                    RejectCode::AlreadyInitialized,
                    "cluster already initialised",
                ));
            }
            voter("InitCluster")?;
            // Proposed by the node the operator initialised, once it leads: never forwarded
            // (the leader refuses a forwarded one), so a member's certificate cannot win the
            // race to initialise a new cluster.
            leader("InitCluster")?
        }
        Command::UpsertMember(m) => {
            if m.node_id != p.node {
                return Err(unauthorized(format!(
                    "node {} cannot register node {}'s record",
                    p.node, m.node_id
                )));
            }
            if !ctx.in_membership(p.node) {
                return Err(unauthorized(format!(
                    "node {} is not in the Raft membership",
                    p.node
                )));
            }
            let old = state.members.get(&m.node_id);
            if let Some(old) = old {
                if old.identity_public_key != m.identity_public_key && ctx.voters.contains(&p.node)
                {
                    return Err(unauthorized(format!(
                        "voter {}'s identity key cannot change; `leave` it and `join` it again",
                        p.node
                    )));
                }
            }
            // A new identity (first registration, or a learner re-joining after a wipe) needs
            // an operator's authorization for this node at this address: the initial voters
            // at init, later ones by `admin join`.
            let new_identity = old.is_none_or(|o| o.identity_public_key != m.identity_public_key);
            if new_identity && state.authorized_joins.get(&m.node_id) != Some(&m.raft_address) {
                return Err(unauthorized(format!(
                    "node {} may register a new identity only after an operator's join for it \
                     at {} (authorized: {:?})",
                    m.node_id,
                    m.raft_address,
                    state.authorized_joins.get(&m.node_id)
                )));
            }
        }
        Command::AckShare { node_id, .. } => {
            if *node_id != p.node {
                return Err(unauthorized(format!(
                    "node {} cannot acknowledge node {node_id}'s share",
                    p.node
                )));
            }
        }
        Command::InstallEpoch(e) => {
            voter("InstallEpoch")?;
            if e.epoch == 0 {
                match state.genesis_dealer {
                    Some(d) if d != p.node => {
                        return Err(unauthorized(format!(
                            "the genesis dealer is node {d}, not node {}",
                            p.node
                        )))
                    }
                    Some(_) => {}
                    None => leader("the genesis dealing")?,
                }
            } else {
                leader("a rotation's dealing")?;
            }
        }
        Command::Redeal { .. } => {
            voter("Redeal")?;
            leader("Redeal")?;
        }
        Command::RemoveMember { node_id } => {
            leader("RemoveMember")?;
            if ctx.in_membership(*node_id) {
                return Err(reject(
                    RejectCode::InvalidState,
                    format!("node {node_id} is still in the Raft membership: `leave` it first"),
                ));
            }
        }
        Command::ChainBlocks { .. } => leader("ChainBlocks")?,
        Command::ChainBootstrap(_) => leader("ChainBootstrap")?,
        Command::DevEvent { .. } => {
            voter("DevEvent")?;
            if state.production {
                return Err(unauthorized(
                    "development events are refused in a production cluster",
                ));
            }
        }
        Command::StartRotation { .. }
        | Command::AbortRotation { .. }
        | Command::SetMinEpoch { .. }
        | Command::AuthorizeJoin { .. }
        | Command::AuthorizeLeave { .. }
        | Command::AddOperator(_)
        | Command::RemoveOperator { .. }
        | Command::Put { .. } => voter(command_name(c))?,
        // A voter signs its own state (the signature inside names no other node).
        Command::SignCheckpoint(_) => voter("SignCheckpoint")?,
    }
    // Operator commands need an operator's signature once operators are registered (a cluster
    // initialised without TLS has none: any registered voter proposes them). The leader's own
    // keeper may start the rotation the chain queued first and abort the rotation in progress.
    // A canary write is one in a production cluster; in development the node that took the call
    // may vouch for the operator it authenticated (the shared write benchmark sends plain
    // `WriteCanary` calls), or the operator signs.
    let canary = matches!(c, Command::Put { .. });
    let operator_command = matches!(
        c,
        Command::StartRotation { .. }
            | Command::AbortRotation { .. }
            | Command::SetMinEpoch { .. }
            | Command::DevEvent { .. }
            | Command::AuthorizeJoin { .. }
            | Command::AuthorizeLeave { .. }
            | Command::AddOperator(_)
            | Command::RemoveOperator { .. }
    ) || (canary && state.production);
    if canary && !operator_command && !state.operators.is_empty() {
        if let Some(op) = &d.operator {
            check_operator(state, op, &d.command_json)?;
        }
    } else if operator_command && !state.operators.is_empty() {
        match &d.operator {
            Some(op) => check_operator(state, op, &d.command_json)?,
            None => {
                let keeper_may = p.lane == Lane::Keeper
                    && p.node == ctx.leader
                    && match c {
                        Command::StartRotation { rotation_id, .. } => {
                            state.pending_rotations.first() == Some(rotation_id)
                        }
                        Command::AbortRotation { rotation_id, .. } => {
                            state.rotation.as_ref().is_some_and(|r| {
                                r.rotation_id == *rotation_id
                                    && r.outcome == super::records::RotationOutcome::InProgress
                            })
                        }
                        _ => false,
                    };
                if !keeper_may {
                    return Err(unauthorized(format!(
                        "{} needs an operator's signature (`gatekeeper admin` signs with the \
                         operator's key)",
                        command_name(c)
                    )));
                }
            }
        }
    } else if d.operator.is_some() {
        return Err(unauthorized(format!(
            "{} is not an operator command",
            command_name(c)
        )));
    }
    // Canary writes a node vouches for are not ordered per lane (concurrent writers), but per
    // key: a write at or below the last sequence this node wrote that key with is a replay (it
    // would roll the value back). An operator's signed write is ordered by its sequence.
    if let (Command::Put { key, .. }, None) = (c, &d.operator) {
        let last = state
            .canary_writers
            .get(key)
            .and_then(|w| w.get(&p.node))
            .copied()
            .unwrap_or(0);
        if p.seq <= last {
            return Err(reject(
                RejectCode::Replayed,
                format!(
                    "canary key {key:?} was written by node {} with sequence {last}; {} is a \
                     replay",
                    p.node, p.seq
                ),
            ));
        }
    }
    // The sequence: a replayed proposal is refused.
    if p.lane.ordered() {
        let last = state.last_sequence(p.node, p.lane);
        if p.seq <= last {
            return Err(reject(
                RejectCode::Replayed,
                format!(
                    "sequence {} of node {}'s {} lane is not above {last}: a replay or a \
                     reordered proposal",
                    p.seq,
                    p.node,
                    p.lane.name()
                ),
            ));
        }
    }
    Ok(())
}

/// Checks an operator's proof: a registered operator, a sequence above its last, a valid
/// signature over the command's exact bytes.
fn check_operator(state: &GatekeeperState, op: &OperatorProof, json: &str) -> Result<(), Reply> {
    let Some(key) = state.operators.get(&op.name) else {
        return Err(unauthorized(format!(
            "{:?} is not a registered operator",
            op.name
        )));
    };
    // The signature before the sequence: a forged proof learns nothing from its refusal.
    let msg = operator_signing_bytes(
        state.gatekeeper_id.as_ref(),
        &op.name,
        op.seq,
        json.as_bytes(),
    );
    if !verify_operator_signature(&key.0, &msg, &op.signature.0) {
        return Err(unauthorized(format!(
            "bad signature for operator {:?}",
            op.name
        )));
    }
    let last = state.operator_sequences.get(&op.name).copied().unwrap_or(0);
    if op.seq <= last {
        return Err(reject(
            RejectCode::Replayed,
            format!(
                "operator {:?}'s sequence {} is not above {last}: a replay",
                op.name, op.seq
            ),
        ));
    }
    Ok(())
}

/// The command's name, for messages.
pub fn command_name(c: &Command) -> &'static str {
    match c {
        Command::InitCluster { .. } => "InitCluster",
        Command::DevEvent { .. } => "DevEvent",
        Command::UpsertMember(_) => "UpsertMember",
        Command::SignCheckpoint(_) => "SignCheckpoint",
        Command::RemoveMember { .. } => "RemoveMember",
        Command::InstallEpoch(_) => "InstallEpoch",
        Command::AckShare { .. } => "AckShare",
        Command::Redeal { .. } => "Redeal",
        Command::SetMinEpoch { .. } => "SetMinEpoch",
        Command::StartRotation { .. } => "StartRotation",
        Command::AbortRotation { .. } => "AbortRotation",
        Command::ChainBlocks { .. } => "ChainBlocks",
        Command::ChainBootstrap(_) => "ChainBootstrap",
        Command::Put { .. } => "Put",
        Command::AuthorizeJoin { .. } => "AuthorizeJoin",
        Command::AuthorizeLeave { .. } => "AuthorizeLeave",
        Command::AddOperator(_) => "AddOperator",
        Command::RemoveOperator { .. } => "RemoveOperator",
    }
}

impl GatekeeperState {
    /// The highest sequence applied for `node`'s `lane` (0: none).
    pub fn last_sequence(&self, node: NodeId, lane: Lane) -> u64 {
        self.sequences
            .get(&node)
            .and_then(|l| l.get(lane.name()))
            .copied()
            .unwrap_or(0)
    }

    /// Records an authorized proposal's sequence (ordered lanes only).
    pub fn record_sequence(&mut self, p: &Proof) {
        if p.lane.ordered() {
            let e = self
                .sequences
                .entry(p.node)
                .or_default()
                .entry(p.lane.name().to_string())
                .or_insert(0);
            *e = (*e).max(p.seq);
        }
    }

    /// Applies a log entry in `ctx`: decodes it, authorizes it ([`authorize`]), records its
    /// sequence and applies the command. An entry refused by `authorize` changes nothing; an
    /// authorized one whose command the state then rejects still uses up its proposer's (and
    /// operator's) sequence, so it cannot be replayed once the state would accept it.
    pub fn apply_entry(&mut self, bytes: &[u8], ctx: &ApplyContext) -> Reply {
        let d = match decode_entry(bytes) {
            Ok(d) => d,
            Err(e) => return reject(RejectCode::MalformedCommand, e),
        };
        if let Err(r) = authorize(self, ctx, &d) {
            return r;
        }
        // (InitCluster's proposer has no registered key yet: its sequence proves nothing.)
        if let (Some(p), false) = (&d.proof, matches!(d.command, Command::InitCluster { .. })) {
            self.record_sequence(p);
        }
        if let Some(op) = &d.operator {
            self.operator_sequences.insert(op.name.clone(), op.seq);
        }

        let reply = match (&d.command, &d.proof) {
            (Command::SignCheckpoint(v), Some(p)) => {
                let outcome = self.apply_checkpoint_vote(p.node, &ctx.voters, v.clone());
                self.conclude(outcome)
            }
            (Command::Redeal { epoch, dealing }, _) => {
                match self.redeal_called_for(*epoch, dealing, &ctx.voters) {
                    Ok(()) => self.apply(&d.command),
                    Err(r) => r,
                }
            }
            _ => self.apply(&d.command),
        };
        // A canary write that applied: its sequence for that key (a refused one changes
        // nothing, and replaying it is refused again for its content).
        if let (Some(p), Command::Put { key, .. }, Reply::Applied { .. }, None) =
            (&d.proof, &d.command, &reply, &d.operator)
        {
            let last = self
                .canary_writers
                .entry(key.clone())
                .or_default()
                .entry(p.node)
                .or_insert(0);
            *last = (*last).max(p.seq);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_or_early_operator_signature_is_refused_by_the_leader() {
        let now_ms = 1_800_000_000_000;
        let op = |signed_ms: u64| OperatorProof {
            name: "alice".into(),
            seq: signed_ms * 1000 + 3,
            signature: HexBytes(vec![]),
        };
        assert!(check_operator_fresh(&op(now_ms), now_ms).is_ok());
        assert!(check_operator_fresh(&op(now_ms - MAX_OPERATOR_SKEW_MS), now_ms).is_ok());
        assert!(check_operator_fresh(&op(now_ms + MAX_OPERATOR_SKEW_MS), now_ms).is_ok());
        for (signed, words) in [
            (now_ms - MAX_OPERATOR_SKEW_MS - 1000, "ago"),
            (now_ms + 3_600_000, "ahead"),
        ] {
            match check_operator_fresh(&op(signed), now_ms) {
                Err(Reply::Rejected { code, message }) => {
                    assert_eq!(code, RejectCode::Unauthorized);
                    assert!(message.contains(words) && message.contains("sign it again"));
                }
                other => panic!("{other:?}"),
            }
        }
    }
    use crate::state::{
        ChainBlock, ChainEvent, DealingRecord, EpochRecord, EpochStatus, MemberRecord, SealedShare,
    };
    use keyring::Sr25519Keypair;

    struct Key(NodeId, Sr25519Keypair);

    impl CommandSigner for Key {
        fn node_id(&self) -> NodeId {
            self.0
        }
        fn sign(&self, message: &[u8]) -> [u8; 64] {
            keyring::sign::sign(&self.1, SigningPurpose::Command, message).0
        }
    }

    fn key(n: NodeId) -> Key {
        Key(n, Sr25519Keypair::from_seed(&[n as u8; 32]))
    }

    fn record(n: NodeId, k: &Key) -> MemberRecord {
        MemberRecord::for_tests(n, Bytes32(*k.1.public_key().as_bytes()))
    }

    fn ctx(leader: NodeId) -> ApplyContext {
        ApplyContext {
            leader,
            voters: [1, 2, 3].into(),
            learners: [4].into(),
        }
    }

    /// An initialised cluster with members 1–3 registered.
    fn cluster() -> GatekeeperState {
        let mut s = GatekeeperState::default();
        assert!(matches!(
            s.apply_entry(
                &sign_proposal(
                    &key(1),
                    &s.clone(),
                    Lane::Admin,
                    1,
                    &Command::InitCluster {
                        gatekeeper_id: Bytes32([7; 32]),
                        threshold: None,
                        genesis_dealer: None,
                        production: false,
                        operators: vec![],
                        members: (1..=4)
                            .map(|n| (n, format!("127.0.0.1:{}", 7000 + n)))
                            .collect(),
                    },
                ),
                &ctx(1),
            ),
            Reply::Applied { .. }
        ));
        for n in 1..=3 {
            let k = key(n);
            let c = Command::UpsertMember(record(n, &k));
            let r = s.apply_entry(&sign_proposal(&k, &s.clone(), Lane::Keeper, 1, &c), &ctx(1));
            assert!(matches!(r, Reply::Applied { .. }), "{r:?}");
        }
        s
    }

    fn apply(
        s: &mut GatekeeperState,
        by: &Key,
        lane: Lane,
        seq: u64,
        leader: NodeId,
        c: &Command,
    ) -> Reply {
        let bytes = sign_proposal(by, &s.clone(), lane, seq, c);
        s.apply_entry(&bytes, &ctx(leader))
    }

    /// Attack round 11: a member padded its own AckShare with megabytes of unknown fields and
    /// whitespace; each was appended and replicated before apply refused it.
    #[test]
    fn padded_proposals_over_the_size_limit_are_malformed_at_the_gate_and_at_apply() {
        let mut s = cluster();
        let ack = Command::AckShare {
            epoch: 0,
            generation: 999_999,
            node_id: 3,
        };
        let bytes = sign_proposal(&key(3), &s.clone(), Lane::Keeper, 5, &ack);
        // The envelope with an unknown field, then trailing whitespace: the signature still
        // verifies (it covers the command, not the envelope's padding).
        let mut padded = bytes[..bytes.len() - 1].to_vec();
        padded.extend_from_slice(b",\"pad\":\"");
        padded.extend(std::iter::repeat_n(b'a', MAX_PROPOSAL_BYTES));
        padded.extend_from_slice(b"\"}");
        let mut spaced = bytes.clone();
        spaced.extend(std::iter::repeat_n(b' ', MAX_PROPOSAL_BYTES));
        for p in [padded, spaced] {
            let e = decode_entry(&p).unwrap_err();
            assert!(e.contains("exceeds the limit of 262144 bytes"), "{e}");
            assert!(e.contains("AckShare"), "{e}");
            let before = s.clone();
            let r = s.apply_entry(&p, &ctx(1));
            assert!(
                matches!(&r, Reply::Rejected { code, .. } if *code == RejectCode::MalformedCommand),
                "{r:?}"
            );
            assert_eq!(s, before);
        }
        // Far beyond every limit: refused before it is parsed.
        let huge = vec![b' '; MAX_CHAIN_PROPOSAL_BYTES + 1];
        assert!(decode_entry(&huge)
            .unwrap_err()
            .contains("every proposal size limit"));
        // The unpadded proposal is decoded.
        assert!(decode_entry(&bytes).is_ok());
    }

    #[test]
    fn a_redealing_applies_only_when_the_state_calls_for_one() {
        let mut s = cluster();
        let share = |n: NodeId, hpke: Bytes32| SealedShare {
            node_id: n,
            index: n as u8,
            encapped_key: Bytes32([0; 32]),
            ciphertext: HexBytes(vec![1]),
            recipient_hpke: hpke,
        };
        let hpke = |s: &GatekeeperState, n: NodeId| s.members[&n].hpke_public_key;
        let dealing = |s: &GatekeeperState, generation, holders: &[NodeId]| DealingRecord {
            generation,
            commitments: vec![Bytes32([1; 32]); 2],
            wrapped_nonce: HexBytes(vec![]),
            wrapped_ciphertext: HexBytes(vec![]),
            shares: holders.iter().map(|&n| share(n, hpke(s, n))).collect(),
            acked: Default::default(),
        };
        // Epoch 0 held by exactly the voters 1-3 with their current keys.
        let mut e = EpochRecord {
            epoch: 0,
            threshold: 2,
            master_public_key: Bytes32([5; 32]),
            cluster_signing_public_key: Bytes32([6; 32]),
            status: EpochStatus::Active,
            dealing: dealing(&s, 0, &[1, 2, 3]),
        };
        s.epochs.insert(0, e.clone());
        let redeal = |d| Command::Redeal {
            epoch: 0,
            dealing: d,
        };
        // The attack: the same shares again as a new generation. Not called for.
        let d = dealing(&s, 1, &[1, 2, 3]);
        let r = apply(&mut s, &key(1), Lane::Keeper, 10, 1, &redeal(d));
        assert_eq!(code(&r), Some(RejectCode::InvalidState), "{r:?}");
        assert_eq!(s.epochs[&0].dealing.generation, 0);
        // Held by 1 and 2 only (3 joined since): called for, but only to every voter.
        e.dealing = dealing(&s, 0, &[1, 2]);
        s.epochs.insert(0, e.clone());
        let d = dealing(&s, 1, &[1, 2]);
        let r = apply(&mut s, &key(1), Lane::Keeper, 11, 1, &redeal(d));
        assert_eq!(code(&r), Some(RejectCode::InvalidDealing), "{r:?}");
        let mut stale = dealing(&s, 1, &[1, 2, 3]);
        stale.shares[2].recipient_hpke = Bytes32([3; 32]);
        let d = dealing(&s, 1, &[1, 2, 3]);
        let r = apply(&mut s, &key(1), Lane::Keeper, 12, 1, &redeal(stale));
        assert_eq!(code(&r), Some(RejectCode::InvalidDealing), "{r:?}");
        let r = apply(&mut s, &key(1), Lane::Keeper, 13, 1, &redeal(d));
        assert!(matches!(r, Reply::Applied { .. }), "{r:?}");
        assert_eq!(s.epochs[&0].dealing.generation, 1);
        // A holder whose key changed (wiped and re-joined) calls for one too.
        s.epochs.get_mut(&0).unwrap().dealing.shares[1].recipient_hpke = Bytes32([8; 32]);
        let d = dealing(&s, 2, &[1, 2, 3]);
        let r = apply(&mut s, &key(1), Lane::Keeper, 14, 1, &redeal(d));
        assert!(matches!(r, Reply::Applied { .. }), "{r:?}");
    }

    fn code(r: &Reply) -> Option<RejectCode> {
        match r {
            Reply::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Applies `c` and expects it refused with `want`, the state unchanged.
    fn refused(
        s: &mut GatekeeperState,
        by: &Key,
        lane: Lane,
        seq: u64,
        leader: NodeId,
        c: &Command,
        want: RejectCode,
    ) {
        let before = s.clone();
        let r = apply(s, by, lane, seq, leader, c);
        assert_eq!(code(&r), Some(want), "{c:?} by node {}: {r:?}", by.0);
        assert_eq!(*s, before, "a refused proposal changed the state");
    }

    fn put(k: &str) -> Command {
        Command::Put {
            key: k.into(),
            value: "v".into(),
        }
    }

    #[test]
    fn a_member_signs_as_itself_and_no_one_else() {
        let mut s = cluster();
        // Node 2's own ack: applied (no epoch: refused for content, but authorized).
        let ack = |n| Command::AckShare {
            epoch: 0,
            generation: 1,
            node_id: n,
        };
        let r = apply(&mut s, &key(2), Lane::Keeper, 10, 1, &ack(2));
        assert_ne!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        // Acknowledging node 3's share, signing as node 2: refused.
        refused(
            &mut s,
            &key(2),
            Lane::Keeper,
            11,
            1,
            &ack(3),
            RejectCode::Unauthorized,
        );
        // Node 2's key claiming to be node 3 (proof names 3, signature by 2's key): refused.
        let forged = Key(3, Sr25519Keypair::from_seed(&[2; 32]));
        refused(
            &mut s,
            &forged,
            Lane::Keeper,
            12,
            1,
            &ack(3),
            RejectCode::Unauthorized,
        );
        // Replacing node 3's record with another key, signed by that key: refused for a voter.
        let mallory = Key(3, Sr25519Keypair::from_seed(&[66; 32]));
        let c = Command::UpsertMember(record(3, &mallory));
        refused(
            &mut s,
            &mallory,
            Lane::Keeper,
            13,
            1,
            &c,
            RejectCode::Unauthorized,
        );
        // Registering node 3's record signed by node 2: refused.
        let c = Command::UpsertMember(record(3, &key(2)));
        refused(
            &mut s,
            &key(2),
            Lane::Keeper,
            14,
            1,
            &c,
            RejectCode::Unauthorized,
        );
        // A node outside the membership cannot register.
        let c = Command::UpsertMember(record(9, &key(9)));
        refused(
            &mut s,
            &key(9),
            Lane::Keeper,
            1,
            1,
            &c,
            RejectCode::Unauthorized,
        );
        // A joining learner registers (and may register again with a new key: a re-join).
        let c = Command::UpsertMember(record(4, &key(4)));
        assert!(matches!(
            apply(&mut s, &key(4), Lane::Keeper, 1, 1, &c),
            Reply::Applied { .. }
        ));
        let again = Key(4, Sr25519Keypair::from_seed(&[44; 32]));
        let c = Command::UpsertMember(record(4, &again));
        // ...only once an operator authorized it again (the first authorization was used).
        refused(
            &mut s,
            &again,
            Lane::Keeper,
            2,
            1,
            &c,
            RejectCode::Unauthorized,
        );
        s.authorized_joins.insert(4, "127.0.0.1:7004".into());
        assert!(matches!(
            apply(&mut s, &again, Lane::Keeper, 3, 1, &c),
            Reply::Applied { .. }
        ));
        assert!(
            !s.authorized_joins.contains_key(&4),
            "the authorization is used up"
        );
        // Re-registering the same identity (a new address or TLS key) needs none.
        let mut moved = record(4, &again);
        moved.api_address = "127.0.0.1:9999".into();
        assert!(matches!(
            apply(
                &mut s,
                &again,
                Lane::Keeper,
                4,
                1,
                &Command::UpsertMember(moved)
            ),
            Reply::Applied { .. }
        ));
        // An authorization for another address does not do.
        let third = Key(4, Sr25519Keypair::from_seed(&[45; 32]));
        s.authorized_joins.insert(4, "127.0.0.1:1".into());
        let c = Command::UpsertMember(record(4, &third));
        refused(
            &mut s,
            &third,
            Lane::Keeper,
            5,
            1,
            &c,
            RejectCode::Unauthorized,
        );
    }

    #[test]
    fn a_tampered_entry_or_an_unsigned_one_is_refused() {
        let mut s = cluster();
        let bytes = sign_proposal(&key(2), &s, Lane::Admin, 5, &put("a"));
        let tampered = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\\\"a\\\"", "\\\"b\\\"");
        assert_ne!(tampered.as_bytes(), &bytes[..]);
        let before = s.clone();
        assert_eq!(
            code(&s.apply_entry(tampered.as_bytes(), &ctx(1))),
            Some(RejectCode::Unauthorized)
        );
        // Signed for another cluster: refused.
        let mut other = s.clone();
        other.gatekeeper_id = Some(Bytes32([8; 32]));
        let foreign = sign_proposal(&key(2), &other, Lane::Admin, 6, &put("a"));
        assert_eq!(
            code(&s.apply_entry(&foreign, &ctx(1))),
            Some(RejectCode::Unauthorized)
        );
        // A version-1 entry carries no proof.
        let v1 = crate::state::encode_command(&put("a"));
        assert_eq!(
            code(&s.apply_entry(&v1, &ctx(1))),
            Some(RejectCode::Unauthorized)
        );
        // Garbage.
        assert_eq!(
            code(&s.apply_entry(b"{", &ctx(1))),
            Some(RejectCode::MalformedCommand)
        );
        assert_eq!(s, before);
        // The original applies.
        assert!(matches!(
            s.apply_entry(&bytes, &ctx(1)),
            Reply::Applied { .. }
        ));
    }

    #[test]
    fn a_replayed_proposal_is_refused_canary_writes_are_not_ordered() {
        let mut s = cluster();
        let c = Command::SetMinEpoch { min_epoch: 0 };
        let bytes = sign_proposal(&key(2), &s, Lane::Admin, 100, &c);
        let r = s.apply_entry(&bytes, &ctx(1));
        assert_ne!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        assert_eq!(s.last_sequence(2, Lane::Admin), 100);
        let before = s.clone();
        assert_eq!(
            code(&s.apply_entry(&bytes, &ctx(1))),
            Some(RejectCode::Replayed)
        );
        refused(
            &mut s,
            &key(2),
            Lane::Admin,
            99,
            1,
            &c,
            RejectCode::Replayed,
        );
        assert_eq!(s, before);
        // Another lane and another node have their own sequences.
        assert_ne!(
            code(&apply(&mut s, &key(2), Lane::Keeper, 5, 1, &c)),
            Some(RejectCode::Replayed)
        );
        assert_ne!(
            code(&apply(&mut s, &key(3), Lane::Admin, 5, 1, &c)),
            Some(RejectCode::Replayed)
        );
        // Canary writes: any order across keys, but a replay of a key's write is refused (it
        // would roll the value back).
        let p = sign_proposal(&key(2), &s, Lane::Canary, 7, &put("k"));
        assert!(matches!(s.apply_entry(&p, &ctx(1)), Reply::Applied { .. }));
        assert_eq!(
            code(&s.apply_entry(&p, &ctx(1))),
            Some(RejectCode::Replayed)
        );
        assert!(matches!(
            apply(&mut s, &key(2), Lane::Canary, 3, 1, &put("other")),
            Reply::Applied { .. }
        ));
    }

    #[test]
    fn leader_only_commands_need_the_appending_leader() {
        let mut s = cluster();
        let blocks = Command::ChainBlocks {
            blocks: vec![ChainBlock {
                genesis_hash: Bytes32([0; 32]),
                number: 1,
                hash: Bytes32([1; 32]),
                parent_hash: Bytes32([0; 32]),
                from_index: 0,
                to_index: 0,
                complete: true,
                events: vec![],
                undecodable: vec![],
                proposed_at_ms: 0,
                rotation_deadline_ms: 0,
            }],
        };
        // Forwarded by a follower (node 2) to leader 1: refused.
        refused(
            &mut s,
            &key(2),
            Lane::Chain,
            1,
            1,
            &blocks,
            RejectCode::Unauthorized,
        );
        let r = apply(&mut s, &key(1), Lane::Chain, 1, 1, &blocks);
        assert_ne!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        // RemoveMember: the leader, and only for a node outside the membership.
        let rm = |n| Command::RemoveMember { node_id: n };
        refused(
            &mut s,
            &key(2),
            Lane::Keeper,
            1,
            1,
            &rm(3),
            RejectCode::Unauthorized,
        );
        refused(
            &mut s,
            &key(1),
            Lane::Keeper,
            2,
            1,
            &rm(3),
            RejectCode::InvalidState,
        );
        // Redeal and a rotation's dealing: the leader.
        let redeal = Command::Redeal {
            epoch: 0,
            dealing: DealingRecord {
                generation: 2,
                commitments: vec![],
                wrapped_nonce: HexBytes(vec![]),
                wrapped_ciphertext: HexBytes(vec![]),
                shares: vec![],
                acked: Default::default(),
            },
        };
        refused(
            &mut s,
            &key(2),
            Lane::Keeper,
            3,
            1,
            &redeal,
            RejectCode::Unauthorized,
        );
        let epoch = |e| {
            Command::InstallEpoch(EpochRecord {
                epoch: e,
                threshold: 2,
                master_public_key: Bytes32([5; 32]),
                cluster_signing_public_key: Bytes32([6; 32]),
                status: EpochStatus::Dealing,
                dealing: DealingRecord {
                    generation: 1,
                    commitments: vec![],
                    wrapped_nonce: HexBytes(vec![]),
                    wrapped_ciphertext: HexBytes(vec![]),
                    shares: vec![],
                    acked: Default::default(),
                },
            })
        };
        refused(
            &mut s,
            &key(2),
            Lane::Keeper,
            4,
            1,
            &epoch(0),
            RejectCode::Unauthorized,
        );
        refused(
            &mut s,
            &key(2),
            Lane::Keeper,
            5,
            1,
            &epoch(1),
            RejectCode::Unauthorized,
        );
        // The genesis dealer named at init deals epoch 0 even when it is not the leader.
        s.genesis_dealer = Some(2);
        let r = apply(&mut s, &key(2), Lane::Keeper, 6, 1, &epoch(0));
        assert_ne!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        refused(
            &mut s,
            &key(1),
            Lane::Keeper,
            7,
            1,
            &epoch(0),
            RejectCode::Unauthorized,
        );
    }

    #[test]
    fn operator_commands_need_a_registered_voter_and_dev_events_a_development_cluster() {
        let mut s = cluster();
        // A learner (registered) or an unregistered voter cannot propose them.
        let c = Command::UpsertMember(record(4, &key(4)));
        assert!(matches!(
            apply(&mut s, &key(4), Lane::Keeper, 1, 1, &c),
            Reply::Applied { .. }
        ));
        let rot = Command::StartRotation {
            rotation_id: "r".into(),
            requested_at_ms: 1,
            deadline_ms: 2,
        };
        refused(
            &mut s,
            &key(4),
            Lane::Admin,
            1,
            1,
            &rot,
            RejectCode::Unauthorized,
        );
        let mut unregistered = s.clone();
        unregistered.members.remove(&3);
        refused(
            &mut unregistered,
            &key(3),
            Lane::Admin,
            1,
            1,
            &rot,
            RejectCode::Unauthorized,
        );
        let ev = Command::DevEvent {
            event: ChainEvent::WorkerDeregistered {
                worker: Bytes32([3; 32]),
            },
        };
        let r = apply(&mut s, &key(3), Lane::Admin, 2, 1, &ev);
        assert_ne!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        s.production = true;
        refused(
            &mut s,
            &key(3),
            Lane::Admin,
            3,
            1,
            &ev,
            RejectCode::Unauthorized,
        );
        // Init: once, by a voter.
        let init = Command::InitCluster {
            gatekeeper_id: Bytes32([1; 32]),
            threshold: None,
            genesis_dealer: None,
            production: false,
            operators: vec![],
            members: Default::default(),
        };
        refused(
            &mut s,
            &key(1),
            Lane::Admin,
            9,
            1,
            &init,
            RejectCode::AlreadyInitialized,
        );
        let mut fresh = GatekeeperState::default();
        refused(
            &mut fresh,
            &key(4),
            Lane::Admin,
            1,
            1,
            &init,
            RejectCode::Unauthorized,
        );
        // A voter other than the appending leader (a member racing the operator): refused.
        refused(
            &mut fresh,
            &key(2),
            Lane::Admin,
            1,
            1,
            &init,
            RejectCode::Unauthorized,
        );
    }

    #[test]
    fn canary_values_over_the_limit_are_refused_at_apply() {
        let mut s = cluster();
        let big = Command::Put {
            key: "k".into(),
            value: "v".repeat(crate::state::MAX_CANARY_VALUE_BYTES + 1),
        };
        refused(
            &mut s,
            &key(1),
            Lane::Canary,
            1,
            1,
            &big,
            RejectCode::InvalidState,
        );
    }

    #[test]
    fn canary_writes_need_an_operators_signature_in_production_and_may_carry_one_in_development() {
        let mut s = cluster();
        let alice = operator(&mut s);
        let gk = s.gatekeeper_id;
        let w = put("canary");
        let json = serde_json::to_string(&w).unwrap();
        // Development: the node vouches for the operator; a signature is checked when present.
        let r = apply_op(&mut s, &key(2), Lane::Canary, 1, 1, &w, None);
        assert!(matches!(r, Reply::Applied { .. }), "{r:?}");
        let p = op_proof(gk, &alice, "alice", 20, &json);
        let r = apply_op(&mut s, &key(2), Lane::Admin, 1, 1, &w, Some(&p));
        assert!(matches!(r, Reply::Applied { .. }), "{r:?}");
        let r = apply_op(&mut s, &key(3), Lane::Admin, 1, 1, &w, Some(&p));
        assert_eq!(code(&r), Some(RejectCode::Replayed), "{r:?}");
        let forged = op_proof(gk, &alice, "alice", 21, "{}");
        let r = apply_op(&mut s, &key(2), Lane::Admin, 2, 1, &w, Some(&forged));
        assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        // Production: a member's word is not enough.
        s.production = true;
        let r = apply_op(&mut s, &key(2), Lane::Canary, 5, 1, &w, None);
        assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        let p = op_proof(gk, &alice, "alice", 30, &json);
        let r = apply_op(&mut s, &key(2), Lane::Admin, 3, 1, &w, Some(&p));
        assert!(matches!(r, Reply::Applied { .. }), "{r:?}");
        assert_eq!(s.operator_sequences.get("alice"), Some(&30));
    }

    /// An operator "alice" with a P-256 key, registered in `s`.
    fn operator(s: &mut GatekeeperState) -> ring::signature::EcdsaKeyPair {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        s.operators
            .insert("alice".into(), HexBytes(k.public_key().as_ref().to_vec()));
        k
    }

    fn op_proof(
        gk: Option<Bytes32>,
        k: &ring::signature::EcdsaKeyPair,
        name: &str,
        seq: u64,
        json: &str,
    ) -> OperatorProof {
        let rng = ring::rand::SystemRandom::new();
        let msg = operator_signing_bytes(gk.as_ref(), name, seq, json.as_bytes());
        OperatorProof {
            name: name.into(),
            seq,
            signature: HexBytes(k.sign(&rng, &msg).unwrap().as_ref().to_vec()),
        }
    }

    /// `c` proposed by `by` (node proof) with `op` (operator proof), appended by `leader`.
    fn apply_op(
        s: &mut GatekeeperState,
        by: &Key,
        lane: Lane,
        seq: u64,
        leader: NodeId,
        c: &Command,
        op: Option<&OperatorProof>,
    ) -> Reply {
        let json = serde_json::to_string(c).unwrap();
        let bytes = sign_proposal_json(by, &s.clone(), lane, seq, &json, op);
        s.apply_entry(&bytes, &ctx(leader))
    }

    #[test]
    fn operator_commands_need_a_registered_operators_signature() {
        let mut s = cluster();
        let alice = operator(&mut s);
        let gk = s.gatekeeper_id;
        let c = Command::SetMinEpoch { min_epoch: 0 };
        let json = serde_json::to_string(&c).unwrap();
        // A voter alone (a compromised member's enclave key): refused.
        let before = s.clone();
        let r = apply_op(&mut s, &key(2), Lane::Admin, 1, 1, &c, None);
        assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        // Signed by alice: authorized (and her sequence recorded).
        let p = op_proof(gk, &alice, "alice", 10, &json);
        let r = apply_op(&mut s, &key(2), Lane::Admin, 2, 1, &c, Some(&p));
        assert_ne!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        assert_eq!(s.operator_sequences.get("alice"), Some(&10));
        // The same signature again (another node proposing it): a replay.
        let r = apply_op(&mut s, &key(3), Lane::Admin, 3, 1, &c, Some(&p));
        assert_eq!(code(&r), Some(RejectCode::Replayed), "{r:?}");
        // Over another command, under another name, or by another key: refused.
        let other = Command::SetMinEpoch { min_epoch: 1 };
        let r = apply_op(
            &mut s,
            &key(2),
            Lane::Admin,
            4,
            1,
            &other,
            Some(&op_proof(gk, &alice, "alice", 11, &json)),
        );
        assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        let r = apply_op(
            &mut s,
            &key(2),
            Lane::Admin,
            5,
            1,
            &c,
            Some(&op_proof(gk, &alice, "bob", 12, &json)),
        );
        assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        let mut mallory_state = s.clone();
        let mallory = operator(&mut mallory_state);
        let r = apply_op(
            &mut s,
            &key(2),
            Lane::Admin,
            6,
            1,
            &c,
            Some(&op_proof(gk, &mallory, "alice", 13, &json)),
        );
        assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        // An operator proof on a command that is not an operator's: refused.
        let ack = Command::AckShare {
            epoch: 0,
            generation: 1,
            node_id: 2,
        };
        let aj = serde_json::to_string(&ack).unwrap();
        let r = apply_op(
            &mut s,
            &key(2),
            Lane::Keeper,
            7,
            1,
            &ack,
            Some(&op_proof(gk, &alice, "alice", 14, &aj)),
        );
        assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        assert_eq!(s.operator_sequences.get("alice"), Some(&10));
        let _ = before;
    }

    #[test]
    fn the_leaders_keeper_starts_the_queued_rotation_and_aborts_the_running_one_unsigned() {
        let mut s = cluster();
        let _alice = operator(&mut s);
        s.pending_rotations = vec!["chain:1".into()];
        let start = |id: &str| Command::StartRotation {
            rotation_id: id.into(),
            requested_at_ms: 1,
            deadline_ms: 2,
        };
        // Another id, a follower's keeper, or the admin lane: refused.
        for (by, lane, id) in [
            (1, Lane::Keeper, "other"),
            (2, Lane::Keeper, "chain:1"),
            (1, Lane::Admin, "chain:1"),
        ] {
            let r = apply_op(&mut s, &key(by), lane, 1, 1, &start(id), None);
            assert_eq!(
                code(&r),
                Some(RejectCode::Unauthorized),
                "{by} {lane:?} {id}: {r:?}"
            );
        }
        let r = apply_op(&mut s, &key(1), Lane::Keeper, 2, 1, &start("chain:1"), None);
        assert_ne!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
    }

    #[test]
    fn operators_are_added_and_removed_by_operators() {
        let mut s = cluster();
        let alice = operator(&mut s);
        let gk = s.gatekeeper_id;
        let mut other = s.clone();
        let bob = operator(&mut other);
        let bob_key = other.operators["alice"].clone();
        let add_bob = Command::AddOperator(OperatorKey {
            name: "bob".into(),
            public_key: bob_key,
        });
        // A voter alone cannot add one.
        let r = apply_op(&mut s, &key(2), Lane::Admin, 1, 1, &add_bob, None);
        assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        let signed = |k: &ring::signature::EcdsaKeyPair, name: &str, seq: u64, c: &Command| {
            op_proof(gk, k, name, seq, &serde_json::to_string(c).unwrap())
        };
        let p = signed(&alice, "alice", 1, &add_bob);
        assert!(matches!(
            apply_op(&mut s, &key(2), Lane::Admin, 2, 1, &add_bob, Some(&p)),
            Reply::Applied { .. }
        ));
        // Bob signs now; he removes alice; alice's signatures no longer count.
        let rm_alice = Command::RemoveOperator {
            name: "alice".into(),
        };
        let p = signed(&bob, "bob", 1, &rm_alice);
        assert!(matches!(
            apply_op(&mut s, &key(2), Lane::Admin, 3, 1, &rm_alice, Some(&p)),
            Reply::Applied { .. }
        ));
        let c = Command::SetMinEpoch { min_epoch: 0 };
        let p = signed(&alice, "alice", 2, &c);
        let r = apply_op(&mut s, &key(2), Lane::Admin, 4, 1, &c, Some(&p));
        assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
        // The last operator cannot be removed.
        let rm_bob = Command::RemoveOperator { name: "bob".into() };
        let p = signed(&bob, "bob", 2, &rm_bob);
        let r = apply_op(&mut s, &key(2), Lane::Admin, 5, 1, &rm_bob, Some(&p));
        assert_eq!(code(&r), Some(RejectCode::InvalidState), "{r:?}");
        // A malformed key is refused.
        let bad = Command::AddOperator(OperatorKey {
            name: "eve".into(),
            public_key: HexBytes(vec![4; 64]),
        });
        let p = signed(&bob, "bob", 3, &bad);
        let r = apply_op(&mut s, &key(2), Lane::Admin, 6, 1, &bad, Some(&p));
        assert_eq!(code(&r), Some(RejectCode::InvalidState), "{r:?}");
    }
}
