//! Frozen end-to-end vectors of the worker's wire format (docs/api.md, "Writing a client").
//!
//! `client/tests/vectors.json` holds, for fixed inputs (master secret, worker key, recipient
//! key, nonce, time, ids), every byte a client sends and checks, for worker, cluster and contract
//! keys in both derivation schemes: the request's signed bytes, digest, report data and protobuf
//! encoding; the response's fields, HPKE info/AAD/envelope (with the ephemeral key material),
//! signed bytes, protobuf encoding; the derived seed and public key.
//!
//! This test recomputes every deterministic byte from the inputs and compares; sr25519
//! signatures are randomized, so the frozen ones are verified instead (under the documented
//! signing contexts). It then runs the SDK's own verification on the frozen response and checks
//! that a changed byte is refused. If the wire format changes, this test fails. Regenerate only
//! for a deliberate, versioned change:
//! `GATEKEEPER_WRITE_VECTORS=1 cargo test -p gatekeeper-client --test vectors`.

use gatekeeper_client::wire::{signing_key_for, VerifiedKey};
use gatekeeper_client::{sign_request, verify_response, RequestInputs};
use gatekeeper_proto::v1 as pb;
use hpke::{Deserializable, Kem, Serializable};
use keyring::derive::{self, Scheme};
use keyring::envelope::{self, subject, Envelope, EnvelopeContext, Purpose};
use keyring::sign::{report_data, KeyRequest, KeyResponse, KeyTarget};
use keyring::{
    ClusterId, ContractId, GatekeeperId, MasterSecret, Signature, Sr25519Keypair, Sr25519PublicKey,
    X25519SecretKey,
};
use prost::Message;
use serde_json::{json, Value};

const MASTER_SEED: [u8; 32] = [0x5a; 32];
const GATEKEEPER_ID: [u8; 32] = [0x01; 32];
const WORKER_SEED: [u8; 32] = [0x11; 32];
const RECIPIENT_SECRET: [u8; 32] = [0x21; 32];
const DEV_ATTESTATION_SEED: [u8; 32] = [0x31; 32];
const CLUSTER: [u8; 32] = [0x22; 32];
const CONTRACT: [u8; 32] = [0x33; 32];
const EPOCH: u64 = 2;
const TIMESTAMP_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const ISSUED_AT_MS: u64 = 1_767_225_600_250;
const SERVED_BY: u64 = 3;

/// The bytes the sender's HPKE encapsulation draws from its random source: RFC 9180
/// DeriveKeyPair(ikm) gives the ephemeral key.
struct FixedRng([u8; 32]);

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        unimplemented!("HPKE draws bytes only")
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented!("HPKE draws bytes only")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert_eq!(dest.len(), 32, "one X25519 ikm");
        dest.copy_from_slice(&self.0);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl rand_core::CryptoRng for FixedRng {}

struct Case {
    name: &'static str,
    target: KeyTarget,
    scheme: Scheme,
    /// The epoch the request names (None: the current one, which is EPOCH).
    requested: Option<u64>,
    nonce: [u8; 32],
    ephemeral_ikm: [u8; 32],
    attested: bool,
}

fn cases() -> Vec<Case> {
    let c = ClusterId(CLUSTER);
    let k = ContractId(CONTRACT);
    let case = |i: u8, name, target, scheme, requested, attested| Case {
        name,
        target,
        scheme,
        requested,
        nonce: [0x40 + i; 32],
        ephemeral_ikm: [0x60 + i; 32],
        attested,
    };
    vec![
        case(1, "worker", KeyTarget::Worker, Scheme::Native, None, true),
        case(
            2,
            "cluster-native",
            KeyTarget::Cluster(c),
            Scheme::Native,
            Some(EPOCH),
            false,
        ),
        case(
            3,
            "cluster-phala",
            KeyTarget::Cluster(c),
            Scheme::Phala,
            Some(EPOCH),
            false,
        ),
        case(
            4,
            "contract-native",
            KeyTarget::Contract(k),
            Scheme::Native,
            None,
            false,
        ),
        case(
            5,
            "contract-phala",
            KeyTarget::Contract(k),
            Scheme::Phala,
            Some(EPOCH),
            false,
        ),
    ]
}

