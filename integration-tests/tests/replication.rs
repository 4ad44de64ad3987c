//! Replication, failover and recovery of real `gatekeeper node` processes (3 or 5 on loopback),
//! driven through `gatekeeper admin` and the AdminService gRPC API.
//!
//! Every wait is bounded (see `gatekeeper_integration_tests::WAIT`); failures print the last
//! observation and the tail of every node's logs, and keep the cluster directory.

use gatekeeper_integration_tests::{
    admin_client, pb, Cluster, Consistency, GetReply, Opts, PutAck, ADMIN_TIMEOUT, JOIN_TIMEOUT,
    WAIT,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// helpers

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A linearizable read on node `i`, retried while the read fails (no leader yet, election) but
/// never while it returns a value: a successful linearizable read must already see `expected`.
fn lin_read(c: &Cluster, i: u64, key: &str, expected: Option<&str>) -> GetReply {
    let r = c.wait_for(
        &format!("a linearizable read of {key:?} on node {i} to succeed"),
        WAIT,
        || c.get(i, key, Consistency::Linearizable),
    );
    if r.value.as_deref() != expected {
        c.fail(&format!(
            "linearizable read of {key:?} on node {i} returned {r:?}, expected value {expected:?}"
        ));
    }
    assert_eq!(r.served_by, i, "read of {key:?} served by the wrong node");
    r
}

fn others(c: &Cluster, not: u64) -> Vec<u64> {
    c.ids().into_iter().filter(|&i| i != not).collect()
}

/// Write `keys` (key = value) through the gRPC API of node `via`, 4 at a time, retrying each
/// failed write (the same value, so a retry that lands twice is harmless here). Returns the
/// highest acknowledged log index.
fn grpc_put_all(c: &Cluster, rt: &tokio::runtime::Runtime, via: u64, keys: &[String]) -> u64 {
    let url = c.admin_target(via);
    let res: Result<u64, String> = rt.block_on(async {
        let client = admin_client(&url).map_err(|e| e.to_string())?;
        let mut max_index = 0;
        for chunk in keys.chunks(4) {
            let mut set = tokio::task::JoinSet::new();
            for k in chunk {
                let mut client = client.clone();
                let k = k.clone();
                set.spawn(async move {
                    let deadline = Instant::now() + WAIT;
                    loop {
                        let req = pb::WriteCanaryRequest {
                            key: k.clone(),
                            value: k.clone(),
                            authorization: None,
                        };
                        match client.write_canary(req).await {
                            Ok(r) => return Ok(r.into_inner().log_index),
                            Err(e) if Instant::now() < deadline => {
                                let _ = e;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => return Err(format!("WriteCanary {k:?}: {e}")),
                        }
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                max_index = max_index.max(r.map_err(|e| e.to_string())??);
            }
        }
        Ok(max_index)
    });
    res.unwrap_or_else(|e| c.fail(&format!("bulk write via node {via} failed: {e}")))
}

/// Read every key from node `i` through gRPC (16 at a time), retrying reads that fail.
fn grpc_read_all(
    c: &Cluster,
    rt: &tokio::runtime::Runtime,
    i: u64,
    keys: &[String],
    consistency: pb::ReadConsistency,
) -> BTreeMap<String, Option<String>> {
    let url = c.admin_target(i);
    let res: Result<BTreeMap<String, Option<String>>, String> = rt.block_on(async {
        let client = admin_client(&url).map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for chunk in keys.chunks(16) {
            let mut set = tokio::task::JoinSet::new();
            for k in chunk {
                let mut client = client.clone();
                let k = k.clone();
                set.spawn(async move {
                    let deadline = Instant::now() + WAIT;
                    loop {
                        let req = pb::ReadCanaryRequest {
                            key: k.clone(),
                            consistency: consistency as i32,
                        };
                        match client.read_canary(req).await {
                            Ok(r) => {
                                let r = r.into_inner();
                                if r.served_by != i {
                                    return Err(format!("read of {k:?} served by {}", r.served_by));
                                }
                                return Ok((k, r.value));
                            }
                            Err(e) if Instant::now() < deadline => {
                                let _ = e;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => return Err(format!("ReadCanary {k:?} on node {i}: {e}")),
                        }
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                let (k, v) = r.map_err(|e| e.to_string())??;
                out.insert(k, v);
            }
        }
        Ok(out)
    });
    res.unwrap_or_else(|e| c.fail(&format!("bulk read on node {i} failed: {e}")))
}

/// `admin leave` of `id` via `via`, retried while it fails (e.g. during an election) until the
/// membership seen by `via` no longer lists `id`.
fn leave_ok(c: &Cluster, via: u64, id: u64) {
    c.wait_for(
        &format!("node {id} to be removed (leave via node {via})"),
        WAIT,
        || {
            let m = c.members(via)?;
            if !m.members.iter().any(|m| m.id == id) {
                return Ok(());
            }
            c.leave(via, id).map_err(|e| {
                eprintln!("leave of node {id} via {via} failed (will retry): {e}");
                e
            })
        },
    );
}

/// `admin join` of `id` via `via`, retried while it fails (e.g. during an election) until the
/// membership seen by `via` lists `id` as a voter.
fn join_ok(c: &Cluster, via: u64, id: u64) {
    c.wait_for(
        &format!("node {id} to join as a voter (join via node {via})"),
        JOIN_TIMEOUT,
        || {
            let m = c.members(via)?;
            if m.members.iter().any(|m| m.id == id && m.voter) {
                return Ok(());
            }
            c.join(via, id).map_err(|e| {
                eprintln!("join of node {id} via {via} failed (will retry): {e}");
                e
            })
        },
    );
}

fn unique_suffix() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
/// Group commit (raft `batch`): writes sent together, to the leader and through a follower,
/// share log entries, and each still gets its own reply: its own audit sequence, its value on
/// every node. Rounds of 48 concurrent writes until one round shows a shared entry (the first
/// almost always does; a write that finds the log idle goes alone).
#[test]
fn a_concurrent_writes_share_log_entries_and_each_gets_its_own_reply() {
    let c = Cluster::start(3, Opts::default());
    let rt = runtime();
    let leader = c.leader();
    let follower = others(&c, leader)[0];
    let mut all_keys = Vec::new();
    let mut seqs = BTreeSet::new();
    let mut shared = false;
    for round in 0..5 {
        let keys: Vec<String> = (0..48).map(|i| format!("gc-{round}-{i}")).collect();
        let acks: Vec<pb::WriteCanaryResponse> = rt.block_on(async {
            // One connection per node (the admin listener caps connections per source).
            let to_leader = admin_client(&c.admin_target(leader)).unwrap();
            let to_follower = admin_client(&c.admin_target(follower)).unwrap();
            let mut set = tokio::task::JoinSet::new();
            for (n, k) in keys.iter().enumerate() {
                let mut client = if n % 3 == 0 {
                    to_follower.clone()
                } else {
                    to_leader.clone()
                };
                let k = k.clone();
                set.spawn(async move {
                    client
                        .write_canary(pb::WriteCanaryRequest {
                            key: k.clone(),
                            value: format!("v-{k}"),
                            authorization: None,
                        })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|e| format!("{k}: {e}"))
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.unwrap().unwrap_or_else(|e| panic!("write failed: {e}")));
            }
            out
        });
        let indexes: BTreeSet<u64> = acks.iter().map(|a| a.log_index).collect();
        for a in &acks {
            assert!(
                seqs.insert(a.audit_sequence),
                "audit sequence {} given twice",
                a.audit_sequence
            );
        }
        all_keys.extend(keys);
        if indexes.len() < acks.len() {
            eprintln!(
                "round {round}: {} writes in {} entries",
                acks.len(),
                indexes.len()
            );
            shared = true;
            break;
        }
    }
    assert!(shared, "no two concurrent writes ever shared a log entry");
    let head = c.put_ok(leader, "gc-last", "x").log_index;
    c.wait_converged(&c.ids(), head);
    for i in c.ids() {
        let view = grpc_read_all(&c, &rt, i, &all_keys, pb::ReadConsistency::Stale);
        for k in &all_keys {
            assert_eq!(
                view[k].as_deref(),
                Some(format!("v-{k}").as_str()),
                "node {i}: {k}"
            );
        }
    }
}

// a. initialisation, leader election, forwarding, reads everywhere

#[test]
fn a_cluster_elects_a_leader_and_writes_on_any_node_are_readable_on_all() {
    let c = Cluster::start(3, Opts::default());
    let ids = c.ids();
    let all: BTreeSet<u64> = ids.iter().copied().collect();
    c.leader();

    // Every node reports itself and the three voters with the addresses it was given...
    for &i in &ids {
        let s = c.status(i).unwrap_or_else(|e| c.fail(&e));
        assert_eq!(s.node_id, i, "status of node {i}: {s:?}");
        assert_eq!(s.voter_ids(), all, "voters seen by node {i}: {s:?}");
        for m in &s.members {
            assert_eq!(m.raft_address, c.raft_addr(m.id), "node {i}: {s:?}");
            assert_eq!(m.api_address, c.api_addr(m.id), "node {i}: {s:?}");
        }
        assert!(s.term >= 1, "node {i}: {s:?}");
        let m = c.members(i).unwrap_or_else(|e| c.fail(&e));
        let ids_in: BTreeSet<u64> = m.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        assert_eq!(ids_in, all, "members on node {i}: {m:?}");
    }
    // ...and one leader with two followers, in `status` and `members` alike (re-observed if an
    // election happens meanwhile).
    c.wait_for(
        "one leader and two followers in status and members",
        WAIT,
        || {
            let l = c.agreed_leader(&ids)?;
            for &i in &ids {
                let s = c.status(i)?;
                let m = c.members(i)?;
                let expected_role = if i == l { "leader" } else { "follower" };
                if s.role != expected_role || m.leader_id != Some(l) {
                    return Err(format!("leader {l}; node {i}: {s:?}; members {m:?}"));
                }
            }
            Ok(())
        },
    );

    // A write sent to each node (followers forward to the leader) commits...
    let mut acks: Vec<(String, String, PutAck)> = Vec::new();
    for &i in &ids {
        let key = format!("a-written-via-{i}");
        let value = format!("hello from {i}");
        let ack = c.put_ok(i, &key, &value);
        assert!(all.contains(&ack.leader_id), "ack {ack:?}");
        acks.push((key, value, ack));
    }
    // ...in order: later writes get later log indexes and audit sequence numbers.
    for w in acks.windows(2) {
        assert!(
            w[1].2.log_index > w[0].2.log_index && w[1].2.audit_sequence > w[0].2.audit_sequence,
            "acks out of order: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    // ...and a linearizable read on every node sees every write.
    for &i in &ids {
        for (key, value, ack) in &acks {
            let r = lin_read(&c, i, key, Some(value));
            assert!(
                r.applied_index >= ack.log_index,
                "read on node {i} served from index {} < the write's {}",
                r.applied_index,
                ack.log_index
            );
        }
        lin_read(&c, i, "a-never-written", None);
    }
}

// ---------------------------------------------------------------------------------------------
// b. kill -9 the leader of 5 under a write load

struct Attempt {
    key: String,
    value: String,
    target: u64,
    started: Instant,
    result: Result<pb::WriteCanaryResponse, String>,
}

#[test]
fn b_killing_the_leader_under_write_load_loses_no_acknowledged_write() {
    const WRITERS: usize = 3;
    let c = Cluster::start(5, Opts::default());
    let ids = c.ids();
    let old = c.leader();
    // The audit sequence counts every committed command, including the master-key keeper's
    // (member registration, genesis dealing, share acknowledgements). Take the baseline once
    // genesis has settled (every node unsealed): after that the keeper commits nothing until the
    // membership changes, so every later step of the sequence is a canary write.
    for &i in &ids {
        c.wait_for(
            &format!("node {i} to finish genesis"),
            Duration::from_secs(45),
            || {
                let out = c.admin(i, &["status", "--json"]);
                let v: serde_json::Value = serde_json::from_str(&out.stdout)
                    .map_err(|e| format!("{e}: {}", out.describe()))?;
                if v["seal_status"] == "unsealed" {
                    Ok(())
                } else {
                    Err(format!("seal_status {}", v["seal_status"]))
                }
            },
        );
    }
    let baseline = c.wait_converged(&ids, 0)[0].audit_sequence;

    let rt = runtime();
    let live: Arc<Mutex<Vec<(u64, gatekeeper_integration_tests::Target)>>> = Arc::new(Mutex::new(
        ids.iter().map(|&i| (i, c.admin_target(i))).collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let run = unique_suffix();
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let (live, stop, attempts) = (live.clone(), stop.clone(), attempts.clone());
        handles.push(rt.spawn(async move {
            let mut clients = BTreeMap::new();
            let mut seq = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let (target, url) = {
                    let l = live.lock().unwrap();
                    l[(seq * WRITERS + w) % l.len()].clone()
                };
                let client = match clients.get(&target) {
                    Some(c) => c,
                    None => {
                        let made = admin_client(&url).expect("client");
                        clients.entry(target).or_insert(made)
                    }
                };
                let mut client = client.clone();
                let key = format!("b-w{w}-{seq:06}");
                let value = format!("v-{run}-{w}-{seq}");
                let req = pb::WriteCanaryRequest {
                    key: key.clone(),
                    value: value.clone(),
                    authorization: None,
                };
                let started = Instant::now();
                let result =
                    match tokio::time::timeout(Duration::from_secs(10), client.write_canary(req))
                        .await
                    {
                        Ok(Ok(r)) => Ok(r.into_inner()),
                        Ok(Err(e)) => Err(format!("{}: {}", e.code(), e.message())),
                        Err(_) => Err("client timeout (10 s)".to_string()),
                    };
                let failed = result.is_err();
                attempts.lock().unwrap().push(Attempt {
                    key,
                    value,
                    target,
                    started,
                    result,
                });
                if failed {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seq += 1;
            }
        }));
    }
    let acked_count = |pred: &dyn Fn(&Attempt, &pb::WriteCanaryResponse) -> bool| {
        attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.result.as_ref().is_ok_and(|r| pred(a, r)))
            .count()
    };
    let summary = |attempts: &Mutex<Vec<Attempt>>| {
        let a = attempts.lock().unwrap();
        let ok = a.iter().filter(|a| a.result.is_ok()).count();
        let last_err = a
            .iter()
            .rev()
            .find_map(|a| a.result.as_ref().err().cloned());
        format!(
            "{} attempts, {ok} acknowledged; last error: {last_err:?}",
            a.len()
        )
    };

    // The load commits before the failure...
    c.wait_for("20 acknowledged writes before the kill", WAIT, || {
        if acked_count(&|_, _| true) >= 20 {
            Ok(())
        } else {
            Err(summary(&attempts))
        }
    });

    // ...kill -9 the leader (writers stop sending to it first; requests in flight to it fail)...
    live.lock().unwrap().retain(|(i, _)| *i != old);
    c.kill9(old);
    let killed_at = Instant::now();
    let survivors: Vec<u64> = others(&c, old);

    // ...a new leader is elected and commits the load.
    let new = c.leader_among(&survivors);
    assert_ne!(new, old);
    c.wait_for(
        &format!("20 writes sent after the kill acknowledged by a new leader (first: {new})"),
        WAIT,
        || {
            if acked_count(&|a, r| r.leader_id != old && a.started > killed_at) >= 20 {
                Ok(())
            } else {
                Err(summary(&attempts))
            }
        },
    );
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for h in handles {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("writer stops within 30 s")
                .expect("writer task");
        }
    });
    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let acked: Vec<(&Attempt, &pb::WriteCanaryResponse)> = attempts
        .iter()
        .filter_map(|a| a.result.as_ref().ok().map(|r| (a, r)))
        .collect();
    eprintln!(
        "load: {} attempts, {} acknowledged, old leader {old}, new leader {new}",
        attempts.len(),
        acked.len()
    );

    // Nothing is acknowledged by a dead leader, and no two writes share an audit sequence
    // (writes committed together share one log entry, so its index).
    for (a, r) in &acked {
        if a.started > killed_at {
            assert_ne!(
                r.leader_id, old,
                "write {} sent after the kill was acknowledged by the dead leader: {r:?}",
                a.key
            );
        }
    }
    let indexes: BTreeSet<u64> = acked.iter().map(|(_, r)| r.log_index).collect();
    let seqs: BTreeSet<u64> = acked.iter().map(|(_, r)| r.audit_sequence).collect();
    assert_eq!(seqs.len(), acked.len(), "two acks share an audit sequence");
    let max_index = indexes.iter().max().copied().unwrap_or(0);

    // Survivors converge on the same applied state.
    let statuses = c.wait_converged(&survivors, max_index);
    let final_audit = statuses[0].audit_sequence;

    // Every acknowledged write is on every survivor with its value; every other attempt is either
    // absent everywhere or present everywhere with its own value.
    let keys: Vec<String> = attempts.iter().map(|a| a.key.clone()).collect();
    let mut views = BTreeMap::new();
    for &i in &survivors {
        views.insert(
            i,
            grpc_read_all(&c, &rt, i, &keys, pb::ReadConsistency::Linearizable),
        );
    }
    let mut problems = Vec::new();
    let mut present = 0u64;
    for a in &attempts {
        let seen: Vec<(u64, Option<String>)> = survivors
            .iter()
            .map(|i| (*i, views[i][&a.key].clone()))
            .collect();
        let first = &seen[0].1;
        if seen.iter().any(|(_, v)| v != first) {
            problems.push(format!("{}: survivors disagree: {seen:?}", a.key));
        }
        match (&a.result, first) {
            (Ok(r), v) if v.as_deref() != Some(a.value.as_str()) => problems.push(format!(
                "{}: acknowledged at index {} (via node {}), but survivors read {seen:?}",
                a.key, r.log_index, a.target
            )),
            (_, Some(v)) if *v != a.value => problems.push(format!(
                "{}: written as {:?}, read as {v:?}",
                a.key, a.value
            )),
            _ => {}
        }
        if first.is_some() {
            present += 1;
        }
    }
    if !problems.is_empty() {
        c.fail(&format!(
            "{} of {} writes are wrong after the failover; first ones:\n{}",
            problems.len(),
            attempts.len(),
            problems[..problems.len().min(20)].join("\n")
        ));
    }
    // Each committed write was applied exactly once: the audit sequence advanced by exactly the
    // number of writes that are present.
    assert_eq!(
        final_audit - baseline,
        present,
        "audit_sequence went from {baseline} to {final_audit}, but {present} distinct writes are \
         present (of {} attempted, {} acknowledged): some write was applied more (or less) than once",
        attempts.len(),
        acked.len()
    );
}

// ---------------------------------------------------------------------------------------------
// c. a killed node restarts and catches up

/// A follower that was down while large entries were written catches up: openraft sends up
/// to `max_payload_entries` entries per message whatever their size, and a message over the cap
/// left a restarted follower behind for good (attack round 11, with a member's padded
/// proposals; group commit makes such entries out of ordinary concurrent writes). Now each
/// message carries at most a budget of entry bytes. Here: 64 writers of 4 KiB values while the
/// follower is down, about 12 MiB in entries of a few hundred KiB.
#[test]
fn c_a_follower_catches_up_on_large_entries_written_while_it_was_down() {
    let mut c = Cluster::start(3, Opts::default());
    let rt = runtime();
    let leader = c.leader();
    let victim = *others(&c, leader).last().unwrap();
    c.kill9(victim);
    let value = "v".repeat(4000);
    let acks: Vec<pb::WriteCanaryResponse> = rt.block_on(async {
        let client = admin_client(&c.admin_target(leader)).unwrap();
        let mut set = tokio::task::JoinSet::new();
        for w in 0..64 {
            let mut client = client.clone();
            let value = value.clone();
            set.spawn(async move {
                let mut acks = Vec::new();
                for k in 0..48 {
                    let r = client
                        .write_canary(pb::WriteCanaryRequest {
                            key: format!("big-{w}-{k}"),
                            value: value.clone(),
                            authorization: None,
                        })
                        .await
                        .map_err(|e| format!("big-{w}-{k}: {e}"))?;
                    acks.push(r.into_inner());
                }
                Ok::<_, String>(acks)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.extend(r.unwrap().unwrap_or_else(|e| panic!("write failed: {e}")));
        }
        out
    });
    let entries: BTreeSet<u64> = acks.iter().map(|a| a.log_index).collect();
    eprintln!("{} writes in {} entries", acks.len(), entries.len());
    let head = acks.iter().map(|a| a.log_index).max().unwrap();
    c.restart(victim);
    c.wait_converged(&c.ids(), head);
    c.wait_value(victim, "big-63-47", Consistency::Stale, Some(&value));
}

#[test]
fn c_a_killed_node_restarts_and_catches_up() {
    let mut c = Cluster::start(3, Opts::default());
    let leader = c.leader();
    let victim = *others(&c, leader).last().unwrap();
    let survivors = others(&c, victim);

    for k in 0..5 {
        c.put_ok(leader, &format!("c-before-{k}"), &format!("b{k}"));
    }
    c.kill9(victim);
    let mut last_index = 0;
    for k in 0..10 {
        let via = survivors[k % survivors.len()];
        last_index = c
            .put_ok(via, &format!("c-during-{k}"), &format!("d{k}"))
            .log_index;
    }
    c.restart(victim);

    // It catches up: its own (stale) state gets every write made while it was down...
    for k in 0..10 {
        c.wait_value(
            victim,
            &format!("c-during-{k}"),
            Consistency::Stale,
            Some(&format!("d{k}")),
        );
    }
    // ...and it serves linearizable reads of everything.
    for k in 0..5 {
        lin_read(&c, victim, &format!("c-before-{k}"), Some(&format!("b{k}")));
    }
    for k in 0..10 {
        lin_read(&c, victim, &format!("c-during-{k}"), Some(&format!("d{k}")));
    }
    c.wait_for(
        &format!("node {victim} to be a caught-up follower"),
        WAIT,
        || {
            let s = c.status(victim)?;
            if s.role == "follower" && s.last_applied.unwrap_or(0) >= last_index {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    );
    c.wait_converged(&c.ids(), last_index);
}

#[test]
fn c_restarted_nodes_elect_a_leader_while_the_third_is_down() {
    let mut c = Cluster::start(3, Opts::default());
    let leader = c.leader();
    let down = *others(&c, leader).last().unwrap();
    let follower = *others(&c, down).iter().find(|&&i| i != leader).unwrap();
    c.put_ok(leader, "c-restart-0", "0");
    c.kill9(down);
    c.put_ok(leader, "c-restart-1", "1");
    // Both go down together; the old leader comes back first and resumes its term from its
    // persisted vote, without the proof of its election (which a process keeps in memory).
    c.kill9(leader);
    c.kill9(follower);
    c.restart(leader);
    c.wait_for(&format!("node {leader} to resume as leader"), WAIT, || {
        let s = c.status(leader)?;
        if s.role == "leader" {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    c.restart(follower);
    // The follower refuses the unproven leader, and campaigns; the leader learns its newer
    // vote from its answer and stands again: a leader is elected and writes commit.
    let pair = [leader, follower];
    c.put_ok(follower, "c-restart-2", "2");
    let now = c.leader_among(&pair);
    // A rolling restart of the follower (whose proof of the leader is gone with it) too.
    let other = *pair.iter().find(|&&i| i != now).unwrap();
    c.kill9(other);
    c.restart(other);
    c.put_ok(other, "c-restart-3", "3");
    for k in 0..4 {
        lin_read(&c, other, &format!("c-restart-{k}"), Some(&k.to_string()));
    }
}

// ---------------------------------------------------------------------------------------------
// d. a wiped node rejoins through a snapshot

#[test]
fn d_a_wiped_node_rejoins_and_catches_up_from_a_snapshot() {
    let mut c = Cluster::start(
        3,
        Opts {
            snapshot_logs_since_last: Some(50),
            max_in_snapshot_log_to_keep: Some(10),
            ..Opts::default()
        },
    );
    let rt = runtime();
    let leader = c.leader();
    let keys: Vec<String> = (0..220).map(|k| format!("d-key-{k:04}")).collect();
    let max_index = grpc_put_all(&c, &rt, leader, &keys);
    c.wait_converged(&c.ids(), max_index);

    let victim = 3;
    let rest = others(&c, victim);
    let st = c.stop(victim);
    assert!(st.success(), "node {victim} exited with {st} on SIGTERM");
    c.wipe(victim);
    leave_ok(&c, rest[0], victim);
    for &i in &rest {
        c.wait_for(
            &format!("node {i} to see node {victim} removed"),
            WAIT,
            || {
                let m = c.members(i)?;
                if m.members.iter().any(|m| m.id == victim) {
                    Err(format!("{m:?}"))
                } else {
                    Ok(())
                }
            },
        );
    }
    // More writes after the removal (the two remaining nodes are a quorum of their own).
    let later: Vec<String> = (0..30).map(|k| format!("d-later-{k:04}")).collect();
    grpc_put_all(&c, &rt, rest[1], &later);

    c.restart(victim);
    let s = c.status(victim).unwrap_or_else(|e| c.fail(&e));
    assert_eq!(
        s.role, "uninitialized",
        "a node started on an empty data dir: {s:?}"
    );
    join_ok(&c, rest[1], victim);
    c.wait_for(&format!("node {victim} to be a voter again"), WAIT, || {
        let m = c.members(rest[0])?;
        if m.members.iter().any(|m| m.id == victim && m.voter) && m.members.len() == 3 {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    });
    let leader = c.leader();
    let head = c.put_ok(leader, "d-after-join", "x").log_index;
    c.wait_converged(&c.ids(), head);

    let mut all_keys = keys.clone();
    all_keys.extend(later);
    let seen = grpc_read_all(
        &c,
        &rt,
        victim,
        &all_keys,
        pb::ReadConsistency::Linearizable,
    );
    let missing: Vec<&String> = all_keys
        .iter()
        .filter(|k| seen[*k].as_deref() != Some(k.as_str()))
        .collect();
    if !missing.is_empty() {
        c.fail(&format!(
            "the rejoined node lacks {} of {} keys, e.g. {:?}",
            missing.len(),
            all_keys.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    lin_read(&c, victim, "d-after-join", Some("x"));
    // Informational: whether the node's log mentions the snapshot it installed.
    let log = fs::read_to_string(c.stderr_log(victim)).unwrap_or_default()
        + &fs::read_to_string(c.stdout_log(victim)).unwrap_or_default();
    eprintln!(
        "rejoined node's logs mention a snapshot: {}",
        log.to_lowercase().contains("snapshot")
    );
}

// ---------------------------------------------------------------------------------------------
// e. membership changes: a 4th node joins, node 2 leaves

#[test]
fn e_a_fourth_node_joins_as_voter_and_a_node_leaves_while_the_cluster_keeps_committing() {
    let mut c = Cluster::start(3, Opts::default());
    c.leader();
    c.put_ok(1, "e-before", "0");

    let n4 = c.add_node();
    assert_eq!(n4, 4);
    let s = c.status(n4).unwrap_or_else(|e| c.fail(&e));
    assert_eq!(s.role, "uninitialized", "{s:?}");
    // Sent to a member that may be a follower: forwarded to the leader.
    join_ok(&c, 2, n4);
    for i in c.ids() {
        c.wait_for(&format!("node {i} to list node 4 as a voter"), WAIT, || {
            let m = c.members(i)?;
            let voters: BTreeSet<u64> =
                m.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            if voters == BTreeSet::from([1, 2, 3, 4]) {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        });
    }
    let m4 = c.members(n4).unwrap_or_else(|e| c.fail(&e));
    let me = m4.members.iter().find(|m| m.id == n4).cloned();
    assert_eq!(
        me.map(|m| (m.raft_address, m.api_address)),
        Some((c.raft_addr(n4).to_string(), c.api_addr(n4).to_string())),
        "{m4:?}"
    );
    lin_read(&c, n4, "e-before", Some("0"));
    c.put_ok(n4, "e-via-4", "4");
    for i in c.ids() {
        lin_read(&c, i, "e-via-4", Some("4"));
    }

    // Node 2 leaves (sent to node 4: forwarded too).
    leave_ok(&c, n4, 2);
    let rest = [1, 3, 4];
    for i in rest {
        c.wait_for(&format!("node {i} to see voters {{1, 3, 4}}"), WAIT, || {
            let m = c.members(i)?;
            let ids: BTreeSet<u64> = m.members.iter().map(|m| m.id).collect();
            let voters: BTreeSet<u64> =
                m.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            if ids == BTreeSet::from(rest) && voters == ids {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        });
    }
    c.stop(2);
    let leader = c.leader_among(&rest);
    assert_ne!(leader, 2);
    for i in rest {
        let key = format!("e-after-leave-{i}");
        c.put_ok(i, &key, "ok");
        for j in rest {
            lin_read(&c, j, &key, Some("ok"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// f. a leader cut off in a minority

#[test]
fn f_an_isolated_leader_cannot_commit_and_follows_after_healing() {
    let c = Cluster::start(3, Opts::default());
    let old = c.leader();
    let majority = others(&c, old);
    let old_term = c.status(old).unwrap_or_else(|e| c.fail(&e)).term;
    c.put_ok(old, "f-before", "1");

    c.fault(old, true)
        .unwrap_or_else(|e| c.fail(&format!("fault --isolate on node {old}: {e}")));

    let (isolated_put, new, majority_ack) = std::thread::scope(|s| {
        // A write sent to the isolated leader cannot reach a quorum: it must fail.
        let put = s.spawn(|| c.admin(old, &["put", "f-isolated", "must-not-commit"]));
        // Meanwhile the majority elects a new leader and commits.
        let new = c.leader_among(&majority);
        let ack = c.put_ok(majority[0], "f-majority", "2");
        (put.join().expect("put thread"), new, ack)
    });
    assert_ne!(new, old);
    assert_ne!(majority_ack.leader_id, old, "{majority_ack:?}");
    eprintln!("put on the isolated leader: {}", isolated_put.describe());
    if isolated_put.success() {
        c.fail(&format!(
            "a write to the isolated leader {old} was acknowledged: {}",
            isolated_put.describe()
        ));
    }
    if isolated_put.timed_out() {
        c.fail(&format!(
            "`put` on the isolated leader {old} neither succeeded nor failed within \
             {ADMIN_TIMEOUT:?} (the contract says it fails non-zero): {}",
            isolated_put.describe()
        ));
    }
    for &i in &majority {
        lin_read(&c, i, "f-majority", Some("2"));
        lin_read(&c, i, "f-isolated", None);
    }
    // The isolated node cannot serve a linearizable read either.
    let read = c.admin(old, &["get", "f-before", "--consistency", "linearizable"]);
    assert!(
        !read.success(),
        "a linearizable read on the isolated node {old} succeeded: {}",
        read.describe()
    );
    assert!(
        !read.timed_out(),
        "a linearizable read on the isolated node {old} hung instead of failing: {}",
        read.describe()
    );

    c.fault(old, false)
        .unwrap_or_else(|e| c.fail(&format!("fault --heal on node {old}: {e}")));
    let leader = c.wait_for(
        &format!("the healed node {old} to follow the majority's leader"),
        WAIT,
        || {
            let l = c.agreed_leader(&c.ids())?;
            if l == old {
                // Possible in principle (it may win a later election), but not with a stale log.
                return Ok(l);
            }
            let s = c.status(old)?;
            if s.role == "follower" && s.leader_id == Some(l) {
                Ok(l)
            } else {
                Err(format!("node {old}: {s:?}"))
            }
        },
    );
    let s = c.status(old).unwrap_or_else(|e| c.fail(&e));
    assert!(s.term > old_term, "term did not advance: {s:?}");
    let head = c.put_ok(leader, "f-after-heal", "3").log_index;
    c.wait_converged(&c.ids(), head);
    for i in c.ids() {
        lin_read(&c, i, "f-before", Some("1"));
        lin_read(&c, i, "f-majority", Some("2"));
        lin_read(&c, i, "f-after-heal", Some("3"));
        // The write the isolated leader never acknowledged never shows up.
        lin_read(&c, i, "f-isolated", None);
        let r = c.wait_for("a stale read", WAIT, || {
            c.get(i, "f-isolated", Consistency::Stale)
        });
        assert_eq!(r.value, None, "stale read on node {i}: {r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// g. a corrupted state-machine store is refused at start

/// Overwrite every file under `dir` with garbage (at least 4 KiB, deterministic). Returns the
/// files touched.
fn corrupt_tree(dir: &Path) -> Vec<PathBuf> {
    let mut touched = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0).max(4096) as usize;
                let garbage: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x >> 24) as u8
                    })
                    .collect();
                fs::write(&p, garbage).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
                touched.push(p);
            }
        }
    }
    touched
}

fn list_tree(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                out.push_str(&format!("{}\n", p.display()));
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
    }
    out
}

/// Stop a follower, damage its sled directory (`<data_dir>/sm`) with `damage`, start it again:
/// it must exit non-zero promptly, saying which store is corrupt, and never serve; the other two
/// nodes keep committing.
fn corrupt_store_is_refused(what: &str, damage: impl FnOnce(&Path) -> Vec<PathBuf>) {
    let mut c = Cluster::start(3, Opts::default());
    let leader = c.leader();
    let mut head = 0;
    for k in 0..10 {
        head = c.put_ok(leader, &format!("g-{k}"), "v").log_index;
    }
    c.wait_converged(&c.ids(), head);
    let victim = *others(&c, leader).last().unwrap();
    let st = c.stop(victim);
    assert!(st.success(), "node {victim} exited with {st} on SIGTERM");

    let data_dir = c.data_dir(victim).to_path_buf();
    let sm = data_dir.join("sm");
    assert!(
        sm.is_dir(),
        "expected the sled state machine in {}; the data dir holds:\n{}",
        sm.display(),
        list_tree(&data_dir)
    );
    let touched = damage(&sm);
    assert!(
        !touched.is_empty(),
        "nothing damaged under {}",
        sm.display()
    );

    let started = Instant::now();
    let (st, output) = c.start_expecting_exit(victim, Duration::from_secs(30));
    eprintln!(
        "{what}: the node exited with {st} after {:.1?}; output:\n{output}",
        started.elapsed()
    );
    assert!(
        !st.success(),
        "{what}: the node exited with {st}; output:\n{output}"
    );
    let lower = output.to_lowercase();
    assert!(
        output.contains(&*data_dir.to_string_lossy()) || lower.contains("corrupt"),
        "{what}: the error should name the data dir ({}) or say it is corrupt; output:\n{output}",
        data_dir.display()
    );
    assert!(c.status(victim).is_err(), "{what}: the node still answers");

    // The other two keep committing.
    let rest = others(&c, victim);
    let l = c.leader_among(&rest);
    c.put_ok(l, "g-after", "ok");
    for i in rest {
        lin_read(&c, i, "g-after", Some("ok"));
    }
}

#[test]
fn g_a_node_whose_sled_files_are_overwritten_with_garbage_refuses_to_start() {
    corrupt_store_is_refused("every sled file overwritten with garbage", corrupt_tree);
}

#[test]
fn g_a_node_whose_sled_db_file_is_truncated_refuses_to_start() {
    corrupt_store_is_refused("sled db file truncated to 0 bytes", |sm| {
        let db = sm.join("db");
        fs::write(&db, b"").unwrap_or_else(|e| panic!("truncate {}: {e}", db.display()));
        vec![db]
    });
}

// ---------------------------------------------------------------------------------------------
// stale reads

#[test]
fn stale_reads_on_a_follower_report_their_staleness() {
    let c = Cluster::start(3, Opts::default());
    let leader = c.leader();
    let ack = c.put_ok(leader, "s-key", "s-value");
    for i in others(&c, leader) {
        let r = c.wait_value(i, "s-key", Consistency::Stale, Some("s-value"));
        assert_eq!(r.served_by, i, "{r:?}");
        assert!(r.applied_index >= ack.log_index, "{r:?} vs {ack:?}");
        // Followers hear from the leader every heartbeat (100 ms); the default max_stale_ms is
        // 5000, beyond which the read would have been refused.
        assert!(r.staleness_ms <= 5000, "{r:?}");
        let missing = c.wait_for("a stale read of a missing key", WAIT, || {
            c.get(i, "s-missing", Consistency::Stale)
        });
        assert_eq!(missing.value, None, "{missing:?}");
    }
    // The leader's own stale reads are not stale (re-checked if leadership moved meanwhile).
    c.wait_for("a stale read on the current leader", WAIT, || {
        let l = c.agreed_leader(&c.ids())?;
        let r = c.get(l, "s-key", Consistency::Stale)?;
        let still = c.agreed_leader(&c.ids())? == l;
        if !still {
            return Err(format!("leadership moved during the read {r:?}"));
        }
        if r.value.as_deref() != Some("s-value") || r.served_by != l || r.staleness_ms != 0 {
            c.fail(&format!(
                "a stale read on the leader {l} should see its own write, served by itself, with \
                 staleness_ms = 0: {r:?}"
            ));
        }
        Ok(())
    });
}

#[test]
fn stale_reads_are_refused_once_a_follower_has_not_heard_from_a_leader_for_max_stale_ms() {
    let c = Cluster::start(
        3,
        Opts {
            max_stale_ms: Some(1000),
            ..Opts::default()
        },
    );
    let leader = c.leader();
    c.put_ok(leader, "t-key", "t");
    let f = others(&c, leader)[0];
    c.wait_value(f, "t-key", Consistency::Stale, Some("t"));
    c.fault(f, true)
        .unwrap_or_else(|e| c.fail(&format!("fault --isolate on node {f}: {e}")));
    // Until it is refused, every answer must stay within the bound it promises.
    c.wait_for(
        &format!("stale reads on the isolated node {f} to be refused"),
        WAIT,
        || match c.get(f, "t-key", Consistency::Stale) {
            Ok(r) if r.staleness_ms <= 1000 + 500 => Err(format!("still served: {r:?}")),
            Ok(r) => c.fail(&format!(
                "node {f} served a read {r:?} staler than max_stale_ms = 1000"
            )),
            Err(e) => Ok(e),
        },
    );
    c.fault(f, false)
        .unwrap_or_else(|e| c.fail(&format!("fault --heal on node {f}: {e}")));
    c.wait_value(f, "t-key", Consistency::Stale, Some("t"));
}
