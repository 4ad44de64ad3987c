//! The master secret of one epoch.

use crate::error::{fixed, Error, Result};
use crate::keys::Sr25519PublicKey;
use core::fmt;
use rand_core::{CryptoRng, RngCore};
use schnorrkel::{ExpansionMode, MiniSecretKey, SecretKey};
use zeroize::Zeroizing;

/// The master secret of one epoch: an sr25519 secret key in its expanded 64-byte form
/// (`key || nonce`, as schnorrkel, Substrate and Phala store it).
///
/// A generated master starts as 32 random bytes expanded in Ed25519 mode (Substrate's
/// `Pair::from_seed`); an imported one (a Phala cluster's) arrives already expanded. Every
/// derivation reads the 64-byte form, so both behave the same from then on.
///
/// Zeroized on drop; `Debug` prints only the public key.
pub struct MasterSecret {
    secret: SecretKey,
    public: Sr25519PublicKey,
}

impl MasterSecret {
    /// Generates a fresh master secret from 32 random bytes.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// Expands a 32-byte seed (Ed25519 mode).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mini = MiniSecretKey::from_bytes(seed).expect("any 32 bytes are a mini secret");
        Self::from_secret(mini.expand(ExpansionMode::Ed25519))
    }

    /// Imports an expanded 64-byte secret (`key || nonce`), e.g. a Phala master key.
    /// Refuses a non-canonical scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let raw: Zeroizing<[u8; 64]> = Zeroizing::new(fixed("master secret", bytes)?);
        let secret =
            SecretKey::from_bytes(raw.as_ref()).map_err(|_| Error::InvalidSecret("master"))?;
        Ok(Self::from_secret(secret))
    }

    fn from_secret(secret: SecretKey) -> Self {
        let public = Sr25519PublicKey::from_schnorrkel(&secret.to_public());
        Self { secret, public }
    }

    /// The 64-byte expanded secret. This is the secret itself: keep it in enclave memory.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 64]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The epoch's master public key.
    pub fn public_key(&self) -> Sr25519PublicKey {
        self.public
    }
}

impl fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterSecret")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_round_trips_and_keeps_public_key() {
        let m = MasterSecret::from_seed(&[7; 32]);
        let back = MasterSecret::from_bytes(m.to_bytes().as_ref()).unwrap();
        assert_eq!(back.public_key(), m.public_key());
    }

    #[test]
    fn import_refuses_wrong_length_and_non_canonical_scalar() {
        assert_eq!(
            MasterSecret::from_bytes(&[1; 63]).unwrap_err(),
            Error::InvalidLength {
                what: "master secret",
                expected: 64,
                got: 63
            }
        );
        // 0xff..ff is above the group order: not a canonical scalar.
        assert_eq!(
            MasterSecret::from_bytes(&[0xff; 64]).unwrap_err(),
            Error::InvalidSecret("master")
        );
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let m = MasterSecret::from_seed(&[9; 32]);
        let dbg = format!("{m:?}");
        let secret_hex = hex::encode(&m.to_bytes()[..32]);
        assert!(!dbg.contains(&secret_hex));
        assert!(dbg.contains(&hex::encode(m.public_key().as_bytes())));
    }
}
