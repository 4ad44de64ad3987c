//! Key and identifier types: sr25519 keys and signatures, X25519 keys, 32-byte ids.
//!
//! Secret-holding types zeroize on drop and print only their public half under `Debug`.

use crate::error::{fixed, Error, Result};
use core::fmt;
use hpke::{kem::X25519HkdfSha256, Deserializable, Kem as _, Serializable};
use rand_core::{CryptoRng, RngCore};
use schnorrkel::{ExpansionMode, MiniSecretKey};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

macro_rules! id32 {
    ($(#[$m:meta])* $name:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Parses exactly 32 bytes.
            pub fn from_slice(b: &[u8]) -> Result<Self> {
                Ok(Self(fixed($what, b)?))
            }
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), hex::encode(self.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
    };
}

id32!(
    /// The id of one Gatekeeper cluster (deployment), fixed at `admin init`.
    GatekeeperId,
    "gatekeeper id"
);
id32!(
    /// The id of a compute cluster (Phala's `ContractClusterId`, an H256).
    ClusterId,
    "cluster id"
);
id32!(
    /// The id of a contract (Phala's `ContractId`, an H256).
    ContractId,
    "contract id"
);

/// An sr25519 public key (compressed Ristretto point), validated on construction.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Sr25519PublicKey([u8; 32]);

impl Sr25519PublicKey {
    /// Parses 32 bytes and checks they decode to a Ristretto point other than the identity
    /// (anyone can forge signatures for the identity point, so it is never a valid key).
    pub fn from_slice(b: &[u8]) -> Result<Self> {
        let bytes: [u8; 32] = fixed("sr25519 public key", b)?;
        if bytes == [0u8; 32] {
            return Err(Error::InvalidPublicKey("sr25519"));
        }
        schnorrkel::PublicKey::from_bytes(&bytes)
            .map_err(|_| Error::InvalidPublicKey("sr25519"))?;
        Ok(Self(bytes))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn from_schnorrkel(pk: &schnorrkel::PublicKey) -> Self {
        Self(pk.to_bytes())
    }

    pub(crate) fn to_schnorrkel(self) -> schnorrkel::PublicKey {
        schnorrkel::PublicKey::from_bytes(&self.0).expect("validated at construction")
    }
}

impl fmt::Debug for Sr25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sr25519PublicKey({})", hex::encode(self.0))
    }
}

impl fmt::Display for Sr25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A 64-byte sr25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// Parses exactly 64 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Self> {
        Ok(Self(fixed("sr25519 signature", b)?))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

/// An sr25519 keypair: a node identity, a cluster signing key, or any derived key.
///
/// It keeps the 32-byte mini-secret it was expanded from (Ed25519 expansion mode, as Substrate's
/// `sr25519::Pair::from_seed`), because that seed is what Gatekeeper hands to workers.
pub struct Sr25519Keypair {
    seed: Zeroizing<[u8; 32]>,
    pair: schnorrkel::Keypair,
}

impl Sr25519Keypair {
    /// Expands a 32-byte mini-secret (Ed25519 mode) into a keypair.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mini = MiniSecretKey::from_bytes(seed).expect("any 32 bytes are a mini secret");
        Self {
            seed: Zeroizing::new(*seed),
            pair: mini.expand_to_keypair(ExpansionMode::Ed25519),
        }
    }

    /// A fresh random keypair.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// The public key.
    pub fn public_key(&self) -> Sr25519PublicKey {
        Sr25519PublicKey::from_schnorrkel(&self.pair.public)
    }

    /// The 32-byte mini-secret (seed). Handle with care: this is the secret.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The expanded 64-byte secret (`key || nonce`), as Phala and Substrate store it.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 64]> {
        Zeroizing::new(self.pair.secret.to_bytes())
    }

    pub(crate) fn schnorrkel(&self) -> &schnorrkel::Keypair {
        &self.pair
    }
}

impl Clone for Sr25519Keypair {
    fn clone(&self) -> Self {
        Self::from_seed(&self.seed)
    }
}

