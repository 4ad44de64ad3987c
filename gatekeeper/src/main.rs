//! `gatekeeper`: the node and operator CLI.
//!
//! * `node` — run a replica (docs/operations.md).
//! * `admin` — operate a cluster over AdminService.
//! * `miner` — a worker's key fetching through the client SDK.
//! * `devnet` — a local network: dev chain, nodes, a demo worker and miner (README.md).
//! * `keygen` — make an sr25519 key file.

#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use keyring::Sr25519Keypair;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

mod admin;
mod admin_service;
mod attestation;
mod chain;
mod config;
mod devnet;
mod enclave;
mod keeper;
mod key_service;
mod metrics;
mod miner;
mod node;
mod peer_service;
mod replay;

#[derive(Parser, Debug)]
#[command(
    name = "gatekeeper",
    version,
    about = "Gatekeeper: a replicated key manager for confidential-compute networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a gatekeeper node. Every config key can also be set as GATEKEEPER_<KEY>.
    Node {
        /// TOML configuration file (optional when everything comes from the environment).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Operate a cluster through a node's AdminService.
    Admin {
        /// host:port of a node's API listener.
        #[arg(long, env = "GATEKEEPER_ENDPOINT")]
        endpoint: String,
        /// Per-call deadline in seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// A worker's commands (key fetching through the client SDK).
    Miner {
        #[command(subcommand)]
        command: miner::MinerCommand,
    },
    /// Run a local devnet: the dev chain, gatekeeper nodes as separate processes, a demo
    /// worker registered on chain and a demo miner fetching its keys. Runs until Ctrl-C.
    Devnet(devnet::DevnetArgs),
    /// Generate an sr25519 key (e.g. a worker's identity) into a new file with mode 0600 and print
    /// its public key. The file holds JSON {"seed": hex, "public_key": hex}.
    Keygen {
        /// Where to write the key. Refuses to overwrite unless --force.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

fn keygen(out: &PathBuf, force: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = Sr25519Keypair::generate(&mut rand_core::OsRng);
    let body = serde_json::json!({
        "seed": hex::encode(key.seed()),
        "public_key": hex::encode(key.public_key().as_bytes()),
    });
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = match opts.open(out) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!(
                "{} already exists; pass --force to overwrite it",
                out.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", out.display())),
    };
    f.write_all(format!("{body}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("{}", hex::encode(key.public_key().as_bytes()));
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out, force } => keygen(&out, force),
        Command::Node { config } => {
            config::NodeConfig::load(config.as_deref(), |k| std::env::var(k).ok()).and_then(|c| {
                node::init_logging(c.log_format);
                runtime()?.block_on(node::run(c))
            })
        }
        Command::Miner { command } => runtime().and_then(|rt| rt.block_on(miner::run(command))),
        Command::Devnet(args) => runtime().and_then(|rt| rt.block_on(devnet::run(args))),
        Command::Admin {
            endpoint,
            timeout_secs,
            command,
        } => runtime().and_then(|rt| {
            rt.block_on(admin::run(
                &endpoint,
                Duration::from_secs(timeout_secs),
                command,
            ))
        }),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
