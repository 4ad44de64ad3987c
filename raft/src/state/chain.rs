//! Chain handling: [`Command::ChainBlocks`](super::Command::ChainBlocks) checked against the
//! committed [`ChainCursor`] and applied range by range, and the effect of each chain event on the
//! state.

use super::commands::{reject, ChainBlock, ChainBootstrapPart, ChainEvent, RejectCode, Reply};
use super::records::{
    Bytes32, ChainBootstrapProgress, ChainCursor, ChainRecord, ClusterRecord, IgnoredEvent,
    RotationOutcome, WorkerRecord, WorkerStatus, RECENT_IGNORED,
};
use super::GatekeeperState;

impl GatekeeperState {
    /// Applies a batch of consecutive block ranges, all or nothing. `Ok(false)`: every range was
    /// already applied (duplicate); `Err`: rejected, with nothing modified.
    pub(super) fn apply_chain_blocks(&mut self, blocks: &[ChainBlock]) -> Result<bool, Reply> {
        use RejectCode::*;
        if blocks.is_empty() {
            return Err(reject(MalformedCommand, "no chain blocks"));
        }
        if let Some(b) = &self.chain.bootstrap {
            return Err(reject(
                ChainGap,
                format!(
                    "a bootstrap from the storage of block {} is in progress ({} entries applied); \
                     blocks follow once it ends",
                    b.block, b.entries
                ),
            ));
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
        Ok(true)
    }

    /// Applies one part of a bootstrap from chain storage, in order (`offset`), all or nothing.
    /// `Ok(false)`: already applied (duplicate); `Err`: rejected, with nothing modified.
    pub(super) fn apply_chain_bootstrap(&mut self, p: &ChainBootstrapPart) -> Result<bool, Reply> {
        if !check_chain_bootstrap(&self.chain, p)? {
            return Ok(false);
        }
        if self.chain.bootstrap.is_some_and(|b| b.block != p.block) {
            // Starting over at a later block: what the abandoned one applied goes.
            self.chain.bootstrap = None;
            self.workers.clear();
            self.clusters.clear();
            self.contracts.clear();
            self.sessions.clear();
        }
        let mut ignored: Vec<IgnoredEvent> = p.undecodable.clone();
        let index = u32::try_from(p.offset).unwrap_or(u32::MAX);
        for e in &p.events {
            match self.apply_chain_event(p.block, e, 0, 0) {
                Ok(()) => self.chain.events_applied += 1,
                Err(Reply::Rejected { code, message }) => ignored.push(IgnoredEvent {
                    block: p.block,
                    index,
                    name: e.name().to_string(),
                    reason: format!("{code:?}: {message}"),
                }),
                Err(_) => {}
            }
        }
        self.record_ignored(ignored);
        self.chain.genesis_hash = Some(p.genesis_hash);
        let entries = self.chain.bootstrap.map_or(0, |b| b.entries) + p.entries;
        if p.last {
            self.chain.bootstrap = None;
            self.chain.bootstrapped = Some(ChainBootstrapProgress {
                block: p.block,
                block_hash: p.block_hash,
                entries,
            });
            self.chain.cursor = Some(ChainCursor {
                block: p.block,
                block_hash: p.block_hash,
                event_index: 0,
                block_complete: true,
            });
        } else {
            self.chain.bootstrap = Some(ChainBootstrapProgress {
                block: p.block,
                block_hash: p.block_hash,
                entries,
            });
        }
        Ok(true)
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
        self.record_ignored(ignored);
        self.chain.genesis_hash = Some(b.genesis_hash);
        self.chain.cursor = Some(cursor_after(b));
    }

    /// Counts events not applied and keeps the last [`RECENT_IGNORED`] of them.
    fn record_ignored(&mut self, mut ignored: Vec<IgnoredEvent>) {
        ignored.sort_by_key(|i| i.index);
        self.chain.events_ignored += ignored.len() as u64;
        self.chain.recent_ignored.extend(ignored);
        let excess = self
            .chain
            .recent_ignored
            .len()
            .saturating_sub(RECENT_IGNORED);
        self.chain.recent_ignored.drain(..excess);
    }

    /// Applies one chain event (validate first, then mutate). `at_ms`/`deadline_ms` start a
    /// requested rotation.
    pub(super) fn apply_chain_event(
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
                // Re-registration re-activates a removed or unresponsive worker, never a slashed
                // one: a slash is final for that worker key (docs/chain.md §2).
                let clusters = self
                    .workers
                    .get(worker)
                    .map(|w| w.clusters.clone())
                    .unwrap_or_default();
                let status = match self.workers.get(worker).map(|w| &w.status) {
                    Some(s @ WorkerStatus::Slashed { .. }) => s.clone(),
                    _ => WorkerStatus::Active,
                };
                self.workers.insert(
                    *worker,
                    WorkerRecord {
                        public_key: *worker,
                        attestation_provider: attestation_provider.clone(),
                        confidence_level: *confidence_level,
                        registered_at: block,
                        status,
                        clusters,
                    },
                );
            }
            ChainEvent::WorkerDeregistered { worker } => {
                let w = self.worker_mut(worker)?;
                // A slashed worker stays slashed (else deregistering and registering again
                // would lift the slash).
                if !matches!(w.status, WorkerStatus::Slashed { .. }) {
                    w.status = WorkerStatus::Removed { block };
                }
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

/// Refuses `what` (a block, storage) of a chain other than the one `chain` follows.
fn check_genesis(chain: &ChainRecord, genesis: Bytes32, what: &str) -> Result<(), Reply> {
    match chain.genesis_hash {
        Some(g) if g != genesis => Err(reject(
            RejectCode::ChainMismatch,
            format!(
                "{what} of a chain with genesis {genesis:?}; this cluster follows genesis {g:?}"
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks that `b` continues `chain`'s cursor. `Ok(false)`: already applied (duplicate); `Err`:
/// rejected.
fn check_chain_block(chain: &ChainRecord, b: &ChainBlock) -> Result<bool, Reply> {
    use RejectCode::*;
    check_genesis(chain, b.genesis_hash, "block")?;
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

/// Checks that `p` continues the bootstrap in progress (or starts one on a cluster that has
/// applied nothing of the chain). `Ok(false)`: already applied (duplicate); `Err`: rejected.
fn check_chain_bootstrap(chain: &ChainRecord, p: &ChainBootstrapPart) -> Result<bool, Reply> {
    use RejectCode::*;
    check_genesis(chain, p.genesis_hash, "storage")?;
    if p.entries == 0 && !p.last {
        return Err(reject(
            MalformedCommand,
            "a bootstrap part without storage entries must end the bootstrap",
        ));
    }
    if let Some(e) = p
        .events
        .iter()
        .find(|e| matches!(e, ChainEvent::MasterKeyRotationRequested { .. }))
    {
        return Err(reject(
            MalformedCommand,
            format!("{} is not registry state", e.name()),
        ));
    }
    let Some(offset_end) = p.offset.checked_add(p.entries) else {
        return Err(reject(MalformedCommand, "storage entry count overflows"));
    };
    match (chain.cursor, chain.bootstrap) {
        // The cluster follows events already: a bootstrap at or before its cursor is a late
        // repeat (a deposed leader's); one past it would skip blocks.
        (Some(c), _) if p.block <= c.block => Ok(false),
        (Some(c), _) => Err(reject(
            ChainGap,
            format!(
                "the cluster follows the chain's events from block {}; it does not bootstrap \
                 again at block {}",
                c.block, p.block
            ),
        )),
        (None, None) if p.offset == 0 => Ok(true),
        (None, None) => Err(reject(
            ChainGap,
            format!(
                "no bootstrap is in progress; a part starting at storage entry {} cannot start one",
                p.offset
            ),
        )),
        // The block of the bootstrap in progress may no longer be readable (a chain node prunes
        // old state): a new bootstrap of a later block starts over (found by review).
        (None, Some(b)) if p.offset == 0 && p.block > b.block => Ok(true),
        (None, Some(b)) => {
            if (b.block, b.block_hash) != (p.block, p.block_hash) {
                return Err(reject(
                    ChainMismatch,
                    format!(
                        "a bootstrap from the storage of block {} ({:?}) is in progress, not of \
                         block {} ({:?})",
                        b.block, b.block_hash, p.block, p.block_hash
                    ),
                ));
            }
            if offset_end <= b.entries && !(p.last && offset_end == b.entries && p.entries == 0) {
                return Ok(false);
            }
            if p.offset != b.entries {
                return Err(reject(
                    ChainGap,
                    format!(
                        "{} storage entries are applied; a part starting at entry {} does not \
                         continue them",
                        b.entries, p.offset
                    ),
                ));
            }
            Ok(true)
        }
    }
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
