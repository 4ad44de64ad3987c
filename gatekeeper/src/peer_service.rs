//! `gatekeeper.v1.PeerService`: share exchange for unsealing (docs/api.md, "FetchShare").

use crate::attestation::{EvidenceKind, Policy};
use crate::enclave::Enclave;
use crate::keeper::dealing_ctx;
use crate::replay::{NonceCache, ReplayError};
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::peer_service_client::PeerServiceClient;
use gatekeeper_proto::v1::peer_service_server::PeerService;
use gatekeeper_raft::now_ms;
use gatekeeper_raft::replica::Replica;
use gatekeeper_raft::state::{Bytes32, EpochRecord};
use keyring::envelope::{Envelope, ENVELOPE_VERSION};
use keyring::sign::{verify, EvidenceDigest, ShareRequest, ShareResponse, SigningPurpose};
use keyring::{GatekeeperId, Signature, Sr25519PublicKey, X25519PublicKey};
use rand_core::RngCore;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

fn arg<T>(r: keyring::Result<T>, field: &str) -> Result<T, Status> {
    r.map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// Maps a proto attestation to the policy's input.
pub fn evidence_of(a: &Option<pb::Attestation>) -> Option<(EvidenceKind, Vec<u8>, Vec<u8>)> {
    let a = a.as_ref()?;
    let kind = match pb::AttestationKind::try_from(a.kind).ok()? {
        pb::AttestationKind::SgxDcap => EvidenceKind::SgxDcap,
        pb::AttestationKind::TdxDcap => EvidenceKind::TdxDcap,
        pb::AttestationKind::Dev => EvidenceKind::Dev,
        pb::AttestationKind::Unspecified => return None,
    };
    Some((kind, a.evidence.clone(), a.collateral.clone()))
}

/// Refuses an attestation whose kind is not one of the defined `AttestationKind`s (so the
/// signed digest, which encodes the kind as one byte, binds it exactly).
pub fn check_kind(a: &Option<pb::Attestation>) -> Result<(), Status> {
    match a {
        Some(a) if !matches!(pb::AttestationKind::try_from(a.kind), Ok(k) if k != pb::AttestationKind::Unspecified) => {
            Err(Status::invalid_argument(format!(
                "attestation.kind {} is not a defined AttestationKind",
                a.kind
            )))
        }
        _ => Ok(()),
    }
}

/// Verifies evidence against a policy, mapping failures to PERMISSION_DENIED.
pub fn check_evidence(
    policy: &Policy,
    a: &Option<pb::Attestation>,
    report_data: &[u8; 64],
) -> Result<(), Status> {
    let ev = evidence_of(a);
    let collateral = match &ev {
        Some((_, _, c)) if !c.is_empty() => Some(
            serde_json::from_slice::<dcap_qvl::QuoteCollateralV3>(c)
                .map_err(|e| Status::invalid_argument(format!("attestation.collateral: {e}")))?,
        ),
        _ => None,
    };
    policy
        .verify(
            ev.as_ref()
                .map(|(k, e, _)| (*k, e.as_slice(), collateral.as_ref())),
            report_data,
            now_ms() / 1000,
        )
        .map(|_| ())
        .map_err(|e| Status::permission_denied(format!("attestation rejected: {e}")))
}

fn digest_of(a: &Option<pb::Attestation>) -> Option<EvidenceDigest> {
    a.as_ref()
        .map(|a| EvidenceDigest::new(a.kind as u8, &a.evidence, &a.collateral))
}

/// The PeerService implementation.
#[derive(Clone)]
pub struct PeerServer {
    /// The replica (membership and dealings).
    pub replica: Replica,
    /// This node's enclave.
    pub enclave: Arc<dyn Enclave>,
    /// Attestation policy for members.
    pub policy: Policy,
    /// Replay window.
    pub nonces: Arc<NonceCache>,
}

#[tonic::async_trait]
impl PeerService for PeerServer {
    async fn fetch_share(
        &self,
        request: Request<pb::FetchShareRequest>,
    ) -> Result<Response<pb::FetchShareResponse>, Status> {
        let r = request.into_inner();
        let gk = GatekeeperId(
            arg(
                keyring::GatekeeperId::from_slice(&r.gatekeeper_id),
                "gatekeeper_id",
            )?
            .0,
        );
        let hpke = arg(
            X25519PublicKey::from_slice(&r.requester_hpke_public_key),
            "requester_hpke_public_key",
        )?;
        let nonce: [u8; 32] = r
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("nonce must be 32 bytes"))?;
        let sig = arg(Signature::from_slice(&r.signature), "signature")?;
        check_kind(&r.evidence)?;
        // Authorise against a linearizable view: a lagging node must not serve a share to a node
        // that was already removed, nor a generation that was already re-dealt.
        let state = self
            .replica
            .read_linearizable(|a| a.state.clone())
            .await
            .map_err(crate::admin_service::to_status)?;
        if state.gatekeeper_id != Some(Bytes32(gk.0)) {
            return Err(Status::invalid_argument(
                "gatekeeper_id is not this cluster's",
            ));
        }
        if !self
            .replica
            .status()
            .members
            .iter()
            .any(|m| m.id == r.requester_node_id)
        {
            return Err(Status::permission_denied(format!(
                "node {} is not in the current membership",
                r.requester_node_id
            )));
        }
        let member = state.members.get(&r.requester_node_id).ok_or_else(|| {
            Status::permission_denied(format!("node {} is not a member", r.requester_node_id))
        })?;
        if member.hpke_public_key.0 != *hpke.as_bytes() {
            return Err(Status::permission_denied(
                "requester_hpke_public_key is not the member's registered key",
            ));
        }
        let identity = Sr25519PublicKey::from_slice(&member.identity_public_key.0)
            .map_err(|_| Status::permission_denied("member has no valid identity key"))?;
        let body = ShareRequest {
            gatekeeper_id: gk,
            requester_node_id: r.requester_node_id,
            epoch: r.epoch,
            generation: r.generation,
            requester_hpke: hpke,
            nonce,
            timestamp_ms: r.timestamp_ms,
            evidence: digest_of(&r.evidence),
        };
        verify(
            &identity,
            SigningPurpose::ShareRequest,
            &body.signing_bytes(),
            &sig,
        )
        .map_err(|_| Status::unauthenticated("share request signature does not verify"))?;
        let now = now_ms();
        self.nonces
            .check_time(r.timestamp_ms, now)
            .map_err(|e| match e {
                ReplayError::Skew(s) => {
                    Status::invalid_argument(format!("timestamp is {s} ms off"))
                }
                ReplayError::Replayed => Status::already_exists("nonce replayed"),
            })?;
        check_evidence(
            &self.policy,
            &r.evidence,
            &keyring::sign::report_data(identity.as_bytes(), &hpke, &nonce),
        )?;
        let epoch = state
            .epochs
            .get(&r.epoch)
            .ok_or_else(|| Status::not_found(format!("no epoch {}", r.epoch)))?;
        if epoch.status != gatekeeper_raft::state::EpochStatus::Active {
            return Err(Status::failed_precondition(format!(
                "epoch {} is {:?}: its shares are not served",
                r.epoch, epoch.status
            )));
        }
        if epoch.dealing.generation != r.generation {
            return Err(Status::not_found(format!(
                "epoch {} is at generation {}, not {}",
                r.epoch, epoch.dealing.generation, r.generation
            )));
        }
        let ctx =
            dealing_ctx(&Bytes32(gk.0), epoch).map_err(|e| Status::internal(e.to_string()))?;
        let (index, env) = self
            .enclave
            .share_for_peer(&ctx, r.requester_node_id, &hpke)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        // Spent only once everything else passed.
        self.nonces
            .use_nonce(&nonce, now)
            .map_err(|_| Status::already_exists("nonce replayed"))?;
        let resp = ShareResponse {
            responder_node_id: self.replica.node_id,
            epoch: r.epoch,
            generation: r.generation,
            share_index: index,
            sealed_share: env.clone(),
            request_digest: body.digest(),
        };
        let signature = self
            .enclave
            .sign_identity(SigningPurpose::ShareResponse, &resp.signing_bytes());
        Ok(Response::new(pb::FetchShareResponse {
            responder_node_id: resp.responder_node_id,
            epoch: resp.epoch,
            generation: resp.generation,
            share_index: u32::from(index),
            sealed_share: Some(pb::HpkeEnvelope {
                version: env.version,
                encapped_key: env.encapped_key.to_vec(),
                ciphertext: env.ciphertext,
            }),
            request_digest: resp.request_digest.to_vec(),
            signature: signature.0.to_vec(),
        }))
    }
}

