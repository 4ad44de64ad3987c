//! The enclave boundary. Every secret lives behind [`Enclave`]: the node's identity and HPKE
//! keys, the per-epoch master secrets and shares, and every derived key. The rest of the node
//! sees only public keys, sealed blobs, envelopes and signatures.
//!
//! Backends:
//! * [`software::SoftwareEnclave`] — development and tests: keys in process memory, the sealing
//!   key in a 0600 file, dev attestations. Refused in production mode unless explicitly allowed.
//! * `gramine-sgx` — the same key handling with DCAP evidence from Gramine's `/dev/attestation`
//!   pseudo-files and the enclave directory on Gramine's encrypted-files mount
//!   ([`software::EvidenceSource::Gramine`]). Not run on SGX hardware here.

pub mod software;

use keyring::derive::Scheme;
use keyring::envelope::Envelope;
use keyring::shares::{Commitments, DealingContext, WrappedMaster};
use keyring::sign::{KeyTarget, SigningPurpose};
use keyring::{GatekeeperId, Signature, Sr25519PublicKey, X25519PublicKey};

/// Enclave failures. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnclaveError {
    /// A cryptographic check failed.
    #[error(transparent)]
    Keyring(#[from] keyring::Error),
    /// The epoch's master secret is not in memory.
    #[error("epoch {0} is sealed on this node")]
    Sealed(u64),
    /// Sealed storage could not be read or written.
    #[error("sealed storage: {0}")]
    Storage(String),
    /// The operation is not possible in this state.
    #[error("{0}")]
    State(String),
}

/// The public result of dealing an epoch's master secret to a member set.
#[derive(Clone, Debug)]
pub struct DealingPublic {
    /// Master public key.
    pub master_public_key: Sr25519PublicKey,
    /// Cluster signing public key of the epoch.
    pub cluster_signing_public_key: Sr25519PublicKey,
    /// Dealing generation.
    pub generation: u64,
    /// Feldman commitments.
    pub commitments: Commitments,
    /// The wrapped master secret.
    pub wrapped: WrappedMaster,
    /// `(node id, share index, envelope)` per member, sealed to that member's HPKE key.
    pub shares: Vec<(u64, u8, Envelope)>,
}

/// A member as the enclave needs it for dealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// Raft node id.
    pub node_id: u64,
    /// The member enclave's HPKE key.
    pub hpke: X25519PublicKey,
}

/// A derived key sealed for a worker.
#[derive(Clone, Debug)]
pub struct SealedKey {
    /// The derived public key.
    pub public_key: Sr25519PublicKey,
    /// The derived seed, sealed to the request's recipient.
    pub envelope: Envelope,
}

/// The operations every backend provides.
pub trait Enclave: Send + Sync {
    /// The node identity sr25519 public key.
    fn identity_public_key(&self) -> Sr25519PublicKey;
    /// The node's HPKE X25519 public key (shares are sealed to it).
    fn hpke_public_key(&self) -> X25519PublicKey;
    /// Signs `message` with the identity key.
    fn sign_identity(&self, purpose: SigningPurpose, message: &[u8]) -> Signature;
    /// Attestation evidence over `report_data`: (proto `AttestationKind` number, bytes).
    fn evidence(&self, report_data: &[u8; 64]) -> Result<(i32, Vec<u8>), EnclaveError>;
    /// Seals data at rest.
    fn seal(&self, label: &str, data: &[u8]) -> Vec<u8>;
    /// Opens data sealed by [`Enclave::seal`].
    fn unseal(&self, label: &str, blob: &[u8])
        -> Result<zeroize::Zeroizing<Vec<u8>>, EnclaveError>;

