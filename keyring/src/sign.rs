//! sr25519 signatures over canonical messages, one signing context per message kind.
//!
//! Each message kind has its own schnorrkel signing context *and* its own canonical-encoding
//! domain, so a signature made for one kind never verifies as another (docs/api.md, "Writing
//! a client", lists every context and layout).

use crate::encoding::Canonical;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::keys::{
    ClusterId, ContractId, GatekeeperId, Signature, Sr25519Keypair, Sr25519PublicKey,
    X25519PublicKey,
};
use sha2::{Digest, Sha256, Sha512};

/// The kinds of signed message. Each has a distinct signing context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SigningPurpose {
    /// A worker's key request.
    KeyRequest,
    /// The cluster's key response.
    KeyResponse,
    /// A node's FetchShare request.
    ShareRequest,
    /// A node's FetchShare response.
    ShareResponse,
    /// A development attestation (software enclave).
    DevAttestation,
    /// A replicated command proposed by a member (its proof of origin, checked by every node
    /// when it applies the entry).
    Command,
}

impl SigningPurpose {
    /// The schnorrkel signing context.
    pub fn context(self) -> &'static [u8] {
        match self {
            SigningPurpose::KeyRequest => b"gatekeeper/v1/key-request",
            SigningPurpose::KeyResponse => b"gatekeeper/v1/key-response",
            SigningPurpose::ShareRequest => b"gatekeeper/v1/share-request",
            SigningPurpose::ShareResponse => b"gatekeeper/v1/share-response",
            SigningPurpose::DevAttestation => b"gatekeeper/v1/dev-attestation",
            SigningPurpose::Command => b"gatekeeper/v1/command",
        }
    }
}

/// Signs `message` for `purpose`.
pub fn sign(key: &Sr25519Keypair, purpose: SigningPurpose, message: &[u8]) -> Signature {
    let kp = key.schnorrkel();
    Signature(
        kp.sign(schnorrkel::signing_context(purpose.context()).bytes(message))
            .to_bytes(),
    )
}

/// Verifies a signature made by [`sign`].
pub fn verify(
    key: &Sr25519PublicKey,
    purpose: SigningPurpose,
    message: &[u8],
    signature: &Signature,
) -> Result<()> {
    let sig = schnorrkel::Signature::from_bytes(&signature.0).map_err(|_| Error::BadSignature)?;
    key.to_schnorrkel()
        .verify(
            schnorrkel::signing_context(purpose.context()).bytes(message),
            &sig,
        )
        .map_err(|_| Error::BadSignature)
}

/// What a key request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTarget {
    /// The worker's own key.
    Worker,
    /// A cluster key.
    Cluster(ClusterId),
    /// A contract key.
    Contract(ContractId),
}

impl KeyTarget {
    /// The proto `KeyKind` number: 1 worker, 2 cluster, 3 contract.
    pub fn kind(&self) -> u8 {
        match self {
            KeyTarget::Worker => 1,
            KeyTarget::Cluster(_) => 2,
            KeyTarget::Contract(_) => 3,
        }
    }

    fn id(&self) -> &[u8] {
        match self {
            KeyTarget::Worker => &[],
            KeyTarget::Cluster(c) => c.as_bytes(),
            KeyTarget::Contract(c) => c.as_bytes(),
        }
    }
}

/// Attestation evidence as covered by a signature: its kind and digests of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvidenceDigest {
    /// The proto `AttestationKind` number.
    pub kind: u8,
    /// SHA-256 of the evidence bytes.
    pub evidence: [u8; 32],
    /// SHA-256 of the collateral bytes (of the empty string when none).
    pub collateral: [u8; 32],
}

impl EvidenceDigest {
    /// Digests evidence and collateral.
    pub fn new(kind: u8, evidence: &[u8], collateral: &[u8]) -> Self {
        Self {
            kind,
            evidence: Sha256::digest(evidence).into(),
            collateral: Sha256::digest(collateral).into(),
        }
    }
}

fn put_evidence(enc: Canonical, e: &Option<EvidenceDigest>) -> Canonical {
    match e {
        None => enc.u64(0),
        Some(e) => enc
            .u64(1)
            .u64(u64::from(e.kind))
            .bytes(&e.evidence)
            .bytes(&e.collateral),
    }
}

