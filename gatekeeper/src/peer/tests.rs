//! Unit tests of the pure decisions in this module (no network, no processes, no sleeps).
//!
//! One test per check of docs/api.md "PeerService.FetchShare": each starts from a request that
//! passes ([`World::new`] + [`Req::new`]), breaks exactly one thing and expects that check's code
//! and gRPC status. A breakage is a `fn(&mut World, &mut Req)`, so the order test can combine two.

use super::*;
use crate::attestation::PolicyKind;
use crate::replay::NonceCache;
use gatekeeper_raft::state::{DealingRecord, EpochRecord, HexBytes, MemberRecord};
use keyring::sign::sign;
use keyring::{Sr25519Keypair, X25519SecretKey};
use std::collections::BTreeSet;
use tonic::Code;

/// The responder's clock in every test.
const NOW: u64 = 1_700_000_000_000;
/// The replay window, ms either side.
const WINDOW: u64 = 60_000;
const GK: [u8; 32] = [0x11; 32];
/// The requesting node; nodes 1–3 are the Raft membership.
const REQUESTER: u64 = 2;
/// The epoch asked for (active) and its dealing generation.
const EPOCH: u64 = 1;
const GENERATION: u64 = 3;

fn identity(node: u64) -> Sr25519Keypair {
    Sr25519Keypair::from_seed(&[node as u8; 32])
}

fn hpke(node: u64) -> X25519PublicKey {
    X25519SecretKey::from_bytes(&[0x40 + node as u8; 32])
        .unwrap()
        .public_key()
}

/// Seed of the trusted dev attestation key.
const DEV_SEED: [u8; 32] = [0xDE; 32];

fn dev_key() -> Sr25519Keypair {
    Sr25519Keypair::from_seed(&DEV_SEED)
}

fn master_public_key() -> Sr25519PublicKey {
    Sr25519Keypair::from_seed(&[0x4D; 32]).public_key()
}

fn member(node: u64) -> MemberRecord {
    MemberRecord {
        node_id: node,
        raft_address: format!("n{node}:1"),
        api_address: format!("n{node}:2"),
        identity_public_key: Bytes32(*identity(node).public_key().as_bytes()),
        hpke_public_key: Bytes32(*hpke(node).as_bytes()),
        attestation: HexBytes(vec![]),
        tls_spki: None,
        admin_address: None,
    }
}

fn epoch(n: u64, status: EpochStatus) -> EpochRecord {
    EpochRecord {
        epoch: n,
        threshold: 2,
        master_public_key: Bytes32(*master_public_key().as_bytes()),
        cluster_signing_public_key: Bytes32([0; 32]),
        status,
        dealing: DealingRecord {
            generation: GENERATION,
            commitments: vec![],
            wrapped_nonce: HexBytes(vec![]),
            wrapped_ciphertext: HexBytes(vec![]),
            shares: vec![],
            acked: BTreeSet::new(),
        },
    }
}

/// Everything besides the request that [`authorize`] reads.
struct World {
    state: GatekeeperState,
    /// The current Raft membership.
    members: Vec<u64>,
    policy: Policy,
    nonces: NonceCache,
    now_ms: u64,
}

impl World {
    /// An initialised cluster of nodes 1–3 (each with its member record), epoch 0 retired and
    /// epoch 1 active, and a dev attestation policy for members.
    fn new() -> Self {
        let mut state = GatekeeperState {
            gatekeeper_id: Some(Bytes32(GK)),
            ..Default::default()
        };
        state.members = (1..=3).map(|n| (n, member(n))).collect();
        state.epochs.insert(0, epoch(0, EpochStatus::Retired));
        state
            .epochs
            .insert(EPOCH, epoch(EPOCH, EpochStatus::Active));
        World {
            state,
            members: vec![1, 2, 3],
            policy: Policy {
                kind: PolicyKind::Dev,
                allowed_mrenclave: vec![],
                allowed_mrsigner: vec![],
                allowed_mrtd: vec![],
                min_tcb_status: "UpToDate".into(),
                max_evidence_age_secs: 300,
                dev_key: Some(dev_key().public_key()),
                default_collateral: None,
            },
            nonces: NonceCache::new(WINDOW),
            now_ms: NOW,
        }
    }

    fn authorize(&self, r: &ParsedShareRequest) -> ApiResult<AuthorizedShare> {
        authorize(
            &self.state,
            &self.members,
            r,
            &self.policy,
            self.nonces.freshness(&r.body.nonce, self.now_ms),
            self.now_ms,
        )
    }

