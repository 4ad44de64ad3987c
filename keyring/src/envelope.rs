//! HPKE envelopes (RFC 9180): how secrets travel between enclaves and to workers.
//!
//! Suite: base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305 — through the
//! `hpke` crate. Every envelope has an [`EnvelopeContext`]; its HPKE `info` and AEAD associated
//! data are rebuilt by both sides from that context, so an envelope opened in any other context
//! (another cluster, epoch, purpose, subject or recipient) fails.
//!
//! ```text
//! info = Canonical("gatekeeper/v1/hpke-info", purpose, gatekeeper_id, u64 epoch, recipient)
//! aad  = Canonical("gatekeeper/v1/hpke-aad",  purpose, gatekeeper_id, u64 epoch, subject, recipient)
//! ```

use crate::encoding::Canonical;
use crate::error::{fixed, Error, Result};
use crate::keys::{GatekeeperId, X25519PublicKey, X25519SecretKey};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

/// The only envelope version defined: the suite above.
pub const ENVELOPE_VERSION: u32 = 1;

/// What an envelope carries. Part of every envelope's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purpose {
    /// A derived key delivered to a worker (KeyService).
    KeyDelivery,
    /// A member's share in a committed dealing (Raft log).
    ShareDealing,
    /// A share sent to a peer that is unsealing (PeerService.FetchShare).
    ShareTransfer,
    /// A master secret imported by an operator (AdminService.Init).
    MasterImport,
}

impl Purpose {
    /// The label bound into `info` and AAD.
    pub fn label(self) -> &'static str {
        match self {
            Purpose::KeyDelivery => "key-delivery",
            Purpose::ShareDealing => "share-dealing",
            Purpose::ShareTransfer => "share-transfer",
            Purpose::MasterImport => "master-import",
        }
    }
}

/// The context an envelope is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeContext {
    /// What the envelope carries.
    pub purpose: Purpose,
    /// The Gatekeeper cluster.
    pub gatekeeper_id: GatekeeperId,
    /// The master-key epoch the content belongs to.
    pub epoch: u64,
    /// Purpose-specific subject bytes (see [`subject`]).
    pub subject: Vec<u8>,
    /// The recipient's X25519 public key.
    pub recipient: X25519PublicKey,
}

/// Builders for the `subject` of each purpose.
pub mod subject {
    use crate::encoding::Canonical;

    /// Key delivery: `(kind, subject id, worker public key)`; kind is 1 worker, 2 cluster,
    /// 3 contract (the proto's `KeyKind` numbers).
    pub fn key_delivery(kind: u8, subject: &[u8], worker: &[u8; 32]) -> Vec<u8> {
        Canonical::new("gatekeeper/v1/subject/key-delivery")
            .u64(u64::from(kind))
            .bytes(subject)
            .bytes(worker)
            .finish()
    }

    /// A share in a dealing or transfer: `(generation, share index, holder node id)`.
    pub fn share(generation: u64, index: u8, node_id: u64) -> Vec<u8> {
        Canonical::new("gatekeeper/v1/subject/share")
            .u64(generation)
            .u64(u64::from(index))
            .u64(node_id)
            .finish()
    }

    /// An imported master secret: no further subject.
    pub fn master_import() -> Vec<u8> {
        Canonical::new("gatekeeper/v1/subject/master-import").finish()
    }
}

impl EnvelopeContext {
    /// The HPKE `info` of this context (published so other implementations can check theirs).
    pub fn info(&self) -> Vec<u8> {
        Canonical::new("gatekeeper/v1/hpke-info")
            .bytes(self.purpose.label().as_bytes())
            .bytes(self.gatekeeper_id.as_bytes())
            .u64(self.epoch)
            .bytes(self.recipient.as_bytes())
            .finish()
    }

    /// The AEAD associated data of this context.
    pub fn aad(&self) -> Vec<u8> {
        Canonical::new("gatekeeper/v1/hpke-aad")
            .bytes(self.purpose.label().as_bytes())
            .bytes(self.gatekeeper_id.as_bytes())
            .u64(self.epoch)
            .bytes(&self.subject)
            .bytes(self.recipient.as_bytes())
            .finish()
    }
}

/// A sealed envelope: the HPKE encapsulated key and the ciphertext (with tag).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    /// Envelope version; [`ENVELOPE_VERSION`].
    pub version: u32,
    /// The sender's ephemeral X25519 public key.
    pub encapped_key: [u8; 32],
    /// AEAD ciphertext plus 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl Envelope {
    /// Rebuilds an envelope from wire fields, checking version and lengths.
    pub fn from_parts(version: u32, encapped_key: &[u8], ciphertext: Vec<u8>) -> Result<Self> {
        if version != ENVELOPE_VERSION {
            return Err(Error::UnsupportedEnvelopeVersion(version));
        }
        Ok(Self {
            version,
            encapped_key: fixed("HPKE encapped key", encapped_key)?,
            ciphertext,
        })
    }
}

