//! The chain watcher against real processes: a `gatekeeper-devchain` process as the chain and
//! three `gatekeeper node` processes following it. Workers, slashes, rotations, clusters and
//! contracts are emitted on the chain (through the dev chain's CLI, a real JSON-RPC client) and
//! observed through the nodes' KeyService (the miner SDK) and `admin status`.

use gatekeeper_client::{ClientError, FetchedKey, MinerClient, RetryPolicy};
use gatekeeper_integration_tests::{Cluster, DevChainOpts, DevChainProc, Opts, Status};
use keyring::sign::KeyTarget;
use keyring::{ClusterId, ContractId, Sr25519Keypair};
use rand_core::OsRng;
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

struct Net {
    c: Cluster,
    chain: DevChainProc,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A dev chain and `n` nodes following it (plus `extra` config lines), initialised and unsealed.
fn start(n: usize, chain_opts: DevChainOpts, extra: &[&str]) -> Net {
    start_after(n, chain_opts, extra, |_| {})
}

/// As [`start`], running `before` on the chain before any node exists.
fn start_after(
    n: usize,
    chain_opts: DevChainOpts,
    extra: &[&str],
    before: impl FnOnce(&DevChainProc),
) -> Net {
    let mut c = Cluster::empty(Opts {
        metrics: true,
        ..Opts::default()
    });
    let port = c.reserve_port();
    let chain = DevChainProc::start(&c.dir().join("chain"), port, chain_opts);
    before(&chain);
    c.add_config_line(&chain.config_line());
    for l in extra {
        c.add_config_line(l);
    }
    for _ in 0..n {
        c.add_node();
    }
    let ids = c.ids();
    c.init(ids[0], &ids)
        .unwrap_or_else(|e| c.fail(&format!("init: {e}")));
    c.leader_among(&ids);
    let net = Net { c, chain };
    net.wait_unsealed(&ids, 1);
    net
}

impl Net {
    fn fail(&self, msg: &str) -> ! {
        self.c.fail(&format!(
            "{msg}\n--- dev chain log:\n{}",
            self.chain.log_tail(30)
        ))
    }

    fn status(&self, i: u64) -> Result<Status, String> {
        self.c.status(i)
    }

    fn wait_unsealed(&self, ids: &[u64], active: usize) {
        for &i in ids {
            self.c.wait_for(
                &format!("node {i} unsealed with {active} active epoch(s)"),
                WAIT,
                || {
                    let s = self.status(i)?;
                    let n = s.epochs.iter().filter(|e| e.status == "active").count();
                    if s.seal_status == "unsealed" && n == active {
                        Ok(())
                    } else {
                        Err(format!("{} with {n} active epochs", s.seal_status))
                    }
                },
            );
        }
    }

    /// Waits until each of `ids` has applied every event record of `block`.
    fn wait_applied(&self, ids: &[u64], block: u64) {
        for &i in ids {
            self.c
                .wait_for(&format!("node {i} to apply block {block}"), WAIT, || {
                    let s = self.status(i)?;
                    let ch = s.chain.ok_or("no chain in status")?;
                    if ch.applied_through(block) {
                        Ok(())
                    } else {
                        Err(format!(
                            "cursor {:?}, finalized {}, connected {}, last error {:?}",
                            ch.cursor, ch.finalized, ch.connected, ch.last_error
                        ))
                    }
                });
        }
    }

