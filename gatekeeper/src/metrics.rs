//! `/metrics`: the node's Prometheus metrics (OpenMetrics text, `prometheus-client`) over plain
//! HTTP/1, on `metrics_listen` when configured; beside it `/livez` (200 whenever the process
//! answers) and `/readyz` (200 when ready, else 503 with the reasons: [`crate::health`];
//! `/readyz?uninitialized=ok` also counts a node of a cluster not initialised yet as ready), for
//! probes that cannot speak TLS (Kubernetes' gRPC probes cannot).
//!
//! Every node serves its own view and never forwards: scrape every pod. Names follow the
//! Prometheus conventions (base units, `_total` counters); labels hold only low-cardinality values
//! (a method of the API, a status code, an error code of the catalog, a member's id), never a
//! worker key, contract id or anything else a client chooses. The catalog with meanings is in
//! docs/operations.md "Metrics".
//!
//! Instruments updated where the work happens (the RPC layer [`RpcMetricsLayer`], the key service,
//! and the replica's [`gatekeeper_raft::telemetry`]) are registered once; the rest is read at each
//! scrape from the replica, the enclave and the chain watcher ([`NodeCollector`]). Values marked
//! "leader only" are absent on other nodes (only the leader knows its followers' progress).

use crate::chain::{ChainSettings, ChainView};
use crate::enclave::Enclave;
use bytes::Bytes;
use gatekeeper_raft::replica::Replica;
use gatekeeper_raft::state::EpochStatus;
use gatekeeper_raft::telemetry::{raft_failure_tolerance, unseal_failure_tolerance};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::net::TcpListener;

/// Bucket bounds of the RPC duration histogram (seconds): OpenTelemetry's recommendation for
/// `rpc.server.call.duration`, from 5 ms to 10 s, with 1 and 2.5 ms added below (a key request
/// served from a follower's state takes about a millisecond).
const RPC_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 10.0,
];

fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BUCKETS)
}

/// The method label of a request outside the API (an unknown path), as OpenTelemetry names it.
pub const OTHER_METHOD: &str = "_OTHER";

/// Labels of `gatekeeper_rpc_server_call_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `gatekeeper.v1.KeyService/GetWorkerKey`, or [`OTHER_METHOD`].
    pub method: String,
    /// The gRPC status code's name (`OK`, `PERMISSION_DENIED`, …).
    pub code: &'static str,
}

/// Labels of `gatekeeper_key_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// `worker`, `cluster` or `contract`.
    pub kind: &'static str,
    /// `delivered` or `refused`.
    pub result: &'static str,
    /// The refusal's stable error code (docs/api.md), `none` for a delivery.
    pub reason: &'static str,
}

/// The node's own instruments (the replica's are in [`gatekeeper_raft::telemetry`]). Cheap to
/// clone: every handle shares the same instruments.
#[derive(Clone, Debug)]
pub struct Instruments {
    /// Duration of each RPC this node served, by method and status code.
    pub rpc_duration: Family<RpcLabels, Histogram>,
    /// Key requests answered, by kind, result and refusal reason.
    pub key_requests: Family<KeyLabels, Counter>,
    /// The API's method paths (`/package.Service/Method`): anything else is [`OTHER_METHOD`].
    known_methods: Arc<HashSet<String>>,
}

impl Default for Instruments {
    fn default() -> Self {
        Self {
            rpc_duration: Family::new_with_constructor(rpc_histogram),
            key_requests: Family::default(),
            known_methods: Arc::new(known_methods()),
        }
    }
}

impl Instruments {
    /// Counts one answered key request.
    pub fn key_request(&self, kind: &'static str, refusal: Option<&'static str>) {
        self.key_requests
            .get_or_create(&KeyLabels {
                kind,
                result: if refusal.is_some() {
                    "refused"
                } else {
                    "delivered"
                },
                reason: refusal.unwrap_or("none"),
            })
            .inc();
    }

