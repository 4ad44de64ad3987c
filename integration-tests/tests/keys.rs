//! Master-key lifecycle and key issuance against real `gatekeeper` processes: genesis, unseal
//! after restarts, re-dealing on membership change, rotation and retirement, every refusal code,
//! and a byte scan of data dirs and logs for secrets.

use gatekeeper_client::{MinerClient, RetryPolicy};
use gatekeeper_integration_tests::{Cluster, Opts};
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::key_service_client::KeyServiceClient;
use keyring::sign::{KeyRequest, KeyTarget};
use keyring::{ClusterId, ContractId, GatekeeperId, Sr25519Keypair, X25519SecretKey};
use rand_core::{OsRng, RngCore};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(45);
const CLUSTER: [u8; 32] = [0x22; 32];
const CONTRACT: [u8; 32] = [0x33; 32];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn wait_unsealed(c: &Cluster, ids: &[u64], active_epochs: usize) {
    for &i in ids {
        c.wait_for(&format!("node {i} to be unsealed"), WAIT, || {
            let s = c.status_json(i)?;
            let active = s["epochs"]
                .as_array()
                .map(|a| a.iter().filter(|e| e["status"] == "active").count())
                .unwrap_or(0);
            // Key reads are linearizable: serving also needs a known leader (after a full
            // restart the nodes may unseal from each other before an election settles).
            if s["seal_status"] == "unsealed" && active == active_epochs && s["leader_id"].is_u64()
            {
                Ok(())
            } else {
                Err(format!(
                    "seal_status {} with {active} active epochs, leader {}",
                    s["seal_status"], s["leader_id"]
                ))
            }
        });
    }
}

fn dev(c: &Cluster, i: u64, args: &[&str]) {
    let mut a = vec!["dev"];
    a.extend_from_slice(args);
    let out = c.admin(i, &a);
    assert!(out.success(), "{}", out.describe());
}

/// Registers a fresh worker, a cluster with it, and a contract on that cluster.
fn setup_worker(c: &Cluster) -> Sr25519Keypair {
    let w = Sr25519Keypair::generate(&mut OsRng);
    let wh = hex::encode(w.public_key().as_bytes());
    dev(c, 1, &["register-worker", "--worker", &wh]);
    dev(
        c,
        1,
        &[
            "create-cluster",
            "--cluster",
            &hex::encode(CLUSTER),
            "--worker",
            &wh,
            "--scheme",
            "phala",
        ],
    );
    dev(
        c,
        1,
        &[
            "instantiate",
            "--contract",
            &hex::encode(CONTRACT),
            "--cluster",
            &hex::encode(CLUSTER),
        ],
    );
    w
}

/// Fetches (worker key, contract key) public keys from node `i` alone.
fn keys_from(c: &Cluster, i: u64, w: &Sr25519Keypair, epoch: Option<u64>) -> ([u8; 32], [u8; 32]) {
    rt().block_on(async {
        // The SDK's default retries, as a worker has them: an election may still be settling.
        let m = MinerClient::new(vec![c.api_addr(i).to_string()], w.clone())
            .with_retry(RetryPolicy::default())
            .with_tls_ca_file(c.ca_file().unwrap())
            .unwrap();
        let wk = m
            .fetch(KeyTarget::Worker, epoch)
            .await
            .unwrap_or_else(|e| panic!("worker key from node {i} (epoch {epoch:?}): {e}"));
        let ck = m
            .fetch(KeyTarget::Contract(ContractId(CONTRACT)), epoch)
            .await
            .unwrap_or_else(|e| panic!("contract key from node {i} (epoch {epoch:?}): {e}"));
        assert_eq!(wk.served_by, i);
        (
            *wk.keypair.public_key().as_bytes(),
            *ck.keypair.public_key().as_bytes(),
        )
    })
}

#[test]
fn genesis_then_every_node_serves_the_same_keys_and_full_restart_unseals_unattended() {
    let mut c = Cluster::start(3, Opts::default());
    wait_unsealed(&c, &[1, 2, 3], 1);
    let s = c.status_json(2).unwrap();
    assert_eq!(
        s["epochs"][0]["threshold"], 2,
        "default threshold is a majority"
    );
    let w = setup_worker(&c);
    let k1 = keys_from(&c, 1, &w, None);
    assert_eq!(keys_from(&c, 2, &w, None), k1);
    assert_eq!(keys_from(&c, 3, &w, None), k1);

    // Stop every node, start them again: they unseal from each other with no operator action.
    for i in [1, 2, 3] {
        c.stop(i);
    }
    for i in [1, 2, 3] {
        c.restart(i);
    }
    wait_unsealed(&c, &[1, 2, 3], 1);
    for i in [1, 2, 3] {
        assert_eq!(keys_from(&c, i, &w, None), k1, "node {i} after restart");
    }
}

