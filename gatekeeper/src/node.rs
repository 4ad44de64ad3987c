//! `gatekeeper node`: runs one replica with its RaftService and AdminService listeners.
//!
//! Shutdown on SIGTERM or SIGINT is graceful: the listeners stop accepting, in-flight RPCs finish,
//! Raft stops, and the state machine store is flushed. (The Raft log needs no flush: every
//! acknowledged write was already fsynced.)

use crate::admin_service::AdminServer;
use crate::config::{LogFormat, NodeConfig};
use anyhow::{Context, Result};
use gatekeeper_proto::raft::v1::raft_service_server::RaftServiceServer;
use gatekeeper_proto::v1::admin_service_server::AdminServiceServer;
use gatekeeper_raft::network::NetworkConfig;
use gatekeeper_raft::replica::{Replica, ReplicaConfig};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Sets up `tracing` to stderr in the configured format (`RUST_LOG` filters; default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}

async fn shutdown_signal() {
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

/// Runs the node until a shutdown signal.
pub async fn run(config: NodeConfig) -> Result<()> {
    let network = NetworkConfig::default();
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

    let raft_listener = bind(&config.raft_listen, "raft_listen").await?;
    let api_listener = bind(&config.api_listen, "api_listen").await?;
    tracing::info!(
        node_id = config.node_id,
        raft = %config.raft_address(),
        api = %config.api_address(),
        data_dir = %config.data_dir.display(),
        mode = ?config.mode,
        "node started"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let raft_svc = RaftServiceServer::new(replica.raft_server())
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let raft_server = tonic::transport::Server::builder()
        .add_service(raft_svc)
        .serve_with_incoming_shutdown(TcpListenerStream::new(raft_listener), wait(stop_rx.clone()));
    let admin = AdminServer::new(replica.clone(), config.clone());
    let api_server = tonic::transport::Server::builder()
        .add_service(
            AdminServiceServer::new(admin)
                .max_decoding_message_size(64 << 10)
                .max_encoding_message_size(max_msg),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(api_listener), wait(stop_rx));

    let raft_task = tokio::spawn(raft_server);
    let api_task = tokio::spawn(api_server);
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    // In-flight RPCs finish; bounded so a stuck peer cannot hold shutdown forever.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = api_task.await;
        let _ = raft_task.await;
    })
    .await;
    replica.shutdown().await;
    tracing::info!("node stopped cleanly");
    Ok(())
}