/// The randomized parts: fresh when generating, the frozen ones when checking.
struct Randomized {
    request_signature: Vec<u8>,
    response_signature: Vec<u8>,
    dev_evidence: Option<Vec<u8>>,
}

fn scheme_number(s: Scheme) -> i32 {
    match s {
        Scheme::Phala => pb::DerivationScheme::Phala as i32,
        _ => pb::DerivationScheme::Native as i32,
    }
}

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("a hex string")).expect("hex")
}

/// Everything about one case; `frozen` supplies the randomized parts (None: make them). Also
/// returns the response message and the request as signed.
fn build(case: &Case, frozen: Option<Randomized>) -> (Value, pb::KeyResponse, KeyRequest) {
    let master = MasterSecret::from_seed(&MASTER_SEED);
    let worker = Sr25519Keypair::from_seed(&WORKER_SEED);
    let recipient = X25519SecretKey::from_bytes(&RECIPIENT_SECRET).unwrap();
    let rd = report_data(
        worker.public_key().as_bytes(),
        &recipient.public_key(),
        &case.nonce,
    );
    let dev_key = Sr25519Keypair::from_seed(&DEV_ATTESTATION_SEED);
    let evidence = case.attested.then(|| match &frozen {
        Some(f) => f.dev_evidence.clone().expect("frozen evidence"),
        None => keyring::dev_attestation::issue(&dev_key, &rd, TIMESTAMP_MS / 1000),
    });
    let attestation = evidence.map(|e| pb::Attestation {
        kind: pb::AttestationKind::Dev as i32,
        evidence: e,
        collateral: vec![],
    });
    let mut signed = sign_request(
        &worker,
        &recipient.public_key(),
        RequestInputs {
            target: case.target,
            gatekeeper_id: GatekeeperId(GATEKEEPER_ID),
            epoch: case.requested,
            nonce: case.nonce,
            timestamp_ms: TIMESTAMP_MS,
            attestation: attestation.clone(),
        },
    );
    if let Some(f) = &frozen {
        signed.signature = f.request_signature.clone();
    }
    let req = &signed.request;

    // What the cluster derives and seals.
    let (key, subject_id, cluster_id) = match case.target {
        KeyTarget::Worker => (
            derive::worker_key(&master, &worker.public_key()),
            worker.public_key().as_bytes().to_vec(),
            vec![],
        ),
        KeyTarget::Cluster(c) => (
            derive::cluster_key(&master, case.scheme, &c),
            c.0.to_vec(),
            c.0.to_vec(),
        ),
        KeyTarget::Contract(k) => {
            let ck = derive::cluster_key(&master, case.scheme, &ClusterId(CLUSTER));
            (
                derive::contract_key(&ck, case.scheme, &k),
                k.0.to_vec(),
                CLUSTER.to_vec(),
            )
        }
    };
    let ctx = EnvelopeContext {
        purpose: Purpose::KeyDelivery,
        gatekeeper_id: GatekeeperId(GATEKEEPER_ID),
        epoch: EPOCH,
        subject: subject::key_delivery(
            case.target.kind(),
            &subject_id,
            worker.public_key().as_bytes(),
        ),
        recipient: recipient.public_key(),
    };
    let env = envelope::seal(&ctx, key.seed(), &mut FixedRng(case.ephemeral_ikm)).unwrap();
    let (sk_e, pk_e) = hpke::kem::X25519HkdfSha256::derive_keypair(&case.ephemeral_ikm);
    assert_eq!(pk_e.to_bytes().as_slice(), env.encapped_key, "enc = pkE");
    let body = KeyResponse {
        kind: case.target.kind(),
        epoch: EPOCH,
        subject: subject_id.clone(),
        cluster_id: cluster_id.clone(),
        scheme: scheme_number(case.scheme) as u8,
        derived_public_key: key.public_key(),
        sealed_secret: env.clone(),
        request_digest: req.digest(),
        issued_at_ms: ISSUED_AT_MS,
        served_by: SERVED_BY,
    };
    let signer = derive::cluster_signing_key(&master);
    let response_signature = match &frozen {
        Some(f) => f.response_signature.clone(),
        None => body.sign(&signer).0.to_vec(),
    };
    let response = pb::KeyResponse {
        kind: i32::from(case.target.kind()),
        epoch: EPOCH,
        subject: subject_id.clone(),
        cluster_id: cluster_id.clone(),
        scheme: scheme_number(case.scheme),
        derived_public_key: key.public_key().as_bytes().to_vec(),
        sealed_secret: Some(pb::HpkeEnvelope {
            version: env.version,
            encapped_key: env.encapped_key.to_vec(),
            ciphertext: env.ciphertext.clone(),
        }),
        request_digest: req.digest().to_vec(),
        issued_at_ms: ISSUED_AT_MS,
        served_by: SERVED_BY,
        signature: response_signature.clone(),
    };
    let target_id = match case.target {
        KeyTarget::Worker => String::new(),
        KeyTarget::Cluster(c) => h(&c.0),
        KeyTarget::Contract(k) => h(&k.0),
    };
    let v = json!({
        "name": case.name,
        "request": {
            "kind": case.target.kind(),
            "target_id": target_id,
            "epoch": case.requested,
            "nonce": h(&case.nonce),
            "timestamp_ms": TIMESTAMP_MS,
            "report_data": h(&rd),
            "attestation": attestation.as_ref().map(|a| json!({
                "kind": a.kind,
                "evidence": h(&a.evidence),
                "collateral": h(&a.collateral),
                "evidence_sha256": h(&sha(&a.evidence)),
                "collateral_sha256": h(&sha(&a.collateral)),
            })),
            "signing_bytes": h(&req.signing_bytes()),
            "digest": h(&req.digest()),
            "signature": h(&signed.signature),
            "protobuf": h(&signed.wire().encode_to_vec()),
        },
        "response": {
            "kind": case.target.kind(),
            "epoch": EPOCH,
            "subject": h(&subject_id),
            "cluster_id": h(&cluster_id),
            "scheme": scheme_number(case.scheme),
            "derived_public_key": h(key.public_key().as_bytes()),
            "derived_seed": h(key.seed()),
            "hpke": {
                "subject": h(&ctx.subject),
                "info": h(&ctx.info()),
                "aad": h(&ctx.aad()),
                "ephemeral_ikm": h(&case.ephemeral_ikm),
                "ephemeral_secret_key": h(sk_e.to_bytes().as_slice()),
                "encapped_key": h(&env.encapped_key),
                "ciphertext": h(&env.ciphertext),
            },
            "request_digest": h(&req.digest()),
            "issued_at_ms": ISSUED_AT_MS,
            "served_by": SERVED_BY,
            "signing_bytes": h(&body.signing_bytes()),
            "signature": h(&response_signature),
            "protobuf": h(&response.encode_to_vec()),
        },
    });
    (v, response, signed.request)
}

