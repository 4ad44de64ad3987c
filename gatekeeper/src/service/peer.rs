//! `gatekeeper.v1.PeerService`: share exchange for unsealing (docs/api.md, "FetchShare").
//! Decisions are in [`crate::peer`]; this adapter reads the state, asks the enclave for the share,
//! spends the nonce and signs the answer.

use crate::attestation::Policy;
use crate::clock;
use crate::enclave::Enclave;
use crate::error::{self, ApiError, ApiResult, ErrorCode};
use crate::peer;
use crate::replay::NonceCache;
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::peer_service_server::PeerService;
use gatekeeper_raft::replica::Replica;
use keyring::sign::{ShareResponse, SigningPurpose};
use std::sync::Arc;
use tonic::{Request, Response, Status};

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
    /// Served on a TLS cluster listener: the caller's certificate must be the requester's
    /// ([`crate::service::cluster::admit`]). False only in development plaintext.
    pub require_member_certificate: bool,
}

impl PeerServer {
    async fn serve(&self, r: pb::FetchShareRequest) -> ApiResult<pb::FetchShareResponse> {
        let req = peer::parse(r)?;
        // Authorise against a linearizable view: a lagging node must not serve a share to a node
        // that was already removed, nor a generation that was already re-dealt.
        let state = self
            .replica
            .read_linearizable(|a| a.state.without_registries())
            .await
            .map_err(error::replica)?;
        let members: Vec<u64> = self.replica.status().members.iter().map(|m| m.id).collect();
        let now = clock::now_ms();
        let freshness = self.nonces.freshness(&req.body.nonce, now);
        let ok = peer::authorize(&state, &members, &req, &self.policy, freshness, now)?;
        let (index, env) = self
            .enclave
            .share_for_peer(&ok.ctx, ok.requester, &ok.hpke)
            .map_err(peer::share_error)?;
        // Spent only once everything else passed.
        self.nonces
            .use_nonce(&req.body.nonce, now)
            .map_err(|_| ApiError::new(ErrorCode::NonceReplayed, "nonce replayed"))?;
        let resp = ShareResponse {
            responder_node_id: self.replica.node_id,
            epoch: req.body.epoch,
            generation: req.body.generation,
            share_index: index,
            sealed_share: env.clone(),
            request_digest: req.body.digest(),
        };
        let signature = self
            .enclave
            .sign_identity(SigningPurpose::ShareResponse, &resp.signing_bytes());
        Ok(pb::FetchShareResponse {
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
        })
    }
}

#[tonic::async_trait]
impl PeerService for PeerServer {
    async fn fetch_share(
        &self,
        request: Request<pb::FetchShareRequest>,
    ) -> Result<Response<pb::FetchShareResponse>, Status> {
        let (_, extensions, msg) = request.into_parts();
        if self.require_member_certificate {
            crate::service::cluster::admit(
                &self.replica,
                &extensions,
                crate::admission::ClusterCall::FetchShare,
                Some(msg.requester_node_id),
            )?;
        }
        Ok(Response::new(self.serve(msg).await?))
    }
}