/// A worker's key request, as signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRequest {
    /// What is asked for.
    pub target: KeyTarget,
    /// The Gatekeeper cluster.
    pub gatekeeper_id: GatekeeperId,
    /// The worker's sr25519 key.
    pub worker: Sr25519PublicKey,
    /// Where the secret is sealed to.
    pub recipient: X25519PublicKey,
    /// Requested epoch; `None` = current.
    pub epoch: Option<u64>,
    /// 32 bytes of client randomness.
    pub nonce: [u8; 32],
    /// Client time, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Attestation evidence, if sent.
    pub evidence: Option<EvidenceDigest>,
}

impl KeyRequest {
    /// The canonical bytes the worker signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let enc = Canonical::new("gatekeeper/v1/key-request")
            .u64(u64::from(self.target.kind()))
            .bytes(self.target.id())
            .bytes(self.gatekeeper_id.as_bytes())
            .bytes(self.worker.as_bytes())
            .bytes(self.recipient.as_bytes())
            .opt_u64(self.epoch)
            .bytes(&self.nonce)
            .u64(self.timestamp_ms);
        put_evidence(enc, &self.evidence).finish()
    }

    /// SHA-256 of [`Self::signing_bytes`]; echoed in the response.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.signing_bytes()).into()
    }

    /// Signs as the worker.
    pub fn sign(&self, worker: &Sr25519Keypair) -> Signature {
        sign(worker, SigningPurpose::KeyRequest, &self.signing_bytes())
    }

    /// Verifies the worker's signature.
    pub fn verify(&self, signature: &Signature) -> Result<()> {
        verify(
            &self.worker,
            SigningPurpose::KeyRequest,
            &self.signing_bytes(),
            signature,
        )
    }
}

/// The cluster's key response, as signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyResponse {
    /// Proto `KeyKind` number.
    pub kind: u8,
    /// The epoch the key belongs to.
    pub epoch: u64,
    /// Worker key, cluster id or contract id.
    pub subject: Vec<u8>,
    /// The cluster of a cluster/contract key; empty for worker keys.
    pub cluster_id: Vec<u8>,
    /// Proto `DerivationScheme` number.
    pub scheme: u8,
    /// The derived public key.
    pub derived_public_key: Sr25519PublicKey,
    /// The sealed secret.
    pub sealed_secret: Envelope,
    /// SHA-256 of the request's signing bytes.
    pub request_digest: [u8; 32],
    /// Node time, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// Answering node.
    pub served_by: u64,
}

impl KeyResponse {
    /// The canonical bytes the cluster signing key signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        Canonical::new("gatekeeper/v1/key-response")
            .u64(u64::from(self.kind))
            .u64(self.epoch)
            .bytes(&self.subject)
            .bytes(&self.cluster_id)
            .u64(u64::from(self.scheme))
            .bytes(self.derived_public_key.as_bytes())
            .u64(u64::from(self.sealed_secret.version))
            .bytes(&self.sealed_secret.encapped_key)
            .bytes(&self.sealed_secret.ciphertext)
            .bytes(&self.request_digest)
            .u64(self.issued_at_ms)
            .u64(self.served_by)
            .finish()
    }

    /// Signs with the epoch's cluster signing key.
    pub fn sign(&self, cluster_signing: &Sr25519Keypair) -> Signature {
        sign(
            cluster_signing,
            SigningPurpose::KeyResponse,
            &self.signing_bytes(),
        )
    }

    /// Verifies against the epoch's cluster signing public key.
    pub fn verify(&self, cluster_signing: &Sr25519PublicKey, signature: &Signature) -> Result<()> {
        verify(
            cluster_signing,
            SigningPurpose::KeyResponse,
            &self.signing_bytes(),
            signature,
        )
    }
}

/// A node's FetchShare request, as signed by its enclave identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareRequest {
    /// The Gatekeeper cluster.
    pub gatekeeper_id: GatekeeperId,
    /// The requesting node.
    pub requester_node_id: u64,
    /// Epoch wanted.
    pub epoch: u64,
    /// Dealing generation wanted.
    pub generation: u64,
    /// Requester's enclave HPKE key.
    pub requester_hpke: X25519PublicKey,
    /// 32 bytes of randomness.
    pub nonce: [u8; 32],
    /// Requester time, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Requester's attestation evidence.
    pub evidence: Option<EvidenceDigest>,
}

impl ShareRequest {
    /// The canonical bytes the requester signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let enc = Canonical::new("gatekeeper/v1/share-request")
            .bytes(self.gatekeeper_id.as_bytes())
            .u64(self.requester_node_id)
            .u64(self.epoch)
            .u64(self.generation)
            .bytes(self.requester_hpke.as_bytes())
            .bytes(&self.nonce)
            .u64(self.timestamp_ms);
        put_evidence(enc, &self.evidence).finish()
    }

    /// SHA-256 of [`Self::signing_bytes`].
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.signing_bytes()).into()
    }
}

