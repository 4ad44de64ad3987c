//! Operator actions ("register this worker", "slash it", …) and the runtime events each one
//! emits under a chain profile. This is the dev chain's admin surface: `dev_submit` over RPC and
//! `gatekeeper-devchain emit …` on the command line both end here.
//!
//! | action | `gatekeeper` profile | `phala` profile |
//! |---|---|---|
//! | register-worker | `Gatekeeper.WorkerRegistered` | `PhalaRegistry.WorkerAdded` (first time) or `WorkerUpdated`, plus `PhalaComputation.SessionBound` to the worker's dev session on first registration |
//! | deregister-worker | `Gatekeeper.WorkerDeregistered` | refused: Phala has no deregistration event |
//! | slash-worker | `Gatekeeper.WorkerSlashed` | `PhalaComputation.WorkerEnterUnresponsive` (Phala's slash is the unresponsive state) |
//! | recover-worker | refused | `PhalaComputation.WorkerExitUnresponsive` |
//! | reclaim-worker | refused | `PhalaComputation.WorkerReclaimed` |
//! | request-rotation | `Gatekeeper.MasterKeyRotationRequested` | refused: Phala rotates by governance message, not an event |
//! | create-cluster | `Gatekeeper.ClusterCreated` | `PhalaPhatContracts.ClusterCreated` plus one `WorkerAddedToCluster` per worker |
//! | add-worker-to-cluster | `Gatekeeper.WorkerAddedToCluster` | `PhalaPhatContracts.WorkerAddedToCluster` |
//! | remove-worker-from-cluster | `Gatekeeper.WorkerRemovedFromCluster` | `PhalaPhatContracts.WorkerRemovedFromCluster` |
//! | instantiate-contract | `Gatekeeper.ContractInstantiated` | `PhalaPhatContracts.Instantiating` then `Instantiated` |

use crate::chain::{hex0x, Chain};
use crate::runtime::{AttestationProvider, Public, H256};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Which pallets an action's events come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// The `Gatekeeper` pallet (docs/chain.md).
    #[default]
    Gatekeeper,
    /// Phala's own pallets.
    Phala,
}

/// An operator action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Register (or re-register) a worker.
    RegisterWorker {
        /// Worker sr25519 key.
        worker: Public,
        /// Attestation provider (default `root`; `null` for none).
        #[serde(default = "root")]
        provider: Option<AttestationProvider>,
        /// Confidence level (default 1).
        #[serde(default = "one")]
        confidence_level: u8,
    },
    /// Deregister a worker.
    DeregisterWorker {
        /// Worker.
        worker: Public,
    },
    /// Slash a worker.
    SlashWorker {
        /// Worker.
        worker: Public,
        /// Reason.
        #[serde(default)]
        reason: String,
    },
    /// Phala: the worker answers heartbeats again.
    RecoverWorker {
        /// Worker.
        worker: Public,
    },
    /// Phala: the worker's stake is reclaimed, `slashed` of it lost.
    ReclaimWorker {
        /// Worker.
        worker: Public,
        /// Amount slashed.
        #[serde(default)]
        slashed: u64,
    },
    /// Ask for a master-key rotation (default id: one above every id seen).
    RequestRotation {
        /// Rotation id.
        #[serde(default)]
        rotation_id: Option<u64>,
    },
    /// Create a cluster with initial workers.
    CreateCluster {
        /// Cluster id.
        cluster: H256,
        /// Workers.
        #[serde(default)]
        workers: Vec<Public>,
    },
    /// Add a worker to a cluster.
    AddWorkerToCluster {
        /// Worker.
        worker: Public,
        /// Cluster.
        cluster: H256,
    },
    /// Remove a worker from a cluster.
    RemoveWorkerFromCluster {
        /// Worker.
        worker: Public,
        /// Cluster.
        cluster: H256,
    },
    /// Instantiate a contract on a cluster.
    InstantiateContract {
        /// Contract id.
        contract: H256,
        /// Cluster.
        cluster: H256,
    },
}

fn root() -> Option<AttestationProvider> {
    Some(AttestationProvider::Root)
}

fn one() -> u8 {
    1
}

/// The computing session the dev chain binds a worker to under the `phala` profile:
/// `blake2_256("gatekeeper-devchain/session" ++ worker)`.
pub fn phala_session(worker: &Public) -> [u8; 32] {
    sp_crypto_hashing::blake2_256(&[&b"gatekeeper-devchain/session"[..], &worker.0].concat())
}

fn pk(p: &Public) -> String {
    hex0x(&p.0)
}

fn h(x: &H256) -> String {
    hex0x(&x.0)
}

fn refused(profile: Profile, what: &str, why: &str) -> String {
    format!("{what} has no {profile:?} event: {why}")
}

