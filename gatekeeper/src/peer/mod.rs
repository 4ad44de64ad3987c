//! Who gets a share: the pure authorization of `PeerService.FetchShare` requests
//! ([`parse`] then [`authorize`], in the order of docs/api.md "PeerService.FetchShare"), and the
//! FetchShare client a sealed node uses to gather shares ([`client`]).
//!
//! The service (`service/peer.rs`) reads the state and membership, calls these, then asks
//! the enclave for the share and spends the nonce — the only steps with effects.

pub mod client;

#[cfg(test)]
mod tests;

use crate::attestation::{check_evidence, check_kind, digest_of, Policy};
use crate::epochs::dealing_ctx;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::replay::{Freshness, ReplayError};
use gatekeeper_proto::v1 as pb;
use gatekeeper_raft::state::{Bytes32, EpochStatus, GatekeeperState};
use keyring::shares::DealingContext;
use keyring::sign::{verify, ShareRequest, SigningPurpose};
use keyring::{GatekeeperId, Signature, Sr25519PublicKey, X25519PublicKey};

/// A FetchShare request whose fields have their lengths.
#[derive(Clone, Debug)]
pub struct ParsedShareRequest {
    /// The signed body.
    pub body: ShareRequest,
    /// The requester's signature over the body.
    pub signature: Signature,
    /// Fresh evidence binding the requester's keys and the nonce.
    pub evidence: Option<pb::Attestation>,
}

/// Check 1: every field has its length and the attestation kind is defined.
pub fn parse(r: pb::FetchShareRequest) -> ApiResult<ParsedShareRequest> {
    let gatekeeper_id = GatekeeperId::from_slice(&r.gatekeeper_id)
        .map_err(|e| ApiError::field("gatekeeper_id", &e))?;
    let requester_hpke = X25519PublicKey::from_slice(&r.requester_hpke_public_key)
        .map_err(|e| ApiError::field("requester_hpke_public_key", &e))?;
    let nonce: [u8; 32] = r
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::new(ErrorCode::InvalidArgument, "nonce must be 32 bytes"))?;
    let signature =
        Signature::from_slice(&r.signature).map_err(|e| ApiError::field("signature", &e))?;
    check_kind(&r.evidence)?;
    Ok(ParsedShareRequest {
        body: ShareRequest {
            gatekeeper_id,
            requester_node_id: r.requester_node_id,
            epoch: r.epoch,
            generation: r.generation,
            requester_hpke,
            nonce,
            timestamp_ms: r.timestamp_ms,
            evidence: digest_of(&r.evidence),
        },
        signature,
        evidence: r.evidence,
    })
}

/// What an authorized request may receive: the share of this dealing, sealed to `hpke`.
#[derive(Clone, Debug)]
pub struct AuthorizedShare {
    /// The dealing whose share is served.
    pub ctx: DealingContext,
    /// The requester.
    pub requester: u64,
    /// Its registered HPKE key (the share is sealed to it).
    pub hpke: X25519PublicKey,
}

/// Every check of a parsed FetchShare request against a linearizable view of the state, the
/// current Raft membership (`members`), the member attestation policy, the nonce window and
/// `now_ms`, in the order of docs/api.md. Pure: nothing is recorded (the service spends the nonce
/// only after the enclave produced the share).
pub fn authorize(
    state: &GatekeeperState,
    members: &[u64],
    r: &ParsedShareRequest,
    policy: &Policy,
    freshness: Freshness,
    now_ms: u64,
) -> ApiResult<AuthorizedShare> {
    let b = &r.body;
    if state.gatekeeper_id != Some(Bytes32(b.gatekeeper_id.0)) {
        return Err(ApiError::new(
            ErrorCode::WrongGatekeeper,
            "gatekeeper_id is not this cluster's",
        ));
    }
    if !members.contains(&b.requester_node_id) {
        return Err(ApiError::new(
            ErrorCode::NotAMember,
            format!(
                "node {} is not in the current membership",
                b.requester_node_id
            ),
        ));
    }
    let member = state.members.get(&b.requester_node_id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotAMember,
            format!("node {} has no member record", b.requester_node_id),
        )
    })?;
    if member.hpke_public_key.0 != *b.requester_hpke.as_bytes() {
        return Err(ApiError::new(
            ErrorCode::MemberKeyMismatch,
            "requester_hpke_public_key is not the member's registered key",
        ));
    }
    let identity = Sr25519PublicKey::from_slice(&member.identity_public_key.0).map_err(|_| {
        ApiError::new(
            ErrorCode::MemberKeyMismatch,
            "the member record has no valid identity key",
        )
    })?;
    verify(
        &identity,
        SigningPurpose::ShareRequest,
        &b.signing_bytes(),
        &r.signature,
    )
    .map_err(|_| {
        ApiError::new(
            ErrorCode::BadSignature,
            "share request signature does not verify",
        )
    })?;
    if let Err(ReplayError::Skew(s)) = freshness.check_time(b.timestamp_ms, now_ms) {
        return Err(ApiError::new(
            ErrorCode::TimestampSkew,
            format!("timestamp_ms is {s} ms from this node's clock"),
        ));
    }
    if freshness.nonce_seen {
        return Err(ApiError::new(ErrorCode::NonceReplayed, "nonce replayed"));
    }
    check_evidence(
        policy,
        &r.evidence,
        &keyring::sign::report_data(identity.as_bytes(), &b.requester_hpke, &b.nonce),
        now_ms / 1000,
    )?;
    let epoch = state
        .epochs
        .get(&b.epoch)
        .ok_or_else(|| ApiError::new(ErrorCode::EpochNotFound, format!("no epoch {}", b.epoch)))?;
    if epoch.status != EpochStatus::Active {
        return Err(ApiError::new(
            ErrorCode::EpochNotActive,
            format!(
                "epoch {} is {:?}: its shares are not served",
                b.epoch, epoch.status
            ),
        ));
    }
    if epoch.dealing.generation != b.generation {
        return Err(ApiError::new(
            ErrorCode::GenerationMismatch,
            format!(
                "epoch {} is at generation {}, not {}",
                b.epoch, epoch.dealing.generation, b.generation
            ),
        ));
    }
    let ctx = dealing_ctx(&Bytes32(b.gatekeeper_id.0), epoch).map_err(ApiError::internal)?;
    Ok(AuthorizedShare {
        ctx,
        requester: b.requester_node_id,
        hpke: b.requester_hpke,
    })
}

/// How an enclave refusal to hand out its share reads to the requester: this node holds no opened
/// share of that dealing (it is sealed itself, or the dealing is not one it holds).
pub fn share_error(e: crate::enclave::EnclaveError) -> ApiError {
    ApiError::new(ErrorCode::NoShareHeld, e.to_string())
}
