//! Event profiles: which pallet events a chain speaks, and how each becomes a [`ChainEvent`]
//! (docs/chain.md is the specification).
//!
//! Events are matched by `(pallet name, event name)` and their fields decoded by name through
//! scale-decode against the chain's own metadata, so a field of an unexpected type (an
//! incompatible runtime upgrade) fails to decode: the event is reported as undecodable and
//! skipped, never guessed at. Events of other names are not the profile's and are ignored.

use gatekeeper_raft::state::{Bytes32, ChainEvent, Scheme};
use subxt::ext::scale_decode::DecodeAsFields;

/// The event vocabulary of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// The `Gatekeeper` pallet (the default; docs/chain.md §2).
    Gatekeeper,
    /// Phala's own pallets: `PhalaRegistry`, `PhalaComputation`, `PhalaPhatContracts`.
    Phala,
}

impl Profile {
    /// The profile's name as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Gatekeeper => "gatekeeper",
            Profile::Phala => "phala",
        }
    }
}

/// What one event record means to the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not an event of the profile (or one with no effect, such as a reclaim without a slash).
    Ignored,
    /// The profile's event.
    Event(ChainEvent),
    /// An event of the profile whose fields do not have the specified shape: the reason.
    Undecodable(String),
}

/// The field shapes each profile expects (decoded by field name).
pub(super) mod fields {
    // The derive's generated code imports the crate path once per type.
    #![allow(unused_imports, dead_code)]
    use subxt::ext::scale_decode::DecodeAsType;

    macro_rules! event_struct {
        ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
            #[derive(DecodeAsType, Debug)]
            #[decode_as_type(crate_path = "::subxt::ext::scale_decode")]
            pub struct $name { $(pub $field: $ty),* }
        };
    }

    /// `AttestationProvider` (Phala's and the Gatekeeper pallet's).
    #[derive(DecodeAsType, Clone, Copy, Debug)]
    #[decode_as_type(crate_path = "::subxt::ext::scale_decode")]
    pub enum Provider {
        Root,
        Ias,
        Dcap,
    }

    pub type Key = [u8; 32];

    // The `gatekeeper` profile.
    event_struct!(GkWorkerRegistered { worker: Key, attestation_provider: Option<Provider>, confidence_level: u8 });
    event_struct!(GkWorker { worker: Key });
    event_struct!(GkWorkerSlashed { worker: Key, reason: Vec<u8> });
    event_struct!(GkRotation { rotation_id: u64 });
    event_struct!(GkClusterCreated { cluster: Key, workers: Vec<Key> });
    event_struct!(GkWorkerCluster {
        worker: Key,
        cluster: Key
    });
    event_struct!(GkContract {
        contract: Key,
        cluster: Key
    });

    // The `phala` profile.
    event_struct!(PhWorker { pubkey: Key, attestation_provider: Option<Provider>, confidence_level: u8 });
    event_struct!(PhSessionWorker {
        session: Key,
        worker: Key
    });
    event_struct!(PhSession { session: Key });
    event_struct!(PhReclaimed {
        session: Key,
        original_stake: u128,
        slashed: u128
    });
    event_struct!(PhClusterCreated {
        cluster: Key,
        system_contract: Key
    });
    event_struct!(PhWorkerCluster {
        worker: Key,
        cluster: Key
    });
    event_struct!(PhInstantiating {
        contract: Key,
        cluster: Key
    });
}

use fields::*;

pub(super) fn provider(p: Option<Provider>) -> String {
    match p {
        None => "none",
        Some(Provider::Root) => "root",
        Some(Provider::Ias) => "ias",
        Some(Provider::Dcap) => "dcap",
    }
    .to_string()
}

/// Longest reason kept from a `WorkerSlashed` event (bytes; the spec bounds it at 128).
const MAX_REASON: usize = 256;

pub(super) fn text(v: &[u8]) -> String {
    let v = &v[..v.len().min(MAX_REASON)];
    String::from_utf8_lossy(v).into_owned()
}

