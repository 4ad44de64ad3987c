//! `gatekeeper-devchain`: run the dev chain, or drive a running one.
//!
//! ```text
//! gatekeeper-devchain run [--listen 127.0.0.1:9944] [--block-time-ms 1000] [--data-dir DIR]
//! gatekeeper-devchain emit [--url ws://127.0.0.1:9944] [--profile gatekeeper|phala] register-worker --worker HEX
//! gatekeeper-devchain events [--url …] [--from N] [--to N]
//! gatekeeper-devchain status | pause | resume [--url …]
//! ```
//!
//! `run` prints one line `gatekeeper-devchain listening on ws://HOST:PORT` to stdout once the
//! server is up (useful with `--listen 127.0.0.1:0`), logs to stderr, and stops on SIGINT or
//! SIGTERM.

#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use devchain::actions::{Action, Profile};
use devchain::runtime::{AttestationProvider, Public, Shapes, H256};
use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::ArrayParams;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "gatekeeper-devchain",
    version,
    about = "A local Substrate-compatible development chain for Gatekeeper"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the chain until SIGINT/SIGTERM.
    Run {
        /// Listen address (WebSocket and HTTP JSON-RPC). Port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:9944")]
        listen: SocketAddr,
        /// Milliseconds between blocks; every block is final when produced.
        #[arg(long, default_value_t = 1000)]
        block_time_ms: u64,
        /// Persist blocks here; an existing chain there is continued.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Gatekeeper event shapes: `broken` changes three events' field types (robustness tests).
        #[arg(long, value_enum, default_value = "standard")]
        shapes: Shapes,
    },
    /// Emit an action's events and wait until their block is final; prints `{block, hash, events}`.
    Emit {
        #[command(flatten)]
        conn: Conn,
        /// Which pallets the events come from.
        #[arg(long, value_enum, default_value = "gatekeeper")]
        profile: Profile,
        #[command(subcommand)]
        action: EmitCmd,
    },
    /// Print every emitted event (JSON) of blocks FROM..=TO.
    Events {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
    },
    /// Print the chain's status (JSON).
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop producing blocks (a stalled chain).
    Pause {
        #[command(flatten)]
        conn: Conn,
    },
    /// Produce blocks again.
    Resume {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(clap::Args, Debug)]
struct Conn {
    /// The chain's RPC URL.
    #[arg(
        long,
        env = "GATEKEEPER_DEVCHAIN_URL",
        default_value = "ws://127.0.0.1:9944"
    )]
    url: String,
}