/// `gatekeeper health` against node `i`'s key listener (gRPC health over TLS) and its metrics
/// listener (`/readyz`, or `/livez` when `live`): whether it exited 0, and what it printed.
fn health(c: &Cluster, i: u64, http: Option<bool>) -> (bool, String) {
    let bin = gatekeeper_integration_tests::gatekeeper_bin().unwrap();
    let ca = c.ca_file().unwrap();
    let metrics = c.metrics_addr(i).unwrap().to_string();
    let mut args = vec!["health".to_string()];
    match http {
        None => args.extend([
            "--endpoint".into(),
            c.api_addr(i).into(),
            "--ca".into(),
            ca.display().to_string(),
        ]),
        Some(live) => {
            args.extend(["--http".into(), metrics]);
            if live {
                args.push("--live".into());
            }
        }
    }
    let out = gatekeeper_integration_tests::run_command(
        &bin,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        Duration::from_secs(30),
    );
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

/// The services node `i`'s key listener lists through gRPC server reflection.
fn reflected_services(c: &Cluster, i: u64) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    rt().block_on(async {
        let ch = c.key_target(i).channel().unwrap();
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        match stream.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("{other:?}"),
        }
    })
}

#[test]
fn with_fewer_than_t_nodes_a_restarted_node_stays_sealed_and_says_so() {
    let mut c = Cluster::start(
        3,
        Opts {
            metrics: true,
            ..Opts::default()
        },
    );
    wait_unsealed(&c, &[1, 2, 3], 1);
    // Unsealed: ready by every means (gRPC health follows within its 500 ms refresh), and
    // grpcurl-style reflection lists the services.
    for i in [1, 2, 3] {
        c.wait_for(
            &format!("node {i} to report SERVING"),
            WAIT,
            || match health(&c, i, None) {
                (true, out) if out.contains("SERVING") => Ok(()),
                (_, out) => Err(out),
            },
        );
        let (ok, out) = health(&c, i, Some(false));
        assert!(ok && out.contains("ready"), "node {i}: {out}");
    }
    let services = reflected_services(&c, 1);
    for s in ["gatekeeper.v1.KeyService", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|x| x == s), "{s} not in {services:?}");
    }
    let w = setup_worker(&c);
    for i in [1, 2, 3] {
        c.stop(i);
    }
    c.restart(1);
    c.wait_for("node 1 to report that it is still sealed", WAIT, || {
        let s = c.status_json(1)?;
        let seal = s["seal_status"].as_str().unwrap_or_default().to_string();
        if seal.starts_with("unsealing 1/2") {
            Ok(())
        } else {
            Err(format!("seal_status {seal}"))
        }
    });
    // It refuses keys with FAILED_PRECONDITION (read mode here is linearizable: with no quorum
    // the read itself is UNAVAILABLE first; either way, no key).
    let err = rt().block_on(async {
        let m = MinerClient::new(vec![c.api_addr(1).to_string()], w.clone())
            .with_retry(RetryPolicy::once())
            .with_tls_ca_file(c.ca_file().unwrap())
            .unwrap();
        m.fetch(KeyTarget::Worker, None).await.unwrap_err()
    });
    // The node answered and refused (it is up: not merely unreachable).
    assert!(
        matches!(
            err.error_code(),
            Some("NODE_SEALED" | "NO_LEADER" | "TIMEOUT")
        ),
        "{err}"
    );
    // Not ready (gRPC health NOT_SERVING, /readyz 503 with the reason), but alive: nothing that
    // restarts it on a failed liveness probe would help it unseal.
    let (ok, out) = health(&c, 1, None);
    assert!(!ok && out.contains("NOT_SERVING"), "{out}");
    let (code, body) =
        gatekeeper_integration_tests::http_status(c.metrics_addr(1).unwrap(), "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("sealed for epoch"), "{body}");
    // The probe that tolerates a cluster not initialised yet does not tolerate a sealed node.
    let (code, body) = gatekeeper_integration_tests::http_status(
        c.metrics_addr(1).unwrap(),
        "/readyz?uninitialized=ok",
    )
    .unwrap();
    assert_eq!(code, 503, "{body}");
    let (ok, out) = health(&c, 1, Some(false));
    assert!(!ok && out.contains("not ready"), "{out}");
    let (ok, out) = health(&c, 1, Some(true));
    assert!(ok, "{out}");
    // A second node comes back: both unseal, and report ready again.
    c.restart(2);
    wait_unsealed(&c, &[1, 2], 1);
    c.wait_for("node 1 to report ready", WAIT, || {
        match health(&c, 1, None) {
            (true, _) => Ok(()),
            (false, out) => Err(out),
        }
    });
}

