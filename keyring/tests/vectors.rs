//! Frozen test vectors: every derivation and every canonical encoding that crosses a boundary.
//!
//! `keyring/tests/vectors.json` was computed once and is asserted forever: if any output changes,
//! this test fails, because a changed derivation would silently change every worker's, cluster's
//! and contract's key. Regenerate only for a deliberate, versioned format change:
//! `GATEKEEPER_WRITE_VECTORS=1 cargo test -p keyring --test vectors`.

use keyring::derive::{self, Scheme};
use keyring::sign::{report_data, EvidenceDigest, KeyRequest, KeyTarget};
use keyring::{ClusterId, ContractId, GatekeeperId, MasterSecret, Sr25519Keypair, X25519PublicKey};
use serde_json::{json, Value};

fn key(k: &Sr25519Keypair) -> Value {
    json!({
        "seed": hex::encode(k.seed()),
        "public_key": hex::encode(k.public_key().as_bytes()),
    })
}

fn master_cases(label: &str, master: &MasterSecret, input: Value) -> Value {
    let worker = Sr25519Keypair::from_seed(&[0x11; 32]).public_key();
    let cluster = ClusterId([0x22; 32]);
    let contract = ContractId([0x33; 32]);
    let cn = derive::cluster_key(master, Scheme::Native, &cluster);
    let cp = derive::cluster_key(master, Scheme::Phala, &cluster);
    json!({
        "name": label,
        "input": input,
        "master_public_key": hex::encode(master.public_key().as_bytes()),
        "worker_public_key_input": hex::encode(worker.as_bytes()),
        "cluster_id": hex::encode(cluster.as_bytes()),
        "contract_id": hex::encode(contract.as_bytes()),
        "worker_key": key(&derive::worker_key(master, &worker)),
        "cluster_signing_key": key(&derive::cluster_signing_key(master)),
        "audit_key": hex::encode(&derive::audit_key(master)[..]),
        "native": {
            "cluster_key": key(&cn),
            "contract_key": key(&derive::contract_key(&cn, Scheme::Native, &contract)),
        },
        "phala": {
            "cluster_key": key(&cp),
            "contract_key": key(&derive::contract_key(&cp, Scheme::Phala, &contract)),
        },
    })
}

fn compute() -> Value {
    let seed: [u8; 32] = core::array::from_fn(|i| i as u8);
    let generated = MasterSecret::from_seed(&seed);
    // An "imported" 64-byte secret, as a Phala cluster would bring.
    let imported_bytes = MasterSecret::from_seed(&[0x42; 32]).to_bytes();
    let imported = MasterSecret::from_bytes(imported_bytes.as_ref()).unwrap();

    let worker = Sr25519Keypair::from_seed(&[0x11; 32]);
    let request = KeyRequest {
        target: KeyTarget::Contract(ContractId([0x33; 32])),
        gatekeeper_id: GatekeeperId([0x01; 32]),
        worker: worker.public_key(),
        recipient: X25519PublicKey([0x44; 32]),
        epoch: Some(2),
        nonce: [0x55; 32],
        timestamp_ms: 1_764_000_000_000,
        evidence: Some(EvidenceDigest::new(3, b"evidence", b"")),
    };
    json!({
        "description": "Frozen Gatekeeper keyring vectors. Seeds are 32-byte sr25519 mini-secrets (Ed25519 expansion); public keys are sr25519. Do not edit: regenerate only for a versioned format change.",
        "masters": [
            master_cases("generated", &generated, json!({"master_seed": hex::encode(seed)})),
            master_cases("imported-64-byte", &imported, json!({"master_secret": hex::encode(imported_bytes.as_ref())})),
        ],
        "encodings": {
            "key_request_signing_bytes": hex::encode(request.signing_bytes()),
            "key_request_digest": hex::encode(request.digest()),
            "report_data": hex::encode(report_data(&[0x11; 32], &X25519PublicKey([0x44; 32]), &[0x55; 32])),
        }
    })
}

#[test]
fn derivations_match_frozen_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors.json");
    let computed = compute();
    if std::env::var_os("GATEKEEPER_WRITE_VECTORS").is_some() {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&computed).unwrap() + "\n",
        )
        .unwrap();
        eprintln!("wrote {path}");
        return;
    }
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path} is missing ({e}); it is part of the source tree"));
    let frozen: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        computed, frozen,
        "a derivation or canonical encoding changed: this would change keys in production"
    );
}

#[test]
fn vectors_file_is_not_trivially_empty() {
    let text = include_str!("vectors.json");
    let v: Value = serde_json::from_str(text).unwrap();
    assert_eq!(v["masters"].as_array().unwrap().len(), 2);
    // The derived keys of one master are pairwise distinct.
    let m = &v["masters"][0];
    let pks = [
        &m["worker_key"]["public_key"],
        &m["cluster_signing_key"]["public_key"],
        &m["native"]["cluster_key"]["public_key"],
        &m["native"]["contract_key"]["public_key"],
        &m["phala"]["cluster_key"]["public_key"],
        &m["phala"]["contract_key"]["public_key"],
    ];
    for i in 0..pks.len() {
        for j in i + 1..pks.len() {
            assert_ne!(pks[i], pks[j]);
        }
    }
}
