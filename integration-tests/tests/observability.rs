//! What an operator observes, against real `gatekeeper` processes: `/metrics` scraped from live
//! nodes (names, types, labels, histograms that move, failure tolerance as members go down).

use gatekeeper_integration_tests::{Cluster, Opts};
use keyring::Sr25519Keypair;
use rand_core::OsRng;
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(45);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One scrape, parsed: declared types by family name, and samples (name with labels → value).
struct Scrape {
    text: String,
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn of(c: &Cluster, i: u64) -> Result<Scrape, String> {
        let text = c.metrics(i)?;
        let mut types = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or(line)?;
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').ok_or(line)?;
                let v: f64 = value.parse().map_err(|e| format!("{line}: {e}"))?;
                samples.insert(series.to_string(), v);
            }
        }
        Ok(Scrape {
            text,
            types,
            samples,
        })
    }

    /// The value of an exact series (`name{labels}` as exposed), 0 when absent.
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    fn has(&self, series: &str) -> bool {
        self.samples.contains_key(series)
    }
}

#[test]
fn a_live_node_exports_the_documented_metrics_and_its_histograms_move() {
    let c = Cluster::start(
        3,
        Opts {
            metrics: true,
            ..Opts::default()
        },
    );
    let (w, _) = c.dev_worker(&[1, 2, 3], WAIT);
    let leader = c.leader();
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let before = Scrape::of(&c, leader).unwrap();

    // Work that every histogram and counter below must see: writes, a delivery, a refusal.
    for n in 0..5 {
        c.put_ok(leader, &format!("metrics-{n}"), "v");
    }
    c.worker_key(leader, &w).unwrap();
    let stranger = Sr25519Keypair::generate(&mut OsRng);
    let refused = c.worker_key(leader, &stranger).unwrap_err();
    assert!(refused.contains("WORKER_NOT_REGISTERED"), "{refused}");
    let after = Scrape::of(&c, leader).unwrap();

    // The names and types the runbook and the dashboard use.
    let expected = [
        ("gatekeeper_build_info", "gauge"),
        ("gatekeeper_rpc_server_call_duration_seconds", "histogram"),
        ("gatekeeper_key_requests", "counter"),
        ("gatekeeper_raft_log_append_duration_seconds", "histogram"),
        ("gatekeeper_raft_apply_duration_seconds", "histogram"),
        ("gatekeeper_raft_apply_batch_entries", "histogram"),
        ("gatekeeper_raft_proposals", "counter"),
        ("gatekeeper_raft_leader_changes", "counter"),
        ("gatekeeper_raft_term", "gauge"),
        ("gatekeeper_raft_is_leader", "gauge"),
        ("gatekeeper_raft_has_leader", "gauge"),
        ("gatekeeper_raft_last_log_index", "gauge"),
        ("gatekeeper_raft_last_applied_index", "gauge"),
        ("gatekeeper_raft_log_fsyncs", "counter"),
        ("gatekeeper_raft_log_fsync_duration_seconds", "counter"),
        ("gatekeeper_raft_log_fsync_max_seconds", "gauge"),
        ("gatekeeper_raft_log_flush_batches", "counter"),
        ("gatekeeper_raft_log_flush_requests", "counter"),
        ("gatekeeper_raft_log_written_bytes", "counter"),
        ("gatekeeper_raft_log_batch_requests_max", "gauge"),
        ("gatekeeper_raft_quorum_ack_age_seconds", "gauge"),
        ("gatekeeper_raft_failure_tolerance", "gauge"),
        ("gatekeeper_unseal_failure_tolerance", "gauge"),
        ("gatekeeper_raft_follower_lag_entries", "gauge"),
        ("gatekeeper_audit_sequence", "gauge"),
        ("gatekeeper_unsealed", "gauge"),
        ("gatekeeper_epoch_current", "gauge"),
        ("gatekeeper_rotation_in_progress", "gauge"),
    ];
    for (name, kind) in expected {
        assert_eq!(
            after.types.get(name).map(String::as_str),
            Some(kind),
            "{name} should be a {kind}:\n{}",
            after.text
        );
    }
    assert!(
        after.text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    assert!(
        after.text.contains(
            "gatekeeper_build_info{version=\"0.1.0\",mode=\"development\",enclave=\"software\"} 1"
        ),
        "{}",
        after.text
    );

    // The histograms and counters moved with the work done.
    let moved = |series: &str| after.get(series) - before.get(series);
    assert!(
        moved("gatekeeper_rpc_server_call_duration_seconds_count{method=\"gatekeeper.v1.KeyService/GetWorkerKey\",code=\"OK\"}") >= 1.0,
        "{}",
        after.text
    );
    assert!(
        moved("gatekeeper_rpc_server_call_duration_seconds_count{method=\"gatekeeper.v1.KeyService/GetWorkerKey\",code=\"NOT_FOUND\"}") >= 1.0
            || moved("gatekeeper_rpc_server_call_duration_seconds_count{method=\"gatekeeper.v1.KeyService/GetWorkerKey\",code=\"PERMISSION_DENIED\"}") >= 1.0,
        "a refusal is timed under its own code:\n{}",
        after.text
    );
    assert!(moved("gatekeeper_rpc_server_call_duration_seconds_count{method=\"gatekeeper.v1.AdminService/WriteCanary\",code=\"OK\"}") >= 5.0, "{}", after.text);
    assert!(
        moved(
            "gatekeeper_key_requests_total{kind=\"worker\",result=\"delivered\",reason=\"none\"}"
        ) >= 1.0,
        "{}",
        after.text
    );
    assert!(moved("gatekeeper_key_requests_total{kind=\"worker\",result=\"refused\",reason=\"WORKER_NOT_REGISTERED\"}") >= 1.0, "{}", after.text);
    assert!(
        moved("gatekeeper_raft_proposals_total{result=\"committed\"}") >= 5.0,
        "{}",
        after.text
    );
    assert!(
        moved("gatekeeper_raft_apply_duration_seconds_count") >= 1.0,
        "{}",
        after.text
    );
    assert!(
        moved("gatekeeper_raft_apply_duration_seconds_sum") > 0.0,
        "{}",
        after.text
    );
    assert!(
        moved("gatekeeper_raft_log_append_duration_seconds_count") >= 1.0,
        "{}",
        after.text
    );
    assert!(
        moved("gatekeeper_raft_log_fsyncs_total") >= 1.0,
        "{}",
        after.text
    );
    assert!(
        moved("gatekeeper_raft_log_flush_requests_total") >= 1.0,
        "{}",
        after.text
    );
    assert!(
        after.get("gatekeeper_raft_apply_duration_seconds_bucket{le=\"+Inf\"}")
            >= after.get("gatekeeper_raft_apply_duration_seconds_count")
    );

    // The leader's view: all three voters up, every share holder up (t = 2 of 3).
    assert_eq!(after.get("gatekeeper_raft_is_leader"), 1.0);
    assert_eq!(after.get("gatekeeper_raft_has_leader"), 1.0);
    assert_eq!(
        after.get("gatekeeper_raft_failure_tolerance"),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(
        after.get("gatekeeper_unseal_failure_tolerance"),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(after.get("gatekeeper_unsealed"), 1.0);
    assert!(after.has("gatekeeper_epoch_current"), "genesis is epoch 0");
    assert_eq!(after.get("gatekeeper_epoch_current"), 0.0);
    for i in [1, 2, 3].into_iter().filter(|i| *i != leader) {
        assert!(
            after.has(&format!(
                "gatekeeper_raft_follower_lag_entries{{member=\"{i}\"}}"
            )),
            "{}",
            after.text
        );
    }
    // No label value a client chose: every method label is an API method.
    for series in after.samples.keys() {
        if let Some(rest) = series.split("method=\"").nth(1) {
            let method = rest.split('"').next().unwrap();
            assert!(
                method == "_OTHER"
                    || method.starts_with("gatekeeper.")
                    || method.starts_with("grpc."),
                "{series}"
            );
        }
    }

    // A follower: knows the leader, says how long since it heard from it, and has no
    // leader-only values.
    let f = Scrape::of(&c, follower).unwrap();
    assert_eq!(f.get("gatekeeper_raft_is_leader"), 0.0);
    assert_eq!(f.get("gatekeeper_raft_has_leader"), 1.0);
    assert!(
        f.has("gatekeeper_raft_leader_contact_age_seconds"),
        "{}",
        f.text
    );
    assert!(!f.has("gatekeeper_raft_failure_tolerance"), "{}", f.text);
    assert!(
        f.get("gatekeeper_raft_leader_changes_total") >= 1.0,
        "{}",
        f.text
    );

    // One follower down: the leader's failure tolerance falls to 0 for both quorum and unsealing.
    c.kill9(follower);
    c.wait_for("the leader to count the dead follower out", WAIT, || {
        let s = Scrape::of(&c, leader)?;
        for name in [
            "gatekeeper_raft_failure_tolerance",
            "gatekeeper_unseal_failure_tolerance",
        ] {
            if !s.has(name) {
                return Err(format!("{name} is missing"));
            }
        }
        let t = (
            s.get("gatekeeper_raft_failure_tolerance"),
            s.get("gatekeeper_unseal_failure_tolerance"),
        );
        if t == (0.0, 0.0) {
            Ok(())
        } else {
            Err(format!("tolerance (raft, unseal) = {t:?}"))
        }
    });
}

/// Node `i`'s log lines (stderr, text format) that contain `needle`.
fn log_lines(c: &Cluster, i: u64, needle: &str) -> Vec<String> {
    std::fs::read_to_string(c.stderr_log(i))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_operator_reads_leadership_membership_epochs_and_rotations_in_every_nodes_log() {
    let c = Cluster::start(3, Opts::default());
    let _ = c.dev_worker(&[1, 2, 3], WAIT);
    let leader = c.leader();
    let out = c.admin(
        leader,
        &["rotate", "--rotation-id", "r-logs", "--reason", "test"],
    );
    assert!(out.success(), "{}", out.describe());
    c.wait_for("every node to log the completed rotation", WAIT, || {
        let missing: Vec<u64> = [1, 2, 3]
            .into_iter()
            .filter(|i| log_lines(&c, *i, "rotation completed").is_empty())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not yet on {missing:?}"))
        }
    });
    // The dealer holds each master from dealing; the others unseal it from their shares.
    let unsealed = [1, 2, 3]
        .into_iter()
        .filter(|i| !log_lines(&c, *i, "epoch unsealed").is_empty())
        .count();
    assert!(
        unsealed >= 2,
        "only {unsealed} nodes logged 'epoch unsealed'"
    );
    for i in [1, 2, 3] {
        let has = |needle: &str| {
            assert!(
                !log_lines(&c, i, needle).is_empty(),
                "node {i} never logged {needle:?}:\n{}",
                c.log_tail(i, 60)
            )
        };
        has(if i == leader {
            "became leader"
        } else {
            "following a new leader"
        });
        has("membership changed");
        has("member registered");
        has("epoch active epoch=0");
        has("epoch active epoch=1");
        has("rotation dealing a new epoch rotation=r-logs epoch=1");
        has("rotation completed rotation=r-logs epoch=1");
        // Normal operation is quiet: no errors, and openraft's election chatter is held back
        // to its first line per kind.
        let errors = log_lines(&c, i, " ERROR ");
        assert!(errors.is_empty(), "node {i} logged errors: {errors:#?}");
        let warns = log_lines(&c, i, " WARN ");
        assert!(
            warns.len() <= 5,
            "node {i} logged {} warnings: {warns:#?}",
            warns.len()
        );
    }
}

#[test]
fn admin_health_and_status_all_ask_every_member_and_report_the_failure_tolerance() {
    let c = Cluster::start(3, Opts::default());
    let _ = c.dev_worker(&[1, 2, 3], WAIT);
    let code = |out: &gatekeeper_integration_tests::AdminOutput| out.status.and_then(|s| s.code());
    let health = c.admin(1, &["health", "--cluster", "--json"]);
    assert_eq!(code(&health), Some(0), "{}", health.describe());
    let h: serde_json::Value = serde_json::from_str(health.stdout.trim()).unwrap();
    assert_eq!(h["status"], "healthy", "{h}");
    assert_eq!(
        (
            h["raft_failure_tolerance"].as_i64(),
            h["unseal_failure_tolerance"].as_i64()
        ),
        (Some(1), Some(1)),
        "{h}"
    );
    let single = c.admin(2, &["health"]);
    assert_eq!(code(&single), Some(0), "{}", single.describe());
    assert!(
        single.stdout.contains("node 2: healthy"),
        "{}",
        single.describe()
    );

    let all = c.admin(3, &["status", "--all", "--json"]);
    assert!(all.success(), "{}", all.describe());
    let v: serde_json::Value = serde_json::from_str(all.stdout.trim()).unwrap();
    let leader = c.leader();
    assert_eq!(v["agreed_leader"], leader, "{v}");
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{v}");
    for m in members {
        assert_eq!(m["reachable"], true, "{v}");
        assert_eq!(m["leader"], leader, "{v}");
        assert_eq!(m["unsealed"], true, "{v}");
    }
    let text = c.admin(3, &["status", "--all"]);
    assert!(
        text.stdout
            .contains("every member agrees on the leader and is unsealed"),
        "{}",
        text.describe()
    );

    // One follower gone: degraded (exit 1), it says which member and that the margin is gone.
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let asked = [1, 2, 3].into_iter().find(|i| *i != follower).unwrap();
    c.kill9(follower);
    let health = c.admin(asked, &["health", "--cluster", "--json"]);
    assert_eq!(code(&health), Some(1), "{}", health.describe());
    let h: serde_json::Value = serde_json::from_str(health.stdout.trim()).unwrap();
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["raft_failure_tolerance"], 0, "{h}");
    assert!(
        h["problems"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("member {follower} did not answer")),
        "{h}"
    );
    let all = c.admin(asked, &["status", "--all"]);
    assert!(all.success(), "{}", all.describe());
    assert!(
        all.stdout
            .contains(&format!("{follower:<6} yes    unreachable")),
        "{}",
        all.describe()
    );
}

#[test]
fn rotate_wait_reports_completion_or_the_abort_reason_and_every_node_logs_it() {
    let c = Cluster::start(3, Opts::default());
    let _ = c.dev_worker(&[1, 2, 3], WAIT);
    let code = |out: &gatekeeper_integration_tests::AdminOutput| out.status.and_then(|s| s.code());
    let out = c.admin(1, &["rotate", "--rotation-id", "r-ok", "--wait"]);
    assert_eq!(code(&out), Some(0), "{}", out.describe());
    let last: serde_json::Value =
        serde_json::from_str(out.stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["outcome"].as_str(), last["epoch"].as_u64()),
        (Some("completed"), Some(1)),
        "{last}"
    );
    assert!(
        out.stderr.contains("rotation r-ok: epoch 1"),
        "{}",
        out.describe()
    );

    // One member down: the dealing cannot be acknowledged by all, the deadline passes, and the
    // operator is told why; every running node logs it.
    let leader = c.leader();
    let down = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let asked = [1, 2, 3].into_iter().find(|i| *i != down).unwrap();
    c.kill9(down);
    let out = c.admin_timeout(
        asked,
        &[
            "rotate",
            "--rotation-id",
            "r-down",
            "--deadline-ms",
            "3000",
            "--wait",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(code(&out), Some(1), "{}", out.describe());
    let last: serde_json::Value =
        serde_json::from_str(out.stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "aborted", "{last}");
    let reason = last["reason"].as_str().unwrap();
    assert!(!reason.is_empty(), "{last}");
    assert!(
        out.stderr
            .contains(&format!("rotation r-down aborted: {reason}")),
        "{}",
        out.describe()
    );
    for i in [1, 2, 3].into_iter().filter(|i| *i != down) {
        c.wait_for(
            &format!("node {i} to log the aborted rotation"),
            WAIT,
            || {
                let lines = log_lines(&c, i, "rotation aborted");
                if lines.iter().any(|l| l.contains("r-down")) {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            },
        );
    }
    let s = c.admin(asked, &["status"]);
    assert!(
        s.stdout.contains("rotation: r-down epoch"),
        "{}",
        s.describe()
    );
}

#[test]
fn status_says_isolated_and_removed_instead_of_leader_and_follower() {
    let c = Cluster::start(3, Opts::default());
    let _ = c.dev_worker(&[1, 2, 3], WAIT);
    let condition = |i: u64| -> Result<String, String> {
        let out = c.admin(i, &["status", "--json"]);
        if !out.success() {
            return Err(out.describe());
        }
        let v: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).map_err(|e| e.to_string())?;
        Ok(v["condition"].as_str().unwrap_or("").to_string())
    };
    let leader = c.leader();
    assert_eq!(condition(leader).unwrap(), "", "a healthy leader");

    // The leader cut off from its peers: it still holds the leader role, and says it is isolated.
    c.fault(leader, true).unwrap();
    c.wait_for("the cut-off leader to say it is isolated", WAIT, || {
        let cond = condition(leader)?;
        if cond.starts_with("isolated, cannot reach a quorum") {
            Ok(())
        } else {
            Err(format!("condition {cond:?}"))
        }
    });
    let text = c.admin(leader, &["status"]);
    assert!(
        text.stdout.contains("! isolated, cannot reach a quorum"),
        "{}",
        text.describe()
    );
    c.fault(leader, false).unwrap();

    // A member removed while running: it says it was removed, whatever its role claims.
    // (Leadership may still be settling after the heal: retried until a leader takes it.)
    let removed = c.wait_for("a member removed", WAIT, || {
        let l = c.agreed_leader(&[1, 2, 3])?;
        let r = [1, 2, 3].into_iter().find(|i| *i != l).unwrap();
        c.leave(l, r).map(|_| r)
    });
    c.wait_for("the removed member to say so", WAIT, || {
        let cond = condition(removed)?;
        if cond.starts_with("removed from the cluster") {
            Ok(())
        } else {
            Err(format!("condition {cond:?}"))
        }
    });
}

mod otlp {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::Span;
    use std::sync::{Arc, Mutex};

    /// An OTLP/gRPC trace collector in this process: keeps every span it is sent.
    #[derive(Clone, Default)]
    pub struct Collector(pub Arc<Mutex<Vec<Span>>>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.0.lock().unwrap();
            for rs in request.into_inner().resource_spans {
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    /// Starts the collector on a thread of its own; returns it and its address.
    pub fn start() -> (Collector, String) {
        let c = Collector::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let served = c.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(served))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                    .await
                    .unwrap();
            });
        });
        (c, format!("http://{addr}"))
    }

    pub fn attr(s: &Span, key: &str) -> Option<String> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            })
    }
}