#[test]
fn a_wiped_node_rejoins_and_shares_are_redealt_to_its_new_key() {
    let mut c = Cluster::start(3, Opts::default());
    wait_unsealed(&c, &[1, 2, 3], 1);
    let w = setup_worker(&c);
    let before = keys_from(&c, 1, &w, None);
    c.stop(3);
    c.wipe(3);
    let out = c.admin(1, &["leave", "--node-id", "3"]);
    assert!(out.success(), "{}", out.describe());
    c.restart(3);
    let out = c.admin_timeout(
        1,
        &[
            "join",
            "--node-id",
            "3",
            "--raft-address",
            c.raft_addr(3),
            "--api-address",
            c.api_addr(3),
        ],
        Duration::from_secs(90),
    );
    assert!(out.success(), "{}", out.describe());
    wait_unsealed(&c, &[1, 2, 3], 1);
    assert_eq!(keys_from(&c, 3, &w, None), before);
    // The re-dealing is visible in the leader's log.
    c.wait_for("a re-dealing to be logged", WAIT, || {
        let logs: String = [1, 2, 3]
            .iter()
            .map(|i| std::fs::read_to_string(c.stderr_log(*i)).unwrap_or_default())
            .collect();
        if logs.contains("re-dealing to the new member set") {
            Ok(())
        } else {
            Err("no re-dealing logged".into())
        }
    });
}

#[test]
fn rotation_gives_new_keys_old_epoch_until_retired() {
    let c = Cluster::start(3, Opts::default());
    wait_unsealed(&c, &[1, 2, 3], 1);
    let w = setup_worker(&c);
    let e0 = keys_from(&c, 2, &w, None);
    let out = c.admin(3, &["rotate", "--rotation-id", "r-1", "--reason", "test"]);
    assert!(out.success(), "{}", out.describe());
    wait_unsealed(&c, &[1, 2, 3], 2);
    let e1 = keys_from(&c, 1, &w, None);
    assert_ne!(e1.0, e0.0, "worker key changes with the epoch");
    assert_ne!(e1.1, e0.1, "contract key changes with the epoch");
    assert_eq!(keys_from(&c, 3, &w, Some(1)), e1);
    assert_eq!(keys_from(&c, 2, &w, Some(0)), e0, "old epoch still served");
    // The same rotation id again does not rotate twice.
    let again = c.admin(1, &["rotate", "--rotation-id", "r-1"]);
    assert!(
        !again.success() && again.stderr.contains("already"),
        "{}",
        again.describe()
    );
    let out = c.admin(1, &["retire", "--min-epoch", "1"]);
    assert!(out.success(), "{}", out.describe());
    let err = rt().block_on(async {
        let m = MinerClient::new(vec![c.api_addr(2).to_string()], w.clone())
            .with_retry(RetryPolicy::once())
            .with_tls_ca_file(c.ca_file().unwrap())
            .unwrap();
        m.fetch(KeyTarget::Worker, Some(0)).await.unwrap_err()
    });
    assert!(err.to_string().contains("FailedPrecondition"), "{err}");
}

struct Req {
    header: pb::KeyRequestHeader,
    signature: Vec<u8>,
}

