//! The dev chain's runtime as the outside sees it: the SCALE types of its events, the outer
//! `RuntimeEvent` enum, and the frame-metadata V15 that describes them (built with scale-info,
//! exactly as a FRAME runtime's `construct_runtime!` would).
//!
//! Pallets and their indices:
//!
//! | index | pallet | events |
//! |---|---|---|
//! | 0 | `System` | `ExtrinsicSuccess` (one per extrinsic, as on a real chain) |
//! | 50 | `Gatekeeper` | the `gatekeeper` profile (docs/chain.md) |
//! | 86 | `PhalaRegistry` | Phala's registry pallet events |
//! | 87 | `PhalaComputation` | Phala's computation pallet events |
//! | 93 | `PhalaPhatContracts` | Phala's phat-contracts pallet events |
//!
//! The Phala pallets carry the field names and types of `phala-blockchain`'s
//! `pallets/phala/src/{registry.rs, compute/computation.rs, phat.rs}` and the indices of the
//! Phala runtime's `construct_runtime!`.
//!
//! With [`Shapes::Broken`] the `Gatekeeper` pallet describes (and emits) three events with other
//! field types than the specification: the shape a watcher sees after an incompatible runtime
//! upgrade. Tests use it to check that such events are skipped and reported.

#![allow(non_camel_case_types)] // FRAME call variants are snake_case.

use crate::storage::pallet_storage;
use frame_metadata::v15::{
    CustomMetadata, ExtrinsicMetadata, OuterEnums, PalletCallMetadata, PalletEventMetadata,
    PalletMetadata, PalletStorageMetadata, RuntimeMetadataV15, StorageEntryMetadata,
    StorageEntryModifier, StorageEntryType,
};
use frame_metadata::RuntimeMetadataPrefixed;
use parity_scale_codec::{Decode, Encode};
use scale_info::{meta_type, TypeInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

macro_rules! bytes32 {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, TypeInfo)]
        pub struct $name(pub [u8; 32]);

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "0x{}", hex::encode(self.0))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&format!("0x{}", hex::encode(self.0)))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                parse_bytes32(&s).map($name).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                parse_bytes32(s).map($name)
            }
        }
    };
}

/// Parses 32 bytes of hex, with or without `0x`.
pub fn parse_bytes32(s: &str) -> Result<[u8; 32], String> {
    let h = s.strip_prefix("0x").unwrap_or(s);
    let v = hex::decode(h).map_err(|e| format!("{s:?} is not hex: {e}"))?;
    v.try_into()
        .map_err(|v: Vec<u8>| format!("{s:?} is {} bytes, 32 expected", v.len()))
}

bytes32!(
    /// An sr25519 public key (`sp_core::sr25519::Public`, Phala's `WorkerPublicKey`).
    Public
);
bytes32!(
    /// A 256-bit hash or id (`H256`: cluster and contract ids).
    H256
);
bytes32!(
    /// An account (`AccountId32`: Phala's computing sessions).
    AccountId32
);

/// UTF-8 text carried as bytes (`BoundedVec<u8, _>` on chain); JSON strings in and out.
mod text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// How a worker's attestation was checked on chain (Phala's `AttestationProvider`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, TypeInfo, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttestationProvider {
    /// Registered by governance (root).
    #[codec(index = 0)]
    Root,
    /// Intel IAS (EPID).
    #[codec(index = 1)]
    Ias,
    /// Intel DCAP.
    #[codec(index = 2)]
    Dcap,
}

// ------------------------------------------------------------------------------------------
// System

/// `frame_system::Phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum Phase {
    /// Applying extrinsic `n`.
    #[codec(index = 0)]
    ApplyExtrinsic(u32),
    /// Finalizing the block.
    #[codec(index = 1)]
    Finalization,
    /// Initializing the block.
    #[codec(index = 2)]
    Initialization,
}

/// `sp_weights::Weight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub struct Weight {
    /// Computation time.
    #[codec(compact)]
    pub ref_time: u64,
    /// Proof size.
    #[codec(compact)]
    pub proof_size: u64,
}

