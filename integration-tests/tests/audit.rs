//! The audit log against a real node (docs/operations.md "Audit log"): every AdminService call,
//! key delivery and refusal is a hash-chained JSON line; `gatekeeper audit verify` accepts the
//! chain and names the first line a modification or deletion breaks; worker keys appear only as
//! HMACs; with `audit_required`, a line that cannot be written fails the request (AUDIT_FAILED)
//! and nothing is delivered; SIGHUP re-opens the file and the chain continues.

use gatekeeper_client::{MinerClient, RetryPolicy};
use gatekeeper_integration_tests::{error_code as code_of, run_command, Cluster, Opts, WAIT};
use gatekeeper_proto::v1 as pb;
use keyring::sign::KeyTarget;
use keyring::Sr25519Keypair;
use rand_core::OsRng;
use std::path::Path;
use std::time::Duration;

fn verify(c: &Cluster, file: &Path) -> gatekeeper_integration_tests::AdminOutput {
    let bin = gatekeeper_integration_tests::gatekeeper_bin().unwrap();
    let f = file.display().to_string();
    let _ = c;
    run_command(&bin, &["audit", "verify", &f], Duration::from_secs(30))
}

fn sighup(c: &Cluster) {
    let pid = c.pid(1).expect("node 1 runs").to_string();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn calls_deliveries_and_refusals_are_chained_verifiable_and_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let c = Cluster::start(
        1,
        Opts {
            extra_config: vec![
                format!("audit_path = {:?}", log.display().to_string()),
                "audit_required = true".into(),
            ],
            ..Opts::default()
        },
    );
    // An operator command right after init (the node may not have registered its enclave keys
    // yet: it waits for that instead of refusing).
    let w = Sr25519Keypair::generate(&mut OsRng);
    let wh = hex::encode(w.public_key().as_bytes());
    let out = c.admin(1, &["dev", "register-worker", "--worker", &wh]);
    assert!(out.success(), "{}", out.describe());
    c.wait_for("node 1 to be unsealed", WAIT, || {
        let s = c.status(1)?;
        (s.seal_status == "unsealed")
            .then_some(())
            .ok_or(s.seal_status)
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fetch = |worker: &Sr25519Keypair| {
        rt.block_on(async {
            let m = MinerClient::new(vec![c.api_addr(1).to_string()], worker.clone())
                .with_retry(RetryPolicy::once())
                .with_tls_ca_file(c.ca_file().unwrap())
                .unwrap();
            m.fetch(KeyTarget::Worker, None)
                .await
                .map(|k| (k.keypair.public_key(), hex::encode(k.keypair.seed())))
        })
    };
    let delivered = fetch(&w).unwrap_or_else(|e| c.fail(&format!("a registered worker: {e}")));
    let stranger = Sr25519Keypair::generate(&mut OsRng);
    assert!(
        fetch(&stranger).is_err(),
        "an unregistered worker was served"
    );
    // An unsigned operator command: refused, and audited as such.
    rt.block_on(async {
        let mut a = gatekeeper_integration_tests::admin_client(&c.admin_target(1)).unwrap();
        let e = a
            .retire(pb::RetireRequest {
                min_epoch: 0,
                authorization: None,
            })
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), "COMMAND_NOT_AUTHORIZED");
    });

    // The chain verifies; it holds the calls, the delivery and the refusals; no worker key or
    // delivered key in clear.
    let out = verify(&c, &log);
    assert!(out.success(), "{}", out.describe());
    let text = std::fs::read_to_string(&log).unwrap();
    for want in [
        "\"/gatekeeper.v1.AdminService/Status\"",
        "\"/gatekeeper.v1.AdminService/ApplyDevEvent\"",
        "\"/gatekeeper.v1.KeyService/GetWorkerKey\"",
        "\"COMMAND_NOT_AUTHORIZED\"",
        "\"WORKER_NOT_REGISTERED\"",
        "\"operator ",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains("GetWorkerKey") && l.contains("\"OK\"")),
        "{text}"
    );
    // Key lines are HMAC'd under the cluster's audit key of epoch 0 (the same on every node
    // holding it), named in the line; deliveries and refusals alike.
    for l in text.lines().filter(|l| l.contains("GetWorkerKey")) {
        assert!(l.contains("\"hmac_epoch\":0,"), "{l}");
    }
    for secret in [
        wh.clone(),
        hex::encode(stranger.public_key().as_bytes()),
        hex::encode(delivered.0.as_bytes()),
        delivered.1.clone(),
    ] {
        assert!(
            !text.contains(&secret),
            "{secret} in clear in the audit log"
        );
    }

    // A modified line breaks the chain at the next line; a deleted one at its place.
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6, "{text}");
    let tampered = dir.path().join("tampered.log");
    let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    changed[2] =
        changed[2]
            .replacen("\"OK\"", "\"NOPE\"", 1)
            .replacen("\"code\":\"", "\"code\":\"X", 1);
    std::fs::write(&tampered, changed.join("\n") + "\n").unwrap();
    let out = verify(&c, &tampered);
    assert!(
        !out.success() && out.stderr.contains("line 4"),
        "{}",
        out.describe()
    );
    let mut deleted: Vec<&str> = lines.clone();
    deleted.remove(3);
    std::fs::write(&tampered, deleted.join("\n") + "\n").unwrap();
    let out = verify(&c, &tampered);
    assert!(
        !out.success() && out.stderr.contains("line 4"),
        "{}",
        out.describe()
    );

    // Fail-closed: the file rotated away and its path pointing at a full disk; after SIGHUP
    // every call fails with AUDIT_FAILED and no key is delivered.
    let rotated = dir.path().join("audit.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    std::os::unix::fs::symlink("/dev/full", &log).unwrap();
    sighup(&c);
    c.wait_for("calls to fail closed", WAIT, || {
        rt.block_on(async {
            let mut a = gatekeeper_integration_tests::admin_client(&c.admin_target(1)).unwrap();
            match a.status(pb::StatusRequest {}).await {
                Err(e) if code_of(&e) == "AUDIT_FAILED" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    });
    let e = fetch(&w).expect_err("a key was delivered without an audit line");
    assert!(
        format!("{e:?}").contains("audit log cannot be written"),
        "{e:?}"
    );
    // Back on a writable file: served again; the new file continues the chain.
    std::fs::remove_file(&log).unwrap();
    sighup(&c);
    c.wait_for("calls to be served again", WAIT, || c.status(1).map(|_| ()));
    fetch(&w).unwrap_or_else(|e| c.fail(&format!("after the audit log came back: {e}")));
    let out = verify(&c, &log);
    assert!(out.success(), "{}", out.describe());
    let out = verify(&c, &rotated);
    assert!(out.success(), "{}", out.describe());
}
