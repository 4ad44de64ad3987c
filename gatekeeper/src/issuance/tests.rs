//! Unit tests of the pure decisions in this module (no network, no processes, no sleeps).
//!
//! One test per row of docs/api.md "KeyService → Checks, in order, and their codes": each starts
//! from a request that passes ([`World::new`] + [`Req::worker`] / [`Req::cluster`] /
//! [`Req::contract`]), breaks exactly one thing and expects that row's code and gRPC status.
//! A breakage is a `fn(&mut World, &mut Req)`, so the order test can combine two of them.

use super::*;
use crate::attestation::PolicyKind;
use crate::replay::NonceCache;
use gatekeeper_raft::state::{DealingRecord, EpochRecord};
use keyring::{Sr25519Keypair, X25519SecretKey};
use std::collections::BTreeSet;
use tonic::Code;

/// The node's clock in every test.
const NOW: u64 = 1_700_000_000_000;
/// The replay window, ms either side.
const WINDOW: u64 = 60_000;
const GK: [u8; 32] = [0x11; 32];
/// A native cluster with one contract; the worker is assigned to it.
const CLUSTER: [u8; 32] = [0x22; 32];
const CONTRACT: [u8; 32] = [0x33; 32];
/// A Phala-scheme cluster with one contract; the worker is assigned to it.
const PHALA_CLUSTER: [u8; 32] = [0x44; 32];
const PHALA_CONTRACT: [u8; 32] = [0x55; 32];
/// Epochs: 0 retired, 1 active (the current one, unsealed), 2 dealing, 3 aborted.
const CURRENT: u64 = 1;

fn worker_key() -> Sr25519Keypair {
    Sr25519Keypair::from_seed(&[1; 32])
}

/// Seed of the trusted dev attestation key.
const DEV_SEED: [u8; 32] = [2; 32];

fn dev_key() -> Sr25519Keypair {
    Sr25519Keypair::from_seed(&DEV_SEED)
}

fn recipient() -> X25519PublicKey {
    X25519SecretKey::from_bytes(&[3; 32]).unwrap().public_key()
}

fn epoch(n: u64, status: EpochStatus) -> EpochRecord {
    EpochRecord {
        epoch: n,
        threshold: 2,
        master_public_key: Bytes32([0; 32]),
        cluster_signing_public_key: Bytes32([0; 32]),
        status,
        dealing: DealingRecord {
            generation: 0,
            commitments: vec![],
            wrapped_nonce: Default::default(),
            wrapped_ciphertext: Default::default(),
            shares: vec![],
            acked: BTreeSet::new(),
        },
    }
}

fn cluster(id: [u8; 32], scheme: StScheme) -> (Bytes32, ClusterRecord) {
    let rec = ClusterRecord {
        id: Bytes32(id),
        scheme,
        created_at: 5,
    };
    (Bytes32(id), rec)
}

/// Everything besides the request that [`authorize`] reads.
struct World {
    state: GatekeeperState,
    policy: Policy,
    /// Epochs whose master secret this node holds.
    unsealed: BTreeSet<u64>,
    nonces: NonceCache,
    now_ms: u64,
}

impl World {
    /// An initialised cluster, its epochs, one active worker assigned to both compute clusters,
    /// a dev attestation policy, and a node unsealed for the current epoch.
    fn new() -> Self {
        let mut state = GatekeeperState {
            gatekeeper_id: Some(Bytes32(GK)),
            ..Default::default()
        };
        for (n, status) in [
            (0, EpochStatus::Retired),
            (CURRENT, EpochStatus::Active),
            (2, EpochStatus::Dealing),
            (3, EpochStatus::Aborted),
        ] {
            state.epochs.insert(n, epoch(n, status));
        }
        let worker = Bytes32(*worker_key().public_key().as_bytes());
        state.workers.insert(
            worker,
            WorkerRecord {
                public_key: worker,
                attestation_provider: "root".into(),
                confidence_level: 1,
                registered_at: 7,
                status: WorkerStatus::Active,
                clusters: [Bytes32(CLUSTER), Bytes32(PHALA_CLUSTER)].into(),
            },
        );
        state.clusters = [
            cluster(CLUSTER, StScheme::Native),
            cluster(PHALA_CLUSTER, StScheme::Phala),
        ]
        .into_iter()
        .collect();
        state.contracts = [
            (Bytes32(CONTRACT), Bytes32(CLUSTER)),
            (Bytes32(PHALA_CONTRACT), Bytes32(PHALA_CLUSTER)),
        ]
        .into_iter()
        .collect();
        World {
            state,
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
            unsealed: [CURRENT].into(),
            nonces: NonceCache::new(WINDOW),
            now_ms: NOW,
        }
    }