/// `frame_support::dispatch::DispatchClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum DispatchClass {
    /// Normal.
    Normal,
    /// Operational.
    Operational,
    /// Mandatory (inherents).
    Mandatory,
}

/// `frame_support::dispatch::Pays`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum Pays {
    /// Fee paid.
    Yes,
    /// No fee.
    No,
}

/// `frame_support::dispatch::DispatchInfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub struct DispatchInfo {
    /// Weight.
    pub weight: Weight,
    /// Class.
    pub class: DispatchClass,
    /// Fee.
    pub pays_fee: Pays,
}

/// `frame_system::Event` (the part the dev chain emits).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum SystemEvent {
    /// An extrinsic completed successfully.
    #[codec(index = 0)]
    ExtrinsicSuccess {
        /// Its dispatch info.
        dispatch_info: DispatchInfo,
    },
}

/// `frame_system::Call` (the part the metadata describes).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum SystemCall {
    /// Make some on-chain remark.
    #[codec(index = 0)]
    remark {
        /// The remark.
        remark: Vec<u8>,
    },
}

/// `frame_system::Error` (the part the metadata describes).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum SystemError {
    /// The name of specification does not match between the current runtime and the new one.
    #[codec(index = 0)]
    InvalidSpecName,
}

// ------------------------------------------------------------------------------------------
// Gatekeeper (the `gatekeeper` profile; docs/chain.md is its specification)

/// The `Gatekeeper` pallet's events: the specification a FRAME pallet implements.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo, Serialize, Deserialize)]
pub enum GatekeeperEvent {
    /// A worker may receive keys (again).
    #[codec(index = 0)]
    WorkerRegistered {
        /// The worker's sr25519 key.
        worker: Public,
        /// How its attestation was verified (None: registered without attestation).
        attestation_provider: Option<AttestationProvider>,
        /// Confidence level of the attestation (1 best … 5; 128 root).
        confidence_level: u8,
    },
    /// A worker left; it is refused keys.
    #[codec(index = 1)]
    WorkerDeregistered {
        /// The worker.
        worker: Public,
    },
    /// A worker was slashed; it is refused keys.
    #[codec(index = 2)]
    WorkerSlashed {
        /// The worker.
        worker: Public,
        /// Why (UTF-8, at most 128 bytes on chain).
        #[serde(with = "text")]
        reason: Vec<u8>,
    },
    /// Governance asks for a master-key rotation.
    #[codec(index = 3)]
    MasterKeyRotationRequested {
        /// Increasing id; one rotation per id.
        rotation_id: u64,
    },
    /// A compute cluster was created with its initial workers.
    #[codec(index = 4)]
    ClusterCreated {
        /// Cluster id.
        cluster: H256,
        /// Initial workers.
        workers: Vec<Public>,
    },
    /// A worker joined a cluster.
    #[codec(index = 5)]
    WorkerAddedToCluster {
        /// The worker.
        worker: Public,
        /// The cluster.
        cluster: H256,
    },
    /// A worker left a cluster.
    #[codec(index = 6)]
    WorkerRemovedFromCluster {
        /// The worker.
        worker: Public,
        /// The cluster.
        cluster: H256,
    },
    /// A contract was instantiated on a cluster.
    #[codec(index = 7)]
    ContractInstantiated {
        /// Contract id.
        contract: H256,
        /// Its cluster.
        cluster: H256,
    },
}