/// A node's FetchShare response, as signed by its enclave identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareResponse {
    /// The answering node.
    pub responder_node_id: u64,
    /// Epoch.
    pub epoch: u64,
    /// Dealing generation.
    pub generation: u64,
    /// Share index.
    pub share_index: u8,
    /// The sealed share.
    pub sealed_share: Envelope,
    /// SHA-256 of the request's signing bytes.
    pub request_digest: [u8; 32],
}

impl ShareResponse {
    /// The canonical bytes the responder signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        Canonical::new("gatekeeper/v1/share-response")
            .u64(self.responder_node_id)
            .u64(self.epoch)
            .u64(self.generation)
            .u64(u64::from(self.share_index))
            .u64(u64::from(self.sealed_share.version))
            .bytes(&self.sealed_share.encapped_key)
            .bytes(&self.sealed_share.ciphertext)
            .bytes(&self.request_digest)
            .finish()
    }
}

/// The 64 bytes of report data an attestation quote must carry for a request:
/// `SHA-512("gatekeeper/v1/report-data" || subject key || recipient X25519 key || nonce)`.
/// For key requests the subject is the worker's sr25519 key; for FetchShare the requester's
/// enclave identity key.
pub fn report_data(subject: &[u8; 32], recipient: &X25519PublicKey, nonce: &[u8; 32]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(b"gatekeeper/v1/report-data");
    h.update(subject);
    h.update(recipient.as_bytes());
    h.update(nonce);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(worker: &Sr25519Keypair) -> KeyRequest {
        KeyRequest {
            target: KeyTarget::Cluster(ClusterId([3; 32])),
            gatekeeper_id: GatekeeperId([1; 32]),
            worker: worker.public_key(),
            recipient: X25519PublicKey([4; 32]),
            epoch: None,
            nonce: [5; 32],
            timestamp_ms: 1_700_000_000_000,
            evidence: None,
        }
    }

    #[test]
    fn request_signature_verifies_and_binds_every_field() {
        let w = Sr25519Keypair::from_seed(&[2; 32]);
        let r = request(&w);
        let sig = r.sign(&w);
        r.verify(&sig).unwrap();

        let mut variants = vec![];
        let mut v = r.clone();
        v.target = KeyTarget::Contract(ContractId([3; 32]));
        variants.push(v);
        let mut v = r.clone();
        v.gatekeeper_id = GatekeeperId([0; 32]);
        variants.push(v);
        let mut v = r.clone();
        v.recipient = X25519PublicKey([6; 32]);
        variants.push(v);
        let mut v = r.clone();
        v.epoch = Some(0);
        variants.push(v);
        let mut v = r.clone();
        v.nonce[0] ^= 1;
        variants.push(v);
        let mut v = r.clone();
        v.timestamp_ms += 1;
        variants.push(v);
        let mut v = r.clone();
        v.evidence = Some(EvidenceDigest::new(3, b"q", b""));
        variants.push(v);
        for v in variants {
            assert_eq!(v.verify(&sig).unwrap_err(), Error::BadSignature, "{v:?}");
        }
    }

    #[test]
    fn a_signature_for_one_purpose_never_verifies_for_another() {
        let w = Sr25519Keypair::from_seed(&[2; 32]);
        let msg = request(&w).signing_bytes();
        let sig = sign(&w, SigningPurpose::KeyRequest, &msg);
        for p in [
            SigningPurpose::KeyResponse,
            SigningPurpose::ShareRequest,
            SigningPurpose::ShareResponse,
            SigningPurpose::DevAttestation,
        ] {
            assert_eq!(
                verify(&w.public_key(), p, &msg, &sig).unwrap_err(),
                Error::BadSignature
            );
        }
        verify(&w.public_key(), SigningPurpose::KeyRequest, &msg, &sig).unwrap();
    }

    #[test]
    fn wrong_key_and_garbage_signature_fail() {
        let w = Sr25519Keypair::from_seed(&[2; 32]);
        let other = Sr25519Keypair::from_seed(&[3; 32]);
        let r = request(&w);
        assert_eq!(r.verify(&r.sign(&other)).unwrap_err(), Error::BadSignature);
        assert_eq!(
            r.verify(&Signature([0; 64])).unwrap_err(),
            Error::BadSignature
        );
    }
}