#[test]
fn a_node_exports_rpc_and_internal_spans_to_an_otlp_collector_with_their_parents() {
    let (collector, endpoint) = otlp::start();
    let c = Cluster::start(
        3,
        Opts {
            extra_config: vec![format!("otlp_endpoint = \"{endpoint}\"")],
            ..Opts::default()
        },
    );
    let (w, _) = c.dev_worker(&[1, 2, 3], WAIT);
    // A caller's trace context: the node's server span must continue it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    rt().block_on(async {
        use tonic_health::pb::health_client::HealthClient;
        let ch = c.key_target(1).channel().unwrap();
        let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
        );
        HealthClient::new(ch).check(req).await.unwrap();
    });
    c.worker_key(1, &w).unwrap();
    let stranger = Sr25519Keypair::generate(&mut OsRng);
    assert!(c.worker_key(1, &stranger).is_err());
    c.put_ok(1, "traced", "yes");
    // A miner application that uses OpenTelemetry: the SDK carries its trace to the node.
    let miner_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let sc = SpanContext::new(
            TraceId::from_hex(miner_trace).unwrap(),
            SpanId::from_hex("10f067aa0ba902b8").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let _attached = opentelemetry::Context::new()
            .with_remote_span_context(sc)
            .attach();
        c.worker_key(2, &w).unwrap();
    }
    // A write sent to a follower is forwarded to the leader within one trace.
    let leader = c.leader();
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    c.put_ok(follower, "forwarded", "yes");

    let hex = |b: &[u8]| hex::encode(b);
    c.wait_for(
        "the spans at the collector",
        Duration::from_secs(60),
        || {
            let spans = collector.0.lock().unwrap().clone();
            let named = |n: &str| {
                spans
                    .iter()
                    .filter(|s| s.name == n)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            // 1. The health check continues the caller's trace, as a server span.
            let health = named("grpc.health.v1.Health/Check");
            let continued = health
                .iter()
                .find(|s| hex(&s.trace_id) == trace_id)
                .ok_or(format!(
                    "no health span in trace {trace_id} among {} spans",
                    spans.len()
                ))?;
            assert_eq!(hex(&continued.parent_span_id), parent_id);
            assert_eq!(continued.kind, 2, "SPAN_KIND_SERVER");
            assert_eq!(otlp::attr(continued, "rpc.system").as_deref(), Some("grpc"));
            assert_eq!(
                otlp::attr(continued, "rpc.method").as_deref(),
                Some("grpc.health.v1.Health/Check")
            );
            // 2. Key requests: a delivery with its child span, a refusal that is not an error.
            let keys = named("gatekeeper.v1.KeyService/GetWorkerKey");
            let delivered = keys
                .iter()
                .find(|s| otlp::attr(s, "rpc.grpc.status_code").as_deref() == Some("0"))
                .ok_or("no delivered key span yet")?;
            let refused = keys
                .iter()
                .find(|s| otlp::attr(s, "rpc.grpc.status_code").as_deref() == Some("5"))
                .ok_or("no refused key span yet")?;
            assert_ne!(
                refused.status.as_ref().map(|s| s.code),
                Some(2),
                "a refusal (NOT_FOUND) is not an error of the server"
            );
            let issue = named("key.issue");
            assert!(
                issue
                    .iter()
                    .any(|s| s.parent_span_id == delivered.span_id
                        && s.trace_id == delivered.trace_id),
                "key.issue is a child of the delivery's server span"
            );
            // 3. The miner's trace continued by the node it asked.
            if !keys.iter().any(|s| hex(&s.trace_id) == miner_trace) {
                return Err("no key span in the miner's trace yet".into());
            }
            // 4. The forwarded write: the leader's ClientWrite span is the forward's child.
            let forwards = named("raft.forward_write");
            let client_writes = named("gatekeeper.raft.v1.RaftService/ClientWrite");
            if !forwards.iter().any(|f| {
                client_writes
                    .iter()
                    .any(|w| w.parent_span_id == f.span_id && w.trace_id == f.trace_id)
            }) {
                return Err(format!(
                    "no ClientWrite span under a forward yet ({} forwards, {} client writes)",
                    forwards.len(),
                    client_writes.len()
                ));
            }
            // 5. Writes: the admin call, and the node's own Raft apply.
            if named("gatekeeper.v1.AdminService/WriteCanary").is_empty() {
                return Err("no WriteCanary span yet".into());
            }
            if named("raft.apply").is_empty() {
                return Err("no raft.apply span yet".into());
            }
            Ok(())
        },
    );
}