/// The `Gatekeeper` pallet after an incompatible change: same event names and indices, three of
/// them with other field types ([`Shapes::Broken`]).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo, Serialize, Deserialize)]
pub enum GatekeeperEventBroken {
    /// As specified.
    #[codec(index = 0)]
    WorkerRegistered {
        /// The worker.
        worker: Public,
        /// Provider.
        attestation_provider: Option<AttestationProvider>,
        /// Level.
        confidence_level: u8,
    },
    /// As specified.
    #[codec(index = 1)]
    WorkerDeregistered {
        /// The worker.
        worker: Public,
    },
    /// Broken: `worker` is a `u32` index and `reason` a `u64` code.
    #[codec(index = 2)]
    WorkerSlashed {
        /// Not a key.
        worker: u32,
        /// Not text.
        reason: u64,
    },
    /// Broken: the id is text.
    #[codec(index = 3)]
    MasterKeyRotationRequested {
        /// Not a u64.
        #[serde(with = "text")]
        rotation_id: Vec<u8>,
    },
    /// As specified.
    #[codec(index = 4)]
    ClusterCreated {
        /// Cluster id.
        cluster: H256,
        /// Initial workers.
        workers: Vec<Public>,
    },
    /// As specified.
    #[codec(index = 5)]
    WorkerAddedToCluster {
        /// The worker.
        worker: Public,
        /// The cluster.
        cluster: H256,
    },
    /// As specified.
    #[codec(index = 6)]
    WorkerRemovedFromCluster {
        /// The worker.
        worker: Public,
        /// The cluster.
        cluster: H256,
    },
    /// Broken: the contract id is a `bool`.
    #[codec(index = 7)]
    ContractInstantiated {
        /// Not an id.
        contract: bool,
        /// Its cluster.
        cluster: H256,
    },
}

// ------------------------------------------------------------------------------------------
// Phala

/// `phala_pallets::registry::Event`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo, Serialize, Deserialize)]
pub enum PhalaRegistryEvent {
    /// A new gatekeeper is enabled.
    #[codec(index = 0)]
    GatekeeperAdded {
        /// Its key.
        pubkey: Public,
    },
    /// A gatekeeper is removed.
    #[codec(index = 1)]
    GatekeeperRemoved {
        /// Its key.
        pubkey: Public,
    },
    /// A worker registered for the first time.
    #[codec(index = 2)]
    WorkerAdded {
        /// Worker key.
        pubkey: Public,
        /// Provider (None: none-attestation enabled).
        attestation_provider: Option<AttestationProvider>,
        /// Confidence level.
        confidence_level: u8,
    },
    /// A registered worker registered again (new attestation).
    #[codec(index = 3)]
    WorkerUpdated {
        /// Worker key.
        pubkey: Public,
        /// Provider.
        attestation_provider: Option<AttestationProvider>,
        /// Confidence level.
        confidence_level: u8,
    },
    /// The gatekeepers rotated the master key.
    #[codec(index = 4)]
    MasterKeyRotated {
        /// Rotation id.
        rotation_id: u64,
        /// New master public key.
        master_pubkey: Public,
    },
    /// A rotation report did not match the lock.
    #[codec(index = 5)]
    MasterKeyRotationFailed {
        /// The lock.
        rotation_lock: Option<u64>,
        /// The gatekeeper's rotation id.
        gatekeeper_rotation_id: u64,
    },
    /// Initial score of a worker.
    #[codec(index = 6)]
    InitialScoreSet {
        /// Worker key.
        pubkey: Public,
        /// Score.
        init_score: u32,
    },
    /// The minimum pRuntime version changed.
    #[codec(index = 7)]
    MinimumPRuntimeVersionChangedTo(u32, u32, u32),
    /// The pRuntime consensus version changed.
    #[codec(index = 8)]
    PRuntimeConsensusVersionChangedTo(u32),
    /// The first gatekeeper launched.
    #[codec(index = 9)]
    GatekeeperLaunched,
}

/// `phala_pallets::compute::computation::Event` (variants 0–8).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo, Serialize, Deserialize)]
pub enum PhalaComputationEvent {
    /// Cool-down period changed.
    #[codec(index = 0)]
    CoolDownExpirationChanged {
        /// Period, seconds.
        period: u64,
    },
    /// A worker started computing.
    #[codec(index = 1)]
    WorkerStarted {
        /// Session.
        session: AccountId32,
        /// Initial V (U64F64 bits).
        init_v: u128,
        /// Initial P.
        init_p: u32,
    },
    /// A worker stopped computing.
    #[codec(index = 2)]
    WorkerStopped {
        /// Session.
        session: AccountId32,
    },
    /// A worker's stake was returned after cool-down.
    #[codec(index = 3)]
    WorkerReclaimed {
        /// Session.
        session: AccountId32,
        /// Stake before.
        original_stake: u128,
        /// Amount slashed.
        slashed: u128,
    },
    /// A session was bound to a worker.
    #[codec(index = 4)]
    SessionBound {
        /// Session.
        session: AccountId32,
        /// Worker.
        worker: Public,
    },
    /// A session was unbound from its worker.
    #[codec(index = 5)]
    SessionUnbound {
        /// Session.
        session: AccountId32,
        /// Worker.
        worker: Public,
    },
    /// The session's worker stopped answering heartbeats.
    #[codec(index = 6)]
    WorkerEnterUnresponsive {
        /// Session.
        session: AccountId32,
    },
    /// The session's worker answers heartbeats again.
    #[codec(index = 7)]
    WorkerExitUnresponsive {
        /// Session.
        session: AccountId32,
    },
    /// A session was settled.
    #[codec(index = 8)]
    SessionSettled {
        /// Session.
        session: AccountId32,
        /// V (U64F64 bits).
        v_bits: u128,
        /// Payout (U64F64 bits).
        payout_bits: u128,
    },
}

