//! `gatekeeper node`: runs one replica: its three listeners — cluster (RaftService and
//! PeerService, mutual TLS with member certificates), key (KeyService, server TLS) and admin
//! (AdminService, mutual TLS with operator certificates) — the keeper, the chain watcher and
//! `/metrics`. SIGHUP re-reads every certificate (docs/design.md §10.6).
//!
//! Shutdown on SIGTERM or SIGINT is graceful: the listeners stop accepting, in-flight RPCs finish,
//! Raft stops, and the state machine store is flushed. (The Raft log needs no flush: every
//! acknowledged write was already fsynced.)
//!
//! Every listener is built by [`listen`]: one helper sets the connection cap, timeouts and HTTP/2
//! limits of the Raft and API listeners (and caps the metrics listener). At start the node sets
//! its umask to `077`, raises its soft descriptor limit to the hard one, and brings its data and
//! enclave directories to `0700`/`0600` ([`gatekeeper_raft::private_fs`]), logging every change.

pub mod listen;

use crate::attestation::Policy;
use crate::config::{LogFormat, Mode, NodeConfig};
use crate::enclave::software::{EvidenceSource, SoftwareEnclave};
use crate::enclave::Enclave;
use crate::keeper::{Keeper, PlanConfig, SealView};
use crate::replay::NonceCache;
use crate::service::admin::AdminServer;
use crate::service::key::KeyServer;
use crate::service::peer::PeerServer;
use anyhow::{Context, Result};
use gatekeeper_proto::raft::v1::raft_service_server::RaftServiceServer;
use gatekeeper_proto::v1::admin_service_server::AdminServiceServer;
use gatekeeper_proto::v1::key_service_server::KeyServiceServer;
use gatekeeper_proto::v1::peer_service_server::PeerServiceServer;
use gatekeeper_raft::network::NetworkConfig;
use gatekeeper_raft::private_fs;
use gatekeeper_raft::replica::{Replica, ReplicaConfig};
use listen::{ConnTable, ListenLimits};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Connections at most on the metrics listener (a scraper or two).
pub const METRICS_MAX_CONNECTIONS: usize = 32;
/// Descriptors kept for everything but listener connections: storage (sled, raft-log chunks,
/// snapshots), outgoing peer connections, the chain watcher.
pub const RESERVED_FDS: u64 = 1024;

/// Files and directories this process creates are private to its user: sled and raft-log create
/// their own files, so the umask is what makes them `0600`.
fn private_umask() {
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if old.bits() & 0o077 != 0o077 {
        tracing::info!(
            previous = format!("{:03o}", old.bits()),
            "umask set to 077: data files are created 0600, directories 0700"
        );
    }
}

/// Raises the soft descriptor limit to the hard one and warns when the listeners' connection
/// caps do not fit under it with [`RESERVED_FDS`] to spare.
fn check_fd_budget(config: &NodeConfig) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum || (lim.current.is_some() && lim.maximum.is_none()) {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::info!(
                from = ?lim.current,
                to = ?lim.maximum,
                "raised the open-file limit to its hard limit"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    let soft = getrlimit(Resource::Nofile).current;
    let needed = (config.raft_max_connections
        + config.api_max_connections
        + config.admin_max_connections) as u64
        + METRICS_MAX_CONNECTIONS as u64
        + RESERVED_FDS;
    if let Some(soft) = soft.filter(|&s| s < needed) {
        tracing::warn!(
            open_file_limit = soft,
            needed,
            "raft_max_connections + api_max_connections (+{} for metrics and {RESERVED_FDS} for \
             storage and peers) exceed the open-file limit: a connection flood could starve \
             storage of descriptors; lower the caps or raise the limit",
            METRICS_MAX_CONNECTIONS
        );
    }
}

/// Brings `dir` to `0700` directories and `0600` files, logging each change.
fn tighten(dir: &Path) -> Result<()> {
    let changes = private_fs::tighten(dir)
        .with_context(|| format!("cannot restrict the permissions of {}", dir.display()))?;
    for c in changes {
        tracing::warn!(
            path = %c.path.display(),
            from = format!("{:04o}", c.from),
            to = format!("{:04o}", c.to),
            "tightened the permissions of a data file (group or others had access)"
        );
    }
    Ok(())
}

/// The log filter without `RUST_LOG`: `info`, but only warnings from openraft and raft-log
/// (raft-log logs every cache update at `info`: megabytes an hour under load).
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,raft_log=warn";

/// The log deduplication of this process ([`crate::logs::LogDedup`]), once [`init_logging`]
/// set it up; [`run`] starts its reporting task.
static LOG_DEDUP: std::sync::OnceLock<crate::logs::LogDedup> = std::sync::OnceLock::new();

/// Sets up `tracing` to stderr in the configured format (`RUST_LOG` filters; default
/// [`DEFAULT_LOG_FILTER`]); repeated openraft and raft-log lines are held back and counted
/// ([`crate::logs`]).
pub fn init_logging(format: LogFormat, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let dedup = LOG_DEDUP.get_or_init(Default::default).clone();
    let dedup = dedup.filter();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // The level filter applies to everything (a global filter); the deduplication only to the
    // log output (a per-layer filter), so other layers (traces) see every event.
    let traces = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer.with_filter(dedup))
        .with(traces)
        .try_init();
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}

