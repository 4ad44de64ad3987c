//! The registry pallets' storage: what a client reads to start from a block's state instead of
//! replaying every event before it (docs/chain.md §4.1).
//!
//! The dev chain has no runtime that executes calls, so each block's storage is derived from the
//! events it emitted: [`Registry::apply`] folds one emitted event into the maps exactly as the
//! pallet that emits it would have changed them. The chain keeps the head's maps, keyed by the
//! full storage key (so `state_getKeysPaged` walks them in key order like a Substrate node), and
//! per block the journal of what it changed ([`Undo`]); an earlier block's maps are the head's
//! with the later journals undone.
//!
//! | pallet | map (key → value) |
//! |---|---|
//! | `Gatekeeper` | `Workers` (`Public` → [`WorkerInfo`]), `Clusters` (`H256` → [`ClusterInfo`]), `Contracts` (`H256` → [`ContractInfo`]) |
//! | `PhalaRegistry` | `Workers` (`Public` → [`WorkerInfoV2`]) |
//! | `PhalaComputation` | `WorkerBindings` (`Public` → `AccountId32`), `Sessions` (`AccountId32` → [`SessionInfo`]) |
//! | `PhalaPhatContracts` | `Clusters` (`H256` → [`PhatClusterInfo`]), `ClusterWorkers` (`H256` → `Vec<Public>`), `Contracts` (`H256` → [`PhatContractInfo`]) |
//!
//! Every map hashes its key with `Twox64Concat` (the key follows its hash), as Phala's do.

use crate::runtime::{
    AccountId32, AttestationProvider, GatekeeperEvent, PhalaComputationEvent,
    PhalaPhatContractsEvent, PhalaRegistryEvent, Public, RuntimeEvent, H256,
};
use frame_metadata::v15::{
    PalletStorageMetadata, StorageEntryMetadata, StorageEntryModifier, StorageEntryType,
    StorageHasher,
};
use parity_scale_codec::{Decode, Encode};
use scale_info::{meta_type, TypeInfo};

/// A worker's state in the `Gatekeeper` pallet.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum WorkerState {
    /// May receive keys.
    #[codec(index = 0)]
    Active,
    /// Slashed; final for this key.
    #[codec(index = 1)]
    Slashed {
        /// Why (UTF-8).
        reason: Vec<u8>,
    },
    /// Deregistered.
    #[codec(index = 2)]
    Deregistered,
}

/// `Gatekeeper.Workers` value.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub struct WorkerInfo {
    /// How its attestation was verified.
    pub attestation_provider: Option<AttestationProvider>,
    /// Confidence level.
    pub confidence_level: u8,
    /// Block of its (last) registration.
    pub registered_at: u32,
    /// State.
    pub state: WorkerState,
}

/// `Gatekeeper.Clusters` value.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub struct ClusterInfo {
    /// Member workers, in the order they joined.
    pub workers: Vec<Public>,
    /// Block of creation.
    pub created_at: u32,
}

/// `Gatekeeper.Contracts` value.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub struct ContractInfo {
    /// The contract's cluster.
    pub cluster: H256,
}

/// `PhalaRegistry.Workers` value (`phala_pallets::registry::WorkerInfoV2`).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub struct WorkerInfoV2 {
    /// Worker key.
    pub pubkey: Public,
    /// Its ECDH key (zero here).
    pub ecdh_pubkey: Public,
    /// pRuntime version.
    pub runtime_version: u32,
    /// Block of the last update.
    pub last_updated: u64,
    /// Operator account.
    pub operator: Option<AccountId32>,
    /// How its attestation was verified.
    pub attestation_provider: Option<AttestationProvider>,
    /// Confidence level.
    pub confidence_level: u8,
    /// Initial score.
    pub initial_score: Option<u32>,
    /// Features.
    pub features: Vec<u32>,
}

