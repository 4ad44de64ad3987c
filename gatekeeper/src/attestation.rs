//! Attestation policy: which evidence a node accepts from workers and joining nodes.
//!
//! * `dcap` — an SGX or TDX DCAP quote verified by dcap-qvl (certificate chains to Intel's root,
//!   CRLs, TCB info, QE identity, and the debug bit), then checked against this policy: allowed
//!   MRENCLAVE / MRSIGNER (SGX) or MRTD (TDX) values, a minimum TCB status, the report data the
//!   request requires, and a maximum collateral age.
//! * `dev` — a development attestation signed by the configured dev attestation key
//!   (`keyring::dev_attestation`). Refused in production mode.
//! * `none` — no evidence required. Refused in production mode.

use crate::error::{ApiError, ApiResult, ErrorCode};
use dcap_qvl::quote::Report;
use dcap_qvl::QuoteCollateralV3;
use keyring::dev_attestation::{self, DevAttestationError};
use keyring::Sr25519PublicKey;

/// Which evidence is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Intel DCAP quotes.
    Dcap,
    /// Development attestations.
    Dev,
    /// Nothing required.
    None,
}

/// TCB statuses from best to worst, as dcap-qvl reports them.
pub const TCB_ORDER: &[&str] = &[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
];

fn tcb_rank(status: &str) -> Option<usize> {
    TCB_ORDER.iter().position(|s| *s == status)
}

/// The kind of evidence presented (mirrors the proto's `AttestationKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvidenceKind {
    /// SGX DCAP quote.
    SgxDcap,
    /// TDX DCAP quote.
    TdxDcap,
    /// Dev attestation.
    Dev,
}

/// A verification policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Which evidence is accepted.
    pub kind: PolicyKind,
    /// Allowed SGX MRENCLAVE values (any if empty and `allowed_mrsigner` is non-empty).
    pub allowed_mrenclave: Vec<[u8; 32]>,
    /// Allowed SGX MRSIGNER values.
    pub allowed_mrsigner: Vec<[u8; 32]>,
    /// Allowed TDX MRTD values.
    pub allowed_mrtd: Vec<[u8; 48]>,
    /// Worst acceptable TCB status (an entry of [`TCB_ORDER`]).
    pub min_tcb_status: String,
    /// Maximum age of dev evidence, seconds.
    pub max_evidence_age_secs: u64,
    /// The trusted dev attestation key (dev policy).
    pub dev_key: Option<Sr25519PublicKey>,
    /// Collateral used when a quote arrives without its own (loaded from `dcap_collateral_file`).
    pub default_collateral: Option<QuoteCollateralV3>,
}

/// Why evidence was refused. Every variant maps to `PERMISSION_DENIED` (docs/api.md).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// Evidence was required and none was sent.
    #[error("attestation evidence is required by policy {0:?}")]
    Missing(PolicyKind),
    /// The evidence kind does not match the policy.
    #[error("evidence of kind {kind:?} is not accepted by policy {policy:?}")]
    WrongKind {
        /// Presented.
        kind: EvidenceKind,
        /// Policy.
        policy: PolicyKind,
    },
    /// DCAP collateral was not supplied and no collateral source is configured.
    #[error("no collateral for the quote: {0}")]
    Collateral(String),
    /// dcap-qvl refused the quote (chain, CRL, signature, QE identity, debug enclave, expiry…).
    #[error("quote verification failed: {0}")]
    Quote(String),
    /// The TCB status is worse than the policy minimum.
    #[error("TCB status {status} is below the policy minimum {min}")]
    Tcb {
        /// Reported.
        status: String,
        /// Required.
        min: String,
    },
    /// The measurement is not allowed.
    #[error("measurement not allowed: {0}")]
    Measurement(String),
    /// The quote's report data is not the one the request requires.
    #[error("report data does not bind this request")]
    ReportData,
    /// The dev attestation was refused.
    #[error(transparent)]
    Dev(#[from] DevAttestationError),
    /// The policy itself is unusable.
    #[error("attestation policy misconfigured: {0}")]
    Policy(String),
}

/// What verification established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// TCB status (DCAP) or `"Dev"`/`"None"`.
    pub status: String,
    /// Advisory ids (DCAP).
    pub advisories: Vec<String>,
}