    fn worker(&mut self) -> &mut WorkerRecord {
        let w = Bytes32(*worker_key().public_key().as_bytes());
        self.state.workers.get_mut(&w).unwrap()
    }

    /// [`authorize`] of an already parsed request, with the view the service would read.
    fn authorize(&self, r: &ParsedKeyRequest) -> ApiResult<Authorized> {
        let view = RequestView::of(&self.state, &r.request);
        let holds = |e: u64| self.unsealed.contains(&e);
        authorize(
            r,
            &Context {
                view: &view,
                policy: &self.policy,
                holds_master: &holds,
                freshness: self.nonces.freshness(&r.request.nonce, self.now_ms),
                now_ms: self.now_ms,
            },
        )
    }

    /// Rows 2–16: [`parse`] then [`authorize`].
    fn check(&self, r: &Req) -> ApiResult<Authorized> {
        self.authorize(&r.parse()?)
    }
}

/// The evidence a request carries.
#[derive(Clone)]
enum Evidence {
    /// None at all.
    Missing,
    /// A dev attestation by the key of `seed`, issued at `at_secs`, over this request's report
    /// data (worker key, recipient and nonce as they are in the header when the request is sent).
    Dev { seed: [u8; 32], at_secs: u64 },
    /// Exactly this.
    Raw(pb::Attestation),
}

/// A key request as a worker sends it: the header and target id, signed by `signer` when sent.
#[derive(Clone)]
struct Req {
    kind: pb::KeyKind,
    target_id: Option<Vec<u8>>,
    /// `None`: the header is missing.
    header: Option<pb::KeyRequestHeader>,
    evidence: Evidence,
    signer: Sr25519Keypair,
}

impl Req {
    fn new(kind: pb::KeyKind, target_id: Option<[u8; 32]>) -> Self {
        Req {
            kind,
            target_id: target_id.map(|t| t.to_vec()),
            header: Some(pb::KeyRequestHeader {
                gatekeeper_id: GK.to_vec(),
                worker_public_key: worker_key().public_key().as_bytes().to_vec(),
                recipient_public_key: recipient().as_bytes().to_vec(),
                epoch: None,
                nonce: vec![0xAA; 32],
                timestamp_ms: NOW,
                attestation: None,
            }),
            evidence: Evidence::Dev {
                seed: DEV_SEED,
                at_secs: NOW / 1000,
            },
            signer: worker_key(),
        }
    }

    fn worker() -> Self {
        Self::new(pb::KeyKind::Worker, None)
    }

    fn cluster() -> Self {
        Self::new(pb::KeyKind::Cluster, Some(CLUSTER))
    }

    fn contract() -> Self {
        Self::new(pb::KeyKind::Contract, Some(CONTRACT))
    }

    fn h(&mut self) -> &mut pb::KeyRequestHeader {
        self.header.as_mut().expect("the request has a header")
    }

    fn nonce(&self) -> [u8; 32] {
        self.header
            .as_ref()
            .unwrap()
            .nonce
            .as_slice()
            .try_into()
            .unwrap()
    }

