//! Every refusal of KeyService, PeerService and AdminService carries its stable code in the
//! `gatekeeper-error-code` response metadata (docs/api.md "Error codes"), against a real node
//! over real gRPC; undecodable protobuf is INVALID_ARGUMENT + MALFORMED_REQUEST.

use gatekeeper_integration_tests::{signed_worker_request, Cluster, Opts};
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::admin_service_client::AdminServiceClient;
use gatekeeper_proto::v1::key_service_client::KeyServiceClient;
use gatekeeper_proto::v1::peer_service_client::PeerServiceClient;
use keyring::{Sr25519Keypair, X25519SecretKey};
use rand_core::OsRng;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(45);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// (gRPC code, `gatekeeper-error-code`) of a refused call; panics if it succeeded.
fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
) -> (tonic::Code, String) {
    let s = r.expect_err("the call should have been refused");
    let code = s
        .metadata()
        .get("gatekeeper-error-code")
        .unwrap_or_else(|| panic!("no gatekeeper-error-code on {s:?}"))
        .to_str()
        .unwrap()
        .to_string();
    (s.code(), code)
}

#[test]
fn every_service_sends_the_stable_error_code() {
    let c = Cluster::start(1, Opts::default());
    c.wait_for("node 1 to be unsealed", WAIT, || {
        let s = c.status(1)?;
        if s.seal_status == "unsealed" {
            Ok(())
        } else {
            Err(format!("seal_status {}", s.seal_status))
        }
    });
    let out = c.admin(1, &["status", "--json"]);
    assert!(out.success(), "{}", out.describe());
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let gk = hex::decode(status["gatekeeper_id"].as_str().unwrap()).unwrap();
    let (key_t, peer_t, admin_t) = (c.key_target(1), c.raft_target(1, 1), c.admin_target(1));
    let (operator_cert, operator_key) = c.operator_cert();
    let gk_id = gatekeeper_raft::state::Bytes32(gk.as_slice().try_into().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use tonic::Code;
        let mut keys = KeyServiceClient::new(key_t.channel().unwrap());
        let mut peers = PeerServiceClient::new(peer_t.channel().unwrap());
        let mut admin = AdminServiceClient::new(admin_t.channel().unwrap());
        let stranger = Sr25519Keypair::generate(&mut OsRng);

        // KeyService.
        assert_eq!(
            refused(
                keys.get_worker_key(pb::GetWorkerKeyRequest::default())
                    .await
            ),
            (Code::InvalidArgument, "INVALID_ARGUMENT".into())
        );
        let mut short = signed_worker_request(&gk, &stranger);
        short.header.as_mut().unwrap().recipient_public_key.pop();
        assert_eq!(
            refused(keys.get_worker_key(short).await),
            (Code::InvalidArgument, "KEYRING_INVALID_LENGTH".into())
        );
        assert_eq!(
            refused(
                keys.get_worker_key(signed_worker_request(&[9; 32], &stranger))
                    .await
            ),
            (Code::InvalidArgument, "WRONG_GATEKEEPER".into())
        );
        let mut forged = signed_worker_request(&gk, &stranger);
        forged.signature[3] ^= 1;
        assert_eq!(
            refused(keys.get_worker_key(forged).await),
            (Code::Unauthenticated, "BAD_SIGNATURE".into())
        );
        assert_eq!(
            refused(
                keys.get_worker_key(signed_worker_request(&gk, &stranger))
                    .await
            ),
            (Code::NotFound, "WORKER_NOT_REGISTERED".into())
        );
        let mut big = signed_worker_request(&gk, &stranger);
        big.header.as_mut().unwrap().attestation = Some(pb::Attestation {
            kind: 3,
            evidence: vec![0; 70 << 10],
            collateral: vec![],
        });
        assert_eq!(
            refused(keys.get_worker_key(big).await),
            (Code::ResourceExhausted, "REQUEST_TOO_LARGE".into())
        );

        // Undecodable protobuf: a LeaveRequest (field 1 a varint) sent as GetWorkerKey (field 1 a
        // message) is the caller's fault, not the server's.
        let ch = key_t.endpoint().unwrap().connect().await.unwrap();
        let mut raw = tonic::client::Grpc::new(ch);
        raw.ready().await.unwrap();
        let r: Result<tonic::Response<pb::KeyResponse>, tonic::Status> = raw
            .unary(
                tonic::Request::new(pb::LeaveRequest {
                    node_id: 5,
                    authorization: None,
                }),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/gatekeeper.v1.KeyService/GetWorkerKey",
                ),
                gatekeeper_proto::codec::GatekeeperCodec::default(),
            )
            .await;
        assert_eq!(
            refused(r),
            (Code::InvalidArgument, "MALFORMED_REQUEST".into())
        );

        // Statuses tonic makes itself get a code too: a message above the transport's limit, an
        // unknown method.
        let mut huge = signed_worker_request(&gk, &stranger);
        huge.header.as_mut().unwrap().attestation = Some(pb::Attestation {
            kind: 3,
            evidence: vec![0; 200 << 10],
            collateral: vec![],
        });
        assert_eq!(
            refused(keys.get_worker_key(huge).await),
            (Code::OutOfRange, "MESSAGE_TOO_LARGE".into())
        );
        raw.ready().await.unwrap();
        let r: Result<tonic::Response<pb::KeyResponse>, tonic::Status> = raw
            .unary(
                tonic::Request::new(pb::LeaveRequest {
                    node_id: 5,
                    authorization: None,
                }),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/gatekeeper.v1.KeyService/NoSuchMethod",
                ),
                gatekeeper_proto::codec::GatekeeperCodec::default(),
            )
            .await;
        assert_eq!(refused(r), (Code::Unimplemented, "UNIMPLEMENTED".into()));

        // PeerService (on the cluster listener, as node 1 with its own certificate).
        assert_eq!(
            refused(
                peers
                    .fetch_share(pb::FetchShareRequest {
                        requester_node_id: 1,
                        ..Default::default()
                    })
                    .await
            ),
            (Code::InvalidArgument, "KEYRING_INVALID_LENGTH".into())
        );
        let intruder = pb::FetchShareRequest {
            gatekeeper_id: gk.clone(),
            requester_node_id: 77,
            epoch: 0,
            generation: 0,
            requester_hpke_public_key: X25519SecretKey::generate(&mut OsRng)
                .public_key()
                .as_bytes()
                .to_vec(),
            nonce: vec![1; 32],
            timestamp_ms: now_ms(),
            evidence: None,
            signature: vec![0; 64],
        };
        // Node 1's certificate speaking for node 77: refused before any check of the request.
        assert_eq!(
            refused(peers.fetch_share(intruder).await),
            (Code::PermissionDenied, "PEER_NOT_ADMITTED".into())
        );

        // AdminService.
        assert_eq!(
            refused(
                admin
                    .write_canary(pb::WriteCanaryRequest {
                        key: String::new(),
                        value: String::new(),
                        authorization: None,
                    })
                    .await
            ),
            (Code::InvalidArgument, "INVALID_ARGUMENT".into())
        );
        assert_eq!(
            refused(
                admin
                    .leave(pb::LeaveRequest {
                        node_id: 99,
                        authorization: None
                    })
                    .await
            ),
            (Code::NotFound, "MEMBER_NOT_FOUND".into())
        );
        assert_eq!(
            refused(
                admin
                    .join(pb::JoinRequest {
                        node_id: 1,
                        raft_address: "127.0.0.1:1".into(),
                        api_address: "127.0.0.1:2".into(),
                        ..Default::default()
                    })
                    .await
            ),
            (Code::AlreadyExists, "ALREADY_MEMBER".into())
        );
        assert_eq!(
            refused(admin.init(pb::InitRequest::default()).await),
            (Code::FailedPrecondition, "ALREADY_INITIALIZED".into())
        );
        // Checked before the arguments (and before a secret is staged in the enclave).
        assert_eq!(
            refused(
                admin
                    .init(pb::InitRequest {
                        imported_master_secret: Some(pb::HpkeEnvelope {
                            version: 99,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
            ),
            (Code::FailedPrecondition, "ALREADY_INITIALIZED".into())
        );
        let rotate = pb::RotateRequest {
            rotation_id: "errors-test".into(),
            ..Default::default()
        };
        // Without the operator's signature (what `gatekeeper admin` adds): refused.
        assert_eq!(
            refused(admin.rotate(rotate.clone()).await),
            (Code::PermissionDenied, "COMMAND_NOT_AUTHORIZED".into())
        );
        let signed = |seq: u64| {
            let signer =
                gatekeeper::cli::sign::OperatorSigner::from_files(&operator_cert, &operator_key)
                    .unwrap();
            let command = gatekeeper::operator::rotation(
                &rotate,
                60_000,
                gatekeeper::clock::now_ms(),
                || unreachable!("the id is given"),
            );
            pb::RotateRequest {
                authorization: Some(signer.authorize(&gk_id, seq, &command)),
                ..rotate.clone()
            }
        };
        let seq = gatekeeper::cli::sign::operator_sequence();
        admin.rotate(signed(seq)).await.expect("first rotation");
        assert_eq!(
            refused(admin.rotate(signed(seq + 1)).await),
            (Code::AlreadyExists, "ALREADY_EXISTS".into())
        );
    });
}

#[test]
fn a_follower_refuses_membership_calls_naming_the_leaders_admin_address_and_the_cli_follows() {
    let c = Cluster::start(3, Opts::default());
    let leader = c.leader();
    let follower = *c.ids().iter().find(|i| **i != leader).unwrap();
    // Every node registers its admin address; wait until the leader's is known to the follower.
    let leader_admin = c.admin_addr(leader).to_string();
    let target = c.admin_target(follower);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tonic::Code;
        let mut admin = AdminServiceClient::new(target.channel().unwrap());
        let deadline = std::time::Instant::now() + WAIT;
        let s = loop {
            let s = admin
                .leave(pb::LeaveRequest {
                    node_id: 99,
                    authorization: None,
                })
                .await
                .unwrap_err();
            if s.metadata().get("gatekeeper-leader-admin").is_some()
                || std::time::Instant::now() > deadline
            {
                break s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(
            refused::<()>(Err(s.clone())),
            (Code::FailedPrecondition, "NOT_LEADER".into())
        );
        assert_eq!(
            s.metadata().get("gatekeeper-leader-admin").unwrap(),
            leader_admin.as_str()
        );
        let join = admin
            .join(pb::JoinRequest {
                node_id: leader,
                raft_address: "127.0.0.1:1".into(),
                api_address: "127.0.0.1:2".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(
            refused(join),
            (Code::FailedPrecondition, "NOT_LEADER".into())
        );
    });
    // The CLI follows the hint: the leader answers with its own codes.
    let out = c.admin(follower, &["leave", "--node-id", "99"]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("retrying on the leader at")
            && out.stderr.contains("node 99 is not a member"),
        "{}",
        out.describe()
    );
}