async fn bind(addr: &str, what: &str) -> Result<TcpListener> {
    let sa: SocketAddr = addr
        .parse()
        .with_context(|| format!("{what} {addr:?} is not a host:port socket address"))?;
    TcpListener::bind(sa)
        .await
        .with_context(|| format!("cannot listen on {what} {addr}"))
}

fn hex32(v: &[String]) -> Vec<[u8; 32]> {
    v.iter()
        .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
        .collect()
}

/// The attestation policy of `kind` under this config.
pub fn policy(
    config: &NodeConfig,
    kind: crate::attestation::PolicyKind,
    dev: Option<&keyring::Sr25519Keypair>,
    collateral: Option<&dcap_qvl::QuoteCollateralV3>,
) -> Policy {
    Policy {
        default_collateral: collateral.cloned(),
        kind,
        allowed_mrenclave: hex32(&config.allowed_mrenclave),
        allowed_mrsigner: hex32(&config.allowed_mrsigner),
        allowed_mrtd: vec![],
        min_tcb_status: config.min_tcb_status.clone(),
        max_evidence_age_secs: config.max_evidence_age_secs,
        dev_key: dev.map(|k| k.public_key()),
    }
}

/// The node's TLS material: its client side towards peers and one reloadable config per listener.
struct Tls {
    node: crate::tls::NodeTls,
    cluster: crate::tls::Reloadable,
    key: crate::tls::Reloadable,
    admin: crate::tls::Reloadable,
}

fn load_tls(config: &NodeConfig) -> Result<Option<Tls>> {
    use crate::tls::{NodeTls, Reloadable, ServerTls};
    if config.plaintext {
        tracing::warn!(
            "plaintext = true: every listener serves WITHOUT TLS or client authentication \
             (development only)"
        );
        return Ok(None);
    }
    let (Some(ca), Some(cert), Some(key)) = (
        &config.tls_ca_file,
        &config.tls_cert_file,
        &config.tls_key_file,
    ) else {
        anyhow::bail!("TLS needs tls_ca_file, tls_cert_file and tls_key_file");
    };
    let operator_ca = config.operator_ca().unwrap_or(ca);
    let admin = if config.operator_names.is_empty() {
        ServerTls::mutual(cert, key, operator_ca)
    } else {
        ServerTls::mutual_with_names(cert, key, operator_ca, config.operator_names.clone())
    };
    let node = NodeTls::load(ca, cert, key).context("cannot load the node's TLS material")?;
    let tls = Tls {
        cluster: Reloadable::load("cluster", ServerTls::mutual(cert, key, ca))
            .context("cluster listener TLS")?,
        key: Reloadable::load("key", ServerTls::server_only(cert, key))
            .context("key listener TLS")?,
        admin: Reloadable::load("admin", admin).context("admin listener TLS")?,
        node,
    };
    tracing::info!(
        spki_sha256 = %hex::encode(tls.node.spki()),
        subject = %tls.cluster.leaf().subject,
        "TLS on every listener"
    );
    Ok(Some(tls))
}

/// On every SIGHUP, re-reads the listeners' and the peer client's certificates (each keeps its
/// old material if its files do not load).
fn spawn_tls_reloader(tls: &Tls) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let listeners = vec![tls.cluster.clone(), tls.key.clone(), tls.admin.clone()];
    let node = tls.node.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading TLS certificates");
            crate::tls::reload_all(&listeners);
            match node.reload() {
                Ok(()) => tracing::info!(
                    spki_sha256 = %hex::encode(node.spki()),
                    "peer client certificate reloaded"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "peer client certificate reload failed; still using the previous one"
                ),
            }
        }
    });
    Ok(())
}