/// A change to a response that verification must catch.
type Mutation = Box<dyn Fn(&mut pb::KeyResponse)>;

fn sha(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

fn inputs() -> Value {
    let master = MasterSecret::from_seed(&MASTER_SEED);
    let worker = Sr25519Keypair::from_seed(&WORKER_SEED);
    let recipient = X25519SecretKey::from_bytes(&RECIPIENT_SECRET).unwrap();
    let dev = Sr25519Keypair::from_seed(&DEV_ATTESTATION_SEED);
    json!({
        "master_seed": h(&MASTER_SEED),
        "master_secret": h(master.to_bytes().as_slice()),
        "master_public_key": h(master.public_key().as_bytes()),
        "cluster_signing_public_key": h(derive::cluster_signing_key(&master).public_key().as_bytes()),
        "gatekeeper_id": h(&GATEKEEPER_ID),
        "worker_seed": h(&WORKER_SEED),
        "worker_public_key": h(worker.public_key().as_bytes()),
        "recipient_secret_key": h(&RECIPIENT_SECRET),
        "recipient_public_key": h(recipient.public_key().as_bytes()),
        "dev_attestation_seed": h(&DEV_ATTESTATION_SEED),
        "dev_attestation_public_key": h(dev.public_key().as_bytes()),
        "cluster_id": h(&CLUSTER),
        "contract_id": h(&CONTRACT),
        "epoch": EPOCH,
    })
}

fn cluster_info() -> pb::ClusterInfo {
    let master = MasterSecret::from_seed(&MASTER_SEED);
    let signing = derive::cluster_signing_key(&master).public_key();
    pb::ClusterInfo {
        gatekeeper_id: GATEKEEPER_ID.to_vec(),
        current_epoch: EPOCH,
        epochs: vec![pb::EpochInfo {
            epoch: EPOCH,
            cluster_signing_public_key: signing.as_bytes().to_vec(),
            ..Default::default()
        }],
        cluster_signing_public_key: signing.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.json")
}

#[test]
fn the_wire_format_is_frozen() {
    if std::env::var_os("GATEKEEPER_WRITE_VECTORS").is_some() {
        let all = json!({
            "description": "Frozen end-to-end vectors of Gatekeeper's KeyService wire format \
                (docs/api.md, \"Writing a client\"). All byte strings are hex. Signatures are \
                randomized sr25519 signatures: verify them, do not expect to reproduce them. \
                Do not edit: regenerate only for a versioned format change.",
            "inputs": inputs(),
            "cases": cases().iter().map(|c| build(c, None).0).collect::<Vec<_>>(),
        });
        std::fs::write(path(), serde_json::to_string_pretty(&all).unwrap() + "\n").unwrap();
    }
    let text = std::fs::read_to_string(path()).expect("client/tests/vectors.json");
    let frozen: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(frozen["inputs"], inputs(), "the fixed inputs changed");
    let info = cluster_info();
    let frozen_cases = frozen["cases"].as_array().unwrap();
    assert_eq!(frozen_cases.len(), cases().len());
    let master = MasterSecret::from_seed(&MASTER_SEED);
    let worker = Sr25519Keypair::from_seed(&WORKER_SEED);
    let recipient = X25519SecretKey::from_bytes(&RECIPIENT_SECRET).unwrap();
    let dev = Sr25519Keypair::from_seed(&DEV_ATTESTATION_SEED);
    for (case, f) in cases().iter().zip(frozen_cases) {
        assert_eq!(f["name"], case.name);
        let randomized = Randomized {
            request_signature: unhex(&f["request"]["signature"]),
            response_signature: unhex(&f["response"]["signature"]),
            dev_evidence: f["request"]["attestation"].get("evidence").map(unhex),
        };
        // The randomized parts verify under their documented contexts.
        if let Some(e) = &randomized.dev_evidence {
            let rd: [u8; 64] = unhex(&f["request"]["report_data"]).try_into().unwrap();
            keyring::dev_attestation::verify_dev(
                e,
                &dev.public_key(),
                &rd,
                TIMESTAMP_MS / 1000,
                60,
            )
            .unwrap();
        }
        let req_sig = Signature::from_slice(&randomized.request_signature).unwrap();
        keyring::sign::verify(
            &worker.public_key(),
            keyring::sign::SigningPurpose::KeyRequest,
            &unhex(&f["request"]["signing_bytes"]),
            &req_sig,
        )
        .unwrap_or_else(|_| panic!("{}: request signature", case.name));
        let resp_sig = Signature::from_slice(&randomized.response_signature).unwrap();
        keyring::sign::verify(
            &derive::cluster_signing_key(&master).public_key(),
            keyring::sign::SigningPurpose::KeyResponse,
            &unhex(&f["response"]["signing_bytes"]),
            &resp_sig,
        )
        .unwrap_or_else(|_| panic!("{}: response signature", case.name));
        // Every other byte is recomputed from the inputs.
        // The request is rebuilt from the inputs and the frozen evidence.
        let (again, response, request) = build(case, Some(randomized));
        assert_eq!(&again, f, "{}: recomputed bytes differ", case.name);
        // The frozen response, decoded from its protobuf bytes, passes the SDK's checks and
        // yields the derived key.
        let decoded = pb::KeyResponse::decode(&unhex(&f["response"]["protobuf"])[..]).unwrap();
        assert_eq!(decoded, response);
        let signer = signing_key_for(&info, decoded.epoch).unwrap();
        let VerifiedKey { keypair, epoch, .. } =
            verify_response(&request, &recipient, &signer, &decoded).unwrap();
        assert_eq!(epoch, EPOCH);
        assert_eq!(h(keypair.seed()), f["response"]["derived_seed"]);
        // Any changed field is refused.
        let mutations: Vec<(&str, Mutation)> = vec![
            ("served_by", Box::new(|r| r.served_by += 1)),
            ("issued_at_ms", Box::new(|r| r.issued_at_ms += 1)),
            ("scheme", Box::new(|r| r.scheme = 3 - r.scheme)),
            ("cluster_id", Box::new(|r| r.cluster_id.push(0))),
            (
                "ciphertext",
                Box::new(|r| r.sealed_secret.as_mut().unwrap().ciphertext[0] ^= 1),
            ),
            ("request_digest", Box::new(|r| r.request_digest[0] ^= 1)),
            ("signature", Box::new(|r| r.signature[0] ^= 1)),
            ("epoch", Box::new(|r| r.epoch += 1)),
        ];
        for (what, m) in mutations {
            let mut bad = decoded.clone();
            m(&mut bad);
            assert!(
                verify_response(&request, &recipient, &signer, &bad).is_err(),
                "{}: a changed {what} was accepted",
                case.name
            );
        }
        // Validly signed by the cluster, but not an answer to this request: each is caught by
        // its own check (not by the signature).
        let resign = |r: &mut pb::KeyResponse| {
            let env = r.sealed_secret.clone().unwrap();
            let body = KeyResponse {
                kind: r.kind as u8,
                epoch: r.epoch,
                subject: r.subject.clone(),
                cluster_id: r.cluster_id.clone(),
                scheme: r.scheme as u8,
                derived_public_key: Sr25519PublicKey::from_slice(&r.derived_public_key).unwrap(),
                sealed_secret: Envelope::from_parts(env.version, &env.encapped_key, env.ciphertext)
                    .unwrap(),
                request_digest: r.request_digest.clone().try_into().unwrap(),
                issued_at_ms: r.issued_at_ms,
                served_by: r.served_by,
            };
            r.signature = body.sign(&derive::cluster_signing_key(&master)).0.to_vec();
        };
        let other_epoch = if case.requested.is_some() {
            "asked for epoch"
        } else {
            "does not open"
        };
        let signed_mutations: Vec<(&str, Mutation)> = vec![
            (other_epoch, Box::new(|r| r.epoch += 1)),
            ("another key than", Box::new(|r| r.subject[0] ^= 1)),
            ("another key than", Box::new(|r| r.kind = 1 + r.kind % 3)),
            ("another request", Box::new(|r| r.request_digest[0] ^= 1)),
            (
                "does not match derived_public_key",
                Box::new(|r| {
                    r.derived_public_key = Sr25519Keypair::from_seed(&[9; 32])
                        .public_key()
                        .as_bytes()
                        .to_vec()
                }),
            ),
            ("scheme", Box::new(|r| r.scheme = 7)),
        ];
        for (want, m) in signed_mutations {
            let mut bad = decoded.clone();
            m(&mut bad);
            resign(&mut bad);
            let e = verify_response(&request, &recipient, &signer, &bad).unwrap_err();
            assert!(e.contains(want), "{}: {e:?} lacks {want:?}", case.name);
        }
        // Another recipient key cannot open it.
        let other = X25519SecretKey::from_bytes(&[0x22; 32]).unwrap();
        assert!(verify_response(&request, &other, &signer, &decoded).is_err());
    }
    // The ephemeral secret key in the vectors is the one HPKE's DeriveKeyPair gives.
    let c0 = &frozen_cases[0]["response"]["hpke"];
    let sk = <hpke::kem::X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&unhex(
        &c0["ephemeral_secret_key"],
    ))
    .unwrap();
    assert_eq!(
        h(hpke::kem::X25519HkdfSha256::sk_to_pk(&sk)
            .to_bytes()
            .as_slice()),
        c0["encapped_key"]
    );
}
