//! The accept loop: TCP connections from a listener, capped, TLS-handshaken under a deadline, as a
//! stream for `tonic::transport::Server::serve_with_incoming_shutdown`.
//!
//! ```text
//! accept ──► over the cap? ──yes──► close at once (refused_over_limit)
//!               │no (the connection holds a permit until it closes)
//!               ▼
//!          TCP_NODELAY ──► plaintext? ──yes──► ServerIo::Plain
//!               │no
//!               ▼
//!          TLS handshake (config current at accept, deadline) ──fails──► close (handshake_failures, last_failure)
//!               │ok
//!               ▼
//!          ServerIo::Tls + ConnectInfo { remote, verified peer chain, PeerIdentity }
//! ```

use super::cert::CertInfo;
use super::reload::Reloadable;
use futures::{Stream, StreamExt};
use rustls_pki_types::CertificateDer;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, counting those still in their TLS handshake. A connection
    /// accepted beyond this is closed at once.
    pub max_connections: usize,
    /// A TLS handshake not finished within this is abandoned and its connection closed.
    pub handshake_timeout: Duration,
    /// Set TCP_NODELAY on accepted connections (small gRPC frames otherwise wait for delayed
    /// ACKs).
    pub nodelay: bool,
    /// Tell the connection's source it is established as soon as the TLS handshake completes
    /// (default). When false, the service does it once it has admitted the caller
    /// ([`ConnectInfo::mark_established`]): a certificate the handshake accepts but the service
    /// refuses then keeps its connection *pending* (evictable, capped per address).
    pub establish_on_handshake: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            nodelay: true,
            establish_on_handshake: true,
        }
    }
}

/// Who is on the other end of a TLS connection whose client certificate was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The remote socket address.
    pub remote_addr: SocketAddr,
    /// The leaf (end-entity) certificate, DER.
    pub leaf: CertificateDer<'static>,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo (what a member record pins).
    pub spki_sha256: [u8; 32],
    /// The leaf's subject common name.
    pub common_name: Option<String>,
    /// The leaf's DNS subjectAltNames.
    pub dns_names: Vec<String>,
    /// The leaf's IP subjectAltNames.
    pub ip_addresses: Vec<IpAddr>,
}

impl PeerIdentity {
    /// From a verified chain (leaf first); `None` if it is empty or the leaf does not parse.
    pub fn from_chain(
        remote_addr: SocketAddr,
        chain: &[CertificateDer<'static>],
    ) -> Option<PeerIdentity> {
        let leaf = chain.first()?;
        let info = CertInfo::parse(leaf).ok()?;
        Some(PeerIdentity {
            remote_addr,
            leaf: leaf.clone(),
            spki_sha256: info.spki_sha256,
            common_name: info.common_name,
            dns_names: info.dns_names,
            ip_addresses: info.ip_addresses,
        })
    }
}

/// What tonic puts in every request's extensions for a connection from [`incoming()`]; read it
/// with [`connect_info`] or [`super::peer_identity`]. (tonic's own `Request::remote_addr` does not
/// know this type: use `remote_addr` here.)
#[derive(Clone, Debug)]
pub struct ConnectInfo {
    /// The remote socket address.
    pub remote_addr: SocketAddr,
    /// The local socket address.
    pub local_addr: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client's certificate chain as presented and verified (leaf first); `None` on plaintext
    /// and server-only listeners.
    pub peer_certificates: Option<Arc<[CertificateDer<'static>]>>,
    /// The verified client's identity, parsed from the leaf.
    pub peer: Option<Arc<PeerIdentity>>,
    /// Marks the connection established with its source (see [`Limits::establish_on_handshake`]).
    pub establish: Option<Establish>,
}

/// A connection's "established" signal to its source's limits, fired once by whoever admits the
/// caller (shared by every request on the connection; later calls do nothing).
#[derive(Clone)]
pub struct Establish(Arc<Mutex<Option<EstablishFn>>>);

/// What [`Establish`] fires.
type EstablishFn = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Establish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Establish")
    }
}

