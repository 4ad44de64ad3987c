//! Who gets a key: every KeyService check of docs/api.md ("KeyService — checks, in order"), as
//! pure functions. The service (`service/key.rs`) only decodes, reads a [`RequestView`]
//! from the replicated state, calls [`parse`] and [`authorize`], then has the enclave derive and
//! seal the key and spends the nonce.
//!
//! | api.md row | where |
//! |---|---|
//! | 1 size | [`check_size`] |
//! | 2–3 shape, worker point | [`parse`] |
//! | 4–14, 16 | [`authorize`], in that order (16 only reads the nonce window) |
//! | 15 recipient not low-order | [`authorize`], after 14 |
//!
//! The nonce is recorded by the service only after the enclave sealed the key, so a refused
//! request never burns its nonce.

#[cfg(test)]
mod tests;

use crate::attestation::{check_evidence, check_kind, Policy};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::replay::{Freshness, ReplayError};
use gatekeeper_proto::v1 as pb;
use gatekeeper_raft::state::{
    Bytes32, ClusterRecord, EpochStatus, GatekeeperState, Scheme as StScheme, WorkerRecord,
    WorkerStatus,
};
use keyring::derive::Scheme;
use keyring::sign::{EvidenceDigest, KeyRequest, KeyTarget};
use keyring::{ClusterId, ContractId, GatekeeperId, Signature, Sr25519PublicKey, X25519PublicKey};

/// Row 1: the request's encoded size is within `limit`.
pub fn check_size(encoded_len: usize, limit: usize) -> ApiResult<()> {
    if encoded_len > limit {
        return Err(ApiError::new(
            ErrorCode::RequestTooLarge,
            format!("request exceeds {limit} bytes"),
        ));
    }
    Ok(())
}

fn field(name: &'static str) -> impl Fn(keyring::Error) -> ApiError {
    move |e| ApiError::field(name, &e)
}

/// How an enclave refusal to derive and seal reads to the worker: a low-order recipient (row 15,
/// when the pure check did not already catch it), a node that lost the epoch's master meanwhile
/// (row 7), anything else internal.
pub fn sealing_error(e: crate::enclave::EnclaveError) -> ApiError {
    use crate::enclave::EnclaveError;
    match e {
        EnclaveError::Keyring(keyring::Error::EnvelopeSealFailed(_)) => ApiError::new(
            ErrorCode::RecipientLowOrder,
            "recipient_public_key is a low-order point",
        ),
        EnclaveError::Sealed(e) => ApiError::new(
            ErrorCode::NodeSealed,
            format!("this node is sealed for epoch {e}"),
        ),
        other => ApiError::internal(other),
    }
}

/// A key request whose fields have their lengths and types.
#[derive(Clone, Debug)]
pub struct ParsedKeyRequest {
    /// The signed request (its `signing_bytes` are what the worker signed).
    pub request: KeyRequest,
    /// The worker's signature.
    pub signature: Signature,
    /// The attestation as sent.
    pub attestation: Option<pb::Attestation>,
    /// The requested kind.
    pub kind: pb::KeyKind,
}

/// Rows 2–3: the header is present, every field has its length, the id is present for cluster
/// and contract keys, the attestation kind is defined, and the worker key is a valid point.
pub fn parse(
    header: Option<pb::KeyRequestHeader>,
    target_id: Option<&[u8]>,
    kind: pb::KeyKind,
    signature: &[u8],
) -> ApiResult<ParsedKeyRequest> {
    let h =
        header.ok_or_else(|| ApiError::new(ErrorCode::InvalidArgument, "header is required"))?;
    let gatekeeper_id =
        GatekeeperId::from_slice(&h.gatekeeper_id).map_err(field("gatekeeper_id"))?;
    let recipient = X25519PublicKey::from_slice(&h.recipient_public_key)
        .map_err(field("recipient_public_key"))?;
    let nonce: [u8; 32] = h
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::new(ErrorCode::InvalidArgument, "nonce must be 32 bytes"))?;
    let signature = Signature::from_slice(signature).map_err(field("signature"))?;
    check_kind(&h.attestation)?;
    let target = match kind {
        pb::KeyKind::Worker => KeyTarget::Worker,
        pb::KeyKind::Cluster => KeyTarget::Cluster(
            ClusterId::from_slice(target_id.unwrap_or_default()).map_err(field("cluster_id"))?,
        ),
        pb::KeyKind::Contract => KeyTarget::Contract(
            ContractId::from_slice(target_id.unwrap_or_default()).map_err(field("contract_id"))?,
        ),
        pb::KeyKind::Unspecified => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "kind is unspecified",
            ))
        }
    };
    // Last, so every other row-2 check comes before row 3: the worker key's length, then its point.
    let worker =
        Sr25519PublicKey::from_slice(&h.worker_public_key).map_err(field("worker_public_key"))?;
    let evidence = h
        .attestation
        .as_ref()
        .map(|a| EvidenceDigest::new(a.kind as u8, &a.evidence, &a.collateral));
    Ok(ParsedKeyRequest {
        request: KeyRequest {
            target,
            gatekeeper_id,
            worker,
            recipient,
            epoch: h.epoch,
            nonce,
            timestamp_ms: h.timestamp_ms,
            evidence,
        },
        signature,
        attestation: h.attestation,
        kind,
    })
}

