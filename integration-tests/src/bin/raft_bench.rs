//! Replicated-write benchmark: a real 3-node `gatekeeper` cluster on loopback (fsync on, the
//! default), concurrent `AdminService.WriteCanary` calls against the leader.
//!
//! Run it on a release build (both binaries must be built with the same profile; the benchmark
//! uses `target/<profile>/gatekeeper` next to itself):
//!
//! ```sh
//! cargo build --release -j2 -p gatekeeper
//! cargo run --release -j2 -p gatekeeper-integration-tests --bin raft_bench
//! ```
//!
//! For each number of concurrent writers in [1, 16, 256] it warms up for 2 s, then writes for
//! `RAFT_BENCH_SECONDS` seconds (default 12; the whole run stays under ~1 minute) and prints one
//! JSON line to stdout:
//!
//! ```text
//! {"bench":"replicated_write","nodes":3,"tls":true,"records":0,"writers":16,"ops":1234,"seconds":12.0,"ops_per_sec":102.8,"p50_ms":150.2,"p99_ms":310.9}
//! ```
//!
//! `ops` counts acknowledged (committed) writes; latencies are per acknowledged write, measured at
//! the client. Failed writes are reported on stderr. Environment:
//!
//! * `RAFT_BENCH_SECONDS` — measured seconds per run (default 12).
//! * `RAFT_BENCH_WRITERS` — comma-separated writer counts (default `1,16,256`).
//! * `RAFT_BENCH_DIR` — where the nodes' data dirs go (default: the system temp dir). Put it on
//!   the disk you want to measure: a tmpfs makes fsync free.
//! * `RAFT_BENCH_VALUE_BYTES` — value size (default 64).
//! * `RAFT_BENCH_TLS` — `1` (default): TLS on every listener, as deployed; `0`: plaintext
//!   (development), to measure what TLS costs.
//! * `RAFT_BENCH_PREFILL` — canary keys written (256 writers) before the measured runs, so the
//!   state holds that many records (and as many writer records) while writes are measured
//!   (default 0). It prints `{"bench":"prefill","records":N,"seconds":S,"ops_per_sec":R}` first,
//!   and every line carries `"records":N`.

#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use gatekeeper_integration_tests::{admin_client, env_or, pb, Cluster, Opts};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct RunResult {
    latencies: Vec<Duration>,
    errors: u64,
    last_error: Option<String>,
    elapsed: Duration,
}