    /// The attestation sent: `None` if missing, or if the header's fields lack their lengths.
    fn attestation(&self) -> Option<pb::Attestation> {
        let h = self.header.as_ref()?;
        match &self.evidence {
            Evidence::Missing => None,
            Evidence::Raw(a) => Some(a.clone()),
            Evidence::Dev { seed, at_secs } => {
                let worker: [u8; 32] = h.worker_public_key.as_slice().try_into().ok()?;
                let recipient = X25519PublicKey::from_slice(&h.recipient_public_key).ok()?;
                let nonce: [u8; 32] = h.nonce.as_slice().try_into().ok()?;
                let rd = keyring::sign::report_data(&worker, &recipient, &nonce);
                Some(pb::Attestation {
                    kind: pb::AttestationKind::Dev as i32,
                    evidence: keyring::dev_attestation::issue(
                        &Sr25519Keypair::from_seed(seed),
                        &rd,
                        *at_secs,
                    ),
                    collateral: vec![],
                })
            }
        }
    }

    /// Rows 2–3: the request as the service parses it off the wire, signed by `signer` over its
    /// canonical bytes (as the miner SDK signs it).
    fn parse(&self) -> ApiResult<ParsedKeyRequest> {
        let header = self.header.clone().map(|h| pb::KeyRequestHeader {
            attestation: self.attestation(),
            ..h
        });
        let target_id = self.target_id.as_deref();
        let unsigned = parse(header.clone(), target_id, self.kind, &[0; 64])?;
        let signature = unsigned.request.sign(&self.signer);
        parse(header, target_id, self.kind, &signature.0)
    }
}

/// One way of breaking a passing request (in its world).
type Break = fn(&mut World, &mut Req);

/// Expects `res` to be refused with `code`, sent as `grpc` (the status api.md lists for the row).
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(res: ApiResult<T>, code: ErrorCode, grpc: Code) {
    let e = res.expect_err("request was authorized");
    assert_eq!(e.code(), Some(code), "{e}");
    assert_eq!(e.grpc(), grpc, "{e}");
}

/// Expects a keyring refusal of a client-supplied field: its `KEYRING_…` code, `INVALID_ARGUMENT`,
/// and a message naming `field`.
#[track_caller]
fn assert_keyring_refused<T: std::fmt::Debug>(res: ApiResult<T>, code: &str, field: &str) {
    let e = res.expect_err("request was authorized");
    assert_eq!(e.code(), None, "{e}");
    assert_eq!(e.code_str(), code, "{e}");
    assert_eq!(e.grpc(), Code::InvalidArgument, "{e}");
    assert!(e.message().starts_with(field), "{e}");
}

/// The result of `req` once `brk` is applied to it and to a fresh world.
fn broken(mut req: Req, brk: impl FnOnce(&mut World, &mut Req)) -> ApiResult<Authorized> {
    let mut w = World::new();
    brk(&mut w, &mut req);
    w.check(&req)
}

// --- Breakages, one per row (named after what they do) ---

fn no_header(_: &mut World, r: &mut Req) {
    r.header = None;
}
fn short_nonce(_: &mut World, r: &mut Req) {
    r.h().nonce = vec![0xAA; 31];
}
fn identity_worker_key(_: &mut World, r: &mut Req) {
    r.h().worker_public_key = vec![0; 32];
}
fn other_gatekeeper(_: &mut World, r: &mut Req) {
    r.h().gatekeeper_id = vec![0x99; 32];
}
fn unknown_epoch(_: &mut World, r: &mut Req) {
    r.h().epoch = Some(9);
}
fn current_epoch_dealing(w: &mut World, _: &mut Req) {
    w.state.epochs.get_mut(&CURRENT).unwrap().status = EpochStatus::Dealing;
}
fn sealed(w: &mut World, _: &mut Req) {
    w.unsealed.clear();
}
fn skewed(_: &mut World, r: &mut Req) {
    r.h().timestamp_ms = NOW - WINDOW - 1;
}
fn signed_by_another_key(_: &mut World, r: &mut Req) {
    r.signer = Sr25519Keypair::from_seed(&[9; 32]);
}
fn unregistered(w: &mut World, _: &mut Req) {
    w.state.workers.clear();
}
fn slashed(w: &mut World, _: &mut Req) {
    w.worker().status = WorkerStatus::Slashed {
        block: 40,
        reason: "equivocation".into(),
    };
}
fn no_evidence(_: &mut World, r: &mut Req) {
    r.evidence = Evidence::Missing;
}
fn clusters_gone(w: &mut World, _: &mut Req) {
    w.state.clusters.clear();
}
fn unassigned(w: &mut World, _: &mut Req) {
    w.worker().clusters.clear();
}
fn low_order_recipient(_: &mut World, r: &mut Req) {
    r.h().recipient_public_key = vec![0; 32];
}
fn replayed(w: &mut World, r: &mut Req) {
    w.nonces.use_nonce(&r.nonce(), w.now_ms).unwrap();
}