impl fmt::Debug for Sr25519Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sr25519Keypair")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// An X25519 public key: an HPKE recipient.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct X25519PublicKey(pub [u8; 32]);

impl X25519PublicKey {
    /// Parses exactly 32 bytes. Low-order keys parse but are refused when sealing.
    pub fn from_slice(b: &[u8]) -> Result<Self> {
        Ok(Self(fixed("X25519 public key", b)?))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether this is a low-order point (of the curve or its twist): Diffie-Hellman with it
    /// yields the all-zero secret whatever the other side's key, so sealing to it is refused.
    /// Eight times the point is the identity exactly for those points.
    pub fn is_low_order(&self) -> bool {
        use curve25519_dalek::montgomery::MontgomeryPoint;
        use curve25519_dalek::scalar::Scalar;
        (MontgomeryPoint(self.0) * Scalar::from(8u8)) == MontgomeryPoint([0; 32])
    }

    pub(crate) fn to_hpke(self) -> Result<<X25519HkdfSha256 as hpke::Kem>::PublicKey> {
        <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&self.0)
            .map_err(|_| Error::InvalidPublicKey("X25519"))
    }
}

impl fmt::Debug for X25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "X25519PublicKey({})", hex::encode(self.0))
    }
}

/// An X25519 secret key: opens HPKE envelopes sealed to its public key.
pub struct X25519SecretKey {
    sk: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    pk: X25519PublicKey,
}

impl X25519SecretKey {
    /// A fresh random key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let (sk, pk) = X25519HkdfSha256::gen_keypair(rng);
        let pk = X25519PublicKey(pk.to_bytes().into());
        Self { sk, pk }
    }

    /// Loads 32 secret bytes (for instance from a sealed blob).
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(fixed("X25519 secret key", b)?);
        let sk = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(bytes.as_ref())
            .map_err(|_| Error::InvalidSecret("X25519"))?;
        let pk = X25519HkdfSha256::sk_to_pk(&sk);
        Ok(Self {
            sk,
            pk: X25519PublicKey(pk.to_bytes().into()),
        })
    }

    /// The secret bytes, for sealing at rest.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.sk.to_bytes().into())
    }

    /// The public key.
    pub fn public_key(&self) -> X25519PublicKey {
        self.pk
    }

    pub(crate) fn hpke(&self) -> &<X25519HkdfSha256 as hpke::Kem>::PrivateKey {
        &self.sk
    }
}

impl fmt::Debug for X25519SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X25519SecretKey")
            .field("public", &self.pk)
            .finish_non_exhaustive()
    }
}

/// Constant-time equality of two byte strings of equal length (false if lengths differ).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sr25519_public_key_parsing() {
        let good = Sr25519Keypair::from_seed(&[1; 32]).public_key();
        assert_eq!(Sr25519PublicKey::from_slice(good.as_bytes()).unwrap(), good);
        // The identity point: a key anyone could forge signatures for.
        assert_eq!(
            Sr25519PublicKey::from_slice(&[0; 32]).unwrap_err(),
            Error::InvalidPublicKey("sr25519")
        );
        // Not a Ristretto encoding.
        assert_eq!(
            Sr25519PublicKey::from_slice(&[0xff; 32]).unwrap_err(),
            Error::InvalidPublicKey("sr25519")
        );
        assert!(matches!(
            Sr25519PublicKey::from_slice(&[1; 31]).unwrap_err(),
            Error::InvalidLength {
                expected: 32,
                got: 31,
                ..
            }
        ));
    }

    #[test]
    fn x25519_secret_round_trips_and_debug_hides_it() {
        let sk = X25519SecretKey::generate(&mut rand_core::OsRng);
        let back = X25519SecretKey::from_bytes(sk.to_bytes().as_ref()).unwrap();
        assert_eq!(back.public_key(), sk.public_key());
        let dbg = format!("{sk:?} {:?}", Sr25519Keypair::from_seed(&[3; 32]));
        assert!(!dbg.contains(&hex::encode(sk.to_bytes().as_ref())));
        assert!(!dbg.contains(&hex::encode([3u8; 32])));
    }
}
