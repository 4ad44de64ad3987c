//! [`ServerTls`]: which files a listener serves and whom it lets in, built into a
//! `rustls::ServerConfig`.

use super::cert::CertInfo;
use super::pem::{load_ca_bundle, Identity};
use super::{provider, TlsError, ALPN_H2};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// Whom a listener accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Any client (the key listener: miners authenticate inside the protocol).
    None,
    /// A client certificate chained to a CA of this bundle is required.
    Mutual {
        /// PEM bundle of the accepted CAs.
        ca: PathBuf,
    },
    /// As `Mutual`, and the certificate's common name or one of its DNS names must be listed.
    MutualWithNames {
        /// PEM bundle of the accepted CAs.
        ca: PathBuf,
        /// The accepted names (exact match; DNS names compare case-insensitively).
        allowed_names: Vec<String>,
    },
}

/// A listener's TLS settings: its certificate chain and key files, and its client policy. The
/// files are read by [`ServerTls::build`] (again on every reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// Whom the listener accepts.
    pub client_auth: ClientAuth,
}

impl ServerTls {
    /// Server authentication only (the key listener).
    pub fn server_only(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        ServerTls {
            cert: cert.into(),
            key: key.into(),
            client_auth: ClientAuth::None,
        }
    }

    /// Mutual TLS: clients must present a certificate chained to a CA in `ca` (the cluster
    /// listener).
    pub fn mutual(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: impl Into<PathBuf>,
    ) -> Self {
        ServerTls {
            cert: cert.into(),
            key: key.into(),
            client_auth: ClientAuth::Mutual { ca: ca.into() },
        }
    }

    /// Mutual TLS, and the client certificate's common name or a DNS name must be in
    /// `allowed_names` (the admin listener with an operator allowlist). An empty list is refused
    /// by [`ServerTls::build`]: use [`ServerTls::mutual`] to admit every certificate of the CA.
    pub fn mutual_with_names(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: impl Into<PathBuf>,
        allowed_names: Vec<String>,
    ) -> Self {
        ServerTls {
            cert: cert.into(),
            key: key.into(),
            client_auth: ClientAuth::MutualWithNames {
                ca: ca.into(),
                allowed_names,
            },
        }
    }

    /// Reads every file and builds the rustls config: ring provider, TLS 1.2 and 1.3, ALPN `h2`
    /// only, no session resumption (every connection is verified in full, against the files of
    /// the config it lands on). Certificates must be valid at `now`.
    pub fn build(&self, now: SystemTime) -> Result<Arc<ServerConfig>, TlsError> {
        Ok(self.load(now)?.0)
    }

    /// As [`ServerTls::build`], also returning what the leaf says.
    pub(crate) fn load(&self, now: SystemTime) -> Result<(Arc<ServerConfig>, CertInfo), TlsError> {
        let identity = Identity::load(&self.cert, &self.key, now)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::rustls("TLS versions", e))?;
        let builder = match &self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Mutual { ca } => {
                builder.with_client_cert_verifier(webpki_verifier(ca, now)?)
            }
            ClientAuth::MutualWithNames { ca, allowed_names } => {
                if allowed_names.is_empty() {
                    return Err(TlsError::Config(
                        "the client name allowlist is empty: it would admit nobody (use mutual TLS without names to admit every certificate of the CA)".into(),
                    ));
                }
                builder.with_client_cert_verifier(Arc::new(AllowlistVerifier {
                    inner: webpki_verifier(ca, now)?,
                    allowed: allowed_names.clone(),
                }))
            }
        };
        let mut config = builder
            .with_single_cert(identity.chain().to_vec(), identity.key().der())
            .map_err(|e| TlsError::rustls(format!("{}", self.cert.display()), e))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok((Arc::new(config), identity.leaf().clone()))
    }
}

fn webpki_verifier(
    ca: &std::path::Path,
    now: SystemTime,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in load_ca_bundle(ca, now)? {
        roots
            .add(der)
            .map_err(|e| TlsError::rustls(format!("{}", ca.display()), e))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Config(format!("{}: client verifier: {e}", ca.display())))
}

/// Whether a certificate's names meet an allowlist: its common name or one of its DNS names is
/// listed (DNS names compare case-insensitively, the common name exactly).
pub fn name_allowed(info: &CertInfo, allowed: &[String]) -> bool {
    allowed.iter().any(|a| {
        info.common_name.as_deref() == Some(a.as_str())
            || info.dns_names.iter().any(|d| d.eq_ignore_ascii_case(a))
    })
}

/// WebPkiClientVerifier, then the allowlist. A refused name is an `ApplicationVerificationFailure`,
/// which the client sees as an `access_denied` alert.
#[derive(Debug)]
struct AllowlistVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for AllowlistVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = CertInfo::parse(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if name_allowed(&info, &self.allowed) {
            Ok(verified)
        } else {
            tracing::warn!(
                subject = %info.subject,
                dns_names = ?info.dns_names,
                "client certificate refused: no name of it is in the allowlist"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