impl Establish {
    fn fire(&self) {
        let done = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = done {
            done();
        }
    }
}

impl ConnectInfo {
    /// Marks the connection established (the service admitted its caller); idempotent.
    pub fn mark_established(&self) {
        if let Some(e) = &self.establish {
            e.fire();
        }
    }
}

/// The [`ConnectInfo`] of a request served through [`incoming()`].
pub fn connect_info<T>(request: &tonic::Request<T>) -> Option<&ConnectInfo> {
    request.extensions().get::<ConnectInfo>()
}

/// Why a TLS handshake failed, as a kind a test or a metric can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The client did not speak TLS (e.g. plaintext HTTP/2 to a TLS port).
    NotTls,
    /// The listener requires a client certificate and none was presented.
    NoClientCertificate,
    /// The client certificate does not chain to an accepted CA.
    UnknownIssuer,
    /// The client certificate is expired or not yet valid.
    CertificateNotCurrent,
    /// The client certificate's names are not in the listener's allowlist.
    NameNotAllowed,
    /// The client certificate is otherwise unacceptable (wrong key usage, bad signature...).
    BadCertificate,
    /// The client aborted with an alert (e.g. it did not accept this server's certificate).
    PeerAlert,
    /// No protocol version, cipher suite or ALPN protocol in common.
    Incompatible,
    /// The handshake did not finish within the deadline.
    Timeout,
    /// The client closed the connection during the handshake.
    Closed,
    /// Anything else.
    Other,
}

/// One failed handshake.
#[derive(Clone, Debug)]
pub struct HandshakeFailure {
    /// Who.
    pub remote_addr: SocketAddr,
    /// Why, classified.
    pub kind: FailureKind,
    /// Why, as rustls said it.
    pub message: String,
}

fn classify(e: &io::Error) -> FailureKind {
    use rustls::{CertificateError as C, Error as E, InvalidMessage as M};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => FailureKind::Closed,
            _ => FailureKind::Other,
        };
    };
    match tls {
        E::InvalidMessage(M::InvalidContentType | M::UnknownProtocolVersion)
        | E::InappropriateMessage { .. } => FailureKind::NotTls,
        E::NoCertificatesPresented => FailureKind::NoClientCertificate,
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => FailureKind::UnknownIssuer,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => FailureKind::CertificateNotCurrent,
            C::ApplicationVerificationFailure => FailureKind::NameNotAllowed,
            _ => FailureKind::BadCertificate,
        },
        E::AlertReceived(_) => FailureKind::PeerAlert,
        E::NoApplicationProtocol | E::PeerIncompatible(_) => FailureKind::Incompatible,
        _ => FailureKind::Other,
    }
}

/// Counters of one listener (for tests, logs and metrics).
#[derive(Debug)]
pub struct ListenerStats {
    max: usize,
    permits: Arc<Semaphore>,
    served: AtomicU64,
    refused_over_limit: AtomicU64,
    handshake_failures: AtomicU64,
    last_failure: Mutex<Option<HandshakeFailure>>,
    /// Refusals are logged at most once per [`REFUSAL_LOG_INTERVAL`].
    log_gate: gatekeeper_raft::lograte::LogGate,
}