/// `phala_pallets::phat::Event`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo, Serialize, Deserialize)]
pub enum PhalaPhatContractsEvent {
    /// A cluster was created.
    #[codec(index = 0)]
    ClusterCreated {
        /// Cluster id.
        cluster: H256,
        /// Its system contract.
        system_contract: H256,
    },
    /// The cluster's public key is known.
    #[codec(index = 1)]
    ClusterPubkeyAvailable {
        /// Cluster.
        cluster: H256,
        /// Key.
        pubkey: Public,
    },
    /// A worker deployed the cluster.
    #[codec(index = 2)]
    ClusterDeployed {
        /// Cluster.
        cluster: H256,
        /// Key.
        pubkey: Public,
        /// Worker.
        worker: Public,
    },
    /// A worker failed to deploy the cluster.
    #[codec(index = 3)]
    ClusterDeploymentFailed {
        /// Cluster.
        cluster: H256,
        /// Worker.
        worker: Public,
    },
    /// A contract is being instantiated (its workers need its key now).
    #[codec(index = 4)]
    Instantiating {
        /// Contract.
        contract: H256,
        /// Cluster.
        cluster: H256,
        /// Deployer.
        deployer: AccountId32,
    },
    /// The contract's public key is known.
    #[codec(index = 5)]
    ContractPubkeyAvailable {
        /// Contract.
        contract: H256,
        /// Cluster.
        cluster: H256,
        /// Key.
        pubkey: Public,
    },
    /// A contract was instantiated.
    #[codec(index = 6)]
    Instantiated {
        /// Contract.
        contract: H256,
        /// Cluster.
        cluster: H256,
        /// Deployer.
        deployer: H256,
    },
    /// A cluster was destroyed.
    #[codec(index = 7)]
    ClusterDestroyed {
        /// Cluster.
        cluster: H256,
    },
    /// Tokens moved into a cluster.
    #[codec(index = 8)]
    Transfered {
        /// Cluster.
        cluster: H256,
        /// Account.
        account: H256,
        /// Amount.
        amount: u128,
    },
    /// A worker was added to a cluster.
    #[codec(index = 9)]
    WorkerAddedToCluster {
        /// Worker.
        worker: Public,
        /// Cluster.
        cluster: H256,
    },
    /// A worker was removed from a cluster.
    #[codec(index = 10)]
    WorkerRemovedFromCluster {
        /// Worker.
        worker: Public,
        /// Cluster.
        cluster: H256,
    },
}

// ------------------------------------------------------------------------------------------
// The runtime

/// Which `Gatekeeper` event shapes the chain uses (fixed when the chain is created).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Shapes {
    /// As docs/chain.md specifies.
    Standard,
    /// Three `Gatekeeper` events with other field types (tests of the watcher's robustness).
    Broken,
}

/// The outer event enum (`RuntimeEvent`), generic over the `Gatekeeper` pallet's event type.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo, Serialize, Deserialize)]
pub enum RuntimeEvent<G> {
    /// `System` (index 0).
    #[codec(index = 0)]
    #[serde(skip)]
    System(SystemEvent),
    /// `Gatekeeper` (index 50).
    #[codec(index = 50)]
    Gatekeeper(G),
    /// `PhalaRegistry` (index 86).
    #[codec(index = 86)]
    PhalaRegistry(PhalaRegistryEvent),
    /// `PhalaComputation` (index 87).
    #[codec(index = 87)]
    PhalaComputation(PhalaComputationEvent),
    /// `PhalaPhatContracts` (index 93).
    #[codec(index = 93)]
    PhalaPhatContracts(PhalaPhatContractsEvent),
}

