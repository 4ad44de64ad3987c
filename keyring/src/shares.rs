//! Verifiable threshold sharing of a master secret.
//!
//! # Construction (docs/design.md, "Shares")
//!
//! A master secret is 64 bytes and a Ristretto255 scalar holds about 252 bits, so the secret is not
//! shared directly. Instead each *dealing* draws a fresh, uniformly random **share key**
//! `k ∈ Z_ℓ`, and
//!
//! 1. shares `k` with Shamir over `Z_ℓ`: a random polynomial `f` of degree `t − 1` with
//!    `f(0) = k`; member `i` (index 1..=n) gets `f(i)`;
//! 2. publishes Feldman commitments `C_j = a_j · B` for every coefficient `a_j` (B = the Ristretto
//!    basepoint), so each holder checks `f(i) · B = Σ_j i^j · C_j` without learning anything else;
//! 3. wraps the 64-byte master secret with XChaCha20-Poly1305 under
//!    `HKDF-SHA256(k)`, with associated data binding gatekeeper id, epoch, generation, master
//!    public key and `C_0`.
//!
//! Sharing one full-width random scalar instead of the secret's bytes in small limbs keeps the
//! commitments safe: `C_0 = k · B` for a uniformly random `k` is a full-size discrete-log problem,
//! whereas a commitment to a 128-bit limb could be brute-forced in about 2^64 steps.
//!
//! Rebuilding: verify every share against the commitments, Lagrange-interpolate `k` from `t` of
//! them, check `k · B = C_0`, unwrap the master secret, and check its public key is the epoch's.
//!
//! A re-dealing (after a membership change) draws a new `k` and a new polynomial: shares of the old
//! dealing are points on another polynomial and cannot be combined with the new ones.

use crate::encoding::Canonical;
use crate::error::{fixed, Error, Result};
use crate::keys::{ct_eq, GatekeeperId, Sr25519PublicKey};
use crate::master::MasterSecret;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use core::fmt;
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, VartimeMultiscalarMul};
use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Where a dealing belongs. Bound into the wrapped secret, so a wrapped secret or share set cannot
/// be replayed into another cluster, epoch or generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DealingContext {
    /// The Gatekeeper cluster.
    pub gatekeeper_id: GatekeeperId,
    /// The master-key epoch.
    pub epoch: u64,
    /// The dealing generation within the epoch (0 at creation, +1 per re-dealing).
    pub generation: u64,
    /// The epoch's master public key; a rebuilt secret must match it.
    pub master_public_key: Sr25519PublicKey,
}

/// One member's share: the polynomial evaluated at `index`. Zeroized on drop; `Debug` shows only
/// the index.
#[derive(Clone)]
pub struct Share {
    index: u8,
    value: Scalar,
}

impl Share {
    /// Builds a share from its index and 32-byte canonical scalar encoding.
    pub fn from_bytes(index: u8, value: &[u8]) -> Result<Self> {
        if index == 0 {
            return Err(Error::ZeroShareIndex);
        }
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(fixed("share value", value)?);
        let value = Option::<Scalar>::from(Scalar::from_canonical_bytes(*bytes))
            .ok_or(Error::InvalidSecret("share value"))?;
        Ok(Self { index, value })
    }

    /// The share's x-coordinate (1..=255).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The 32-byte share value. Secret: seal it before it leaves the enclave.
    pub fn value_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.value.to_bytes())
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// Feldman commitments to a sharing polynomial: `t` compressed Ristretto points. Public.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Commitments(Vec<[u8; 32]>);

impl Commitments {
    /// Parses commitments (as stored in the replicated state). Checks every point decodes and that
    /// `C_0` is not the identity.
    pub fn from_bytes(points: &[Vec<u8>]) -> Result<Self> {
        if points.is_empty() || points.len() > 255 {
            return Err(Error::InvalidCommitments("count must be 1..=255"));
        }
        let mut out = Vec::with_capacity(points.len());
        for p in points {
            let b: [u8; 32] = fixed("commitment", p)?;
            CompressedRistretto(b)
                .decompress()
                .ok_or(Error::InvalidCommitments("point does not decode"))?;
            out.push(b);
        }
        if out[0] == RistrettoPoint::identity().compress().0 {
            return Err(Error::InvalidCommitments("C_0 is the identity"));
        }
        Ok(Self(out))
    }