/// Refused clients are logged at most once per this interval (with a count of the others), so a
/// handshake flood cannot fill the disk with log lines.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl ListenerStats {
    /// Connections open now (including those in their handshake).
    pub fn open_connections(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Connections handed to the server so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Connections closed at once because the cap was reached.
    pub fn refused_over_limit(&self) -> u64 {
        self.refused_over_limit.load(Ordering::Relaxed)
    }

    /// Failed or timed-out TLS handshakes.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// The most recent failed handshake.
    pub fn last_failure(&self) -> Option<HandshakeFailure> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn failed(&self, f: HandshakeFailure) {
        match f.kind {
            FailureKind::NoClientCertificate
            | FailureKind::UnknownIssuer
            | FailureKind::CertificateNotCurrent
            | FailureKind::NameNotAllowed
            | FailureKind::BadCertificate => {
                if let Some(left_out) = self.log_gate.pass(std::time::Instant::now()) {
                    tracing::warn!(
                        remote = %f.remote_addr, kind = ?f.kind, error = %f.message,
                        refused_since_last_line = left_out,
                        "TLS client refused"
                    );
                }
            }
            _ => tracing::debug!(
                remote = %f.remote_addr, kind = ?f.kind, error = %f.message,
                "TLS handshake failed"
            ),
        }
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }
}

/// An accepted connection: plaintext TCP or a TLS stream over it. It holds its listener's
/// connection permit until dropped.
pub struct ServerIo {
    stream: Conn,
    info: ConnectInfo,
    _permit: OwnedSemaphorePermit,
}

/// What a connection runs over: a TCP stream, or one already wrapped by the node's own limits
/// (`node::listen::LimitedConn`).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// An accepted connection before TLS.
pub struct Accepted {
    /// The stream.
    pub io: Box<dyn Io>,
    /// Its remote address.
    pub remote: SocketAddr,
    /// Its local address.
    pub local: Option<SocketAddr>,
    /// Called once the connection is established (TLS handshake done; at once on plaintext), so
    /// the source's limits stop treating it as pending.
    pub established: Option<Box<dyn FnOnce() + Send>>,
}

/// A source of accepted connections for [`incoming_from`].
pub type AcceptStream = Pin<Box<dyn Stream<Item = io::Result<Accepted>> + Send>>;

enum Conn {
    Plain(Box<dyn Io>),
    Tls(Box<tokio_rustls::server::TlsStream<Box<dyn Io>>>),
}

impl ServerIo {
    /// This connection's [`ConnectInfo`].
    pub fn info(&self) -> &ConnectInfo {
        &self.info
    }
}

