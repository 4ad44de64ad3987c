//! `gatekeeper.v1.KeyService`: derived keys for registered, active, attested workers.
//!
//! Every check is in [`crate::issuance`] (in the order of docs/api.md); this adapter decodes,
//! reads the replicated state, has the enclave derive and seal the key, spends the nonce and signs
//! the response.

use crate::attestation::Policy;
use crate::clock;
use crate::enclave::Enclave;
use crate::error::{self, ApiError, ApiResult, ErrorCode};
use crate::issuance::{self, RequestView};
use crate::replay::NonceCache;
use crate::service::MAX_KEY_REQUEST_BYTES;
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::key_service_server::KeyService;
use gatekeeper_raft::replica::Replica;
use gatekeeper_raft::sm_store::Applied;
use gatekeeper_raft::state::{EpochStatus, GatekeeperState};
use keyring::sign::KeyResponse;
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The KeyService implementation.
#[derive(Clone)]
pub struct KeyServer {
    /// Replicated state.
    pub replica: Replica,
    /// This node's enclave.
    pub enclave: Arc<dyn Enclave>,
    /// Worker attestation policy.
    pub policy: Policy,
    /// Replay window.
    pub nonces: Arc<NonceCache>,
    /// `true`: serve from local state (stale mode); `false`: linearizable.
    pub stale_reads: bool,
    /// The audit log, when configured: every delivery and refusal is a line.
    pub audit: Option<Arc<crate::audit::Auditor>>,
    /// Where deliveries and refusals are counted (`gatekeeper_key_requests_total`).
    pub instruments: crate::metrics::Instruments,
}

impl KeyServer {
    /// Reads from the state under the configured read mode.
    async fn read<T>(&self, f: impl FnOnce(&GatekeeperState) -> T) -> ApiResult<T> {
        let get = |a: &Applied| f(&a.state);
        if self.stale_reads {
            self.replica
                .read_stale(get)
                .map(|(s, _)| s)
                .map_err(error::replica)
        } else {
            self.replica
                .read_linearizable_or_recent(get)
                .await
                .map(|(s, _)| s)
                .map_err(error::replica)
        }
    }

    /// `encoded_len` is the request's size on the wire (row 1); the header is moved in, not
    /// copied (it carries the attestation evidence).
    /// [`KeyServer::serve_checked`] inside a `key.issue` span (traces on).
    async fn serve(
        &self,
        encoded_len: usize,
        header: Option<pb::KeyRequestHeader>,
        target_id: Option<&[u8]>,
        kind: pb::KeyKind,
        signature: &[u8],
    ) -> ApiResult<pb::KeyResponse> {
        use tracing::Instrument;
        let span = crate::trace_span!("key.issue", key.kind = kind.as_str_name());
        self.serve_checked(encoded_len, header, target_id, kind, signature)
            .instrument(span)
            .await
    }

    async fn serve_checked(
        &self,
        encoded_len: usize,
        header: Option<pb::KeyRequestHeader>,
        target_id: Option<&[u8]>,
        kind: pb::KeyKind,
        signature: &[u8],
    ) -> ApiResult<pb::KeyResponse> {
        issuance::check_size(encoded_len, MAX_KEY_REQUEST_BYTES)?;
        let parsed = issuance::parse(header, target_id, kind, signature)?;
        let view = self.read(|s| RequestView::of(s, &parsed.request)).await?;
        let now = clock::now_ms();
        let holds = |e: u64| self.enclave.has_master(e);
        let ok = issuance::authorize(
            &parsed,
            &issuance::Context {
                view: &view,
                policy: &self.policy,
                holds_master: &holds,
                freshness: self.nonces.freshness(&parsed.request.nonce, now),
                now_ms: now,
            },
        )?;
        let req = &parsed.request;
        let sealed = self
            .enclave
            .derive_sealed(
                req.gatekeeper_id,
                ok.epoch,
                req.target,
                ok.cluster,
                &req.worker,
                &req.recipient,
            )
            .map_err(issuance::sealing_error)?;
        self.nonces
            .use_nonce(&req.nonce, now)
            .map_err(|_| ApiError::new(ErrorCode::NonceReplayed, "nonce was already used"))?;
        let cluster_bytes = ok.cluster.map(|(c, _)| c.0.to_vec()).unwrap_or_default();
        let resp = KeyResponse {
            kind: kind as u8,
            epoch: ok.epoch,
            subject: ok.subject,
            cluster_id: cluster_bytes,
            scheme: ok.scheme as u8,
            derived_public_key: sealed.public_key,
            sealed_secret: sealed.envelope,
            request_digest: req.digest(),
            issued_at_ms: now,
            served_by: self.replica.node_id,
        };
        let signature = self
            .enclave
            .sign_response(ok.epoch, &resp.signing_bytes())
            .map_err(|e| ApiError::new(ErrorCode::NodeSealed, e.to_string()))?;
        Ok(pb::KeyResponse {
            kind: kind as i32,
            epoch: ok.epoch,
            subject: resp.subject,
            cluster_id: resp.cluster_id,
            scheme: ok.scheme as i32,
            derived_public_key: resp.derived_public_key.as_bytes().to_vec(),
            sealed_secret: Some(pb::HpkeEnvelope {
                version: resp.sealed_secret.version,
                encapped_key: resp.sealed_secret.encapped_key.to_vec(),
                ciphertext: resp.sealed_secret.ciphertext,
            }),
            request_digest: resp.request_digest.to_vec(),
            issued_at_ms: now,
            served_by: resp.served_by,
            signature: signature.0.to_vec(),
        })
    }
}

