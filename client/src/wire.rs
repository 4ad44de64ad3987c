//! The pure half of the SDK: building a signed key request and verifying a response, with no
//! IO, so every step is tested (and frozen in `tests/vectors.json`) without a server. The steps
//! and byte layouts are specified in docs/api.md, "Writing a client".

use gatekeeper_proto::v1 as pb;
use keyring::envelope::{self, subject, Envelope, EnvelopeContext, Purpose};
use keyring::sign::{EvidenceDigest, KeyRequest, KeyResponse, KeyTarget};
use keyring::{GatekeeperId, Signature, Sr25519Keypair, Sr25519PublicKey, X25519SecretKey};

/// A signed key request: what was signed, and the messages that carry it.
#[derive(Clone, Debug)]
pub struct SignedRequest {
    /// The request as signed (its [`KeyRequest::digest`] comes back in the response).
    pub request: KeyRequest,
    /// The header of the gRPC request.
    pub header: pb::KeyRequestHeader,
    /// The worker's 64-byte signature.
    pub signature: Vec<u8>,
}

/// One of the three KeyService request messages.
#[derive(Clone, Debug, PartialEq)]
pub enum WireRequest {
    /// `GetWorkerKey`.
    Worker(pb::GetWorkerKeyRequest),
    /// `GetClusterKey`.
    Cluster(pb::GetClusterKeyRequest),
    /// `GetContractKey`.
    Contract(pb::GetContractKeyRequest),
}

impl WireRequest {
    /// The protobuf encoding, as sent.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        use prost::Message;
        match self {
            WireRequest::Worker(m) => m.encode_to_vec(),
            WireRequest::Cluster(m) => m.encode_to_vec(),
            WireRequest::Contract(m) => m.encode_to_vec(),
        }
    }
}

/// The inputs of a request that the client chooses (fresh for every request in practice).
#[derive(Clone, Debug)]
pub struct RequestInputs {
    /// What is asked for.
    pub target: KeyTarget,
    /// `ClusterInfo.gatekeeper_id`.
    pub gatekeeper_id: GatekeeperId,
    /// Epoch; `None` asks for the current one.
    pub epoch: Option<u64>,
    /// 32 random bytes.
    pub nonce: [u8; 32],
    /// Client time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Attestation evidence over [`keyring::sign::report_data`] of this request.
    pub attestation: Option<pb::Attestation>,
}

/// Builds and signs a key request as `worker`, sealed to `recipient`.
pub fn sign_request(
    worker: &Sr25519Keypair,
    recipient: &keyring::X25519PublicKey,
    inputs: RequestInputs,
) -> SignedRequest {
    let request = KeyRequest {
        target: inputs.target,
        gatekeeper_id: inputs.gatekeeper_id,
        worker: worker.public_key(),
        recipient: *recipient,
        epoch: inputs.epoch,
        nonce: inputs.nonce,
        timestamp_ms: inputs.timestamp_ms,
        evidence: inputs
            .attestation
            .as_ref()
            .map(|a| EvidenceDigest::new(a.kind as u8, &a.evidence, &a.collateral)),
    };
    let signature = request.sign(worker).0.to_vec();
    let header = pb::KeyRequestHeader {
        gatekeeper_id: inputs.gatekeeper_id.0.to_vec(),
        worker_public_key: request.worker.as_bytes().to_vec(),
        recipient_public_key: recipient.as_bytes().to_vec(),
        epoch: inputs.epoch,
        nonce: inputs.nonce.to_vec(),
        timestamp_ms: inputs.timestamp_ms,
        attestation: inputs.attestation,
    };
    SignedRequest {
        request,
        header,
        signature,
    }
}

impl SignedRequest {
    /// The gRPC message for this request's target.
    pub fn wire(&self) -> WireRequest {
        let header = Some(self.header.clone());
        let signature = self.signature.clone();
        match self.request.target {
            KeyTarget::Worker => WireRequest::Worker(pb::GetWorkerKeyRequest { header, signature }),
            KeyTarget::Cluster(c) => WireRequest::Cluster(pb::GetClusterKeyRequest {
                header,
                cluster_id: c.0.to_vec(),
                signature,
            }),
            KeyTarget::Contract(k) => WireRequest::Contract(pb::GetContractKeyRequest {
                header,
                contract_id: k.0.to_vec(),
                signature,
            }),
        }
    }
}