// --- The passing baseline ---

#[test]
fn baseline_worker_cluster_and_contract_keys_are_authorized() {
    let w = World::new();
    let worker = worker_key().public_key();
    assert_eq!(
        w.check(&Req::worker()).unwrap(),
        Authorized {
            epoch: CURRENT,
            subject: worker.as_bytes().to_vec(),
            cluster: None,
            scheme: pb::DerivationScheme::Native,
        }
    );
    assert_eq!(
        w.check(&Req::cluster()).unwrap(),
        Authorized {
            epoch: CURRENT,
            subject: CLUSTER.to_vec(),
            cluster: Some((ClusterId(CLUSTER), Scheme::Native)),
            scheme: pb::DerivationScheme::Native,
        }
    );
    assert_eq!(
        w.check(&Req::contract()).unwrap(),
        Authorized {
            epoch: CURRENT,
            subject: CONTRACT.to_vec(),
            cluster: Some((ClusterId(CLUSTER), Scheme::Native)),
            scheme: pb::DerivationScheme::Native,
        }
    );
    // An explicitly requested epoch is the one authorized.
    let mut r = Req::worker();
    r.h().epoch = Some(CURRENT);
    assert_eq!(w.check(&r).unwrap().epoch, CURRENT);
}

#[test]
fn baseline_phala_cluster_and_contract_keys_use_the_phala_scheme() {
    let w = World::new();
    let phala = Some((ClusterId(PHALA_CLUSTER), Scheme::Phala));
    let a = w
        .check(&Req::new(pb::KeyKind::Cluster, Some(PHALA_CLUSTER)))
        .unwrap();
    assert_eq!(
        (a.subject, a.cluster, a.scheme),
        (PHALA_CLUSTER.to_vec(), phala, pb::DerivationScheme::Phala)
    );
    let a = w
        .check(&Req::new(pb::KeyKind::Contract, Some(PHALA_CONTRACT)))
        .unwrap();
    assert_eq!(
        (a.subject, a.cluster, a.scheme),
        (PHALA_CONTRACT.to_vec(), phala, pb::DerivationScheme::Phala)
    );
    // A worker key is native whatever clusters the worker is in.
    assert_eq!(
        w.check(&Req::worker()).unwrap().scheme,
        pb::DerivationScheme::Native
    );
}

// --- One test per row ---

#[test]
fn row01_request_over_the_size_limit() {
    check_size(64 * 1024, 64 * 1024).unwrap();
    assert_refused(
        check_size(64 * 1024 + 1, 64 * 1024),
        ErrorCode::RequestTooLarge,
        Code::ResourceExhausted,
    );
}

#[test]
fn row02_missing_header() {
    assert_refused(
        broken(Req::worker(), no_header),
        ErrorCode::InvalidArgument,
        Code::InvalidArgument,
    );
}

#[test]
fn row02_nonce_of_the_wrong_length() {
    for len in [0, 31, 33] {
        let res = broken(Req::worker(), |_, r| r.h().nonce = vec![0xAA; len]);
        assert_refused(res, ErrorCode::InvalidArgument, Code::InvalidArgument);
    }
}

#[test]
fn row02_missing_cluster_or_contract_id() {
    for (kind, field) in [
        (pb::KeyKind::Cluster, "cluster_id"),
        (pb::KeyKind::Contract, "contract_id"),
    ] {
        let res = World::new().check(&Req::new(kind, None));
        assert_keyring_refused(res, "KEYRING_INVALID_LENGTH", field);
    }
}

