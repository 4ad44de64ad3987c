//! Per-source-address limits against real `gatekeeper node` processes (docs/design.md §10.6,
//! docs/operations.md "Listener limits"). Clients bind their sockets to distinct loopback
//! addresses (127.0.0.x), so one test host plays several sources:
//!
//! * the key listener's share of requests in service per source (`api_max_requests_per_source`):
//!   a source holding its share with requests that never finish is refused `SOURCE_BUSY`, other
//!   sources are served, and the share comes back when its requests end;
//! * the share of open connections per source on the key listener
//!   (`api_max_connections_per_source`): one source cannot open more, others can;
//! * on the cluster listener a connection counts as established only once a call on it was
//!   admitted: connections that completed a TLS handshake with a certificate of the cluster CA
//!   that belongs to no member stay pending, so they cannot use up their source's share
//!   (`raft_max_connections_per_source`) and a member from the same address still gets in.

use gatekeeper_integration_tests::{error_code as code_of, Cluster, Opts, Raw, Target, WAIT};
use gatekeeper_proto::raft::v1 as rpb;
use gatekeeper_proto::v1 as pb;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Uri};
use tonic::{Code, Status};

const REQUESTS_PER_SOURCE: usize = 4;
const KEY_CONNS_PER_SOURCE: usize = 6;
const RAFT_CONNS_PER_SOURCE: usize = 8;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Connects to `target` from the local address `from` (TLS as the target says), with a 60 s
/// deadline per call.
async fn connect_from(target: &Target, from: [u8; 4]) -> Result<Channel, tonic::transport::Error> {
    let dest: SocketAddr = target.addr.parse().expect("ip:port target");
    let src = IpAddr::from(from);
    let connector = tower::service_fn(move |_: Uri| async move {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(src, 0))?;
        let stream = sock.connect(dest).await?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(TokioIo::new(stream))
    });
    target
        .endpoint()
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .connect_with_connector(connector)
        .await
}

async fn cluster_info(ch: &Channel) -> Result<pb::ClusterInfo, Status> {
    pb::key_service_client::KeyServiceClient::new(ch.clone())
        .get_cluster_info(pb::GetClusterInfoRequest::default())
        .await
        .map(|r| r.into_inner())
}

/// A `GetWorkerKey` whose request body never arrives: the node holds it in service (and the
/// source's share) until the client gives up or `rpc_timeout_ms` passes.
async fn hanging_key_request(ch: Channel) -> Result<Vec<u8>, Status> {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/gatekeeper.v1.KeyService/GetWorkerKey",
    );
    g.client_streaming(
        tonic::Request::new(futures::stream::pending::<Vec<u8>>()),
        path,
        Raw,
    )
    .await
    .map(|r| r.into_inner())
}