impl Policy {
    /// Verifies `evidence` for a request whose report data must be `expected_report_data`.
    pub fn verify(
        &self,
        evidence: Option<(EvidenceKind, &[u8], Option<&QuoteCollateralV3>)>,
        expected_report_data: &[u8; 64],
        now_secs: u64,
    ) -> Result<Verified, AttestationError> {
        match self.kind {
            PolicyKind::None => Ok(Verified {
                status: "None".into(),
                advisories: vec![],
            }),
            PolicyKind::Dev => {
                let (kind, bytes, _) = evidence.ok_or(AttestationError::Missing(self.kind))?;
                if kind != EvidenceKind::Dev {
                    return Err(AttestationError::WrongKind {
                        kind,
                        policy: self.kind,
                    });
                }
                let key = self
                    .dev_key
                    .ok_or_else(|| AttestationError::Policy("dev policy without dev_key".into()))?;
                dev_attestation::verify_dev(
                    bytes,
                    &key,
                    expected_report_data,
                    now_secs,
                    self.max_evidence_age_secs,
                )?;
                Ok(Verified {
                    status: "Dev".into(),
                    advisories: vec![],
                })
            }
            PolicyKind::Dcap => {
                let (kind, quote, collateral) =
                    evidence.ok_or(AttestationError::Missing(self.kind))?;
                if kind == EvidenceKind::Dev {
                    return Err(AttestationError::WrongKind {
                        kind,
                        policy: self.kind,
                    });
                }
                let collateral =
                    collateral
                        .or(self.default_collateral.as_ref())
                        .ok_or_else(|| {
                            AttestationError::Collateral(
                                "send it with the quote, or configure dcap_collateral_file".into(),
                            )
                        })?;
                self.verify_dcap(quote, collateral, expected_report_data, now_secs)
            }
        }
    }

    fn verify_dcap(
        &self,
        quote: &[u8],
        collateral: &QuoteCollateralV3,
        expected_report_data: &[u8; 64],
        now_secs: u64,
    ) -> Result<Verified, AttestationError> {
        let min = tcb_rank(&self.min_tcb_status).ok_or_else(|| {
            AttestationError::Policy(format!("unknown TCB status {}", self.min_tcb_status))
        })?;
        let report = dcap_qvl::verify::verify(quote, collateral, now_secs)
            .map_err(|e| AttestationError::Quote(format!("{e:#}")))?;
        match tcb_rank(&report.status) {
            Some(r) if r <= min => {}
            _ => {
                return Err(AttestationError::Tcb {
                    status: report.status.clone(),
                    min: self.min_tcb_status.clone(),
                })
            }
        }
        let report_data = match &report.report {
            Report::SgxEnclave(r) => {
                let enclave_ok = self.allowed_mrenclave.contains(&r.mr_enclave);
                let signer_ok = self.allowed_mrsigner.contains(&r.mr_signer);
                if !(enclave_ok || signer_ok) {
                    return Err(AttestationError::Measurement(format!(
                        "MRENCLAVE {} / MRSIGNER {} not in the allowlist",
                        hex::encode(r.mr_enclave),
                        hex::encode(r.mr_signer)
                    )));
                }
                r.report_data
            }
            other => {
                let td = other
                    .as_td10()
                    .ok_or_else(|| AttestationError::Quote("unknown report type".into()))?;
                if !self.allowed_mrtd.contains(&td.mr_td) {
                    return Err(AttestationError::Measurement(format!(
                        "MRTD {} not in the allowlist",
                        hex::encode(td.mr_td)
                    )));
                }
                td.report_data
            }
        };
        if !keyring::ct_eq(&report_data, expected_report_data) {
            return Err(AttestationError::ReportData);
        }
        Ok(Verified {
            status: report.status,
            advisories: report.advisory_ids,
        })
    }
}