#[test]
fn row02_undefined_attestation_kind() {
    for kind in [pb::AttestationKind::Unspecified as i32, 9] {
        let res = broken(Req::worker(), |_, r| {
            let mut a = r.attestation().unwrap();
            a.kind = kind;
            r.evidence = Evidence::Raw(a);
        });
        assert_refused(res, ErrorCode::InvalidArgument, Code::InvalidArgument);
    }
}

#[test]
fn row02_fields_of_the_wrong_length() {
    let cases: [(&str, Break); 4] = [
        ("gatekeeper_id", |_, r| r.h().gatekeeper_id.push(0)),
        ("worker_public_key", |_, r| {
            r.h().worker_public_key.truncate(31)
        }),
        ("recipient_public_key", |_, r| {
            r.h().recipient_public_key.clear()
        }),
        ("cluster_id", |_, r| r.target_id = Some(vec![0x22; 31])),
    ];
    for (field, brk) in cases {
        assert_keyring_refused(broken(Req::cluster(), brk), "KEYRING_INVALID_LENGTH", field);
    }
    // The signature, which the service passes as sent.
    assert_keyring_refused(
        parse(Req::worker().header, None, pb::KeyKind::Worker, &[0; 63]),
        "KEYRING_INVALID_LENGTH",
        "signature",
    );
}

#[test]
fn row02_unspecified_key_kind() {
    let res = World::new().check(&Req::new(pb::KeyKind::Unspecified, Some(CLUSTER)));
    assert_refused(res, ErrorCode::InvalidArgument, Code::InvalidArgument);
}

#[test]
fn row03_worker_key_not_a_valid_point() {
    // The identity point (anyone can forge its signatures), and bytes that are no point at all.
    for key in [[0u8; 32], [0xff; 32]] {
        let res = broken(Req::worker(), |_, r| r.h().worker_public_key = key.to_vec());
        assert_keyring_refused(res, "KEYRING_INVALID_PUBLIC_KEY", "worker_public_key");
    }
}

#[test]
fn row04_gatekeeper_id_of_another_cluster() {
    assert_refused(
        broken(Req::worker(), other_gatekeeper),
        ErrorCode::WrongGatekeeper,
        Code::InvalidArgument,
    );
    // Nor is any id this cluster's before it is initialised.
    let res = broken(Req::worker(), |w, _| w.state.gatekeeper_id = None);
    assert_refused(res, ErrorCode::WrongGatekeeper, Code::InvalidArgument);
}

#[test]
fn row05_requested_epoch_does_not_exist() {
    assert_refused(
        broken(Req::worker(), unknown_epoch),
        ErrorCode::EpochNotFound,
        Code::NotFound,
    );
}

#[test]
fn row05_no_active_epoch_yet() {
    // The current epoch is asked for and none is active.
    assert_refused(
        broken(Req::worker(), current_epoch_dealing),
        ErrorCode::NoActiveEpoch,
        Code::FailedPrecondition,
    );
}

#[test]
fn row06_epoch_not_active() {
    for (e, status) in [(0, "Retired"), (2, "Dealing"), (3, "Aborted")] {
        let res = broken(Req::worker(), |w, r| {
            w.unsealed.insert(e);
            r.h().epoch = Some(e);
        });
        let err = res.as_ref().unwrap_err();
        assert!(err.message().contains(status), "{err}");
        assert_refused(res, ErrorCode::EpochNotActive, Code::FailedPrecondition);
    }
}

#[test]
fn row07_node_sealed_for_the_epoch() {
    let res = broken(Req::worker(), sealed);
    let err = res.as_ref().unwrap_err();
    assert_eq!(err.message(), "this node is sealed for epoch 1");
    assert_refused(res, ErrorCode::NodeSealed, Code::FailedPrecondition);
}

#[test]
fn row08_timestamp_outside_the_replay_window() {
    for ts in [NOW - WINDOW - 1, NOW + WINDOW + 1, 0, u64::MAX] {
        let res = broken(Req::worker(), |_, r| r.h().timestamp_ms = ts);
        assert_refused(res, ErrorCode::TimestampSkew, Code::InvalidArgument);
    }
    // The window's edges are inside it.
    for ts in [NOW - WINDOW, NOW + WINDOW] {
        broken(Req::worker(), |_, r| r.h().timestamp_ms = ts).unwrap();
    }
}

