//! Failover benchmark: a real 3-node `gatekeeper` cluster under write and key-request load, its
//! leader killed with SIGKILL; reports how many key requests and writes failed and how long
//! writes stopped.
//!
//! ```sh
//! cargo build --release -j2 -p gatekeeper
//! cargo run --release -j2 -p gatekeeper-integration-tests --bin failover_bench
//! ```
//!
//! Writers send `AdminService.WriteCanary` to the two followers (which forward to the leader);
//! key clients send fresh signed `GetWorkerKey` requests (linearizable reads, the default) to
//! the two followers. After `FAILOVER_BENCH_WARMUP_SECONDS` (default 5) the leader is killed;
//! the load goes on for `FAILOVER_BENCH_AFTER_SECONDS` (default 15). One JSON line:
//!
//! ```text
//! {"bench":"failover","tls":true,"election_timeout_max_ms":2000,"writers":16,"key_clients":8,"writes_ok":..,"writes_failed":..,"write_resume_ms":..,"max_write_gap_ms":..,"keys_ok":..,"keys_failed":..}
//! ```
//!
//! `write_resume_ms`: from the kill to the first write that started after it and committed.
//! `max_write_gap_ms`: the longest time without any write completing, from the kill on.
//! Issue 12's targets: no failed key request, writes back within 1.5× the maximum election
//! timeout. Environment: `FAILOVER_BENCH_WRITERS` (16), `FAILOVER_BENCH_KEY_CLIENTS` (8),
//! `FAILOVER_BENCH_DIR` (where the data dirs go).

#![forbid(unsafe_code)]

use anyhow::Result;
use gatekeeper_integration_tests::{admin_client, env_or, pb, Cluster, Opts};
use gatekeeper_proto::v1::key_service_client::KeyServiceClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One finished call: when it started and ended, and whether it succeeded.
type Outcome = (Instant, Instant, bool);

fn main() -> Result<()> {
    let writers: usize = env_or("FAILOVER_BENCH_WRITERS", 16);
    let key_clients: usize = env_or("FAILOVER_BENCH_KEY_CLIENTS", 8);
    let warmup = Duration::from_secs_f64(env_or("FAILOVER_BENCH_WARMUP_SECONDS", 5.0));
    let after = Duration::from_secs_f64(env_or("FAILOVER_BENCH_AFTER_SECONDS", 15.0));
    let election_max_ms = 2000;
    let c = Cluster::start(
        3,
        Opts {
            base_dir: std::env::var_os("FAILOVER_BENCH_DIR").map(Into::into),
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: election_max_ms,
            heartbeat_interval_ms: 250,
            fault_hooks: false,
            tls: true,
            ..Opts::default()
        },
    );
    // A worker every node knows, and every node unsealed.
    let (w, gk) = c.dev_worker(&c.ids(), Duration::from_secs(60));
    let leader = c.leader();
    let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    eprintln!(
        "failover_bench: 3 nodes in {}, leader {leader}",
        c.dir().display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Clients' channels are made inside the runtime.
    let _in_rt = rt.enter();
    let stop = Arc::new(AtomicBool::new(false));
    let writes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let keys: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let mut tasks = Vec::new();
    for k in 0..writers {
        let mut client = admin_client(&c.admin_target(followers[k % followers.len()]))?;
        let (stop, writes) = (stop.clone(), writes.clone());
        tasks.push(rt.spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let req = pb::WriteCanaryRequest {
                    key: format!("failover-{k}-{seq}"),
                    value: "v".repeat(64),
                    authorization: None,
                };
                seq += 1;
                let t0 = Instant::now();
                let ok = client.write_canary(req).await.is_ok();
                writes.lock().unwrap().push((t0, Instant::now(), ok));
                if !ok {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for k in 0..key_clients {
        let target = c.key_target(followers[k % followers.len()]);
        let (stop, keys, gk, w) = (stop.clone(), keys.clone(), gk.clone(), w.clone());
        tasks.push(rt.spawn(async move {
            let Ok(ch) = target.channel() else { return };
            let mut client = KeyServiceClient::new(ch);
            while !stop.load(Ordering::Relaxed) {
                let req = gatekeeper_integration_tests::signed_worker_request(&gk, &w);
                let t0 = Instant::now();
                let res = client.get_worker_key(req).await;
                if let Err(e) = &res {
                    eprintln!("failover_bench: key request failed: {e}");
                }
                keys.lock().unwrap().push((t0, Instant::now(), res.is_ok()));
            }
        }));
    }
    std::thread::sleep(warmup);
    let killed = Instant::now();
    c.kill9(leader);
    std::thread::sleep(after);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = rt.block_on(t);
    }
    let new_leader = c.leader_among(&followers);

    let writes = writes.lock().unwrap().clone();
    let keys = keys.lock().unwrap().clone();
    let count = |v: &[Outcome], ok: bool| v.iter().filter(|o| o.2 == ok).count();
    let resume_ms = writes
        .iter()
        .filter(|(t0, _, ok)| *ok && *t0 >= killed)
        .map(|(_, t1, _)| t1.duration_since(killed).as_millis())
        .min();
    let mut done: Vec<Instant> = writes
        .iter()
        .filter(|(_, t1, ok)| *ok && *t1 >= killed)
        .map(|o| o.1)
        .collect();
    done.sort();
    let max_gap_ms = std::iter::once(killed)
        .chain(done.iter().copied())
        .zip(done.iter().copied())
        .map(|(a, b)| b.duration_since(a).as_millis())
        .max();
    println!(
        "{}",
        serde_json::json!({
            "bench": "failover",
            "tls": true,
            "election_timeout_max_ms": election_max_ms,
            "killed_leader": leader,
            "new_leader": new_leader,
            "writers": writers,
            "key_clients": key_clients,
            "writes_ok": count(&writes, true),
            "writes_failed": count(&writes, false),
            "write_resume_ms": resume_ms,
            "max_write_gap_ms": max_gap_ms,
            "keys_ok": count(&keys, true),
            "keys_failed": count(&keys, false),
        })
    );
    Ok(())
}
