//! Sealed blobs: secrets at rest under an enclave sealing key.
//!
//! ```text
//! blob = version (1 byte, 0x01) || key_id (8 bytes) || nonce (24 bytes) || ciphertext || tag (16)
//! key_id = SHA-256("gatekeeper/v1/sealing-key-id" || sealing key)[0..8]
//! AEAD   = XChaCha20-Poly1305 (random 24-byte nonce: safe for any number of blobs per key)
//! AAD    = version || key_id || nonce || Canonical("gatekeeper/v1/sealed", label)
//! ```
//!
//! The `label` names what the blob holds (e.g. `"node-identity"`), so a blob cannot be swapped for
//! another kind of sealed secret. Unknown versions are refused.

use crate::encoding::Canonical;
use crate::error::{fixed, Error, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use core::fmt;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The only sealed-blob version defined.
pub const SEALED_VERSION_1: u8 = 1;
const HEADER: usize = 1 + 8 + 24;
const TAG: usize = 16;

/// A 32-byte sealing key with its 8-byte id. Zeroized on drop.
pub struct SealingKey {
    key: Zeroizing<[u8; 32]>,
    id: [u8; 8],
}

impl SealingKey {
    /// Wraps 32 key bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let key = Zeroizing::new(fixed::<32>("sealing key", b)?);
        let mut h = Sha256::new();
        h.update(b"gatekeeper/v1/sealing-key-id");
        h.update(key.as_ref());
        let id = h.finalize()[..8].try_into().expect("8 of 32 bytes");
        Ok(Self { key, id })
    }

    /// A fresh random key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(k.as_mut());
        Self::from_bytes(k.as_ref()).expect("32 bytes")
    }

    /// The key bytes (to be stored by the enclave's platform sealing).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.key.clone()
    }

    /// The key id written into every blob.
    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    fn aad(&self, nonce: &[u8; 24], label: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(HEADER + 64);
        aad.push(SEALED_VERSION_1);
        aad.extend_from_slice(&self.id);
        aad.extend_from_slice(nonce);
        aad.extend_from_slice(
            &Canonical::new("gatekeeper/v1/sealed")
                .bytes(label.as_bytes())
                .finish(),
        );
        aad
    }

    /// Seals `plaintext` under this key for `label`.
    pub fn seal<R: RngCore + CryptoRng>(
        &self,
        label: &str,
        plaintext: &[u8],
        rng: &mut R,
    ) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let ct = XChaCha20Poly1305::new(self.key.as_ref().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &self.aad(&nonce, label),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail below 256 GiB");
        let mut out = Vec::with_capacity(HEADER + ct.len());
        out.push(SEALED_VERSION_1);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a blob sealed under this key for `label`.
    pub fn open(&self, label: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let Some(&version) = blob.first() else {
            return Err(Error::SealedBlobTruncated(0));
        };
        if version != SEALED_VERSION_1 {
            return Err(Error::UnsupportedSealedVersion(version));
        }
        if blob.len() < HEADER + TAG {
            return Err(Error::SealedBlobTruncated(blob.len()));
        }
        let id: [u8; 8] = blob[1..9].try_into().expect("8 bytes");
        if id != self.id {
            return Err(Error::SealingKeyMismatch(hex::encode(id)));
        }
        let nonce: [u8; 24] = blob[9..HEADER].try_into().expect("24 bytes");
        XChaCha20Poly1305::new(self.key.as_ref().into())
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &blob[HEADER..],
                    aad: &self.aad(&nonce, label),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| Error::SealedBlobOpenFailed)
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingKey(id={})", hex::encode(self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn round_trip_and_refusals() {
        let k = SealingKey::generate(&mut OsRng);
        let blob = k.seal("node-identity", b"identity seed", &mut OsRng);
        assert_eq!(
            k.open("node-identity", &blob).unwrap().as_slice(),
            b"identity seed"
        );
        assert_eq!(
            k.open("other-label", &blob).unwrap_err(),
            Error::SealedBlobOpenFailed
        );

        let other = SealingKey::generate(&mut OsRng);
        assert!(matches!(
            other.open("node-identity", &blob).unwrap_err(),
            Error::SealingKeyMismatch(_)
        ));

        let mut v2 = blob.clone();
        v2[0] = 2;
        assert_eq!(
            k.open("node-identity", &v2).unwrap_err(),
            Error::UnsupportedSealedVersion(2)
        );
        assert_eq!(
            k.open("node-identity", &[]).unwrap_err(),
            Error::SealedBlobTruncated(0)
        );
        assert_eq!(
            k.open("node-identity", &blob[..20]).unwrap_err(),
            Error::SealedBlobTruncated(20)
        );
        for i in 9..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x80;
            assert_eq!(
                k.open("node-identity", &bad).unwrap_err(),
                Error::SealedBlobOpenFailed
            );
        }
    }
}
