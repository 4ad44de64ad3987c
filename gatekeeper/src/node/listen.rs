//! Limits on the node's listeners: the same helper builds the Raft and API gRPC servers and wraps
//! their accepted connections (the metrics listener uses the connection cap too).
//!
//! * **Connection cap** ([`ConnTable`]): at most `max_connections` open connections per listener.
//!   When a new connection arrives at the cap, the oldest connection that has not sent a single
//!   byte for [`EVICT_SILENT_AFTER`] is closed to make room (a gRPC client sends its HTTP/2
//!   preface at once, so such a connection is idle or hostile); if there is none, the new
//!   connection is closed at once. Established clients keep being served either way, and the
//!   node's file descriptors stay bounded (they are shared with its storage).
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
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
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

/// A connection silent for this long may be closed to admit a new one at the cap.
pub const EVICT_SILENT_AFTER: Duration = Duration::from_secs(1);
/// Pause after an accept error.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How often a listener at its cap reports what it refused and evicted.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The limits of one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenLimits {
    /// Open connections at most.
    pub max_connections: usize,
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
    /// The configured limits, with `max_connections` for this listener.
    pub fn from_config(c: &NodeConfig, max_connections: usize) -> Self {
        let ms = Duration::from_millis;
        Self {
            max_connections,
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
    pub fn incoming_tls(
        &self,
        listener: TcpListener,
        name: &'static str,
        tls: Option<crate::tls::Reloadable>,
    ) -> crate::tls::Incoming {
        use tokio_stream::StreamExt as _;
        let local = listener.local_addr().ok();
        let conns = self.incoming(listener, name).map(|r| {
            r.map(|c| {
                let info = c.connect_info();
                let remote = info
                    .remote_addr()
                    .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                let io: Box<dyn crate::tls::Io> = Box::new(c);
                (io, remote, info.local_addr())
            })
        });
        crate::tls::incoming_from(
            Box::pin(conns),
            local,
            tls,
            crate::tls::Limits {
                max_connections: self.max_connections,
                handshake_timeout: self.handshake_timeout,
                nodelay: false,
            },
        )
    }
}

/// State of one open connection shared with its [`ConnTable`].
#[derive(Debug)]
struct ConnState {
    accepted: Instant,
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
    /// Ids in accept order, for finding the oldest silent connection (entries of connections
    /// that closed or spoke are dropped lazily).
    order: VecDeque<u64>,
    refused: u64,
    evicted: u64,
    last_report: Option<Instant>,
}

/// The open connections of one listener, with the cap.
#[derive(Debug)]
pub struct ConnTable {
    name: &'static str,
    max: usize,
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

    /// Admits `stream` under the cap (closing the oldest silent connection to make room if
    /// needed), or drops it — closing it — when the listener is full.
    pub fn admit<S>(self: &Arc<Self>, stream: S) -> Option<LimitedConn<S>> {
        let now = Instant::now();
        let mut t = lock(&self.table);
        // Forget connections that closed or spoke: the front is then the oldest silent one
        // (silent ones close within the handshake timeout, so the queue stays short).
        while let Some(&id) = t.order.front() {
            match t.open.get(&id) {
                Some(c) if !c.heard.load(Ordering::SeqCst) => break,
                _ => {
                    t.order.pop_front();
                }
            }
        }
        if t.open.len() >= self.max {
            let victim = t
                .order
                .front()
                .copied()
                .filter(|id| now.duration_since(t.open[id].accepted) >= EVICT_SILENT_AFTER);
            match victim {
                Some(id) => {
                    t.order.pop_front();
                    if let Some(c) = t.open.remove(&id) {
                        c.evict();
                    }
                    t.evicted += 1;
                }
                None => {
                    t.refused += 1;
                    self.report(&mut t, now);
                    return None;
                }
            }
            self.report(&mut t, now);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            accepted: now,
            heard: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        t.open.insert(id, state.clone());
        t.order.push_back(id);
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
            "listener at its connection cap: new connections were closed, or replaced silent ones"
        );
        t.refused = 0;
        t.evicted = 0;
        t.last_report = Some(now);
    }

    fn remove(&self, id: u64) {
        lock(&self.table).open.remove(&id);
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
                    if let Some(c) = this.table.admit(s) {
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
            max_concurrent_streams: 8,
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(20),
            tcp_keepalive: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(120),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_refuses_or_evicts_the_oldest_silent_connection() {
        let t = ConnTable::new("test", &limits(2));
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, _b_peer) = tokio::io::duplex(64);
        let mut a = t.admit(a).unwrap();
        let b = t.admit(b).unwrap();
        assert_eq!(t.open(), 2);
        // Full, and nobody has been silent long enough: the newcomer is refused.
        assert!(t.admit(tokio::io::duplex(64).0).is_none());
        // `a` speaks; after a second, the silent `b` is the one evicted for a newcomer.
        a_peer.write_all(b"PRI").await.unwrap();
        let mut buf = [0u8; 3];
        a.read_exact(&mut buf).await.unwrap();
        tokio::time::advance(EVICT_SILENT_AFTER).await;
        let c = t.admit(tokio::io::duplex(64).0).unwrap();
        assert!(b.state.evicted.load(Ordering::SeqCst));
        assert!(!a.state.evicted.load(Ordering::SeqCst));
        assert_eq!(t.open(), 2);
        // The evicted connection fails its next read; dropping it frees nothing twice.
        let mut b = b;
        let e = b.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        drop(b);
        assert_eq!(t.open(), 2);
        drop(c);
        assert_eq!(t.open(), 1);
        drop(a);
        assert_eq!(t.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connections_time_out() {
        let t = ConnTable::new("test", &limits(4));
        let (s, _peer) = tokio::io::duplex(64);
        let mut c = t.admit(s).unwrap();
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
        let mut c = t.admit(s).unwrap();
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
