//! What a certificate says, read with x509-parser: subject names, validity, CA flag, and the
//! SHA-256 of its SubjectPublicKeyInfo (what a member record pins).

use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The parts of an X.509 certificate Gatekeeper looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject as one line (`CN=node-1, O=...`).
    pub subject: String,
    /// The subject's first common name.
    pub common_name: Option<String>,
    /// The DNS names of the subjectAltName extension.
    pub dns_names: Vec<String>,
    /// The IP addresses of the subjectAltName extension.
    pub ip_addresses: Vec<IpAddr>,
    /// notBefore, seconds since the Unix epoch.
    pub not_before: i64,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// notBefore as x509-parser prints it.
    pub not_before_text: String,
    /// notAfter as x509-parser prints it.
    pub not_after_text: String,
    /// basicConstraints CA.
    pub is_ca: bool,
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
}

/// Where `now` falls in a certificate's validity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidityStatus {
    /// notBefore <= now <= notAfter.
    Valid,
    /// now < notBefore.
    NotYetValid,
    /// now > notAfter.
    Expired,
}

impl CertInfo {
    /// Parses a DER certificate. The error is x509-parser's message.
    pub fn parse(der: &[u8]) -> Result<CertInfo, String> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!(
                "{} trailing bytes after the certificate",
                rest.len()
            ));
        }
        Ok(Self::from_parsed(&cert))
    }

    fn from_parsed(cert: &X509Certificate<'_>) -> CertInfo {
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut dns_names = vec![];
        let mut ip_addresses = vec![];
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            ip_addresses.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            ip_addresses.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        let v = cert.validity();
        CertInfo {
            subject: cert.subject().to_string(),
            common_name,
            dns_names,
            ip_addresses,
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
            not_before_text: v.not_before.to_string(),
            not_after_text: v.not_after.to_string(),
            is_ca: cert.is_ca(),
            spki_sha256: Sha256::digest(cert.public_key().raw).into(),
        }
    }

    /// Where `now` falls in the validity period.
    pub fn validity_at(&self, now: SystemTime) -> ValidityStatus {
        let now = unix_secs(now);
        if now < self.not_before {
            ValidityStatus::NotYetValid
        } else if now > self.not_after {
            ValidityStatus::Expired
        } else {
            ValidityStatus::Valid
        }
    }

    /// The names an allowlist is matched against: the common name and the DNS names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.common_name
            .iter()
            .map(String::as_str)
            .chain(self.dns_names.iter().map(String::as_str))
    }
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo: the fingerprint a member record stores.
/// It names the key, not the certificate, so a renewed certificate for the same key keeps it.
pub fn spki_sha256(der: &[u8]) -> Result<[u8; 32], String> {
    CertInfo::parse(der).map(|c| c.spki_sha256)
}

/// Seconds since the Unix epoch (negative before it).
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The ECDSA P-256 public key (uncompressed SEC1 point, 65 bytes) of a DER certificate: what an
/// operator's certificate registers to sign operator commands with. Other key types are refused
/// with a message naming the type.
pub fn p256_public_key(der: &[u8]) -> Result<Vec<u8>, String> {
    const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    const P256: &str = "1.2.840.10045.3.1.7";
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let spki = cert.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    if alg != EC_PUBLIC_KEY || curve.as_deref() != Some(P256) {
        return Err(format!(
            "the certificate's key is not ECDSA P-256 (algorithm {alg}, parameters {curve:?}); \
             `gatekeeper certs operator` makes a P-256 key"
        ));
    }
    let point = spki.subject_public_key.data.to_vec();
    if point.len() != 65 || point[0] != 4 {
        return Err("the certificate's P-256 key is not an uncompressed point".into());
    }
    Ok(point)
}