    /// The encoded points, `C_0` first.
    pub fn as_slice(&self) -> &[[u8; 32]] {
        &self.0
    }

    /// The threshold `t` these commitments describe.
    pub fn threshold(&self) -> usize {
        self.0.len()
    }

    fn points(&self) -> Result<Vec<RistrettoPoint>> {
        self.0
            .iter()
            .map(|b| {
                CompressedRistretto(*b)
                    .decompress()
                    .ok_or(Error::InvalidCommitments("point does not decode"))
            })
            .collect()
    }

    /// Checks that `share` lies on the committed polynomial: `f(i)·B == Σ_j i^j·C_j`.
    pub fn verify(&self, share: &Share) -> Result<()> {
        if share.index == 0 {
            return Err(Error::ZeroShareIndex);
        }
        let points = self.points()?;
        let x = Scalar::from(u64::from(share.index));
        let mut powers = Vec::with_capacity(points.len());
        let mut p = Scalar::ONE;
        for _ in 0..points.len() {
            powers.push(p);
            p *= x;
        }
        // The right side only involves public values, so variable time is fine there.
        let expected = RistrettoPoint::vartime_multiscalar_mul(&powers, &points);
        let actual = &share.value * RISTRETTO_BASEPOINT_TABLE;
        if bool::from(actual.ct_eq(&expected)) {
            Ok(())
        } else {
            Err(Error::ShareVerificationFailed { index: share.index })
        }
    }

    /// A short fingerprint of the commitments (SHA-256 of their canonical encoding).
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut enc = Canonical::new("gatekeeper/v1/commitments");
        for c in &self.0 {
            enc = enc.bytes(c);
        }
        Sha256::digest(enc.finish()).into()
    }
}

impl fmt::Debug for Commitments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Commitments(t={}, {})",
            self.0.len(),
            hex::encode(&self.fingerprint()[..8])
        )
    }
}

/// The master secret encrypted under the dealing's share key. Public (stored in the Raft log);
/// useless without `t` shares.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrappedMaster {
    /// XChaCha20-Poly1305 nonce.
    pub nonce: [u8; 24],
    /// Ciphertext of the 64-byte secret plus the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for WrappedMaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedMaster({} bytes)", self.ciphertext.len())
    }
}

/// The outcome of dealing: public commitments and wrapped secret, and the `n` secret shares (to be
/// HPKE-sealed to their members before leaving the enclave).
#[derive(Debug)]
pub struct Dealing {
    /// Feldman commitments (`t` points).
    pub commitments: Commitments,
    /// The master secret under the share key.
    pub wrapped: WrappedMaster,
    /// Shares with indices `1..=n`, in order.
    pub shares: Vec<Share>,
}

/// Checks `1 <= t <= n <= 255`.
pub fn check_parameters(threshold: usize, shares: usize) -> Result<()> {
    if threshold == 0 {
        return Err(Error::ThresholdZero);
    }
    if shares == 0 || shares > 255 {
        return Err(Error::ShareCountOutOfRange(shares));
    }
    if threshold > shares {
        return Err(Error::ThresholdExceedsShares { threshold, shares });
    }
    Ok(())
}

/// The default threshold for `n` members: a majority, `n / 2 + 1`.
pub fn default_threshold(members: usize) -> usize {
    members / 2 + 1
}