/// `writers` tasks each loop on WriteCanary until `warmup + measure` has passed; only writes that
/// start after the warm-up and finish before the end are counted.
async fn run(
    urls: &[gatekeeper_integration_tests::Target],
    writers: usize,
    warmup: Duration,
    measure: Duration,
    value: &str,
    tag: &str,
) -> Result<RunResult> {
    // HTTP/2 multiplexes many calls on one connection; use one channel per 16 writers so a single
    // connection's stream limit or flow control does not become the bottleneck.
    let channels = writers.div_ceil(16);
    let mut clients = Vec::new();
    for k in 0..channels {
        clients.push(admin_client(&urls[k % urls.len()])?);
    }
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let end = measure_from + measure;
    let done = Arc::new(AtomicBool::new(false));
    let mut set = tokio::task::JoinSet::new();
    for w in 0..writers {
        let mut client = clients[w % channels].clone();
        let value = value.to_string();
        let tag = tag.to_string();
        let done = done.clone();
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut last_error = None;
            let mut seq = 0u64;
            while !done.load(Ordering::Relaxed) && Instant::now() < end {
                let req = pb::WriteCanaryRequest {
                    key: format!("bench-{tag}-{w}-{seq}"),
                    value: value.clone(),
                    authorization: None,
                };
                seq += 1;
                let t0 = Instant::now();
                let res = client.write_canary(req).await;
                let t1 = Instant::now();
                match res {
                    Ok(_) if t0 >= measure_from && t1 <= end => lat.push(t1 - t0),
                    Ok(_) => {}
                    Err(e) => {
                        if t0 >= measure_from {
                            errors += 1;
                        }
                        last_error = Some(format!("{}: {}", e.code(), e.message()));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (lat, errors, last_error)
        });
    }
    let mut out = RunResult {
        latencies: Vec::new(),
        errors: 0,
        last_error: None,
        elapsed: measure,
    };
    while let Some(r) = set.join_next().await {
        let (lat, errors, last_error) = r.context("writer task")?;
        out.latencies.extend(lat);
        out.errors += errors;
        if last_error.is_some() {
            out.last_error = last_error;
        }
    }
    done.store(true, Ordering::Relaxed);
    Ok(out)
}

/// Writes `records` canary keys with `writers` concurrent writers; returns the seconds it took.
async fn prefill(
    url: &gatekeeper_integration_tests::Target,
    records: u64,
    writers: usize,
    value: &str,
) -> Result<f64> {
    let begin = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..writers.div_ceil(16) {
        clients.push(admin_client(url)?);
    }
    let mut set = tokio::task::JoinSet::new();
    for w in 0..writers {
        let mut client = clients[w % clients.len()].clone();
        let (next, value) = (next.clone(), value.to_string());
        set.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= records {
                    return Ok::<(), anyhow::Error>(());
                }
                let mut tries = 0;
                loop {
                    let req = pb::WriteCanaryRequest {
                        key: format!("prefill-{n}"),
                        value: value.clone(),
                        authorization: None,
                    };
                    match client.write_canary(req).await {
                        Ok(_) => break,
                        Err(e) if tries < 50 => {
                            tries += 1;
                            eprintln!("raft_bench: prefill write {n}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => anyhow::bail!("prefill write {n}: {e}"),
                    }
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("prefill task")??;
    }
    Ok(begin.elapsed().as_secs_f64())
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted[idx].as_secs_f64() * 1000.0
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn main() -> Result<()> {
    let seconds: f64 = env_or("RAFT_BENCH_SECONDS", 12.0);
    let value_bytes: usize = env_or("RAFT_BENCH_VALUE_BYTES", 64);
    let records: u64 = env_or("RAFT_BENCH_PREFILL", 0);
    let writer_counts: Vec<usize> = std::env::var("RAFT_BENCH_WRITERS")
        .unwrap_or_else(|_| "1,16,256".into())
        .split(',')
        .map(|s| s.trim().parse().context("RAFT_BENCH_WRITERS"))
        .collect::<Result<_>>()?;
    let opts = Opts {
        base_dir: std::env::var_os("RAFT_BENCH_DIR").map(Into::into),
        // Production-like timing: a loaded leader must not lose its lease to short timeouts.
        election_timeout_min_ms: 1000,
        election_timeout_max_ms: 2000,
        heartbeat_interval_ms: 250,
        fault_hooks: false,
        tls: env_or("RAFT_BENCH_TLS", 1u8) != 0,
        ..Opts::default()
    };
    let tls = opts.tls;
    let cluster = Cluster::start(3, opts);
    let leader = cluster.leader();
    eprintln!(
        "raft_bench: 3 nodes in {}, leader {leader}",
        cluster.dir().display()
    );
    let urls = vec![cluster.admin_target(leader)];
    let value = "v".repeat(value_bytes);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if records > 0 {
        let secs = rt.block_on(prefill(&urls[0], records, 256, &value))?;
        println!(
            "{{\"bench\":\"prefill\",\"records\":{records},\"seconds\":{:?},\"ops_per_sec\":{:?}}}",
            round(secs, 3),
            round(records as f64 / secs, 1)
        );
    }
    for (k, &writers) in writer_counts.iter().enumerate() {
        let r = rt.block_on(run(
            &urls,
            writers,
            Duration::from_secs(2),
            Duration::from_secs_f64(seconds),
            &value,
            &format!("r{k}"),
        ))?;
        let mut lat = r.latencies;
        lat.sort();
        let secs = r.elapsed.as_secs_f64();
        // Keys in this fixed order (serde_json's map would sort them).
        let line = format!(
            "{{\"bench\":\"replicated_write\",\"nodes\":3,\"tls\":{tls},\"records\":{records},\"writers\":{writers},\"ops\":{},\
             \"seconds\":{:?},\"ops_per_sec\":{:?},\"p50_ms\":{:?},\"p99_ms\":{:?}}}",
            lat.len(),
            round(secs, 3),
            round(lat.len() as f64 / secs, 1),
            round(percentile_ms(&lat, 50.0), 3),
            round(percentile_ms(&lat, 99.0), 3),
        );
        debug_assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok());
        println!("{line}");
        if r.errors > 0 {
            eprintln!(
                "raft_bench: writers={writers}: {} failed writes; last error: {}",
                r.errors,
                r.last_error.unwrap_or_default()
            );
        }
    }
    let final_leader = cluster.leader();
    if final_leader != leader {
        eprintln!("raft_bench: leadership moved from {leader} to {final_leader} during the run");
    }
    Ok(())
}
