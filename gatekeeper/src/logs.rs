//! Logs an operator can read: the changes of the replicated state that matter to them, on every
//! node, at INFO with structured fields ([`state_events`], logged by [`log_state_events`]); and
//! openraft's and raft-log's own warnings deduplicated ([`Dedup`]): the first of a kind passes,
//! repeats within the window are counted and summed up in one line when the window ends.
//!
//! Leadership and membership changes are logged by the replica (`gatekeeper_raft::replica`), the
//! keeper's decisions (dealing, aborting a rotation, unsealing) where it takes them.

use gatekeeper_raft::replica::Replica;
use gatekeeper_raft::state::{EpochStatus, GatekeeperState, RotationOutcome};
use gatekeeper_raft::NodeId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The part of the state whose changes are logged (small: epochs, the rotation, members).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    epochs: BTreeMap<u64, EpochStatus>,
    rotation: Option<(String, u64, RotationOutcome)>,
    members: BTreeSet<NodeId>,
}

impl Summary {
    /// The summary of `state`.
    pub fn of(state: &GatekeeperState) -> Self {
        Summary {
            epochs: state.epochs.values().map(|e| (e.epoch, e.status)).collect(),
            rotation: state
                .rotation
                .as_ref()
                .map(|r| (r.rotation_id.clone(), r.epoch, r.outcome.clone())),
            members: state.members.keys().copied().collect(),
        }
    }
}

/// A change of the replicated state an operator should see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateEvent {
    /// Epoch `epoch` is active (keys are derived from it).
    EpochActive { epoch: u64 },
    /// Epoch `epoch` is retired (below `min_epoch`: its keys are refused).
    EpochRetired { epoch: u64 },
    /// Epoch `epoch` was abandoned before its dealing completed.
    EpochAborted { epoch: u64 },
    /// A rotation started dealing `epoch`.
    RotationStarted { id: String, epoch: u64 },
    /// A rotation's epoch became active.
    RotationCompleted { id: String, epoch: u64 },
    /// A rotation was aborted, and why.
    RotationAborted {
        id: String,
        epoch: u64,
        reason: String,
    },
    /// A member registered (its record is in the state).
    MemberRegistered { node: NodeId },
    /// A member's record was removed.
    MemberRemoved { node: NodeId },
}

/// What changed from `before` to `after`, in a stable order. Pure.
pub fn state_events(before: &Summary, after: &Summary) -> Vec<StateEvent> {
    let mut out = Vec::new();
    for (&epoch, status) in &after.epochs {
        if before.epochs.get(&epoch) == Some(status) {
            continue;
        }
        match status {
            EpochStatus::Active => out.push(StateEvent::EpochActive { epoch }),
            EpochStatus::Retired => out.push(StateEvent::EpochRetired { epoch }),
            EpochStatus::Aborted => out.push(StateEvent::EpochAborted { epoch }),
            EpochStatus::Dealing => {}
        }
    }
    if before.rotation != after.rotation {
        if let Some((id, epoch, outcome)) = &after.rotation {
            let same_rotation = before.rotation.as_ref().is_some_and(|(b, ..)| b == id);
            let (id, epoch) = (id.clone(), *epoch);
            if !same_rotation {
                out.push(StateEvent::RotationStarted {
                    id: id.clone(),
                    epoch,
                });
            }
            match outcome {
                RotationOutcome::InProgress => {}
                RotationOutcome::Completed => out.push(StateEvent::RotationCompleted { id, epoch }),
                RotationOutcome::Aborted(reason) => out.push(StateEvent::RotationAborted {
                    id,
                    epoch,
                    reason: reason.clone(),
                }),
            }
        }
    }
    for &node in after.members.difference(&before.members) {
        out.push(StateEvent::MemberRegistered { node });
    }
    for &node in before.members.difference(&after.members) {
        out.push(StateEvent::MemberRemoved { node });
    }
    out
}

