//! Limits on the node's listeners: the same helper builds the Raft and API gRPC servers and wraps
//! their accepted connections (the metrics listener uses the connection cap too).
//!
//! * **Connection cap** ([`ConnTable`]): at most `max_connections` open connections per listener.
//!   A connection is *pending* until it is established (its TLS handshake completed — on the
//!   cluster and admin listeners that means a valid client certificate; on a plaintext listener,
//!   at accept). Established connections are never closed to make room. When a new connection
//!   arrives at the cap, the oldest pending connection older than [`EVICT_PENDING_AFTER`] is
//!   closed to make room; if there is none, the new connection is closed at once.
//! * **Per source address**: at most [`MAX_PENDING_PER_IP`] pending connections per remote IP
//!   (IPv6: per /64), and at most `max_connections_per_source` open ones, pending or established;
//!   a newcomer beyond either replaces the oldest pending connection of the same address if it is
//!   older than [`EVICT_PENDING_AFTER`], or is closed. So one host flooding a listener with connections that never finish a handshake (silent,
//!   or trickling a byte now and then, or reconnecting at once) only competes with itself, and
//!   clients from other hosts — and the flooder's own next real client — still get in; and a
//!   host holding completed connections (a TLS handshake on the key listener needs no
//!   credential; a member's certificate passes the cluster listener's) holds only its share.
//! * **Handshake and idle timeouts** ([`LimitedConn`]): a connection that sends nothing within
//!   `handshake_timeout`, or nothing for `idle_timeout` later on, is closed. HTTP/2 keepalive
//!   pings (`http2_keepalive_interval`, answered within `http2_keepalive_timeout`) keep live
//!   clients from ever being idle that long, and close dead ones.
//! * **Per connection**: at most `max_concurrent_streams` HTTP/2 streams and as many requests in
//!   service at once; every RPC ends after `rpc_timeout`.
//! * **TCP keepalive** (`tcp_keepalive`) and TCP_NODELAY on accepted sockets.
//!
//! An accept error (e.g. out of file descriptors) pauses accepting for
//! [`ACCEPT_ERROR_PAUSE`] instead of retrying in a busy loop.

use crate::config::NodeConfig;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tonic::transport::Server;

/// A pending connection this old may be closed to admit a new one at the cap (younger ones are
/// left to finish their handshake: a burst of real clients must not evict each other).
pub const EVICT_PENDING_AFTER: Duration = Duration::from_millis(250);
/// Pending (not yet established) connections at most per remote IP address (IPv6: per /64).
pub const MAX_PENDING_PER_IP: usize = 8;

use crate::service::source_limit::source_bucket;
/// HTTP/2 flow-control windows of the key listener: how much request data one connection (and
/// one stream) may send that no handler has taken yet. Key requests are a few KiB; hyper's
/// default of 1 MiB per connection would let each of `api_max_connections` unauthenticated
/// connections park a megabyte in the node.
pub const KEY_CONNECTION_WINDOW: u32 = 256 << 10;
/// See [`KEY_CONNECTION_WINDOW`].
pub const KEY_STREAM_WINDOW: u32 = 64 << 10;
/// Pause after an accept error.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How often a listener at its cap reports what it refused and evicted.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The limits of one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections (pending or established) at most per remote IP (IPv6: per /64).
    pub max_connections_per_source: usize,
    /// HTTP/2 streams per connection, and requests served at once per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval on every connection.
    pub http2_keepalive_interval: Duration,
    /// A PING unanswered for this long closes the connection.
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive idle time on accepted sockets.
    pub tcp_keepalive: Duration,
    /// A new connection that sends nothing for this long is closed.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long (after its first byte) is closed.
    pub idle_timeout: Duration,
    /// Longest RPC.
    pub rpc_timeout: Duration,
}

impl ListenLimits {
    /// The configured limits, with `max_connections` and `max_connections_per_source` for this
    /// listener.
    pub fn from_config(
        c: &NodeConfig,
        max_connections: usize,
        max_connections_per_source: usize,
    ) -> Self {
        let ms = Duration::from_millis;
        Self {
            max_connections,
            max_connections_per_source,
            max_concurrent_streams: c.max_concurrent_streams,
            http2_keepalive_interval: ms(c.http2_keepalive_interval_ms),
            http2_keepalive_timeout: ms(c.http2_keepalive_timeout_ms),
            tcp_keepalive: ms(c.tcp_keepalive_ms),
            handshake_timeout: ms(c.connection_handshake_timeout_ms),
            idle_timeout: ms(c.connection_idle_timeout_ms),
            rpc_timeout: ms(c.rpc_timeout_ms),
        }
    }

