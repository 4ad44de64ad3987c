//! The keeper's pure planner: from the committed state, the Raft membership, what this node's
//! enclave holds, the settings and `now`, it decides the next [`Step`]s (module docs in
//! [`super`]).

use crate::attestation::{member_evidence_ok, Policy};
use crate::enclave::Recipient;
use gatekeeper_raft::state::{Bytes32, EpochStatus, GatekeeperState, RotationOutcome};
use std::collections::{BTreeMap, BTreeSet};

/// What `admin status` shows about sealing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealView {
    /// `sealed` | `unsealing` | `unsealed`.
    pub state: String,
    /// While unsealing: shares held.
    pub collected: u32,
    /// While unsealing: shares needed.
    pub threshold: u32,
    /// The epoch being unsealed.
    pub epoch: u64,
}

/// The Raft membership as this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Members: (node id, voter).
    pub members: Vec<(u64, bool)>,
    /// The leader this node knows of.
    pub leader: Option<u64>,
}

/// What this node's enclave holds, read after it was synced with the committed epochs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnclaveView {
    /// The enclave's identity key.
    pub identity: Bytes32,
    /// The enclave's HPKE key.
    pub hpke: Bytes32,
    /// The SPKI SHA-256 of the node's current TLS certificate (none: plaintext).
    pub tls_spki: Option<Bytes32>,
    /// Epochs whose master secret is in memory.
    pub masters: BTreeSet<u64>,
    /// Per epoch, for its current generation: verified shares held, and whether this node's own
    /// share is among them.
    pub shares: BTreeMap<u64, (usize, bool)>,
}

/// The keeper's settings.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    /// Shares are dealt only to members whose registration evidence passes this policy.
    pub member_policy: Policy,
    /// Deadline given to queued (chain-requested) rotations when the leader starts them.
    pub rotation_deadline_ms: u64,
}

/// One decision of the keeper. Steps run in order; a failing leader step ends the tick, a failing
/// epoch step ends that epoch's steps only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Report the seal state (`sealed` / `unsealed`).
    Seal(&'static str),
    /// Write this node's member record with its current enclave keys and fresh evidence.
    Register,
    /// Nothing is dealt while these voters' registration evidence fails the member policy.
    Blocked {
        /// Why, per refused member.
        refused: Vec<String>,
    },
    /// Deal epoch 0 to `recipients` (with the staged imported secret when `imported`).
    DealGenesis {
        /// Shares needed.
        threshold: usize,
        /// The voters, with their registered HPKE keys.
        recipients: Vec<Recipient>,
        /// Whether the master is the imported one.
        imported: bool,
    },
    /// Remove the record of a node that left Raft membership.
    RemoveMember {
        /// The departed node.
        node_id: u64,
    },
    /// Abort a rotation whose epoch was not dealt in time.
    AbortRotation {
        /// The rotation.
        rotation_id: String,
        /// Why.
        reason: String,
    },
    /// Deal a rotation's new epoch.
    DealRotation {
        /// The new epoch.
        epoch: u64,
        /// The rotation.
        rotation_id: String,
        /// Shares needed.
        threshold: usize,
        /// The voters.
        recipients: Vec<Recipient>,
    },
    /// Start the oldest queued (chain-requested) rotation.
    StartRotation {
        /// Its id.
        rotation_id: String,
        /// When it was started.
        requested_at_ms: u64,
        /// Its dealing deadline.
        deadline_ms: u64,
    },
    /// Re-deal an epoch's master to the current voters.
    Redeal {
        /// The epoch.
        epoch: u64,
        /// The new generation.
        generation: u64,
        /// Shares needed.
        threshold: usize,
        /// The voters.
        recipients: Vec<Recipient>,
    },
    /// Open this node's share of the epoch's current dealing; acknowledge it if `ack`.
    OpenOwnShare {
        /// The epoch.
        epoch: u64,
        /// Commit `AckShare` once opened.
        ack: bool,
    },
    /// Acknowledge this node's (already opened) share.
    Ack {
        /// The epoch.
        epoch: u64,
        /// The acknowledged generation.
        generation: u64,
    },
    /// Gather shares of the epoch from these peers (in order) and rebuild its master.
    Unseal {
        /// The epoch.
        epoch: u64,
        /// Shares needed.
        threshold: usize,
        /// Share holders to ask.
        peers: Vec<u64>,
    },
}