fn log_event(e: &StateEvent) {
    match e {
        StateEvent::EpochActive { epoch } => tracing::info!(epoch, "epoch active"),
        StateEvent::EpochRetired { epoch } => tracing::info!(epoch, "epoch retired"),
        StateEvent::EpochAborted { epoch } => {
            tracing::warn!(epoch, "epoch abandoned before its dealing completed")
        }
        StateEvent::RotationStarted { id, epoch } => {
            tracing::info!(rotation = %id, epoch, "rotation dealing a new epoch")
        }
        StateEvent::RotationCompleted { id, epoch } => {
            tracing::info!(rotation = %id, epoch, "rotation completed")
        }
        StateEvent::RotationAborted { id, epoch, reason } => {
            tracing::warn!(rotation = %id, epoch, %reason, "rotation aborted")
        }
        StateEvent::MemberRegistered { node } => tracing::info!(node, "member registered"),
        StateEvent::MemberRemoved { node } => tracing::info!(node, "member record removed"),
    }
}

/// Logs [`state_events`] as entries are applied, until `stop` turns true. The state at start is
/// the baseline (nothing is logged for what a restart finds).
pub async fn log_state_events(replica: Replica, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut metrics = replica.raft.metrics();
    let mut before = Summary::of(&replica.sm.read().state);
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            r = metrics.changed() => if r.is_err() { return },
        }
        // Coalesce a burst of applies into one look.
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics.borrow_and_update();
        let after = Summary::of(&replica.sm.read().state);
        for e in state_events(&before, &after) {
            log_event(&e);
        }
        before = after;
    }
}

/// Deduplication of repeated log events from one place in the code: within `window` after the
/// first, the repeats are only counted. Pure bookkeeping over `now`.
#[derive(Debug)]
pub struct Dedup<K> {
    window: Duration,
    seen: HashMap<K, (Instant, u64)>,
    /// Repeats of windows that ended in `admit` before `drain` saw them.
    ended: Vec<(K, u64)>,
}

impl<K: std::hash::Hash + Eq + Clone> Dedup<K> {
    /// Deduplication over `window`.
    pub fn new(window: Duration) -> Self {
        Dedup {
            window,
            seen: HashMap::new(),
            ended: Vec::new(),
        }
    }

    /// Whether an event from `key` at `now` is written. A repeat inside the window is not, and
    /// is counted.
    pub fn admit(&mut self, key: &K, now: Instant) -> bool {
        match self.seen.get_mut(key) {
            Some((since, repeats)) if now.duration_since(*since) < self.window => {
                *repeats += 1;
                false
            }
            _ => {
                // A new window; the old one's repeats wait for `drain`.
                if let Some((_, repeats)) = self.seen.insert(key.clone(), (now, 0)) {
                    if repeats > 0 {
                        self.ended.push((key.clone(), repeats));
                    }
                }
                true
            }
        }
    }

    /// The keys with repeats whose window ended by `now`, with their counts; forgets them.
    pub fn drain(&mut self, now: Instant) -> Vec<(K, u64)> {
        let window = self.window;
        let mut out = std::mem::take(&mut self.ended);
        self.seen.retain(|k, (since, repeats)| {
            if now.duration_since(*since) < window {
                return true;
            }
            if *repeats > 0 {
                out.push((k.clone(), *repeats));
            }
            false
        });
        out
    }
}

/// Targets whose events are deduplicated: openraft's internals and raft-log.
pub fn deduplicated_target(target: &str) -> bool {
    target.starts_with("openraft") || target.starts_with("raft_log")
}

/// How long repeats of one openraft or raft-log message are held back.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(30);

/// The shared deduplication state of the log filter: per callsite, and what to call it in the
/// summary line.
#[derive(Clone, Debug)]
pub struct LogDedup(Arc<Mutex<DedupState>>);

/// The callsites' bookkeeping, and the names of those with repeats held back.
type DedupState = (Dedup<Identifier>, HashMap<Identifier, String>);

