//! `gatekeeper devnet`, the README's run command, as a user runs it: a real process that starts
//! the dev chain and three node processes, runs the demo, and stops everything.

use gatekeeper_integration_tests::{
    gatekeeper_bin, http_get, run_admin, run_command, ClientCerts, Target,
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
