//! `gatekeeper miner`: a worker's view, through the client SDK.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use gatekeeper_client::{MinerClient, RetryPolicy};
use keyring::sign::KeyTarget;
use keyring::{ClusterId, ContractId};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// Miner subcommands.
#[derive(Subcommand, Debug)]
pub enum MinerCommand {
    /// Fetch a derived key, verify it end to end, and print its public key, the endpoint that
    /// answered and how long it took (one JSON line).
    FetchKey {
        /// host:port of a node's API listener; repeat to allow failover.
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// The worker's key file (`gatekeeper keygen`).
        #[arg(long)]
        worker_key_file: PathBuf,
        /// worker | cluster | contract.
        #[arg(long)]
        kind: String,
        /// Cluster or contract id (64 hex characters).
        #[arg(long)]
        id: Option<String>,
        /// Epoch (default: current).
        #[arg(long)]
        epoch: Option<u64>,
        /// Also print the secret seed (hex). Off by default: secrets do not go to terminals.
        #[arg(long)]
        show_secret: bool,
        /// The cluster's CA bundle (`gatekeeper certs miner-bundle`): nodes are verified against
        /// it over TLS.
        #[arg(long, env = "GATEKEEPER_MINER_CA")]
        ca: Option<PathBuf>,
        /// Connect without TLS (development nodes with `plaintext = true` only).
        #[arg(long, conflicts_with = "ca")]
        plaintext: bool,
        /// How long one call may take, in milliseconds (the connection itself: at most 2 s).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Rounds over the endpoints before giving up (backoff between rounds).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
}

fn id32(id: &Option<String>) -> Result<[u8; 32]> {
    let s = id
        .as_deref()
        .context("--id is required for cluster and contract keys")?;
    hex::decode(s.strip_prefix("0x").unwrap_or(s))
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("--id must be 64 hex characters (a 0x prefix is allowed)")
}

/// Runs a miner command.
pub async fn run(cmd: MinerCommand) -> Result<()> {
    match cmd {
        MinerCommand::FetchKey {
            endpoints,
            worker_key_file,
            kind,
            id,
            epoch,
            show_secret,
            ca,
            plaintext,
            timeout_ms,
            rounds,
        } => {
            let worker = crate::keyfile::read_key_file(&worker_key_file)?;
            let target = match kind.as_str() {
                "worker" => KeyTarget::Worker,
                "cluster" => KeyTarget::Cluster(ClusterId(id32(&id)?)),
                "contract" => KeyTarget::Contract(ContractId(id32(&id)?)),
                other => bail!("--kind must be worker, cluster or contract, got {other:?}"),
            };
            let mut c = MinerClient::new(endpoints, worker)
                .with_timeouts(
                    Duration::from_secs(2).min(Duration::from_millis(timeout_ms)),
                    Duration::from_millis(timeout_ms),
                )
                .with_retry(RetryPolicy {
                    rounds: rounds.max(1),
                    ..RetryPolicy::default()
                });
            match (ca, plaintext) {
                (Some(ca), _) => c = c.with_tls_ca_file(&ca)?,
                (None, true) => c = c.allow_plaintext(),
                (None, false) => bail!(
                    "nodes serve keys over TLS: pass --ca with the cluster's CA bundle \
                     (`gatekeeper certs miner-bundle`), or --plaintext for a development node \
                     with plaintext = true"
                ),
            }
            let k = c.fetch(target, epoch).await?;
            let mut out = json!({
                "kind": kind,
                "epoch": k.epoch,
                "public_key": hex::encode(k.keypair.public_key().as_bytes()),
                "served_by": k.served_by,
                "endpoint": k.endpoint,
                "elapsed_ms": k.elapsed.as_millis() as u64,
            });
            if show_secret {
                out["seed"] = json!(hex::encode(k.keypair.seed()));
            }
            outln!("{out}");
        }
    }
    Ok(())
}