fn signed(gk: &[u8], w: &Sr25519Keypair, target: KeyTarget, epoch: Option<u64>, ts: u64) -> Req {
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let recipient = X25519SecretKey::generate(&mut OsRng).public_key();
    let body = KeyRequest {
        target,
        gatekeeper_id: GatekeeperId::from_slice(gk).unwrap(),
        worker: w.public_key(),
        recipient,
        epoch,
        nonce,
        timestamp_ms: ts,
        evidence: None,
    };
    Req {
        header: pb::KeyRequestHeader {
            gatekeeper_id: gk.to_vec(),
            worker_public_key: w.public_key().as_bytes().to_vec(),
            recipient_public_key: recipient.as_bytes().to_vec(),
            epoch,
            nonce: nonce.to_vec(),
            timestamp_ms: ts,
            attestation: None,
        },
        signature: body.sign(w).0.to_vec(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn every_bad_request_gets_its_code_and_changes_nothing() {
    let c = Cluster::start(3, Opts::default());
    wait_unsealed(&c, &[1, 2, 3], 1);
    let w = setup_worker(&c);
    let stranger = Sr25519Keypair::generate(&mut OsRng);
    let outsider = Sr25519Keypair::generate(&mut OsRng);
    dev(
        &c,
        1,
        &[
            "register-worker",
            "--worker",
            &hex::encode(outsider.public_key().as_bytes()),
        ],
    );
    let gk = hex::decode(c.status_json(1).unwrap()["gatekeeper_id"].as_str().unwrap()).unwrap();
    let url = c.key_target(2);
    let admin_url = c.admin_target(1);
    rt().block_on(async move {
        let mut k = KeyServiceClient::new(url.channel().unwrap());
        let worker = |r: &Req| pb::GetWorkerKeyRequest {
            header: Some(r.header.clone()),
            signature: r.signature.clone(),
        };
        let code = |r: Result<tonic::Response<pb::KeyResponse>, tonic::Status>| {
            r.map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code())
        };
        // Malformed.
        assert_eq!(
            code(k.get_worker_key(pb::GetWorkerKeyRequest::default()).await),
            tonic::Code::InvalidArgument
        );
        let mut r = signed(&gk, &w, KeyTarget::Worker, None, now_ms());
        r.header.recipient_public_key.pop();
        assert_eq!(
            code(k.get_worker_key(worker(&r)).await),
            tonic::Code::InvalidArgument
        );
        // Another cluster's id.
        let r = signed(&[9; 32], &w, KeyTarget::Worker, None, now_ms());
        assert_eq!(
            code(k.get_worker_key(worker(&r)).await),
            tonic::Code::InvalidArgument
        );
        // Bad signature.
        let mut r = signed(&gk, &w, KeyTarget::Worker, None, now_ms());
        r.signature[5] ^= 1;
        assert_eq!(
            code(k.get_worker_key(worker(&r)).await),
            tonic::Code::Unauthenticated
        );
        // Timestamp outside the window.
        let r = signed(&gk, &w, KeyTarget::Worker, None, now_ms() - 10 * 60_000);
        assert_eq!(
            code(k.get_worker_key(worker(&r)).await),
            tonic::Code::InvalidArgument
        );
        // Unregistered worker.
        let r = signed(&gk, &stranger, KeyTarget::Worker, None, now_ms());
        assert_eq!(
            code(k.get_worker_key(worker(&r)).await),
            tonic::Code::NotFound
        );
        // Unknown epoch.
        let r = signed(&gk, &w, KeyTarget::Worker, Some(7), now_ms());
        assert_eq!(
            code(k.get_worker_key(worker(&r)).await),
            tonic::Code::NotFound
        );
        // An attestation kind that is not defined.
        let mut r = signed(&gk, &w, KeyTarget::Worker, None, now_ms());
        r.header.attestation = Some(pb::Attestation {
            kind: 99,
            evidence: vec![1; 8],
            collateral: vec![],
        });
        assert_eq!(
            code(k.get_worker_key(worker(&r)).await),
            tonic::Code::InvalidArgument
        );
        // Too large.
        let mut r = signed(&gk, &w, KeyTarget::Worker, None, now_ms());
        r.header.attestation = Some(pb::Attestation {
            kind: 3,
            evidence: vec![0; 70 << 10],
            collateral: vec![],
        });
        assert_eq!(
            code(k.get_worker_key(worker(&r)).await),
            tonic::Code::ResourceExhausted
        );
        // Not assigned to the cluster: refused, and the nonce is NOT consumed...
        let r = signed(
            &gk,
            &outsider,
            KeyTarget::Cluster(ClusterId(CLUSTER)),
            None,
            now_ms(),
        );
        let req = pb::GetClusterKeyRequest {
            header: Some(r.header.clone()),
            cluster_id: CLUSTER.to_vec(),
            signature: r.signature.clone(),
        };
        assert_eq!(
            k.get_cluster_key(req.clone()).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // ...so after the assignment the very same request succeeds once, then is a replay.
        dev_async(&admin_url, &outsider).await;
        k.get_cluster_key(req.clone())
            .await
            .expect("same request after assignment");
        assert_eq!(
            k.get_cluster_key(req).await.unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
        // Slashed: refused from the committed entry on.
        let ok = signed(&gk, &w, KeyTarget::Worker, None, now_ms());
        k.get_worker_key(worker(&ok))
            .await
            .expect("active worker is served");
        slash_async(&admin_url, &w).await;
        let r = signed(&gk, &w, KeyTarget::Worker, None, now_ms());
        assert_eq!(
            code(k.get_worker_key(worker(&r)).await),
            tonic::Code::PermissionDenied
        );
    });

    async fn dev_async(admin: &gatekeeper_integration_tests::Target, w: &Sr25519Keypair) {
        let mut a = gatekeeper_proto::v1::admin_service_client::AdminServiceClient::new(
            admin.channel().unwrap(),
        );
        let req = pb::ApplyDevEventRequest {
            event: Some(pb::apply_dev_event_request::Event::WorkerAddedToCluster(
                pb::DevWorkerAddedToCluster {
                    worker: w.public_key().as_bytes().to_vec(),
                    cluster: CLUSTER.to_vec(),
                },
            )),
            authorization: None,
        };
        let req = operator_signed(admin, &mut a, req).await;
        a.apply_dev_event(req).await.unwrap();
    }
    async fn slash_async(admin: &gatekeeper_integration_tests::Target, w: &Sr25519Keypair) {
        let mut a = gatekeeper_proto::v1::admin_service_client::AdminServiceClient::new(
            admin.channel().unwrap(),
        );
        let req = pb::ApplyDevEventRequest {
            event: Some(pb::apply_dev_event_request::Event::WorkerSlashed(
                pb::DevWorkerSlashed {
                    worker: w.public_key().as_bytes().to_vec(),
                    reason: "test".into(),
                },
            )),
            authorization: None,
        };
        let req = operator_signed(admin, &mut a, req).await;
        a.apply_dev_event(req).await.unwrap();
    }
    /// `req` signed by the operator whose certificate `admin` presents, as `gatekeeper admin`
    /// signs it.
    async fn operator_signed(
        admin: &gatekeeper_integration_tests::Target,
        a: &mut gatekeeper_proto::v1::admin_service_client::AdminServiceClient<
            tonic::transport::Channel,
        >,
        mut req: pb::ApplyDevEventRequest,
    ) -> pb::ApplyDevEventRequest {
        let (cert, key) = admin
            .tls
            .as_ref()
            .and_then(|t| t.identity.clone())
            .expect("an operator certificate");
        let signer = gatekeeper::cli::sign::OperatorSigner::from_files(&cert, &key).unwrap();
        let st = a.status(pb::StatusRequest {}).await.unwrap().into_inner();
        let gk = gatekeeper_raft::state::Bytes32(st.gatekeeper_id.as_slice().try_into().unwrap());
        let command = gatekeeper_raft::state::Command::DevEvent {
            event: gatekeeper::operator::dev_event(req.clone()).unwrap(),
        };
        req.authorization =
            Some(signer.authorize(&gk, gatekeeper::cli::sign::operator_sequence(), &command));
        req
    }
}

#[test]
fn no_delivered_secret_appears_in_clear_in_any_data_dir_or_log() {
    let c = Cluster::start(3, Opts::default());
    wait_unsealed(&c, &[1, 2, 3], 1);
    let w = setup_worker(&c);
    let secrets: Vec<[u8; 32]> = rt().block_on(async {
        let m = MinerClient::new(vec![c.api_addr(1).to_string()], w.clone())
            .with_retry(RetryPolicy::once())
            .with_tls_ca_file(c.ca_file().unwrap())
            .unwrap();
        let a = m.fetch(KeyTarget::Worker, None).await.unwrap();
        let b = m
            .fetch(KeyTarget::Contract(ContractId(CONTRACT)), None)
            .await
            .unwrap();
        vec![*a.keypair.seed(), *b.keypair.seed()]
    });
    // Let snapshots/state records settle, then scan every byte the nodes wrote.
    c.put_ok(1, "settle", "1");
    let mut files = vec![];
    let mut stack = vec![c.dir().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 10, "scanned too few files: {files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        for s in &secrets {
            let hex_s = hex::encode(s);
            assert!(
                !bytes.windows(32).any(|win| win == s),
                "a derived secret appears raw in {}",
                f.display()
            );
            assert!(
                !bytes.windows(64).any(|win| win == hex_s.as_bytes()),
                "a derived secret appears hex-encoded in {}",
                f.display()
            );
        }
    }
}

#[test]
fn a_rotation_that_cannot_complete_aborts_at_its_deadline_and_keeps_the_old_epoch() {
    let c = Cluster::start(3, Opts::default());
    wait_unsealed(&c, &[1, 2, 3], 1);
    let w = setup_worker(&c);
    let before = keys_from(&c, 1, &w, None);
    // Node 3 is down: it cannot acknowledge its share of the new epoch.
    c.stop(3);
    let leader = c.leader_among(&[1, 2]);
    let out = c.admin(
        leader,
        &[
            "rotate",
            "--rotation-id",
            "r-abort",
            "--deadline-ms",
            "2000",
        ],
    );
    assert!(out.success(), "{}", out.describe());
    c.wait_for("the rotation epoch to be aborted", WAIT, || {
        let s = c.status_json(leader)?;
        let e1 = s["epochs"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["epoch"] == 1).cloned())
            .ok_or("no epoch 1 yet")?;
        if e1["status"] == "aborted" {
            Ok(())
        } else {
            Err(format!("epoch 1 is {}", e1["status"]))
        }
    });
    assert_eq!(
        keys_from(&c, 1, &w, None),
        before,
        "epoch 0 is still current"
    );
    // A new rotation may start after the abort.
    let out = c.admin(leader, &["rotate", "--rotation-id", "r-next"]);
    assert!(out.success(), "{}", out.describe());
}

#[test]
fn an_imported_master_gives_locally_derivable_keys_and_never_touches_disk_in_clear() {
    use keyring::derive::{self, Scheme};
    let mut c = Cluster::empty(Opts::default());
    for _ in 0..3 {
        c.add_node();
    }
    // A known master secret, imported (as a Phala cluster would migrate).
    let master = keyring::MasterSecret::generate(&mut OsRng);
    let secret = master.to_bytes();
    let file = c.dir().join("master.hex");
    std::fs::write(&file, hex::encode(secret.as_ref())).unwrap();
    let specs: Vec<String> = [1u64, 2, 3]
        .iter()
        .map(|&m| format!("{m}={}={}", c.raft_addr(m), c.api_addr(m)))
        .collect();
    let mut args = vec!["init", "--import-master-file", file.to_str().unwrap()];
    for s in &specs {
        args.push("--member");
        args.push(s);
    }
    let out = c.admin(1, &args);
    assert!(out.success(), "{}", out.describe());
    // The file is the operator's; remove it before scanning what the nodes wrote.
    std::fs::remove_file(&file).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["imported_master_public_key"],
        hex::encode(master.public_key().as_bytes())
    );
    wait_unsealed(&c, &[1, 2, 3], 1);
    let s = c.status_json(3).unwrap();
    assert_eq!(
        s["epochs"][0]["master_public_key"],
        hex::encode(master.public_key().as_bytes())
    );

    // Keys served by the cluster are exactly the ones derived locally from the imported master.
    let w = setup_worker(&c);
    let (wk, ck) = keys_from(&c, 2, &w, None);
    assert_eq!(
        wk,
        *derive::worker_key(&master, &w.public_key())
            .public_key()
            .as_bytes()
    );
    let cluster_key = derive::cluster_key(&master, Scheme::Phala, &ClusterId(CLUSTER));
    let contract = derive::contract_key(&cluster_key, Scheme::Phala, &ContractId(CONTRACT));
    assert_eq!(
        ck,
        *contract.public_key().as_bytes(),
        "Phala-scheme contract key"
    );

    // Restart everything so snapshots, logs and state records are all on disk, then scan.
    for i in [1, 2, 3] {
        c.stop(i);
    }
    for i in [1, 2, 3] {
        c.restart(i);
    }
    wait_unsealed(&c, &[1, 2, 3], 1);
    let needles: Vec<Vec<u8>> = vec![
        secret[..32].to_vec(),
        secret[32..].to_vec(),
        hex::encode(&secret[..32]).into_bytes(),
        hex::encode(&secret[32..]).into_bytes(),
    ];
    let mut stack = vec![c.dir().to_path_buf()];
    let mut scanned = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap_or_default();
            scanned += 1;
            for n in &needles {
                assert!(
                    !bytes.windows(n.len()).any(|win| win == n.as_slice()),
                    "master secret material appears in clear in {}",
                    p.display()
                );
            }
        }
    }
    assert!(scanned > 10, "scanned only {scanned} files");
}

