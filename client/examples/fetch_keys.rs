//! Fetches keys from a Gatekeeper cluster as a worker would, and prints one JSON line per key.
//!
//! ```text
//! cargo run -p gatekeeper-client --example fetch_keys -- \
//!     --endpoint 127.0.0.1:9965 --endpoint 127.0.0.1:9966 \
//!     --worker-key worker.json --ca miner-ca.pem \
//!     worker contract:3333…33
//! ```
//!
//! Targets: `worker`, `cluster:<64 hex>`, `contract:<64 hex>`. Options: `--epoch N` (default:
//! current), `--timeout-ms N` (per call; default 10000), `--plaintext` instead of `--ca` for a
//! development node with `plaintext = true`. Prints the public keys only, never a secret. Exits
//! 1 if any key could not be fetched.

use gatekeeper_client::{read_key_file, ClientError, KeyTarget, MinerClient};
use keyring::{ClusterId, ContractId};
use std::time::Duration;

struct Args {
    endpoints: Vec<String>,
    worker_key: String,
    ca: Option<String>,
    plaintext: bool,
    epoch: Option<u64>,
    timeout: Duration,
    targets: Vec<(String, KeyTarget)>,
}

fn id32(s: &str) -> Result<[u8; 32], String> {
    hex::decode(s.strip_prefix("0x").unwrap_or(s))
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{s:?} is not 64 hex characters"))
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        endpoints: vec![],
        worker_key: String::new(),
        ca: None,
        plaintext: false,
        epoch: None,
        timeout: Duration::from_secs(10),
        targets: vec![],
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--endpoint" => a.endpoints.push(value("--endpoint")?),
            "--worker-key" => a.worker_key = value("--worker-key")?,
            "--ca" => a.ca = Some(value("--ca")?),
            "--plaintext" => a.plaintext = true,
            "--epoch" => {
                a.epoch = Some(
                    value("--epoch")?
                        .parse()
                        .map_err(|_| "--epoch must be a number")?,
                )
            }
            "--timeout-ms" => {
                a.timeout = Duration::from_millis(
                    value("--timeout-ms")?
                        .parse()
                        .map_err(|_| "--timeout-ms must be a number")?,
                )
            }
            "worker" => a.targets.push((arg, KeyTarget::Worker)),
            t => match t.split_once(':') {
                Some(("cluster", id)) => a
                    .targets
                    .push((arg.clone(), KeyTarget::Cluster(ClusterId(id32(id)?)))),
                Some(("contract", id)) => a
                    .targets
                    .push((arg.clone(), KeyTarget::Contract(ContractId(id32(id)?)))),
                _ => return Err(format!("unknown argument {t:?}")),
            },
        }
    }
    if a.endpoints.is_empty() || a.worker_key.is_empty() || a.targets.is_empty() {
        return Err("need --endpoint, --worker-key and at least one target".into());
    }
    if a.ca.is_none() && !a.plaintext {
        return Err("need --ca (the cluster's miner CA bundle) or --plaintext".into());
    }
    Ok(a)
}

const USAGE: &str = "usage: fetch_keys --endpoint HOST:PORT [--endpoint …] --worker-key FILE \
(--ca FILE | --plaintext) [--epoch N] [--timeout-ms N] TARGET…
targets: worker | cluster:<64 hex> | contract:<64 hex>
prints one JSON line per target (public key, epoch, endpoint, time taken, or the error)";

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fetch_keys: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let worker = match read_key_file(&args.worker_key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("fetch_keys: {e}");
            std::process::exit(2);
        }
    };
    let mut client = MinerClient::new(args.endpoints, worker)
        .with_timeouts(Duration::from_secs(2), args.timeout);
    if args.plaintext {
        client = client.allow_plaintext();
    }
    if let Some(ca) = &args.ca {
        client = match client.with_tls_ca_file(ca) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("fetch_keys: {e}");
                std::process::exit(2);
            }
        };
    }
    let targets: Vec<KeyTarget> = args.targets.iter().map(|(_, t)| *t).collect();
    let mut failed = false;
    for ((name, _), r) in args
        .targets
        .iter()
        .zip(client.fetch_many(&targets, args.epoch).await)
    {
        let line = match r {
            Ok(k) => serde_json::json!({
                "target": name,
                "epoch": k.epoch,
                "public_key": hex::encode(k.keypair.public_key().as_bytes()),
                "served_by": k.served_by,
                "endpoint": k.endpoint,
                "elapsed_ms": k.elapsed.as_millis() as u64,
            }),
            Err(e) => {
                failed = true;
                error_line(name, &e)
            }
        };
        println!("{line}");
    }
    std::process::exit(i32::from(failed));
}

fn error_line(target: &str, e: &ClientError) -> serde_json::Value {
    serde_json::json!({
        "target": target,
        "error": e.to_string(),
        "error_code": e.error_code(),
    })
}