/// Re-opens the audit log on SIGHUP (log rotation).
fn spawn_audit_reopener(audit: Arc<crate::audit::Auditor>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match audit.log.reopen() {
                Ok(()) => {
                    tracing::info!(file = %audit.log.path().display(), "SIGHUP: audit log re-opened")
                }
                Err(e) => {
                    tracing::error!(file = %audit.log.path().display(), error = %e, "SIGHUP: cannot re-open the audit log; still writing the previous file")
                }
            }
        }
    });
    Ok(())
}

/// Runs the node until a shutdown signal.
pub async fn run(config: NodeConfig) -> Result<()> {
    private_umask();
    check_fd_budget(&config);
    let dev_key = match &config.dev_attestation_key_file {
        Some(p) => Some(crate::keyfile::read_key_file(p)?),
        None => None,
    };
    if config.mode == Mode::Production && config.enclave == "software" {
        tracing::warn!("RUNNING THE SOFTWARE ENCLAVE IN PRODUCTION MODE: secrets are in plain process memory and the sealing key is a file");
    }
    let collateral: Option<dcap_qvl::QuoteCollateralV3> = match &config.dcap_collateral_file {
        None => None,
        Some(p) => Some(
            serde_json::from_slice(
                &std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("{} is not dcap-qvl collateral JSON", p.display()))?,
        ),
    };
    let source = if config.enclave == "gramine-sgx" {
        if !config.gramine_attestation_dir.join("quote").exists() {
            anyhow::bail!(
                "enclave = \"gramine-sgx\" but {} is not there: not running inside Gramine-SGX",
                config.gramine_attestation_dir.join("quote").display()
            );
        }
        EvidenceSource::Gramine(config.gramine_attestation_dir.clone())
    } else {
        EvidenceSource::Dev(dev_key.clone().map(Box::new))
    };
    let enclave: Arc<dyn Enclave> = Arc::new(
        SoftwareEnclave::open_with(&config.enclave_dir(), config.node_id, source).with_context(
            || {
                format!(
                    "cannot open the enclave in {}",
                    config.enclave_dir().display()
                )
            },
        )?,
    );
    // After the enclave opened (it refuses a sealing key that group or others could read, which
    // may have leaked, rather than have it quietly fixed here).
    tighten(&config.data_dir)?;
    if !config.enclave_dir().starts_with(&config.data_dir) {
        tighten(&config.enclave_dir())?;
    }
    let tls = load_tls(&config)?;
    let network = NetworkConfig {
        tls: tls.as_ref().map(|t| t.node.peer_tls()),
        max_snapshot_bytes: config.max_snapshot_bytes,
        check_proposals: !config.unchecked_proposals,
        ..NetworkConfig::default()
    };
    let max_msg = network.max_message_bytes;
    let replica = Replica::open(ReplicaConfig {
        node_id: config.node_id,
        data_dir: config.data_dir.clone(),
        raft: config.raft_config(),
        network,
        max_stale: Duration::from_millis(config.max_stale_ms),
        request_timeout: config.request_timeout(),
    })
    .await
    .with_context(|| format!("node {} cannot start", config.node_id))?;
    // A changed advertised address does not change the membership peers and clients use.
    {
        let me = replica
            .status()
            .members
            .into_iter()
            .find(|m| m.id == config.node_id);
        for drift in crate::config::advertised_drift(
            &config.raft_address(),
            &config.api_address(),
            me.as_ref()
                .map(|m| (m.raft_address.as_str(), m.api_address.as_str())),
        ) {
            tracing::warn!(
                node_id = config.node_id,
                "{drift}: run `admin leave` and `admin join` with the new address to change it"
            );
        }
    }
    replica.set_signer(Arc::new(crate::enclave::CommandSigner::new(
        config.node_id,
        enclave.clone(),
    )));

    let raft_listener = bind(&config.raft_listen, "raft_listen").await?;
    let api_listener = bind(&config.api_listen, "api_listen").await?;
    let admin_address = config.admin_listen()?;
    let admin_listener = bind(&admin_address, "admin_listen").await?;
    if let Some(t) = &tls {
        spawn_tls_reloader(t)?;
    }
    let metrics_listener = match &config.metrics_listen {
        Some(a) => Some(bind(a, "metrics_listen").await?),
        None => None,
    };
    tracing::info!(
        node_id = config.node_id,
        raft = %config.raft_address(),
        api = %config.api_address(),
        admin = %admin_address,
        tls = tls.is_some(),
        data_dir = %config.data_dir.display(),
        mode = ?config.mode,
        "node started"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_keeper = stop_rx.clone();
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut raft_server = replica.raft_server();
    if tls.is_some() {
        raft_server =
            raft_server.with_admission(crate::service::cluster::raft_admission(replica.clone()));
    }
    let raft_svc = RaftServiceServer::new(raft_server)
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let seal = Arc::new(Mutex::new(SealView {
        state: "sealed".into(),
        ..Default::default()
    }));
    let nonces = Arc::new(NonceCache::new(config.request_window_ms));
    let keeper = Keeper {
        replica: replica.clone(),
        enclave: enclave.clone(),
        seal: seal.clone(),
        raft_address: config.raft_address(),
        api_address: config.api_address(),
        admin_address: config.admin_address()?,
        request_timeout: config.request_timeout(),
        tls: tls.as_ref().map(|t| t.node.clone()),
        config: PlanConfig {
            member_policy: policy(
                &config,
                config.member_attestation,
                dev_key.as_ref(),
                collateral.as_ref(),
            ),
            rotation_deadline_ms: config.rotation_deadline_ms,
        },
    };
    let mut admin = AdminServer::new(
        replica.clone(),
        config.clone(),
        seal.clone(),
        enclave.clone(),
        keeper.config.member_policy.clone(),
    );
    let chain_view = Arc::new(Mutex::new(crate::chain::ChainView::default()));
    let chain = config.chain_settings().map(|s| (s, chain_view.clone()));
    if let Some((settings, view)) = &chain {
        admin = admin.with_chain(settings.clone(), view.clone());
    }
    let watcher = chain
        .clone()
        .map(|(settings, view)| crate::chain::watcher::Watcher {
            replica: replica.clone(),
            settings,
            view,
        });
    let peer = PeerServer {
        replica: replica.clone(),
        enclave: enclave.clone(),
        policy: policy(
            &config,
            config.member_attestation,
            dev_key.as_ref(),
            collateral.as_ref(),
        ),
        nonces: nonces.clone(),
        require_member_certificate: tls.is_some(),
    };
    // The audit log: opened before any listener serves, so no call goes unrecorded.
    let audit = match config.audit_file() {
        None => None,
        Some(path) => {
            let opened = crate::audit::load_or_create_key(
                enclave.as_ref(),
                &config.data_dir.join("audit.key"),
            )
            .and_then(|key| {
                crate::audit::AuditLog::open(&path, key, config.node_id)
                    .map(|log| log.with_epoch_keys(enclave.clone()))
                    .with_context(|| format!("cannot open the audit log {}", path.display()))
            });
            match opened {
                Ok(log) => Some(Arc::new(crate::audit::Auditor {
                    log,
                    required: config.audit_is_required(),
                })),
                Err(e) if config.audit_is_required() => {
                    return Err(e.context("audit_required is on"));
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "audit log off: cannot open it");
                    None
                }
            }
        }
    };
    if let Some(a) = &audit {
        spawn_audit_reopener(a.clone())?;
    }
    let instruments = crate::metrics::Instruments::default();
    let keys = KeyServer {
        replica: replica.clone(),
        enclave: enclave.clone(),
        policy: policy(
            &config,
            config.worker_attestation,
            dev_key.as_ref(),
            collateral.as_ref(),
        ),
        nonces: nonces.clone(),
        stale_reads: config.key_read_mode == "stale",
        audit: audit.clone(),
        instruments: instruments.clone(),
    };
    // Cluster listener: RaftService and PeerService, for members only.
    let raft_limits = ListenLimits::from_config(
        &config,
        config.raft_max_connections,
        config.raft_max_connections_per_source,
    );
    let raft_server = raft_limits
        .server()
        .layer(crate::metrics::RpcMetricsLayer(instruments.clone()))
        .layer(crate::service::layer::ErrorCodeLayer)
        .add_service(raft_svc)
        .add_service(
            PeerServiceServer::new(peer)
                .max_decoding_message_size(crate::service::MAX_PEER_ADMIN_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            raft_limits.incoming_tls(
                raft_listener,
                "cluster",
                tls.as_ref().map(|t| t.cluster.clone()),
                false,
            ),
            wait(stop_rx.clone()),
        );
    // Readiness on the key listener (grpc.health.v1), kept current by a task; reflection on the
    // key and admin listeners, so grpcurl needs no .proto files.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(gatekeeper_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the gRPC reflection service")
    };
    let (api_reflection, admin_reflection) = (reflection()?, reflection()?);
    // Key listener: KeyService for workers (server TLS).
    let api_limits = ListenLimits::from_config(
        &config,
        config.api_max_connections,
        config.api_max_connections_per_source,
    );
    // Memory an unauthenticated caller can make the node hold is bounded by the in-flight cap
    // (each request body at most twice MAX_KEY_REQUEST_BYTES) and the flow-control windows.
    let api_server = api_limits
        .server()
        .initial_connection_window_size(listen::KEY_CONNECTION_WINDOW)
        .initial_stream_window_size(listen::KEY_STREAM_WINDOW)
        .layer(crate::metrics::RpcMetricsLayer(instruments.clone()))
        .layer(crate::service::layer::ErrorCodeLayer)
        .layer(crate::service::source_limit::SourceLimitLayer::new(
            config.api_max_requests_per_source,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.api_max_requests,
        ))
        .add_service(
            KeyServiceServer::new(keys)
                .max_decoding_message_size(crate::service::MAX_KEY_REQUEST_BYTES * 2),
        )
        .add_service(health_service)
        .add_service(api_reflection)
        .serve_with_incoming_shutdown(
            api_limits.incoming_tls(
                api_listener,
                "key",
                tls.as_ref().map(|t| t.key.clone()),
                true,
            ),
            wait(stop_rx.clone()),
        );
    // Admin listener: AdminService for operators (mutual TLS with the operator CA).
    let admin_limits = ListenLimits::from_config(
        &config,
        config.admin_max_connections,
        config.admin_max_connections,
    );
    let admin_server = admin_limits
        .server()
        .layer(crate::metrics::RpcMetricsLayer(instruments.clone()))
        .layer(tower::util::option_layer(
            audit.clone().map(crate::audit::AuditLayer),
        ))
        .layer(crate::service::layer::ErrorCodeLayer)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            AdminServiceServer::new(admin)
                .max_decoding_message_size(crate::service::MAX_PEER_ADMIN_MESSAGE_BYTES)
                .max_encoding_message_size(max_msg),
            crate::service::admin::operator_interceptor(tls.is_some()),
        ))
        .add_service(admin_reflection)
        .serve_with_incoming_shutdown(
            admin_limits.incoming_tls(
                admin_listener,
                "admin",
                tls.as_ref().map(|t| t.admin.clone()),
                false,
            ),
            wait(stop_rx),
        );

    let raft_task = tokio::spawn(raft_server);
    let api_task = tokio::spawn(api_server);
    let admin_task = tokio::spawn(admin_server);
    let keeper_task = tokio::spawn(keeper.run(stop_rx_keeper.clone()));
    if let Some(d) = LOG_DEDUP.get() {
        tokio::spawn(d.clone().report());
    }
    tokio::spawn(crate::logs::log_state_events(
        replica.clone(),
        stop_rx_keeper.clone(),
    ));
    let health_task = tokio::spawn(crate::health::report(
        health_reporter,
        replica.clone(),
        enclave.clone(),
        Duration::from_millis(500),
        stop_rx_keeper.clone(),
    ));
    let metrics_task = metrics_listener.map(|l| {
        let collector = crate::metrics::NodeCollector {
            replica: replica.clone(),
            enclave: enclave.clone(),
            chain,
            mode: match config.mode {
                Mode::Production => "production",
                Mode::Development => "development",
            },
            enclave_kind: config.enclave.clone(),
        };
        let m = crate::metrics::Endpoint {
            registry: crate::metrics::registry(&instruments, collector),
            replica: replica.clone(),
            enclave: enclave.clone(),
        };
        let table = ConnTable::for_listener(
            "metrics",
            &ListenLimits::from_config(&config, METRICS_MAX_CONNECTIONS, METRICS_MAX_CONNECTIONS),
        );
        let admit = move |s: tokio::net::TcpStream| {
            let ip = s
                .peer_addr()
                .map(|a| a.ip())
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            table.admit(s, ip)
        };
        tokio::spawn(crate::metrics::serve(l, m, admit, stop_rx_keeper.clone()))
    });
    let watcher_task = watcher.map(|w| {
        tracing::info!(url = %w.settings.url, profile = w.settings.profile.as_str(), "chain watcher starting");
        tokio::spawn(w.run(stop_rx_keeper.clone()))
    });
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    // In-flight RPCs finish; bounded so a stuck peer cannot hold shutdown forever.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = keeper_task.await;
        let _ = health_task.await;
        if let Some(w) = watcher_task {
            let _ = w.await;
        }
        if let Some(m) = metrics_task {
            let _ = m.await;
        }
        let _ = api_task.await;
        let _ = admin_task.await;
        let _ = raft_task.await;
    })
    .await;
    replica.shutdown().await;
    tracing::info!("node stopped cleanly");
    Ok(())
}