    /// A tonic server builder with the per-connection limits.
    pub fn server(&self) -> Server {
        Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .concurrency_limit_per_connection(self.max_concurrent_streams as usize)
            .http2_keepalive_interval(Some(self.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(self.http2_keepalive_timeout))
            .timeout(self.rpc_timeout)
    }

    /// The accepted connections of `listener` under these limits, for `serve_with_incoming`.
    /// `name` labels log lines.
    pub fn incoming(&self, listener: TcpListener, name: &'static str) -> LimitedIncoming {
        // `serve_with_incoming` ignores the builder's TCP settings: set them on the sockets.
        let inner = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(self.tcp_keepalive));
        LimitedIncoming {
            inner,
            table: ConnTable::new(name, self),
            pause: None,
        }
    }
}

impl ListenLimits {
    /// [`ListenLimits::incoming`], then TLS with `tls` (`None`: plaintext, development only) by
    /// [`crate::tls::incoming_from`]: what tonic serves. Each request's extensions carry the
    /// connection's [`crate::tls::ConnectInfo`] (the verified client certificate).
    /// `establish_on_handshake`: see [`crate::tls::Limits::establish_on_handshake`] (false on the
    /// cluster and admin listeners, whose services admit the caller after the handshake).
    pub fn incoming_tls(
        &self,
        listener: TcpListener,
        name: &'static str,
        tls: Option<crate::tls::Reloadable>,
        establish_on_handshake: bool,
    ) -> crate::tls::Incoming {
        use tokio_stream::StreamExt as _;
        let local = listener.local_addr().ok();
        let conns = self.incoming(listener, name).map(|r| {
            r.map(|c| {
                let info = c.connect_info();
                let remote = info
                    .remote_addr()
                    .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                let established: Box<dyn FnOnce() + Send> = Box::new(c.establisher());
                crate::tls::Accepted {
                    io: Box::new(c),
                    remote,
                    local: info.local_addr(),
                    established: Some(established),
                }
            })
        });
        crate::tls::incoming_from(
            Box::pin(conns),
            local,
            tls,
            crate::tls::Limits {
                // The connection table above is the cap; this second one only has to be out of
                // its way (an evicted connection's permit is released a moment later, and the
                // newcomer that evicted it must not be refused in between).
                max_connections: self.max_connections.saturating_mul(2),
                handshake_timeout: self.handshake_timeout,
                nodelay: false,
                establish_on_handshake,
            },
        )
    }
}

/// State of one open connection shared with its [`ConnTable`].
#[derive(Debug)]
struct ConnState {
    accepted: Instant,
    /// Source bucket ([`source_bucket`]) of the remote address.
    ip: IpAddr,
    /// Whether any byte has arrived.
    heard: AtomicBool,
    /// Set when the table closes the connection to make room.
    evicted: AtomicBool,
    /// The connection's task, woken on eviction.
    waker: Mutex<Option<Waker>>,
}

impl ConnState {
    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct Table {
    open: HashMap<u64, Arc<ConnState>>,
    /// Pending connections by id (ids grow in accept order: the first is the oldest).
    pending: BTreeMap<u64, IpAddr>,
    /// Pending connections per remote IP.
    pending_by_ip: HashMap<IpAddr, BTreeSet<u64>>,
    /// Open connections (pending or established) per remote IP.
    open_by_ip: HashMap<IpAddr, usize>,
    refused: u64,
    evicted: u64,
    last_report: Option<Instant>,
}

impl Table {
    fn unpend(&mut self, id: u64) {
        if let Some(ip) = self.pending.remove(&id) {
            if let Some(set) = self.pending_by_ip.get_mut(&ip) {
                set.remove(&id);
                if set.is_empty() {
                    self.pending_by_ip.remove(&ip);
                }
            }
        }
    }

