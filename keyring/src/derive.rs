//! Key derivation: per-worker, per-cluster, per-contract keys and the cluster signing key.
//!
//! Every derived key is an sr25519 keypair made by expanding (Ed25519 mode) a 32-byte seed that
//! HKDF-SHA256 produces from a parent's 64-byte expanded secret. The byte-exact specification is in
//! docs/design.md ("Derivation"); `keyring/tests/vectors.json` freezes its outputs.
//!
//! | key             | parent          | native labels                         | Phala labels               |
//! |-----------------|-----------------|---------------------------------------|----------------------------|
//! | worker          | master[epoch]   | `"worker"`, worker public key         | (native always)            |
//! | cluster         | master[epoch]   | `"cluster"`, cluster id               | `b"cluster_key"`, id       |
//! | contract        | cluster key     | `"contract"`, contract id             | `b"contract_key"`, id      |
//! | cluster signing | master[epoch]   | `"cluster-signing"`, (empty)          | (native always)            |
//! | audit (HMAC key)| master[epoch]   | `"audit"`, (empty)                    | (native always)            |

use crate::encoding::Canonical;
use crate::keys::{ClusterId, ContractId, Sr25519Keypair, Sr25519PublicKey};
use crate::master::MasterSecret;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// HKDF salt of the native scheme.
pub const NATIVE_SALT: &[u8] = b"gatekeeper/v1/kdf-salt";
/// Domain label at the head of every native `info`.
pub const NATIVE_INFO_DOMAIN: &str = "gatekeeper/v1/kdf";
/// Phala's `KDF_SALT` (the Phala PoC-4 genesis hash), used by the Phala-compatible scheme.
pub const PHALA_SALT: [u8; 32] = [
    0x18, 0xe8, 0x76, 0xad, 0xfa, 0x74, 0xcc, 0x74, 0x3b, 0x4b, 0x7d, 0x7f, 0x92, 0xc9, 0x6e, 0x03,
    0xde, 0x55, 0x9a, 0x3c, 0x15, 0x27, 0x05, 0x81, 0xfc, 0xe4, 0x45, 0x96, 0x3d, 0x90, 0xf8, 0x5e,
];

/// How cluster and contract keys are derived. Chosen per cluster; worker keys and the cluster
/// signing key always use [`Scheme::Native`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Scheme {
    /// Gatekeeper's own scheme: its own salt, length-prefixed labels under a domain label.
    Native,
    /// Byte-compatible with Phala's pRuntime `derive_sr25519_pair`: Phala's salt and the labels
    /// concatenated, so an imported Phala master secret yields the same cluster/contract keys.
    Phala,
}

/// A derived sr25519 key. Its 32-byte seed is what a worker receives (HPKE-sealed).
pub type DerivedKey = Sr25519Keypair;

fn hkdf_seed(salt: &[u8], ikm: &[u8; 64], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(info, okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

fn native(parent: &[u8; 64], label: &str, input: &[u8]) -> DerivedKey {
    let info = Canonical::new(NATIVE_INFO_DOMAIN)
        .bytes(label.as_bytes())
        .bytes(input)
        .finish();
    Sr25519Keypair::from_seed(&hkdf_seed(NATIVE_SALT, parent, &[&info]))
}

fn phala(parent: &[u8; 64], label: &[u8], input: &[u8]) -> DerivedKey {
    Sr25519Keypair::from_seed(&hkdf_seed(&PHALA_SALT, parent, &[label, input]))
}

/// The worker key: f(master[epoch], "worker", worker public key).
pub fn worker_key(master: &MasterSecret, worker: &Sr25519PublicKey) -> DerivedKey {
    native(&master.to_bytes(), "worker", worker.as_bytes())
}

/// The cluster key: f(master[epoch], "cluster", cluster id) under `scheme`.
pub fn cluster_key(master: &MasterSecret, scheme: Scheme, cluster: &ClusterId) -> DerivedKey {
    let parent = master.to_bytes();
    match scheme {
        Scheme::Native => native(&parent, "cluster", cluster.as_bytes()),
        Scheme::Phala => phala(&parent, b"cluster_key", cluster.as_bytes()),
    }
}

/// The contract key: f(cluster key, "contract", contract id) under `scheme` (the cluster's).
pub fn contract_key(cluster_key: &DerivedKey, scheme: Scheme, contract: &ContractId) -> DerivedKey {
    let parent = cluster_key.secret_bytes();
    match scheme {
        Scheme::Native => native(&parent, "contract", contract.as_bytes()),
        Scheme::Phala => phala(&parent, b"contract_key", contract.as_bytes()),
    }
}

/// The cluster signing key of an epoch: f(master[epoch], "cluster-signing"). Signs key responses.
pub fn cluster_signing_key(master: &MasterSecret) -> DerivedKey {
    native(&master.to_bytes(), "cluster-signing", &[])
}

/// The audit key of an epoch: f(master[epoch], "audit"), 32 bytes. Keys the HMACs that stand
/// for worker keys and subjects in the nodes' audit logs, so every node holding the epoch writes
/// the same HMAC for the same value (lines correlate across nodes, not across epochs). Never
/// leaves the node; no worker receives a key under this label.
pub fn audit_key(master: &MasterSecret) -> Zeroizing<[u8; 32]> {
    let info = Canonical::new(NATIVE_INFO_DOMAIN)
        .bytes(b"audit")
        .bytes(&[])
        .finish();
    hkdf_seed(NATIVE_SALT, &master.to_bytes(), &[&info])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterSecret {
        MasterSecret::from_seed(&[1; 32])
    }

    #[test]
    fn the_audit_key_is_per_epoch_and_apart_from_every_delivered_key() {
        let m = master();
        let k = audit_key(&m);
        assert_eq!(*k, *audit_key(&MasterSecret::from_seed(&[1; 32])));
        assert_ne!(*k, *audit_key(&MasterSecret::from_seed(&[2; 32])));
        let signing = cluster_signing_key(&m).secret_bytes();
        assert_ne!(&k[..], &signing[..32]);
        let worker = worker_key(&m, &cluster_signing_key(&m).public_key()).secret_bytes();
        assert_ne!(&k[..], &worker[..32]);
    }

    #[test]
    fn every_purpose_gives_a_distinct_key() {
        let m = master();
        let id = [5u8; 32];
        let worker = Sr25519Keypair::from_seed(&[2; 32]).public_key();
        let keys = [
            worker_key(&m, &worker).public_key(),
            cluster_key(&m, Scheme::Native, &ClusterId(id)).public_key(),
            cluster_key(&m, Scheme::Phala, &ClusterId(id)).public_key(),
            cluster_signing_key(&m).public_key(),
            contract_key(
                &cluster_key(&m, Scheme::Native, &ClusterId(id)),
                Scheme::Native,
                &ContractId(id),
            )
            .public_key(),
            m.public_key(),
        ];
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "keys {i} and {j} collide");
            }
        }
    }

    #[test]
    fn epochs_do_not_share_keys() {
        let a = MasterSecret::from_seed(&[1; 32]);
        let b = MasterSecret::from_seed(&[2; 32]);
        let c = ClusterId([3; 32]);
        assert_ne!(
            cluster_key(&a, Scheme::Native, &c).public_key(),
            cluster_key(&b, Scheme::Native, &c).public_key()
        );
    }

    #[test]
    fn derivation_is_deterministic() {
        let m = master();
        let c = ClusterId([3; 32]);
        assert_eq!(
            cluster_key(&m, Scheme::Phala, &c).seed(),
            cluster_key(&m, Scheme::Phala, &c).seed()
        );
    }
}