fn wrap_cipher(k: &Scalar, ctx: &DealingContext) -> XChaCha20Poly1305 {
    let info = Canonical::new("gatekeeper/v1/share-wrap")
        .bytes(ctx.gatekeeper_id.as_bytes())
        .u64(ctx.epoch)
        .u64(ctx.generation)
        .finish();
    let ikm = Zeroizing::new(k.to_bytes());
    let hk = Hkdf::<Sha256>::new(Some(b"gatekeeper/v1/share-wrap-salt"), ikm.as_ref());
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(&info, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    XChaCha20Poly1305::new(key.as_ref().into())
}

fn wrap_aad(ctx: &DealingContext, c0: &[u8; 32]) -> Vec<u8> {
    Canonical::new("gatekeeper/v1/wrapped-master")
        .bytes(ctx.gatekeeper_id.as_bytes())
        .u64(ctx.epoch)
        .u64(ctx.generation)
        .bytes(ctx.master_public_key.as_bytes())
        .bytes(c0)
        .finish()
}

/// Deals `master` into `shares` shares with threshold `threshold`.
///
/// Refuses `threshold == 0`, `threshold > shares`, `shares == 0` or `shares > 255`, and a context
/// whose master public key is not `master`'s.
pub fn deal<R: RngCore + CryptoRng>(
    master: &MasterSecret,
    ctx: &DealingContext,
    threshold: usize,
    shares: usize,
    rng: &mut R,
) -> Result<Dealing> {
    check_parameters(threshold, shares)?;
    if !ct_eq(
        master.public_key().as_bytes(),
        ctx.master_public_key.as_bytes(),
    ) {
        return Err(Error::MasterKeyMismatch);
    }
    // Polynomial coefficients; a_0 = k is the share key. Zeroized when dropped.
    let mut coeffs: Zeroizing<Vec<Scalar>> = Zeroizing::new(Vec::with_capacity(threshold));
    coeffs.push(nonzero_scalar(rng));
    for _ in 1..threshold {
        coeffs.push(Scalar::random(rng));
    }
    let commitments = Commitments(
        coeffs
            .iter()
            .map(|a| (a * RISTRETTO_BASEPOINT_TABLE).compress().0)
            .collect(),
    );
    let out = (1..=shares)
        .map(|i| {
            let index = u8::try_from(i).expect("checked n <= 255");
            Share {
                index,
                value: evaluate(&coeffs, Scalar::from(i as u64)),
            }
        })
        .collect();

    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let secret = master.to_bytes();
    let ciphertext = wrap_cipher(&coeffs[0], ctx)
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: secret.as_ref(),
                aad: &wrap_aad(ctx, &commitments.0[0]),
            },
        )
        .expect("XChaCha20-Poly1305 encryption of 64 bytes cannot fail");
    Ok(Dealing {
        commitments,
        wrapped: WrappedMaster { nonce, ciphertext },
        shares: out,
    })
}

/// Rebuilds the master secret from shares of one dealing.
///
/// Every given share is verified against `commitments` first (the error names the first share
/// that fails); zero and duplicate indices are refused; at least `t` shares are required. The
/// rebuilt share key must match `C_0`, the wrapped secret must open under it, and the secret's
/// public key must equal `ctx.master_public_key`.
pub fn reconstruct(
    ctx: &DealingContext,
    commitments: &Commitments,
    wrapped: &WrappedMaster,
    shares: &[Share],
) -> Result<MasterSecret> {
    let t = commitments.threshold();
    let mut seen = [false; 256];
    for s in shares {
        if s.index == 0 {
            return Err(Error::ZeroShareIndex);
        }
        if seen[usize::from(s.index)] {
            return Err(Error::DuplicateShareIndex(s.index));
        }
        seen[usize::from(s.index)] = true;
    }
    for s in shares {
        commitments.verify(s)?;
    }
    if shares.len() < t {
        return Err(Error::NotEnoughShares {
            got: shares.len(),
            needed: t,
        });
    }
    let k = Zeroizing::new(interpolate_at_zero(&shares[..t]));
    let c0 = commitments.0[0];
    let rebuilt = (&*k * RISTRETTO_BASEPOINT_TABLE).compress().0;
    if !ct_eq(&rebuilt, &c0) {
        // Cannot happen with verified shares; kept as a last line of defence.
        return Err(Error::MasterKeyMismatch);
    }
    let plain = Zeroizing::new(
        wrap_cipher(&k, ctx)
            .decrypt(
                XNonce::from_slice(&wrapped.nonce),
                Payload {
                    msg: &wrapped.ciphertext,
                    aad: &wrap_aad(ctx, &c0),
                },
            )
            .map_err(|_| Error::WrappedSecretOpenFailed)?,
    );
    let master = MasterSecret::from_bytes(&plain)?;
    if !ct_eq(
        master.public_key().as_bytes(),
        ctx.master_public_key.as_bytes(),
    ) {
        return Err(Error::MasterKeyMismatch);
    }
    Ok(master)
}

fn nonzero_scalar<R: RngCore + CryptoRng>(rng: &mut R) -> Scalar {
    loop {
        let s = Scalar::random(rng);
        if s != Scalar::ZERO {
            return s;
        }
    }
}