    /// The method label of a request path: the path without its leading `/` when it names a
    /// method of the API, else [`OTHER_METHOD`] (a client must not be able to add label values).
    pub fn method_label(&self, path: &str) -> String {
        if self.known_methods.contains(path) {
            path.trim_start_matches('/').to_string()
        } else {
            OTHER_METHOD.to_string()
        }
    }
}

/// Every `/package.Service/Method` path of the services the node serves, read from their
/// descriptor sets (the API's, gRPC health's and gRPC reflection's).
fn known_methods() -> HashSet<String> {
    use prost::Message;
    let sets = [
        gatekeeper_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    ];
    let mut out = HashSet::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    out.insert(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    out
}

/// The canonical name of a gRPC status code (`grpc-status` value), as in the gRPC spec.
pub fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// A tower layer that times each RPC into `gatekeeper_rpc_server_call_duration_seconds`. The code
/// is the response's `grpc-status` header; a response without one is `OK` (tonic sends an
/// error of a unary call as a trailers-only response, so the header is there; a stream's
/// final status travels in its trailers, which this layer does not wait for: a stream is timed
/// to its response headers).
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer(pub Instruments);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            instruments: self.0.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps.
#[derive(Clone, Debug)]
pub struct RpcMetricsService<S> {
    inner: S,
    instruments: Instruments,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        use tracing::Instrument;
        let method = self.instruments.method_label(req.uri().path());
        let started = std::time::Instant::now();
        let instruments = self.instruments.clone();
        // The server span (traces on): the handler runs inside it.
        let span = crate::traces::server_span(&method, req.headers());
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let in_span = span.clone();
        Box::pin(
            async move {
                let resp = fut.await;
                let status = match &resp {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0),
                    // The connection failed under the request (no response at all).
                    Err(_) => 14,
                };
                crate::traces::record_status(&in_span, status);
                instruments
                    .rpc_duration
                    .get_or_create(&RpcLabels {
                        method,
                        code: grpc_code_name(status),
                    })
                    .observe(started.elapsed().as_secs_f64());
                resp
            }
            .instrument(span),
        )
    }
}

/// What the scrape-time metrics read.
#[derive(Clone)]
pub struct NodeCollector {
    /// The replica.
    pub replica: Replica,
    /// The enclave (whether it holds every active epoch's master).
    pub enclave: Arc<dyn Enclave>,
    /// The chain watcher's settings and view, when a chain is configured.
    pub chain: Option<(ChainSettings, Arc<Mutex<ChainView>>)>,
    /// `gatekeeper_build_info` labels: mode and enclave kind.
    pub mode: &'static str,
    /// Enclave kind (`software`, …).
    pub enclave_kind: String,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector")
            .field("node_id", &self.replica.node_id)
            .finish_non_exhaustive()
    }
}

/// One scrape-time value.
enum Value {
    Gauge(f64),
    Counter(f64),
}

/// Writes one unlabelled metric.
fn put(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: Value,
) -> Result<(), std::fmt::Error> {
    match v {
        Value::Gauge(x) => {
            let g = ConstGauge::new(x);
            g.encode(enc.encode_descriptor(name, help, unit, g.metric_type())?)
        }
        Value::Counter(x) => {
            let c = ConstCounter::new(x);
            c.encode(enc.encode_descriptor(name, help, unit, c.metric_type())?)
        }
    }
}

/// The leader's view of its followers, read at a scrape.
pub struct LeaderView {
    /// Log entries each follower is behind (by member id).
    pub lag: Vec<(u64, u64)>,
    /// Voters that are up in the leader's eyes (itself and those that answered within the
    /// maximum election timeout).
    pub healthy_voters: BTreeSet<u64>,
    /// All voters.
    pub voters: BTreeSet<u64>,
    /// Members that are up in the leader's eyes, voters or not (itself and those that answered
    /// within the maximum election timeout).
    pub up: BTreeSet<u64>,
    /// Seconds since a quorum last acknowledged the leader.
    pub quorum_ack_age: Option<f64>,
}

