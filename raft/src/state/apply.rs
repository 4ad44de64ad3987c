//! The apply logic: [`GatekeeperState::apply`], a dispatch on the command, one handler per
//! command, and the checks they share.

use super::commands::{decode_command, reject, ChainEvent, Command, RejectCode, Reply};
use super::records::{
    Bytes32, DealingRecord, EpochRecord, EpochStatus, MemberRecord, RotationOutcome, RotationRecord,
};
use super::GatekeeperState;
use crate::NodeId;
use std::collections::BTreeSet;

impl GatekeeperState {
    /// Applies one command. Pure and deterministic; see the module docs.
    ///
    /// Every branch of the apply logic **validates completely before it mutates anything**, so a
    /// rejected command leaves the state exactly as it was without copying it (a copy per command
    /// made each write O(state size)). The tests assert this for every rejection they provoke.
    pub fn apply(&mut self, command: &Command) -> Reply {
        let outcome = self.apply_inner(command);
        self.conclude(outcome)
    }

    /// The reply for an apply outcome (`Ok(true)`: applied, counted in the audit sequence;
    /// `Ok(false)`: a duplicate; `Err`: rejected).
    pub(super) fn conclude(&mut self, outcome: Result<bool, Reply>) -> Reply {
        match outcome {
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
        match command {
            Command::InitCluster {
                gatekeeper_id,
                threshold,
                genesis_dealer,
                production,
                operators,
                members,
            } => {
                self.apply_init_cluster(
                    *gatekeeper_id,
                    *threshold,
                    *genesis_dealer,
                    *production,
                    operators,
                )?;
                self.authorized_joins = members.iter().cloned().collect();
                self.membership_grants = members.iter().cloned().collect();
                self.genesis_voters = members.iter().map(|(n, _)| *n).collect();
            }
            Command::AuthorizeJoin {
                node_id,
                raft_address,
            } => {
                self.require_init()?;
                if raft_address.is_empty() {
                    return Err(reject(RejectCode::InvalidState, "raft_address is empty"));
                }
                self.authorized_joins.insert(*node_id, raft_address.clone());
                self.membership_grants
                    .insert(*node_id, raft_address.clone());
                self.leave_grants.remove(node_id);
            }
            Command::AuthorizeLeave { node_id } => {
                self.require_init()?;
                if !self.members.contains_key(node_id) {
                    return Err(reject(
                        RejectCode::UnknownMember,
                        format!("node {node_id} is not a member"),
                    ));
                }
                self.authorized_joins.remove(node_id);
                self.membership_grants.remove(node_id);
                self.leave_grants.insert(*node_id);
            }
            Command::AddOperator(o) => self.apply_add_operator(o)?,
            Command::RemoveOperator { name } => self.apply_remove_operator(name)?,
            Command::DevEvent { event } => self.apply_dev_event(event)?,
            Command::UpsertMember(m) => self.apply_upsert_member(m)?,
            Command::SignCheckpoint(_) => {
                return Err(reject(
                    RejectCode::InvalidState,
                    "a checkpoint signature is applied only as a signed proposal",
                ))
            }

            Command::RemoveMember { node_id } => self.apply_remove_member(*node_id)?,
            Command::InstallEpoch(e) => self.apply_install_epoch(e)?,
            Command::AckShare {
                epoch,
                generation,
                node_id,
            } => self.apply_ack_share(*epoch, *generation, *node_id)?,
            Command::Redeal { epoch, dealing } => self.apply_redeal(*epoch, dealing)?,
            Command::SetMinEpoch { min_epoch } => self.apply_set_min_epoch(*min_epoch)?,
            Command::StartRotation {
                rotation_id,
                requested_at_ms,
                deadline_ms,
            } => self.apply_start_rotation(rotation_id, *requested_at_ms, *deadline_ms)?,
            Command::AbortRotation {
                rotation_id,
                reason,
            } => self.apply_abort_rotation(rotation_id, reason)?,
            Command::ChainBlocks { blocks } => return self.apply_chain_blocks(blocks),
            Command::ChainBootstrap(part) => return self.apply_chain_bootstrap(part),
            Command::Put { key, value } => self.apply_put(key, value)?,
        }
        Ok(true)
    }

    fn apply_init_cluster(
        &mut self,
        gatekeeper_id: Bytes32,
        threshold: Option<u8>,
        genesis_dealer: Option<NodeId>,
        production: bool,
        operators: &[super::proposal::OperatorKey],
    ) -> Result<(), Reply> {
        use RejectCode::*;
        if self.gatekeeper_id.is_some() {
            return Err(reject(AlreadyInitialized, "cluster already initialised"));
        }
        if threshold == Some(0) {
            return Err(reject(InvalidDealing, "threshold must be at least 1"));
        }
        for o in operators {
            super::proposal::check_operator_key(o)?;
        }
        self.gatekeeper_id = Some(gatekeeper_id);
        self.genesis_threshold = threshold;
        self.genesis_dealer = genesis_dealer;
        self.production = production;
        self.operators = operators
            .iter()
            .map(|o| (o.name.clone(), o.public_key.clone()))
            .collect();
        Ok(())
    }

    /// A chain-shaped event without a chain: applied at the cursor's block, the cursor unmoved.
    fn apply_dev_event(&mut self, event: &ChainEvent) -> Result<(), Reply> {
        if self.production {
            return Err(reject(
                RejectCode::Unauthorized,
                "development events are refused in a production cluster",
            ));
        }
        let block = self.chain.cursor.map_or(0, |c| c.block);
        self.apply_chain_event(block, event, 0, 0)
    }

    fn apply_upsert_member(&mut self, m: &MemberRecord) -> Result<(), Reply> {
        if m.raft_address.is_empty() || m.api_address.is_empty() {
            return Err(reject(
                RejectCode::InvalidState,
                "member addresses must not be empty",
            ));
        }
        // A low-order HPKE key makes every share sealed to it fail (a member registered the
        // all-zero key and every later dealing failed without a word: attack round 7).
        if keyring::X25519PublicKey(m.hpke_public_key.0).is_low_order() {
            return Err(reject(
                RejectCode::InvalidState,
                format!(
                    "node {}'s HPKE public key is a low-order point: nothing can be sealed to it",
                    m.node_id
                ),
            ));
        }
        // A new identity consumes the operator's authorization (checked by `authorize`).
        let new_identity = self
            .members
            .get(&m.node_id)
            .is_none_or(|old| old.identity_public_key != m.identity_public_key);
        if new_identity {
            self.authorized_joins.remove(&m.node_id);
        }
        self.members.insert(m.node_id, m.clone());
        Ok(())
    }

    fn apply_add_operator(&mut self, o: &super::proposal::OperatorKey) -> Result<(), Reply> {
        self.require_init()?;
        super::proposal::check_operator_key(o)?;
        if self.operators.contains_key(&o.name) {
            return Err(reject(
                RejectCode::AlreadyExists,
                format!(
                    "operator {:?} exists; remove it first to change its key",
                    o.name
                ),
            ));
        }
        self.operators.insert(o.name.clone(), o.public_key.clone());
        Ok(())
    }

    fn apply_remove_operator(&mut self, name: &str) -> Result<(), Reply> {
        if !self.operators.contains_key(name) {
            return Err(reject(
                RejectCode::InvalidState,
                format!("no operator {name:?}"),
            ));
        }
        if self.operators.len() == 1 {
            return Err(reject(
                RejectCode::InvalidState,
                "the last operator cannot be removed (add another one first)",
            ));
        }
        // Its sequence stays: its old signed commands stay replays if it is added again.
        self.operators.remove(name);
        Ok(())
    }

    fn apply_remove_member(&mut self, node_id: NodeId) -> Result<(), Reply> {
        if self.members.remove(&node_id).is_none() {
            return Err(reject(
                RejectCode::UnknownMember,
                format!("node {node_id} is not a member"),
            ));
        }
        Ok(())
    }

    fn apply_install_epoch(&mut self, e: &EpochRecord) -> Result<(), Reply> {
        use RejectCode::*;
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
        // Only what the state calls for is dealt: epoch 0 at genesis, a later epoch by the
        // rotation in progress for it.
        let called_for = e.epoch == 0
            || self
                .rotation
                .as_ref()
                .is_some_and(|r| r.outcome == RotationOutcome::InProgress && r.epoch == e.epoch);
        if !called_for {
            return Err(reject(
                RotationConflict,
                format!("no rotation in progress calls for epoch {}", e.epoch),
            ));
        }
        self.epochs.insert(e.epoch, e.clone());
        Ok(())
    }

    fn apply_ack_share(
        &mut self,
        epoch: u64,
        generation: u64,
        node_id: NodeId,
    ) -> Result<(), Reply> {
        use RejectCode::*;
        let members: BTreeSet<NodeId> = self.members.keys().copied().collect();
        let e = self.epoch_mut(epoch)?;
        if e.dealing.generation != generation {
            return Err(reject(
                InvalidDealing,
                format!(
                    "ack for generation {generation}, current is {}",
                    e.dealing.generation
                ),
            ));
        }
        if !e.dealing.shares.iter().any(|s| s.node_id == node_id) {
            return Err(reject(
                UnknownMember,
                format!("node {node_id} holds no share of epoch {epoch}"),
            ));
        }
        e.dealing.acked.insert(node_id);
        let holders: BTreeSet<NodeId> = e.dealing.shares.iter().map(|s| s.node_id).collect();
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
        Ok(())
    }

    fn apply_redeal(&mut self, epoch: u64, dealing: &DealingRecord) -> Result<(), Reply> {
        use RejectCode::*;
        let threshold = self.epoch_mut(epoch)?.threshold;
        self.check_dealing(threshold, dealing)?;
        let e = self.epoch_mut(epoch)?;
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
        Ok(())
    }

    /// Whether the state calls for re-dealing `epoch` as `dealing` does, with `voters` the
    /// voters in force: the epoch's shares are held by another set than the voters, or by a
    /// member whose key changed since; and the new dealing gives one share to each voter, sealed
    /// to its current key. Anything else would only take the shares away from their holders
    /// (found by attack: a forged re-dealing that no node could open).
    pub(super) fn redeal_called_for(
        &self,
        epoch: u64,
        dealing: &DealingRecord,
        voters: &BTreeSet<NodeId>,
    ) -> Result<(), Reply> {
        use RejectCode::*;
        let e = self
            .epochs
            .get(&epoch)
            .ok_or_else(|| reject(UnknownEpoch, format!("epoch {epoch} does not exist")))?;
        let key_of = |n: &NodeId| self.members.get(n).map(|m| m.hpke_public_key);
        let holders: BTreeSet<NodeId> = e.dealing.shares.iter().map(|s| s.node_id).collect();
        let stale = e
            .dealing
            .shares
            .iter()
            .any(|s| key_of(&s.node_id).is_some_and(|k| k != s.recipient_hpke));
        if holders == *voters && !stale {
            return Err(reject(
                InvalidState,
                format!(
                    "re-dealing epoch {epoch} is not called for: its shares are held by exactly \
                     the voters {voters:?}, sealed to their current keys"
                ),
            ));
        }
        let recipients: BTreeSet<NodeId> = dealing.shares.iter().map(|s| s.node_id).collect();
        if recipients != *voters {
            return Err(reject(
                InvalidDealing,
                format!(
                    "a re-dealing must give one share to each voter {voters:?}, not {recipients:?}"
                ),
            ));
        }
        if let Some(s) = dealing
            .shares
            .iter()
            .find(|s| key_of(&s.node_id) != Some(s.recipient_hpke))
        {
            return Err(reject(
                InvalidDealing,
                format!(
                    "the share for node {} is not sealed to its current key",
                    s.node_id
                ),
            ));
        }
        Ok(())
    }

    fn apply_set_min_epoch(&mut self, min_epoch: u64) -> Result<(), Reply> {
        use RejectCode::*;
        let current = self
            .current_epoch()
            .ok_or_else(|| reject(InvalidState, "no active epoch"))?;
        if min_epoch > current {
            return Err(reject(
                InvalidState,
                format!("min_epoch {min_epoch} would retire the current epoch {current}"),
            ));
        }
        if min_epoch < self.min_epoch {
            return Err(reject(
                InvalidState,
                format!(
                    "min_epoch cannot go back from {} to {min_epoch}",
                    self.min_epoch
                ),
            ));
        }
        self.min_epoch = min_epoch;
        self.epochs.update_all(|e| {
            if e.epoch < min_epoch && e.status == EpochStatus::Active {
                e.status = EpochStatus::Retired;
            }
        });
        Ok(())
    }

    fn apply_start_rotation(
        &mut self,
        rotation_id: &str,
        requested_at_ms: u64,
        deadline_ms: u64,
    ) -> Result<(), Reply> {
        self.start_rotation(rotation_id, requested_at_ms, deadline_ms)?;
        self.pending_rotations.retain(|p| p != rotation_id);
        Ok(())
    }

    fn apply_abort_rotation(&mut self, rotation_id: &str, reason: &str) -> Result<(), Reply> {
        let r = self
            .rotation
            .as_mut()
            .filter(|r| r.rotation_id == *rotation_id && r.outcome == RotationOutcome::InProgress)
            .ok_or_else(|| {
                reject(
                    RejectCode::RotationConflict,
                    format!("rotation {rotation_id} is not in progress"),
                )
            })?;
        r.outcome = RotationOutcome::Aborted(reason.to_string());
        let ep = r.epoch;
        if let Some(e) = self.epochs.get_mut(&ep) {
            if e.status == EpochStatus::Dealing {
                e.status = EpochStatus::Aborted;
            }
        }
        Ok(())
    }

    fn apply_put(&mut self, key: &str, value: &str) -> Result<(), Reply> {
        use super::commands::{MAX_CANARY_KEY_BYTES, MAX_CANARY_VALUE_BYTES};
        if key.is_empty() || key.len() > MAX_CANARY_KEY_BYTES {
            return Err(reject(
                RejectCode::InvalidState,
                format!("a canary key must be 1 to {MAX_CANARY_KEY_BYTES} bytes"),
            ));
        }
        if value.len() > MAX_CANARY_VALUE_BYTES {
            return Err(reject(
                RejectCode::InvalidState,
                format!("a canary value must be at most {MAX_CANARY_VALUE_BYTES} bytes"),
            ));
        }
        self.kv.insert(key.to_string(), value.to_string());
        Ok(())
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

    pub(super) fn start_rotation(&mut self, id: &str, at: u64, deadline: u64) -> Result<(), Reply> {
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
}