/// The outer call enum (`RuntimeCall`).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum RuntimeCall {
    /// `System`.
    #[codec(index = 0)]
    System(SystemCall),
}

/// The outer error enum (`RuntimeError`).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum RuntimeError {
    /// `System`.
    #[codec(index = 0)]
    System(SystemError),
}

/// `frame_system::EventRecord`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub struct EventRecord<E> {
    /// When in the block.
    pub phase: Phase,
    /// The event.
    pub event: E,
    /// Topics.
    pub topics: Vec<H256>,
}

/// The runtime marker type (`Runtime`).
#[derive(TypeInfo)]
pub struct Runtime;

/// `sp_runtime::MultiAddress` (the part the metadata describes).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum MultiAddress {
    /// An account id.
    #[codec(index = 0)]
    Id(AccountId32),
}

/// `sp_runtime::MultiSignature` (the part the metadata describes).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, TypeInfo)]
pub enum MultiSignature {
    /// sr25519.
    #[codec(index = 1)]
    Sr25519([u8; 64]),
}

/// The runtime's spec name.
pub const SPEC_NAME: &str = "gatekeeper-devchain";

/// The runtime's spec version for each shape: clients cache metadata per spec version, so
/// every change of the metadata changes it.
pub fn spec_version(shapes: Shapes) -> u32 {
    match shapes {
        Shapes::Standard => 101,
        Shapes::Broken => 9_101,
    }
}

/// An `Encode`d runtime event of either shape.
pub fn encode_event(shapes: Shapes, ev: &serde_json::Value) -> Result<Vec<u8>, String> {
    match shapes {
        Shapes::Standard => {
            serde_json::from_value::<RuntimeEvent<GatekeeperEvent>>(ev.clone()).map(|e| e.encode())
        }
        Shapes::Broken => serde_json::from_value::<RuntimeEvent<GatekeeperEventBroken>>(ev.clone())
            .map(|e| e.encode()),
    }
    .map_err(|e| format!("not an event of this chain: {e}"))
}

fn pallet(
    name: &'static str,
    index: u8,
    event: scale_info::MetaType,
    storage: Option<PalletStorageMetadata>,
    calls: Option<PalletCallMetadata>,
) -> PalletMetadata {
    PalletMetadata {
        name,
        storage,
        calls,
        event: Some(PalletEventMetadata { ty: event }),
        constants: vec![],
        error: None,
        index,
        docs: vec![],
    }
}

fn metadata_for<G: TypeInfo + 'static>() -> RuntimeMetadataPrefixed {
    let system_storage = PalletStorageMetadata {
        prefix: "System",
        entries: vec![
            StorageEntryMetadata {
                name: "Number",
                modifier: StorageEntryModifier::Default,
                ty: StorageEntryType::Plain(meta_type::<u32>()),
                default: vec![0; 4],
                docs: vec![" The current block number being processed."],
            },
            StorageEntryMetadata {
                name: "Events",
                modifier: StorageEntryModifier::Default,
                ty: StorageEntryType::Plain(meta_type::<Vec<EventRecord<RuntimeEvent<G>>>>()),
                default: vec![0],
                docs: vec![" Events deposited for the current block."],
            },
        ],
    };
    let pallets = vec![
        pallet(
            "System",
            0,
            meta_type::<SystemEvent>(),
            Some(system_storage),
            Some(PalletCallMetadata {
                ty: meta_type::<SystemCall>(),
            }),
        ),
        pallet(
            "Gatekeeper",
            50,
            meta_type::<G>(),
            pallet_storage("Gatekeeper"),
            None,
        ),
        pallet(
            "PhalaRegistry",
            86,
            meta_type::<PhalaRegistryEvent>(),
            pallet_storage("PhalaRegistry"),
            None,
        ),
        pallet(
            "PhalaComputation",
            87,
            meta_type::<PhalaComputationEvent>(),
            pallet_storage("PhalaComputation"),
            None,
        ),
        pallet(
            "PhalaPhatContracts",
            93,
            meta_type::<PhalaPhatContractsEvent>(),
            pallet_storage("PhalaPhatContracts"),
            None,
        ),
    ];
    let extrinsic = ExtrinsicMetadata {
        version: 4,
        address_ty: meta_type::<MultiAddress>(),
        call_ty: meta_type::<RuntimeCall>(),
        signature_ty: meta_type::<MultiSignature>(),
        extra_ty: meta_type::<()>(),
        signed_extensions: vec![],
    };
    let outer = OuterEnums {
        call_enum_ty: meta_type::<RuntimeCall>(),
        event_enum_ty: meta_type::<RuntimeEvent<G>>(),
        error_enum_ty: meta_type::<RuntimeError>(),
    };
    RuntimeMetadataV15::new(
        pallets,
        extrinsic,
        meta_type::<Runtime>(),
        vec![],
        outer,
        CustomMetadata {
            map: BTreeMap::new(),
        },
    )
    .into()
}

