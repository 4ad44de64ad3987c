//! Bootstrap from chain storage: a cluster that has applied nothing of a long chain reads the
//! registry pallets' storage maps at one finalized block, commits what they say as
//! `ChainBootstrap` parts (the events that create the same registry), and then follows events
//! from the next block (docs/chain.md §4.1).
//!
//! The pure part lives here: which maps each profile reads and in which order ([`maps`]), what
//! one storage entry means ([`entry_events`]) and how entries are cut into parts of bounded size
//! ([`Parts`]). The watcher does the IO.
//!
//! Entries are numbered in a fixed order (map by map, each in storage-key order, which is the
//! order `state_getKeysPaged` answers in), so a new leader that takes over a bootstrap half way
//! reads the same block again and skips the entries the committed progress already counts.

use super::profile::Profile;
use gatekeeper_raft::state::{Bytes32, ChainBootstrapPart, ChainEvent, IgnoredEvent, Scheme};
use subxt::ext::scale_decode::DecodeAsType;

/// Most storage entries in one part.
pub const PART_ENTRIES: u64 = 2000;
/// Most encoded event bytes in one part (a proposal carries at most 1 MiB).
pub const PART_BYTES: usize = 512 << 10;

/// The storage maps a profile's registry lives in, in the order they are read: every map an
/// entry refers to (a cluster's workers, a session's worker) comes before it.
pub fn maps(profile: Profile) -> &'static [(&'static str, &'static str)] {
    match profile {
        Profile::Gatekeeper => &[
            ("Gatekeeper", "Workers"),
            ("Gatekeeper", "Clusters"),
            ("Gatekeeper", "Contracts"),
        ],
        Profile::Phala => &[
            ("PhalaRegistry", "Workers"),
            ("PhalaPhatContracts", "Clusters"),
            ("PhalaPhatContracts", "ClusterWorkers"),
            ("PhalaPhatContracts", "Contracts"),
            ("PhalaComputation", "WorkerBindings"),
            ("PhalaComputation", "Sessions"),
        ],
    }
}

/// The value shapes each map is decoded as (by field name, against the chain's metadata).
mod values {
    #![allow(unused_imports, dead_code)]
    use subxt::ext::scale_decode::DecodeAsType;

    pub use super::super::profile::fields::Provider;

    #[derive(DecodeAsType, Debug)]
    #[decode_as_type(crate_path = "::subxt::ext::scale_decode")]
    pub enum GkWorkerState {
        Active,
        Slashed { reason: Vec<u8> },
        Deregistered,
    }

    #[derive(DecodeAsType, Debug)]
    #[decode_as_type(crate_path = "::subxt::ext::scale_decode")]
    pub struct GkWorker {
        pub attestation_provider: Option<Provider>,
        pub confidence_level: u8,
        pub state: GkWorkerState,
    }

    #[derive(DecodeAsType, Debug)]
    #[decode_as_type(crate_path = "::subxt::ext::scale_decode")]
    pub struct GkCluster {
        pub workers: Vec<[u8; 32]>,
    }

    #[derive(DecodeAsType, Debug)]
    #[decode_as_type(crate_path = "::subxt::ext::scale_decode")]
    pub struct GkContract {
        pub cluster: [u8; 32],
    }

    #[derive(DecodeAsType, Debug)]
    #[decode_as_type(crate_path = "::subxt::ext::scale_decode")]
    pub struct PhWorker {
        pub attestation_provider: Option<Provider>,
        pub confidence_level: u8,
    }

    #[derive(DecodeAsType, Debug, PartialEq, Eq)]
    #[decode_as_type(crate_path = "::subxt::ext::scale_decode")]
    pub enum PhWorkerState {
        Ready,
        WorkerIdle,
        WorkerUnresponsive,
        WorkerCoolingDown,
    }

    #[derive(DecodeAsType, Debug)]
    #[decode_as_type(crate_path = "::subxt::ext::scale_decode")]
    pub struct PhSession {
        pub state: PhWorkerState,
    }

    #[derive(DecodeAsType, Debug)]
    #[decode_as_type(crate_path = "::subxt::ext::scale_decode")]
    pub struct PhContract {
        pub cluster_id: [u8; 32],
    }
}

use values::*;