/// Asks the peer at `api_address` (member `peer_identity`) for its share of `epoch`'s current
/// dealing; verifies the response signature. Returns (index, envelope sealed to this node).
pub async fn fetch_share(
    enclave: &dyn Enclave,
    me: u64,
    gk: &Bytes32,
    epoch: &EpochRecord,
    peer_identity: &Bytes32,
    api_address: &str,
    timeout: Duration,
) -> Result<(u8, Envelope), String> {
    let mut nonce = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let hpke = enclave.hpke_public_key();
    let identity = enclave.identity_public_key();
    let rd = keyring::sign::report_data(identity.as_bytes(), &hpke, &nonce);
    let evidence = enclave.evidence(&rd).ok().map(|(kind, e)| pb::Attestation {
        kind,
        evidence: e,
        collateral: vec![],
    });
    let body = ShareRequest {
        gatekeeper_id: GatekeeperId(gk.0),
        requester_node_id: me,
        epoch: epoch.epoch,
        generation: epoch.dealing.generation,
        requester_hpke: hpke,
        nonce,
        timestamp_ms: now_ms(),
        evidence: digest_of(&evidence),
    };
    let signature = enclave.sign_identity(SigningPurpose::ShareRequest, &body.signing_bytes());
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{api_address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("{api_address}: {e}"))?;
    let resp = PeerServiceClient::new(ch)
        .fetch_share(pb::FetchShareRequest {
            gatekeeper_id: gk.0.to_vec(),
            requester_node_id: me,
            epoch: epoch.epoch,
            generation: epoch.dealing.generation,
            requester_hpke_public_key: hpke.as_bytes().to_vec(),
            nonce: nonce.to_vec(),
            timestamp_ms: body.timestamp_ms,
            evidence,
            signature: signature.0.to_vec(),
        })
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let env = resp.sealed_share.ok_or("response has no sealed_share")?;
    let env = Envelope::from_parts(env.version, &env.encapped_key, env.ciphertext)
        .map_err(|e| e.to_string())?;
    if env.version != ENVELOPE_VERSION {
        return Err("unknown envelope version".into());
    }
    let index = u8::try_from(resp.share_index).map_err(|_| "share index above 255")?;
    let check = ShareResponse {
        responder_node_id: resp.responder_node_id,
        epoch: resp.epoch,
        generation: resp.generation,
        share_index: index,
        sealed_share: env.clone(),
        request_digest: body.digest(),
    };
    let peer = Sr25519PublicKey::from_slice(&peer_identity.0).map_err(|e| e.to_string())?;
    let sig = Signature::from_slice(&resp.signature).map_err(|e| e.to_string())?;
    verify(
        &peer,
        SigningPurpose::ShareResponse,
        &check.signing_bytes(),
        &sig,
    )
    .map_err(|_| "share response signature does not verify".to_string())?;
    if resp.epoch != epoch.epoch || resp.generation != epoch.dealing.generation {
        return Err("share response is for another dealing".into());
    }
    Ok((index, env))
}
