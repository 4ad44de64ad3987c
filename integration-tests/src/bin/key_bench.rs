//! Key-request benchmark: worker-key requests per second served by one node of a real 3-node
//! cluster, against the keyring's crypto-only cost of the same work, printed as a ratio.
//!
//! ```sh
//! cargo build --release -j2 -p gatekeeper
//! cargo run --release -j2 -p gatekeeper-integration-tests --bin key_bench
//! ```
//!
//! Requests are signed before the timed loop (each with its own nonce), so the client spends
//! almost nothing while the node works. The crypto-only figure runs, on one thread, exactly the
//! node's per-request cryptography: verify the worker's signature, derive the worker key, HPKE-
//! seal its seed, sign the response. Output: one JSON line per concurrency level, e.g.
//!
//! ```text
//! {"bench":"key_request","tls":true,"writers":16,"requests":..,"seconds":..,"served_per_sec":..,"crypto_only_per_sec_one_core":..,"ratio":..}
//! ```
//!
//! `ratio` = served per second / crypto-only per second on one core. It runs twice, on a fresh
//! cluster each: plaintext (`"tls":false`), then TLS on every listener as deployed
//! (`"tls":true`), so one run shows what TLS costs. Environment: `KEY_BENCH_SECONDS` (default 8),
//! `KEY_BENCH_CONCURRENCY` (default `1,16,64`), `KEY_BENCH_TLS` (`0` or `1`: only that mode),
//! `KEY_BENCH_AUDIT=1`: also a TLS run with the audit log on (`audit_path`, `audit_required`),
//! `"audit":true` in its lines, to show what auditing every delivery costs.

use gatekeeper_integration_tests::{Cluster, Opts};
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::key_service_client::KeyServiceClient;
use keyring::derive;
use keyring::envelope::{self, subject, EnvelopeContext, Purpose};
use keyring::sign::{KeyRequest, KeyResponse, KeyTarget};
use keyring::{GatekeeperId, MasterSecret, Sr25519Keypair, X25519SecretKey};
use rand_core::OsRng;
use std::time::{Duration, Instant};

/// The node's per-request crypto, on one thread, for `secs` seconds: requests per second.
fn crypto_only(secs: f64) -> f64 {
    let master = MasterSecret::generate(&mut OsRng);
    let w = Sr25519Keypair::generate(&mut OsRng);
    let gk = GatekeeperId([1; 32]);
    let recipient = X25519SecretKey::generate(&mut OsRng).public_key();
    let req = KeyRequest {
        target: KeyTarget::Worker,
        gatekeeper_id: gk,
        worker: w.public_key(),
        recipient,
        epoch: None,
        nonce: [7; 32],
        timestamp_ms: 1,
        evidence: None,
    };
    let sig = req.sign(&w);
    let signing = derive::cluster_signing_key(&master);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        req.verify(&sig).unwrap();
        let k = derive::worker_key(&master, &w.public_key());
        let ctx = EnvelopeContext {
            purpose: Purpose::KeyDelivery,
            gatekeeper_id: gk,
            epoch: 0,
            subject: subject::key_delivery(1, w.public_key().as_bytes(), w.public_key().as_bytes()),
            recipient,
        };
        let env = envelope::seal(&ctx, k.seed(), &mut OsRng).unwrap();
        let resp = KeyResponse {
            kind: 1,
            epoch: 0,
            subject: w.public_key().as_bytes().to_vec(),
            cluster_id: vec![],
            scheme: 1,
            derived_public_key: k.public_key(),
            sealed_secret: env,
            request_digest: req.digest(),
            issued_at_ms: 1,
            served_by: 1,
        };
        std::hint::black_box(resp.sign(&signing));
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::var("KEY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    let levels: Vec<usize> = std::env::var("KEY_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();

    let crypto = crypto_only(secs.min(3.0));
    // Plaintext first, then TLS (as deployed), each on a fresh cluster, in the same run.
    let modes: Vec<bool> = match std::env::var("KEY_BENCH_TLS").as_deref() {
        Ok("0") => vec![false],
        Ok("1") => vec![true],
        _ => vec![false, true],
    };
    for tls in modes {
        bench(tls, false, crypto, secs, &levels);
    }
    if std::env::var("KEY_BENCH_AUDIT").as_deref() == Ok("1") {
        bench(true, true, crypto, secs, &levels);
    }
}

/// One cluster (TLS on or off), every concurrency level.
fn bench(tls: bool, audit: bool, crypto: f64, secs: f64, levels: &[usize]) {
    let audit_dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(
        3,
        Opts {
            tls,
            extra_config: if audit {
                vec![
                    format!(
                        "audit_path = {:?}",
                        audit_dir.path().join("audit.log").display().to_string()
                    ),
                    "audit_required = true".into(),
                ]
            } else {
                vec![]
            },
            ..Opts::default()
        },
    );
    // Node 2 (the one measured) unsealed and knowing the worker.
    let (w, gk) = c.dev_worker(&[2], Duration::from_secs(60));
    let target = c.key_target(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for &conc in levels {
        // Enough pre-signed requests for the run (generous upper bound).
        let per_task = (crypto * secs / conc as f64 * 1.5).ceil() as usize + 16;
        let batches: Vec<Vec<pb::GetWorkerKeyRequest>> = (0..conc)
            .map(|_| {
                (0..per_task)
                    .map(|_| gatekeeper_integration_tests::signed_worker_request(&gk, &w))
                    .collect()
            })
            .collect();
        let (served, elapsed) = rt.block_on(async {
            let ch = target.endpoint().unwrap().connect().await.unwrap();
            let start = Instant::now();
            let mut tasks = vec![];
            for batch in batches {
                let mut k = KeyServiceClient::new(ch.clone());
                tasks.push(tokio::spawn(async move {
                    let mut ok = 0u64;
                    for r in batch {
                        if start.elapsed().as_secs_f64() >= secs {
                            break;
                        }
                        match k.get_worker_key(r).await {
                            Ok(_) => ok += 1,
                            Err(e) => eprintln!("request failed: {e}"),
                        }
                    }
                    ok
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            (total, start.elapsed().as_secs_f64())
        });
        let rate = served as f64 / elapsed;
        println!(
            "{}",
            serde_json::json!({
                "bench": "key_request",
                "tls": tls,
                "audit": audit,
                "writers": conc,
                "requests": served,
                "seconds": (elapsed * 10.0).round() / 10.0,
                "served_per_sec": (rate * 10.0).round() / 10.0,
                "crypto_only_per_sec_one_core": crypto.round(),
                "ratio": (rate / crypto * 1000.0).round() / 1000.0,
            })
        );
    }
}