/// Something that decodes one storage value into a type (subxt's value, or a test's).
pub trait ValueDecoder {
    /// Decodes the value as `T`; the error says what did not match.
    fn decode<T: DecodeAsType>(&self) -> Result<T, String>;
}

impl<V: DecodeAsType> ValueDecoder for subxt::storage::StorageValue<'_, V> {
    fn decode<T: DecodeAsType>(&self) -> Result<T, String> {
        self.decode_as::<T>().map_err(|e| e.to_string())
    }
}

/// What the storage entry `key → value` of map `(pallet, item)` says, as registry events.
/// `Err`: the value does not have the expected shape (the entry is reported and skipped).
pub fn entry_events<D: ValueDecoder>(
    pallet: &str,
    item: &str,
    key: [u8; 32],
    value: &D,
) -> Result<Vec<ChainEvent>, String> {
    let k = Bytes32(key);
    let b = Bytes32;
    Ok(match (pallet, item) {
        ("Gatekeeper", "Workers") => {
            let w: GkWorker = value.decode()?;
            let mut out = vec![ChainEvent::WorkerRegistered {
                worker: k,
                attestation_provider: super::profile::provider(w.attestation_provider),
                confidence_level: w.confidence_level,
            }];
            match w.state {
                GkWorkerState::Active => {}
                GkWorkerState::Slashed { reason } => out.push(ChainEvent::WorkerSlashed {
                    worker: k,
                    reason: super::profile::text(&reason),
                }),
                GkWorkerState::Deregistered => {
                    out.push(ChainEvent::WorkerDeregistered { worker: k })
                }
            }
            out
        }
        ("Gatekeeper", "Clusters") => vec![ChainEvent::ClusterCreated {
            cluster: k,
            workers: value
                .decode::<GkCluster>()?
                .workers
                .into_iter()
                .map(b)
                .collect(),
            scheme: Scheme::Native,
        }],
        ("Gatekeeper", "Contracts") => vec![ChainEvent::ContractInstantiated {
            contract: k,
            cluster: b(value.decode::<GkContract>()?.cluster),
        }],
        ("PhalaRegistry", "Workers") => {
            let w: PhWorker = value.decode()?;
            vec![ChainEvent::WorkerRegistered {
                worker: k,
                attestation_provider: super::profile::provider(w.attestation_provider),
                confidence_level: w.confidence_level,
            }]
        }
        ("PhalaPhatContracts", "Clusters") => vec![ChainEvent::ClusterCreated {
            cluster: k,
            workers: vec![],
            scheme: Scheme::Phala,
        }],
        ("PhalaPhatContracts", "ClusterWorkers") => value
            .decode::<Vec<[u8; 32]>>()?
            .into_iter()
            .map(|w| ChainEvent::WorkerAddedToCluster {
                worker: b(w),
                cluster: k,
            })
            .collect(),
        ("PhalaPhatContracts", "Contracts") => vec![ChainEvent::ContractInstantiated {
            contract: k,
            cluster: b(value.decode::<PhContract>()?.cluster_id),
        }],
        ("PhalaComputation", "WorkerBindings") => vec![ChainEvent::SessionBound {
            session: b(value.decode::<[u8; 32]>()?),
            worker: k,
        }],
        ("PhalaComputation", "Sessions") => {
            if value.decode::<PhSession>()?.state == PhWorkerState::WorkerUnresponsive {
                vec![ChainEvent::SessionUnresponsive { session: k }]
            } else {
                vec![]
            }
        }
        (p, i) => return Err(format!("{p}.{i} is not a registry map")),
    })
}

/// Cuts storage entries into `ChainBootstrap` parts of at most [`PART_ENTRIES`] entries and
/// [`PART_BYTES`] event bytes.
pub struct Parts {
    genesis_hash: Bytes32,
    block: u64,
    block_hash: Bytes32,
    /// Entries before the part being filled.
    offset: u64,
    current: ChainBootstrapPart,
    bytes: usize,
}

impl Parts {
    /// Parts of the bootstrap at `block`, the first starting at entry `offset`.
    pub fn new(genesis_hash: Bytes32, block: u64, block_hash: Bytes32, offset: u64) -> Parts {
        Parts {
            genesis_hash,
            block,
            block_hash,
            offset,
            current: Self::empty(genesis_hash, block, block_hash, offset),
            bytes: 0,
        }
    }