/// The runtime events `action` emits under `profile`, in order. `chain` is consulted for history
/// (Phala's `WorkerAdded` versus `WorkerUpdated`, the next rotation id).
pub fn events_for(chain: &Chain, profile: Profile, action: &Action) -> Result<Vec<Value>, String> {
    let gk = |variant: &str, fields: Value| json!({"Gatekeeper": {variant: fields}});
    let phala_session_json = |w: &Public| hex0x(&phala_session(w));
    Ok(match (profile, action) {
        (
            Profile::Gatekeeper,
            Action::RegisterWorker {
                worker,
                provider,
                confidence_level,
            },
        ) => vec![gk(
            "WorkerRegistered",
            json!({"worker": pk(worker), "attestation_provider": provider, "confidence_level": confidence_level}),
        )],
        (
            Profile::Phala,
            Action::RegisterWorker {
                worker,
                provider,
                confidence_level,
            },
        ) => {
            let key = pk(worker);
            let known = chain.all_events().any(|e| {
                e.pointer("/PhalaRegistry/WorkerAdded/pubkey")
                    .and_then(Value::as_str)
                    == Some(key.as_str())
            });
            let variant = if known {
                "WorkerUpdated"
            } else {
                "WorkerAdded"
            };
            let mut v = vec![json!({"PhalaRegistry": {variant: {
                "pubkey": key, "attestation_provider": provider, "confidence_level": confidence_level}}})];
            if !known {
                v.push(json!({"PhalaComputation": {"SessionBound": {
                    "session": phala_session_json(worker), "worker": pk(worker)}}}));
            }
            v
        }
        (Profile::Gatekeeper, Action::DeregisterWorker { worker }) => {
            vec![gk("WorkerDeregistered", json!({"worker": pk(worker)}))]
        }
        (Profile::Phala, Action::DeregisterWorker { .. }) => {
            return Err(refused(
                profile,
                "deregister-worker",
                "Phala workers are never deregistered (use slash-worker or reclaim-worker)",
            ))
        }
        (Profile::Gatekeeper, Action::SlashWorker { worker, reason }) => vec![gk(
            "WorkerSlashed",
            json!({"worker": pk(worker), "reason": reason}),
        )],
        (Profile::Phala, Action::SlashWorker { worker, .. }) => {
            vec![json!({"PhalaComputation": {"WorkerEnterUnresponsive": {
                "session": phala_session_json(worker)}}})]
        }
        (Profile::Phala, Action::RecoverWorker { worker }) => {
            vec![json!({"PhalaComputation": {"WorkerExitUnresponsive": {
                "session": phala_session_json(worker)}}})]
        }
        (Profile::Phala, Action::ReclaimWorker { worker, slashed }) => {
            vec![json!({"PhalaComputation": {"WorkerReclaimed": {
                "session": phala_session_json(worker), "original_stake": 1_000_000_000_000u64,
                "slashed": slashed}}})]
        }
        (Profile::Gatekeeper, Action::RecoverWorker { .. } | Action::ReclaimWorker { .. }) => {
            return Err(refused(
                profile,
                "recover-worker / reclaim-worker",
                "they are Phala computation events",
            ))
        }
        (Profile::Gatekeeper, Action::RequestRotation { rotation_id }) => {
            let id = match rotation_id {
                Some(id) => *id,
                None => {
                    chain
                        .all_events()
                        .filter_map(|e| {
                            e.pointer("/Gatekeeper/MasterKeyRotationRequested/rotation_id")
                                .and_then(Value::as_u64)
                        })
                        .max()
                        .unwrap_or(0)
                        + 1
                }
            };
            vec![gk(
                "MasterKeyRotationRequested",
                json!({ "rotation_id": id }),
            )]
        }
        (Profile::Phala, Action::RequestRotation { .. }) => {
            return Err(refused(
                profile,
                "request-rotation",
                "Phala's rotation is a governance message to the gatekeepers, not an event",
            ))
        }
        (Profile::Gatekeeper, Action::CreateCluster { cluster, workers }) => vec![gk(
            "ClusterCreated",
            json!({"cluster": h(cluster), "workers": workers.iter().map(pk).collect::<Vec<_>>()}),
        )],
        (Profile::Phala, Action::CreateCluster { cluster, workers }) => {
            let system = hex0x(&sp_crypto_hashing::blake2_256(&cluster.0));
            let mut v = vec![json!({"PhalaPhatContracts": {"ClusterCreated": {
                "cluster": h(cluster), "system_contract": system}}})];
            for w in workers {
                v.push(json!({"PhalaPhatContracts": {"WorkerAddedToCluster": {
                    "worker": pk(w), "cluster": h(cluster)}}}));
            }
            v
        }
        (Profile::Gatekeeper, Action::AddWorkerToCluster { worker, cluster }) => vec![gk(
            "WorkerAddedToCluster",
            json!({"worker": pk(worker), "cluster": h(cluster)}),
        )],
        (Profile::Phala, Action::AddWorkerToCluster { worker, cluster }) => {
            vec![json!({"PhalaPhatContracts": {"WorkerAddedToCluster": {
                "worker": pk(worker), "cluster": h(cluster)}}})]
        }
        (Profile::Gatekeeper, Action::RemoveWorkerFromCluster { worker, cluster }) => vec![gk(
            "WorkerRemovedFromCluster",
            json!({"worker": pk(worker), "cluster": h(cluster)}),
        )],
        (Profile::Phala, Action::RemoveWorkerFromCluster { worker, cluster }) => {
            vec![json!({"PhalaPhatContracts": {"WorkerRemovedFromCluster": {
                "worker": pk(worker), "cluster": h(cluster)}}})]
        }
        (Profile::Gatekeeper, Action::InstantiateContract { contract, cluster }) => vec![gk(
            "ContractInstantiated",
            json!({"contract": h(contract), "cluster": h(cluster)}),
        )],
        (Profile::Phala, Action::InstantiateContract { contract, cluster }) => {
            let deployer = hex0x(&[0x44; 32]);
            vec![
                json!({"PhalaPhatContracts": {"Instantiating": {
                    "contract": h(contract), "cluster": h(cluster), "deployer": deployer}}}),
                json!({"PhalaPhatContracts": {"Instantiated": {
                    "contract": h(contract), "cluster": h(cluster), "deployer": deployer}}}),
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Shapes;

    #[test]
    fn phala_registration_is_added_then_updated_and_binds_a_session_once() {
        let mut c = Chain::new(Shapes::Standard);
        let w = Public([5; 32]);
        let reg = Action::RegisterWorker {
            worker: w,
            provider: Some(AttestationProvider::Dcap),
            confidence_level: 2,
        };
        let first = events_for(&c, Profile::Phala, &reg).unwrap();
        assert_eq!(first.len(), 2);
        assert!(first[0].pointer("/PhalaRegistry/WorkerAdded").is_some());
        assert!(first[1].pointer("/PhalaComputation/SessionBound").is_some());
        for e in first {
            c.queue(e).unwrap();
        }
        let again = events_for(&c, Profile::Phala, &reg).unwrap();
        assert_eq!(again.len(), 1);
        assert!(again[0].pointer("/PhalaRegistry/WorkerUpdated").is_some());
    }

    #[test]
    fn actions_without_an_event_in_a_profile_are_refused() {
        let c = Chain::new(Shapes::Standard);
        let w = Public([5; 32]);
        assert!(events_for(&c, Profile::Phala, &Action::DeregisterWorker { worker: w }).is_err());
        assert!(events_for(
            &c,
            Profile::Phala,
            &Action::RequestRotation { rotation_id: None }
        )
        .is_err());
        assert!(events_for(
            &c,
            Profile::Gatekeeper,
            &Action::RecoverWorker { worker: w }
        )
        .is_err());
    }

    #[test]
    fn rotation_ids_default_to_one_above_every_id_seen() {
        let mut c = Chain::new(Shapes::Standard);
        let next = |c: &Chain| {
            events_for(
                c,
                Profile::Gatekeeper,
                &Action::RequestRotation { rotation_id: None },
            )
            .unwrap()
            .remove(0)
        };
        let e = next(&c);
        assert_eq!(
            e.pointer("/Gatekeeper/MasterKeyRotationRequested/rotation_id"),
            Some(&json!(1))
        );
        c.queue(e).unwrap();
        c.produce().unwrap();
        assert_eq!(
            next(&c).pointer("/Gatekeeper/MasterKeyRotationRequested/rotation_id"),
            Some(&json!(2))
        );
        // Every action of the gatekeeper profile encodes under the chain's runtime.
        let w = Public([1; 32]);
        let cl = H256([2; 32]);
        for a in [
            Action::RegisterWorker {
                worker: w,
                provider: None,
                confidence_level: 1,
            },
            Action::SlashWorker {
                worker: w,
                reason: "x".into(),
            },
            Action::CreateCluster {
                cluster: cl,
                workers: vec![w],
            },
            Action::InstantiateContract {
                contract: H256([3; 32]),
                cluster: cl,
            },
        ] {
            for e in events_for(&c, Profile::Gatekeeper, &a).unwrap() {
                c.queue(e).unwrap();
            }
            for e in events_for(&c, Profile::Phala, &a).unwrap() {
                c.queue(e).unwrap();
            }
        }
    }
}