/// `phala_pallets::compute::computation::WorkerState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum PhalaWorkerState {
    /// Bound, not computing.
    #[codec(index = 0)]
    Ready,
    /// Computing.
    #[codec(index = 1)]
    WorkerIdle,
    /// Stopped answering heartbeats.
    #[codec(index = 3)]
    WorkerUnresponsive,
    /// Stopping.
    #[codec(index = 4)]
    WorkerCoolingDown,
}

/// `PhalaComputation.Sessions` value (the part of `SessionInfo` the dev chain keeps).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub struct SessionInfo {
    /// State.
    pub state: PhalaWorkerState,
    /// V at start (U64F64 bits).
    pub ve: u128,
    /// V (U64F64 bits).
    pub v: u128,
    /// When V was updated.
    pub v_updated_at: u64,
    /// When the cool-down started.
    pub cool_down_start: u64,
}

/// `PhalaPhatContracts.Clusters` value (the part of `ClusterInfo` the dev chain keeps).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub struct PhatClusterInfo {
    /// Owner.
    pub owner: AccountId32,
    /// System contract.
    pub system_contract: H256,
    /// Gas price.
    pub gas_price: u128,
}

/// `PhalaPhatContracts.Contracts` value (`BasicContractInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub struct PhatContractInfo {
    /// Deployer.
    pub deployer: AccountId32,
    /// Cluster.
    pub cluster_id: H256,
}

/// The storage key of `pallet.item[key]` under `Twox64Concat`.
pub fn map_key(pallet: &str, item: &str, key: &[u8]) -> Vec<u8> {
    [
        &crate::chain::storage_key(pallet, item)[..],
        &sp_crypto_hashing::twox_64(key),
        key,
    ]
    .concat()
}

fn entry<K: TypeInfo + 'static, V: TypeInfo + 'static>(
    name: &'static str,
    docs: &'static str,
) -> StorageEntryMetadata {
    StorageEntryMetadata {
        name,
        modifier: StorageEntryModifier::Optional,
        ty: StorageEntryType::Map {
            hashers: vec![StorageHasher::Twox64Concat],
            key: meta_type::<K>(),
            value: meta_type::<V>(),
        },
        default: vec![0],
        docs: vec![docs],
    }
}

/// The storage metadata of `pallet` (`None`: it has none here).
pub fn pallet_storage(pallet: &'static str) -> Option<PalletStorageMetadata> {
    let entries = match pallet {
        "Gatekeeper" => vec![
            entry::<Public, WorkerInfo>("Workers", " Registered workers."),
            entry::<H256, ClusterInfo>("Clusters", " Compute clusters and their workers."),
            entry::<H256, ContractInfo>("Contracts", " Contracts and their cluster."),
        ],
        "PhalaRegistry" => vec![entry::<Public, WorkerInfoV2>(
            "Workers",
            " Registered workers.",
        )],
        "PhalaComputation" => vec![
            entry::<Public, AccountId32>("WorkerBindings", " The session bound to a worker."),
            entry::<AccountId32, SessionInfo>("Sessions", " Computing sessions."),
        ],
        "PhalaPhatContracts" => vec![
            entry::<H256, PhatClusterInfo>("Clusters", " Clusters."),
            entry::<H256, Vec<Public>>("ClusterWorkers", " Workers of each cluster."),
            entry::<H256, PhatContractInfo>("Contracts", " Contracts."),
        ],
        _ => return None,
    };
    Some(PalletStorageMetadata {
        prefix: pallet,
        entries,
    })
}

/// What one block changed: each written or removed key with its value before (in order).
pub type Undo = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The registry maps at one block: full storage key → SCALE value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    map: imbl::OrdMap<Vec<u8>, Vec<u8>>,
    /// Changes since the journal was last taken.
    journal: Undo,
}