    /// [`parse`] then [`authorize`].
    fn check(&self, r: &Req) -> ApiResult<AuthorizedShare> {
        self.authorize(&parse(r.message())?)
    }
}

/// The evidence a request carries.
#[derive(Clone)]
enum Evidence {
    /// None at all.
    Missing,
    /// A dev attestation by the key of this seed over the request's report data (the requester's
    /// registered identity key, the HPKE key and the nonce as they are in the message when sent).
    Dev([u8; 32]),
    /// Exactly this.
    Raw(pb::Attestation),
}

/// A FetchShare request as a node sends it: the message, with its evidence and signature made
/// when it is sent.
#[derive(Clone)]
struct Req {
    msg: pb::FetchShareRequest,
    evidence: Evidence,
    signer: Sr25519Keypair,
}

impl Req {
    /// Node 2 asks for its share of the active epoch's current dealing.
    fn new() -> Self {
        Req {
            msg: pb::FetchShareRequest {
                gatekeeper_id: GK.to_vec(),
                requester_node_id: REQUESTER,
                epoch: EPOCH,
                generation: GENERATION,
                requester_hpke_public_key: hpke(REQUESTER).as_bytes().to_vec(),
                nonce: vec![0xAA; 32],
                timestamp_ms: NOW,
                evidence: None,
                signature: vec![],
            },
            evidence: Evidence::Dev(DEV_SEED),
            signer: identity(REQUESTER),
        }
    }

    /// The attestation sent: `None` if missing, or if the message's fields lack their lengths.
    fn attestation(&self) -> Option<pb::Attestation> {
        match &self.evidence {
            Evidence::Missing => None,
            Evidence::Raw(a) => Some(a.clone()),
            Evidence::Dev(seed) => {
                let hpke = X25519PublicKey::from_slice(&self.msg.requester_hpke_public_key).ok()?;
                let nonce: [u8; 32] = self.msg.nonce.as_slice().try_into().ok()?;
                let subject = identity(REQUESTER).public_key();
                let rd = keyring::sign::report_data(subject.as_bytes(), &hpke, &nonce);
                Some(pb::Attestation {
                    kind: pb::AttestationKind::Dev as i32,
                    evidence: keyring::dev_attestation::issue(
                        &Sr25519Keypair::from_seed(seed),
                        &rd,
                        NOW / 1000,
                    ),
                    collateral: vec![],
                })
            }
        }
    }

    /// The message as sent: with its evidence, signed by `signer` over the canonical body (as
    /// [`client::fetch_share`] signs it). A message whose fields lack their lengths goes unsigned.
    fn message(&self) -> pb::FetchShareRequest {
        let mut msg = pb::FetchShareRequest {
            evidence: self.attestation(),
            signature: vec![0; 64],
            ..self.msg.clone()
        };
        if let Ok(p) = parse(msg.clone()) {
            let s = sign(
                &self.signer,
                SigningPurpose::ShareRequest,
                &p.body.signing_bytes(),
            );
            msg.signature = s.0.to_vec();
        }
        msg
    }
}

/// One way of breaking a passing request (in its world).
type Break = fn(&mut World, &mut Req);

/// Expects `res` to be refused with `code`, sent as `grpc` (the status api.md lists for the check).
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(res: ApiResult<T>, code: ErrorCode, grpc: Code) {
    let e = res.expect_err("request was authorized");
    assert_eq!(e.code(), Some(code), "{e}");
    assert_eq!(e.grpc(), grpc, "{e}");
}

/// The result of `req` once `brk` is applied to it and to a fresh world.
fn broken(mut req: Req, brk: impl FnOnce(&mut World, &mut Req)) -> ApiResult<AuthorizedShare> {
    let mut w = World::new();
    brk(&mut w, &mut req);
    w.check(&req)
}

// --- Breakages, one per check ---

