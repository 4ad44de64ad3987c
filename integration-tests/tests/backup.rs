//! Backup and restore against real `gatekeeper` processes: `admin snapshot save`, `gatekeeper
//! snapshot inspect`, `gatekeeper restore` into fresh data dirs, and what a restore needs — the
//! members' enclave identities (at least the threshold of them).

use gatekeeper_integration_tests::{
    gatekeeper_bin, run_command, AdminOutput, Cluster, Consistency, Opts,
};
use keyring::Sr25519Keypair;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Waits until node `i` is unsealed, then checks it serves `worker` the key `key`.
fn wait_serving(c: &Cluster, i: u64, worker: &Sr25519Keypair, key: [u8; 32]) {
    c.wait_for(
        &format!("node {i} to unseal after the restore"),
        WAIT,
        || {
            let s = c.status_json(i)?;
            if s["seal_status"] == "unsealed" {
                Ok(())
            } else {
                Err(format!("{}", s["seal_status"]))
            }
        },
    );
    assert_eq!(c.worker_key(i, worker).unwrap(), key, "node {i}");
}

fn tool(args: &[&str]) -> AdminOutput {
    run_command(&gatekeeper_bin().unwrap(), args, Duration::from_secs(120))
}

fn config_of(c: &Cluster, i: u64) -> PathBuf {
    c.dir().join(format!("n{i}")).join("gatekeeper.toml")
}

