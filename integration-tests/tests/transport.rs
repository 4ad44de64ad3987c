//! Transport security against real `gatekeeper node` processes (docs/design.md §10.6): for each
//! listener and each RPC on it, callers that must not get in are refused — plaintext, TLS
//! without a client certificate, a certificate from another CA, a valid certificate of a
//! non-member, a member's certificate used in another member's name, a member's certificate used
//! as an operator's — and every node's state is unchanged afterwards, while valid members,
//! operators and miners keep working. Also: a join of a node that never starts leaves the voter
//! set as it was and says why, and a renewed certificate is picked up on SIGHUP.

use gatekeeper_integration_tests::{
    error_code as code_of, ClientCerts, Cluster, Opts, Raw, Target, WAIT,
};
use gatekeeper_proto::raft::v1 as rpb;
use gatekeeper_proto::v1 as pb;
use prost::Message;
use std::path::PathBuf;
use std::time::Duration;
use tonic::Status;

/// One call: `path` on `target` with `body` (a client-streaming call for InstallSnapshot).
async fn call(target: &Target, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let endpoint = target
        .endpoint()
        .map_err(|e| Status::internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    let ch = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connect: {e:?}")))?;
    let mut g = tonic::client::Grpc::new(ch);
    g.ready()
        .await
        .map_err(|e| Status::unavailable(format!("ready: {e}")))?;
    let p = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    if path.ends_with("/InstallSnapshot") {
        let s = tonic::codegen::tokio_stream::iter(vec![body]);
        return g
            .client_streaming(tonic::Request::new(s), p, Raw)
            .await
            .map(|r| r.into_inner());
    }
    g.unary(tonic::Request::new(body), p, Raw)
        .await
        .map(|r| r.into_inner())
}

/// One node's view of its replicated state: id, last log index, audit sequence, epochs with
/// their status, number of members.
type NodeDigest = (u64, Option<u64>, u64, Vec<(u64, String)>, usize);

/// What every node says about its replicated state: a refused call must change none of it.
fn digest(c: &Cluster) -> Vec<NodeDigest> {
    c.ids()
        .into_iter()
        .map(|i| {
            let s = c.status(i).unwrap_or_else(|e| c.fail(&e));
            (
                i,
                s.last_log_index,
                s.audit_sequence,
                s.epochs
                    .iter()
                    .map(|e| (e.epoch, e.status.clone()))
                    .collect(),
                s.members.len(),
            )
        })
        .collect()
}

fn vote(term: u64, node_id: u64) -> rpb::Vote {
    rpb::Vote {
        leader_id: Some(rpb::LeaderId { term, node_id }),
        committed: true,
    }
}

const RAFT: &[&str] = &[
    "/gatekeeper.raft.v1.RaftService/AppendEntries",
    "/gatekeeper.raft.v1.RaftService/Vote",
    "/gatekeeper.raft.v1.RaftService/InstallSnapshot",
    "/gatekeeper.raft.v1.RaftService/ClientWrite",
    "/gatekeeper.raft.v1.RaftService/ReadIndex",
    "/gatekeeper.v1.PeerService/FetchShare",
];

const ADMIN: &[&str] = &[
    "/gatekeeper.v1.AdminService/Status",
    "/gatekeeper.v1.AdminService/Members",
    "/gatekeeper.v1.AdminService/Init",
    "/gatekeeper.v1.AdminService/Join",
    "/gatekeeper.v1.AdminService/Leave",
    "/gatekeeper.v1.AdminService/Rotate",
    "/gatekeeper.v1.AdminService/Retire",
    "/gatekeeper.v1.AdminService/ApplyDevEvent",
    "/gatekeeper.v1.AdminService/WriteCanary",
    "/gatekeeper.v1.AdminService/ReadCanary",
    "/gatekeeper.v1.AdminService/SetFault",
];

/// The body of `path` that claims to come from node `claimed` (where the method carries a
/// sender) and would change state if it were accepted.
fn body(path: &str, claimed: u64, term: u64) -> Vec<u8> {
    match path.rsplit('/').next().unwrap() {
        "AppendEntries" => rpb::AppendEntriesRequest {
            vote: Some(vote(term, claimed)),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
            election: vec![],
        }
        .encode_to_vec(),
        "Vote" => rpb::VoteRequest {
            vote: Some(rpb::Vote {
                leader_id: Some(rpb::LeaderId {
                    term: term + 5,
                    node_id: claimed,
                }),
                committed: false,
            }),
            last_log_id: None,
        }
        .encode_to_vec(),
        "InstallSnapshot" => rpb::SnapshotChunk {
            header: Some(rpb::SnapshotHeader {
                vote: Some(vote(term, claimed)),
                meta: None,
                total_size: 0,
                election: vec![],
            }),
            offset: 0,
            data: vec![],
            done: true,
        }
        .encode_to_vec(),
        "ClientWrite" => rpb::ClientWriteRequest {
            command: b"{}".to_vec(),
        }
        .encode_to_vec(),
        "FetchShare" => pb::FetchShareRequest {
            requester_node_id: claimed,
            ..Default::default()
        }
        .encode_to_vec(),
        "Leave" => pb::LeaveRequest {
            node_id: 3,
            authorization: None,
        }
        .encode_to_vec(),
        "WriteCanary" => pb::WriteCanaryRequest {
            key: "intruder".into(),
            value: "x".into(),
            authorization: None,
        }
        .encode_to_vec(),
        "Retire" => pb::RetireRequest {
            min_epoch: 5,
            authorization: None,
        }
        .encode_to_vec(),
        "SetFault" => pb::SetFaultRequest { isolate: true }.encode_to_vec(),
        _ => vec![],
    }
}

#[test]
fn every_listener_refuses_every_caller_it_must_and_nothing_changes() {
    let c = Cluster::start(3, Opts::default());
    let leader = c.leader();
    c.wait_for("every node to be unsealed", WAIT, || {
        for i in c.ids() {
            let s = c.status(i)?;
            if s.seal_status != "unsealed" {
                return Err(format!("node {i}: {}", s.seal_status));
            }
        }
        Ok(())
    });
    c.wait_converged(&c.ids(), 0);
    let term = c.status(leader).unwrap().term;
    let before = digest(&c);

    // Extra credentials: another CA with certificates named like ours, and certificates of our
    // CA that belong to no member.
    let dir = c.dir().to_path_buf();
    let other = dir.join("other-ca");
    let ours = c.certs_dir();
    let (o, ca) = (other.display().to_string(), ours.display().to_string());
    c.certs(&["ca", "--out", &o]);
    c.certs(&[
        "node",
        "--ca",
        &o,
        "--name",
        "node-1",
        "--host",
        "127.0.0.1",
        "--out",
        &o,
    ]);
    c.certs(&["operator", "--ca", &o, "--name", "operator", "--out", &o]);
    let stray = dir.join("stray");
    let s = stray.display().to_string();
    c.certs(&[
        "node",
        "--ca",
        &ca,
        "--name",
        "node-9",
        "--host",
        "127.0.0.1",
        "--out",
        &s,
    ]);
    c.certs(&["operator", "--ca", &ca, "--name", "mallory", "--out", &s]);
    let pair = |d: &PathBuf, n: &str| (d.join(format!("{n}.pem")), d.join(format!("{n}.key")));
    let our_ca = ours.join("ca.pem");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = *c.ids().iter().find(|&&i| i != leader).unwrap();
    let victim = f;
    // (label, client TLS; None = plaintext)
    let strangers = |for_admin: bool| -> Vec<(&'static str, Option<ClientCerts>)> {
        let mut v = vec![
            ("plaintext", None),
            (
                "TLS without a client certificate",
                Some(ClientCerts {
                    ca: our_ca.clone(),
                    identity: None,
                }),
            ),
            (
                "a certificate from another CA",
                Some(ClientCerts {
                    ca: our_ca.clone(),
                    identity: Some(pair(&other, if for_admin { "operator" } else { "node-1" })),
                }),
            ),
            (
                "a non-member's node certificate of our CA",
                Some(ClientCerts {
                    ca: our_ca.clone(),
                    identity: Some(pair(&stray, "node-9")),
                }),
            ),
        ];
        if !for_admin {
            v.push((
                "an operator certificate of our CA",
                Some(ClientCerts {
                    ca: our_ca.clone(),
                    identity: Some(pair(&stray, "mallory")),
                }),
            ));
        } else {
            v.push((
                "a member's node certificate used as an operator",
                Some(ClientCerts {
                    ca: our_ca.clone(),
                    identity: Some(c.node_cert(leader)),
                }),
            ));
        }
        v
    };

    let mut refusals = 0;
    rt.block_on(async {
        // Cluster listener of a follower: every Raft and Peer method.
        for (label, tls) in strangers(false) {
            let target = Target {
                addr: c.raft_addr(victim).to_string(),
                tls,
            };
            for path in RAFT {
                let r = call(&target, path, body(path, leader, term)).await;
                let Err(s) = r else {
                    c.fail(&format!("{label}: {path} was accepted"));
                };
                if label.contains("non-member") || label.contains("operator") {
                    assert_eq!(
                        (s.code(), code_of(&s).as_str()),
                        (tonic::Code::PermissionDenied, "PEER_NOT_ADMITTED"),
                        "{label}: {path}: {s:?}"
                    );
                }
                refusals += 1;
            }
        }
        // A member's certificate in another member's name: node `other_member` claims to be the
        // leader on every method that carries a sender.
        let other_member = *c
            .ids()
            .iter()
            .find(|&&i| i != leader && i != victim)
            .unwrap();
        let impostor = c.raft_target(victim, other_member);
        for path in [RAFT[0], RAFT[1], RAFT[2], RAFT[5]] {
            let s = call(&impostor, path, body(path, leader, term))
                .await
                .expect_err(path);
            assert_eq!(
                (s.code(), code_of(&s).as_str()),
                (tonic::Code::PermissionDenied, "PEER_NOT_ADMITTED"),
                "node {other_member} as node {leader}: {path}: {s:?}"
            );
            assert!(s.message().contains("claims node"), "{s:?}");
            refusals += 1;
        }
        // Admin listener of the leader: every AdminService method.
        for (label, tls) in strangers(true) {
            let target = Target {
                addr: c.admin_addr(leader).to_string(),
                tls,
            };
            for path in ADMIN {
                let r = call(&target, path, body(path, leader, term)).await;
                let Err(s) = r else {
                    c.fail(&format!("{label}: {path} was accepted"));
                };
                if label.contains("used as an operator") {
                    assert_eq!(
                        (s.code(), code_of(&s).as_str()),
                        (tonic::Code::PermissionDenied, "NOT_AN_OPERATOR"),
                        "{label}: {path}: {s:?}"
                    );
                }
                refusals += 1;
            }
        }
        // Key listener: plaintext is refused (it is TLS-only); an operator's or a node's
        // certificate gets nothing more than anyone else (an unsigned request is refused).
        let plain = Target {
            addr: c.api_addr(leader).to_string(),
            tls: None,
        };
        for path in [
            "/gatekeeper.v1.KeyService/GetWorkerKey",
            "/gatekeeper.v1.KeyService/GetClusterKey",
            "/gatekeeper.v1.KeyService/GetContractKey",
            "/gatekeeper.v1.KeyService/GetClusterInfo",
        ] {
            call(&plain, path, vec![]).await.expect_err(path);
            refusals += 1;
        }
        // The key listener does not serve the other listeners' services.
        let key_tls = c.key_target(leader);
        for path in [ADMIN[0], RAFT[3], RAFT[5]] {
            let s = call(&key_tls, path, vec![]).await.expect_err(path);
            assert_eq!(s.code(), tonic::Code::Unimplemented, "{path}: {s:?}");
        }
    });
    eprintln!("{refusals} calls refused");

    // Nothing changed on any node, and valid callers still work: operator, member traffic
    // (a write replicates), miner (GetClusterInfo over TLS).
    assert_eq!(digest(&c), before, "a refused call changed a node's state");
    let last = c.put_ok(leader, "after-strangers", "ok").log_index;
    c.wait_converged(&c.ids(), last);
    rt.block_on(async {
        let info = call(
            &c.key_target(f),
            "/gatekeeper.v1.KeyService/GetClusterInfo",
            pb::GetClusterInfoRequest::default().encode_to_vec(),
        )
        .await
        .expect("a miner reads the cluster info over TLS");
        assert!(!info.is_empty());
    });
}

#[test]
fn a_join_of_a_node_that_never_starts_leaves_the_voters_unchanged() {
    let mut c = Cluster::start(
        3,
        Opts {
            extra_config: vec!["join_timeout_ms = 3000".into()],
            ..Opts::default()
        },
    );
    let leader = c.leader();
    let port = c.reserve_port();
    let before = c.members(leader).unwrap_or_else(|e| c.fail(&e));
    let out = c.admin(
        leader,
        &[
            "join",
            "--node-id",
            "7",
            "--raft-address",
            &format!("127.0.0.1:{port}"),
            "--api-address",
            "127.0.0.1:1",
        ],
    );
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("node 7 was not made a voter"),
        "{}",
        out.describe()
    );
    let after = c.wait_for("node 7 to be gone from the membership", WAIT, || {
        let m = c.members(leader)?;
        if m.members.iter().any(|x| x.id == 7) {
            Err(format!("{m:?}"))
        } else {
            Ok(m)
        }
    });
    assert_eq!(after.members, before.members);
    let _ = &mut c;
}