fn other_gatekeeper(_: &mut World, r: &mut Req) {
    r.msg.gatekeeper_id = vec![0x99; 32];
}
fn out_of_membership(w: &mut World, _: &mut Req) {
    w.members.retain(|n| *n != REQUESTER);
}
fn no_member_record(w: &mut World, _: &mut Req) {
    w.state.members.remove(&REQUESTER);
}
fn other_hpke_key(_: &mut World, r: &mut Req) {
    r.msg.requester_hpke_public_key = hpke(9).as_bytes().to_vec();
}
fn signed_by_another_node(_: &mut World, r: &mut Req) {
    r.signer = identity(3);
}
fn skewed(_: &mut World, r: &mut Req) {
    r.msg.timestamp_ms = NOW + WINDOW + 1;
}
fn replayed(w: &mut World, r: &mut Req) {
    let nonce: [u8; 32] = r.msg.nonce.as_slice().try_into().unwrap();
    w.nonces.use_nonce(&nonce, w.now_ms).unwrap();
}
fn no_evidence(_: &mut World, r: &mut Req) {
    r.evidence = Evidence::Missing;
}
fn unknown_epoch(_: &mut World, r: &mut Req) {
    r.msg.epoch = 7;
}
fn epoch_dealing(w: &mut World, _: &mut Req) {
    w.state.epochs.get_mut(&EPOCH).unwrap().status = EpochStatus::Dealing;
}
fn older_generation(_: &mut World, r: &mut Req) {
    r.msg.generation = GENERATION - 1;
}

// --- The passing baseline ---

#[test]
fn baseline_request_from_a_member_is_authorized() {
    let ok = World::new().check(&Req::new()).unwrap();
    assert_eq!(
        ok.ctx,
        DealingContext {
            gatekeeper_id: GatekeeperId(GK),
            epoch: EPOCH,
            generation: GENERATION,
            master_public_key: master_public_key(),
        }
    );
    assert_eq!(ok.requester, REQUESTER);
    assert_eq!(ok.hpke, hpke(REQUESTER));
}

// --- One test per check ---

