//! `gatekeeper health`: is this node ready (or alive)? Exit code 0 or 1, one JSON line; for
//! scripts and the container image's HEALTHCHECK.
//!
//! Two ways to ask, because Kubernetes' gRPC probes cannot speak TLS:
//! - `--endpoint HOST:PORT` asks `grpc.health.v1.Health/Check` on the key listener (TLS with
//!   `--ca`, or `--plaintext` on a development node);
//! - `--http HOST:PORT` asks `/readyz` on the metrics listener, or `/livez` with `--live`.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `gatekeeper health` options.
#[derive(Args, Debug)]
pub struct HealthArgs {
    /// host:port of the node's key listener (`api_listen`): asks grpc.health.v1.
    #[arg(long, required_unless_present = "http", conflicts_with = "http")]
    pub endpoint: Option<String>,
    /// The cluster's CA bundle (the miners' bundle will do) for --endpoint.
    #[arg(long, env = "GATEKEEPER_MINER_CA")]
    pub ca: Option<PathBuf>,
    /// Speak plaintext to --endpoint (development nodes with `plaintext = true` only).
    #[arg(long, conflicts_with = "ca")]
    pub plaintext: bool,
    /// host:port of the node's metrics listener (`metrics_listen`): asks GET /readyz.
    #[arg(long)]
    pub http: Option<String>,
    /// With --http: ask /livez (the process answers) instead of /readyz.
    #[arg(long, requires = "http")]
    pub live: bool,
    /// Give up after this many seconds (unhealthy).
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

/// Runs the check: prints one JSON line; `Err` (exit 1) when not healthy or not reachable.
pub async fn run(args: HealthArgs) -> Result<()> {
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let (target, healthy, detail) = match (&args.http, &args.endpoint) {
        (Some(addr), _) => {
            let path = if args.live { "/livez" } else { "/readyz" };
            let (status, body) = tokio::time::timeout(timeout, http_get(addr, path))
                .await
                .with_context(|| format!("{addr}{path}: no answer within {timeout:?}"))??;
            (
                format!("http://{addr}{path}"),
                status == 200,
                body.trim().to_string(),
            )
        }
        (None, Some(ep)) => {
            let status = tokio::time::timeout(timeout, grpc_check(ep, &args))
                .await
                .with_context(|| format!("{ep}: no answer within {timeout:?}"))??;
            (ep.clone(), status == "SERVING", status)
        }
        (None, None) => bail!("pass --endpoint (gRPC health) or --http (/readyz)"),
    };
    outln!(
        "{}",
        json!({"target": target, "healthy": healthy, "detail": detail})
    );
    if !healthy {
        bail!("{target}: {detail}");
    }
    Ok(())
}

/// The HTTP status and body of `GET path` from `addr` (HTTP/1.1, one request).
async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .with_context(|| format!("cannot send to {addr}"))?;
    let mut buf = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut buf)
        .await
        .with_context(|| format!("cannot read from {addr}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} did not answer HTTP"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{addr}: no HTTP status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The serving status `grpc.health.v1.Health/Check` reports for KeyService.
async fn grpc_check(ep: &str, args: &HealthArgs) -> Result<String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let endpoint = match (&args.ca, args.plaintext) {
        (Some(ca), _) => {
            let tls = crate::tls::ClientTls::load(ca, None, std::time::SystemTime::now())?;
            let host = ep.rsplit_once(':').map_or(ep, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            tls.endpoint(ep, host)?
        }
        (None, true) => tonic::transport::Endpoint::from_shared(format!("http://{ep}"))?,
        (None, false) => bail!(
            "the key listener speaks TLS: pass --ca with the cluster's CA bundle, or --plaintext \
             for a development node"
        ),
    };
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("{ep}: {}", gatekeeper_client::error_chain(&e)))?;
    let r = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: crate::health::HEALTH_SERVICES[1].into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{ep}: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    Ok(ServingStatus::try_from(r.status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| format!("status {}", r.status)))
}