/// The SPKI SHA-256 of the certificate the TLS listener at `addr` serves now (a fresh
/// handshake, verified against `ca`).
fn served_spki(ca: &std::path::Path, addr: &str) -> [u8; 32] {
    use gatekeeper::tls::{CertInfo, ClientTls};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = ClientTls::load(ca, None, std::time::SystemTime::now())
            .unwrap()
            .rustls_config()
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = gatekeeper::tls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        CertInfo::parse(&leaf).unwrap().spki_sha256
    })
}

fn file_spki(cert: &std::path::Path) -> [u8; 32] {
    let der = gatekeeper::tls::load_certs(cert).unwrap().remove(0);
    gatekeeper::tls::CertInfo::parse(&der).unwrap().spki_sha256
}

#[test]
fn a_renewed_leader_certificate_is_served_after_sighup_and_the_cluster_keeps_working() {
    let c = Cluster::start(3, Opts::default());
    // The leader's certificate: the hardest case (its replication streams outlive the reload,
    // and its peers must keep admitting it while its new key is not registered yet).
    let n = c.leader();
    let ca = c.ca_file().unwrap();
    let (cert, key) = c.node_cert(n);
    let old = file_spki(&cert);
    assert_eq!(served_spki(&ca, c.api_addr(n)), old);

    // A renewed certificate (new key) over the old files: not served before SIGHUP...
    c.issue_node_cert(n, true);
    let new = file_spki(&cert);
    assert_ne!(new, old);
    assert_eq!(served_spki(&ca, c.api_addr(n)), old);
    // ...and served on all three listeners after it.
    let hup = |c: &Cluster| {
        let pid = c.pid(n).unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    hup(&c);
    c.wait_for("the renewed certificate to be served", WAIT, || {
        // The cluster and admin listeners ask for a client certificate; a TLS 1.3 client still
        // sees the server's certificate before the server judges its (missing) one.
        for addr in [c.api_addr(n), c.raft_addr(n), c.admin_addr(n)] {
            if served_spki(&ca, addr) != new {
                return Err(format!("{addr} still serves the old certificate"));
            }
        }
        Ok(())
    });
    // The node keeps working with its new certificate: writes through it commit (forwarded to
    // the leader as this node), it re-registers its new key, and a broken file on a later
    // SIGHUP keeps the new certificate in service.
    let last = c.put_ok(n, "after-renewal", "ok").log_index;
    c.wait_converged(&c.ids(), last);
    // Its peers now see the new certificate on its outgoing connections too: a follower
    // restarted now (fresh connections both ways) catches up from it.
    let f = *c.ids().iter().find(|&&i| i != n).unwrap();
    let mut c = c;
    c.kill9(f);
    c.restart(f);
    let last = c.put_ok(n, "after-follower-restart", "ok").log_index;
    c.wait_converged(&c.ids(), last);
    std::fs::write(&key, "not a key").unwrap();
    hup(&c);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(served_spki(&ca, c.api_addr(n)), new);
    let last = c.put_ok(n, "after-broken-reload", "ok").log_index;
    c.wait_converged(&c.ids(), last);
    let log = std::fs::read_to_string(c.dir().join(format!("n{n}/stderr.log"))).unwrap();
    assert!(
        log.contains("TLS reload failed"),
        "no reload failure logged"
    );
}

#[test]
fn the_cli_explains_the_common_tls_mistakes() {
    let c = Cluster::start(1, Opts::default());
    let bin = gatekeeper_integration_tests::gatekeeper_bin().unwrap();
    let d = c.certs_dir();
    let other = c.dir().join("other-ca");
    let o = other.display().to_string();
    let ca = d.display().to_string();
    c.certs(&["ca", "--out", &o]);
    c.certs(&[
        "operator", "--ca", &ca, "--name", "old", "--out", &o, "--days", "0",
    ]);
    // `--days 0` ends the certificate's validity now (seconds): let it pass.
    std::thread::sleep(Duration::from_millis(2100));
    let (op_cert, op_key) = c.operator_cert();
    let run = |endpoint: &str, flags: &[&str]| {
        let mut args = vec!["admin", "--endpoint", endpoint];
        args.extend_from_slice(flags);
        args.push("status");
        let out = gatekeeper_integration_tests::run_command(&bin, &args, Duration::from_secs(30));
        assert!(!out.success(), "{}", out.describe());
        out.stderr
    };
    let s = |p: &std::path::Path| p.display().to_string();
    let good = [
        "--ca".to_string(),
        s(&d.join("ca.pem")),
        "--cert".into(),
        s(&op_cert),
        "--key".into(),
        s(&op_key),
    ];
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let cases: Vec<(&str, String, Vec<String>, &str)> = vec![
        (
            "wrong CA",
            c.admin_addr(1).to_string(),
            vec![
                "--ca".into(),
                s(&other.join("ca.pem")),
                "--cert".into(),
                s(&op_cert),
                "--key".into(),
                s(&op_key),
            ],
            "not signed by the CA given with --ca",
        ),
        (
            "plaintext client to a TLS port",
            c.admin_addr(1).to_string(),
            vec!["--plaintext".into()],
            "drop --plaintext",
        ),
        (
            "the Raft port as admin endpoint",
            c.raft_addr(1).to_string(),
            good.iter().map(|x| x.to_string()).collect(),
            "does not serve AdminService",
        ),
        (
            "the key port as admin endpoint",
            c.api_addr(1).to_string(),
            good.iter().map(|x| x.to_string()).collect(),
            "does not serve AdminService",
        ),
        (
            "an expired operator certificate",
            c.admin_addr(1).to_string(),
            vec![
                "--ca".into(),
                s(&d.join("ca.pem")),
                "--cert".into(),
                s(&other.join("old.pem")),
                "--key".into(),
                s(&other.join("old.key")),
            ],
            "expired",
        ),
        (
            "no TLS material at all",
            c.admin_addr(1).to_string(),
            vec![],
            "pass --ca (the cluster CA), --cert and --key",
        ),
    ];
    for (what, endpoint, flags, says) in cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let stderr = run(&endpoint, &flags);
        assert!(
            stderr.contains(says),
            "{what}: expected {says:?} in:\n{stderr}"
        );
    }
    // And the right material works.
    let mut args = vec!["admin", "--endpoint", c.admin_addr(1)];
    args.extend_from_slice(&good);
    args.push("status");
    let out = gatekeeper_integration_tests::run_command(&bin, &args, Duration::from_secs(30));
    assert!(out.success(), "{}", out.describe());
}