/// Decodes one event record under `profile`. `fields` decodes the record's fields into any
/// `DecodeAsFields` type (with subxt: `|| event.decode_fields_unchecked_as::<T>()`).
pub fn decode<F>(profile: Profile, pallet: &str, event: &str, fields: F) -> Decoded
where
    F: FieldDecoder,
{
    let b = Bytes32;
    macro_rules! get {
        ($t:ty) => {
            match fields.decode::<$t>() {
                Ok(v) => v,
                Err(e) => return Decoded::Undecodable(e),
            }
        };
    }
    let ev = match (profile, pallet, event) {
        (Profile::Gatekeeper, "Gatekeeper", "WorkerRegistered") => {
            let f = get!(GkWorkerRegistered);
            ChainEvent::WorkerRegistered {
                worker: b(f.worker),
                attestation_provider: provider(f.attestation_provider),
                confidence_level: f.confidence_level,
            }
        }
        (Profile::Gatekeeper, "Gatekeeper", "WorkerDeregistered") => {
            ChainEvent::WorkerDeregistered {
                worker: b(get!(GkWorker).worker),
            }
        }
        (Profile::Gatekeeper, "Gatekeeper", "WorkerSlashed") => {
            let f = get!(GkWorkerSlashed);
            ChainEvent::WorkerSlashed {
                worker: b(f.worker),
                reason: text(&f.reason),
            }
        }
        (Profile::Gatekeeper, "Gatekeeper", "MasterKeyRotationRequested") => {
            ChainEvent::MasterKeyRotationRequested {
                rotation_id: format!("chain:{}", get!(GkRotation).rotation_id),
            }
        }
        (Profile::Gatekeeper, "Gatekeeper", "ClusterCreated") => {
            let f = get!(GkClusterCreated);
            ChainEvent::ClusterCreated {
                cluster: b(f.cluster),
                workers: f.workers.into_iter().map(b).collect(),
                scheme: Scheme::Native,
            }
        }
        (Profile::Gatekeeper, "Gatekeeper", "WorkerAddedToCluster") => {
            let f = get!(GkWorkerCluster);
            ChainEvent::WorkerAddedToCluster {
                worker: b(f.worker),
                cluster: b(f.cluster),
            }
        }
        (Profile::Gatekeeper, "Gatekeeper", "WorkerRemovedFromCluster") => {
            let f = get!(GkWorkerCluster);
            ChainEvent::WorkerRemovedFromCluster {
                worker: b(f.worker),
                cluster: b(f.cluster),
            }
        }
        (Profile::Gatekeeper, "Gatekeeper", "ContractInstantiated") => {
            let f = get!(GkContract);
            ChainEvent::ContractInstantiated {
                contract: b(f.contract),
                cluster: b(f.cluster),
            }
        }
        (Profile::Phala, "PhalaRegistry", "WorkerAdded" | "WorkerUpdated") => {
            let f = get!(PhWorker);
            ChainEvent::WorkerRegistered {
                worker: b(f.pubkey),
                attestation_provider: provider(f.attestation_provider),
                confidence_level: f.confidence_level,
            }
        }
        (Profile::Phala, "PhalaComputation", "SessionBound") => {
            let f = get!(PhSessionWorker);
            ChainEvent::SessionBound {
                session: b(f.session),
                worker: b(f.worker),
            }
        }
        (Profile::Phala, "PhalaComputation", "SessionUnbound") => {
            let f = get!(PhSessionWorker);
            ChainEvent::SessionUnbound {
                session: b(f.session),
                worker: b(f.worker),
            }
        }
        (Profile::Phala, "PhalaComputation", "WorkerEnterUnresponsive") => {
            ChainEvent::SessionUnresponsive {
                session: b(get!(PhSession).session),
            }
        }
        (Profile::Phala, "PhalaComputation", "WorkerExitUnresponsive") => {
            ChainEvent::SessionResponsive {
                session: b(get!(PhSession).session),
            }
        }
        (Profile::Phala, "PhalaComputation", "WorkerReclaimed") => {
            let f = get!(PhReclaimed);
            if f.slashed == 0 {
                return Decoded::Ignored;
            }
            ChainEvent::SessionSlashed {
                session: b(f.session),
                reason: format!(
                    "{} of {} stake slashed on reclaim",
                    f.slashed, f.original_stake
                ),
            }
        }
        (Profile::Phala, "PhalaPhatContracts", "ClusterCreated") => {
            let f = get!(PhClusterCreated);
            ChainEvent::ClusterCreated {
                cluster: b(f.cluster),
                workers: vec![],
                scheme: Scheme::Phala,
            }
        }
        (Profile::Phala, "PhalaPhatContracts", "WorkerAddedToCluster") => {
            let f = get!(PhWorkerCluster);
            ChainEvent::WorkerAddedToCluster {
                worker: b(f.worker),
                cluster: b(f.cluster),
            }
        }
        (Profile::Phala, "PhalaPhatContracts", "WorkerRemovedFromCluster") => {
            let f = get!(PhWorkerCluster);
            ChainEvent::WorkerRemovedFromCluster {
                worker: b(f.worker),
                cluster: b(f.cluster),
            }
        }
        // Workers deploying a contract need its key at `Instantiating`; `Instantiated` follows
        // once they reported its public key and changes nothing here.
        (Profile::Phala, "PhalaPhatContracts", "Instantiating") => {
            let f = get!(PhInstantiating);
            ChainEvent::ContractInstantiated {
                contract: b(f.contract),
                cluster: b(f.cluster),
            }
        }
        _ => return Decoded::Ignored,
    };
    Decoded::Event(ev)
}

/// Something that decodes an event record's fields into a type (subxt's event, or a test's).
pub trait FieldDecoder {
    /// Decodes the fields as `T`; the error says which field failed and why.
    fn decode<T: DecodeAsFields>(&self) -> Result<T, String>;
}

impl<C: subxt::Config> FieldDecoder for &subxt::events::Event<'_, C> {
    fn decode<T: DecodeAsFields>(&self) -> Result<T, String> {
        self.decode_fields_unchecked_as::<T>()
            .map_err(|e| e.to_string())
    }
}