/// A response that passed every check of [`verify_response`].
#[derive(Debug)]
pub struct VerifiedKey {
    /// The epoch the key belongs to.
    pub epoch: u64,
    /// The derived keypair (secret).
    pub keypair: Sr25519Keypair,
    /// The derivation scheme the cluster reported (proto `DerivationScheme` number).
    pub scheme: i32,
    /// The node that served it.
    pub served_by: u64,
}

/// The cluster signing key of `epoch` in `info`, if it lists that epoch.
pub fn signing_key_for(info: &pb::ClusterInfo, epoch: u64) -> Option<Sr25519PublicKey> {
    info.epochs
        .iter()
        .find(|e| e.epoch == epoch)
        .and_then(|e| Sr25519PublicKey::from_slice(&e.cluster_signing_public_key).ok())
}

/// The subject a request's key is derived for: the worker key, or the cluster or contract id.
fn subject_of(request: &KeyRequest) -> &[u8] {
    match request.target {
        KeyTarget::Worker => request.worker.as_bytes(),
        KeyTarget::Cluster(ref c) => c.as_bytes(),
        KeyTarget::Contract(ref k) => k.as_bytes(),
    }
}

/// The checks of a response that need no key (docs/api.md, "Writing a client", step 4, checks
/// 1 to 3 without the cluster description): the epoch asked for, the kind and subject asked
/// for, the cluster id and scheme that kind allows, and `request_digest`. Returns the digest.
/// Run before anything is done on a response's say-so (such as fetching a new epoch's key).
pub fn check_binding(request: &KeyRequest, r: &pb::KeyResponse) -> Result<[u8; 32], String> {
    if let Some(e) = request.epoch {
        if r.epoch != e {
            return Err(format!("asked for epoch {e}, got {}", r.epoch));
        }
    }
    let subject_id = subject_of(request);
    if r.kind != i32::from(request.target.kind()) || r.subject != subject_id {
        return Err("the response is for another key than the one asked for".into());
    }
    // A worker key has no cluster and is always native; a cluster key names its own cluster.
    match request.target {
        KeyTarget::Worker if !r.cluster_id.is_empty() => {
            return Err("a worker key's response names a cluster".into())
        }
        KeyTarget::Worker if r.scheme != 1 => {
            return Err(format!("a worker key's scheme is {}, not native", r.scheme))
        }
        KeyTarget::Cluster(ref c) if r.cluster_id != c.as_bytes() => {
            return Err("a cluster key's response names another cluster".into())
        }
        KeyTarget::Contract(_) if r.cluster_id.len() != 32 => {
            return Err("a contract key's response names no cluster".into())
        }
        _ => {}
    }
    if !(1..=2).contains(&r.scheme) {
        return Err(format!("unknown derivation scheme {}", r.scheme));
    }
    let digest: [u8; 32] = r
        .request_digest
        .as_slice()
        .try_into()
        .map_err(|_| "request_digest is not 32 bytes".to_string())?;
    if digest != request.digest() {
        return Err("the response answers another request (request_digest)".into());
    }
    Ok(digest)
}