#[test]
fn row09_signature_does_not_verify() {
    assert_refused(
        broken(Req::worker(), signed_by_another_key),
        ErrorCode::BadSignature,
        Code::Unauthenticated,
    );
    // A field changed after signing (here the epoch asked for, to another active one).
    let mut w = World::new();
    w.state.epochs.insert(4, epoch(4, EpochStatus::Active));
    w.unsealed.insert(4);
    let mut p = Req::worker().parse().unwrap();
    w.authorize(&p).unwrap();
    p.request.epoch = Some(4);
    assert_refused(
        w.authorize(&p),
        ErrorCode::BadSignature,
        Code::Unauthenticated,
    );
}

#[test]
fn row10_worker_not_registered() {
    assert_refused(
        broken(Req::worker(), unregistered),
        ErrorCode::WorkerNotRegistered,
        Code::NotFound,
    );
}

#[test]
fn row11_worker_not_active() {
    let statuses = [
        WorkerStatus::Slashed {
            block: 40,
            reason: "equivocation".into(),
        },
        WorkerStatus::Removed { block: 41 },
        WorkerStatus::Unresponsive { block: 42 },
    ];
    for status in statuses {
        let res = broken(Req::worker(), |w, _| w.worker().status = status.clone());
        let err = res.as_ref().unwrap_err();
        assert!(err.message().contains("at block 4"), "{err}");
        assert_refused(res, ErrorCode::WorkerNotActive, Code::PermissionDenied);
    }
}

#[test]
fn row12_attestation_rejected() {
    let cases: [(&str, Break); 5] = [
        ("missing", no_evidence),
        ("signed by an untrusted dev key", |_, r| {
            r.evidence = Evidence::Dev {
                seed: [8; 32],
                at_secs: NOW / 1000,
            }
        }),
        ("too old", |w, r| {
            r.evidence = Evidence::Dev {
                seed: DEV_SEED,
                at_secs: NOW / 1000 - w.policy.max_evidence_age_secs - 1,
            }
        }),
        ("bound to another nonce", |_, r| {
            let a = r.attestation().unwrap();
            r.evidence = Evidence::Raw(a);
            r.h().nonce = vec![0xBB; 32];
        }),
        ("of a kind the policy does not accept", |_, r| {
            let mut a = r.attestation().unwrap();
            a.kind = pb::AttestationKind::SgxDcap as i32;
            r.evidence = Evidence::Raw(a);
        }),
    ];
    for (what, brk) in cases {
        let res = broken(Req::worker(), brk);
        assert!(res.is_err(), "evidence {what} was accepted");
        assert_refused(res, ErrorCode::AttestationRejected, Code::PermissionDenied);
    }
}

#[test]
fn row13_cluster_or_contract_does_not_exist() {
    let res = broken(Req::cluster(), |_, r| r.target_id = Some(vec![0x66; 32]));
    assert_refused(res, ErrorCode::ClusterNotFound, Code::NotFound);
    let res = broken(Req::contract(), |_, r| r.target_id = Some(vec![0x66; 32]));
    assert_refused(res, ErrorCode::ContractNotFound, Code::NotFound);
    // A contract whose cluster record is gone.
    let res = broken(Req::contract(), clusters_gone);
    assert_refused(res, ErrorCode::ClusterNotFound, Code::NotFound);
}

#[test]
fn row14_worker_not_assigned_to_the_cluster() {
    for req in [Req::cluster(), Req::contract()] {
        assert_refused(
            broken(req, unassigned),
            ErrorCode::WorkerNotInCluster,
            Code::PermissionDenied,
        );
    }
    // A worker key needs no cluster.
    broken(Req::worker(), unassigned).unwrap();
}

#[test]
fn row15_low_order_recipient_key() {
    assert_refused(
        broken(Req::worker(), low_order_recipient),
        ErrorCode::RecipientLowOrder,
        Code::InvalidArgument,
    );
}