#[test]
fn a_removed_node_keeps_its_old_share_but_stays_sealed_and_serves_nothing() {
    let mut c = Cluster::start(3, Opts::default());
    wait_unsealed(&c, &[1, 2, 3], 1);
    let w = setup_worker(&c);
    let before = keys_from(&c, 1, &w, None);
    let n4 = c.add_node();
    c.join(1, n4).unwrap_or_else(|e| panic!("join: {e}"));
    wait_unsealed(&c, &[1, 2, 3, n4], 1);
    assert_eq!(keys_from(&c, n4, &w, None), before);
    c.leave(1, n4).unwrap_or_else(|e| panic!("leave: {e}"));
    // The remaining members re-deal and keep serving the same keys.
    wait_unsealed(&c, &[1, 2, 3], 1);
    assert_eq!(keys_from(&c, 2, &w, None), before);
    // The removed node restarts with its data dir (and its old sealed share) intact.
    c.stop(n4);
    c.restart(n4);
    // It may still believe it is a member (a removed node need not learn of its removal), so it
    // opens its one old share and asks its former peers, who refuse it: it can never get past
    // 1 of 2 shares. Watch it for several seconds of retries.
    c.wait_for("the removed node to answer status", WAIT, || {
        c.status_json(n4)
    });
    for _ in 0..40 {
        let s = c.status_json(n4).unwrap();
        assert_ne!(s["seal_status"], "unsealed", "a removed node unsealed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = rt().block_on(async {
        let m = MinerClient::new(vec![c.api_addr(n4).to_string()], w.clone())
            .with_retry(RetryPolicy::once())
            .with_tls_ca_file(c.ca_file().unwrap())
            .unwrap();
        m.fetch(KeyTarget::Worker, None).await.unwrap_err()
    });
    // The removed node runs and answers, but refuses.
    assert!(
        matches!(
            err.error_code(),
            Some(
                "NODE_SEALED"
                    | "NO_LEADER"
                    | "STALE_READ"
                    | "TIMEOUT"
                    | "EPOCH_NOT_FOUND"
                    | "WORKER_NOT_REGISTERED"
            )
        ),
        "a removed node must not serve keys: {err}"
    );
}

