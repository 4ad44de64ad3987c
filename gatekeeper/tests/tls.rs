//! The TLS core over real loopback sockets: a tonic PeerService behind `gatekeeper::tls::incoming`
//! with each listener policy, clients built by `ClientTls`, certificates made by the functions
//! behind `gatekeeper certs` (and once by the binary itself).

use gatekeeper::cli::certs::{self, DevCluster};
use gatekeeper::tls::issue::{Authority, Issued, Validity};
use gatekeeper::tls::{
    self, incoming, ClientTls, ConnectInfo, FailureKind, Limits, ListenerStats, PeerIdentity,
    Reloadable, ServerTls,
};
use gatekeeper_proto::v1::peer_service_client::PeerServiceClient;
use gatekeeper_proto::v1::peer_service_server::{PeerService, PeerServiceServer};
use gatekeeper_proto::v1::{FetchShareRequest, FetchShareResponse};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

const DAY: Duration = Duration::from_secs(86_400);
const HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

/// A PeerService that records what the TLS layer told it about each caller and answers with the
/// caller's SPKI hash (empty without a verified client certificate).
#[derive(Clone, Default)]
struct Echo {
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// What the handler saw of one call.
type Seen = (Option<ConnectInfo>, Option<PeerIdentity>);

#[tonic::async_trait]
impl PeerService for Echo {
    async fn fetch_share(
        &self,
        request: Request<FetchShareRequest>,
    ) -> Result<Response<FetchShareResponse>, Status> {
        let info = tls::connect_info(&request).cloned();
        let peer = tls::peer_identity(&request);
        let digest = peer
            .as_ref()
            .map(|p| p.spki_sha256.to_vec())
            .unwrap_or_default();
        self.seen.lock().unwrap().push((info, peer));
        Ok(Response::new(FetchShareResponse {
            responder_node_id: request.get_ref().requester_node_id,
            request_digest: digest,
            ..Default::default()
        }))
    }
}

struct Server {
    addr: SocketAddr,
    stats: Arc<ListenerStats>,
    echo: Echo,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(tls: Option<Reloadable>, limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inc = incoming(listener, tls, limits);
        assert_eq!(inc.local_addr(), Some(addr));
        let stats = inc.stats();
        let echo = Echo::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let svc = PeerServiceServer::new(echo.clone());
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(inc, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Server {
            addr,
            stats,
            echo,
            stop: Some(stop),
            task,
        }
    }

    fn last_seen(&self) -> Seen {
        self.echo.seen.lock().unwrap().last().cloned().unwrap()
    }

    /// Waits until `n` handshakes failed and returns the last failure.
    async fn failure(&self, n: u64) -> tls::HandshakeFailure {
        wait_until("a handshake failure", || {
            self.stats.handshake_failures() >= n
        })
        .await;
        self.stats.last_failure().unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The error and every source under it, one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(" / ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

async fn connect(ep: Endpoint) -> Result<Channel, String> {
    ep.connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| chain(&e))
}

async fn call_on(channel: Channel, id: u64) -> Result<FetchShareResponse, String> {
    PeerServiceClient::new(channel)
        .fetch_share(FetchShareRequest {
            requester_node_id: id,
            ..Default::default()
        })
        .await
        .map(Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), chain(&s)))
}

/// Connects and makes one call; the error text covers both steps.
async fn call(ep: Endpoint) -> Result<FetchShareResponse, String> {
    call_on(connect(ep).await?, 7).await
}

/// The certificates of a dev cluster (through the library behind `gatekeeper certs`), plus the
/// odd ones the refusal tests need.
struct Certs {
    _dir: tempfile::TempDir,
    dev: DevCluster,
    ca: Authority,
    root: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let hosts: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    let dev = certs::dev_cluster(&root.join("dev"), 2, &hosts, false).unwrap();
    let ca = certs::load_authority(&dev.dir).unwrap();
    Certs {
        _dir: dir,
        dev,
        ca,
        root,
    }
}

impl Certs {
    fn write(&self, name: &str, i: &Issued) -> (PathBuf, PathBuf) {
        let (c, k) = (
            self.root.join(format!("{name}.pem")),
            self.root.join(format!("{name}.key")),
        );
        std::fs::write(&c, &i.cert_pem).unwrap();
        std::fs::write(&k, i.key_pem.as_bytes()).unwrap();
        (c, k)
    }