    fn close(&mut self, id: u64) -> Option<Arc<ConnState>> {
        self.unpend(id);
        let c = self.open.remove(&id)?;
        if let Some(n) = self.open_by_ip.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.open_by_ip.remove(&c.ip);
            }
        }
        Some(c)
    }

    fn evict(&mut self, id: u64) {
        if let Some(c) = self.close(id) {
            c.evict();
        }
        self.evicted += 1;
    }

    /// The oldest pending connection of `ip`, if it is old enough to be replaced.
    fn replaceable_of(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let id = *self.pending_by_ip.get(&ip)?.first()?;
        self.open
            .get(&id)
            .filter(|c| now.duration_since(c.accepted) >= EVICT_PENDING_AFTER)
            .map(|_| id)
    }
}

/// The open connections of one listener, with the cap.
#[derive(Debug)]
pub struct ConnTable {
    name: &'static str,
    max: usize,
    max_per_source: usize,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    next_id: AtomicU64,
    table: Mutex<Table>,
}

impl ConnTable {
    fn new(name: &'static str, limits: &ListenLimits) -> Arc<Self> {
        Arc::new(Self {
            name,
            max: limits.max_connections.max(1),
            max_per_source: limits.max_connections_per_source.max(1),
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
            next_id: AtomicU64::new(0),
            table: Mutex::new(Table::default()),
        })
    }

    /// A table for a listener served without tonic (the metrics endpoint).
    pub fn for_listener(name: &'static str, limits: &ListenLimits) -> Arc<Self> {
        Self::new(name, limits)
    }

    /// Number of open connections.
    pub fn open(&self) -> usize {
        lock(&self.table).open.len()
    }

    /// Admits `stream` from `ip` under the per-IP and listener caps (closing older pending
    /// connections to make room as the module docs say), or drops it — closing it — when the
    /// listener is full of established or young pending connections.
    pub fn admit<S>(self: &Arc<Self>, stream: S, ip: IpAddr) -> Option<LimitedConn<S>> {
        let now = Instant::now();
        let mut t = lock(&self.table);
        let ip = source_bucket(ip);
        let oldest_of_ip = t
            .pending_by_ip
            .get(&ip)
            .filter(|s| s.len() >= MAX_PENDING_PER_IP)
            .and_then(|s| s.first().copied());
        if let Some(id) = oldest_of_ip {
            let old_enough = t
                .open
                .get(&id)
                .is_some_and(|c| now.duration_since(c.accepted) >= EVICT_PENDING_AFTER);
            if !old_enough {
                // This address has as many handshakes in flight as it may, all recent.
                t.refused += 1;
                self.report(&mut t, now);
                return None;
            }
            t.evict(id);
        }
        if t.open_by_ip
            .get(&ip)
            .is_some_and(|&n| n >= self.max_per_source)
        {
            // This address holds its share of the listener: it may replace one of its own
            // stale handshakes, never anyone's established connection.
            match t.replaceable_of(ip, now) {
                Some(id) => t.evict(id),
                None => {
                    t.refused += 1;
                    self.report(&mut t, now);
                    return None;
                }
            }
        }
        if t.open.len() >= self.max {
            let victim = t.pending.keys().next().copied().filter(|id| {
                t.open
                    .get(id)
                    .is_some_and(|c| now.duration_since(c.accepted) >= EVICT_PENDING_AFTER)
            });
            match victim {
                Some(id) => t.evict(id),
                None => {
                    t.refused += 1;
                    self.report(&mut t, now);
                    return None;
                }
            }
            self.report(&mut t, now);
        } else if oldest_of_ip.is_some() {
            self.report(&mut t, now);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            accepted: now,
            ip,
            heard: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        t.open.insert(id, state.clone());
        t.pending.insert(id, ip);
        t.pending_by_ip.entry(ip).or_default().insert(id);
        *t.open_by_ip.entry(ip).or_default() += 1;
        drop(t);
        Some(LimitedConn {
            inner: stream,
            id,
            state,
            table: self.clone(),
            last_read: now,
            timer: Box::pin(tokio::time::sleep_until(now + self.handshake_timeout)),
        })
    }

    /// Logs, at most every [`REPORT_EVERY`], what the cap refused and evicted.
    fn report(&self, t: &mut Table, now: Instant) {
        if t.last_report
            .is_some_and(|l| now.duration_since(l) < REPORT_EVERY)
        {
            return;
        }
        tracing::warn!(
            listener = self.name,
            max_connections = self.max,
            refused = t.refused,
            evicted_silent = t.evicted,
            "listener at its connection cap, or one address at its pending cap: new connections \
             were closed, or replaced connections that had not finished their handshake"
        );
        t.refused = 0;
        t.evicted = 0;
        t.last_report = Some(now);
    }

    fn remove(&self, id: u64) {
        lock(&self.table).close(id);
    }

    fn establish(&self, id: u64) {
        lock(&self.table).unpend(id);
    }
}

/// An accepted connection holding a place in its listener's [`ConnTable`] until dropped, closed
/// when silent past its handshake or idle timeout or when evicted.
#[derive(Debug)]
pub struct LimitedConn<S> {
    inner: S,
    id: u64,
    state: Arc<ConnState>,
    table: Arc<ConnTable>,
    last_read: Instant,
    /// Fires at or before the connection's deadline (moved later lazily).
    timer: Pin<Box<Sleep>>,
}

impl<S> Drop for LimitedConn<S> {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

impl<S> LimitedConn<S> {
    /// Marks the connection established (its TLS handshake completed): from then on it is never
    /// closed to make room for others. Returns a closure so the TLS layer can call it later.
    pub fn establisher(&self) -> impl FnOnce() + Send + 'static {
        let (table, id) = (self.table.clone(), self.id);
        move || table.establish(id)
    }

