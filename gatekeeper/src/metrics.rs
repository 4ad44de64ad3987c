//! `/metrics`: Prometheus text exposition (format 0.0.4) over plain HTTP/1, on
//! `metrics_listen` when configured; beside it `/livez` (200 whenever the process answers) and
//! `/readyz` (200 when ready, else 503 with the reasons: [`crate::health`];
//! `/readyz?uninitialized=ok` also counts a node of a cluster not initialised yet as ready), for
//! probes that cannot speak TLS (Kubernetes' gRPC probes cannot).
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `gatekeeper_raft_term` | gauge | current Raft term |
//! | `gatekeeper_raft_is_leader` | gauge | 1 on the leader |
//! | `gatekeeper_raft_last_applied_index` | gauge | last applied log index |
//! | `gatekeeper_audit_sequence` | gauge | audit sequence of the applied state |
//! | `gatekeeper_unsealed` | gauge | 1 when every active epoch's master is in enclave memory |
//! | `gatekeeper_chain_connected` | gauge | 1 while the watcher has a session with the chain node |
//! | `gatekeeper_chain_stalled` | gauge | 1 when no new finalized block came within `chain_stall_ms` |
//! | `gatekeeper_chain_finalized_block` | gauge | latest finalized block seen |
//! | `gatekeeper_chain_cursor_block` | gauge | block of the committed cursor |
//! | `gatekeeper_chain_lag_blocks` | gauge | finalized blocks not yet fully applied |
//! | `gatekeeper_chain_last_finalized_age_seconds` | gauge | time since the finalized head advanced |
//! | `gatekeeper_chain_events_applied_total` | counter | chain events applied (cluster-wide, replicated) |
//! | `gatekeeper_chain_events_ignored_total` | counter | chain events not applied (undecodable or not applicable) |
//! | `gatekeeper_chain_reconnects_total` | counter | this node's watcher reconnections |
//! | `gatekeeper_chain_blocks_proposed_total` | counter | finalized blocks this node committed as leader |
//!
//! The chain metrics are present only when a chain is configured. The telemetry issue moves
//! these onto OpenTelemetry; the names stay.

use crate::chain::{ChainSettings, ChainView};
use crate::enclave::Enclave;
use bytes::Bytes;
use gatekeeper_raft::replica::Replica;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// What `/metrics` reads.
#[derive(Clone)]
pub struct Metrics {
    /// The replica.
    pub replica: Replica,
    /// The enclave (whether it holds every active epoch's master).
    pub enclave: Arc<dyn Enclave>,
    /// The chain watcher's settings and view, when a chain is configured.
    pub chain: Option<(ChainSettings, Arc<Mutex<ChainView>>)>,
}

/// One metric: name, type, help text, value.
type Sample = (&'static str, &'static str, &'static str, f64);

impl Metrics {
    /// The samples, in exposition order.
    fn samples(&self) -> Vec<Sample> {
        let s = self.replica.status();
        let (active, chain_record) = {
            let applied = self.replica.sm.read();
            (
                crate::epochs::active_epochs(&applied.state),
                applied.state.chain.clone(),
            )
        };
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let mut out: Vec<Sample> = vec![
            (
                "gatekeeper_raft_term",
                "gauge",
                "Current Raft term.",
                s.term as f64,
            ),
            (
                "gatekeeper_raft_is_leader",
                "gauge",
                "1 on the Raft leader.",
                flag(s.role == "leader"),
            ),
            (
                "gatekeeper_raft_last_applied_index",
                "gauge",
                "Last applied Raft log index.",
                s.last_applied.unwrap_or(0) as f64,
            ),
            (
                "gatekeeper_audit_sequence",
                "gauge",
                "Audit sequence of the applied state.",
                s.audit_sequence as f64,
            ),
            (
                "gatekeeper_unsealed",
                "gauge",
                "1 when every active epoch's master secret is in enclave memory.",
                flag(crate::epochs::holds_every(self.enclave.as_ref(), &active)),
            ),
        ];
        if let Some((settings, view)) = &self.chain {
            let view = view.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let c = crate::chain::status(settings, &view, &chain_record);
            out.extend([
                (
                    "gatekeeper_chain_connected",
                    "gauge",
                    "1 while the chain watcher has a session with the chain node.",
                    flag(c.connected),
                ),
                (
                    "gatekeeper_chain_stalled",
                    "gauge",
                    "1 when no new finalized block came within chain_stall_ms.",
                    flag(c.stalled),
                ),
                (
                    "gatekeeper_chain_finalized_block",
                    "gauge",
                    "Latest finalized block seen.",
                    c.finalized as f64,
                ),
                (
                    "gatekeeper_chain_cursor_block",
                    "gauge",
                    "Block of the committed chain cursor.",
                    c.cursor_block as f64,
                ),
                (
                    "gatekeeper_chain_lag_blocks",
                    "gauge",
                    "Finalized blocks not yet fully applied.",
                    c.lag_blocks as f64,
                ),
                (
                    "gatekeeper_chain_last_finalized_age_seconds",
                    "gauge",
                    "Seconds since the finalized head advanced.",
                    c.last_finalized_age_ms as f64 / 1000.0,
                ),
                (
                    "gatekeeper_chain_events_applied_total",
                    "counter",
                    "Chain events applied to the replicated state.",
                    c.events_applied as f64,
                ),
                (
                    "gatekeeper_chain_events_ignored_total",
                    "counter",
                    "Chain events not applied (undecodable or not applicable).",
                    c.events_ignored as f64,
                ),
                (
                    "gatekeeper_chain_reconnects_total",
                    "counter",
                    "Chain watcher reconnections on this node.",
                    c.reconnects as f64,
                ),
                (
                    "gatekeeper_chain_blocks_proposed_total",
                    "counter",
                    "Finalized blocks this node committed as leader.",
                    view.blocks_proposed as f64,
                ),
            ]);
        }
        out
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        for (name, kind, help, value) in self.samples() {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            let _ = writeln!(o, "{name} {value}");
        }
        o
    }
}

async fn handle(
    m: Arc<Metrics>,
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
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(m.render()))),
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
    metrics: Metrics,
    admit: A,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    A: Fn(tokio::net::TcpStream) -> Option<C>,
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let m = Arc::new(metrics);
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