/// Horner evaluation of the polynomial at `x`.
fn evaluate(coeffs: &[Scalar], x: Scalar) -> Scalar {
    coeffs.iter().rev().fold(Scalar::ZERO, |acc, a| acc * x + a)
}

/// Lagrange interpolation of f(0) from shares with distinct non-zero indices.
fn interpolate_at_zero(shares: &[Share]) -> Scalar {
    let mut acc = Scalar::ZERO;
    for (i, si) in shares.iter().enumerate() {
        let xi = Scalar::from(u64::from(si.index));
        let mut num = Scalar::ONE;
        let mut den = Scalar::ONE;
        for (j, sj) in shares.iter().enumerate() {
            if i != j {
                let xj = Scalar::from(u64::from(sj.index));
                num *= xj;
                den *= xj - xi;
            }
        }
        // Indices are distinct and below ℓ, so den != 0.
        acc += si.value * num * den.invert();
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_core::OsRng;

    fn ctx_for(m: &MasterSecret) -> DealingContext {
        DealingContext {
            gatekeeper_id: GatekeeperId([1; 32]),
            epoch: 3,
            generation: 0,
            master_public_key: m.public_key(),
        }
    }

    #[test]
    fn t_equals_one_every_share_rebuilds() {
        let m = MasterSecret::generate(&mut OsRng);
        let ctx = ctx_for(&m);
        let d = deal(&m, &ctx, 1, 3, &mut OsRng).unwrap();
        for s in &d.shares {
            let r = reconstruct(&ctx, &d.commitments, &d.wrapped, std::slice::from_ref(s));
            assert_eq!(r.unwrap().public_key(), m.public_key());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// With t − 1 shares the interpolated value is not the share key (so nothing derived from
        /// it opens the wrapped secret).
        #[test]
        fn t_minus_one_shares_do_not_give_the_share_key(t in 2usize..8, extra in 0usize..4) {
            let n = t + extra;
            let m = MasterSecret::generate(&mut OsRng);
            let ctx = ctx_for(&m);
            let mut coeffs = vec![nonzero_scalar(&mut OsRng)];
            for _ in 1..t { coeffs.push(Scalar::random(&mut OsRng)); }
            let shares: Vec<Share> = (1..=n)
                .map(|i| Share { index: i as u8, value: evaluate(&coeffs, Scalar::from(i as u64)) })
                .collect();
            prop_assert_eq!(interpolate_at_zero(&shares[..t]), coeffs[0]);
            prop_assert_ne!(interpolate_at_zero(&shares[..t - 1]), coeffs[0]);
            // And the public API refuses t − 1 shares outright.
            let d = deal(&m, &ctx, t, n, &mut OsRng).unwrap();
            let err = reconstruct(&ctx, &d.commitments, &d.wrapped, &d.shares[..t - 1]).unwrap_err();
            prop_assert_eq!(err, Error::NotEnoughShares { got: t - 1, needed: t });
        }
    }

    /// Cross-check against an independent implementation: vsss-rs interpolates our shares to the
    /// same share key.
    #[test]
    fn vsss_rs_agrees_with_our_interpolation() {
        use vsss_rs::curve25519::WrappedScalar;
        use vsss_rs::{DefaultShare, IdentifierPrimeField, ReadableShareSet};
        type VShare =
            DefaultShare<IdentifierPrimeField<WrappedScalar>, IdentifierPrimeField<WrappedScalar>>;
        let coeffs: Vec<Scalar> = (0..3).map(|_| Scalar::random(&mut OsRng)).collect();
        let ours: Vec<Share> = (1..=5u8)
            .map(|i| Share {
                index: i,
                value: evaluate(&coeffs, Scalar::from(u64::from(i))),
            })
            .collect();
        let theirs: Vec<VShare> = ours[1..4]
            .iter()
            .map(|s| VShare {
                identifier: IdentifierPrimeField(WrappedScalar(Scalar::from(u64::from(s.index)))),
                value: IdentifierPrimeField(WrappedScalar(s.value)),
            })
            .collect();
        let k = theirs.combine().unwrap();
        assert_eq!(k.0 .0, coeffs[0]);
        assert_eq!(interpolate_at_zero(&ours[1..4]), coeffs[0]);
    }
}
