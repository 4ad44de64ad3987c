//! Health: whether this node can serve keys now (**readiness**), as one pure decision over facts
//! read from the replica and the enclave.
//!
//! Ready means: Raft runs, the cluster is initialised, there is an active epoch, and this node
//! holds the master secret of every active epoch (it is unsealed) — exactly when KeyService can
//! answer. Readiness is what `grpc.health.v1` reports on the key listener (service `""` and
//! `gatekeeper.v1.KeyService`), what `/readyz` answers on the metrics port, and what
//! `gatekeeper health` exits with.
//!
//! **Liveness** is deliberately not derived from any of this: `/livez` answers 200 whenever the
//! process answers HTTP. A sealed node, a node without quorum or a slow disk must not be
//! restarted for it (restarting does not unseal it, and restarting every node at once is how a
//! cluster loses its key material's holders): those are readiness, never liveness.

use crate::enclave::Enclave;
use gatekeeper_raft::replica::Replica;
use std::fmt;

/// What readiness is decided from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Raft is running (not shut down or stopped by a fatal error).
    pub raft_running: bool,
    /// The cluster has a membership (it was initialised, or this node joined it).
    pub initialized: bool,
    /// The active epochs in the applied state.
    pub active_epochs: Vec<u64>,
    /// The active epochs whose master secret this node's enclave does not hold.
    pub sealed_epochs: Vec<u64>,
}

/// Why a node is not ready.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReady {
    /// Raft stopped on this node.
    RaftStopped,
    /// No cluster yet: run `admin init` (or join this node).
    NotInitialized,
    /// Initialised, but no epoch is active yet (genesis dealing in progress).
    NoActiveEpoch,
    /// This node does not hold these active epochs' master secrets (yet).
    Sealed(Vec<u64>),
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::RaftStopped => f.write_str("raft stopped on this node"),
            NotReady::NotInitialized => f.write_str("the cluster is not initialised"),
            NotReady::NoActiveEpoch => f.write_str("no active epoch yet"),
            NotReady::Sealed(e) => write!(
                f,
                "sealed for epoch{} {}",
                if e.len() == 1 { "" } else { "s" },
                e.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// The readiness verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// KeyService can answer.
    Ready,
    /// It cannot, for these reasons (at least one).
    NotReady(Vec<NotReady>),
}