/// The leader's view (`None` on other nodes).
pub fn leader_view(replica: &Replica) -> Option<LeaderView> {
    let m = replica.raft.metrics().borrow().clone();
    if m.state != openraft::ServerState::Leader {
        return None;
    }
    let last = m.last_log_index.unwrap_or(0);
    let lag = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != replica.node_id)
                .map(|(id, matched)| (*id, last.saturating_sub(matched.map_or(0, |l| l.index))))
                .collect()
        })
        .unwrap_or_default();
    let window = std::time::Duration::from_millis(replica.raft.config().election_timeout_max);
    let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
    let telemetry = replica.telemetry();
    let up: BTreeSet<u64> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| {
            *id == replica.node_id
                || telemetry
                    .since_peer_answered(*id)
                    .is_some_and(|a| a <= window)
        })
        .collect();
    let healthy_voters = voters.intersection(&up).copied().collect();
    Some(LeaderView {
        lag,
        healthy_voters,
        voters,
        up,
        quorum_ack_age: m.millis_since_quorum_ack.map(|ms| ms as f64 / 1000.0),
    })
}

impl NodeCollector {
    fn encode_all(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use Value::{Counter as C, Gauge as G};
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        {
            let labels = [
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("mode", self.mode.to_string()),
                ("enclave", self.enclave_kind.clone()),
            ];
            let g = ConstGauge::new(1i64);
            let mut d = enc.encode_descriptor(
                "build_info",
                "Always 1; the labels name the build and how the node runs.",
                None,
                g.metric_type(),
            )?;
            g.encode(d.encode_family(&labels)?)?;
        }
        let s = self.replica.status();
        let (active, current_epoch, rotating, chain_record, dealings) = {
            let applied = self.replica.sm.read();
            let st = &applied.state;
            // Every active epoch's share holders and threshold: a member unseals only with all.
            let dealings: Vec<(BTreeSet<u64>, u8)> = st
                .epochs
                .values()
                .filter(|e| e.status == EpochStatus::Active)
                .map(|e| {
                    let holders: BTreeSet<u64> =
                        e.dealing.shares.iter().map(|sh| sh.node_id).collect();
                    (holders, e.threshold)
                })
                .collect();
            (
                crate::epochs::active_epochs(st),
                st.current_epoch(),
                st.rotation.as_ref().is_some_and(|r| {
                    r.outcome == gatekeeper_raft::state::RotationOutcome::InProgress
                }),
                st.chain.clone(),
                dealings,
            )
        };
        put(
            enc,
            "raft_term",
            "Current Raft term.",
            None,
            G(s.term as f64),
        )?;
        put(
            enc,
            "raft_is_leader",
            "1 on the Raft leader.",
            None,
            G(flag(s.role == "leader")),
        )?;
        put(
            enc,
            "raft_has_leader",
            "1 when this node knows a leader.",
            None,
            G(flag(s.leader_id.is_some())),
        )?;
        put(
            enc,
            "raft_last_log_index",
            "Last index in this node's Raft log.",
            None,
            G(s.last_log_index.unwrap_or(0) as f64),
        )?;
        put(
            enc,
            "raft_last_applied_index",
            "Last Raft log index applied to the state.",
            None,
            G(s.last_applied.unwrap_or(0) as f64),
        )?;
        if let Some(ms) = self
            .replica
            .leader_contact_ms()
            .filter(|_| s.role != "leader")
        {
            put(
                enc,
                "raft_leader_contact_age",
                "Seconds since this node last heard from a leader (not on the leader).",
                Some(&Unit::Seconds),
                G(ms as f64 / 1000.0),
            )?;
        }
        let flush = self.replica.log_flush_metrics();
        put(
            enc,
            "raft_log_fsyncs",
            "fsyncs of the Raft log.",
            None,
            C(flush.sync_batch_count as f64),
        )?;
        put(
            enc,
            "raft_log_fsync_duration",
            "Total time spent in fsyncs of the Raft log.",
            Some(&Unit::Seconds),
            C(flush.sync_us as f64 / 1e6),
        )?;
        put(
            enc,
            "raft_log_fsync_max",
            "Longest fsync of the Raft log since the node started.",
            Some(&Unit::Seconds),
            G(flush.sync_max_us as f64 / 1e6),
        )?;
        put(
            enc,
            "raft_log_flush_batches",
            "Write batches of the Raft log's flush worker.",
            None,
            C(flush.batch_count as f64),
        )?;
        put(
            enc,
            "raft_log_flush_requests",
            "Write requests the Raft log's flush worker took (several share a batch).",
            None,
            C(flush.write_request_count as f64),
        )?;
        put(
            enc,
            "raft_log_written",
            "Bytes written to the Raft log.",
            Some(&Unit::Bytes),
            C(flush.write_bytes as f64),
        )?;
        put(
            enc,
            "raft_log_batch_requests_max",
            "Most write requests in one flush batch since the node started.",
            None,
            G(flush.batch_size_max as f64),
        )?;
        if let Some(view) = leader_view(&self.replica) {
            if let Some(age) = view.quorum_ack_age {
                put(
                    enc,
                    "raft_quorum_ack_age",
                    "Seconds since a quorum last acknowledged this leader (leader only).",
                    Some(&Unit::Seconds),
                    G(age),
                )?;
            }
            put(
                enc,
                "raft_failure_tolerance",
                "Voters that may still fail before the cluster loses its quorum: voters that \
                 answered within the maximum election timeout minus a majority (leader only).",
                None,
                G(raft_failure_tolerance(view.voters.len(), view.healthy_voters.len()) as f64),
            )?;
            let tolerance = dealings
                .iter()
                .map(|(holders, threshold)| {
                    unseal_failure_tolerance(holders.intersection(&view.up).count(), *threshold)
                })
                .min();
            if let Some(tolerance) = tolerance {
                put(
                    enc,
                    "unseal_failure_tolerance",
                    "Share holders that may still fail before a restarted member can no longer \
                     rebuild every active epoch's master key: holders up minus the threshold, \
                     the least over the active epochs (leader only).",
                    None,
                    G(tolerance as f64),
                )?;
            }
            let g = ConstGauge::new(0i64);
            let mut d = enc.encode_descriptor(
                "raft_follower_lag_entries",
                "Log entries each follower is behind the leader (leader only).",
                None,
                g.metric_type(),
            )?;
            for (id, lag) in &view.lag {
                let labels = [("member", id.to_string())];
                ConstGauge::new(*lag as i64).encode(d.encode_family(&labels)?)?;
            }
        }
        put(
            enc,
            "audit_sequence",
            "Audit sequence of the applied state.",
            None,
            G(s.audit_sequence as f64),
        )?;
        put(
            enc,
            "unsealed",
            "1 when every active epoch's master secret is in enclave memory.",
            None,
            G(flag(crate::epochs::holds_every(
                self.enclave.as_ref(),
                &active,
            ))),
        )?;
        if let Some(epoch) = current_epoch {
            put(
                enc,
                "epoch_current",
                "The newest active epoch (absent: none yet).",
                None,
                G(epoch as f64),
            )?;
        }
        put(
            enc,
            "rotation_in_progress",
            "1 while a rotation deals its new epoch.",
            None,
            G(flag(rotating)),
        )?;
        if let Some((settings, view)) = &self.chain {
            let view = view.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let c = crate::chain::status(settings, &view, &chain_record);
            put(
                enc,
                "chain_connected",
                "1 while the chain watcher has a session with the chain node.",
                None,
                G(flag(c.connected)),
            )?;
            put(
                enc,
                "chain_stalled",
                "1 when no new finalized block came within chain_stall_ms.",
                None,
                G(flag(c.stalled)),
            )?;
            put(
                enc,
                "chain_finalized_block",
                "Latest finalized block seen.",
                None,
                G(c.finalized as f64),
            )?;
            put(
                enc,
                "chain_cursor_block",
                "Block of the committed chain cursor.",
                None,
                G(c.cursor_block as f64),
            )?;
            put(
                enc,
                "chain_lag_blocks",
                "Finalized blocks not yet fully applied.",
                None,
                G(c.lag_blocks as f64),
            )?;
            put(
                enc,
                "chain_last_finalized_age",
                "Seconds since the finalized head advanced.",
                Some(&Unit::Seconds),
                G(c.last_finalized_age_ms as f64 / 1000.0),
            )?;
            put(
                enc,
                "chain_events_applied",
                "Chain events applied to the replicated state (the same on every node: use max, \
                 not sum).",
                None,
                C(c.events_applied as f64),
            )?;
            put(
                enc,
                "chain_events_ignored",
                "Chain events not applied (undecodable or not applicable; replicated).",
                None,
                C(c.events_ignored as f64),
            )?;
            put(
                enc,
                "chain_reconnects",
                "Chain watcher reconnections on this node.",
                None,
                C(c.reconnects as f64),
            )?;
            put(
                enc,
                "chain_blocks_proposed",
                "Finalized blocks this node committed as leader.",
                None,
                C(view.blocks_proposed as f64),
            )?;
        }
        Ok(())
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_all(&mut encoder)
    }
}