#[test]
fn each_source_address_holds_only_its_share_of_requests_and_connections() {
    let c = Cluster::start(
        3,
        Opts {
            extra_config: vec![
                format!("api_max_requests_per_source = {REQUESTS_PER_SOURCE}"),
                format!("api_max_connections_per_source = {KEY_CONNS_PER_SOURCE}"),
                format!("raft_max_connections_per_source = {RAFT_CONNS_PER_SOURCE}"),
            ],
            ..Opts::default()
        },
    );
    let leader = c.leader();
    let n = *c.ids().iter().find(|&&i| i != leader).unwrap();
    let key = c.key_target(n);
    let rt = runtime();
    rt.block_on(async {
        // --- Requests in service: source .2 parks its share in requests that never finish.
        let busy = connect_from(&key, [127, 0, 0, 2])
            .await
            .unwrap_or_else(|e| c.fail(&format!("connect from 127.0.0.2: {e}")));
        let parked: Vec<_> = (0..REQUESTS_PER_SOURCE)
            .map(|_| tokio::spawn(hanging_key_request(busy.clone())))
            .collect();
        // The parked requests reach the service some time after they were sent: wait until they
        // all hold a slot before asking once more (a probe racing them would take a slot itself).
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(p) = parked.iter().position(|p| p.is_finished()) {
            let r = parked.into_iter().nth(p).unwrap().await;
            c.fail(&format!("a parked request ended: {r:?}"));
        }
        let refused = match cluster_info(&busy).await {
            Err(s) if code_of(&s) == "SOURCE_BUSY" => s,
            other => c.fail(&format!(
                "a request beyond its source's share was not refused: {:?}",
                other.map(|_| "served")
            )),
        };
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        // Another source is served meanwhile, by the same node.
        let other = connect_from(&key, [127, 0, 0, 3]).await.unwrap();
        cluster_info(&other)
            .await
            .unwrap_or_else(|e| c.fail(&format!("another source while .2 is busy: {e}")));
        // The share comes back when the parked requests end.
        for p in &parked {
            p.abort();
        }
        let started = Instant::now();
        while let Err(s) = cluster_info(&busy).await {
            if started.elapsed() > WAIT {
                c.fail(&format!("127.0.0.2's share did not come back: {s:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop((busy, other));

        // --- Open connections: source .4 opens its share; one more is closed, another source
        // is not affected, and a closed connection frees a place.
        let mut held = Vec::new();
        for k in 0..KEY_CONNS_PER_SOURCE {
            let ch = connect_from(&key, [127, 0, 0, 4])
                .await
                .unwrap_or_else(|e| c.fail(&format!("connection {k} from 127.0.0.4: {e}")));
            cluster_info(&ch).await.unwrap();
            held.push(ch);
        }
        let over = match connect_from(&key, [127, 0, 0, 4]).await {
            Ok(ch) => cluster_info(&ch).await.map(|_| ()),
            Err(e) => Err(Status::unavailable(format!("{e:?}"))),
        };
        assert!(
            over.is_err(),
            "connection {} from one source was served",
            KEY_CONNS_PER_SOURCE + 1
        );
        let other = connect_from(&key, [127, 0, 0, 5]).await.unwrap();
        cluster_info(&other)
            .await
            .unwrap_or_else(|e| c.fail(&format!("another source while .4 is at its share: {e}")));
        drop(held.pop());
        let started = Instant::now();
        loop {
            let r = match connect_from(&key, [127, 0, 0, 4]).await {
                Ok(ch) => cluster_info(&ch).await.map(|_| ()),
                Err(e) => Err(Status::unavailable(format!("{e:?}"))),
            };
            match r {
                Ok(()) => break,
                Err(s) if started.elapsed() > WAIT => {
                    c.fail(&format!("no place for 127.0.0.4 after one closed: {s:?}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        drop(held);

        // --- Cluster listener: a certificate of the cluster CA that belongs to no member
        // completes the handshake but is refused, so its connections stay pending; twice the
        // source's share of them does not keep a member from the same address out.
        c.issue_node_cert(9, false);
        let stranger = c.raft_target(n, 9);
        let mut refused_conns = Vec::new();
        for k in 0..2 * RAFT_CONNS_PER_SOURCE {
            // Older than EVICT_PENDING_AFTER (250 ms) before the next arrives, so each newcomer
            // may replace one of them.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(ch) = connect_from(&stranger, [127, 0, 0, 6]).await else {
                continue; // closed at accept: the address's pending handshakes were all young
            };
            let r = rpb::raft_service_client::RaftServiceClient::new(ch.clone())
                .read_index(rpb::ReadIndexRequest {})
                .await;
            match r {
                Err(s) if code_of(&s) == "PEER_NOT_ADMITTED" => {}
                other => c.fail(&format!("non-member call {k}: {other:?}")),
            }
            refused_conns.push(ch);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let member = connect_from(&c.raft_target(n, leader), [127, 0, 0, 6])
            .await
            .unwrap_or_else(|e| c.fail(&format!("a member from the stranger's address: {e}")));
        let r = rpb::raft_service_client::RaftServiceClient::new(member)
            .read_index(rpb::ReadIndexRequest {})
            .await;
        if let Err(s) = &r {
            assert!(
                !matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::PermissionDenied
                ),
                "a member from the stranger's address: {s:?}"
            );
        }
        drop(refused_conns);
    });
    // The cluster kept working throughout.
    let last = c.put_ok(n, "sources-after", "ok").log_index;
    c.wait_converged(&c.ids(), last);
}
