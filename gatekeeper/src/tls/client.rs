//! The client side: a tonic `Endpoint` that verifies the server's certificate against a CA under
//! a given server name, and optionally presents a client certificate (nodes to each other,
//! operators to the admin listener). Miners need only the CA.

use super::pem::{load_ca_bundle, Identity};
use super::{provider, TlsError, ALPN_H2};
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// A loaded CA bundle and optional client identity.
#[derive(Debug, Clone)]
pub struct ClientTls {
    roots: Arc<RootCertStore>,
    identity: Option<Arc<Identity>>,
}

impl ClientTls {
    /// Reads the CA bundle `ca` and, if given, the client certificate chain and key, checking
    /// them at `now` as [`load_ca_bundle`] and [`Identity::load`] do.
    pub fn load(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        now: SystemTime,
    ) -> Result<ClientTls, TlsError> {
        let mut roots = RootCertStore::empty();
        for der in load_ca_bundle(ca, now)? {
            roots
                .add(der)
                .map_err(|e| TlsError::rustls(format!("{}", ca.display()), e))?;
        }
        let identity = match identity {
            Some((cert, key)) => Some(Arc::new(Identity::load(cert, key, now)?)),
            None => None,
        };
        Ok(ClientTls {
            roots: Arc::new(roots),
            identity,
        })
    }

    /// The client identity, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }

    /// An endpoint for `address` (`host:port`, or an `https://` URI) that verifies the server's
    /// certificate for `server_name` (a DNS name or IP address among its subjectAltNames), speaks
    /// HTTP/2 over TLS with ALPN `h2`, and presents the client identity if there is one.
    /// An `http://` URI is refused: tonic would connect in plaintext.
    pub fn endpoint(&self, address: &str, server_name: &str) -> Result<Endpoint, TlsError> {
        ServerName::try_from(server_name.to_string())
            .map_err(|e| TlsError::Config(format!("server name {server_name:?}: {e}")))?;
        let uri = if address.starts_with("https://") {
            address.to_string()
        } else if address.contains("://") {
            return Err(TlsError::Config(format!(
                "{address}: a TLS endpoint needs an https:// URI or host:port"
            )));
        } else {
            format!("https://{address}")
        };
        let tls = self.tonic_config().domain_name(server_name);
        Endpoint::from_shared(uri.clone())
            .map_err(|e| TlsError::Config(format!("{uri}: {e}")))?
            .tls_config(tls)
            .map_err(|e| TlsError::Config(format!("{uri}: TLS settings: {e}")))
    }

    /// The trust anchors and identity as tonic's client TLS config, without a server name (set
    /// one per peer with `domain_name`).
    pub fn tonic_config(&self) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new().trust_anchors(self.roots.roots.iter().cloned());
        if let Some(id) = &self.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                id.chain_pem(),
                id.key_pem(),
            ));
        }
        tls
    }

    /// The same trust and identity as a `rustls::ClientConfig` (ring provider, ALPN `h2`), for
    /// callers that make their own connections (and tests that look at the server's certificate).
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::rustls("TLS versions", e))?
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain().to_vec(), id.key().der())
                .map_err(|e| TlsError::rustls(format!("{}", id.cert_path().display()), e))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }
}

/// A node's own TLS material as a client: the cluster CA and its node certificate, used towards
/// peers (Raft, FetchShare). Re-read on SIGHUP with the listeners ([`NodeTls::reload`]): new
/// connections then present the new certificate.
#[derive(Clone)]
pub struct NodeTls {
    files: Arc<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)>,
    current: Arc<RwLock<(ClientTls, [u8; 32])>>,
    peer: gatekeeper_raft::network::PeerTls,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("cert", &self.files.1)
            .field("spki_sha256", &hex::encode(self.spki()))
            .finish()
    }
}

impl NodeTls {
    fn read(
        ca: &Path,
        cert: &Path,
        key: &Path,
        now: SystemTime,
    ) -> Result<(ClientTls, [u8; 32]), TlsError> {
        let client = ClientTls::load(ca, Some((cert, key)), now)?;
        let leaf = client
            .identity()
            .and_then(|i| i.chain().first().cloned())
            .ok_or_else(|| TlsError::Config(format!("{}: no certificate", cert.display())))?;
        let info = super::CertInfo::parse(&leaf)
            .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?;
        Ok((client, info.spki_sha256))
    }

    /// Loads the CA bundle and the node's certificate and key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<NodeTls, TlsError> {
        let (client, spki) = Self::read(ca, cert, key, crate::clock::now())?;
        let peer = gatekeeper_raft::network::PeerTls::new(client.tonic_config());
        Ok(NodeTls {
            files: Arc::new((ca.to_path_buf(), cert.to_path_buf(), key.to_path_buf())),
            current: Arc::new(RwLock::new((client, spki))),
            peer,
        })
    }

    /// Re-reads the files; on any error the old material stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (ca, cert, key) = &*self.files;
        let (client, spki) = Self::read(ca, cert, key, crate::clock::now())?;
        self.peer.set(client.tonic_config());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (client, spki);
        Ok(())
    }

    /// The client config (CA + node certificate).
    pub fn client(&self) -> ClientTls {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// SHA-256 of the node certificate's SubjectPublicKeyInfo (what its member record pins).
    pub fn spki(&self) -> [u8; 32] {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1
    }

    /// The Raft network's view of the same material (follows [`NodeTls::reload`]).
    pub fn peer_tls(&self) -> gatekeeper_raft::network::PeerTls {
        self.peer.clone()
    }
}