/// The SCALE-encoded `RuntimeMetadataPrefixed` (V15) of a chain with these shapes.
pub fn metadata_bytes(shapes: Shapes) -> Vec<u8> {
    match shapes {
        Shapes::Standard => metadata_for::<GatekeeperEvent>().encode(),
        Shapes::Broken => metadata_for::<GatekeeperEventBroken>().encode(),
    }
}

/// `sp_version::RuntimeVersion`, SCALE-encoded (what `Core_version` returns).
pub fn runtime_version_bytes(shapes: Shapes) -> Vec<u8> {
    (
        SPEC_NAME.to_string(),
        SPEC_NAME.to_string(),
        1u32,
        spec_version(shapes),
        1u32,
        api_ids(),
        1u32,
        1u8,
    )
        .encode()
}

/// The runtime APIs this runtime claims (`Core` v4, `Metadata` v2), as `(blake2_64(name),
/// version)`.
pub fn api_ids() -> Vec<([u8; 8], u32)> {
    vec![
        (sp_crypto_hashing::blake2_64(b"Core"), 4),
        (sp_crypto_hashing::blake2_64(b"Metadata"), 2),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_v15_and_names_every_pallet() {
        for shapes in [Shapes::Standard, Shapes::Broken] {
            let bytes = metadata_bytes(shapes);
            assert_eq!(&bytes[..4], b"meta");
            assert_eq!(bytes[4], 15, "metadata version byte");
            let text = String::from_utf8_lossy(&bytes);
            for p in [
                "System",
                "Gatekeeper",
                "PhalaRegistry",
                "PhalaComputation",
                "PhalaPhatContracts",
                "WorkerEnterUnresponsive",
                "Instantiating",
            ] {
                assert!(text.contains(p), "{p} missing");
            }
        }
        assert_ne!(
            metadata_bytes(Shapes::Standard),
            metadata_bytes(Shapes::Broken)
        );
    }

    #[test]
    fn events_encode_as_pallet_index_variant_index_fields() {
        let ev = serde_json::json!({"Gatekeeper": {"WorkerDeregistered": {"worker": format!("0x{}", "11".repeat(32))}}});
        let bytes = encode_event(Shapes::Standard, &ev).unwrap();
        let mut want = vec![50, 1];
        want.extend([0x11; 32]);
        assert_eq!(bytes, want);
        // The broken shape of WorkerSlashed: u32 and u64, not a key and text.
        let slash =
            serde_json::json!({"Gatekeeper": {"WorkerSlashed": {"worker": 7, "reason": 9}}});
        let b = encode_event(Shapes::Broken, &slash).unwrap();
        assert_eq!(b, [&[50u8, 2][..], &7u32.encode(), &9u64.encode()].concat());
        assert!(encode_event(Shapes::Standard, &slash).is_err());
        let phala = serde_json::json!({"PhalaComputation": {"WorkerEnterUnresponsive": {"session": format!("0x{}", "22".repeat(32))}}});
        assert_eq!(
            &encode_event(Shapes::Standard, &phala).unwrap()[..2],
            &[87, 6]
        );
    }
}
