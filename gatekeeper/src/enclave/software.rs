//! The software enclave: for development and tests only.
//!
//! * The sealing key is 32 random bytes in `<dir>/sealing.key`, created with mode 0600; a key file
//!   readable by group or others is refused.
//! * The identity sr25519 seed and the HPKE X25519 secret live in `<dir>/identity.sealed`, a sealed
//!   blob (label `node-identity`) under that key.
//! * Master secrets and shares are held in process memory only, never written anywhere.
//! * Evidence is a dev attestation signed by the configured dev attestation key.
//!
//! It protects nothing against someone who can read the process memory or the key file: that is
//! what the `gramine-sgx` backend is for.

use super::{DealingPublic, Enclave, EnclaveError, Recipient, SealedKey};
use keyring::derive::{self, Scheme};
use keyring::envelope::{self, subject, Envelope, EnvelopeContext, Purpose};
use keyring::sealed::SealingKey;
use keyring::shares::{self, Commitments, DealingContext, Share, WrappedMaster};
use keyring::sign::{sign, KeyTarget, SigningPurpose};
use keyring::{
    dev_attestation, GatekeeperId, MasterSecret, Signature, Sr25519Keypair, Sr25519PublicKey,
    X25519PublicKey, X25519SecretKey,
};
use rand_core::OsRng;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use zeroize::Zeroizing;

const IDENTITY_LABEL: &str = "node-identity";

/// Where attestation evidence comes from.
#[derive(Clone, Debug)]
pub enum EvidenceSource {
    /// Dev attestations signed by this key (software backend).
    Dev(Option<Box<Sr25519Keypair>>),
    /// Gramine's attestation pseudo-files under this directory (normally `/dev/attestation`):
    /// the report data is written to `user_report_data` and the DCAP quote read from `quote`.
    Gramine(std::path::PathBuf),
}

#[derive(Default)]
struct EpochSecrets {
    master: Option<MasterSecret>,
    /// Verified shares per dealing generation, by index (own and peers').
    shares: HashMap<u64, BTreeMap<u8, Share>>,
    /// This node's own index per generation.
    own: HashMap<u64, u8>,
}

/// The development enclave.
pub struct SoftwareEnclave {
    node_id: u64,
    sealing: SealingKey,
    identity: Sr25519Keypair,
    hpke: X25519SecretKey,
    evidence: EvidenceSource,
    epochs: Mutex<HashMap<u64, EpochSecrets>>,
    staged_import: Mutex<Option<MasterSecret>>,
    /// Masters dealt here but not yet seen committed, by epoch. Only `confirm_epoch` promotes one
    /// (when the committed record names its public key), so an epoch whose `InstallEpoch` never
    /// committed can never serve keys.
    pending: Mutex<HashMap<u64, MasterSecret>>,
}

fn storage(e: impl std::fmt::Display) -> EnclaveError {
    EnclaveError::Storage(e.to_string())
}

impl SoftwareEnclave {
    /// Opens (or creates) the enclave state in `dir` for node `node_id`, with dev evidence.
    #[cfg(test)]
    pub fn open(
        dir: &Path,
        node_id: u64,
        dev_key: Option<Sr25519Keypair>,
    ) -> Result<Self, EnclaveError> {
        Self::open_with(dir, node_id, EvidenceSource::Dev(dev_key.map(Box::new)))
    }