/// Seals `plaintext` to `ctx.recipient`. Refuses low-order recipient keys (the all-zero key among
/// them) with [`Error::EnvelopeSealFailed`].
pub fn seal<R: RngCore + CryptoRng>(
    ctx: &EnvelopeContext,
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Envelope> {
    let pk = ctx.recipient.to_hpke()?;
    let (enc, ciphertext) = hpke::single_shot_seal::<
        ChaCha20Poly1305,
        HkdfSha256,
        X25519HkdfSha256,
        _,
    >(&OpModeS::Base, &pk, &ctx.info(), plaintext, &ctx.aad(), rng)
    .map_err(|_| Error::EnvelopeSealFailed("recipient key is a low-order point"))?;
    Ok(Envelope {
        version: ENVELOPE_VERSION,
        encapped_key: enc.to_bytes().into(),
        ciphertext,
    })
}

/// Opens an envelope with the recipient's secret key in the given context.
pub fn open(
    ctx: &EnvelopeContext,
    recipient: &X25519SecretKey,
    envelope: &Envelope,
) -> Result<Zeroizing<Vec<u8>>> {
    if envelope.version != ENVELOPE_VERSION {
        return Err(Error::UnsupportedEnvelopeVersion(envelope.version));
    }
    if recipient.public_key() != ctx.recipient {
        return Err(Error::EnvelopeOpenFailed);
    }
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&envelope.encapped_key)
        .map_err(|_| Error::EnvelopeOpenFailed)?;
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        recipient.hpke(),
        &enc,
        &ctx.info(),
        &envelope.ciphertext,
        &ctx.aad(),
    )
    .map(Zeroizing::new)
    .map_err(|_| Error::EnvelopeOpenFailed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn ctx(recipient: X25519PublicKey) -> EnvelopeContext {
        EnvelopeContext {
            purpose: Purpose::KeyDelivery,
            gatekeeper_id: GatekeeperId([1; 32]),
            epoch: 4,
            subject: subject::key_delivery(1, &[2; 32], &[2; 32]),
            recipient,
        }
    }

    #[test]
    fn round_trip() {
        let sk = X25519SecretKey::generate(&mut OsRng);
        let c = ctx(sk.public_key());
        let env = seal(&c, b"secret seed", &mut OsRng).unwrap();
        assert_eq!(open(&c, &sk, &env).unwrap().as_slice(), b"secret seed");
    }

    #[test]
    fn wrong_recipient_fails() {
        let sk = X25519SecretKey::generate(&mut OsRng);
        let other = X25519SecretKey::generate(&mut OsRng);
        let env = seal(&ctx(sk.public_key()), b"x", &mut OsRng).unwrap();
        // Claiming the other key as recipient: refused before decapsulation.
        assert_eq!(
            open(&ctx(sk.public_key()), &other, &env).unwrap_err(),
            Error::EnvelopeOpenFailed
        );
        // And with a context naming the other key: decapsulation gives another secret.
        assert_eq!(
            open(&ctx(other.public_key()), &other, &env).unwrap_err(),
            Error::EnvelopeOpenFailed
        );
    }

    #[test]
    fn every_context_field_is_bound() {
        let sk = X25519SecretKey::generate(&mut OsRng);
        let base = ctx(sk.public_key());
        let env = seal(&base, b"x", &mut OsRng).unwrap();
        let mut changed = vec![];
        let mut c = base.clone();
        c.purpose = Purpose::ShareTransfer;
        changed.push(c);
        let mut c = base.clone();
        c.gatekeeper_id = GatekeeperId([9; 32]);
        changed.push(c);
        let mut c = base.clone();
        c.epoch = 5;
        changed.push(c);
        let mut c = base.clone();
        c.subject = subject::key_delivery(2, &[2; 32], &[2; 32]);
        changed.push(c);
        for c in changed {
            assert_eq!(
                open(&c, &sk, &env).unwrap_err(),
                Error::EnvelopeOpenFailed,
                "{c:?}"
            );
        }
    }

    #[test]
    fn flipped_bits_fail() {
        let sk = X25519SecretKey::generate(&mut OsRng);
        let c = ctx(sk.public_key());
        let env = seal(&c, b"some secret bytes", &mut OsRng).unwrap();
        for i in 0..env.ciphertext.len() {
            let mut bad = env.clone();
            bad.ciphertext[i] ^= 1;
            assert!(open(&c, &sk, &bad).is_err(), "ciphertext byte {i}");
        }
        for i in 0..32 {
            let mut bad = env.clone();
            bad.encapped_key[i] ^= 1;
            assert!(open(&c, &sk, &bad).is_err(), "enc byte {i}");
        }
    }

    #[test]
    fn low_order_recipient_refused() {
        let c = ctx(X25519PublicKey([0; 32]));
        assert!(matches!(
            seal(&c, b"x", &mut OsRng).unwrap_err(),
            Error::EnvelopeSealFailed(_)
        ));
    }

    #[test]
    fn is_low_order_agrees_with_sealing() {
        // The points of order 1, 2, 4 and 8 (on the curve and its twist), as listed in
        // RFC 7748's errata and libsodium's blocklist, plus their non-canonical encodings.
        let hex_points = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        for h in hex_points {
            let pk = X25519PublicKey(hex::decode(h).unwrap().try_into().unwrap());
            assert!(pk.is_low_order(), "{h}");
            assert!(
                matches!(
                    seal(&ctx(pk), b"x", &mut OsRng),
                    Err(Error::EnvelopeSealFailed(_))
                ),
                "{h}"
            );
        }
        for _ in 0..32 {
            let pk = X25519SecretKey::generate(&mut OsRng).public_key();
            assert!(!pk.is_low_order());
            assert!(seal(&ctx(pk), b"x", &mut OsRng).is_ok());
        }
    }

    #[test]
    fn unknown_version_refused() {
        assert_eq!(
            Envelope::from_parts(2, &[0; 32], vec![]).unwrap_err(),
            Error::UnsupportedEnvelopeVersion(2)
        );
    }
}