impl std::fmt::Debug for ServerIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIo")
            .field("info", &self.info)
            .finish()
    }
}

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = ConnectInfo;

    fn connect_info(&self) -> ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The stream of accepted connections of one listener. Dropping it (tonic does when it stops
/// accepting) ends the accept loop, closes the listening socket and abandons handshakes in flight.
pub struct Incoming {
    rx: mpsc::Receiver<ServerIo>,
    stats: Arc<ListenerStats>,
    local_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Incoming {
    /// This listener's counters (shared; they stay readable after the listener stops).
    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Incoming {
    type Item = Result<ServerIo, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx).map(|o| o.map(Ok))
    }
}

/// Starts accepting on `listener` (must be called inside a tokio runtime). `tls: None` serves
/// plaintext — for development mode only, and logged as such. With TLS, each connection is
/// handshaken with the config that is current when it is accepted.
pub fn incoming(listener: TcpListener, tls: Option<Reloadable>, limits: Limits) -> Incoming {
    let local_addr = listener.local_addr().ok();
    let nodelay = limits.nodelay;
    let source = futures::stream::unfold(listener, move |l| async move {
        loop {
            match l.accept().await {
                Ok((tcp, remote)) => {
                    if nodelay {
                        let _ = tcp.set_nodelay(true);
                    }
                    let local = tcp.local_addr().ok();
                    let a = Accepted {
                        io: Box::new(tcp),
                        remote,
                        local,
                        established: None,
                    };
                    return Some((Ok(a), l));
                }
                Err(e) if per_connection(&e) => continue,
                Err(e) => return Some((Err(e), l)),
            }
        }
    });
    incoming_from(Box::pin(source), local_addr, tls, limits)
}

/// Like [`incoming()`], over connections accepted elsewhere (the node wraps its TCP connections
/// in its own limits first). An error item pauses accepting for 100 ms (out of descriptors).
pub fn incoming_from(
    source: AcceptStream,
    local_addr: Option<SocketAddr>,
    tls: Option<Reloadable>,
    limits: Limits,
) -> Incoming {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let stats = Arc::new(ListenerStats {
        max: limits.max_connections,
        permits: permits.clone(),
        served: AtomicU64::new(0),
        refused_over_limit: AtomicU64::new(0),
        handshake_failures: AtomicU64::new(0),
        last_failure: Mutex::new(None),
        log_gate: gatekeeper_raft::lograte::LogGate::new(REFUSAL_LOG_INTERVAL),
    });
    match &tls {
        None => tracing::warn!(
            addr = ?local_addr,
            "listener serves PLAINTEXT (development mode): no TLS, no client authentication"
        ),
        Some(r) => tracing::info!(
            addr = ?local_addr,
            listener = r.label(),
            policy = ?r.settings().client_auth,
            "TLS listener"
        ),
    }
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(accept_loop(source, tls, limits, permits, stats.clone(), tx));
    Incoming {
        rx,
        stats,
        local_addr,
        task,
    }
}

/// Errors of one connection (the listener itself is fine).
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

async fn accept_loop(
    mut source: AcceptStream,
    tls: Option<Reloadable>,
    limits: Limits,
    permits: Arc<Semaphore>,
    stats: Arc<ListenerStats>,
    tx: mpsc::Sender<ServerIo>,
) {
    // Handshakes in flight; dropping the set (when this task is aborted) aborts them.
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = source.next() => match a {
                Some(a) => a,
                None => return,
            },
            _ = tx.closed() => return,
        };
        let Accepted {
            io: tcp,
            remote: remote_addr,
            local: local_addr,
            established,
        } = match accepted {
            Ok(a) => a,
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors or buffers: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused_over_limit.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(remote = %remote_addr, max = limits.max_connections, "connection cap reached; closed");
            drop(tcp);
            continue;
        };
        let Some(tls) = &tls else {
            if let Some(done) = established {
                done();
            }
            let io = ServerIo {
                stream: Conn::Plain(tcp),
                info: ConnectInfo {
                    remote_addr,
                    local_addr,
                    tls: false,
                    peer_certificates: None,
                    peer: None,
                    establish: None,
                },
                _permit: permit,
            };
            if tx.send(io).await.is_err() {
                return;
            }
            stats.served.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let (tx, stats, timeout) = (tx.clone(), stats.clone(), limits.handshake_timeout);
        let establish_on_handshake = limits.establish_on_handshake;
        handshakes.spawn(async move {
            let failure = |kind, message| HandshakeFailure {
                remote_addr,
                kind,
                message,
            };
            let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let kind = classify(&e);
                    let message = match kind {
                        FailureKind::NameNotAllowed => {
                            format!("client certificate names are not in the allowlist ({e})")
                        }
                        _ => e.to_string(),
                    };
                    return stats.failed(failure(kind, message));
                }
                Err(_) => {
                    return stats.failed(failure(
                        FailureKind::Timeout,
                        format!("no TLS handshake within {timeout:?}"),
                    ))
                }
            };
            let establish = match established {
                Some(done) if establish_on_handshake => {
                    done();
                    None
                }
                Some(done) => Some(Establish(Arc::new(Mutex::new(Some(done))))),
                None => None,
            };
            let chain: Option<Arc<[CertificateDer<'static>]>> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|d| d.clone().into_owned()).collect());
            let peer = chain
                .as_deref()
                .and_then(|c| PeerIdentity::from_chain(remote_addr, c))
                .map(Arc::new);
            let io = ServerIo {
                stream: Conn::Tls(Box::new(stream)),
                info: ConnectInfo {
                    remote_addr,
                    local_addr,
                    tls: true,
                    peer_certificates: chain,
                    peer,
                    establish,
                },
                _permit: permit,
            };
            if tx.send(io).await.is_ok() {
                stats.served.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}