#[test]
fn key_requests_are_served_through_a_leader_change_and_refused_once_no_quorum_for_max_stale() {
    // max_stale_ms bounds how long a node serves keys from its applied state while it cannot
    // reach a leader (design.md §10.4).
    let max_stale = Duration::from_millis(3000);
    let c = Cluster::start(
        3,
        Opts {
            max_stale_ms: Some(max_stale.as_millis() as u64),
            ..Opts::default()
        },
    );
    wait_unsealed(&c, &[1, 2, 3], 1);
    let w = setup_worker(&c);
    let leader = c.leader();
    let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    let want = keys_from(&c, followers[0], &w, None);
    // kill -9 the leader: every key request on the survivors is still served, first from their
    // applied state (no leader), then linearizably again from the new leader's term.
    c.kill9(leader);
    let start = std::time::Instant::now();
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(4) {
        for &f in &followers {
            assert_eq!(
                keys_from(&c, f, &w, None),
                want,
                "node {f} after the leader died"
            );
            served += 1;
        }
    }
    let new_leader = c.leader();
    assert!(
        followers.contains(&new_leader),
        "a survivor leads: {new_leader}"
    );
    eprintln!("{served} key requests served through the leader change");
    // Now the last node alone: no quorum. After max_stale it refuses, with NO_LEADER.
    let (last, other) = (followers[0], followers[1]);
    c.kill9(other);
    std::thread::sleep(max_stale + Duration::from_millis(1500));
    let r = rt().block_on(async {
        let m = MinerClient::new(vec![c.api_addr(last).to_string()], w.clone())
            .with_retry(RetryPolicy::once())
            .with_tls_ca_file(c.ca_file().unwrap())
            .unwrap();
        m.fetch(KeyTarget::Worker, None).await
    });
    let Err(e) = r else {
        panic!("served without a quorum past max_stale");
    };
    assert!(
        matches!(e.error_code(), Some("NO_LEADER" | "STALE_READ" | "TIMEOUT")),
        "{e}"
    );
}