#[test]
fn fields_of_the_wrong_length_or_an_undefined_evidence_kind() {
    let cases: [(&str, Break); 5] = [
        ("gatekeeper_id", |_, r| r.msg.gatekeeper_id.truncate(31)),
        ("requester_hpke_public_key", |_, r| {
            r.msg.requester_hpke_public_key.push(0)
        }),
        ("nonce", |_, r| r.msg.nonce.clear()),
        ("attestation.kind", |_, r| {
            let mut a = r.attestation().unwrap();
            a.kind = 9;
            r.evidence = Evidence::Raw(a);
        }),
        ("attestation.kind", |_, r| {
            let mut a = r.attestation().unwrap();
            a.kind = pb::AttestationKind::Unspecified as i32;
            r.evidence = Evidence::Raw(a);
        }),
    ];
    for (field, brk) in cases {
        let e = broken(Req::new(), brk).unwrap_err();
        assert_eq!(e.grpc(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains(field), "{e}");
    }
    // The signature, which the service passes as sent.
    let mut msg = Req::new().message();
    msg.signature.pop();
    let e = parse(msg).unwrap_err();
    assert_eq!(
        (e.code_str(), e.grpc()),
        ("KEYRING_INVALID_LENGTH", Code::InvalidArgument)
    );
}

#[test]
fn gatekeeper_id_of_another_cluster() {
    assert_refused(
        broken(Req::new(), other_gatekeeper),
        ErrorCode::WrongGatekeeper,
        Code::InvalidArgument,
    );
}

#[test]
fn requester_not_in_the_current_membership() {
    // Its member record alone (a node being removed) does not make it a member.
    assert_refused(
        broken(Req::new(), out_of_membership),
        ErrorCode::NotAMember,
        Code::PermissionDenied,
    );
}

#[test]
fn requester_without_a_member_record() {
    assert_refused(
        broken(Req::new(), no_member_record),
        ErrorCode::NotAMember,
        Code::PermissionDenied,
    );
}

#[test]
fn hpke_key_not_the_one_in_the_member_record() {
    // Signed and attested for the other key: only the record check refuses it.
    assert_refused(
        broken(Req::new(), other_hpke_key),
        ErrorCode::MemberKeyMismatch,
        Code::PermissionDenied,
    );
    // A record whose identity key is not a valid point cannot vouch for any request.
    let res = broken(Req::new(), |w, _| {
        w.state
            .members
            .get_mut(&REQUESTER)
            .unwrap()
            .identity_public_key = Bytes32([0; 32]);
    });
    assert_refused(res, ErrorCode::MemberKeyMismatch, Code::PermissionDenied);
}

#[test]
fn signature_does_not_verify() {
    // Signed by another member's identity key.
    assert_refused(
        broken(Req::new(), signed_by_another_node),
        ErrorCode::BadSignature,
        Code::Unauthenticated,
    );
    // A field changed after signing.
    let w = World::new();
    let mut p = parse(Req::new().message()).unwrap();
    w.authorize(&p).unwrap();
    p.body.timestamp_ms += 1;
    assert_refused(
        w.authorize(&p),
        ErrorCode::BadSignature,
        Code::Unauthenticated,
    );
}

#[test]
fn timestamp_outside_the_replay_window() {
    for ts in [NOW - WINDOW - 1, NOW + WINDOW + 1] {
        let res = broken(Req::new(), |_, r| r.msg.timestamp_ms = ts);
        assert_refused(res, ErrorCode::TimestampSkew, Code::InvalidArgument);
    }
    for ts in [NOW - WINDOW, NOW + WINDOW] {
        broken(Req::new(), |_, r| r.msg.timestamp_ms = ts).unwrap();
    }
}

#[test]
fn nonce_already_used() {
    assert_refused(
        broken(Req::new(), replayed),
        ErrorCode::NonceReplayed,
        Code::AlreadyExists,
    );
}

#[test]
fn evidence_rejected_by_the_member_policy() {
    let cases: [Break; 3] = [
        no_evidence,
        // Signed by a key other than the trusted dev attestation key.
        |_, r| r.evidence = Evidence::Dev([0xEE; 32]),
        // Fresh for another nonce.
        |_, r| {
            let a = r.attestation().unwrap();
            r.evidence = Evidence::Raw(a);
            r.msg.nonce = vec![0xBB; 32];
        },
    ];
    for brk in cases {
        assert_refused(
            broken(Req::new(), brk),
            ErrorCode::AttestationRejected,
            Code::PermissionDenied,
        );
    }
}

#[test]
fn epoch_unknown() {
    assert_refused(
        broken(Req::new(), unknown_epoch),
        ErrorCode::EpochNotFound,
        Code::NotFound,
    );
}

#[test]
fn epoch_not_active() {
    for status in [
        EpochStatus::Dealing,
        EpochStatus::Retired,
        EpochStatus::Aborted,
    ] {
        let res = broken(Req::new(), |w, _| {
            w.state.epochs.get_mut(&EPOCH).unwrap().status = status;
        });
        assert_refused(res, ErrorCode::EpochNotActive, Code::FailedPrecondition);
    }
}

#[test]
fn generation_not_the_epochs_current_one() {
    for g in [GENERATION - 1, GENERATION + 1] {
        let res = broken(Req::new(), |_, r| r.msg.generation = g);
        assert_refused(res, ErrorCode::GenerationMismatch, Code::NotFound);
    }
}

// --- Order and purity ---

#[test]
fn a_request_failing_two_checks_gets_the_earlier_checks_code() {
    // (earlier breakage, later breakage), in api.md's order.
    let pairs: [(Break, Break); 9] = [
        (other_gatekeeper, out_of_membership),
        (out_of_membership, other_hpke_key),
        (other_hpke_key, signed_by_another_node),
        (signed_by_another_node, skewed),
        (skewed, replayed),
        (replayed, no_evidence),
        (no_evidence, unknown_epoch),
        (no_evidence, epoch_dealing),
        (epoch_dealing, older_generation),
    ];
    for (i, (earlier, later)) in pairs.into_iter().enumerate() {
        let code = |r: ApiResult<AuthorizedShare>| r.unwrap_err().code_str();
        let first = code(broken(Req::new(), earlier));
        let second = code(broken(Req::new(), later));
        assert_ne!(first, second, "pair {i} does not tell the order apart");
        let both = code(broken(Req::new(), |w, r| {
            later(w, r);
            earlier(w, r);
        }));
        assert_eq!(both, first, "pair {i}: {first} then {second}");
    }
}

#[test]
fn authorize_records_no_nonce() {
    let w = World::new();
    let p = parse(Req::new().message()).unwrap();
    w.authorize(&p).unwrap();
    assert!(!w.nonces.seen(&p.body.nonce, NOW));
    w.authorize(&p).unwrap();
    // Once the service spends it, the same request is a replay.
    w.nonces.use_nonce(&p.body.nonce, NOW).unwrap();
    assert_refused(
        w.authorize(&p),
        ErrorCode::NonceReplayed,
        Code::AlreadyExists,
    );
}