    fn deadline(&self) -> Instant {
        if self.state.heard.load(Ordering::Relaxed) {
            self.last_read + self.table.idle_timeout
        } else {
            self.state.accepted + self.table.handshake_timeout
        }
    }

    /// Ready(Err) once the connection must close (evicted, or silent past its deadline);
    /// otherwise registers the task for both and returns Pending.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        *lock(&self.state.waker) = Some(cx.waker().clone());
        loop {
            if self.state.evicted.load(Ordering::SeqCst) {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed to admit a new connection: the listener is at its cap",
                ));
            }
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                let what = if self.state.heard.load(Ordering::Relaxed) {
                    "idle timeout"
                } else {
                    "handshake timeout"
                };
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
            }
            // The timer may be set earlier than the deadline (which moves later with every read):
            // when it fires early it is moved, instead of being moved on every read.
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            ready!(self.timer.as_mut().poll(cx));
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedConn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.state.evicted.load(Ordering::SeqCst) {
            return Poll::Ready(Err(ready!(this.poll_close(cx))));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                    this.state.heard.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_close(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedConn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.state.evicted.load(Ordering::SeqCst) {
            return Poll::Ready(Err(ready!(this.poll_close(cx))));
        }
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Pending => this.poll_close(cx).map(Err),
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_close(cx).map(Err),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.poll_close(cx).map(Err),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for LimitedConn<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A listener's accepted connections under its [`ConnTable`]: connections over the cap are
/// closed here and never reach the server.
pub struct LimitedIncoming {
    inner: TcpIncoming,
    table: Arc<ConnTable>,
    pause: Option<Pin<Box<Sleep>>>,
}

impl LimitedIncoming {
    /// The listener's connection table.
    pub fn table(&self) -> Arc<ConnTable> {
        self.table.clone()
    }
}

impl Stream for LimitedIncoming {
    type Item = io::Result<LimitedConn<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(p) = &mut this.pause {
                ready!(p.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => {
                    tracing::warn!(listener = this.table.name, error = %e, "accept failed; pausing");
                    this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                }
                Some(Ok(s)) => {
                    let ip = s
                        .peer_addr()
                        .map(|a| a.ip())
                        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
                    if let Some(c) = this.table.admit(s, ip) {
                        return Poll::Ready(Some(Ok(c)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(max: usize) -> ListenLimits {
        ListenLimits {
            max_connections: max,
            max_connections_per_source: max,
            max_concurrent_streams: 8,
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(20),
            tcp_keepalive: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(120),
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_an_old_pending_connection_makes_room_an_established_one_never_does() {
        let t = ConnTable::new("test", &limits(2));
        let a = t.admit(tokio::io::duplex(64).0, ip(1)).unwrap();
        a.establisher()();
        let b = t.admit(tokio::io::duplex(64).0, ip(2)).unwrap();
        assert_eq!(t.open(), 2);
        // Full; the only pending connection is younger than EVICT_PENDING_AFTER: refused.
        assert!(t.admit(tokio::io::duplex(64).0, ip(3)).is_none());
        tokio::time::advance(EVICT_PENDING_AFTER).await;
        // Now it makes room; the established one is never touched.
        let c = t.admit(tokio::io::duplex(64).0, ip(3)).unwrap();
        assert!(b.state.evicted.load(Ordering::SeqCst));
        assert!(!a.state.evicted.load(Ordering::SeqCst));
        assert_eq!(t.open(), 2);
        // The evicted connection fails its next read; dropping it frees nothing twice.
        let mut b = b;
        let mut buf = [0u8; 3];
        let e = b.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        drop(b);
        assert_eq!(t.open(), 2);
        // Everything established: newcomers are refused, however long they wait.
        c.establisher()();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(t.admit(tokio::io::duplex(64).0, ip(4)).is_none());
        drop(c);
        assert_eq!(t.open(), 1);
        drop(a);
        assert_eq!(t.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_holds_a_bounded_number_of_pending_connections() {
        let t = ConnTable::new("test", &limits(100));
        let flood: Vec<_> = (0..MAX_PENDING_PER_IP)
            .map(|_| t.admit(tokio::io::duplex(64).0, ip(1)).unwrap())
            .collect();
        let other = t.admit(tokio::io::duplex(64).0, ip(2)).unwrap();
        // One more from the same address, at once: refused (its handshakes are all recent)...
        assert!(t.admit(tokio::io::duplex(64).0, ip(1)).is_none());
        // ...later, it replaces that address's oldest pending connection.
        tokio::time::advance(EVICT_PENDING_AFTER).await;
        let next = t.admit(tokio::io::duplex(64).0, ip(1)).unwrap();
        assert!(flood[0].state.evicted.load(Ordering::SeqCst));
        assert!(flood[1..]
            .iter()
            .all(|c| !c.state.evicted.load(Ordering::SeqCst)));
        assert!(!other.state.evicted.load(Ordering::SeqCst));
        assert_eq!(t.open(), MAX_PENDING_PER_IP + 1);
        // Established connections do not count: that address may now start another.
        next.establisher()();
        let more = t.admit(tokio::io::duplex(64).0, ip(1)).unwrap();
        assert!(flood[1..]
            .iter()
            .all(|c| !c.state.evicted.load(Ordering::SeqCst)));
        drop((flood, other, next, more));
        assert_eq!(t.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_holds_at_most_its_share_of_open_connections() {
        let mut l = limits(100);
        l.max_connections_per_source = 3;
        let t = ConnTable::new("test", &l);
        // Three established connections from one address: its share is used up.
        let held: Vec<_> = (0..3)
            .map(|_| {
                let c = t.admit(tokio::io::duplex(64).0, ip(1)).unwrap();
                c.establisher()();
                c
            })
            .collect();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(t.admit(tokio::io::duplex(64).0, ip(1)).is_none());
        // Other addresses are not affected.
        let other = t.admit(tokio::io::duplex(64).0, ip(2)).unwrap();
        // A closed connection frees its place.
        let mut held = held;
        drop(held.pop());
        let pending = t.admit(tokio::io::duplex(64).0, ip(1)).unwrap();
        // At the share, a stale handshake of the same address is replaced, an established
        // connection never.
        assert!(t.admit(tokio::io::duplex(64).0, ip(1)).is_none());
        tokio::time::advance(EVICT_PENDING_AFTER).await;
        let next = t.admit(tokio::io::duplex(64).0, ip(1)).unwrap();
        assert!(pending.state.evicted.load(Ordering::SeqCst));
        assert!(held.iter().all(|c| !c.state.evicted.load(Ordering::SeqCst)));
        assert_eq!(t.open(), 4);
        drop((held, other, pending, next));
        assert_eq!(t.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connections_time_out() {
        let t = ConnTable::new("test", &limits(4));
        let (s, _peer) = tokio::io::duplex(64);
        let mut c = t.admit(s, ip(1)).unwrap();
        let mut buf = [0u8; 4];
        let started = Instant::now();
        let e = c.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10),
            "handshake timeout"
        );

        // After the first bytes, the idle timeout counts from the last read.
        let (s, mut peer) = tokio::io::duplex(64);
        let mut c = t.admit(s, ip(1)).unwrap();
        peer.write_all(b"x").await.unwrap();
        c.read_exact(&mut buf[..1]).await.unwrap();
        tokio::time::advance(Duration::from_secs(25)).await;
        peer.write_all(b"y").await.unwrap();
        c.read_exact(&mut buf[..1]).await.unwrap();
        let last = Instant::now();
        let e = c.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(last.elapsed(), Duration::from_secs(30), "idle timeout");
    }
}