    /// Opens an imported 64-byte master secret sealed to this enclave (purpose `master-import`,
    /// gatekeeper id all zero, epoch 0), validates it and keeps it for the genesis dealing.
    /// Returns its public key.
    fn stage_import(&self, envelope: &Envelope) -> Result<Sr25519PublicKey, EnclaveError>;
    /// Creates a new epoch's master secret (or takes the staged import) and deals it. The secret
    /// stays in enclave memory, *pending* until [`Enclave::confirm_epoch`] sees it committed.
    fn create_epoch(
        &self,
        gatekeeper_id: GatekeeperId,
        epoch: u64,
        threshold: usize,
        members: &[Recipient],
        use_staged_import: bool,
    ) -> Result<DealingPublic, EnclaveError>;
    /// Deals a held epoch secret again to a new member set (generation + 1).
    fn redeal(
        &self,
        gatekeeper_id: GatekeeperId,
        epoch: u64,
        generation: u64,
        threshold: usize,
        members: &[Recipient],
    ) -> Result<DealingPublic, EnclaveError>;
    /// Opens this node's share from a committed dealing and verifies it against the commitments.
    fn accept_own_share(
        &self,
        ctx: &DealingContext,
        commitments: &Commitments,
        index: u8,
        envelope: &Envelope,
    ) -> Result<(), EnclaveError>;
    /// This node's share of `(epoch, generation)`, sealed to a peer's HPKE key.
    fn share_for_peer(
        &self,
        ctx: &DealingContext,
        peer_node_id: u64,
        peer_hpke: &X25519PublicKey,
    ) -> Result<(u8, Envelope), EnclaveError>;
    /// Opens a peer's share sealed to this node, verifies it and keeps it. Returns how many
    /// verified shares of that dealing are held.
    fn accept_peer_share(
        &self,
        ctx: &DealingContext,
        commitments: &Commitments,
        index: u8,
        envelope: &Envelope,
    ) -> Result<usize, EnclaveError>;
    /// Rebuilds the master secret from the held shares (own + peers') and keeps it.
    fn reconstruct(
        &self,
        ctx: &DealingContext,
        commitments: &Commitments,
        wrapped: &WrappedMaster,
    ) -> Result<(), EnclaveError>;
    /// Promotes a master dealt here to the epoch's master once the committed record names its
    /// public key, and drops a held master that is not the committed one. True when the epoch's
    /// committed master is held.
    fn confirm_epoch(&self, epoch: u64, master_public_key: &Sr25519PublicKey) -> bool;
    /// Whether the epoch's (confirmed) master secret is in memory.
    fn has_master(&self, epoch: u64) -> bool;
    /// How many verified shares of `(epoch, generation)` are held, and whether one is this node's.
    fn held_shares(&self, epoch: u64, generation: u64) -> (usize, bool);
    /// Derives a key for `target` and seals its seed to `recipient` in the key-delivery context.
    #[allow(clippy::too_many_arguments)]
    fn derive_sealed(
        &self,
        gatekeeper_id: GatekeeperId,
        epoch: u64,
        target: KeyTarget,
        cluster: Option<(keyring::ClusterId, Scheme)>,
        worker: &Sr25519PublicKey,
        recipient: &X25519PublicKey,
    ) -> Result<SealedKey, EnclaveError>;
    /// Signs a key response with the epoch's cluster signing key.
    fn sign_response(&self, epoch: u64, message: &[u8]) -> Result<Signature, EnclaveError>;
    /// The epoch's audit key (`keyring::derive::audit_key`): the same on every node holding the
    /// epoch, so their audit lines correlate.
    fn audit_key(&self, epoch: u64) -> Result<zeroize::Zeroizing<[u8; 32]>, EnclaveError>;
}

/// Signs this node's replicated-command proposals with its enclave identity key (the proof of
/// origin every node checks at apply, `gatekeeper_raft::state::authorize`).
pub struct CommandSigner {
    node_id: u64,
    enclave: std::sync::Arc<dyn Enclave>,
}

impl CommandSigner {
    /// A signer for `node_id` backed by `enclave`.
    pub fn new(node_id: u64, enclave: std::sync::Arc<dyn Enclave>) -> Self {
        Self { node_id, enclave }
    }
}

impl gatekeeper_raft::state::CommandSigner for CommandSigner {
    fn node_id(&self) -> u64 {
        self.node_id
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.enclave
            .sign_identity(keyring::sign::SigningPurpose::Command, message)
            .0
    }
}
