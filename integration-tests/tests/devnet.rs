//! `gatekeeper devnet`, the README's run command, as a user runs it: a real process that starts
//! the dev chain and three node processes, runs the demo, and stops everything.

use gatekeeper_integration_tests::{
    client_example_bin, gatekeeper_bin, http_get, run_admin, run_command, ClientCerts, Target,
};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The devnets of this file run one at a time (three nodes each on a 2-core machine).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A base port whose derived ports (chain, Raft, API, metrics, admin of three nodes) are all
/// free now.
fn free_base() -> u16 {
    let offsets = [0u16, 11, 12, 13, 21, 22, 23, 31, 32, 33, 41, 42, 43];
    let seed = std::process::id() as u16;
    for k in 0..200u16 {
        let base = 20_000 + (seed.wrapping_mul(37).wrapping_add(k * 97)) % 40_000;
        if offsets
            .iter()
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port range found");
}

fn node_logs_say_stopped_cleanly(dir: &std::path::Path) {
    for i in 1..=3 {
        let log = std::fs::read_to_string(dir.join(format!("node-{i}/node.log"))).unwrap();
        assert!(
            log.contains("node stopped cleanly"),
            "node {i} did not stop cleanly:\n{log}"
        );
    }
}

#[test]
fn devnet_exit_after_demo_runs_to_completion() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("devnet");
    let base = free_base().to_string();
    let bin = gatekeeper_bin().unwrap();
    let out = run_command(
        &bin,
        &[
            "devnet",
            "--dir",
            dir.to_str().unwrap(),
            "--base-port",
            &base,
            "--block-time-ms",
            "300",
            "--exit-after-demo",
        ],
        Duration::from_secs(180),
    );
    assert!(out.success(), "{}", out.describe());
    for want in [
        "Gatekeeper devnet is up",
        "worker key",
        "contract key",
        "(leader)",
        "master public key",
        "Stopped.",
    ] {
        assert!(
            out.stdout.contains(want),
            "{want:?} missing:\n{}",
            out.stdout
        );
    }
    node_logs_say_stopped_cleanly(&dir);
    // Every step was reported done.
    assert_eq!(out.stdout.matches('✓').count(), 5, "{}", out.stdout);
}

#[test]
fn devnet_runs_until_ctrl_c_then_stops_every_child() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("devnet");
    let base = free_base();
    let bin = gatekeeper_bin().unwrap();
    let mut child = Command::new(&bin)
        .args([
            "devnet",
            "--dir",
            dir.to_str().unwrap(),
            "--base-port",
            &base.to_string(),
            "--block-time-ms",
            "300",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut seen = String::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => {
                seen.push_str(&l);
                seen.push('\n');
                if l.contains("Press Ctrl-C") {
                    break;
                }
            }
            Err(_) => {
                if let Some(st) = child.try_wait().unwrap() {
                    panic!("devnet exited early ({st}):\n{seen}");
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "devnet did not come up:\n{seen}"
        );
    }
    // It is really running: the nodes answer (over TLS, with the operator certificate the
    // devnet wrote), follow the chain and export metrics.
    let certs = dir.join("certs");
    let mut admin = Target {
        addr: format!("127.0.0.1:{}", base + 41),
        tls: Some(ClientCerts {
            ca: certs.join("ca.pem"),
            identity: Some((certs.join("operator.pem"), certs.join("operator.key"))),
        }),
    };
    let st = run_admin(&bin, &admin, &["status", "--json"], Duration::from_secs(30));
    let v: serde_json::Value = st.json().unwrap();
    assert_eq!(v["seal_status"], "unsealed", "{v}");
    assert_eq!(v["chain"]["connected"], true, "{v}");
    let metrics = http_get(&format!("127.0.0.1:{}", base + 32), "/metrics").unwrap();
    assert!(
        metrics.contains("gatekeeper_chain_connected 1"),
        "{metrics}"
    );
    // A worker's program: the miner SDK's example, given only the demo worker's key file, the
    // miners' CA bundle and the nodes' API addresses, fetches the keys the demo fetched (two
    // targets at once, over TLS, verified end to end).
    let summary_key = |label: &str| -> String {
        let line = seen
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line:\n{seen}"));
        line.split_whitespace().nth(2).unwrap().to_string()
    };
    let contract = seen
        .lines()
        .find_map(|l| l.split("(contract ").nth(1))
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no contract id:\n{seen}"))
        .to_string();
    let apis: Vec<String> = (1..=3)
        .map(|i| format!("127.0.0.1:{}", base + 20 + i))
        .collect();
    let worker_file = dir.join("demo-worker.json");
    let bundle = certs.join("miner-bundle.pem");
    let mut args: Vec<String> = apis
        .iter()
        .flat_map(|a| ["--endpoint".to_string(), a.clone()])
        .collect();
    args.extend([
        "--worker-key".into(),
        worker_file.display().to_string(),
        "--ca".into(),
        bundle.display().to_string(),
        "worker".into(),
        format!("contract:{contract}"),
    ]);
    let example = client_example_bin("fetch_keys").unwrap();
    let out = run_command(
        &example,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.describe());
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(
        lines[0]["public_key"],
        summary_key("worker key"),
        "{}",
        out.stdout
    );
    assert_eq!(
        lines[1]["public_key"],
        summary_key("contract key"),
        "{}",
        out.stdout
    );
    for l in &lines {
        assert!(apis.iter().any(|a| l["endpoint"] == *a), "{l}");
        assert!(l["elapsed_ms"].as_u64().is_some(), "{l}");
    }
    // The miner CLI says which endpoint answered and how long it took.
    let out = run_command(
        &bin,
        &[
            "miner",
            "fetch-key",
            "--endpoint",
            &apis[1],
            "--worker-key-file",
            worker_file.to_str().unwrap(),
            "--ca",
            bundle.to_str().unwrap(),
            "--kind",
            "worker",
        ],
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.describe());
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["endpoint"], apis[1], "{v}");
    assert_eq!(v["public_key"], summary_key("worker key"), "{v}");
    assert!(
        v["elapsed_ms"].as_u64().is_some() && v.get("seed").is_none(),
        "{v}"
    );

    // Without a client certificate, or in plaintext, the admin listener refuses.
    if let Some(t) = admin.tls.as_mut() {
        t.identity = None;
    }
    let refused = run_admin(&bin, &admin, &["status"], Duration::from_secs(30));
    assert!(!refused.success(), "{}", refused.describe());
    admin.tls = None;
    let refused = run_admin(&bin, &admin, &["status"], Duration::from_secs(30));
    assert!(!refused.success(), "{}", refused.describe());

    // Ctrl-C (SIGINT to the devnet process): every node stops cleanly, then the devnet exits 0.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "devnet did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        seen.push_str(&l);
        seen.push('\n');
    }
    assert!(status.success(), "{status}:\n{seen}");
    assert!(seen.contains("Stopped."), "{seen}");
    node_logs_say_stopped_cleanly(&dir);
    // Nothing listens on the nodes' ports any more.
    assert!(TcpListener::bind(("127.0.0.1", base + 21)).is_ok());
    assert!(TcpListener::bind(("127.0.0.1", base)).is_ok());
}