impl Step {
    /// The step's name in traces (`keeper.<name>` spans).
    pub fn name(&self) -> &'static str {
        match self {
            Step::Seal(_) => "seal",
            Step::Register => "register",
            Step::Blocked { .. } => "blocked",
            Step::DealGenesis { .. } => "deal_genesis",
            Step::RemoveMember { .. } => "remove_member",
            Step::AbortRotation { .. } => "abort_rotation",
            Step::DealRotation { .. } => "deal_rotation",
            Step::StartRotation { .. } => "start_rotation",
            Step::Redeal { .. } => "redeal",
            Step::OpenOwnShare { .. } => "open_own_share",
            Step::Ack { .. } => "ack",
            Step::Unseal { .. } => "unseal",
        }
    }

    /// Steps about one epoch's shares: their failure does not stop other epochs' steps.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Step::OpenOwnShare { epoch, .. }
            | Step::Ack { epoch, .. }
            | Step::Unseal { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }
}

fn recipients(state: &GatekeeperState, voters: &[u64]) -> Vec<Recipient> {
    voters
        .iter()
        .filter_map(|v| state.members.get(v))
        .filter_map(|m| {
            keyring::X25519PublicKey::from_slice(&m.hpke_public_key.0)
                .ok()
                .map(|hpke| Recipient {
                    node_id: m.node_id,
                    hpke,
                })
        })
        .collect()
}

/// Decides this node's next steps. Pure.
pub fn plan(
    me: u64,
    state: &GatekeeperState,
    membership: &Membership,
    enclave: &EnclaveView,
    config: &PlanConfig,
    now_ms: u64,
) -> Vec<Step> {
    if !membership.members.iter().any(|(id, _)| *id == me) {
        return vec![Step::Seal("sealed")];
    }
    if state.gatekeeper_id.is_none() {
        return vec![];
    }
    // 1. register
    let registered = state.members.get(&me).is_some_and(|m| {
        m.identity_public_key == enclave.identity
            && m.hpke_public_key == enclave.hpke
            && m.tls_spki == enclave.tls_spki
    });
    if !registered {
        return vec![Step::Register];
    }
    let mut steps = vec![];
    let voters: Vec<u64> = membership
        .members
        .iter()
        .filter(|(_, voter)| *voter)
        .map(|(id, _)| *id)
        .collect();
    let all_registered = voters.iter().all(|v| state.members.contains_key(v));
    // Deal nothing while any voter's registration evidence fails the member policy.
    let refused: Vec<String> = voters
        .iter()
        .filter_map(|v| state.members.get(v))
        .filter_map(|m| member_evidence_ok(&config.member_policy, m, now_ms / 1000).err())
        .collect();
    let can_deal = all_registered && refused.is_empty();
    if all_registered && !refused.is_empty() {
        steps.push(Step::Blocked { refused });
    }

    // 2. deal. Genesis: the designated dealer (holding an imported secret), else the leader.
    let dealer = state.genesis_dealer.or(membership.leader);
    if state.epochs.is_empty() && can_deal && dealer == Some(me) {
        let recipients = recipients(state, &voters);
        let threshold = state
            .genesis_threshold
            .map(usize::from)
            .unwrap_or_else(|| keyring::shares::default_threshold(recipients.len()));
        steps.push(Step::DealGenesis {
            threshold,
            recipients,
            imported: state.genesis_dealer.is_some(),
        });
        return steps;
    }
    if membership.leader == Some(me) {
        steps.extend(lead(
            state, membership, enclave, &voters, config, now_ms, can_deal,
        ));
    }

    // 3. ack own shares, 4. unseal. Each epoch is handled on its own.
    for e in state.epochs.values() {
        if matches!(e.status, EpochStatus::Retired | EpochStatus::Aborted) {
            continue;
        }
        let own = enclave.shares.get(&e.epoch).is_some_and(|(_, own)| *own);
        if e.dealing.shares.iter().any(|s| s.node_id == me) {
            let acked = e.dealing.acked.contains(&me);
            if !own {
                steps.push(Step::OpenOwnShare {
                    epoch: e.epoch,
                    ack: !acked,
                });
            } else if !acked {
                steps.push(Step::Ack {
                    epoch: e.epoch,
                    generation: e.dealing.generation,
                });
            }
        }
        if e.status == EpochStatus::Active && !enclave.masters.contains(&e.epoch) {
            steps.push(Step::Unseal {
                epoch: e.epoch,
                threshold: usize::from(e.threshold),
                peers: e
                    .dealing
                    .shares
                    .iter()
                    .map(|s| s.node_id)
                    .filter(|n| *n != me && state.members.contains_key(n))
                    .collect(),
            });
        }
    }
    let active = crate::epochs::active_epochs(state);
    if !active.is_empty() && active.iter().all(|e| enclave.masters.contains(e)) {
        steps.push(Step::Seal("unsealed"));
    } else if active.is_empty() {
        steps.push(Step::Seal("sealed"));
    }
    steps
}