/// Maps wire evidence to the policy's input; `None` for no evidence or an undefined kind
/// (refused earlier by [`check_kind`]).
pub fn evidence_of(
    a: &Option<gatekeeper_proto::v1::Attestation>,
) -> Option<(EvidenceKind, Vec<u8>, Vec<u8>)> {
    use gatekeeper_proto::v1::AttestationKind as K;
    let a = a.as_ref()?;
    let kind = match K::try_from(a.kind).ok()? {
        K::SgxDcap => EvidenceKind::SgxDcap,
        K::TdxDcap => EvidenceKind::TdxDcap,
        K::Dev => EvidenceKind::Dev,
        K::Unspecified => return None,
    };
    Some((kind, a.evidence.clone(), a.collateral.clone()))
}

/// Refuses wire evidence whose kind is not one of the defined `AttestationKind`s (so the signed
/// digest, which encodes the kind as one byte, binds it exactly).
pub fn check_kind(a: &Option<gatekeeper_proto::v1::Attestation>) -> ApiResult<()> {
    use gatekeeper_proto::v1::AttestationKind as K;
    match a {
        Some(a) if !matches!(K::try_from(a.kind), Ok(k) if k != K::Unspecified) => {
            Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "attestation.kind {} is not a defined AttestationKind",
                    a.kind
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The digest of wire evidence that signed requests bind.
pub fn digest_of(
    a: &Option<gatekeeper_proto::v1::Attestation>,
) -> Option<keyring::sign::EvidenceDigest> {
    a.as_ref()
        .map(|a| keyring::sign::EvidenceDigest::new(a.kind as u8, &a.evidence, &a.collateral))
}

/// Verifies wire evidence against `policy` at `now_secs`: `ATTESTATION_REJECTED` when it fails,
/// `INVALID_ARGUMENT` when the collateral does not parse.
pub fn check_evidence(
    policy: &Policy,
    a: &Option<gatekeeper_proto::v1::Attestation>,
    report_data: &[u8; 64],
    now_secs: u64,
) -> ApiResult<()> {
    let ev = evidence_of(a);
    let collateral = match &ev {
        Some((_, _, c)) if !c.is_empty() => {
            Some(serde_json::from_slice::<QuoteCollateralV3>(c).map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("attestation.collateral: {e}"),
                )
            })?)
        }
        _ => None,
    };
    policy
        .verify(
            ev.as_ref()
                .map(|(k, e, _)| (*k, e.as_slice(), collateral.as_ref())),
            report_data,
            now_secs,
        )
        .map(|_| ())
        .map_err(|e| {
            ApiError::new(
                ErrorCode::AttestationRejected,
                format!("attestation rejected: {e}"),
            )
        })
}

/// The report data a member's registration evidence binds: its identity key, its HPKE key and
/// its TLS key (SPKI SHA-256; 32 zero bytes without TLS), so with DCAP the quote vouches that the
/// enclave holds all three.
pub fn member_report_data(
    identity: &[u8; 32],
    hpke: &keyring::X25519PublicKey,
    tls_spki: Option<&[u8; 32]>,
) -> [u8; 64] {
    keyring::sign::report_data(identity, hpke, tls_spki.unwrap_or(&[0; 32]))
}

/// Whether a member's registration evidence (recorded with its keys) passes the member policy:
/// the evidence must bind `report_data(identity, hpke, 0…)`. The age limit does not apply here —
/// registration binds keys, it does not prove freshness (FetchShare checks fresh evidence per
/// request). Shares are dealt only to members that pass.
pub fn member_evidence_ok(
    policy: &Policy,
    m: &gatekeeper_raft::state::MemberRecord,
    now_secs: u64,
) -> Result<(), String> {
    if policy.kind == PolicyKind::None {
        return Ok(());
    }
    let hpke =
        keyring::X25519PublicKey::from_slice(&m.hpke_public_key.0).map_err(|e| e.to_string())?;
    let rd = member_report_data(
        &m.identity_public_key.0,
        &hpke,
        m.tls_spki.as_ref().map(|b| &b.0),
    );
    let kind = match policy.kind {
        PolicyKind::Dev => EvidenceKind::Dev,
        _ => EvidenceKind::SgxDcap,
    };
    let mut p = policy.clone();
    p.max_evidence_age_secs = u64::MAX / 2;
    p.verify(Some((kind, &m.attestation.0, None)), &rd, now_secs)
        .map(|_| ())
        .map_err(|e| format!("node {}: {e}", m.node_id))
}