/// The registry `/metrics` encodes: the node's and the replica's instruments under the
/// `gatekeeper` prefix, and the scrape-time collector.
pub fn registry(instruments: &Instruments, collector: NodeCollector) -> Registry {
    let mut r = Registry::with_prefix("gatekeeper");
    let raft = collector.replica.telemetry().clone();
    r.register_with_unit(
        "rpc_server_call_duration",
        "Duration of RPCs this node served, by method and gRPC status code",
        Unit::Seconds,
        instruments.rpc_duration.clone(),
    );
    r.register(
        "key_requests",
        "Key requests answered, by kind, result (delivered or refused) and refusal reason \
         (a stable error code)",
        instruments.key_requests.clone(),
    );
    r.register_with_unit(
        "raft_log_append_duration",
        "Time from handing entries to the Raft log until they are durable (fsync included)",
        Unit::Seconds,
        raft.log_append_duration,
    );
    r.register_with_unit(
        "raft_apply_duration",
        "Duration of one apply call of the state machine (one or more entries)",
        Unit::Seconds,
        raft.apply_duration,
    );
    r.register(
        "raft_apply_batch_entries",
        "Entries in one apply call of the state machine",
        raft.apply_batch_entries,
    );
    r.register(
        "raft_proposals",
        "Writes submitted through this node, by result: committed, refused (committed, and the \
         state machine refused it) or failed (not committed: no leader, timeout)",
        raft.proposals,
    );
    r.register(
        "raft_leader_changes",
        "Times the leader this node knows of changed (including to none)",
        raft.leader_changes,
    );
    r.register_collector(Box::new(collector));
    r
}