    fn chain_status(&self, i: u64) -> gatekeeper_integration_tests::ChainView {
        self.status(i)
            .unwrap_or_else(|e| self.fail(&format!("status of node {i}: {e}")))
            .chain
            .unwrap_or_else(|| self.fail(&format!("node {i} reports no chain")))
    }
}

/// Fetches a key from node `i` alone with a fresh client (no cache).
fn fetch(
    net: &Net,
    i: u64,
    w: &Sr25519Keypair,
    target: KeyTarget,
    epoch: Option<u64>,
) -> Result<FetchedKey, ClientError> {
    rt().block_on(async {
        let m = MinerClient::new(vec![net.c.api_addr(i).to_string()], w.clone())
            .with_retry(RetryPolicy::once())
            .with_tls_ca_file(net.c.ca_file().unwrap())
            .unwrap();
        m.fetch(target, epoch).await
    })
}

fn pk(k: &FetchedKey) -> [u8; 32] {
    *k.keypair.public_key().as_bytes()
}

fn refused(r: Result<FetchedKey, ClientError>, code: tonic::Code, words: &str) {
    match r {
        Err(ClientError::Refused {
            code: c, message, ..
        }) => {
            assert_eq!(c, code, "{message}");
            assert!(message.contains(words), "{message:?} lacks {words:?}");
        }
        Err(e) => panic!("expected {code:?} ({words}), got {e}"),
        Ok(k) => panic!(
            "expected {code:?} ({words}), but node {} served a key",
            k.served_by
        ),
    }
}

fn worker() -> (Sr25519Keypair, String) {
    let w = Sr25519Keypair::generate(&mut OsRng);
    let h = hex::encode(w.public_key().as_bytes());
    (w, h)
}

const ALL: [u64; 3] = [1, 2, 3];

/// Emits a cluster holding `worker` and a contract on it; returns the contract's block.
fn cluster_with_contract(
    ch: &DevChainProc,
    profile: &str,
    worker: &str,
    cluster: [u8; 32],
    contract: [u8; 32],
) -> u64 {
    let (cl, co) = (hex::encode(cluster), hex::encode(contract));
    ch.emit_ok(
        profile,
        &["create-cluster", "--cluster", &cl, "--worker", worker],
    );
    ch.emit_ok(
        profile,
        &["instantiate-contract", "--contract", &co, "--cluster", &cl],
    )
}

#[test]
fn workers_registered_slashed_and_deregistered_on_chain_gate_their_keys() {
    let net = start(3, DevChainOpts::default(), &[]);
    let ch = &net.chain;
    let (w, wh) = worker();
    // Not registered yet: NOT_FOUND everywhere.
    refused(
        fetch(&net, 1, &w, KeyTarget::Worker, None),
        tonic::Code::NotFound,
        "not registered",
    );

    let b = ch.emit_ok(
        "gatekeeper",
        &[
            "register-worker",
            "--worker",
            &wh,
            "--provider",
            "dcap",
            "--confidence-level",
            "2",
        ],
    );
    net.wait_applied(&ALL, b);
    let keys: Vec<[u8; 32]> = ALL
        .iter()
        .map(|&i| {
            pk(&fetch(&net, i, &w, KeyTarget::Worker, None)
                .unwrap_or_else(|e| net.fail(&format!("node {i}: {e}"))))
        })
        .collect();
    assert!(
        keys.windows(2).all(|k| k[0] == k[1]),
        "every node derives the same worker key"
    );

    // A cluster with the worker and a contract on it.
    let cluster = [0x5a; 32];
    let contract = [0x6b; 32];
    let b = cluster_with_contract(ch, "gatekeeper", &wh, cluster, contract);
    net.wait_applied(&ALL, b);
    let ck = fetch(&net, 2, &w, KeyTarget::Contract(ContractId(contract)), None).unwrap();
    assert_eq!(
        pk(&fetch(&net, 3, &w, KeyTarget::Contract(ContractId(contract)), None).unwrap()),
        pk(&ck)
    );
    fetch(&net, 1, &w, KeyTarget::Cluster(ClusterId(cluster)), None).unwrap();
    // A second worker, not in the cluster, gets its worker key but not the cluster's.
    let (w2, w2h) = worker();
    let b = ch.emit_ok("gatekeeper", &["register-worker", "--worker", &w2h]);
    net.wait_applied(&[1], b);
    fetch(&net, 1, &w2, KeyTarget::Worker, None).unwrap();
    refused(
        fetch(&net, 1, &w2, KeyTarget::Cluster(ClusterId(cluster)), None),
        tonic::Code::PermissionDenied,
        "not assigned",
    );

    // Slash: once one node has committed the slash block, every node refuses (linearizable
    // reads see every committed entry).
    let slash = ch.emit_ok(
        "gatekeeper",
        &["slash-worker", "--worker", &wh, "--reason", "equivocation"],
    );
    net.wait_applied(&[3], slash);
    for i in ALL {
        refused(
            fetch(&net, i, &w, KeyTarget::Worker, None),
            tonic::Code::PermissionDenied,
            "equivocation",
        );
        refused(
            fetch(&net, i, &w, KeyTarget::Contract(ContractId(contract)), None),
            tonic::Code::PermissionDenied,
            "slashed",
        );
    }
    // A slash is final for that worker key: neither a re-registration nor deregistering and
    // registering again lifts it (docs/chain.md §2).
    let b = ch.emit_ok("gatekeeper", &["register-worker", "--worker", &wh]);
    net.wait_applied(&[2], b);
    let b = ch.emit_ok("gatekeeper", &["deregister-worker", "--worker", &wh]);
    net.wait_applied(&[2], b);
    let b = ch.emit_ok("gatekeeper", &["register-worker", "--worker", &wh]);
    net.wait_applied(&[2], b);
    refused(
        fetch(&net, 2, &w, KeyTarget::Worker, None),
        tonic::Code::PermissionDenied,
        "slashed",
    );
    // Deregistration refuses; a re-registration re-activates a deregistered (not slashed)
    // worker.
    let dereg = ch.emit_ok("gatekeeper", &["deregister-worker", "--worker", &w2h]);
    net.wait_applied(&[1], dereg);
    for i in ALL {
        refused(
            fetch(&net, i, &w2, KeyTarget::Worker, None),
            tonic::Code::PermissionDenied,
            "deregistered",
        );
    }
    let b = ch.emit_ok("gatekeeper", &["register-worker", "--worker", &w2h]);
    net.wait_applied(&[3], b);
    fetch(&net, 3, &w2, KeyTarget::Worker, None).unwrap();
    let dereg = ch.emit_ok("gatekeeper", &["deregister-worker", "--worker", &w2h]);
    net.wait_applied(&[1], dereg);

    // Status: connected, following this chain, every chain event applied once.
    let genesis = ch.status().unwrap()["genesis_hash"]
        .as_str()
        .unwrap()
        .trim_start_matches("0x")
        .to_string();
    let emitted = ch.events().len() as u64;
    net.wait_applied(&ALL, dereg);
    for i in ALL {
        let s = net.chain_status(i);
        assert!(s.connected, "node {i}: {s:?}");
        assert_eq!(s.profile, "gatekeeper");
        assert_eq!(s.genesis_hash, genesis);
        assert_eq!(s.url, ch.url());
        assert_eq!(
            (s.events_applied, s.events_ignored),
            (emitted, 0),
            "node {i}: {s:?}"
        );
    }
}

#[test]
fn a_rotation_requested_on_chain_rotates_once_even_when_seen_twice() {
    let net = start(3, DevChainOpts::default(), &[]);
    let ch = &net.chain;
    let (w, wh) = worker();
    let b = ch.emit_ok("gatekeeper", &["register-worker", "--worker", &wh]);
    net.wait_applied(&ALL, b);
    let old = pk(&fetch(&net, 1, &w, KeyTarget::Worker, None).unwrap());

    ch.emit_ok("gatekeeper", &["request-rotation", "--rotation-id", "7"]);
    let again = ch.emit_ok("gatekeeper", &["request-rotation", "--rotation-id", "7"]);
    net.wait_applied(&ALL, again);
    net.wait_unsealed(&ALL, 2);
    let new: Vec<[u8; 32]> = ALL
        .iter()
        .map(|&i| {
            let k = fetch(&net, i, &w, KeyTarget::Worker, None).unwrap();
            assert_eq!(k.epoch, 1, "node {i} serves the new epoch by default");
            pk(&k)
        })
        .collect();
    assert!(new.windows(2).all(|k| k[0] == k[1]));
    assert_ne!(new[0], old, "a new epoch derives new keys");
    // The old epoch still serves (until retired).
    assert_eq!(
        pk(&fetch(&net, 2, &w, KeyTarget::Worker, Some(0)).unwrap()),
        old
    );
    // Seen twice, rotated once: exactly epochs 0 and 1, no dealing in progress.
    for i in ALL {
        let s = net.status(i).unwrap();
        let epochs: Vec<(u64, String)> = s
            .epochs
            .iter()
            .map(|e| (e.epoch, e.status.clone()))
            .collect();
        assert_eq!(
            epochs,
            vec![(0, "active".into()), (1, "active".into())],
            "node {i}"
        );
        assert_eq!(s.chain.unwrap().events_applied, 3);
    }
}

#[test]
fn killing_the_leader_while_events_flow_loses_and_repeats_no_event() {
    let mut net = start(
        3,
        DevChainOpts {
            block_time_ms: 150,
            ..Default::default()
        },
        &[],
    );
    let workers: Vec<(Sr25519Keypair, String)> = (0..8).map(|_| worker()).collect();
    let hexes: Vec<String> = workers.iter().map(|w| w.1.clone()).collect();
    // The emitter: register every worker, then slash some and deregister others, one action
    // per block, through the dev chain CLI while the test kills the leader.
    let mut actions: Vec<Vec<String>> = vec![];
    for h in &hexes {
        actions.push(vec!["register-worker".into(), "--worker".into(), h.clone()]);
    }
    for (k, h) in hexes.iter().enumerate() {
        let w = h.clone();
        actions.push(match k % 3 {
            0 => vec![
                "slash-worker".into(),
                "--worker".into(),
                w,
                "--reason".into(),
                format!("r{k}"),
            ],
            1 => vec!["deregister-worker".into(), "--worker".into(), w],
            _ => vec![
                "register-worker".into(),
                "--worker".into(),
                w,
                "--confidence-level".into(),
                "3".into(),
            ],
        });
    }
    let Net { c, chain } = &mut net;
    let last = std::thread::scope(|scope| {
        let emitter = scope.spawn(|| {
            actions
                .iter()
                .map(|a| {
                    let args: Vec<&str> = a.iter().map(String::as_str).collect();
                    chain.emit_ok("gatekeeper", &args)
                })
                .last()
                .expect("actions")
        });
        // Let a few events commit, then SIGKILL the leader mid-flow and bring it back.
        std::thread::sleep(Duration::from_millis(1200));
        let leader = c.leader();
        c.kill9(leader);
        let rest: Vec<u64> = ALL.iter().copied().filter(|&i| i != leader).collect();
        let new_leader = c.leader_among(&rest);
        assert_ne!(new_leader, leader);
        std::thread::sleep(Duration::from_millis(800));
        c.restart(leader);
        emitter.join().expect("the emitter finished")
    });
    net.wait_applied(&ALL, last);
    // The killed leader came back and unsealed from its peers before its keys are asked for
    // (a node still unsealing answers NODE_SEALED, which is not what this test checks).
    net.wait_unsealed(&ALL, 1);

    // Compare with the chain's full event list: every event applied exactly once, on every node.
    let events = net.chain.events();
    assert_eq!(events.len(), 16);
    let mut expect: BTreeMap<String, &str> = BTreeMap::new();
    for e in &events {
        let ev = &e["event"]["Gatekeeper"];
        let (name, body) = ev.as_object().unwrap().iter().next().unwrap();
        let w = body["worker"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x")
            .to_string();
        expect.insert(
            w,
            match name.as_str() {
                "WorkerRegistered" => "active",
                "WorkerSlashed" => "slashed",
                "WorkerDeregistered" => "deregistered",
                other => panic!("unexpected {other}"),
            },
        );
    }
    for i in ALL {
        let s = net.chain_status(i);
        assert_eq!(
            (s.events_applied, s.events_ignored),
            (16, 0),
            "node {i}: {s:?}"
        );
    }
    for (w, h) in &workers {
        let want = expect[h];
        for i in ALL {
            let r = fetch(&net, i, w, KeyTarget::Worker, None);
            match want {
                "active" => {
                    r.unwrap_or_else(|e| net.fail(&format!("worker {h} on node {i}: {e}")));
                }
                "slashed" => refused(r, tonic::Code::PermissionDenied, "slashed"),
                _ => refused(r, tonic::Code::PermissionDenied, "deregistered"),
            }
        }
    }
}

#[test]
fn the_watcher_reconnects_after_the_chain_restarts_and_fills_the_gap() {
    let mut net = start(
        3,
        DevChainOpts::default(),
        &[
            "chain_reconnect_min_ms = 1500",
            "chain_reconnect_max_ms = 3000",
            "chain_stall_ms = 2000",
        ],
    );
    let (w1, w1h) = worker();
    let (w2, w2h) = worker();
    let b = net
        .chain
        .emit_ok("gatekeeper", &["register-worker", "--worker", &w1h]);
    net.wait_applied(&ALL, b);

    // A stalled chain shows as stalled; issuance goes on.
    net.chain.pause();
    for i in ALL {
        net.c.wait_for(
            &format!("node {i} to report the chain stalled"),
            WAIT,
            || {
                let s = net.status(i)?.chain.ok_or("no chain")?;
                if s.stalled {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            },
        );
    }
    fetch(&net, 2, &w1, KeyTarget::Worker, None).unwrap();
    for i in ALL {
        assert_eq!(
            net.c.metric(i, "gatekeeper_chain_stalled"),
            Ok(1.0),
            "node {i}"
        );
        assert!(
            net.c
                .metric(i, "gatekeeper_chain_last_finalized_age_seconds")
                .unwrap()
                >= 2.0
        );
    }
    net.chain.resume();
    for i in ALL {
        net.c.wait_for(
            &format!("node {i} to see the chain advance again"),
            WAIT,
            || {
                let s = net.status(i)?.chain.ok_or("no chain")?;
                if !s.stalled && s.connected {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            },
        );
    }

    // The chain goes away: every node reports it, and keys are still served.
    net.chain.kill9();
    for i in ALL {
        net.c.wait_for(
            &format!("node {i} to report the chain disconnected"),
            WAIT,
            || {
                let s = net.status(i)?.chain.ok_or("no chain")?;
                if !s.connected && !s.last_error.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            },
        );
    }
    fetch(&net, 3, &w1, KeyTarget::Worker, None).unwrap();
    for i in ALL {
        assert_eq!(
            net.c.metric(i, "gatekeeper_chain_connected"),
            Ok(0.0),
            "node {i}"
        );
        assert!(
            net.c
                .metric(i, "gatekeeper_chain_reconnects_total")
                .unwrap()
                >= 1.0
        );
    }

    // It comes back (same blocks, same URL) and events land while the watchers back off: they
    // reconnect and apply the gap block by block.
    net.chain.restart();
    net.chain
        .emit_ok("gatekeeper", &["register-worker", "--worker", &w2h]);
    let slash = net.chain.emit_ok(
        "gatekeeper",
        &["slash-worker", "--worker", &w1h, "--reason", "gap"],
    );
    net.wait_applied(&ALL, slash);
    for i in ALL {
        // A follower's state arrives through Raft; its own watcher may still be backing off.
        net.c
            .wait_for(&format!("node {i}'s watcher to reconnect"), WAIT, || {
                let s = net.status(i)?.chain.ok_or("no chain")?;
                if s.connected && s.finalized >= slash {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            });
        let s = net.chain_status(i);
        assert_eq!(s.events_applied, 3, "node {i}: {s:?}");
        assert_eq!(
            net.c.metric(i, "gatekeeper_chain_events_applied_total"),
            Ok(3.0)
        );
        assert_eq!(net.c.metric(i, "gatekeeper_chain_connected"), Ok(1.0));
        assert_eq!(
            net.c
                .metric(i, "gatekeeper_chain_lag_blocks")
                .map(|l| l < 20.0),
            Ok(true)
        );
        assert!(s.reconnects > 0, "node {i}: {s:?}");
        fetch(&net, i, &w2, KeyTarget::Worker, None).unwrap();
        refused(
            fetch(&net, i, &w1, KeyTarget::Worker, None),
            tonic::Code::PermissionDenied,
            "gap",
        );
    }
}

#[test]
fn the_phala_profile_drives_the_same_outcomes_from_phala_pallet_events() {
    let net = start(3, DevChainOpts::default(), &["chain_profile = \"phala\""]);
    let ch = &net.chain;
    let (w, wh) = worker();
    let b = ch.emit_ok(
        "phala",
        &["register-worker", "--worker", &wh, "--provider", "ias"],
    );
    net.wait_applied(&ALL, b);
    fetch(&net, 1, &w, KeyTarget::Worker, None).unwrap();

    let cluster = [0x71; 32];
    let contract = [0x72; 32];
    let b = cluster_with_contract(ch, "phala", &wh, cluster, contract);
    net.wait_applied(&ALL, b);
    let ck = pk(&fetch(&net, 2, &w, KeyTarget::Contract(ContractId(contract)), None).unwrap());
    assert_eq!(
        pk(&fetch(&net, 3, &w, KeyTarget::Contract(ContractId(contract)), None).unwrap()),
        ck
    );

    // The gatekeeper pallet's events are not this profile's: ignored, nothing changes.
    let b = ch.emit_ok(
        "gatekeeper",
        &["slash-worker", "--worker", &wh, "--reason", "wrong pallet"],
    );
    net.wait_applied(&[1], b);
    fetch(&net, 1, &w, KeyTarget::Worker, None).unwrap();

    // Unresponsive (Phala's slash) refuses; back to responsive serves again.
    let b = ch.emit_ok("phala", &["slash-worker", "--worker", &wh]);
    net.wait_applied(&[2], b);
    for i in ALL {
        refused(
            fetch(&net, i, &w, KeyTarget::Worker, None),
            tonic::Code::PermissionDenied,
            "unresponsive",
        );
    }
    let b = ch.emit_ok("phala", &["recover-worker", "--worker", &wh]);
    net.wait_applied(&[3], b);
    assert_eq!(
        pk(&fetch(&net, 3, &w, KeyTarget::Contract(ContractId(contract)), None).unwrap()),
        ck
    );
    // A reclaim that lost stake refuses for good: a re-registration does not lift it.
    let b = ch.emit_ok(
        "phala",
        &["reclaim-worker", "--worker", &wh, "--slashed", "10"],
    );
    net.wait_applied(&ALL, b);
    for i in ALL {
        refused(
            fetch(&net, i, &w, KeyTarget::Worker, None),
            tonic::Code::PermissionDenied,
            "slashed on reclaim",
        );
        let s = net.chain_status(i);
        assert_eq!(s.profile, "phala");
        assert_eq!(s.events_ignored, 0, "{s:?}");
    }
    let b = ch.emit_ok("phala", &["register-worker", "--worker", &wh]);
    net.wait_applied(&ALL, b);
    for i in ALL {
        refused(
            fetch(&net, i, &w, KeyTarget::Worker, None),
            tonic::Code::PermissionDenied,
            "slashed on reclaim",
        );
    }
}

#[test]
fn malformed_events_are_skipped_and_reported_and_never_stop_the_node() {
    let net = start(
        3,
        DevChainOpts {
            broken_shapes: true,
            ..Default::default()
        },
        &[],
    );
    let ch = &net.chain;
    let (w, wh) = worker();
    let b = ch.emit_ok("gatekeeper", &["register-worker", "--worker", &wh]);
    net.wait_applied(&ALL, b);

    // This chain's WorkerSlashed carries a u32 and a u64 where the spec has a key and text;
    // its MasterKeyRotationRequested carries text where the spec has a u64.
    let bad = ch.emit_ok(
        "gatekeeper",
        &[
            "raw",
            r#"{"Gatekeeper": {"WorkerSlashed": {"worker": 7, "reason": 9}}}"#,
        ],
    );
    let bad_rot = ch.emit_ok(
        "gatekeeper",
        &[
            "raw",
            r#"{"Gatekeeper": {"MasterKeyRotationRequested": {"rotation_id": "next"}}}"#,
        ],
    );
    net.wait_applied(&ALL, bad_rot);
    for i in ALL {
        assert!(net.c.is_running(i), "node {i} stopped");
        let s = net.chain_status(i);
        assert_eq!(
            (s.events_applied, s.events_ignored),
            (1, 2),
            "node {i}: {s:?}"
        );
        let names: Vec<(u64, u32, &str)> = s
            .recent_ignored
            .iter()
            .map(|e| (e.block, e.index, e.name.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                (bad, 1, "Gatekeeper.WorkerSlashed"),
                (bad_rot, 1, "Gatekeeper.MasterKeyRotationRequested")
            ]
        );
        assert!(
            s.recent_ignored[0].reason.contains("worker"),
            "{:?}",
            s.recent_ignored[0]
        );
        // Not slashed, not rotated.
        fetch(&net, i, &w, KeyTarget::Worker, None).unwrap();
        assert_eq!(net.status(i).unwrap().epochs.len(), 1);
    }
    // The leader logged the skip with block and index.
    let leader = net.c.leader();
    let log = std::fs::read_to_string(net.c.stderr_log(leader)).unwrap();
    assert!(
        log.lines().any(|l| l.contains("unexpected shape")
            && l.contains(&format!("block={bad}"))
            && l.contains("index=1")),
        "no warning for block {bad} in the leader's log"
    );
    // And the watcher goes on: a well-formed deregistration applies.
    let b = ch.emit_ok("gatekeeper", &["deregister-worker", "--worker", &wh]);
    net.wait_applied(&ALL, b);
    refused(
        fetch(&net, 1, &w, KeyTarget::Worker, None),
        tonic::Code::PermissionDenied,
        "deregistered",
    );
}

/// A cluster started on a chain that already holds a registry reads it from storage at a
/// finalized block (it does not replay the blocks before), then follows events from the next.
fn bootstraps_from_storage(profile: &str, denied: &str) {
    let (w1, h1) = worker();
    let (w2, h2) = worker();
    let (cluster, contract) = ([0x81; 32], [0x82; 32]);
    let mut before = 0;
    let net = start_after(
        3,
        DevChainOpts::default(),
        &[&format!("chain_profile = \"{profile}\"")],
        |ch| {
            for h in [&h1, &h2] {
                ch.emit_ok(profile, &["register-worker", "--worker", h]);
            }
            ch.emit_ok(
                profile,
                &["slash-worker", "--worker", &h2, "--reason", "before"],
            );
            before = cluster_with_contract(ch, profile, &h1, cluster, contract);
            if profile == "gatekeeper" {
                // Not registry state: a bootstrap does not see it.
                before = ch.emit_ok(profile, &["request-rotation"]);
            }
        },
    );
    // Gatekeeper: two workers, a cluster, a contract. Phala: two workers, a cluster, its
    // workers, a contract, two session bindings and two sessions.
    let entries = if profile == "gatekeeper" { 4 } else { 9 };
    for i in ALL {
        net.c.wait_for(&format!("node {i} to bootstrap"), WAIT, || {
            let s = net.chain_status(i);
            match &s.bootstrap {
                Some(b) if b.complete && s.cursor.block_complete => Ok(()),
                _ => Err(format!("{s:?}")),
            }
        });
        let s = net.chain_status(i);
        let b = s.bootstrap.clone().unwrap();
        assert!(
            b.block >= before,
            "bootstrap at {} before block {before}",
            b.block
        );
        assert_eq!(b.entries, entries, "{s:?}");
        assert!(s.cursor.block >= b.block);
        assert_eq!(s.events_ignored, 0, "{s:?}");
    }
    for i in ALL {
        fetch(&net, i, &w1, KeyTarget::Worker, None).unwrap();
        fetch(
            &net,
            i,
            &w1,
            KeyTarget::Contract(ContractId(contract)),
            None,
        )
        .unwrap();
        fetch(&net, i, &w1, KeyTarget::Cluster(ClusterId(cluster)), None).unwrap();
        refused(
            fetch(&net, i, &w2, KeyTarget::Worker, None),
            tonic::Code::PermissionDenied,
            denied,
        );
    }
    // The rotation requested before the bootstrap block started nothing.
    let s = net.status(1).unwrap();
    assert_eq!(s.epochs.len(), 1, "{:?}", s.epochs);
    // Events after the bootstrap block apply as usual.
    let b = net.chain.emit_ok(
        profile,
        &["slash-worker", "--worker", &h1, "--reason", "after"],
    );
    net.wait_applied(&ALL, b);
    for i in ALL {
        refused(
            fetch(&net, i, &w1, KeyTarget::Worker, None),
            tonic::Code::PermissionDenied,
            denied,
        );
    }
}

#[test]
fn a_cluster_joining_a_long_chain_bootstraps_from_storage_gatekeeper_profile() {
    bootstraps_from_storage("gatekeeper", "slashed");
}

#[test]
fn a_cluster_joining_a_long_chain_bootstraps_from_storage_phala_profile() {
    bootstraps_from_storage("phala", "unresponsive");
}
