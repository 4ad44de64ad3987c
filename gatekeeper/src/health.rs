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
}