#[cfg(test)]
mod tests {
    //! The DCAP path on the real SGX and TDX sample quotes and collateral shipped in the dcap-qvl
    //! package (found through `cargo metadata`), verified at a time inside the collateral's
    //! validity window, plus tampered copies.

    use super::*;
    use std::path::PathBuf;

    fn sample_dir() -> PathBuf {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
        let pkg = v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "dcap-qvl")
            .expect("dcap-qvl in the dependency graph");
        PathBuf::from(pkg["manifest_path"].as_str().unwrap())
            .parent()
            .unwrap()
            .join("sample")
    }

    struct Sample {
        quote: Vec<u8>,
        collateral: QuoteCollateralV3,
        now: u64,
        report_data: [u8; 64],
        report: Report,
    }

    fn load(quote: &str, collateral: &str) -> Sample {
        let dir = sample_dir();
        let quote = std::fs::read(dir.join(quote)).unwrap();
        let collateral: QuoteCollateralV3 =
            serde_json::from_slice(&std::fs::read(dir.join(collateral)).unwrap()).unwrap();
        // A time inside the collateral's validity: the TCB info's issue date plus one day.
        let tcb: serde_json::Value = serde_json::from_str(&collateral.tcb_info).unwrap();
        let issued = tcb["issueDate"].as_str().unwrap();
        let now = parse_rfc3339(issued) + 86_400;
        let parsed = dcap_qvl::quote::Quote::parse(&quote).unwrap();
        let report_data = match &parsed.report {
            Report::SgxEnclave(r) => r.report_data,
            other => other.as_td10().unwrap().report_data,
        };
        Sample {
            report: parsed.report,
            quote,
            collateral,
            now,
            report_data,
        }
    }

    /// Minimal RFC 3339 UTC parser for "YYYY-MM-DDTHH:MM:SSZ".
    fn parse_rfc3339(s: &str) -> u64 {
        let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
        let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
        let (hh, mm, ss) = (n(11, 13), n(14, 16), n(17, 19));
        // Days from civil (Howard Hinnant's algorithm).
        let y2 = if m <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        (days * 86_400 + hh * 3600 + mm * 60 + ss) as u64
    }

    fn sgx_policy(s: &Sample) -> Policy {
        let Report::SgxEnclave(r) = &s.report else {
            panic!("not an SGX quote")
        };
        Policy {
            kind: PolicyKind::Dcap,
            allowed_mrenclave: vec![r.mr_enclave],
            allowed_mrsigner: vec![],
            allowed_mrtd: vec![],
            min_tcb_status: "ConfigurationAndSWHardeningNeeded".into(),
            max_evidence_age_secs: 600,
            dev_key: None,
            default_collateral: None,
        }
    }

    fn ev(
        kind: EvidenceKind,
        s: &Sample,
    ) -> Option<(EvidenceKind, &[u8], Option<&QuoteCollateralV3>)> {
        Some((kind, s.quote.as_slice(), Some(&s.collateral)))
    }

    #[test]
    fn real_sgx_quote_passes_policy() {
        let s = load("sgx_quote", "sgx_quote_collateral.json");
        let v = sgx_policy(&s)
            .verify(ev(EvidenceKind::SgxDcap, &s), &s.report_data, s.now)
            .unwrap();
        assert_eq!(v.status, "ConfigurationAndSWHardeningNeeded");
    }

    #[test]
    fn sgx_refusals() {
        let s = load("sgx_quote", "sgx_quote_collateral.json");
        let p = sgx_policy(&s);
        // Report data of another request.
        assert!(matches!(
            p.verify(ev(EvidenceKind::SgxDcap, &s), &[0; 64], s.now),
            Err(AttestationError::ReportData)
        ));
        // Stricter TCB minimum.
        let mut strict = p.clone();
        strict.min_tcb_status = "UpToDate".into();
        assert!(matches!(
            strict.verify(ev(EvidenceKind::SgxDcap, &s), &s.report_data, s.now),
            Err(AttestationError::Tcb { .. })
        ));
        // MRENCLAVE not allowed.
        let mut other = p.clone();
        other.allowed_mrenclave = vec![[9; 32]];
        assert!(matches!(
            other.verify(ev(EvidenceKind::SgxDcap, &s), &s.report_data, s.now),
            Err(AttestationError::Measurement(_))
        ));
        // Today's clock: the sample collateral has expired.
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(matches!(
            p.verify(ev(EvidenceKind::SgxDcap, &s), &s.report_data, today),
            Err(AttestationError::Quote(_))
        ));
        // Tampered quote bytes (inside the signed report body, and in the signature).
        for at in [100usize, 300, s.quote.len() - 10] {
            let mut bad = Sample {
                quote: s.quote.clone(),
                collateral: s.collateral.clone(),
                now: s.now,
                report_data: s.report_data,
                report: s.report.clone(),
            };
            bad.quote[at] ^= 0x01;
            assert!(
                p.verify(ev(EvidenceKind::SgxDcap, &bad), &s.report_data, s.now)
                    .is_err(),
                "tampered byte {at} accepted"
            );
        }
        // Tampered collateral (TCB info no longer matches its signature).
        let mut bad_collateral = s.collateral.clone();
        assert!(bad_collateral.tcb_info.contains("{\"svn\":11}"));
        bad_collateral.tcb_info =
            bad_collateral
                .tcb_info
                .replacen("{\"svn\":11}", "{\"svn\":12}", 1);
        assert!(matches!(
            p.verify(
                Some((
                    EvidenceKind::SgxDcap,
                    s.quote.as_slice(),
                    Some(&bad_collateral)
                )),
                &s.report_data,
                s.now
            ),
            Err(AttestationError::Quote(_))
        ));
        // Collateral from the node's configured file when the request carries none.
        assert!(matches!(
            p.verify(
                Some((EvidenceKind::SgxDcap, s.quote.as_slice(), None)),
                &s.report_data,
                s.now
            ),
            Err(AttestationError::Collateral(_))
        ));
        let mut with_file = p.clone();
        with_file.default_collateral = Some(s.collateral.clone());
        with_file
            .verify(
                Some((EvidenceKind::SgxDcap, s.quote.as_slice(), None)),
                &s.report_data,
                s.now,
            )
            .unwrap();
        // No evidence / dev evidence under a DCAP policy.
        assert!(matches!(
            p.verify(None, &s.report_data, s.now),
            Err(AttestationError::Missing(PolicyKind::Dcap))
        ));
        assert!(matches!(
            p.verify(ev(EvidenceKind::Dev, &s), &s.report_data, s.now),
            Err(AttestationError::WrongKind { .. })
        ));
    }

    #[test]
    fn real_tdx_quote_checks_mrtd() {
        let s = load("tdx_quote", "tdx_quote_collateral.json");
        let td = s.report.as_td10().unwrap();
        let mut p = Policy {
            kind: PolicyKind::Dcap,
            allowed_mrenclave: vec![],
            allowed_mrsigner: vec![],
            allowed_mrtd: vec![td.mr_td],
            min_tcb_status: "OutOfDateConfigurationNeeded".into(),
            max_evidence_age_secs: 600,
            dev_key: None,
            default_collateral: None,
        };
        p.verify(ev(EvidenceKind::TdxDcap, &s), &s.report_data, s.now)
            .unwrap();
        p.allowed_mrtd = vec![[0; 48]];
        assert!(matches!(
            p.verify(ev(EvidenceKind::TdxDcap, &s), &s.report_data, s.now),
            Err(AttestationError::Measurement(_))
        ));
    }

    #[test]
    fn dev_policy() {
        let key = keyring::Sr25519Keypair::from_seed(&[4; 32]);
        let p = Policy {
            kind: PolicyKind::Dev,
            allowed_mrenclave: vec![],
            allowed_mrsigner: vec![],
            allowed_mrtd: vec![],
            min_tcb_status: "UpToDate".into(),
            max_evidence_age_secs: 300,
            dev_key: Some(key.public_key()),
            default_collateral: None,
        };
        let rd = [3u8; 64];
        let e = dev_attestation::issue(&key, &rd, 1_000);
        p.verify(Some((EvidenceKind::Dev, &e, None)), &rd, 1_100)
            .unwrap();
        assert!(matches!(
            p.verify(Some((EvidenceKind::Dev, &e, None)), &[0; 64], 1_100),
            Err(AttestationError::Dev(
                DevAttestationError::ReportDataMismatch
            ))
        ));
        assert!(matches!(
            p.verify(None, &rd, 1_100),
            Err(AttestationError::Missing(PolicyKind::Dev))
        ));
    }

    fn member_policy(kind: PolicyKind, dev: &keyring::Sr25519Keypair) -> Policy {
        Policy {
            kind,
            allowed_mrenclave: vec![],
            allowed_mrsigner: vec![],
            allowed_mrtd: vec![],
            min_tcb_status: "UpToDate".into(),
            max_evidence_age_secs: 1,
            dev_key: Some(dev.public_key()),
            default_collateral: None,
        }
    }

    fn record(
        identity: [u8; 32],
        hpke: keyring::X25519PublicKey,
        evidence: Vec<u8>,
    ) -> gatekeeper_raft::state::MemberRecord {
        gatekeeper_raft::state::MemberRecord {
            node_id: 7,
            raft_address: "a:1".into(),
            api_address: "a:2".into(),
            identity_public_key: gatekeeper_raft::state::Bytes32(identity),
            hpke_public_key: gatekeeper_raft::state::Bytes32(*hpke.as_bytes()),
            attestation: gatekeeper_raft::state::HexBytes(evidence),
            tls_spki: None,
            admin_address: None,
        }
    }

    #[test]
    fn shares_go_only_to_members_whose_registration_evidence_binds_their_keys() {
        let dev = keyring::Sr25519Keypair::from_seed(&[1; 32]);
        let id = keyring::Sr25519Keypair::from_seed(&[2; 32]).public_key();
        let hpke = keyring::X25519SecretKey::generate(&mut rand_core::OsRng).public_key();
        let rd = keyring::sign::report_data(id.as_bytes(), &hpke, &[0; 32]);
        // Issued long ago: the age limit does not apply to registration evidence.
        let good = keyring::dev_attestation::issue(&dev, &rd, 1_000);
        let p = member_policy(PolicyKind::Dev, &dev);
        member_evidence_ok(&p, &record(*id.as_bytes(), hpke, good.clone()), 2_000).unwrap();
        // The same evidence presented for another HPKE key (an attacker's) is refused.
        let attacker = keyring::X25519SecretKey::generate(&mut rand_core::OsRng).public_key();
        assert!(
            member_evidence_ok(&p, &record(*id.as_bytes(), attacker, good.clone()), 2_000).is_err()
        );
        // No evidence, or evidence from another key, is refused.
        assert!(member_evidence_ok(&p, &record(*id.as_bytes(), hpke, vec![]), 2_000).is_err());
        let other = keyring::Sr25519Keypair::from_seed(&[3; 32]);
        let forged = keyring::dev_attestation::issue(&other, &rd, 1_000);
        assert!(member_evidence_ok(&p, &record(*id.as_bytes(), hpke, forged), 2_000).is_err());
        // The evidence also binds the TLS key: with one pinned, evidence over "no TLS key" (or
        // another key) does not pass, evidence over it does.
        let mut pinned = record(*id.as_bytes(), hpke, good.clone());
        pinned.tls_spki = Some(gatekeeper_raft::state::Bytes32([5; 32]));
        assert!(member_evidence_ok(&p, &pinned, 2_000).is_err());
        let rd_tls = member_report_data(id.as_bytes(), &hpke, Some(&[5; 32]));
        pinned.attestation =
            gatekeeper_raft::state::HexBytes(keyring::dev_attestation::issue(&dev, &rd_tls, 1_000));
        member_evidence_ok(&p, &pinned, 2_000).unwrap();
        pinned.tls_spki = Some(gatekeeper_raft::state::Bytes32([6; 32]));
        assert!(member_evidence_ok(&p, &pinned, 2_000).is_err());
        // The `none` policy accepts anything.
        member_evidence_ok(
            &member_policy(PolicyKind::None, &dev),
            &record(*id.as_bytes(), hpke, vec![]),
            2_000,
        )
        .unwrap();
    }
}