/// The exposition text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail; a collector's own error would only cut the text short.
    let _ = prometheus_client::encoding::text::encode(&mut o, registry);
    o
}

/// What `/metrics`, `/livez` and `/readyz` read.
pub struct Endpoint {
    /// The metrics.
    pub registry: Registry,
    /// The replica (readiness).
    pub replica: Replica,
    /// The enclave (readiness).
    pub enclave: Arc<dyn Enclave>,
}

async fn handle(
    m: Arc<Endpoint>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
    };
    let resp = match (req.method() == hyper::Method::GET, req.uri().path()) {
        (true, "/metrics") => Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(render(&m.registry)))),
        // Liveness: the process answers. Never seal, quorum or disk state (health.rs).
        (true, "/livez") => text(StatusCode::OK, "ok\n".into()),
        (true, "/readyz") => {
            let facts = crate::health::facts(&m.replica, m.enclave.as_ref());
            let r = if req.uri().query() == Some("uninitialized=ok") {
                crate::health::readiness_uninitialized_ok(&facts)
            } else {
                crate::health::readiness(&facts)
            };
            let status = if r.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, format!("{}\n", r.describe()))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "served here: GET /metrics, /livez, /readyz\n".into(),
        ),
    };
    Ok(resp.expect("static response parts are valid"))
}