/// The leader's single step this tick, if any (at most one Raft write).
fn lead(
    state: &GatekeeperState,
    membership: &Membership,
    enclave: &EnclaveView,
    voters: &[u64],
    config: &PlanConfig,
    now_ms: u64,
    can_deal: bool,
) -> Option<Step> {
    // Records of nodes that left Raft membership are removed, so they authorise nothing and a
    // node rejoining under the same id registers afresh.
    let members: BTreeSet<u64> = membership.members.iter().map(|(id, _)| *id).collect();
    if let Some(gone) = state.members.keys().find(|id| !members.contains(id)) {
        return Some(Step::RemoveMember { node_id: *gone });
    }
    // A rotation past its deadline is aborted even while dealing is blocked (a voter failing
    // member evidence), so the operator can start another one.
    if let Some(r) = &state.rotation {
        let epoch = state.epochs.get(&r.epoch);
        let expired = r.deadline_ms > 0 && now_ms > r.deadline_ms;
        if r.outcome == RotationOutcome::InProgress
            && expired
            && epoch.is_none_or(|e| e.status == EpochStatus::Dealing)
        {
            return Some(Step::AbortRotation {
                rotation_id: r.rotation_id.clone(),
                reason: if can_deal {
                    "dealing did not complete before the deadline".into()
                } else {
                    "dealing was blocked (a voter's evidence fails the member policy) until the \
                     deadline"
                        .into()
                },
            });
        }
    }
    if state.epochs.is_empty() || !can_deal {
        return None; // genesis is dealt by the genesis dealer; nothing is dealt while blocked
    }
    let recipients = recipients(state, voters);
    // Rotation.
    if let Some(r) = &state.rotation {
        if r.outcome == RotationOutcome::InProgress {
            let epoch = state.epochs.get(&r.epoch);
            if epoch.is_none() {
                // Keep the current epoch's threshold (capped by the member count).
                let threshold = state
                    .current_epoch()
                    .and_then(|c| state.epochs.get(&c))
                    .map(|c| usize::from(c.threshold))
                    .unwrap_or_else(|| keyring::shares::default_threshold(recipients.len()))
                    .min(recipients.len())
                    .max(1);
                return Some(Step::DealRotation {
                    epoch: r.epoch,
                    rotation_id: r.rotation_id.clone(),
                    threshold,
                    recipients,
                });
            }
        }
    }
    // A chain-requested rotation that had to wait (another one ran, or genesis was not active
    // yet) starts once the cluster can rotate, oldest first.
    let busy = state
        .rotation
        .as_ref()
        .is_some_and(|r| r.outcome == RotationOutcome::InProgress);
    if let Some(next) = state.pending_rotations.first() {
        if !busy && state.current_epoch().is_some() {
            return Some(Step::StartRotation {
                rotation_id: next.clone(),
                requested_at_ms: now_ms,
                deadline_ms: now_ms.saturating_add(config.rotation_deadline_ms),
            });
        }
    }
    // Re-dealing after a membership change.
    let want: BTreeSet<u64> = voters.iter().copied().collect();
    for e in state.epochs.values() {
        if !matches!(e.status, EpochStatus::Active | EpochStatus::Dealing) {
            continue;
        }
        let holders: BTreeSet<u64> = e.dealing.shares.iter().map(|s| s.node_id).collect();
        // A holder that re-registered with a new enclave key (wiped and rejoined) cannot open a
        // share sealed to its old key: that needs a re-dealing too.
        let stale_key = e.dealing.shares.iter().any(|s| {
            state
                .members
                .get(&s.node_id)
                .is_some_and(|m| m.hpke_public_key != s.recipient_hpke)
        });
        // Only to every voter (each state applies a re-dealing only if it gives one share to
        // each voter, sealed to its current key): wait until they have all registered.
        if (holders != want || stale_key)
            && enclave.masters.contains(&e.epoch)
            && recipients.len() == want.len()
        {
            return Some(Step::Redeal {
                epoch: e.epoch,
                generation: e.dealing.generation + 1,
                threshold: usize::from(e.threshold).min(recipients.len()).max(1),
                recipients,
            });
        }
    }
    None
}

/// What `admin status` reports about sealing: "unsealed" is computed now, from the committed
/// epochs and the enclave (`unsealed`), never from the keeper's cached view — a new active epoch
/// makes a node sealed until it holds it; "unsealing" progress only while that epoch is active.
pub fn reported_seal(cached: &SealView, unsealed: bool, active: &[u64]) -> SealView {
    if unsealed {
        SealView {
            state: "unsealed".into(),
            ..Default::default()
        }
    } else if cached.state == "unsealing" && active.contains(&cached.epoch) {
        cached.clone()
    } else {
        SealView {
            state: "sealed".into(),
            ..Default::default()
        }
    }
}
