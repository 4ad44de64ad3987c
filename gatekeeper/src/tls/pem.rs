//! Reading PEM files: a CA bundle, a certificate chain and its private key. Each error names the
//! file and says what is wrong with it (see [`TlsError`]).

use super::cert::{CertInfo, ValidityStatus};
use super::TlsError;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use zeroize::Zeroizing;

/// Every PEM section of a file, or why it is not PEM.
fn sections(path: &Path, bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsError> {
    let mut out = vec![];
    for s in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(bytes) {
        out.push(s.map_err(|e| TlsError::NotPem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?);
    }
    if out.is_empty() {
        return Err(TlsError::NotPem {
            path: path.to_path_buf(),
            detail: "no '-----BEGIN' section (a DER file must be converted to PEM)".into(),
        });
    }
    Ok(out)
}

fn kinds(sections: &[(SectionKind, Vec<u8>)]) -> String {
    sections
        .iter()
        .map(|(k, _)| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| TlsError::read(path, e))
}

/// Every certificate of a PEM file (leaf first, for a chain), each checked to be X.509.
/// Sections of other kinds (a key in the same file) are skipped.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    Ok(load_certs_with_info(path)?
        .0
        .into_iter()
        .map(|(d, _)| d)
        .collect())
}

type CertsAndFile = (Vec<(CertificateDer<'static>, CertInfo)>, Zeroizing<Vec<u8>>);

fn load_certs_with_info(path: &Path) -> Result<CertsAndFile, TlsError> {
    let bytes = read(path)?;
    let all = sections(path, &bytes)?;
    let found = kinds(&all);
    let mut out = vec![];
    for (kind, der) in all {
        if kind != SectionKind::Certificate {
            continue;
        }
        let info = CertInfo::parse(&der).map_err(|detail| TlsError::BadCertificate {
            path: path.to_path_buf(),
            index: out.len() + 1,
            detail,
        })?;
        out.push((CertificateDer::from(der), info));
    }
    if out.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok((out, bytes))
}

fn check_validity(path: &Path, info: &CertInfo, now: SystemTime) -> Result<(), TlsError> {
    match info.validity_at(now) {
        ValidityStatus::Valid => Ok(()),
        ValidityStatus::Expired => Err(TlsError::Expired {
            path: path.to_path_buf(),
            subject: info.subject.clone(),
            not_after: info.not_after_text.clone(),
        }),
        ValidityStatus::NotYetValid => Err(TlsError::NotYetValid {
            path: path.to_path_buf(),
            subject: info.subject.clone(),
            not_before: info.not_before_text.clone(),
        }),
    }
}

/// A CA bundle: one or more CA certificates, each valid at `now` and marked CA.
pub fn load_ca_bundle(
    path: &Path,
    now: SystemTime,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let (certs, _) = load_certs_with_info(path)?;
    for (_, info) in &certs {
        if !info.is_ca {
            return Err(TlsError::NotCa {
                path: path.to_path_buf(),
                subject: info.subject.clone(),
            });
        }
        check_validity(path, info, now)?;
    }
    Ok(certs.into_iter().map(|(d, _)| d).collect())
}

/// A private key (PKCS#8, PKCS#1 or SEC1). Its `Debug` never shows the key.
pub struct PrivateKey {
    der: PrivateKeyDer<'static>,
    pem: Zeroizing<Vec<u8>>,
    path: PathBuf,
}

impl PrivateKey {
    /// The key, for rustls.
    pub fn der(&self) -> PrivateKeyDer<'static> {
        self.der.clone_key()
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, redacted)", self.path.display())
    }
}

/// Reads the one private key of a PEM file. A key file readable by group or others is used, with
/// a warning.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = read(path)?;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", m.permissions().mode() & 0o777),
                "private key file is readable by group or others; it should be 0600"
            );
        }
    }
    let all = sections(path, &bytes)?;
    let found = kinds(&all);
    let mut keys: Vec<PrivateKeyDer<'static>> = all
        .into_iter()
        .filter_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der))
        .collect();
    match keys.len() {
        0 => Err(TlsError::NoKey {
            path: path.to_path_buf(),
            found,
        }),
        1 => Ok(PrivateKey {
            der: keys.remove(0),
            pem: bytes,
            path: path.to_path_buf(),
        }),
        count => Err(TlsError::SeveralKeys {
            path: path.to_path_buf(),
            count,
        }),
    }
}

/// A certificate chain and its private key, both checked: the chain parses, every certificate in
/// it is valid at load time, and the key is the leaf's. `Debug` does not show the key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    cert_pem: Vec<u8>,
    leaf: CertInfo,
    key: PrivateKey,
    cert_path: PathBuf,
}

impl Identity {
    /// Reads and checks `cert` (leaf first, then any intermediates) and `key` at time `now`.
    pub fn load(cert: &Path, key: &Path, now: SystemTime) -> Result<Identity, TlsError> {
        let (certs, cert_pem) = load_certs_with_info(cert)?;
        for (_, info) in &certs {
            check_validity(cert, info, now)?;
        }
        let leaf = certs[0].1.clone();
        let chain: Vec<_> = certs.into_iter().map(|(d, _)| d).collect();
        let key = load_private_key(key)?;
        match rustls::sign::CertifiedKey::from_der(chain.clone(), key.der(), &super::provider()) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert.to_path_buf(),
                    key: key.path.clone(),
                })
            }
            Err(e) => {
                return Err(TlsError::BadKey {
                    path: key.path.clone(),
                    detail: e.to_string(),
                })
            }
        }
        Ok(Identity {
            chain,
            cert_pem: cert_pem.to_vec(),
            leaf,
            key,
            cert_path: cert.to_path_buf(),
        })
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// What the leaf says.
    pub fn leaf(&self) -> &CertInfo {
        &self.leaf
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The certificate file as read (PEM), for tonic's `Identity::from_pem`.
    pub(crate) fn chain_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The key file as read (PEM), in a buffer wiped on drop.
    pub(crate) fn key_pem(&self) -> &[u8] {
        &self.key.pem
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert", &self.cert_path)
            .field("subject", &self.leaf.subject)
            .field("chain_len", &self.chain.len())
            .field("key", &self.key)
            .finish()
    }
}