use tracing::callsite::Identifier;

impl Default for LogDedup {
    fn default() -> Self {
        LogDedup(Arc::new(Mutex::new((
            Dedup::new(DEDUP_WINDOW),
            HashMap::new(),
        ))))
    }
}

impl LogDedup {
    /// Whether an event with this metadata is written (always, for other targets than
    /// [`deduplicated_target`]s; spans always).
    pub fn admit(&self, meta: &tracing::Metadata<'_>) -> bool {
        if !meta.is_event()
            || !deduplicated_target(meta.target())
            || *meta.level() == tracing::Level::ERROR
        {
            return true;
        }
        let key = meta.callsite();
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (dedup, names) = &mut *g;
        let admitted = dedup.admit(&key, Instant::now());
        if !admitted && !names.contains_key(&key) {
            names.insert(
                key,
                format!(
                    "{} {}:{}",
                    meta.target(),
                    meta.file().unwrap_or("?"),
                    meta.line().unwrap_or(0)
                ),
            );
        }
        admitted
    }

    /// The per-layer filter that applies this deduplication to a log layer.
    pub fn filter(&self) -> DedupFilter {
        DedupFilter(self.clone())
    }

    /// Writes one line per callsite whose repeats were held back, every [`DEDUP_WINDOW`].
    pub async fn report(self) {
        let mut tick = tokio::time::interval(DEDUP_WINDOW);
        loop {
            tick.tick().await;
            let lines: Vec<(String, u64)> = {
                let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
                let (dedup, names) = &mut *g;
                dedup
                    .drain(Instant::now())
                    .into_iter()
                    .map(|(k, n)| (names.remove(&k).unwrap_or_default(), n))
                    .collect()
            };
            for (at, repeats) in lines {
                tracing::warn!(
                    at = %at,
                    repeats,
                    window_secs = DEDUP_WINDOW.as_secs(),
                    "repeated log lines held back (the first was written)"
                );
            }
        }
    }
}

/// A `tracing_subscriber` per-layer filter over [`LogDedup`]: decides per event (never caches a
/// callsite's answer), and only for the deduplicated targets.
#[derive(Clone, Debug)]
pub struct DedupFilter(LogDedup);

impl<S> tracing_subscriber::layer::Filter<S> for DedupFilter {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if meta.is_event() && deduplicated_target(meta.target()) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.0.admit(event.metadata())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(
        epochs: &[(u64, EpochStatus)],
        rotation: Option<(&str, u64, RotationOutcome)>,
        members: &[NodeId],
    ) -> Summary {
        Summary {
            epochs: epochs.iter().copied().collect(),
            rotation: rotation.map(|(id, e, o)| (id.to_string(), e, o)),
            members: members.iter().copied().collect(),
        }
    }

    #[test]
    fn a_rotation_is_told_from_start_to_end() {
        use EpochStatus::*;
        let s0 = summary(&[(0, Active)], None, &[1, 2, 3]);
        let s1 = summary(
            &[(0, Active), (1, Dealing)],
            Some(("r1", 1, RotationOutcome::InProgress)),
            &[1, 2, 3],
        );
        let s2 = summary(
            &[(0, Active), (1, Active)],
            Some(("r1", 1, RotationOutcome::Completed)),
            &[1, 2, 3],
        );
        assert_eq!(
            state_events(&s0, &s1),
            vec![StateEvent::RotationStarted {
                id: "r1".into(),
                epoch: 1
            }]
        );
        assert_eq!(
            state_events(&s1, &s2),
            vec![
                StateEvent::EpochActive { epoch: 1 },
                StateEvent::RotationCompleted {
                    id: "r1".into(),
                    epoch: 1
                }
            ]
        );
        assert!(state_events(&s2, &s2).is_empty());
    }

