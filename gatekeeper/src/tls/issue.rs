//! Making certificates with rcgen: a CA, node certificates (server and client), operator client
//! certificates. `gatekeeper certs` writes what these return; tests use them directly. Keys are
//! ECDSA P-256, each certificate has a fresh key and a random serial.

use super::cert::CertInfo;
use super::TlsError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::Digest;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// The organisation every certificate made here names.
pub const ORGANIZATION: &str = "Gatekeeper";

/// A certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour before `now` (clock skew between machines) to `days` days after it.
    pub fn days_from(now: SystemTime, days: u32) -> Validity {
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// A certificate and its private key, PEM. `Debug` does not show the key.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM (wiped on drop).
    pub key_pem: Zeroizing<String>,
    /// What the certificate says.
    pub info: CertInfo,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("subject", &self.info.subject)
            .field("not_after", &self.info.not_after_text)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A CA that can sign: its certificate and key.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("key", &"<redacted>")
            .finish()
    }
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn params(common_name: &str, validity: Validity) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.not_before = validity.not_before.into();
    p.not_after = validity.not_after.into();
    let mut serial = [0u8; 20];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    if validity.not_after <= validity.not_before {
        return Err(TlsError::Generate(
            "notAfter must be later than notBefore".into(),
        ));
    }
    Ok(p)
}

fn issued(cert: rcgen::Certificate, key: &KeyPair) -> Result<Issued, TlsError> {
    Ok(Issued {
        info: CertInfo::parse(cert.der()).map_err(TlsError::Generate)?,
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// Checks a certificate name: non-empty, printable ASCII without `/` (it also names files).
pub fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(TlsError::Config(format!(
            "name {name:?}: use 1-64 characters of A-Z a-z 0-9 - _ . @, not starting with '.'"
        )))
    }
}

impl Authority {
    /// A new self-signed CA (path length 0: it signs leaves only).
    pub fn generate(
        common_name: &str,
        validity: Validity,
    ) -> Result<(Authority, Issued), TlsError> {
        let mut p = params(common_name, validity)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = p.self_signed(&key).map_err(gen_err)?;
        let out = issued(cert, &key)?;
        Ok((
            Authority {
                issuer: Issuer::new(p, key),
                cert_pem: out.cert_pem.clone(),
            },
            out,
        ))
    }

    /// A CA from its certificate and key (as [`Authority::generate`] or `gatekeeper certs ca`
    /// wrote them). The key must be the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, TlsError> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| TlsError::Generate(format!("CA key: {e}")))?;
        let der = {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|e| TlsError::Generate(format!("CA certificate: not PEM: {e}")))?
        };
        let info = CertInfo::parse(&der).map_err(TlsError::Generate)?;
        if !info.is_ca {
            return Err(TlsError::Generate(format!(
                "{} is not a CA certificate",
                info.subject
            )));
        }
        let key_spki: [u8; 32] =
            sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
        if key_spki != info.spki_sha256 {
            return Err(TlsError::Generate(
                "the CA key does not match the CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(gen_err)?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate, PEM (what peers and miners trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A node certificate: subject CN `name`, subjectAltNames `hosts` (each an IP address or a
    /// DNS name: the addresses the node is reached at), usable as server and client certificate
    /// (serverAuth + clientAuth).
    pub fn node(
        &self,
        name: &str,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Issued, TlsError> {
        check_name(name)?;
        if hosts.is_empty() {
            return Err(TlsError::Config(
                "a node certificate needs at least one host (the address clients dial)".into(),
            ));
        }
        let mut p = params(name, validity)?;
        for h in hosts {
            p.subject_alt_names.push(match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    h.clone()
                        .try_into()
                        .map_err(|e| TlsError::Config(format!("host {h:?}: {e}")))?,
                ),
            });
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(p)
    }

    /// An operator client certificate: subject CN `name`, clientAuth only.
    pub fn operator(&self, name: &str, validity: Validity) -> Result<Issued, TlsError> {
        check_name(name)?;
        let mut p = params(name, validity)?;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    fn sign(&self, mut p: CertificateParams) -> Result<Issued, TlsError> {
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = p.signed_by(&key, &self.issuer).map_err(gen_err)?;
        issued(cert, &key)
    }
}