impl KeyServer {
    /// Counts the outcome of a key request, records it in the audit log (when there is one)
    /// and answers it. A delivery whose line cannot be written is not delivered when the log is
    /// required.
    fn audited(
        &self,
        method: &str,
        caller: String,
        worker: Option<Vec<u8>>,
        result: ApiResult<pb::KeyResponse>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let kind = match method.rsplit('/').next() {
            Some("GetClusterKey") => "cluster",
            Some("GetContractKey") => "contract",
            _ => "worker",
        };
        let refusal = result
            .as_ref()
            .err()
            .map(|e| e.code().map_or("INTERNAL", |c| c.as_str()));
        let Some(a) = &self.audit else {
            self.instruments.key_request(kind, refusal);
            return Ok(Response::new(result?));
        };
        let (code, epoch, subject) = match &result {
            Ok(r) => ("OK".to_string(), Some(r.epoch), Some(r.subject.clone())),
            Err(e) => (
                e.code().map_or("INTERNAL", |c| c.as_str()).to_string(),
                None,
                None,
            ),
        };
        // A delivery's HMACs use its epoch's audit key, a refusal's the current epoch's.
        let hmac_epoch = epoch.or_else(|| {
            self.replica
                .read_stale(|a| a.state.current_epoch())
                .ok()
                .and_then(|(e, _)| e)
        });
        let recorded = a.record(&crate::audit::Event {
            caller,
            method,
            epoch,
            subject: subject.as_deref().filter(|s| !s.is_empty()),
            worker: worker.as_deref(),
            code: &code,
            hmac_epoch,
        });
        // Counted as answered: a delivery whose audit line could not be written was not made.
        self.instruments.key_request(
            kind,
            if recorded.is_err() {
                Some(ErrorCode::AuditFailed.as_str())
            } else {
                refusal
            },
        );
        recorded?;
        Ok(Response::new(result?))
    }
}

/// The caller of a key request, for the audit log.
fn key_caller<T>(request: &Request<T>) -> String {
    match request.remote_addr() {
        Some(a) => format!("worker {a}"),
        None => "worker".into(),
    }
}

#[tonic::async_trait]
impl KeyService for KeyServer {
    async fn get_worker_key(
        &self,
        request: Request<pb::GetWorkerKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let caller = key_caller(&request);
        let mut r = request.into_inner();
        let (len, header) = (r.encoded_len(), r.header.take());
        let worker = header.as_ref().map(|h| h.worker_public_key.clone());
        let result = self
            .serve(len, header, None, pb::KeyKind::Worker, &r.signature)
            .await;
        self.audited(
            "/gatekeeper.v1.KeyService/GetWorkerKey",
            caller,
            worker,
            result,
        )
    }

    async fn get_cluster_key(
        &self,
        request: Request<pb::GetClusterKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let caller = key_caller(&request);
        let mut r = request.into_inner();
        let (len, header) = (r.encoded_len(), r.header.take());
        let worker = header.as_ref().map(|h| h.worker_public_key.clone());
        let result = self
            .serve(
                len,
                header,
                Some(&r.cluster_id),
                pb::KeyKind::Cluster,
                &r.signature,
            )
            .await;
        self.audited(
            "/gatekeeper.v1.KeyService/GetClusterKey",
            caller,
            worker,
            result,
        )
    }

    async fn get_contract_key(
        &self,
        request: Request<pb::GetContractKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let caller = key_caller(&request);
        let mut r = request.into_inner();
        let (len, header) = (r.encoded_len(), r.header.take());
        let worker = header.as_ref().map(|h| h.worker_public_key.clone());
        let result = self
            .serve(
                len,
                header,
                Some(&r.contract_id),
                pb::KeyKind::Contract,
                &r.signature,
            )
            .await;
        self.audited(
            "/gatekeeper.v1.KeyService/GetContractKey",
            caller,
            worker,
            result,
        )
    }

    async fn get_cluster_info(
        &self,
        _r: Request<pb::GetClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        let status = self.replica.status();
        // Build the answer under the read lock: nothing beyond it is copied out of the state.
        let info = self
            .read(|state| {
                let gk = state.gatekeeper_id?;
                let current = state.current_epoch();
                let epochs: Vec<pb::EpochInfo> = state
                    .epochs
                    .values()
                    .filter(|e| e.status == EpochStatus::Active || Some(e.epoch) == current)
                    .map(|e| pb::EpochInfo {
                        epoch: e.epoch,
                        status: pb::EpochStatus::Active as i32,
                        master_public_key: e.master_public_key.0.to_vec(),
                        cluster_signing_public_key: e.cluster_signing_public_key.0.to_vec(),
                        threshold: u32::from(e.threshold),
                        scheme: pb::DerivationScheme::Native as i32,
                    })
                    .collect();
                Some(pb::ClusterInfo {
                    gatekeeper_id: gk.0.to_vec(),
                    current_epoch: current.unwrap_or(0),
                    min_epoch: state.min_epoch,
                    cluster_signing_public_key: current
                        .and_then(|c| state.epochs.get(&c))
                        .map(|e| e.cluster_signing_public_key.0.to_vec())
                        .unwrap_or_default(),
                    epochs,
                    members: status
                        .members
                        .iter()
                        .map(|m| pb::MemberEndpoint {
                            node_id: m.id,
                            api_address: m.api_address.clone(),
                            identity_public_key: state
                                .members
                                .get(&m.id)
                                .map(|r| r.identity_public_key.0.to_vec())
                                .unwrap_or_default(),
                            voter: m.voter,
                        })
                        .collect(),
                })
            })
            .await?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::NotInitialized, "the cluster is not initialised")
            })?;
        Ok(Response::new(info))
    }
}