/// Verifies a KeyResponse to `request`, in the order docs/api.md gives: the epoch asked for,
/// the kind and subject asked for, the cluster id and scheme that kind allows,
/// `request_digest`, the signature by `signer` (the cluster signing key of the response's
/// epoch), the envelope opened with `recipient` in its context, and the opened seed against
/// `derived_public_key`. The error says which check failed; a response that fails any check
/// must not be used at all.
pub fn verify_response(
    request: &KeyRequest,
    recipient: &X25519SecretKey,
    signer: &Sr25519PublicKey,
    r: &pb::KeyResponse,
) -> Result<VerifiedKey, String> {
    let digest = check_binding(request, r)?;
    let subject_id = subject_of(request);
    let env_pb = r.sealed_secret.as_ref().ok_or("no sealed_secret")?;
    let env = Envelope::from_parts(
        env_pb.version,
        &env_pb.encapped_key,
        env_pb.ciphertext.clone(),
    )
    .map_err(|e| format!("sealed_secret: {e}"))?;
    let derived = Sr25519PublicKey::from_slice(&r.derived_public_key)
        .map_err(|e| format!("derived_public_key: {e}"))?;
    let scheme = u8::try_from(r.scheme).map_err(|_| "scheme out of range".to_string())?;
    let body = KeyResponse {
        kind: request.target.kind(),
        epoch: r.epoch,
        subject: r.subject.clone(),
        cluster_id: r.cluster_id.clone(),
        scheme,
        derived_public_key: derived,
        sealed_secret: env.clone(),
        request_digest: digest,
        issued_at_ms: r.issued_at_ms,
        served_by: r.served_by,
    };
    let sig = Signature::from_slice(&r.signature).map_err(|e| format!("signature: {e}"))?;
    body.verify(signer, &sig)
        .map_err(|_| format!("the cluster signature of epoch {} does not verify", r.epoch))?;
    let ctx = EnvelopeContext {
        purpose: Purpose::KeyDelivery,
        gatekeeper_id: request.gatekeeper_id,
        epoch: r.epoch,
        subject: subject::key_delivery(
            request.target.kind(),
            subject_id,
            request.worker.as_bytes(),
        ),
        recipient: recipient.public_key(),
    };
    let seed = envelope::open(&ctx, recipient, &env)
        .map_err(|e| format!("sealed_secret does not open: {e}"))?;
    let seed: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
        seed.as_slice()
            .try_into()
            .map_err(|_| "the sealed seed is not 32 bytes".to_string())?,
    );
    let keypair = Sr25519Keypair::from_seed(&seed);
    if keypair.public_key() != derived {
        return Err("the opened seed does not match derived_public_key".into());
    }
    Ok(VerifiedKey {
        epoch: r.epoch,
        keypair,
        scheme: r.scheme,
        served_by: r.served_by,
    })
}

/// Whether a refusal from one node is worth trying elsewhere or later: the node could not
/// serve now (no leader, sealed, busy, timed out, not reachable through the transport), as
/// opposed to a verdict every node would give (not registered, slashed, bad signature, …).
/// `error_code` is the `gatekeeper-error-code` metadata, absent on statuses the transport made.
///
/// Deliberately final: `WORKER_NOT_REGISTERED`, `EPOCH_NOT_FOUND` and the like. Nodes answer
/// key requests from state read linearizably (through the leader), so every node gives the same
/// verdict; only during a leader loss (bounded stale reads, design.md §10.4) can a lagging node
/// miss a registration or rotation of the last moments, and a caller then simply asks again.
pub fn retryable(code: tonic::Code, error_code: Option<&str>) -> bool {
    use tonic::Code;
    match (code, error_code) {
        (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, _) => true,
        (Code::FailedPrecondition, Some("NODE_SEALED" | "NO_ACTIVE_EPOCH")) => true,
        (Code::ResourceExhausted, Some("SOURCE_BUSY")) => true,
        // A status with no code: an error between the client and the handler (a proxy, a reset
        // stream), not the cluster's verdict.
        (Code::Unknown, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn only_refusals_another_node_or_a_later_try_could_change_are_retried() {
        for (code, ec) in [
            (Code::Unavailable, Some("NO_LEADER")),
            (Code::Unavailable, Some("STALE_READ")),
            (Code::Unavailable, None),
            (Code::DeadlineExceeded, Some("TIMEOUT")),
            (Code::FailedPrecondition, Some("NODE_SEALED")),
            (Code::ResourceExhausted, Some("SOURCE_BUSY")),
            (Code::Unknown, None),
        ] {
            assert!(retryable(code, ec), "{code:?} {ec:?}");
        }
        for (code, ec) in [
            (Code::PermissionDenied, Some("WORKER_NOT_ACTIVE")),
            (Code::NotFound, Some("WORKER_NOT_REGISTERED")),
            (Code::Unauthenticated, Some("BAD_SIGNATURE")),
            (Code::InvalidArgument, Some("TIMESTAMP_SKEW")),
            (Code::FailedPrecondition, Some("EPOCH_NOT_ACTIVE")),
            (Code::ResourceExhausted, Some("REQUEST_TOO_LARGE")),
            (Code::AlreadyExists, Some("NONCE_REPLAYED")),
            (Code::Internal, Some("INTERNAL")),
            (Code::Unknown, Some("X")),
        ] {
            assert!(!retryable(code, ec), "{code:?} {ec:?}");
        }
    }
}