    #[test]
    fn an_aborted_rotation_says_why_even_when_seen_in_one_step() {
        use EpochStatus::*;
        let s0 = summary(&[(0, Active)], None, &[1, 2, 3]);
        let s1 = summary(
            &[(0, Active), (1, Aborted)],
            Some((
                "r2",
                1,
                RotationOutcome::Aborted("deadline passed with 2 of 3 acks".into()),
            )),
            &[1, 2, 3],
        );
        assert_eq!(
            state_events(&s0, &s1),
            vec![
                StateEvent::EpochAborted { epoch: 1 },
                StateEvent::RotationStarted {
                    id: "r2".into(),
                    epoch: 1
                },
                StateEvent::RotationAborted {
                    id: "r2".into(),
                    epoch: 1,
                    reason: "deadline passed with 2 of 3 acks".into()
                }
            ]
        );
    }

    #[test]
    fn members_and_retirements_are_reported() {
        use EpochStatus::*;
        let s0 = summary(&[(0, Active), (1, Active)], None, &[1, 2, 3]);
        let s1 = summary(&[(0, Retired), (1, Active)], None, &[1, 2, 4]);
        assert_eq!(
            state_events(&s0, &s1),
            vec![
                StateEvent::EpochRetired { epoch: 0 },
                StateEvent::MemberRegistered { node: 4 },
                StateEvent::MemberRemoved { node: 3 },
            ]
        );
    }

    #[test]
    fn repeats_inside_the_window_are_counted_and_reported_once_it_ends() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(30));
        assert!(d.admit(&"a", t0));
        assert!(!d.admit(&"a", t0 + Duration::from_secs(1)));
        assert!(!d.admit(&"a", t0 + Duration::from_secs(29)));
        assert!(
            d.admit(&"b", t0 + Duration::from_secs(2)),
            "another callsite"
        );
        assert!(
            d.drain(t0 + Duration::from_secs(10)).is_empty(),
            "window still open"
        );
        assert_eq!(d.drain(t0 + Duration::from_secs(31)), vec![("a", 2)]);
        assert!(d.admit(&"a", t0 + Duration::from_secs(32)), "a new window");
        assert!(!d.admit(&"a", t0 + Duration::from_secs(33)));
        assert!(
            d.admit(&"a", t0 + Duration::from_secs(70)),
            "ended before a drain"
        );
        assert_eq!(
            d.drain(t0 + Duration::from_secs(71)),
            vec![("a", 1)],
            "the repeats of a window replaced in admit are still reported"
        );
    }

    #[test]
    fn a_log_layer_writes_the_first_of_openrafts_repeats_and_every_line_of_ours() {
        use tracing_subscriber::layer::{Layer, SubscriberExt};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let dedup = LogDedup::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || out.clone())
            .with_filter(dedup.filter());
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info,openraft=warn"))
            .with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..3 {
                tracing::warn!(target: "openraft::core", n, "a message will be ignored");
                tracing::info!(target: "openraft::core", n, "chatter below the level");
                tracing::info!(n, "ours");
                tracing::error!(target: "openraft::core", n, "a fatal storage error");
            }
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.matches("a message will be ignored").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("chatter").count(), 0, "{text}");
        assert_eq!(text.matches("ours").count(), 3, "{text}");
        assert_eq!(
            text.matches("a fatal storage error").count(),
            3,
            "errors always pass"
        );
        let held = dedup
            .0
            .lock()
            .unwrap()
            .0
            .drain(Instant::now() + DEDUP_WINDOW);
        assert_eq!(held.iter().map(|(_, n)| n).sum::<u64>(), 2);
    }

    #[test]
    fn only_openraft_and_raft_log_are_deduplicated() {
        assert!(deduplicated_target("openraft::core::raft_core"));
        assert!(deduplicated_target("raft_log::raft_log"));
        assert!(!deduplicated_target("gatekeeper::keeper::runtime"));
        assert!(!deduplicated_target("gatekeeper_raft::replica"));
    }
}
