//! Registry benchmark: a real 3-node `gatekeeper` cluster (TLS) following a dev chain that
//! registers `REGISTRY_BENCH_WORKERS` workers (default 1,000,000) in large blocks, through the
//! real chain path; then a follower is killed with SIGKILL and restarted, and a fresh node joins
//! (it receives the state as a snapshot). One JSON line:
//!
//! ```text
//! {"bench":"registry","fill":"events","workers":1000000,"per_block":5000,"fill_s":..,"fill_workers_per_s":..,
//!  "rss_mib":[..],"hwm_mib":[..],"data_mib":[..],"restart_to_serving_ms":..,"restart_rss_mib":..,
//!  "join_to_serving_ms":..,"join_rss_mib":..,"join_hwm_mib":..,"leader_hwm_mib":..}
//! ```
//!
//! ```sh
//! cargo build --release -j2 -p gatekeeper -p gatekeeper-devchain
//! cargo run --release -j2 -p gatekeeper-integration-tests --bin registry_bench
//! ```
//!
//! * `fill`: `events` (default) starts the cluster first and registers the workers on the
//!   chain while it follows (every registration is a chain event it applies); `storage`
//!   registers them first and starts the cluster afterwards, which reads them from storage
//!   (docs/chain.md §4.1).
//! * `rss_mib` / `hwm_mib`: each node's resident and peak resident memory once every worker is
//!   applied (`/proc/PID/status` `VmRSS`, `VmHWM`); `data_mib`: its data directory.
//! * `restart_to_serving_ms`: from restarting a SIGKILLed follower to its first served key (a
//!   real worker registered on the chain before the fill), with every block applied.
//! * `join_to_serving_ms`: from starting a fresh node to it serving that key as a voter with every
//!   block applied (the leader sends it a snapshot of the whole registry).
//!
//! Issue 12's targets: RSS ≤ 1 GiB, restart ≤ 10 s, join ≤ 30 s, snapshot memory bounded.
//! Environment: `REGISTRY_BENCH_WORKERS`, `REGISTRY_BENCH_PER_BLOCK` (5000),
//! `REGISTRY_BENCH_FILL` (`events`), `REGISTRY_BENCH_DIR` (where the data dirs go).

#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use devchain::actions::{Action, Profile};
use devchain::runtime::Public;
use gatekeeper_client::{MinerClient, RetryPolicy};
use gatekeeper_integration_tests::{env_or, Cluster, Opts};
use keyring::sign::KeyTarget;
use keyring::Sr25519Keypair;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(1800);

/// `VmRSS` and `VmHWM` of a process, MiB.
fn memory_mib(pid: Option<u32>) -> (u64, u64) {
    let Some(pid) = pid else { return (0, 0) };
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes under `dir`, MiB.
fn dir_mib(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir) >> 20
}

/// The i-th filler worker's key: distinct and spread like real public keys (in random order:
/// sequential keys fill the state's B-trees densely and flatter its memory), not a key pair.
fn filler(i: u64) -> String {
    // splitmix64, four words of it.
    let mut x = i.wrapping_mul(4).wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut k = [0u8; 32];
    for w in k.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        w.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
    }
    format!("0x{}", hex::encode(k))
}

