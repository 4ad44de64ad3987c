//! Read-only views over the replicated epochs, shared by the keeper, the services and `/metrics`.

use crate::enclave::{Enclave, EnclaveError};
use gatekeeper_raft::state::{
    Bytes32, DealingRecord, EpochRecord, EpochStatus, GatekeeperState, SealedShare,
};
use keyring::envelope::Envelope;
use keyring::shares::{Commitments, DealingContext, WrappedMaster};
use keyring::{GatekeeperId, Sr25519PublicKey};

/// The active epochs of `state`, ascending.
pub fn active_epochs(state: &GatekeeperState) -> Vec<u64> {
    state
        .epochs
        .values()
        .filter(|e| e.status == EpochStatus::Active)
        .map(|e| e.epoch)
        .collect()
}

/// Whether `enclave` holds the master secret of every epoch in `active` (and there is one):
/// what "unsealed" means in `admin status`, `/metrics` and the keeper.
pub fn holds_every(enclave: &dyn Enclave, active: &[u64]) -> bool {
    !active.is_empty() && active.iter().all(|e| enclave.has_master(*e))
}

/// The dealing context of an epoch record.
pub fn dealing_ctx(gk: &Bytes32, e: &EpochRecord) -> Result<DealingContext, EnclaveError> {
    Ok(DealingContext {
        gatekeeper_id: GatekeeperId(gk.0),
        epoch: e.epoch,
        generation: e.dealing.generation,
        master_public_key: Sr25519PublicKey::from_slice(&e.master_public_key.0)?,
    })
}

/// Parses a dealing's commitments.
pub fn commitments(d: &DealingRecord) -> Result<Commitments, EnclaveError> {
    let raw: Vec<Vec<u8>> = d.commitments.iter().map(|c| c.0.to_vec()).collect();
    Ok(Commitments::from_bytes(&raw)?)
}

/// The wrapped master secret of a dealing.
pub fn wrapped(d: &DealingRecord) -> Result<WrappedMaster, EnclaveError> {
    let nonce: [u8; 24] = d
        .wrapped_nonce
        .0
        .as_slice()
        .try_into()
        .map_err(|_| EnclaveError::State("wrapped nonce is not 24 bytes".into()))?;
    Ok(WrappedMaster {
        nonce,
        ciphertext: d.wrapped_ciphertext.0.clone(),
    })
}

/// The envelope of a sealed share record.
pub fn envelope(s: &SealedShare) -> Envelope {
    Envelope {
        version: keyring::envelope::ENVELOPE_VERSION,
        encapped_key: s.encapped_key.0,
        ciphertext: s.ciphertext.0.clone(),
    }
}