    fn empty(
        genesis_hash: Bytes32,
        block: u64,
        block_hash: Bytes32,
        offset: u64,
    ) -> ChainBootstrapPart {
        ChainBootstrapPart {
            genesis_hash,
            block,
            block_hash,
            offset,
            entries: 0,
            events: vec![],
            undecodable: vec![],
            last: false,
        }
    }

    /// Adds the next entry: its events, or why it did not decode (`name`: `Pallet.Item`).
    /// Answers a full part when this entry filled one.
    pub fn push(
        &mut self,
        name: &str,
        events: Result<Vec<ChainEvent>, String>,
    ) -> Option<ChainBootstrapPart> {
        let index = self.offset + self.current.entries;
        match events {
            Ok(events) => {
                self.bytes += events
                    .iter()
                    .map(|e| serde_json::to_vec(e).map_or(0, |v| v.len() + 1))
                    .sum::<usize>();
                self.current.events.extend(events);
            }
            Err(reason) => {
                self.bytes += reason.len() + name.len() + 64;
                self.current.undecodable.push(IgnoredEvent {
                    block: self.block,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    name: format!("storage {name}"),
                    reason,
                });
            }
        }
        self.current.entries += 1;
        if self.current.entries >= PART_ENTRIES || self.bytes >= PART_BYTES {
            Some(self.take())
        } else {
            None
        }
    }

    fn take(&mut self) -> ChainBootstrapPart {
        self.offset += self.current.entries;
        self.bytes = 0;
        let next = Self::empty(self.genesis_hash, self.block, self.block_hash, self.offset);
        std::mem::replace(&mut self.current, next)
    }

    /// The last part (possibly without entries): it ends the bootstrap.
    pub fn finish(mut self) -> ChainBootstrapPart {
        let mut last = self.take();
        last.last = true;
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parity_scale_codec::Encode;
    use scale_info::{PortableRegistry, Registry, TypeInfo};

    /// A value SCALE-encoded from a type with its own type info (the way a chain describes it).
    struct Scale {
        bytes: Vec<u8>,
        ty: u32,
        types: PortableRegistry,
    }

    fn scale<T: Encode + TypeInfo + 'static>(v: &T) -> Scale {
        let mut r = Registry::new();
        let ty = r.register_type(&scale_info::meta_type::<T>()).id;
        Scale {
            bytes: v.encode(),
            ty,
            types: r.into(),
        }
    }

    impl ValueDecoder for Scale {
        fn decode<T: DecodeAsType>(&self) -> Result<T, String> {
            T::decode_as_type(&mut &self.bytes[..], self.ty, &self.types).map_err(|e| e.to_string())
        }
    }