/// Pause after a failed accept (e.g. out of file descriptors) instead of retrying at once.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves `/metrics` on `listener` until `stop` turns true. `admit` applies the node's connection
/// limits to each accepted connection (`None`: over the cap, the connection is closed).
pub async fn serve<C, A>(
    listener: TcpListener,
    endpoint: Endpoint,
    admit: A,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    A: Fn(tokio::net::TcpStream) -> Option<C>,
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let m = Arc::new(endpoint);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed; pausing");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Over the cap, the connection is closed here (dropped).
        let Some(stream) = admit(stream) else {
            continue;
        };
        let m = m.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(m.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_apis_methods_become_label_values() {
        let i = Instruments::default();
        assert_eq!(
            i.method_label("/gatekeeper.v1.KeyService/GetWorkerKey"),
            "gatekeeper.v1.KeyService/GetWorkerKey"
        );
        assert_eq!(
            i.method_label("/gatekeeper.raft.v1.RaftService/AppendEntries"),
            "gatekeeper.raft.v1.RaftService/AppendEntries"
        );
        assert_eq!(
            i.method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(
            i.method_label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        );
        for other in [
            "/gatekeeper.v1.KeyService/NoSuchMethod",
            "/attacker-chosen/9f8e7d",
            "/",
            "",
        ] {
            assert_eq!(i.method_label(other), OTHER_METHOD, "{other}");
        }
    }

    #[test]
    fn grpc_codes_have_their_canonical_names() {
        assert_eq!(grpc_code_name(0), "OK");
        assert_eq!(grpc_code_name(7), "PERMISSION_DENIED");
        assert_eq!(grpc_code_name(14), "UNAVAILABLE");
        assert_eq!(grpc_code_name(16), "UNAUTHENTICATED");
        assert_eq!(grpc_code_name(99), "UNKNOWN");
        assert_eq!(grpc_code_name(-1), "UNKNOWN");
    }

    #[test]
    fn key_requests_are_counted_by_kind_result_and_reason() {
        let i = Instruments::default();
        i.key_request("worker", None);
        i.key_request("worker", Some("WORKER_SLASHED"));
        i.key_request("worker", Some("WORKER_SLASHED"));
        let mut r = Registry::with_prefix("gatekeeper");
        r.register("key_requests", "help", i.key_requests.clone());
        let text = render(&r);
        assert!(
            text.contains(
                "gatekeeper_key_requests_total{kind=\"worker\",result=\"delivered\",reason=\"none\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gatekeeper_key_requests_total{kind=\"worker\",result=\"refused\",reason=\"WORKER_SLASHED\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn rpc_durations_render_as_a_histogram_in_seconds() {
        let i = Instruments::default();
        i.rpc_duration
            .get_or_create(&RpcLabels {
                method: "gatekeeper.v1.KeyService/GetWorkerKey".into(),
                code: "OK",
            })
            .observe(0.003);
        let mut r = Registry::with_prefix("gatekeeper");
        r.register_with_unit(
            "rpc_server_call_duration",
            "help",
            Unit::Seconds,
            i.rpc_duration,
        );
        let text = render(&r);
        assert!(text.contains("# TYPE gatekeeper_rpc_server_call_duration_seconds histogram"));
        assert!(text.contains(
            "gatekeeper_rpc_server_call_duration_seconds_bucket{le=\"0.005\",method=\"gatekeeper.v1.KeyService/GetWorkerKey\",code=\"OK\"} 1"
        ), "{text}");
        assert!(text.contains(
            "gatekeeper_rpc_server_call_duration_seconds_bucket{le=\"0.0025\",method=\"gatekeeper.v1.KeyService/GetWorkerKey\",code=\"OK\"} 0"
        ), "{text}");
    }
}