/// The parts of the replicated state one key request needs, copied out under the read lock
/// (cloning the whole state per request would cost O(registry size) on the hot path).
#[derive(Clone, Debug, Default)]
pub struct RequestView {
    /// This cluster's id, once initialised.
    pub gatekeeper_id: Option<Bytes32>,
    /// The requested epoch, or the current one; None when there is no active epoch yet.
    pub epoch: Option<u64>,
    /// That epoch's status, if it exists.
    pub epoch_status: Option<EpochStatus>,
    /// The worker's record, if registered.
    pub worker: Option<WorkerRecord>,
    /// For a contract key: the contract's cluster.
    pub contract_cluster: Option<Bytes32>,
    /// The cluster of a cluster key, or the contract's cluster.
    pub cluster: Option<ClusterRecord>,
}

impl RequestView {
    /// Copies what `request` needs out of `s`.
    pub fn of(s: &GatekeeperState, request: &KeyRequest) -> Self {
        let epoch = request.epoch.or_else(|| s.current_epoch());
        let contract_cluster = match request.target {
            KeyTarget::Contract(k) => s.contracts.get(&Bytes32(k.0)).copied(),
            _ => None,
        };
        let cluster_id = match request.target {
            KeyTarget::Cluster(c) => Some(Bytes32(c.0)),
            _ => contract_cluster,
        };
        RequestView {
            gatekeeper_id: s.gatekeeper_id,
            epoch,
            epoch_status: epoch.and_then(|e| s.epochs.get(&e)).map(|e| e.status),
            worker: s.workers.get(&Bytes32(*request.worker.as_bytes())).cloned(),
            contract_cluster,
            cluster: cluster_id.and_then(|c| s.clusters.get(&c)).cloned(),
        }
    }
}

/// A request that passed every check: what to derive, for whom, in which epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    /// The epoch whose master derives the key.
    pub epoch: u64,
    /// The derived key's subject: the worker key, cluster id or contract id.
    pub subject: Vec<u8>,
    /// The cluster (cluster and contract keys) and its derivation scheme.
    pub cluster: Option<(ClusterId, Scheme)>,
    /// The scheme as sent on the wire.
    pub scheme: pb::DerivationScheme,
}

/// The inputs [`authorize`] reads besides the request: the replicated-state view, the worker
/// policy, which epochs this node's enclave holds, the replay facts of the request's nonce, and
/// `now_ms`. All values: `authorize` reads nothing else.
pub struct Context<'a> {
    /// What the replicated state says about this request.
    pub view: &'a RequestView,
    /// The worker attestation policy.
    pub policy: &'a Policy,
    /// Whether this node holds an epoch's master secret.
    pub holds_master: &'a dyn Fn(u64) -> bool,
    /// The replay window and whether the nonce was already used.
    pub freshness: Freshness,
    /// This node's clock.
    pub now_ms: u64,
}