    fn cluster_tls(&self) -> ServerTls {
        ServerTls::mutual(
            self.dev.node_cert(1),
            self.dev.node_key(1),
            self.dev.ca_cert(),
        )
    }

    /// A client holding node-2's certificate (a member calling a member).
    fn member(&self) -> ClientTls {
        ClientTls::load(
            &self.dev.ca_cert(),
            Some((&self.dev.node_cert(2), &self.dev.node_key(2))),
            SystemTime::now(),
        )
        .unwrap()
    }

    fn client_with(&self, id: Option<(&Path, &Path)>, at: SystemTime) -> ClientTls {
        ClientTls::load(&self.dev.ca_cert(), id, at).unwrap()
    }
}

async fn tls_server(tls: ServerTls, limits: Limits) -> (Server, Reloadable) {
    let r = Reloadable::load("test", tls).unwrap();
    (Server::start(Some(r.clone()), limits).await, r)
}

#[tokio::test]
async fn mutual_tls_serves_a_member_and_the_handler_sees_its_identity() {
    let c = certs();
    let (server, _) = tls_server(c.cluster_tls(), Limits::default()).await;
    let ep = c
        .member()
        .endpoint(&server.addr.to_string(), "127.0.0.1")
        .unwrap();
    let resp = call(ep).await.unwrap();
    let node2 = tls::load_certs(&c.dev.node_cert(2)).unwrap().remove(0);
    let spki = tls::spki_sha256(&node2).unwrap();
    assert_eq!(resp.request_digest, spki.to_vec());
    assert_eq!(resp.responder_node_id, 7);

    let (info, peer) = server.last_seen();
    let info = info.unwrap();
    let peer = peer.unwrap();
    assert!(info.tls);
    assert_eq!(info.local_addr, Some(server.addr));
    assert_eq!(
        info.peer_certificates.as_deref().unwrap(),
        std::slice::from_ref(&node2)
    );
    assert_eq!(peer.remote_addr, info.remote_addr);
    assert!(peer.remote_addr.ip().is_loopback());
    assert_eq!(peer.leaf, node2);
    assert_eq!(peer.spki_sha256, spki);
    assert_eq!(peer.common_name.as_deref(), Some("node-2"));
    assert_eq!(peer.dns_names, ["localhost"]);
    assert_eq!(
        peer.ip_addresses,
        ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(server.stats.served(), 1);
    assert_eq!(server.stats.handshake_failures(), 0);
    // The DNS name works as the server name too.
    let ep = c
        .member()
        .endpoint(&server.addr.to_string(), "localhost")
        .unwrap();
    call(ep).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn server_only_tls_serves_a_miner_that_trusts_the_bundle() {
    let c = certs();
    let (server, _) = tls_server(
        ServerTls::server_only(c.dev.node_cert(1), c.dev.node_key(1)),
        Limits::default(),
    )
    .await;
    let miner = ClientTls::load(&c.dev.miner_bundle(), None, SystemTime::now()).unwrap();
    let resp = call(
        miner
            .endpoint(&server.addr.to_string(), "127.0.0.1")
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(resp.request_digest.is_empty());
    let (info, peer) = server.last_seen();
    let info = info.unwrap();
    assert!(info.tls && info.peer_certificates.is_none() && info.peer.is_none());
    assert!(peer.is_none());
    server.stop().await;
}

#[tokio::test]
async fn plaintext_only_when_configured_and_a_plaintext_client_is_refused_by_tls() {
    let c = certs();
    // Development mode: no TLS at all; the handler still sees the remote address.
    let plain = Server::start(None, Limits::default()).await;
    let ep = Endpoint::from_shared(format!("http://{}", plain.addr)).unwrap();
    call(ep).await.unwrap();
    let (info, peer) = plain.last_seen();
    let info = info.unwrap();
    assert!(!info.tls && info.peer_certificates.is_none() && peer.is_none());
    assert!(info.remote_addr.ip().is_loopback());
    plain.stop().await;

    // A plaintext client on a TLS port.
    let (server, _) = tls_server(c.cluster_tls(), Limits::default()).await;
    let ep = Endpoint::from_shared(format!("http://{}", server.addr)).unwrap();
    let err = call(ep).await.unwrap_err();
    let f = server.failure(1).await;
    assert_eq!(f.kind, FailureKind::NotTls, "{f:?}");
    assert!(f.message.contains("corrupt message"), "{f:?}");
    assert!(f.remote_addr.ip().is_loopback());
    assert!(!err.is_empty());
    assert_eq!(server.stats.served(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_mutual_port_refuses_a_client_without_a_certificate() {
    let c = certs();
    let (server, _) = tls_server(c.cluster_tls(), Limits::default()).await;
    let anon = c.client_with(None, SystemTime::now());
    let err = call(
        anon.endpoint(&server.addr.to_string(), "127.0.0.1")
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("CertificateRequired"), "{err}");
    let f = server.failure(1).await;
    assert_eq!(f.kind, FailureKind::NoClientCertificate, "{f:?}");
    assert!(server.echo.seen.lock().unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_mutual_port_refuses_a_certificate_of_another_ca() {
    let c = certs();
    let (other_ca, _) =
        Authority::generate("Other CA", Validity::days_from(SystemTime::now(), 30)).unwrap();
    // Same name as a member, other CA.
    let imposter = other_ca
        .node(
            "node-2",
            &["127.0.0.1".into()],
            Validity::days_from(SystemTime::now(), 30),
        )
        .unwrap();
    let (cert, key) = c.write("imposter", &imposter);
    let (server, _) = tls_server(c.cluster_tls(), Limits::default()).await;
    let client = c.client_with(Some((&cert, &key)), SystemTime::now());
    let err = call(
        client
            .endpoint(&server.addr.to_string(), "127.0.0.1")
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");
    let f = server.failure(1).await;
    assert_eq!(f.kind, FailureKind::UnknownIssuer, "{f:?}");
    assert!(f.message.contains("UnknownIssuer"), "{f:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_admin_allowlist_admits_listed_operators_only() {
    let c = certs();
    let now = SystemTime::now();
    let bob = c.ca.operator("bob", Validity::days_from(now, 30)).unwrap();
    let (bob_cert, bob_key) = c.write("bob", &bob);
    let admin = ServerTls::mutual_with_names(
        c.dev.node_cert(1),
        c.dev.node_key(1),
        c.dev.ca_cert(),
        vec!["operator".into(), "carol".into()],
    );
    let (server, _) = tls_server(admin, Limits::default()).await;
    let addr = server.addr.to_string();

    let op = c.client_with(Some((&c.dev.operator_cert(), &c.dev.operator_key())), now);
    call(op.endpoint(&addr, "127.0.0.1").unwrap())
        .await
        .unwrap();
    let (_, peer) = server.last_seen();
    assert_eq!(peer.unwrap().common_name.as_deref(), Some("operator"));

    let bob = c.client_with(Some((&bob_cert, &bob_key)), now);
    let err = call(bob.endpoint(&addr, "127.0.0.1").unwrap())
        .await
        .unwrap_err();
    assert!(err.contains("AccessDenied"), "{err}");
    let f = server.failure(1).await;
    assert_eq!(f.kind, FailureKind::NameNotAllowed, "{f:?}");
    assert!(f.message.contains("not in the allowlist"), "{f:?}");

    // A listed name from another CA is still refused: the CA comes first.
    let (other_ca, _) = Authority::generate("Other CA", Validity::days_from(now, 30)).unwrap();
    let fake = other_ca
        .operator("operator", Validity::days_from(now, 30))
        .unwrap();
    let (fc, fk) = c.write("fake-operator", &fake);
    let fake = c.client_with(Some((&fc, &fk)), now);
    let err = call(fake.endpoint(&addr, "127.0.0.1").unwrap())
        .await
        .unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");
    assert_eq!(server.failure(2).await.kind, FailureKind::UnknownIssuer);
    assert_eq!(server.stats.served(), 1);
    server.stop().await;
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let c = certs();
    let now = SystemTime::now();
    // A CA that has existed for a month, so a certificate it issued can have expired.
    let month = Validity {
        not_before: now - 30 * DAY,
        not_after: now + 30 * DAY,
    };
    let (ca, ca_issued) = Authority::generate("Older CA", month).unwrap();
    let (ca_pem, _) = c.write("older-ca", &ca_issued);
    let node = ca.node("node-1", &["127.0.0.1".into()], month).unwrap();
    let (node_cert, node_key) = c.write("older-node", &node);
    let expired = ca
        .operator(
            "operator",
            Validity {
                not_before: now - 10 * DAY,
                not_after: now - DAY,
            },
        )
        .unwrap();
    let (cert, key) = c.write("expired", &expired);
    // Loading refuses it now...
    let e = ClientTls::load(&ca_pem, Some((&cert, &key)), now).unwrap_err();
    assert!(e.to_string().contains("expired at"), "{e}");
    // ...so load it as of a time it was valid, to see that the server refuses it too.
    let client = ClientTls::load(&ca_pem, Some((&cert, &key)), now - 5 * DAY).unwrap();
    let (server, _) = tls_server(
        ServerTls::mutual(&node_cert, &node_key, &ca_pem),
        Limits::default(),
    )
    .await;
    let err = call(
        client
            .endpoint(&server.addr.to_string(), "127.0.0.1")
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("CertificateExpired"), "{err}");
    let f = server.failure(1).await;
    assert_eq!(f.kind, FailureKind::CertificateNotCurrent, "{f:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_client_refuses_a_wrong_server_name_or_an_unknown_server() {
    let c = certs();
    let (server, _) = tls_server(c.cluster_tls(), Limits::default()).await;
    let addr = server.addr.to_string();
    let err = call(c.member().endpoint(&addr, "gk9.example").unwrap())
        .await
        .unwrap_err();
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for name"),
        "{err}"
    );
    // The server sees the client's alert.
    assert_eq!(server.failure(1).await.kind, FailureKind::PeerAlert);

    // A client that trusts another CA does not accept this server.
    let other = c.root.join("other-ca");
    certs::make_ca(&other, "Other CA", 30, false).unwrap();
    let stranger = ClientTls::load(&certs::ca_cert_path(&other), None, SystemTime::now()).unwrap();
    let err = call(stranger.endpoint(&addr, "127.0.0.1").unwrap())
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn the_connection_cap_closes_excess_connections_and_existing_ones_keep_working() {
    let c = certs();
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (server, _) = tls_server(c.cluster_tls(), limits).await;
    let addr = server.addr.to_string();
    let ep = || c.member().endpoint(&addr, "127.0.0.1").unwrap();
    let one = connect(ep()).await.unwrap();
    let two = connect(ep()).await.unwrap();
    call_on(one.clone(), 1).await.unwrap();
    call_on(two.clone(), 2).await.unwrap();
    assert_eq!(server.stats.open_connections(), 2);

    // A third TCP connection is closed at once, before any TLS.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), raw.read(&mut buf))
        .await
        .expect("an excess connection is closed promptly");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // A third client fails.
    let err = call(ep()).await.unwrap_err();
    assert!(!err.is_empty());
    assert!(server.stats.refused_over_limit() >= 2);

    // The first two still work.
    call_on(one.clone(), 1).await.unwrap();
    call_on(two, 2).await.unwrap();

    // Closing one makes room.
    drop(one);
    wait_until("a free slot", || server.stats.open_connections() < 2).await;
    call(ep()).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let c = certs();
    let limits = Limits {
        handshake_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (server, _) = tls_server(c.cluster_tls(), limits).await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("the server closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let f = server.failure(1).await;
    assert_eq!(f.kind, FailureKind::Timeout, "{f:?}");
    wait_until("the slot to be freed", || {
        server.stats.open_connections() == 0
    })
    .await;
    server.stop().await;
}

/// Handshakes with the server and returns the leaf certificate it presented.
async fn server_leaf(
    addr: SocketAddr,
    client: &ClientTls,
) -> std::io::Result<tls::CertificateDer<'static>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client.rustls_config().unwrap()));
    let tcp = TcpStream::connect(addr).await?;
    let name = tls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = connector.connect(name, tcp).await?;
    Ok(stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned())
}

/// Copies node-1's files to `live-*` so a test can rewrite them.
fn live_files(c: &Certs) -> (PathBuf, PathBuf) {
    let (cert, key) = (c.root.join("live.pem"), c.root.join("live.key"));
    std::fs::copy(c.dev.node_cert(1), &cert).unwrap();
    std::fs::copy(c.dev.node_key(1), &key).unwrap();
    (cert, key)
}

fn renew(c: &Certs, cert: &Path, key: &Path) -> Issued {
    let hosts: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    let next =
        c.ca.node("node-1", &hosts, Validity::days_from(SystemTime::now(), 30))
            .unwrap();
    std::fs::write(cert, &next.cert_pem).unwrap();
    std::fs::write(key, next.key_pem.as_bytes()).unwrap();
    next
}

#[tokio::test]
async fn reload_serves_the_new_certificate_and_a_broken_file_keeps_the_old_one() {
    let c = certs();
    let (cert, key) = live_files(&c);
    let (server, r) = tls_server(
        ServerTls::mutual(&cert, &key, c.dev.ca_cert()),
        Limits::default(),
    )
    .await;
    let member = c.member();
    let first = server_leaf(server.addr, &member).await.unwrap();
    assert_eq!(first, tls::load_certs(&cert).unwrap()[0]);
    let open = connect(
        member
            .endpoint(&server.addr.to_string(), "127.0.0.1")
            .unwrap(),
    )
    .await
    .unwrap();
    call_on(open.clone(), 1).await.unwrap();

    let next = renew(&c, &cert, &key);
    let leaf = r.reload().unwrap();
    assert_eq!(leaf.spki_sha256, next.info.spki_sha256);
    let second = server_leaf(server.addr, &member).await.unwrap();
    assert_ne!(second, first);
    assert_eq!(tls::spki_sha256(&second).unwrap(), next.info.spki_sha256);
    // The connection opened before the reload keeps working.
    call_on(open.clone(), 2).await.unwrap();

    // A broken file: the reload fails and new connections still get the second certificate.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    let e = r.reload().unwrap_err();
    assert!(e.to_string().contains("live.pem: not PEM"), "{e}");
    assert_eq!(server_leaf(server.addr, &member).await.unwrap(), second);
    call(
        member
            .endpoint(&server.addr.to_string(), "127.0.0.1")
            .unwrap(),
    )
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_listeners() {
    let c = certs();
    let (cert, key) = live_files(&c);
    let (server, r) = tls_server(
        ServerTls::mutual(&cert, &key, c.dev.ca_cert()),
        Limits::default(),
    )
    .await;
    let member = c.member();
    let first = server_leaf(server.addr, &member).await.unwrap();
    let reloader = tls::spawn_sighup_reloader(vec![r.clone()]).unwrap();
    let next = renew(&c, &cert, &key);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the reload", || r.generation() == 1).await;
    let leaf = server_leaf(server.addr, &member).await.unwrap();
    assert_ne!(leaf, first);
    assert_eq!(tls::spki_sha256(&leaf).unwrap(), next.info.spki_sha256);
    reloader.abort();
    server.stop().await;
}

#[tokio::test]
async fn the_certs_binary_makes_a_dev_cluster_the_tls_core_serves_with() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dev");
    let bin = env!("CARGO_BIN_EXE_gatekeeper");
    let run = |force: bool| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["certs", "dev-cluster", "--out"]).arg(&out).args([
            "--nodes",
            "2",
            "--host",
            "127.0.0.1",
        ]);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let first = run(false);
    assert!(first.status.success(), "{first:?}");
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("wrote ")).count(),
        9,
        "{stdout}"
    );
    assert!(stdout.contains("node-2.key: private key of"), "{stdout}");
    let again = run(false);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists; pass --force"));
    assert!(run(true).status.success());

    let dev = DevCluster::at(&out, 2);
    let (server, _) = tls_server(
        ServerTls::mutual(dev.node_cert(1), dev.node_key(1), dev.ca_cert()),
        Limits::default(),
    )
    .await;
    let client = ClientTls::load(
        &dev.miner_bundle(),
        Some((&dev.operator_cert(), &dev.operator_key())),
        SystemTime::now(),
    )
    .unwrap();
    call(
        client
            .endpoint(&server.addr.to_string(), "127.0.0.1")
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        server.last_seen().1.unwrap().common_name.as_deref(),
        Some(certs::DEV_OPERATOR)
    );
    server.stop().await;
}