/// Empties node `i`'s data dir, keeping its enclave directory unless `keep_enclave` is false.
fn wipe(c: &Cluster, i: u64, keep_enclave: bool) {
    let dir = c.data_dir(i);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if keep_enclave && e.file_name() == "enclave" {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// Copies a directory tree (an enclave directory: files and subdirectories).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn restore(c: &Cluster, i: u64, backup: &Path) -> serde_json::Value {
    let config = config_of(c, i);
    let out = tool(&[
        "restore",
        "--config",
        config.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert!(out.success(), "restore node {i}: {}", out.describe());
    serde_json::from_str(out.stdout.trim()).unwrap()
}

/// A three-node cluster (checkpoints every 10 entries), a worker and 20 canaries, and a backup
/// taken from a follower once a snapshot covers them all: (cluster, worker, its key, backup).
fn cluster_with_backup() -> (Cluster, Sr25519Keypair, [u8; 32], PathBuf) {
    let c = Cluster::start(
        3,
        Opts {
            snapshot_logs_since_last: Some(10),
            ..Opts::default()
        },
    );
    let (w, _) = c.dev_worker(&[1, 2, 3], WAIT);
    let key = c.worker_key(1, &w).unwrap();
    let mut last = 0;
    for n in 0..20 {
        last = c.put_ok(1, &format!("before-backup-{n}"), "kept").log_index;
    }
    let leader = c.leader();
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    c.wait_for("a certified snapshot covering the writes", WAIT, || {
        let s = c.status_json(follower)?;
        let at = s["checkpoint"]["snapshot_index"].as_u64().unwrap_or(0);
        if at >= last {
            Ok(())
        } else {
            // Keep the log moving so the next checkpoint comes.
            let _ = c.put(1, "tick", "t");
            Err(format!("snapshot at {at}, last write at {last}"))
        }
    });
    let backup = c.dir().join("cluster.backup");
    let out = c.admin(follower, &["snapshot", "save", backup.to_str().unwrap()]);
    assert!(out.success(), "{}", out.describe());
    let saved: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(saved["index"].as_u64().unwrap() >= last, "{saved}");
    assert_eq!(saved["source_node"], follower);
    assert_eq!(saved["members"], serde_json::json!([1, 2, 3]));
    // Never over an existing file without --force.
    let again = c.admin(follower, &["snapshot", "save", backup.to_str().unwrap()]);
    assert!(
        !again.success() && again.stderr.contains("--force"),
        "{}",
        again.describe()
    );
    (c, w, key, backup)
}

#[test]
fn a_backup_restores_a_cluster_into_fresh_data_dirs_with_the_same_keys() {
    let (c, w, key, backup) = cluster_with_backup();

    // Inspect, offline: the whole file checks and says what it holds.
    let out = tool(&["snapshot", "inspect", backup.to_str().unwrap()]);
    assert!(out.success(), "{}", out.describe());
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["check"], "ok");
    assert_eq!(v["workers"], 1, "{v}");
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v}");
    assert!(
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["enclave_public_key"].as_str().unwrap().len() == 64),
        "{v}"
    );
    assert_eq!(v["epochs"][0]["status"], "active", "{v}");
    assert_eq!(
        v["epochs"][0]["share_holders"],
        serde_json::json!([1, 2, 3]),
        "{v}"
    );
    assert!(v["certified_by"].as_array().unwrap().len() >= 2, "{v}");
    // A damaged copy is refused, and says why.
    let damaged = c.dir().join("damaged.backup");
    let mut bytes = std::fs::read(&backup).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    std::fs::write(&damaged, &bytes).unwrap();
    let out = tool(&["snapshot", "inspect", damaged.to_str().unwrap()]);
    assert!(
        !out.success() && out.stderr.contains("SHA-256"),
        "{}",
        out.describe()
    );
    let out = tool(&["snapshot", "inspect", config_of(&c, 1).to_str().unwrap()]);
    assert!(
        !out.success() && out.stderr.contains("not a Gatekeeper backup"),
        "{}",
        out.describe()
    );

    // Every member lost its data dir (not its enclave directory): restored and started, the
    // cluster unseals by itself and serves the same keys and the canaries written before.
    for i in [1, 2, 3] {
        c.stop(i);
    }
    for i in [1, 2, 3] {
        wipe(&c, i, true);
        let r = restore(&c, i, &backup);
        assert_eq!(
            (r["member"].as_bool(), r["share_holder"].as_bool()),
            (Some(true), Some(true)),
            "{r}"
        );
    }
    // A data dir that holds state is never overwritten.
    let config = config_of(&c, 1);
    let out = tool(&[
        "restore",
        "--config",
        config.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert!(
        !out.success() && out.stderr.contains("fresh data dir"),
        "{}",
        out.describe()
    );
    let mut c = c;
    for i in [1, 2, 3] {
        c.restart(i);
    }
    for i in [1, 2, 3] {
        wait_serving(&c, i, &w, key);
    }
    let got = c
        .get(2, "before-backup-19", Consistency::Linearizable)
        .unwrap();
    assert_eq!(got.value.as_deref(), Some("kept"));
    // And it takes writes again.
    c.put_ok(3, "after-restore", "yes");
}

#[test]
fn a_restore_unseals_only_with_at_least_the_threshold_of_the_old_enclave_identities() {
    let (c, w, key, backup) = cluster_with_backup();
    for i in [1, 2, 3] {
        c.stop(i);
    }
    let dir = c.dir().to_path_buf();
    let original = move |i: u64| dir.join(format!("enclave-{i}.original"));
    for i in [1, 2, 3] {
        copy_dir(&c.data_dir(i).join("enclave"), &original(i));
    }
    // Nodes 2 and 3 come back with new enclave identities: one old identity is below the
    // threshold (2 of 3), so nobody can rebuild the master key.
    for i in [1, 2, 3] {
        wipe(&c, i, i == 1);
        restore(&c, i, &backup);
    }
    let mut c = c;
    for i in [1, 2, 3] {
        c.restart(i);
    }
    // A member is its enclave identity: the two strangers' vote grants do not verify against
    // the restored member records, so no quorum forms, and no key is served anywhere.
    std::thread::sleep(Duration::from_secs(8));
    for i in [1, 2, 3] {
        let s = c.status_json(i).unwrap();
        assert_ne!(s["seal_status"], "unsealed", "node {i}: {s}");
        let refused = c.worker_key(i, &w).unwrap_err();
        assert!(
            refused.contains("NODE_SEALED") || refused.contains("NO_LEADER"),
            "node {i}: {refused}"
        );
    }
    let log = std::fs::read_to_string(c.stderr_log(1)).unwrap();
    assert!(
        log.contains("vote grant does not verify"),
        "node 1 should say why its peers are refused:\n{}",
        c.log_tail(1, 30)
    );

    // Restored again with nodes 1 and 2 holding their old identities (the threshold): they
    // unseal and serve the same key.
    for i in [1, 2, 3] {
        c.stop(i);
    }
    for i in [1, 2, 3] {
        wipe(&c, i, false);
        if i != 3 {
            copy_dir(&original(i), &c.data_dir(i).join("enclave"));
        }
        restore(&c, i, &backup);
    }
    for i in [1, 2, 3] {
        c.restart(i);
    }
    for i in [1, 2] {
        wait_serving(&c, i, &w, key);
    }
}