/// Rows 4–16 of docs/api.md, in order. Pure: nothing is recorded.
pub fn authorize(r: &ParsedKeyRequest, cx: &Context<'_>) -> ApiResult<Authorized> {
    let req = &r.request;
    let view = cx.view;
    let worker = req.worker;
    // 4. This cluster.
    if view.gatekeeper_id != Some(Bytes32(req.gatekeeper_id.0)) {
        return Err(ApiError::new(
            ErrorCode::WrongGatekeeper,
            format!(
                "gatekeeper_id is not this cluster's ({})",
                view.gatekeeper_id
                    .map(|g| hex::encode(g.0))
                    .unwrap_or_else(|| "this node knows no initialised cluster yet".into())
            ),
        ));
    }
    // 5. The epoch exists (6: and is active).
    let epoch = view
        .epoch
        .ok_or_else(|| ApiError::new(ErrorCode::NoActiveEpoch, "no active epoch yet"))?;
    let status = view
        .epoch_status
        .ok_or_else(|| ApiError::new(ErrorCode::EpochNotFound, format!("no epoch {epoch}")))?;
    if status != EpochStatus::Active {
        return Err(ApiError::new(
            ErrorCode::EpochNotActive,
            format!("epoch {epoch} is {status:?}"),
        ));
    }
    // 7. Unsealed.
    if !(cx.holds_master)(epoch) {
        return Err(ApiError::new(
            ErrorCode::NodeSealed,
            format!("this node is sealed for epoch {epoch}"),
        ));
    }
    // 8. Time window.
    if let Err(ReplayError::Skew(s)) = cx.freshness.check_time(req.timestamp_ms, cx.now_ms) {
        return Err(ApiError::new(
            ErrorCode::TimestampSkew,
            format!("timestamp_ms is {s} ms from this node's clock"),
        ));
    }
    // 9. Signature.
    req.verify(&r.signature)
        .map_err(|_| ApiError::new(ErrorCode::BadSignature, "request signature does not verify"))?;
    // 10-11. Registry.
    let w = view.worker.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::WorkerNotRegistered,
            format!("worker {worker} is not registered"),
        )
    })?;
    let inactive = |why: String| Err(ApiError::new(ErrorCode::WorkerNotActive, why));
    match &w.status {
        WorkerStatus::Active => {}
        WorkerStatus::Slashed { block, reason } => {
            return inactive(format!(
                "worker {worker} was slashed at block {block}: {reason}"
            ))
        }
        WorkerStatus::Removed { block } => {
            return inactive(format!("worker {worker} was deregistered at block {block}"))
        }
        WorkerStatus::Unresponsive { block } => {
            return inactive(format!(
                "worker {worker} was reported unresponsive at block {block}"
            ))
        }
    }
    // 12. Attestation.
    check_evidence(
        cx.policy,
        &r.attestation,
        &keyring::sign::report_data(worker.as_bytes(), &req.recipient, &req.nonce),
        cx.now_ms / 1000,
    )?;
    // 13. Cluster / contract exists.
    let (cluster, subject) = match req.target {
        KeyTarget::Worker => (None, worker.as_bytes().to_vec()),
        KeyTarget::Cluster(c) => {
            let rec = view.cluster.as_ref().ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ClusterNotFound,
                    format!("cluster {c} does not exist"),
                )
            })?;
            (Some((c, rec.scheme)), c.0.to_vec())
        }
        KeyTarget::Contract(k) => {
            let c = view.contract_cluster.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ContractNotFound,
                    format!("contract {k} does not exist"),
                )
            })?;
            let rec = view.cluster.as_ref().ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ClusterNotFound,
                    format!("cluster of contract {k} does not exist"),
                )
            })?;
            (Some((ClusterId(c.0), rec.scheme)), k.0.to_vec())
        }
    };
    // 14. Assigned to that cluster.
    if let Some((c, _)) = cluster {
        if !w.clusters.contains(&Bytes32(c.0)) {
            return Err(ApiError::new(
                ErrorCode::WorkerNotInCluster,
                format!("worker {worker} is not assigned to cluster {c}"),
            ));
        }
    }
    // 15. The recipient key can be sealed to.
    if req.recipient.is_low_order() {
        return Err(ApiError::new(
            ErrorCode::RecipientLowOrder,
            "recipient_public_key is a low-order point",
        ));
    }
    // 16. Nonce unseen (the service records it after sealing).
    if cx.freshness.nonce_seen {
        return Err(ApiError::new(
            ErrorCode::NonceReplayed,
            "nonce was already used",
        ));
    }
    let (scheme, wire) = match (r.kind, cluster) {
        (pb::KeyKind::Worker, _) | (_, None) => (Scheme::Native, pb::DerivationScheme::Native),
        (_, Some((_, StScheme::Native))) => (Scheme::Native, pb::DerivationScheme::Native),
        (_, Some((_, StScheme::Phala))) => (Scheme::Phala, pb::DerivationScheme::Phala),
    };
    Ok(Authorized {
        epoch,
        subject,
        cluster: cluster.map(|(c, _)| (c, scheme)),
        scheme: wire,
    })
}