    /// Opens the enclave state in `dir` with the given evidence source. The `gramine-sgx` backend
    /// is this with `EvidenceSource::Gramine` and `dir` on Gramine's encrypted-files mount (so
    /// the sealing-key file is itself encrypted by Gramine under the MRSIGNER-bound key).
    pub fn open_with(
        dir: &Path,
        node_id: u64,
        evidence: EvidenceSource,
    ) -> Result<Self, EnclaveError> {
        std::fs::create_dir_all(dir).map_err(storage)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(storage)?;
        let key_path = dir.join("sealing.key");
        let sealing = if key_path.exists() {
            let mode = std::fs::metadata(&key_path)
                .map_err(storage)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(EnclaveError::Storage(format!(
                    "{} is readable by group or others (mode {:o}); it must be 0600",
                    key_path.display(),
                    mode & 0o777
                )));
            }
            let bytes = Zeroizing::new(std::fs::read(&key_path).map_err(storage)?);
            SealingKey::from_bytes(&bytes)?
        } else {
            let key = SealingKey::generate(&mut OsRng);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .map_err(storage)?;
            f.write_all(key.to_bytes().as_ref()).map_err(storage)?;
            f.sync_all().map_err(storage)?;
            key
        };
        let id_path = dir.join("identity.sealed");
        let (identity, hpke) = if id_path.exists() {
            let blob = std::fs::read(&id_path).map_err(storage)?;
            let plain = sealing.open(IDENTITY_LABEL, &blob)?;
            if plain.len() != 64 {
                return Err(EnclaveError::Storage(
                    "identity blob has the wrong size".into(),
                ));
            }
            let seed: [u8; 32] = plain[..32].try_into().expect("32 bytes");
            let seed = Zeroizing::new(seed);
            (
                Sr25519Keypair::from_seed(&seed),
                X25519SecretKey::from_bytes(&plain[32..])?,
            )
        } else {
            let identity = Sr25519Keypair::generate(&mut OsRng);
            let hpke = X25519SecretKey::generate(&mut OsRng);
            let mut plain = Zeroizing::new(Vec::with_capacity(64));
            plain.extend_from_slice(identity.seed());
            plain.extend_from_slice(hpke.to_bytes().as_ref());
            let blob = sealing.seal(IDENTITY_LABEL, &plain, &mut OsRng);
            gatekeeper_raft::sm_store::write_atomic(&id_path, &blob).map_err(storage)?;
            (identity, hpke)
        };
        Ok(Self {
            node_id,
            sealing,
            identity,
            hpke,
            evidence,
            epochs: Mutex::new(HashMap::new()),
            staged_import: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn epochs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, EpochSecrets>> {
        self.epochs.lock().expect("enclave lock poisoned")
    }

    /// Runs `f` with the epoch's confirmed master secret, or fails with `Sealed`.
    fn with_master<T>(
        &self,
        epoch: u64,
        f: impl FnOnce(&MasterSecret) -> Result<T, EnclaveError>,
    ) -> Result<T, EnclaveError> {
        let epochs = self.epochs();
        let master = epochs
            .get(&epoch)
            .and_then(|e| e.master.as_ref())
            .ok_or(EnclaveError::Sealed(epoch))?;
        f(master)
    }

    fn deal(
        &self,
        master: &MasterSecret,
        gatekeeper_id: GatekeeperId,
        epoch: u64,
        generation: u64,
        threshold: usize,
        members: &[Recipient],
    ) -> Result<DealingPublic, EnclaveError> {
        let ctx = DealingContext {
            gatekeeper_id,
            epoch,
            generation,
            master_public_key: master.public_key(),
        };
        let dealing = shares::deal(master, &ctx, threshold, members.len(), &mut OsRng)?;
        let mut sealed = Vec::with_capacity(members.len());
        for (m, share) in members.iter().zip(&dealing.shares) {
            let ectx = EnvelopeContext {
                purpose: Purpose::ShareDealing,
                gatekeeper_id,
                epoch,
                subject: subject::share(generation, share.index(), m.node_id),
                recipient: m.hpke,
            };
            let env = envelope::seal(&ectx, share.value_bytes().as_ref(), &mut OsRng)?;
            sealed.push((m.node_id, share.index(), env));
        }
        Ok(DealingPublic {
            master_public_key: master.public_key(),
            cluster_signing_public_key: derive::cluster_signing_key(master).public_key(),
            generation,
            commitments: dealing.commitments,
            wrapped: dealing.wrapped,
            shares: sealed,
        })
    }

    fn open_share(
        &self,
        ctx: &DealingContext,
        purpose: Purpose,
        commitments: &Commitments,
        index: u8,
        env: &Envelope,
    ) -> Result<Share, EnclaveError> {
        let ectx = EnvelopeContext {
            purpose,
            gatekeeper_id: ctx.gatekeeper_id,
            epoch: ctx.epoch,
            subject: subject::share(ctx.generation, index, self.node_id),
            recipient: self.hpke.public_key(),
        };
        let plain = envelope::open(&ectx, &self.hpke, env)?;
        let share = Share::from_bytes(index, &plain)?;
        commitments.verify(&share)?;
        Ok(share)
    }
}

impl Enclave for SoftwareEnclave {
    fn identity_public_key(&self) -> Sr25519PublicKey {
        self.identity.public_key()
    }

    fn hpke_public_key(&self) -> X25519PublicKey {
        self.hpke.public_key()
    }

    fn sign_identity(&self, purpose: SigningPurpose, message: &[u8]) -> Signature {
        sign(&self.identity, purpose, message)
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<(i32, Vec<u8>), EnclaveError> {
        match &self.evidence {
            EvidenceSource::Dev(key) => {
                let key = key.as_ref().ok_or_else(|| {
                    EnclaveError::State("no dev attestation key is configured".into())
                })?;
                Ok((
                    3,
                    dev_attestation::issue(key, report_data, crate::clock::now_secs()),
                ))
            }
            EvidenceSource::Gramine(dir) => {
                // Gramine computes the quote when `quote` is read after `user_report_data` was
                // written; one request at a time.
                static QUOTE_LOCK: Mutex<()> = Mutex::new(());
                let _g = QUOTE_LOCK.lock().expect("quote lock");
                std::fs::write(dir.join("user_report_data"), report_data).map_err(storage)?;
                let quote = std::fs::read(dir.join("quote")).map_err(storage)?;
                if quote.len() < 48 {
                    return Err(EnclaveError::Storage(format!(
                        "{} returned {} bytes, not a quote",
                        dir.join("quote").display(),
                        quote.len()
                    )));
                }
                // SGX DCAP (proto AttestationKind::SgxDcap).
                Ok((1, quote))
            }
        }
    }

    fn seal(&self, label: &str, data: &[u8]) -> Vec<u8> {
        self.sealing.seal(label, data, &mut OsRng)
    }

    fn unseal(&self, label: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnclaveError> {
        Ok(self.sealing.open(label, blob)?)
    }

    fn stage_import(&self, envelope: &Envelope) -> Result<Sr25519PublicKey, EnclaveError> {
        let ctx = EnvelopeContext {
            purpose: Purpose::MasterImport,
            gatekeeper_id: GatekeeperId([0; 32]),
            epoch: 0,
            subject: subject::master_import(),
            recipient: self.hpke.public_key(),
        };
        let plain = envelope::open(&ctx, &self.hpke, envelope)?;
        let master = MasterSecret::from_bytes(&plain)?;
        let public = master.public_key();
        *self.staged_import.lock().expect("import lock") = Some(master);
        Ok(public)
    }

    fn create_epoch(
        &self,
        gatekeeper_id: GatekeeperId,
        epoch: u64,
        threshold: usize,
        members: &[Recipient],
        use_staged_import: bool,
    ) -> Result<DealingPublic, EnclaveError> {
        if self.has_master(epoch) {
            return Err(EnclaveError::State(format!("epoch {epoch} already exists")));
        }
        let master = if use_staged_import {
            self.staged_import
                .lock()
                .expect("import lock")
                .take()
                .ok_or_else(|| {
                    EnclaveError::State(
                        "no staged master import (it lives in memory only: re-run init's import)"
                            .into(),
                    )
                })?
        } else {
            MasterSecret::generate(&mut OsRng)
        };
        let public = self.deal(&master, gatekeeper_id, epoch, 0, threshold, members)?;
        // Pending until the InstallEpoch naming this master public key is seen committed; a
        // retry replaces it.
        self.pending
            .lock()
            .expect("pending lock")
            .insert(epoch, master);
        Ok(public)
    }

    fn redeal(
        &self,
        gatekeeper_id: GatekeeperId,
        epoch: u64,
        generation: u64,
        threshold: usize,
        members: &[Recipient],
    ) -> Result<DealingPublic, EnclaveError> {
        self.with_master(epoch, |master| {
            self.deal(master, gatekeeper_id, epoch, generation, threshold, members)
        })
    }

    fn accept_own_share(
        &self,
        ctx: &DealingContext,
        commitments: &Commitments,
        index: u8,
        envelope: &Envelope,
    ) -> Result<(), EnclaveError> {
        let share = self.open_share(ctx, Purpose::ShareDealing, commitments, index, envelope)?;
        let mut epochs = self.epochs();
        let e = epochs.entry(ctx.epoch).or_default();
        e.own.insert(ctx.generation, index);
        e.shares
            .entry(ctx.generation)
            .or_default()
            .insert(index, share);
        Ok(())
    }

    fn share_for_peer(
        &self,
        ctx: &DealingContext,
        peer_node_id: u64,
        peer_hpke: &X25519PublicKey,
    ) -> Result<(u8, Envelope), EnclaveError> {
        let epochs = self.epochs();
        let e = epochs
            .get(&ctx.epoch)
            .ok_or(EnclaveError::Sealed(ctx.epoch))?;
        let index = *e.own.get(&ctx.generation).ok_or_else(|| {
            EnclaveError::State(format!(
                "no own share of epoch {} generation {}",
                ctx.epoch, ctx.generation
            ))
        })?;
        let share = &e.shares[&ctx.generation][&index];
        let ectx = EnvelopeContext {
            purpose: Purpose::ShareTransfer,
            gatekeeper_id: ctx.gatekeeper_id,
            epoch: ctx.epoch,
            subject: subject::share(ctx.generation, index, peer_node_id),
            recipient: *peer_hpke,
        };
        let env = envelope::seal(&ectx, share.value_bytes().as_ref(), &mut OsRng)?;
        Ok((index, env))
    }

    fn accept_peer_share(
        &self,
        ctx: &DealingContext,
        commitments: &Commitments,
        index: u8,
        envelope: &Envelope,
    ) -> Result<usize, EnclaveError> {
        let share = self.open_share(ctx, Purpose::ShareTransfer, commitments, index, envelope)?;
        let mut epochs = self.epochs();
        let held = epochs
            .entry(ctx.epoch)
            .or_default()
            .shares
            .entry(ctx.generation)
            .or_default();
        held.insert(index, share);
        Ok(held.len())
    }

    fn reconstruct(
        &self,
        ctx: &DealingContext,
        commitments: &Commitments,
        wrapped: &WrappedMaster,
    ) -> Result<(), EnclaveError> {
        let mut epochs = self.epochs();
        let e = epochs.entry(ctx.epoch).or_default();
        let held: Vec<Share> = e
            .shares
            .get(&ctx.generation)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let master = shares::reconstruct(ctx, commitments, wrapped, &held)?;
        e.master = Some(master);
        Ok(())
    }

    fn confirm_epoch(&self, epoch: u64, master_public_key: &Sr25519PublicKey) -> bool {
        let mut epochs = self.epochs();
        let e = epochs.entry(epoch).or_default();
        if let Some(m) = &e.master {
            if m.public_key() == *master_public_key {
                return true;
            }
            // Never serve from a master that is not the committed one.
            e.master = None;
        }
        let mut pending = self.pending.lock().expect("pending lock");
        if pending
            .get(&epoch)
            .is_some_and(|m| m.public_key() == *master_public_key)
        {
            e.master = pending.remove(&epoch);
            return true;
        }
        false
    }

    fn has_master(&self, epoch: u64) -> bool {
        self.epochs()
            .get(&epoch)
            .is_some_and(|e| e.master.is_some())
    }

    fn held_shares(&self, epoch: u64, generation: u64) -> (usize, bool) {
        let epochs = self.epochs();
        match epochs.get(&epoch) {
            None => (0, false),
            Some(e) => (
                e.shares.get(&generation).map_or(0, |m| m.len()),
                e.own.contains_key(&generation),
            ),
        }
    }

    fn derive_sealed(
        &self,
        gatekeeper_id: GatekeeperId,
        epoch: u64,
        target: KeyTarget,
        cluster: Option<(keyring::ClusterId, Scheme)>,
        worker: &Sr25519PublicKey,
        recipient: &X25519PublicKey,
    ) -> Result<SealedKey, EnclaveError> {
        let (key, subject_id): (Sr25519Keypair, Vec<u8>) = self.with_master(epoch, |master| {
            Ok(match target {
                KeyTarget::Worker => (
                    derive::worker_key(master, worker),
                    worker.as_bytes().to_vec(),
                ),
                KeyTarget::Cluster(c) => {
                    let scheme = cluster.map_or(Scheme::Native, |(_, s)| s);
                    (
                        derive::cluster_key(master, scheme, &c),
                        c.as_bytes().to_vec(),
                    )
                }
                KeyTarget::Contract(k) => {
                    let (c, scheme) = cluster.ok_or_else(|| {
                        EnclaveError::State("a contract key needs its cluster".into())
                    })?;
                    let ck = derive::cluster_key(master, scheme, &c);
                    (derive::contract_key(&ck, scheme, &k), k.as_bytes().to_vec())
                }
            })
        })?;
        let ectx = EnvelopeContext {
            purpose: Purpose::KeyDelivery,
            gatekeeper_id,
            epoch,
            subject: subject::key_delivery(target.kind(), &subject_id, worker.as_bytes()),
            recipient: *recipient,
        };
        let envelope = envelope::seal(&ectx, key.seed(), &mut OsRng)?;
        Ok(SealedKey {
            public_key: key.public_key(),
            envelope,
        })
    }

    fn audit_key(&self, epoch: u64) -> Result<zeroize::Zeroizing<[u8; 32]>, EnclaveError> {
        self.with_master(epoch, |master| Ok(keyring::derive::audit_key(master)))
    }

    fn sign_response(&self, epoch: u64, message: &[u8]) -> Result<Signature, EnclaveError> {
        self.with_master(epoch, |master| {
            Ok(sign(
                &derive::cluster_signing_key(master),
                SigningPurpose::KeyResponse,
                message,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GK: GatekeeperId = GatekeeperId([1; 32]);

    fn cluster(n: u64) -> (Vec<tempfile::TempDir>, Vec<SoftwareEnclave>) {
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let encl = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| SoftwareEnclave::open(d.path(), i as u64 + 1, None).unwrap())
            .collect();
        (dirs, encl)
    }

    fn recipients(e: &[SoftwareEnclave]) -> Vec<Recipient> {
        e.iter()
            .map(|x| Recipient {
                node_id: x.node_id,
                hpke: x.hpke_public_key(),
            })
            .collect()
    }

    fn ctx(p: &DealingPublic, epoch: u64) -> DealingContext {
        DealingContext {
            gatekeeper_id: GK,
            epoch,
            generation: p.generation,
            master_public_key: p.master_public_key,
        }
    }

    fn worker_key(e: &SoftwareEnclave, epoch: u64) -> Sr25519PublicKey {
        let w = Sr25519Keypair::from_seed(&[9; 32]).public_key();
        let r = X25519SecretKey::generate(&mut OsRng).public_key();
        e.derive_sealed(GK, epoch, KeyTarget::Worker, None, &w, &r)
            .unwrap()
            .public_key
    }

    #[test]
    fn gramine_evidence_writes_report_data_and_reads_the_quote() {
        // A stand-in for Gramine's /dev/attestation: real quotes need SGX hardware.
        let att = tempfile::tempdir().unwrap();
        std::fs::write(att.path().join("quote"), vec![7u8; 1000]).unwrap();
        let d = tempfile::tempdir().unwrap();
        let e = SoftwareEnclave::open_with(
            d.path(),
            1,
            EvidenceSource::Gramine(att.path().to_path_buf()),
        )
        .unwrap();
        let (kind, quote) = e.evidence(&[5; 64]).unwrap();
        assert_eq!(kind, 1);
        assert_eq!(quote, vec![7u8; 1000]);
        assert_eq!(
            std::fs::read(att.path().join("user_report_data")).unwrap(),
            vec![5u8; 64]
        );
        std::fs::write(att.path().join("quote"), b"short").unwrap();
        assert!(e.evidence(&[5; 64]).is_err());
    }

    #[test]
    fn identity_persists_and_key_file_is_private() {
        let d = tempfile::tempdir().unwrap();
        let a = SoftwareEnclave::open(d.path(), 1, None).unwrap();
        let b = SoftwareEnclave::open(d.path(), 1, None).unwrap();
        assert_eq!(a.identity_public_key(), b.identity_public_key());
        assert_eq!(a.hpke_public_key(), b.hpke_public_key());
        let key = d.path().join("sealing.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SoftwareEnclave::open(d.path(), 1, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("0600"), "{e}");
    }

    #[test]
    fn genesis_unseal_from_peers_and_identical_keys() {
        let (_d, e) = cluster(3);
        let p = e[0].create_epoch(GK, 0, 2, &recipients(&e), false).unwrap();
        assert!(e[0].confirm_epoch(0, &p.master_public_key));
        let c = ctx(&p, 0);
        for (x, (node, index, env)) in e.iter().zip(&p.shares) {
            assert_eq!(x.node_id, *node);
            x.accept_own_share(&c, &p.commitments, *index, env).unwrap();
        }
        let expected = worker_key(&e[0], 0);
        // Node 2 rebuilds from its own share plus node 3's.
        assert!(!e[1].has_master(0));
        let (idx, env) = e[2].share_for_peer(&c, 2, &e[1].hpke_public_key()).unwrap();
        assert_eq!(
            e[1].accept_peer_share(&c, &p.commitments, idx, &env)
                .unwrap(),
            2
        );
        e[1].reconstruct(&c, &p.commitments, &p.wrapped).unwrap();
        assert_eq!(worker_key(&e[1], 0), expected);
        // The epoch's audit key is the same on every node that holds the epoch.
        assert_eq!(*e[1].audit_key(0).unwrap(), *e[0].audit_key(0).unwrap());
        assert!(matches!(e[2].audit_key(0), Err(EnclaveError::Sealed(0))));
        // A share sealed for node 2 is useless to node 3.
        let (idx, env) = e[0].share_for_peer(&c, 2, &e[1].hpke_public_key()).unwrap();
        assert!(e[2]
            .accept_peer_share(&c, &p.commitments, idx, &env)
            .is_err());
    }

    #[test]
    fn a_master_serves_only_once_its_committed_record_matches() {
        let (_d, e) = cluster(3);
        let p = e[0].create_epoch(GK, 0, 2, &recipients(&e), false).unwrap();
        // Dealt but not committed: nothing is served from it.
        assert!(!e[0].has_master(0));
        // A committed record naming another master does not promote it.
        let other = Sr25519Keypair::from_seed(&[1; 32]).public_key();
        assert!(!e[0].confirm_epoch(0, &other));
        assert!(!e[0].has_master(0));
        // A retry deals a new master; only the committed one is ever promoted.
        let p2 = e[0].create_epoch(GK, 0, 2, &recipients(&e), false).unwrap();
        assert_ne!(p2.master_public_key, p.master_public_key);
        assert!(!e[0].confirm_epoch(0, &p.master_public_key));
        assert!(e[0].confirm_epoch(0, &p2.master_public_key));
        assert!(e[0].has_master(0));
        // A held master that is not the committed one is dropped.
        assert!(!e[0].confirm_epoch(0, &other));
        assert!(!e[0].has_master(0));
    }

    #[test]
    fn one_share_is_not_enough() {
        let (_d, e) = cluster(3);
        let p = e[0].create_epoch(GK, 0, 2, &recipients(&e), false).unwrap();
        let c = ctx(&p, 0);
        let (_, index, env) = &p.shares[1];
        e[1].accept_own_share(&c, &p.commitments, *index, env)
            .unwrap();
        let err = e[1]
            .reconstruct(&c, &p.commitments, &p.wrapped)
            .unwrap_err();
        assert!(err.to_string().contains("verified shares"), "{err}");
        assert!(matches!(
            e[1].derive_sealed(
                GK,
                0,
                KeyTarget::Worker,
                None,
                &Sr25519Keypair::from_seed(&[9; 32]).public_key(),
                &X25519SecretKey::generate(&mut OsRng).public_key()
            ),
            Err(EnclaveError::Sealed(0))
        ));
    }

    #[test]
    fn redealing_kills_a_removed_nodes_share() {
        let (_d, e) = cluster(4);
        let all = recipients(&e);
        let p0 = e[0].create_epoch(GK, 0, 2, &all[..3], false).unwrap();
        assert!(e[0].confirm_epoch(0, &p0.master_public_key));
        let c0 = ctx(&p0, 0);
        for (x, (_, index, env)) in e.iter().zip(&p0.shares) {
            x.accept_own_share(&c0, &p0.commitments, *index, env)
                .unwrap();
        }
        // Node 3 leaves, node 4 joins: generation 1 over nodes 1, 2, 4.
        let members = [all[0], all[1], all[3]];
        let p1 = e[0].redeal(GK, 0, 1, 2, &members).unwrap();
        assert_eq!(p1.master_public_key, p0.master_public_key);
        let c1 = ctx(&p1, 0);
        for (x, (_, index, env)) in [&e[0], &e[1], &e[3]].iter().zip(&p1.shares) {
            x.accept_own_share(&c1, &p1.commitments, *index, env)
                .unwrap();
        }
        // The removed node 3 sends its old share to node 4 for the new dealing: refused.
        let err = e[2].share_for_peer(&c1, 4, &e[3].hpke_public_key());
        assert!(err.is_err(), "node 3 holds no generation-1 share");
        let (idx, env) = e[2]
            .share_for_peer(&c0, 4, &e[3].hpke_public_key())
            .unwrap();
        // Presented as a generation-1 share it does not even open (context binds the generation);
        // and against the new commitments it would fail verification.
        assert!(e[3]
            .accept_peer_share(&c1, &p1.commitments, idx, &env)
            .is_err());
        // Node 4 rebuilds with a current share from node 2.
        let (idx, env) = e[1]
            .share_for_peer(&c1, 4, &e[3].hpke_public_key())
            .unwrap();
        e[3].accept_peer_share(&c1, &p1.commitments, idx, &env)
            .unwrap();
        e[3].reconstruct(&c1, &p1.commitments, &p1.wrapped).unwrap();
        assert_eq!(worker_key(&e[3], 0), worker_key(&e[0], 0));
    }
}
