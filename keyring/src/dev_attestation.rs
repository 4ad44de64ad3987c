//! Development attestations: what the software enclave offers in place of a DCAP quote.
//!
//! A dev attestation says "the holder of the dev attestation key vouches for this report data at
//! this time". It proves nothing about hardware; nodes accept it only under the `dev` policy,
//! which production mode refuses.
//!
//! ```text
//! evidence = 0x01 || u64be(issued_at_secs) || report_data (64) || signer sr25519 key (32) || sig (64)
//! sig      = sr25519(dev key, context "gatekeeper/v1/dev-attestation",
//!                    Canonical("gatekeeper/v1/dev-attestation", u64 issued_at_secs, report_data, signer))
//! ```

use crate::encoding::Canonical;
use crate::error::Error;
use crate::keys::{ct_eq, Signature, Sr25519Keypair, Sr25519PublicKey};
use crate::sign::{sign, verify, SigningPurpose};

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 64 + 32 + 64;

/// Why a dev attestation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DevAttestationError {
    /// Wrong length or version.
    #[error("malformed dev attestation: {0}")]
    Malformed(&'static str),
    /// Signed by a key other than the trusted dev attestation key.
    #[error("dev attestation signed by an untrusted key")]
    UntrustedSigner,
    /// The signature does not verify.
    #[error("dev attestation signature is invalid")]
    BadSignature,
    /// The report data is not the one this request requires.
    #[error("dev attestation report data does not match the request")]
    ReportDataMismatch,
    /// Older than the policy's maximum age (or from the future).
    #[error("dev attestation issued at {issued_at} is outside the allowed age at {now} (max {max_age_secs} s)")]
    Expired {
        /// When it was issued.
        issued_at: u64,
        /// Verifier time.
        now: u64,
        /// Policy maximum.
        max_age_secs: u64,
    },
}

fn message(issued_at: u64, report_data: &[u8; 64], signer: &Sr25519PublicKey) -> Vec<u8> {
    Canonical::new("gatekeeper/v1/dev-attestation")
        .u64(issued_at)
        .bytes(report_data)
        .bytes(signer.as_bytes())
        .finish()
}

/// Issues a dev attestation over `report_data`.
pub fn issue(key: &Sr25519Keypair, report_data: &[u8; 64], issued_at_secs: u64) -> Vec<u8> {
    let signer = key.public_key();
    let sig = sign(
        key,
        SigningPurpose::DevAttestation,
        &message(issued_at_secs, report_data, &signer),
    );
    let mut out = Vec::with_capacity(LEN);
    out.push(VERSION);
    out.extend_from_slice(&issued_at_secs.to_be_bytes());
    out.extend_from_slice(report_data);
    out.extend_from_slice(signer.as_bytes());
    out.extend_from_slice(&sig.0);
    out
}

/// Verifies a dev attestation against the trusted key, the expected report data and its age.
/// Returns the issue time.
pub fn verify_dev(
    evidence: &[u8],
    trusted: &Sr25519PublicKey,
    expected_report_data: &[u8; 64],
    now_secs: u64,
    max_age_secs: u64,
) -> core::result::Result<u64, DevAttestationError> {
    if evidence.len() != LEN {
        return Err(DevAttestationError::Malformed("wrong length"));
    }
    if evidence[0] != VERSION {
        return Err(DevAttestationError::Malformed("unknown version"));
    }
    let issued_at = u64::from_be_bytes(evidence[1..9].try_into().expect("8 bytes"));
    let report_data: [u8; 64] = evidence[9..73].try_into().expect("64 bytes");
    let signer = Sr25519PublicKey::from_slice(&evidence[73..105])
        .map_err(|_| DevAttestationError::Malformed("bad signer key"))?;
    if signer != *trusted {
        return Err(DevAttestationError::UntrustedSigner);
    }
    let sig = Signature::from_slice(&evidence[105..])
        .map_err(|_| DevAttestationError::Malformed("bad signature"))?;
    verify(
        &signer,
        SigningPurpose::DevAttestation,
        &message(issued_at, &report_data, &signer),
        &sig,
    )
    .map_err(|_: Error| DevAttestationError::BadSignature)?;
    if !ct_eq(&report_data, expected_report_data) {
        return Err(DevAttestationError::ReportDataMismatch);
    }
    // Allow 60 s of clock skew into the future.
    if issued_at > now_secs + 60 || now_secs.saturating_sub(issued_at) > max_age_secs {
        return Err(DevAttestationError::Expired {
            issued_at,
            now: now_secs,
            max_age_secs,
        });
    }
    Ok(issued_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_and_every_refusal() {
        let key = Sr25519Keypair::from_seed(&[1; 32]);
        let other = Sr25519Keypair::from_seed(&[2; 32]);
        let rd = [7u8; 64];
        let ev = issue(&key, &rd, 1000);
        assert_eq!(
            verify_dev(&ev, &key.public_key(), &rd, 1010, 300).unwrap(),
            1000
        );
        assert_eq!(
            verify_dev(&ev, &other.public_key(), &rd, 1010, 300).unwrap_err(),
            DevAttestationError::UntrustedSigner
        );
        assert_eq!(
            verify_dev(&ev, &key.public_key(), &[8; 64], 1010, 300).unwrap_err(),
            DevAttestationError::ReportDataMismatch
        );
        assert!(matches!(
            verify_dev(&ev, &key.public_key(), &rd, 2000, 300).unwrap_err(),
            DevAttestationError::Expired { .. }
        ));
        assert!(matches!(
            verify_dev(&ev, &key.public_key(), &rd, 100, 300).unwrap_err(),
            DevAttestationError::Expired { .. }
        ));
        let mut bad = ev.clone();
        bad[20] ^= 1; // inside the report data: signature no longer matches
        assert_eq!(
            verify_dev(&bad, &key.public_key(), &rd, 1010, 300).unwrap_err(),
            DevAttestationError::BadSignature
        );
        assert_eq!(
            verify_dev(&ev[..100], &key.public_key(), &rd, 1010, 300).unwrap_err(),
            DevAttestationError::Malformed("wrong length")
        );
    }
}