/// Waits until node `i` applied every record of `block` and serves `w`'s worker key.
fn wait_serving(c: &Cluster, rt: &tokio::runtime::Runtime, i: u64, block: u64, w: &Sr25519Keypair) {
    c.wait_for(
        &format!("node {i} to serve with block {block} applied"),
        WAIT,
        || {
            let s = c.status(i)?;
            let ch = s.chain.ok_or("no chain in status")?;
            if !ch.applied_through(block) {
                return Err(format!("cursor {:?}", ch.cursor));
            }
            rt.block_on(async {
                let m = MinerClient::new(vec![c.api_addr(i).to_string()], w.clone())
                    .with_retry(RetryPolicy::once())
                    .with_tls_ca_file(c.ca_file().ok_or("no CA")?)
                    .map_err(|e| e.to_string())?;
                m.fetch(KeyTarget::Worker, None)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        },
    );
}

fn main() -> Result<()> {
    let workers: u64 = env_or("REGISTRY_BENCH_WORKERS", 1_000_000);
    let per_block: u64 = env_or("REGISTRY_BENCH_PER_BLOCK", 5000);
    let fill: String = env_or("REGISTRY_BENCH_FILL", "events".to_string());
    if !["events", "storage"].contains(&fill.as_str()) {
        bail!("REGISTRY_BENCH_FILL must be events or storage");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let chain = rt.block_on(devchain::DevChain::start(devchain::Config {
        listen: "127.0.0.1:0".parse()?,
        block_time: Duration::from_millis(250),
        data_dir: None,
        ..Default::default()
    }))?;
    let mut c = Cluster::empty(Opts {
        base_dir: std::env::var_os("REGISTRY_BENCH_DIR").map(Into::into),
        tls: true,
        fault_hooks: false,
        ..Opts::default()
    });
    c.add_config_line(&format!("chain_url = \"{}\"", chain.url()));
    // Measure the join however long it takes (the default gives up after 30 s).
    c.add_config_line("join_timeout_ms = 80000");

    // The worker whose key every check fetches.
    let w = Sr25519Keypair::generate(&mut rand_core::OsRng);
    let register = Action::RegisterWorker {
        worker: Public(*w.public_key().as_bytes()),
        provider: None,
        confidence_level: 1,
    };
    rt.block_on(chain.submit(Profile::Gatekeeper, &register))?;

    let start_cluster = |c: &mut Cluster| {
        let ids: Vec<u64> = (0..3).map(|_| c.add_node()).collect();
        c.init(ids[0], &ids)
            .unwrap_or_else(|e| c.fail(&format!("init: {e}")));
        c.leader_among(&ids);
    };
    if fill == "events" {
        start_cluster(&mut c);
    }
    eprintln!(
        "registry_bench: {workers} workers, {per_block} per block, fill by {fill}, in {}",
        c.dir().display()
    );
    let t0 = Instant::now();
    let mut last_block = 0;
    let mut done = 0;
    while done < workers {
        let n = per_block.min(workers - done);
        let events = (done..done + n)
            .map(|i| {
                json!({"Gatekeeper": {"WorkerRegistered": {
                    "worker": filler(i), "attestation_provider": "dcap", "confidence_level": 1}}})
            })
            .collect();
        let out = rt.block_on(chain.emit(events))?;
        last_block = out["block"].as_u64().context("emit answers a block")?;
        done += n;
        if done % (per_block * 20) == 0 {
            eprintln!(
                "registry_bench: {done} registered on chain in {:.0?}",
                t0.elapsed()
            );
        }
    }
    if fill == "storage" {
        start_cluster(&mut c);
    }
    let ids = c.ids();
    for &i in &ids {
        wait_serving(&c, &rt, i, last_block, &w);
    }
    let fill_s = t0.elapsed().as_secs_f64();
    eprintln!("registry_bench: every node applied block {last_block} after {fill_s:.0} s");
    let leader = c.leader();
    let mem: Vec<(u64, u64)> = ids.iter().map(|&i| memory_mib(c.pid(i))).collect();
    let data: Vec<u64> = ids.iter().map(|&i| dir_mib(c.data_dir(i))).collect();

    // Restart a follower after SIGKILL.
    let f = *ids.iter().find(|&&i| i != leader).expect("a follower");
    c.kill9(f);
    let t = Instant::now();
    c.restart(f);
    wait_serving(&c, &rt, f, last_block, &w);
    let restart_ms = t.elapsed().as_millis() as u64;
    let restart_rss = memory_mib(c.pid(f)).0;
    eprintln!("registry_bench: node {f} serving {restart_ms} ms after its restart");

    // A fresh node joins: the leader sends it the registry as a snapshot.
    let leader = c.leader();
    let t = Instant::now();
    let new = c.add_node();
    c.join(leader, new)
        .unwrap_or_else(|e| c.fail(&format!("join of node {new}: {e}")));
    wait_serving(&c, &rt, new, last_block, &w);
    let join_ms = t.elapsed().as_millis() as u64;
    let (join_rss, join_hwm) = memory_mib(c.pid(new));
    let leader_hwm = memory_mib(c.pid(leader)).1;
    eprintln!("registry_bench: node {new} joined and serving after {join_ms} ms");
    // What the joining node spent installing (its log says, per snapshot).
    let log = std::fs::read_to_string(c.stderr_log(new)).unwrap_or_default();
    for l in log.lines().filter(|l| l.contains("installed a snapshot")) {
        eprintln!("registry_bench: node {new}: {l}");
    }

    println!(
        "{}",
        json!({
            "bench": "registry",
            "fill": fill,
            "workers": workers,
            "per_block": per_block,
            "fill_s": (fill_s * 10.0).round() / 10.0,
            "fill_workers_per_s": (workers as f64 / fill_s).round(),
            "rss_mib": mem.iter().map(|m| m.0).collect::<Vec<_>>(),
            "hwm_mib": mem.iter().map(|m| m.1).collect::<Vec<_>>(),
            "data_mib": data,
            "restart_to_serving_ms": restart_ms,
            "restart_rss_mib": restart_rss,
            "join_to_serving_ms": join_ms,
            "join_rss_mib": join_rss,
            "join_hwm_mib": join_hwm,
            "leader_hwm_mib": leader_hwm,
        })
    );
    rt.block_on(chain.stop());
    Ok(())
}
