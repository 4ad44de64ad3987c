//! Transport security: the reusable TLS core behind Gatekeeper's three listeners
//! (docs/design.md §10.6).
//!
//! | listener | services | policy ([`ServerTls`]) |
//! |---|---|---|
//! | cluster | RaftService, PeerService | [`ServerTls::mutual`]: client certificate required, chained to the cluster CA (the caller then checks the leaf's SPKI against the member records) |
//! | admin | AdminService | [`ServerTls::mutual_with_names`] (or `mutual`): operator certificates chained to an operator CA, optionally only the listed names |
//! | key | KeyService | [`ServerTls::server_only`]: miners verify the node against the cluster CA |
//!
//! What is here:
//!
//! * [`pem`] — reading a CA bundle, a certificate chain and a private key from PEM files, with
//!   errors that name the file (missing, not PEM, no key, key does not match, expired, not yet
//!   valid, not a CA).
//! * [`cert`] — what a certificate says: names, validity, [`spki_sha256`].
//! * [`server`] — [`ServerTls`]: the three policies as a `rustls::ServerConfig` (ALPN `h2`, ring
//!   provider, no session resumption).
//! * [`reload`] — [`Reloadable`]: the current config, swapped by [`Reloadable::reload`] only when
//!   every file loads; [`spawn_sighup_reloader`].
//! * [`incoming`](mod@incoming) — [`incoming()`]: the accept loop for
//!   `tonic::transport::Server::serve_with_incoming_shutdown` (connection cap, handshake timeout,
//!   TCP_NODELAY), its IO type [`ServerIo`] with [`ConnectInfo`], and [`peer_identity`].
//! * [`client`] — [`ClientTls`]: a tonic `Endpoint` that verifies the server against a CA under a
//!   given server name and optionally presents a client certificate.
//! * [`issue`] — making certificates with rcgen (what `gatekeeper certs` writes).
//!
//! Only rustls' `ring` provider is used (no aws-lc). Private keys are never `Debug`-printed.
//! Nothing here reads the wall clock except through [`crate::clock`].

pub mod cert;
pub mod client;
pub mod incoming;
pub mod issue;
pub mod pem;
pub mod reload;
pub mod server;

#[cfg(test)]
mod tests;

pub use cert::{spki_sha256, CertInfo};
pub use client::{ClientTls, NodeTls};
pub use incoming::{
    connect_info, incoming, incoming_from, AcceptStream, Accepted, ConnectInfo, Establish,
    FailureKind, HandshakeFailure, Incoming, Io, Limits, ListenerStats, PeerIdentity, ServerIo,
};
pub use pem::{load_ca_bundle, load_certs, load_private_key, Identity, PrivateKey};
pub use reload::{reload_all, reload_on, spawn_sighup_reloader, Reloadable};
pub use server::{ClientAuth, ServerTls};

/// Re-exported so callers need no direct dependency for the types in this API.
pub use rustls;
pub use rustls_pki_types::CertificateDer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The only application protocol the listeners speak.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider every config here is built with: rustls' `ring` provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the peer identity a TLS listener verified for this request (`None` on a plaintext or
/// server-only listener, or a request that did not come through [`incoming()`]).
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<PeerIdentity> {
    connect_info(request).and_then(|c| c.peer.as_deref().cloned())
}

/// Why TLS material or settings could not be used. Every file error names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file does not exist.
    #[error("{}: no such file", .path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not PEM (or its PEM is damaged).
    #[error("{}: not PEM: {detail}", .path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        detail: String,
    },
    /// The file is PEM but holds no certificate.
    #[error("{}: holds no certificate (PEM sections found: {found})", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// The kinds of the sections it does hold.
        found: String,
    },
    /// The file is PEM but holds no private key.
    #[error("{}: holds no private key (PEM sections found: {found})", .path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
        /// The kinds of the sections it does hold.
        found: String,
    },
    /// The file holds more than one private key.
    #[error("{}: holds {count} private keys; expected one", .path.display())]
    SeveralKeys {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
    },
    /// The private key is not one rustls' ring provider can use.
    #[error("{}: unusable private key: {detail}", .path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A PEM certificate section is not valid X.509.
    #[error("{}: certificate #{index} is not valid X.509: {detail}", .path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// 1-based position in the file.
        index: usize,
        /// What the parser said.
        detail: String,
    },
    /// The private key is not the key of the certificate's public key.
    #[error("{}: private key does not match the certificate in {}", .key.display(), .cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate's validity ended.
    #[error("{}: certificate {subject} expired at {not_after}", .path.display())]
    Expired {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// Its notAfter.
        not_after: String,
    },
    /// A certificate's validity has not begun.
    #[error("{}: certificate {subject} is not valid before {not_before}", .path.display())]
    NotYetValid {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// Its notBefore.
        not_before: String,
    },
    /// A certificate in a CA bundle is not a CA certificate.
    #[error("{}: certificate {subject} is not a CA certificate (basicConstraints CA is not set)", .path.display())]
    NotCa {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
    },
    /// rustls refused the material or settings.
    #[error("{what}: {source}")]
    Rustls {
        /// What was being built.
        what: String,
        /// rustls' error.
        source: rustls::Error,
    },
    /// Invalid settings (an empty allowlist, a bad server name, a bad endpoint).
    #[error("{0}")]
    Config(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(String),
}

impl TlsError {
    fn read(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            TlsError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            TlsError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    fn rustls(what: impl Into<String>, source: rustls::Error) -> Self {
        TlsError::Rustls {
            what: what.into(),
            source,
        }
    }
}
