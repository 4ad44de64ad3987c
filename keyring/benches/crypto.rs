//! Criterion benchmarks of the keyring's operations; later issues compare a key request's cost
//! against these to state the crypto-bound limit. Run: `cargo bench -p keyring`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use keyring::derive::{self, Scheme};
use keyring::envelope::{self, EnvelopeContext, Purpose};
use keyring::shares::{deal, reconstruct, DealingContext};
use keyring::sign::{KeyRequest, KeyTarget};
use keyring::{ClusterId, ContractId, GatekeeperId, MasterSecret, Sr25519Keypair, X25519SecretKey};
use rand_core::OsRng;
use std::hint::black_box;

fn shares(c: &mut Criterion) {
    let m = MasterSecret::generate(&mut OsRng);
    let ctx = DealingContext {
        gatekeeper_id: GatekeeperId([1; 32]),
        epoch: 0,
        generation: 0,
        master_public_key: m.public_key(),
    };
    let mut g = c.benchmark_group("shares");
    for (t, n) in [(3usize, 5usize), (11, 21)] {
        let id = format!("{t}-of-{n}");
        g.bench_function(BenchmarkId::new("split", &id), |b| {
            b.iter(|| deal(&m, &ctx, t, n, &mut OsRng).unwrap())
        });
        let d = deal(&m, &ctx, t, n, &mut OsRng).unwrap();
        g.bench_function(BenchmarkId::new("verify_one", &id), |b| {
            b.iter(|| d.commitments.verify(black_box(&d.shares[n - 1])).unwrap())
        });
        g.bench_function(BenchmarkId::new("reconstruct", &id), |b| {
            b.iter(|| reconstruct(&ctx, &d.commitments, &d.wrapped, &d.shares[..t]).unwrap())
        });
    }
    g.finish();
}

fn derivation(c: &mut Criterion) {
    let m = MasterSecret::generate(&mut OsRng);
    let worker = Sr25519Keypair::generate(&mut OsRng).public_key();
    let cluster = ClusterId([2; 32]);
    let contract = ContractId([3; 32]);
    let ck = derive::cluster_key(&m, Scheme::Native, &cluster);
    let mut g = c.benchmark_group("derive");
    g.bench_function("worker", |b| b.iter(|| derive::worker_key(&m, &worker)));
    g.bench_function("cluster_native", |b| {
        b.iter(|| derive::cluster_key(&m, Scheme::Native, &cluster))
    });
    g.bench_function("cluster_phala", |b| {
        b.iter(|| derive::cluster_key(&m, Scheme::Phala, &cluster))
    });
    g.bench_function("contract_native", |b| {
        b.iter(|| derive::contract_key(&ck, Scheme::Native, &contract))
    });
    g.bench_function("cluster_signing", |b| {
        b.iter(|| derive::cluster_signing_key(&m))
    });
    g.finish();
}

fn hpke(c: &mut Criterion) {
    let sk = X25519SecretKey::generate(&mut OsRng);
    let ctx = EnvelopeContext {
        purpose: Purpose::KeyDelivery,
        gatekeeper_id: GatekeeperId([1; 32]),
        epoch: 0,
        subject: envelope::subject::key_delivery(1, &[2; 32], &[2; 32]),
        recipient: sk.public_key(),
    };
    let env = envelope::seal(&ctx, &[7; 32], &mut OsRng).unwrap();
    let mut g = c.benchmark_group("hpke");
    g.bench_function("seal_32B", |b| {
        b.iter(|| envelope::seal(&ctx, &[7; 32], &mut OsRng).unwrap())
    });
    g.bench_function("open_32B", |b| {
        b.iter(|| envelope::open(&ctx, &sk, &env).unwrap())
    });
    g.finish();
}

fn signatures(c: &mut Criterion) {
    let w = Sr25519Keypair::generate(&mut OsRng);
    let req = KeyRequest {
        target: KeyTarget::Worker,
        gatekeeper_id: GatekeeperId([1; 32]),
        worker: w.public_key(),
        recipient: X25519SecretKey::generate(&mut OsRng).public_key(),
        epoch: None,
        nonce: [9; 32],
        timestamp_ms: 1,
        evidence: None,
    };
    let sig = req.sign(&w);
    let mut g = c.benchmark_group("sr25519");
    g.bench_function("sign_request", |b| b.iter(|| req.sign(&w)));
    g.bench_function("verify_request", |b| b.iter(|| req.verify(&sig).unwrap()));
    g.finish();
}

criterion_group!(benches, shares, derivation, hpke, signatures);
criterion_main!(benches);