    #[test]
    fn each_storage_entry_becomes_the_events_that_create_it() {
        use devchain::runtime::{AccountId32, AttestationProvider, Public, H256};
        use devchain::storage::*;
        let slashed = WorkerInfo {
            attestation_provider: Some(AttestationProvider::Dcap),
            confidence_level: 2,
            registered_at: 7,
            state: WorkerState::Slashed {
                reason: b"late".to_vec(),
            },
        };
        let ev = entry_events("Gatekeeper", "Workers", [1; 32], &scale(&slashed)).unwrap();
        assert_eq!(
            ev,
            vec![
                ChainEvent::WorkerRegistered {
                    worker: Bytes32([1; 32]),
                    attestation_provider: "dcap".into(),
                    confidence_level: 2
                },
                ChainEvent::WorkerSlashed {
                    worker: Bytes32([1; 32]),
                    reason: "late".into()
                }
            ]
        );
        let cluster = ClusterInfo {
            workers: vec![Public([1; 32])],
            created_at: 3,
        };
        assert_eq!(
            entry_events("Gatekeeper", "Clusters", [9; 32], &scale(&cluster)).unwrap(),
            vec![ChainEvent::ClusterCreated {
                cluster: Bytes32([9; 32]),
                workers: vec![Bytes32([1; 32])],
                scheme: Scheme::Native
            }]
        );
        // Phala: an unresponsive session, a binding, cluster workers.
        let session = SessionInfo {
            state: PhalaWorkerState::WorkerUnresponsive,
            ve: 1,
            v: 1,
            v_updated_at: 0,
            cool_down_start: 0,
        };
        assert_eq!(
            entry_events("PhalaComputation", "Sessions", [5; 32], &scale(&session)).unwrap(),
            vec![ChainEvent::SessionUnresponsive {
                session: Bytes32([5; 32])
            }]
        );
        let ready = SessionInfo {
            state: PhalaWorkerState::Ready,
            ..session
        };
        assert!(
            entry_events("PhalaComputation", "Sessions", [5; 32], &scale(&ready))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            entry_events(
                "PhalaComputation",
                "WorkerBindings",
                [1; 32],
                &scale(&AccountId32([5; 32]))
            )
            .unwrap(),
            vec![ChainEvent::SessionBound {
                session: Bytes32([5; 32]),
                worker: Bytes32([1; 32])
            }]
        );
        let workers = vec![Public([1; 32]), Public([2; 32])];
        assert_eq!(
            entry_events(
                "PhalaPhatContracts",
                "ClusterWorkers",
                [9; 32],
                &scale(&workers)
            )
            .unwrap()
            .len(),
            2
        );
        let contract = PhatContractInfo {
            deployer: AccountId32([0; 32]),
            cluster_id: H256([9; 32]),
        };
        assert_eq!(
            entry_events(
                "PhalaPhatContracts",
                "Contracts",
                [4; 32],
                &scale(&contract)
            )
            .unwrap(),
            vec![ChainEvent::ContractInstantiated {
                contract: Bytes32([4; 32]),
                cluster: Bytes32([9; 32])
            }]
        );
        // A value of another shape is an error naming what did not match, not a guess.
        let e = entry_events("Gatekeeper", "Workers", [1; 32], &scale(&7u32)).unwrap_err();
        assert!(!e.is_empty());
        assert!(entry_events("Gatekeeper", "Nothing", [1; 32], &scale(&7u32)).is_err());
        // Every map of both profiles is one `entry_events` knows.
        for p in [Profile::Gatekeeper, Profile::Phala] {
            for (pallet, item) in maps(p) {
                let e = entry_events(pallet, item, [0; 32], &scale(&()));
                assert!(
                    !e.as_ref().is_err_and(|e| e.contains("not a registry map")),
                    "{pallet}.{item}"
                );
            }
        }
    }

    #[test]
    fn parts_are_bounded_numbered_and_the_last_one_ends_the_bootstrap() {
        let reg = |w: u64| ChainEvent::WorkerRegistered {
            worker: Bytes32([w as u8; 32]),
            attestation_provider: "root".into(),
            confidence_level: 1,
        };
        let mut parts = Parts::new(Bytes32([0; 32]), 10, Bytes32([1; 32]), 5);
        let mut full = vec![];
        for i in 0..PART_ENTRIES + 3 {
            let e = if i == 1 {
                Err("bad shape".to_string())
            } else {
                Ok(vec![reg(i)])
            };
            full.extend(parts.push("Gatekeeper.Workers", e));
        }
        assert_eq!(full.len(), 1);
        let p = &full[0];
        assert_eq!((p.offset, p.entries, p.last), (5, PART_ENTRIES, false));
        assert_eq!(p.events.len() as u64, PART_ENTRIES - 1);
        assert_eq!(p.undecodable[0].index, 6);
        let last = parts.finish();
        assert_eq!(
            (last.offset, last.entries, last.last),
            (5 + PART_ENTRIES, 3, true)
        );
        // Large events cut parts by bytes as well.
        let mut parts = Parts::new(Bytes32([0; 32]), 10, Bytes32([1; 32]), 0);
        let big = ChainEvent::WorkerSlashed {
            worker: Bytes32([1; 32]),
            reason: "x".repeat(100_000),
        };
        let cut = (0..10)
            .filter_map(|_| parts.push("Gatekeeper.Workers", Ok(vec![big.clone()])))
            .next()
            .unwrap();
        assert!(cut.entries < 10);
        assert!(serde_json::to_vec(&cut).unwrap().len() < (1 << 20));
        // Nothing to read: one empty last part.
        let none = Parts::new(Bytes32([0; 32]), 10, Bytes32([1; 32]), 0).finish();
        assert_eq!((none.entries, none.last), (0, true));
    }
}