#[derive(Subcommand, Debug)]
enum EmitCmd {
    /// Register (or re-register) a worker.
    RegisterWorker {
        /// Worker sr25519 public key (hex).
        #[arg(long)]
        worker: Public,
        /// root | ias | dcap | none.
        #[arg(long, default_value = "root", value_parser = provider)]
        provider: Provider,
        #[arg(long, default_value_t = 1)]
        confidence_level: u8,
    },
    /// Deregister a worker (gatekeeper profile).
    DeregisterWorker {
        #[arg(long)]
        worker: Public,
    },
    /// Slash a worker (phala profile: WorkerEnterUnresponsive).
    SlashWorker {
        #[arg(long)]
        worker: Public,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The worker answers heartbeats again (phala profile).
    RecoverWorker {
        #[arg(long)]
        worker: Public,
    },
    /// The worker's stake is reclaimed with SLASHED lost (phala profile).
    ReclaimWorker {
        #[arg(long)]
        worker: Public,
        #[arg(long, default_value_t = 0)]
        slashed: u64,
    },
    /// Request a master-key rotation (gatekeeper profile).
    RequestRotation {
        /// Default: one above every id requested so far.
        #[arg(long)]
        rotation_id: Option<u64>,
    },
    /// Create a cluster.
    CreateCluster {
        /// Cluster id (32 bytes hex).
        #[arg(long)]
        cluster: H256,
        /// Initial workers (repeat).
        #[arg(long = "worker")]
        workers: Vec<Public>,
    },
    /// Add a worker to a cluster.
    AddWorkerToCluster {
        #[arg(long)]
        worker: Public,
        #[arg(long)]
        cluster: H256,
    },
    /// Remove a worker from a cluster.
    RemoveWorkerFromCluster {
        #[arg(long)]
        worker: Public,
        #[arg(long)]
        cluster: H256,
    },
    /// Instantiate a contract on a cluster.
    InstantiateContract {
        #[arg(long)]
        contract: H256,
        #[arg(long)]
        cluster: H256,
    },
    /// Emit one raw runtime event given as JSON: {"Pallet": {"Variant": {fields}}}.
    Raw {
        /// The event.
        json: String,
    },
}

/// `--provider`: an attestation provider, or none.
#[derive(Clone, Copy, Debug)]
struct Provider(Option<AttestationProvider>);

fn provider(s: &str) -> std::result::Result<Provider, String> {
    match s {
        "none" => Ok(Provider(None)),
        p => serde_json::from_value(Value::String(p.into()))
            .map(|a| Provider(Some(a)))
            .map_err(|_| format!("{p:?}: root | ias | dcap | none")),
    }
}

/// The action of an `emit` subcommand, or the raw event of `emit raw`.
fn action(cmd: EmitCmd) -> Result<std::result::Result<Action, Value>> {
    Ok(Ok(match cmd {
        EmitCmd::RegisterWorker {
            worker,
            provider,
            confidence_level,
        } => Action::RegisterWorker {
            worker,
            provider: provider.0,
            confidence_level,
        },
        EmitCmd::DeregisterWorker { worker } => Action::DeregisterWorker { worker },
        EmitCmd::SlashWorker { worker, reason } => Action::SlashWorker { worker, reason },
        EmitCmd::RecoverWorker { worker } => Action::RecoverWorker { worker },
        EmitCmd::ReclaimWorker { worker, slashed } => Action::ReclaimWorker { worker, slashed },
        EmitCmd::RequestRotation { rotation_id } => Action::RequestRotation { rotation_id },
        EmitCmd::CreateCluster { cluster, workers } => Action::CreateCluster { cluster, workers },
        EmitCmd::AddWorkerToCluster { worker, cluster } => {
            Action::AddWorkerToCluster { worker, cluster }
        }
        EmitCmd::RemoveWorkerFromCluster { worker, cluster } => {
            Action::RemoveWorkerFromCluster { worker, cluster }
        }
        EmitCmd::InstantiateContract { contract, cluster } => {
            Action::InstantiateContract { contract, cluster }
        }
        EmitCmd::Raw { json } => {
            return Ok(Err(
                serde_json::from_str(&json).context("the raw event is not JSON")?
            ))
        }
    }))
}

async fn call(url: &str, method: &str, params: Vec<Value>) -> Result<Value> {
    let client = jsonrpsee::ws_client::WsClientBuilder::default()
        .request_timeout(Duration::from_secs(60))
        .build(url)
        .await
        .with_context(|| format!("cannot connect to the dev chain at {url}"))?;
    let mut p = ArrayParams::new();
    for v in params {
        p.insert(v).context("encoding parameters")?;
    }
    client
        .request::<Value, _>(method, p)
        .await
        .with_context(|| format!("{method} failed"))
}

fn print(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run {
            listen,
            block_time_ms,
            data_dir,
            shapes,
        } => {
            if block_time_ms == 0 {
                anyhow::bail!("--block-time-ms must be at least 1");
            }
            let chain = devchain::DevChain::start(devchain::Config {
                listen,
                block_time: Duration::from_millis(block_time_ms),
                data_dir: data_dir.clone(),
                shapes,
            })
            .await?;
            tracing::info!(
                url = %chain.url(),
                genesis = %hex::encode(chain.genesis_hash()),
                head = chain.head(),
                data_dir = ?data_dir,
                block_time_ms,
                "dev chain running"
            );
            println!("gatekeeper-devchain listening on {}", chain.url());
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            chain.stop().await;
            tracing::info!("dev chain stopped");
            Ok(())
        }
        Cmd::Emit {
            conn,
            profile,
            action: a,
        } => {
            let out = match action(a)? {
                Ok(act) => {
                    let mut body = serde_json::to_value(&act)?;
                    body["profile"] = serde_json::to_value(profile)?;
                    call(&conn.url, "dev_submit", vec![body]).await?
                }
                Err(raw) => call(&conn.url, "dev_emit", vec![raw]).await?,
            };
            print(&out);
            Ok(())
        }
        Cmd::Events { conn, from, to } => {
            let mut p = vec![Value::from(from)];
            if let Some(t) = to {
                p.push(Value::from(t));
            }
            print(&call(&conn.url, "dev_events", p).await?);
            Ok(())
        }
        Cmd::Status { conn } => {
            print(&call(&conn.url, "dev_status", vec![]).await?);
            Ok(())
        }
        Cmd::Pause { conn } => {
            call(&conn.url, "dev_pause", vec![]).await?;
            Ok(())
        }
        Cmd::Resume { conn } => {
            call(&conn.url, "dev_resume", vec![]).await?;
            Ok(())
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,jsonrpsee=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