#[test]
fn row16_nonce_already_used() {
    assert_refused(
        broken(Req::worker(), replayed),
        ErrorCode::NonceReplayed,
        Code::AlreadyExists,
    );
    // Another nonce is unaffected.
    let res = broken(Req::worker(), |w, r| {
        replayed(w, r);
        r.h().nonce = vec![0xCC; 32];
    });
    res.unwrap();
}

// --- Order and purity ---

#[test]
fn a_request_failing_two_checks_gets_the_earlier_rows_code() {
    // (earlier breakage, later breakage, request): each pair is in api.md's row order.
    let pairs: [(Break, Break, Req); 14] = [
        (short_nonce, identity_worker_key, Req::worker()),
        (no_header, other_gatekeeper, Req::worker()),
        (identity_worker_key, other_gatekeeper, Req::worker()),
        (other_gatekeeper, unknown_epoch, Req::worker()),
        (current_epoch_dealing, sealed, Req::worker()),
        (sealed, skewed, Req::worker()),
        (skewed, signed_by_another_key, Req::worker()),
        (signed_by_another_key, unregistered, Req::worker()),
        (unregistered, no_evidence, Req::worker()),
        (slashed, no_evidence, Req::worker()),
        (no_evidence, clusters_gone, Req::cluster()),
        (clusters_gone, unassigned, Req::cluster()),
        (unassigned, low_order_recipient, Req::contract()),
        (low_order_recipient, replayed, Req::worker()),
    ];
    for (i, (earlier, later, req)) in pairs.into_iter().enumerate() {
        let code = |r: ApiResult<Authorized>| r.unwrap_err().code_str();
        let first = code(broken(req.clone(), earlier));
        let second = code(broken(req.clone(), later));
        assert_ne!(first, second, "pair {i} does not tell the order apart");
        // The later one first, so each breakage still finds the header it edits.
        let both = code(broken(req, |w, r| {
            later(w, r);
            earlier(w, r);
        }));
        assert_eq!(both, first, "pair {i}: {first} then {second}");
    }
}

#[test]
fn authorize_records_no_nonce() {
    let w = World::new();
    let p = Req::contract().parse().unwrap();
    let first = w.authorize(&p).unwrap();
    assert!(!w.nonces.seen(&p.request.nonce, NOW));
    assert_eq!(w.authorize(&p).unwrap(), first);
    // Once the service spends it, the same request is a replay.
    w.nonces.use_nonce(&p.request.nonce, NOW).unwrap();
    assert_refused(
        w.authorize(&p),
        ErrorCode::NonceReplayed,
        Code::AlreadyExists,
    );
}

#[test]
fn request_view_copies_what_the_request_needs() {
    let w = World::new();
    let p = Req::contract().parse().unwrap();
    let v = RequestView::of(&w.state, &p.request);
    assert_eq!(v.gatekeeper_id, Some(Bytes32(GK)));
    assert_eq!(
        (v.epoch, v.epoch_status),
        (Some(CURRENT), Some(EpochStatus::Active))
    );
    assert_eq!(
        v.worker.as_ref().map(|w| w.public_key.0),
        Some(*worker_key().public_key().as_bytes())
    );
    assert_eq!(v.contract_cluster, Some(Bytes32(CLUSTER)));
    assert_eq!(v.cluster.map(|c| c.id), Some(Bytes32(CLUSTER)));
    // A worker key reads no cluster.
    let v = RequestView::of(&w.state, &Req::worker().parse().unwrap().request);
    assert_eq!((v.contract_cluster, v.cluster), (None, None));
}

#[test]
fn row07_and_row15_enclave_refusals_map_to_their_rows() {
    use crate::enclave::EnclaveError;
    let e = sealing_error(EnclaveError::Keyring(keyring::Error::EnvelopeSealFailed(
        "x",
    )));
    assert_eq!(e.code(), Some(ErrorCode::RecipientLowOrder));
    assert_eq!(
        sealing_error(EnclaveError::Sealed(3)).code(),
        Some(ErrorCode::NodeSealed)
    );
    let e = sealing_error(EnclaveError::State("disk".into()));
    assert_eq!(e.code(), Some(ErrorCode::Internal));
}