impl Readiness {
    /// Whether it is [`Readiness::Ready`].
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }

    /// One line for `/readyz` and the CLI.
    pub fn describe(&self) -> String {
        match self {
            Readiness::Ready => "ready".into(),
            Readiness::NotReady(r) => format!(
                "not ready: {}",
                r.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
}

/// Decides readiness from `f`.
pub fn readiness(f: &Facts) -> Readiness {
    let mut why = Vec::new();
    if !f.raft_running {
        why.push(NotReady::RaftStopped);
    }
    if !f.initialized {
        why.push(NotReady::NotInitialized);
    } else if f.active_epochs.is_empty() {
        why.push(NotReady::NoActiveEpoch);
    }
    if !f.sealed_epochs.is_empty() {
        why.push(NotReady::Sealed(f.sealed_epochs.clone()));
    }
    if why.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady(why)
    }
}

/// [`readiness`] for a probe that asked to count a node of a cluster not initialised yet as
/// ready (`/readyz?uninitialized=ok`): an orchestrator that waits for ready pods before it runs
/// the initialisation (`helm install --wait` before the post-install Job) would otherwise wait
/// forever. Every other reason still makes the node not ready.
pub fn readiness_uninitialized_ok(f: &Facts) -> Readiness {
    match readiness(f) {
        Readiness::NotReady(why) => {
            let rest: Vec<NotReady> = why
                .into_iter()
                .filter(|r| *r != NotReady::NotInitialized)
                .collect();
            if rest.is_empty() {
                Readiness::Ready
            } else {
                Readiness::NotReady(rest)
            }
        }
        ready => ready,
    }
}

/// Reads the facts from the running node (the state is read under its lock: a node whose state
/// cannot be read does not answer at all).
pub fn facts(replica: &Replica, enclave: &dyn Enclave) -> Facts {
    let raft_running = {
        let m = replica.raft.metrics();
        let m = m.borrow();
        m.running_state.is_ok() && m.state != openraft::ServerState::Shutdown
    };
    let initialized = !replica.status().members.is_empty();
    let active_epochs = crate::epochs::active_epochs(&replica.sm.read().state);
    let sealed_epochs = active_epochs
        .iter()
        .copied()
        .filter(|e| !enclave.has_master(*e))
        .collect();
    Facts {
        raft_running,
        initialized,
        active_epochs,
        sealed_epochs,
    }
}

/// The names `grpc.health.v1` reports readiness under on the key listener.
pub const HEALTH_SERVICES: [&str; 2] = ["", "gatekeeper.v1.KeyService"];

/// Keeps `reporter` equal to this node's readiness, checked every `every`, until `stop`.
pub async fn report(
    reporter: tonic_health::server::HealthReporter,
    replica: Replica,
    enclave: std::sync::Arc<dyn Enclave>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: Option<bool> = None;
    loop {
        let ready = readiness(&facts(&replica, enclave.as_ref()));
        if last != Some(ready.is_ready()) {
            let status = if ready.is_ready() {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            for name in HEALTH_SERVICES {
                reporter.set_service_status(name, status).await;
            }
            tracing::info!(readiness = %ready.describe(), "readiness changed");
            last = Some(ready.is_ready());
        }
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One member as `admin health --cluster` and `admin status --all` see it: its own answer to
/// `Status`, or that it could not be asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHealth {
    /// Member id.
    pub id: u64,
    /// A voter (voters hold the shares once dealing to the member set is done).
    pub voter: bool,
    /// Its answer; `None`: unreachable (the reason is in `error`).
    pub view: Option<MemberAnswer>,
    /// Why it could not be asked.
    pub error: Option<String>,
}

/// What a member said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAnswer {
    /// `leader`, `follower`, `candidate`, `learner`, `uninitialized`.
    pub role: String,
    /// The leader it knows.
    pub leader: Option<u64>,
    /// Its term.
    pub term: u64,
    /// Its last applied index.
    pub applied: u64,
    /// It holds every active epoch's master.
    pub unsealed: bool,
}

/// The cluster's health from every member's own view. Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterHealth {
    /// The leader a majority of the voters that answered agree on.
    pub leader: Option<u64>,
    /// Voters.
    pub voters: usize,
    /// Voters that answered, follow (or are) that leader.
    pub healthy_voters: usize,
    /// `healthy_voters − majority`: voters that may still fail before the quorum is lost.
    pub raft_failure_tolerance: i64,
    /// Unsealed voters that answered.
    pub unsealed_voters: usize,
    /// The shares needed (the newest active epoch's threshold).
    pub threshold: u8,
    /// `unsealed_voters − threshold`: share holders that may still fail before a restarted
    /// member can no longer unseal.
    pub unseal_failure_tolerance: i64,
    /// What is wrong, one line per finding.
    pub problems: Vec<String>,
}

impl ClusterHealth {
    /// 0: healthy; 1: degraded (serving, something is wrong); 2: not serving (no quorum, or no
    /// unsealed voter once there is an active epoch). A single voter has no failure tolerance
    /// by construction and is not reported for it.
    pub fn exit_code(&self) -> i32 {
        if self.raft_failure_tolerance < 0 || (self.threshold > 0 && self.unsealed_voters == 0) {
            2
        } else if !self.problems.is_empty() {
            1
        } else {
            0
        }
    }
}

/// Judges the cluster from the members' answers; `threshold` is the newest active epoch's.
pub fn cluster_health(members: &[MemberHealth], threshold: u8) -> ClusterHealth {
    let voters: Vec<&MemberHealth> = members.iter().filter(|m| m.voter).collect();
    let majority = voters.len() / 2 + 1;
    let mut votes: std::collections::BTreeMap<u64, usize> = Default::default();
    for v in voters.iter().filter_map(|m| m.view.as_ref()) {
        if let Some(l) = v.leader {
            *votes.entry(l).or_default() += 1;
        }
    }
    let leader = votes.iter().find(|(_, n)| **n >= majority).map(|(l, _)| *l);
    let mut problems = Vec::new();
    for m in members {
        match (&m.view, &m.error) {
            (None, e) => problems.push(format!(
                "member {} did not answer: {}",
                m.id,
                e.as_deref().unwrap_or("no admin address registered")
            )),
            (Some(v), _) => {
                if v.leader.is_none() {
                    problems.push(format!("member {} knows no leader ({})", m.id, v.role));
                } else if leader.is_some() && v.leader != leader {
                    problems.push(format!(
                        "member {} follows {} while the majority follows {}",
                        m.id,
                        v.leader.unwrap_or_default(),
                        leader.unwrap_or_default()
                    ));
                }
                // Before genesis (no active epoch, threshold 0) every node is "sealed".
                if !v.unsealed && threshold > 0 {
                    problems.push(format!("member {} is sealed", m.id));
                }
                if v.role == "learner" && m.voter {
                    problems.push(format!(
                        "member {} is a voter that sees itself as a learner",
                        m.id
                    ));
                }
            }
        }
    }
    if leader.is_none() {
        problems.insert(0, "no leader that a majority of the voters agree on".into());
    }
    let healthy = voters
        .iter()
        .filter(|m| {
            m.view
                .as_ref()
                .is_some_and(|v| leader.is_some() && v.leader == leader)
        })
        .count();
    let unsealed = voters
        .iter()
        .filter(|m| m.view.as_ref().is_some_and(|v| v.unsealed))
        .count();
    // The same arithmetic as the leader's gauges (`gatekeeper_raft::telemetry`).
    let raft_failure_tolerance =
        gatekeeper_raft::telemetry::raft_failure_tolerance(voters.len(), healthy);
    let unseal_failure_tolerance =
        gatekeeper_raft::telemetry::unseal_failure_tolerance(unsealed, threshold);
    if raft_failure_tolerance == 0 && voters.len() > 1 {
        problems.push("one more lost voter and the cluster loses its quorum".into());
    }
    if unseal_failure_tolerance < 1 && threshold > 0 {
        problems.push(format!(
            "{unsealed} unsealed voter(s) for a threshold of {threshold}: one more loss and a restarted member cannot unseal"
        ));
    }
    ClusterHealth {
        leader,
        voters: voters.len(),
        healthy_voters: healthy,
        raft_failure_tolerance,
        unsealed_voters: unsealed,
        threshold,
        unseal_failure_tolerance,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Facts {
        Facts {
            raft_running: true,
            initialized: true,
            active_epochs: vec![1, 2],
            sealed_epochs: vec![],
        }
    }

    #[test]
    fn ready_only_when_running_initialised_active_and_unsealed() {
        assert_eq!(readiness(&ready()), Readiness::Ready);
        assert_eq!(readiness(&ready()).describe(), "ready");
        let not = |f: Facts| match readiness(&f) {
            Readiness::NotReady(r) => r,
            Readiness::Ready => panic!("ready: {f:?}"),
        };
        assert_eq!(
            not(Facts {
                sealed_epochs: vec![2],
                ..ready()
            }),
            [NotReady::Sealed(vec![2])]
        );
        assert_eq!(
            not(Facts {
                raft_running: false,
                ..ready()
            }),
            [NotReady::RaftStopped]
        );
        assert_eq!(
            not(Facts {
                initialized: false,
                active_epochs: vec![],
                ..ready()
            }),
            [NotReady::NotInitialized]
        );
        assert_eq!(
            not(Facts {
                active_epochs: vec![],
                ..ready()
            }),
            [NotReady::NoActiveEpoch]
        );
        // Every reason is reported, in one line.
        let all = readiness(&Facts {
            raft_running: false,
            initialized: true,
            active_epochs: vec![1, 2],
            sealed_epochs: vec![1, 2],
        });
        assert_eq!(
            all.describe(),
            "not ready: raft stopped on this node; sealed for epochs 1, 2"
        );
        assert!(!Facts::default().eq(&ready()) && !readiness(&Facts::default()).is_ready());
        // A probe may count "not initialised" as ready, and nothing else.
        let uninit = Facts {
            raft_running: true,
            ..Facts::default()
        };
        assert_eq!(readiness_uninitialized_ok(&uninit), Readiness::Ready);
        assert_eq!(
            readiness_uninitialized_ok(&Facts {
                sealed_epochs: vec![1],
                ..ready()
            }),
            Readiness::NotReady(vec![NotReady::Sealed(vec![1])])
        );
        assert_eq!(
            readiness_uninitialized_ok(&Facts::default()),
            Readiness::NotReady(vec![NotReady::RaftStopped])
        );
    }

    fn member(id: u64, leader: Option<u64>, unsealed: bool) -> MemberHealth {
        MemberHealth {
            id,
            voter: true,
            view: Some(MemberAnswer {
                role: if leader == Some(id) {
                    "leader"
                } else {
                    "follower"
                }
                .into(),
                leader,
                term: 3,
                applied: 10,
                unsealed,
            }),
            error: None,
        }
    }

    fn down(id: u64) -> MemberHealth {
        MemberHealth {
            id,
            voter: true,
            view: None,
            error: Some("connection refused".into()),
        }
    }

    #[test]
    fn a_whole_cluster_is_healthy_with_one_failure_of_each_kind_to_spare() {
        let h = cluster_health(
            &[
                member(1, Some(1), true),
                member(2, Some(1), true),
                member(3, Some(1), true),
            ],
            2,
        );
        assert_eq!(h.leader, Some(1));
        assert_eq!(
            (h.raft_failure_tolerance, h.unseal_failure_tolerance),
            (1, 1)
        );
        assert!(h.problems.is_empty(), "{:?}", h.problems);
        assert_eq!(h.exit_code(), 0);
    }

    #[test]
    fn one_member_down_is_degraded_and_says_which_and_why() {
        let h = cluster_health(
            &[member(1, Some(1), true), member(2, Some(1), true), down(3)],
            2,
        );
        assert_eq!(
            (h.raft_failure_tolerance, h.unseal_failure_tolerance),
            (0, 0)
        );
        assert_eq!(h.exit_code(), 1);
        assert!(
            h.problems[0].contains("member 3 did not answer: connection refused"),
            "{:?}",
            h.problems
        );
        assert!(h.problems.iter().any(|p| p.contains("loses its quorum")));
    }

    #[test]
    fn a_sealed_member_and_a_disagreeing_one_are_reported() {
        let h = cluster_health(
            &[
                member(1, Some(1), true),
                member(2, None, false),
                member(3, Some(3), true),
            ],
            2,
        );
        assert_eq!(h.leader, None, "1 and 3 each have one vote of three");
        assert_eq!(h.exit_code(), 2, "no agreed leader: no quorum");
        let h = cluster_health(
            &[
                member(1, Some(1), true),
                member(2, Some(1), false),
                member(3, Some(1), true),
                member(4, Some(1), true),
                member(5, Some(5), true),
            ],
            3,
        );
        assert_eq!(h.leader, Some(1));
        assert!(
            h.problems.iter().any(|p| p == "member 2 is sealed"),
            "{:?}",
            h.problems
        );
        assert!(
            h.problems
                .iter()
                .any(|p| p == "member 5 follows 5 while the majority follows 1"),
            "{:?}",
            h.problems
        );
        assert_eq!((h.healthy_voters, h.unsealed_voters), (4, 4));
        assert_eq!(h.exit_code(), 1);
    }

    #[test]
    fn no_quorum_or_no_unsealed_voter_is_down() {
        let h = cluster_health(&[member(1, None, true), down(2), down(3)], 2);
        assert_eq!(h.leader, None);
        assert_eq!(h.exit_code(), 2);
        assert_eq!(
            h.problems[0],
            "no leader that a majority of the voters agree on"
        );
        let h = cluster_health(
            &[
                member(1, Some(1), false),
                member(2, Some(1), false),
                member(3, Some(1), false),
            ],
            2,
        );
        assert_eq!(h.exit_code(), 2, "nobody can serve keys");
        let learner = MemberHealth {
            voter: false,
            ..down(4)
        };
        let h = cluster_health(
            &[
                member(1, Some(1), true),
                member(2, Some(1), true),
                member(3, Some(1), true),
                learner,
            ],
            2,
        );
        assert_eq!(
            (h.voters, h.raft_failure_tolerance),
            (3, 1),
            "learners do not count"
        );
        assert_eq!(h.exit_code(), 1, "but an unreachable learner is reported");
    }

    #[test]
    fn before_genesis_and_with_one_voter_nothing_is_reported_that_cannot_be_otherwise() {
        let h = cluster_health(
            &[
                member(1, Some(1), false),
                member(2, Some(1), false),
                member(3, Some(1), false),
            ],
            0,
        );
        assert!(h.problems.is_empty(), "{:?}", h.problems);
        assert_eq!(h.exit_code(), 0);
        let h = cluster_health(&[member(1, Some(1), true)], 1);
        assert_eq!(h.raft_failure_tolerance, 0);
        assert!(
            !h.problems.iter().any(|p| p.contains("quorum")),
            "{:?}",
            h.problems
        );
    }
}