impl Registry {
    /// The value at `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.map.get(key)
    }

    /// Up to `count` keys starting with `prefix` and greater than `after` (if given), in key
    /// order (`state_getKeysPaged`).
    pub fn keys_paged(&self, prefix: &[u8], count: usize, after: Option<&[u8]>) -> Vec<Vec<u8>> {
        let from = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_vec()),
            _ => std::ops::Bound::Included(prefix.to_vec()),
        };
        self.map
            .range((from, std::ops::Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(count)
            .cloned()
            .collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn read<T: Decode>(&self, key: &[u8]) -> Option<T> {
        self.map.get(key).and_then(|v| T::decode(&mut &v[..]).ok())
    }

    fn write<T: Encode>(&mut self, key: Vec<u8>, value: &T) {
        let old = self.map.insert(key.clone(), value.encode());
        self.journal.push((key, old));
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
            self.journal.push((key.to_vec(), Some(old)));
        }
    }

    /// The changes since the last call (what undoes them, in order).
    pub fn take_journal(&mut self) -> Undo {
        std::mem::take(&mut self.journal)
    }

    /// Reverts the changes of `undo` (a journal taken after them).
    pub fn undo(&mut self, undo: &Undo) {
        for (k, old) in undo.iter().rev() {
            match old {
                Some(v) => self.map.insert(k.clone(), v.clone()),
                None => self.map.remove(k),
            };
        }
        self.journal.clear();
    }

    /// Applies one event emitted in `block` (JSON `{"Pallet": {"Variant": {fields}}}`). Events of
    /// other shapes (a chain with broken `Gatekeeper` shapes) change nothing.
    pub fn apply(&mut self, block: u32, event: &serde_json::Value) {
        let Ok(ev) = serde_json::from_value::<RuntimeEvent<GatekeeperEvent>>(event.clone()) else {
            return;
        };
        match ev {
            RuntimeEvent::System(_) => {}
            RuntimeEvent::Gatekeeper(e) => self.apply_gatekeeper(block, e),
            RuntimeEvent::PhalaRegistry(e) => self.apply_phala_registry(block, e),
            RuntimeEvent::PhalaComputation(e) => self.apply_phala_computation(e),
            RuntimeEvent::PhalaPhatContracts(e) => self.apply_phat(e),
        }
    }

    fn apply_gatekeeper(&mut self, block: u32, e: GatekeeperEvent) {
        let worker_key = |w: &Public| map_key("Gatekeeper", "Workers", &w.0);
        let cluster_key = |c: &H256| map_key("Gatekeeper", "Clusters", &c.0);
        match e {
            GatekeeperEvent::WorkerRegistered {
                worker,
                attestation_provider,
                confidence_level,
            } => {
                let k = worker_key(&worker);
                // A slash is final for the key: registering again keeps it.
                let state = match self.read::<WorkerInfo>(&k) {
                    Some(WorkerInfo {
                        state: s @ WorkerState::Slashed { .. },
                        ..
                    }) => s,
                    _ => WorkerState::Active,
                };
                let info = WorkerInfo {
                    attestation_provider,
                    confidence_level,
                    registered_at: block,
                    state,
                };
                self.write(k, &info);
            }
            GatekeeperEvent::WorkerDeregistered { worker } => {
                let k = worker_key(&worker);
                if let Some(mut w) = self.read::<WorkerInfo>(&k) {
                    if !matches!(w.state, WorkerState::Slashed { .. }) {
                        w.state = WorkerState::Deregistered;
                        self.write(k, &w);
                    }
                }
            }
            GatekeeperEvent::WorkerSlashed { worker, reason } => {
                let k = worker_key(&worker);
                if let Some(mut w) = self.read::<WorkerInfo>(&k) {
                    w.state = WorkerState::Slashed { reason };
                    self.write(k, &w);
                }
            }
            GatekeeperEvent::MasterKeyRotationRequested { .. } => {}
            GatekeeperEvent::ClusterCreated { cluster, workers } => {
                let k = cluster_key(&cluster);
                if self.map.contains_key(&k) {
                    return;
                }
                let info = ClusterInfo {
                    workers,
                    created_at: block,
                };
                self.write(k, &info);
            }
            GatekeeperEvent::WorkerAddedToCluster { worker, cluster } => {
                let k = cluster_key(&cluster);
                if let Some(mut c) = self.read::<ClusterInfo>(&k) {
                    if !c.workers.contains(&worker) {
                        c.workers.push(worker);
                        self.write(k, &c);
                    }
                }
            }
            GatekeeperEvent::WorkerRemovedFromCluster { worker, cluster } => {
                let k = cluster_key(&cluster);
                if let Some(mut c) = self.read::<ClusterInfo>(&k) {
                    c.workers.retain(|w| *w != worker);
                    self.write(k, &c);
                }
            }
            GatekeeperEvent::ContractInstantiated { contract, cluster } => {
                let k = map_key("Gatekeeper", "Contracts", &contract.0);
                if !self.map.contains_key(&k) {
                    self.write(k, &ContractInfo { cluster });
                }
            }
        }
    }

    fn apply_phala_registry(&mut self, block: u32, e: PhalaRegistryEvent) {
        if let PhalaRegistryEvent::WorkerAdded {
            pubkey,
            attestation_provider,
            confidence_level,
        }
        | PhalaRegistryEvent::WorkerUpdated {
            pubkey,
            attestation_provider,
            confidence_level,
        } = e
        {
            let info = WorkerInfoV2 {
                pubkey,
                ecdh_pubkey: Public([0; 32]),
                runtime_version: 0,
                last_updated: u64::from(block),
                operator: None,
                attestation_provider,
                confidence_level,
                initial_score: None,
                features: vec![],
            };
            self.write(map_key("PhalaRegistry", "Workers", &pubkey.0), &info);
        }
    }

    fn set_session_state(&mut self, session: &AccountId32, state: PhalaWorkerState) {
        let k = map_key("PhalaComputation", "Sessions", &session.0);
        if let Some(mut s) = self.read::<SessionInfo>(&k) {
            s.state = state;
            self.write(k, &s);
        }
    }

    fn apply_phala_computation(&mut self, e: PhalaComputationEvent) {
        use PhalaWorkerState::*;
        match e {
            PhalaComputationEvent::SessionBound { session, worker } => {
                self.write(
                    map_key("PhalaComputation", "WorkerBindings", &worker.0),
                    &session,
                );
                let k = map_key("PhalaComputation", "Sessions", &session.0);
                if !self.map.contains_key(&k) {
                    let info = SessionInfo {
                        state: Ready,
                        ve: 0,
                        v: 0,
                        v_updated_at: 0,
                        cool_down_start: 0,
                    };
                    self.write(k, &info);
                }
            }
            PhalaComputationEvent::SessionUnbound { session, worker } => {
                let k = map_key("PhalaComputation", "WorkerBindings", &worker.0);
                if self.read::<AccountId32>(&k) == Some(session) {
                    self.remove(&k);
                }
            }
            PhalaComputationEvent::WorkerStarted { session, .. } => {
                self.set_session_state(&session, WorkerIdle)
            }
            PhalaComputationEvent::WorkerStopped { session } => {
                self.set_session_state(&session, WorkerCoolingDown)
            }
            PhalaComputationEvent::WorkerEnterUnresponsive { session } => {
                self.set_session_state(&session, WorkerUnresponsive)
            }
            PhalaComputationEvent::WorkerExitUnresponsive { session } => {
                self.set_session_state(&session, WorkerIdle)
            }
            PhalaComputationEvent::WorkerReclaimed { session, .. } => {
                self.set_session_state(&session, Ready)
            }
            _ => {}
        }
    }

    fn apply_phat(&mut self, e: PhalaPhatContractsEvent) {
        let workers_key = |c: &H256| map_key("PhalaPhatContracts", "ClusterWorkers", &c.0);
        match e {
            PhalaPhatContractsEvent::ClusterCreated {
                cluster,
                system_contract,
            } => {
                let info = PhatClusterInfo {
                    owner: AccountId32([0; 32]),
                    system_contract,
                    gas_price: 0,
                };
                self.write(map_key("PhalaPhatContracts", "Clusters", &cluster.0), &info);
                self.write(workers_key(&cluster), &Vec::<Public>::new());
            }
            PhalaPhatContractsEvent::ClusterDestroyed { cluster } => {
                self.remove(&map_key("PhalaPhatContracts", "Clusters", &cluster.0));
                self.remove(&workers_key(&cluster));
            }
            PhalaPhatContractsEvent::WorkerAddedToCluster { worker, cluster } => {
                let k = workers_key(&cluster);
                let mut w: Vec<Public> = self.read(&k).unwrap_or_default();
                if !w.contains(&worker) {
                    w.push(worker);
                    self.write(k, &w);
                }
            }
            PhalaPhatContractsEvent::WorkerRemovedFromCluster { worker, cluster } => {
                let k = workers_key(&cluster);
                if let Some(mut w) = self.read::<Vec<Public>>(&k) {
                    w.retain(|x| *x != worker);
                    self.write(k, &w);
                }
            }
            PhalaPhatContractsEvent::Instantiating {
                contract,
                cluster,
                deployer,
            } => {
                let info = PhatContractInfo {
                    deployer,
                    cluster_id: cluster,
                };
                self.write(
                    map_key("PhalaPhatContracts", "Contracts", &contract.0),
                    &info,
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn k(b: u8) -> String {
        format!("0x{}", hex::encode([b; 32]))
    }

    #[test]
    fn events_fold_into_the_maps_and_keys_page_in_order() {
        let mut r = Registry::default();
        let before = r.clone();
        for w in [3u8, 1, 2] {
            r.apply(
                5,
                &json!({"Gatekeeper": {"WorkerRegistered": {"worker": k(w), "attestation_provider": "dcap", "confidence_level": 1}}}),
            );
        }
        r.apply(
            6,
            &json!({"Gatekeeper": {"WorkerSlashed": {"worker": k(2), "reason": "late"}}}),
        );
        // Registering a slashed worker again keeps the slash.
        r.apply(
            7,
            &json!({"Gatekeeper": {"WorkerRegistered": {"worker": k(2), "attestation_provider": null, "confidence_level": 1}}}),
        );
        let w2: WorkerInfo = r.read(&map_key("Gatekeeper", "Workers", &[2; 32])).unwrap();
        assert_eq!(
            w2.state,
            WorkerState::Slashed {
                reason: b"late".to_vec()
            }
        );
        assert_eq!(w2.registered_at, 7);
        assert_eq!(before.len(), 0, "an earlier version is unchanged");
        // Undoing the journal of the last two events restores the state before them.
        let mut at5 = r.clone();
        at5.take_journal();
        let mut later = r.clone();
        later.take_journal();
        later.apply(
            9,
            &json!({"Gatekeeper": {"WorkerDeregistered": {"worker": k(1)}}}),
        );
        let j = later.take_journal();
        assert_eq!(j.len(), 1);
        later.undo(&j);
        assert_eq!(later, at5);
        // Paging: all three worker keys, in key order, in pages of two.
        let prefix = crate::chain::storage_key("Gatekeeper", "Workers");
        let p1 = r.keys_paged(&prefix, 2, None);
        let p2 = r.keys_paged(&prefix, 2, Some(&p1[1]));
        assert_eq!((p1.len(), p2.len()), (2, 1));
        assert!(p1[0] < p1[1] && p1[1] < p2[0]);
        assert!(r.keys_paged(&prefix, 2, Some(&p2[0])).is_empty());
        // Phala: a bound session that stops answering is unresponsive in storage.
        r.apply(
            8,
            &json!({"PhalaComputation": {"SessionBound": {"session": k(9), "worker": k(1)}}}),
        );
        r.apply(
            8,
            &json!({"PhalaComputation": {"WorkerEnterUnresponsive": {"session": k(9)}}}),
        );
        let s: SessionInfo = r
            .read(&map_key("PhalaComputation", "Sessions", &[9; 32]))
            .unwrap();
        assert_eq!(s.state, PhalaWorkerState::WorkerUnresponsive);
        let bound: AccountId32 = r
            .read(&map_key("PhalaComputation", "WorkerBindings", &[1; 32]))
            .unwrap();
        assert_eq!(bound, AccountId32([9; 32]));
    }
}
