//! `gatekeeper.v1.KeyService`: derived keys for registered, active, attested workers.
//!
//! Checks run in the order of docs/api.md ("KeyService"); the first failure returns its code and
//! nothing changes (the nonce is recorded only after every other check passed).

use crate::attestation::Policy;
use crate::enclave::Enclave;
use crate::peer_service::check_evidence;
use crate::replay::{NonceCache, ReplayError};
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::key_service_server::KeyService;
use gatekeeper_raft::now_ms;
use gatekeeper_raft::replica::Replica;
use gatekeeper_raft::sm_store::Applied;
use gatekeeper_raft::state::{
    Bytes32, ClusterRecord, EpochStatus, GatekeeperState, Scheme as StScheme, WorkerRecord,
    WorkerStatus,
};
use keyring::derive::Scheme;
use keyring::sign::{EvidenceDigest, KeyRequest, KeyResponse, KeyTarget};
use keyring::{ClusterId, ContractId, GatekeeperId, Signature, Sr25519PublicKey, X25519PublicKey};
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Largest accepted key request (evidence included).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

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
}

fn field<T>(r: keyring::Result<T>, name: &str) -> Result<T, Status> {
    r.map_err(|e| Status::invalid_argument(format!("{name}: {e}")))
}

fn scheme_of(s: StScheme) -> (Scheme, i32) {
    match s {
        StScheme::Native => (Scheme::Native, pb::DerivationScheme::Native as i32),
        StScheme::Phala => (Scheme::Phala, pb::DerivationScheme::Phala as i32),
    }
}

/// The parts of the replicated state one key request needs, copied out under the read lock
/// (cloning the whole state per request would cost O(registry size) on the hot path).
struct RequestView {
    gatekeeper_id: Option<Bytes32>,
    /// The requested epoch, or the current one; None when there is no active epoch yet.
    epoch: Option<u64>,
    /// That epoch's status, if it exists.
    epoch_status: Option<EpochStatus>,
    worker: Option<WorkerRecord>,
    /// For a contract key: the contract's cluster.
    contract_cluster: Option<Bytes32>,
    /// The cluster of a cluster key, or the contract's cluster.
    cluster: Option<ClusterRecord>,
}

impl RequestView {
    fn of(
        s: &GatekeeperState,
        requested: Option<u64>,
        worker: &Bytes32,
        target: &KeyTarget,
    ) -> Self {
        let epoch = requested.or_else(|| s.current_epoch());
        let contract_cluster = match target {
            KeyTarget::Contract(k) => s.contracts.get(&Bytes32(k.0)).copied(),
            _ => None,
        };
        let cluster_id = match target {
            KeyTarget::Cluster(c) => Some(Bytes32(c.0)),
            _ => contract_cluster,
        };
        RequestView {
            gatekeeper_id: s.gatekeeper_id,
            epoch,
            epoch_status: epoch.and_then(|e| s.epochs.get(&e)).map(|e| e.status),
            worker: s.workers.get(worker).cloned(),
            contract_cluster,
            cluster: cluster_id.and_then(|c| s.clusters.get(&c)).cloned(),
        }
    }
}

impl KeyServer {
    /// Reads from the state under the configured read mode.
    async fn read<T>(&self, f: impl FnOnce(&GatekeeperState) -> T) -> Result<T, Status> {
        let get = |a: &Applied| f(&a.state);
        if self.stale_reads {
            self.replica
                .read_stale(get)
                .map(|(s, _)| s)
                .map_err(crate::admin_service::to_status)
        } else {
            self.replica
                .read_linearizable(get)
                .await
                .map_err(crate::admin_service::to_status)
        }
    }

    async fn serve(
        &self,
        header: Option<pb::KeyRequestHeader>,
        target_id: Option<&[u8]>,
        kind: pb::KeyKind,
        signature: &[u8],
    ) -> Result<pb::KeyResponse, Status> {
        // 2-3. Shape.
        let h = header.ok_or_else(|| Status::invalid_argument("header is required"))?;
        let gk = field(GatekeeperId::from_slice(&h.gatekeeper_id), "gatekeeper_id")?;
        let worker = field(
            Sr25519PublicKey::from_slice(&h.worker_public_key),
            "worker_public_key",
        )?;
        let recipient = field(
            X25519PublicKey::from_slice(&h.recipient_public_key),
            "recipient_public_key",
        )?;
        let nonce: [u8; 32] = h
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("nonce must be 32 bytes"))?;
        let sig = field(Signature::from_slice(signature), "signature")?;
        crate::peer_service::check_kind(&h.attestation)?;
        let target = match kind {
            pb::KeyKind::Worker => KeyTarget::Worker,
            pb::KeyKind::Cluster => KeyTarget::Cluster(field(
                ClusterId::from_slice(target_id.unwrap_or_default()),
                "cluster_id",
            )?),
            pb::KeyKind::Contract => KeyTarget::Contract(field(
                ContractId::from_slice(target_id.unwrap_or_default()),
                "contract_id",
            )?),
            pb::KeyKind::Unspecified => return Err(Status::invalid_argument("kind")),
        };
        let worker_id = Bytes32(*worker.as_bytes());
        let view = self
            .read(|s| RequestView::of(s, h.epoch, &worker_id, &target))
            .await?;
        // 4. This cluster.
        if view.gatekeeper_id != Some(Bytes32(gk.0)) {
            return Err(Status::invalid_argument(format!(
                "gatekeeper_id is not this cluster's ({})",
                view.gatekeeper_id
                    .map(|g| hex::encode(g.0))
                    .unwrap_or_default()
            )));
        }
        // 13 (epoch existence first: the seal check needs it).
        let epoch = view
            .epoch
            .ok_or_else(|| Status::failed_precondition("no active epoch yet"))?;
        let status = view
            .epoch_status
            .ok_or_else(|| Status::not_found(format!("no epoch {epoch}")))?;
        if status != EpochStatus::Active {
            return Err(Status::failed_precondition(format!(
                "epoch {epoch} is {status:?}"
            )));
        }
        // 5. Unsealed.
        if !self.enclave.has_master(epoch) {
            return Err(Status::failed_precondition(format!(
                "this node is sealed for epoch {epoch}"
            )));
        }
        // 6. Time window.
        let now = now_ms();
        if let Err(ReplayError::Skew(s)) = self.nonces.check_time(h.timestamp_ms, now) {
            return Err(Status::invalid_argument(format!(
                "timestamp_ms is {s} ms from this node's clock"
            )));
        }
        // 7. Signature.
        let req = KeyRequest {
            target,
            gatekeeper_id: gk,
            worker,
            recipient,
            epoch: h.epoch,
            nonce,
            timestamp_ms: h.timestamp_ms,
            evidence: h
                .attestation
                .as_ref()
                .map(|a| EvidenceDigest::new(a.kind as u8, &a.evidence, &a.collateral)),
        };
        req.verify(&sig)
            .map_err(|_| Status::unauthenticated("request signature does not verify"))?;
        // 8-9. Registry.
        let w = view
            .worker
            .as_ref()
            .ok_or_else(|| Status::not_found(format!("worker {worker} is not registered")))?;
        match &w.status {
            WorkerStatus::Active => {}
            WorkerStatus::Slashed { block, reason } => {
                return Err(Status::permission_denied(format!(
                    "worker {worker} was slashed at block {block}: {reason}"
                )))
            }
            WorkerStatus::Removed { block } => {
                return Err(Status::permission_denied(format!(
                    "worker {worker} was deregistered at block {block}"
                )))
            }
            WorkerStatus::Unresponsive { block } => {
                return Err(Status::permission_denied(format!(
                    "worker {worker} was reported unresponsive at block {block}"
                )))
            }
        }
        // 10. Attestation.
        check_evidence(
            &self.policy,
            &h.attestation,
            &keyring::sign::report_data(worker.as_bytes(), &recipient, &nonce),
        )?;
        // 11-12. Cluster / contract.
        let (cluster, subject, cluster_bytes) = match target {
            KeyTarget::Worker => (None, worker.as_bytes().to_vec(), vec![]),
            KeyTarget::Cluster(c) => {
                let rec = view
                    .cluster
                    .as_ref()
                    .ok_or_else(|| Status::not_found(format!("cluster {c} does not exist")))?;
                (Some((c, rec.scheme)), c.0.to_vec(), c.0.to_vec())
            }
            KeyTarget::Contract(k) => {
                let c = view
                    .contract_cluster
                    .ok_or_else(|| Status::not_found(format!("contract {k} does not exist")))?;
                let rec = view.cluster.as_ref().ok_or_else(|| {
                    Status::not_found(format!("cluster of contract {k} does not exist"))
                })?;
                (
                    Some((ClusterId(c.0), rec.scheme)),
                    k.0.to_vec(),
                    c.0.to_vec(),
                )
            }
        };
        if let Some((c, _)) = cluster {
            if !w.clusters.contains(&Bytes32(c.0)) {
                return Err(Status::permission_denied(format!(
                    "worker {worker} is not assigned to cluster {c}"
                )));
            }
        }
        // 15. Recipient point (checked by sealing below, before the nonce is spent).
        // 14. Nonce.
        let (scheme, scheme_pb) = match kind {
            pb::KeyKind::Worker => (Scheme::Native, pb::DerivationScheme::Native as i32),
            _ => scheme_of(cluster.map_or(StScheme::Native, |(_, s)| s)),
        };
        let sealed = self
            .enclave
            .derive_sealed(
                gk,
                epoch,
                target,
                cluster.map(|(c, _)| (c, scheme)),
                &worker,
                &recipient,
            )
            .map_err(|e| match e {
                crate::enclave::EnclaveError::Keyring(keyring::Error::EnvelopeSealFailed(_)) => {
                    Status::invalid_argument("recipient_public_key is a low-order point")
                }
                crate::enclave::EnclaveError::Sealed(e) => {
                    Status::failed_precondition(format!("this node is sealed for epoch {e}"))
                }
                other => Status::internal(other.to_string()),
            })?;
        self.nonces
            .use_nonce(&nonce, now)
            .map_err(|_| Status::already_exists("nonce was already used"))?;
        let resp = KeyResponse {
            kind: kind as u8,
            epoch,
            subject,
            cluster_id: cluster_bytes,
            scheme: scheme_pb as u8,
            derived_public_key: sealed.public_key,
            sealed_secret: sealed.envelope,
            request_digest: req.digest(),
            issued_at_ms: now,
            served_by: self.replica.node_id,
        };
        let signature = self
            .enclave
            .sign_response(epoch, &resp.signing_bytes())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(pb::KeyResponse {
            kind: kind as i32,
            epoch,
            subject: resp.subject,
            cluster_id: resp.cluster_id,
            scheme: scheme_pb,
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

fn too_large<M: Message>(m: &M) -> Result<(), Status> {
    if m.encoded_len() > MAX_REQUEST_BYTES {
        return Err(Status::resource_exhausted(format!(
            "request exceeds {MAX_REQUEST_BYTES} bytes"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl KeyService for KeyServer {
    async fn get_worker_key(
        &self,
        request: Request<pb::GetWorkerKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let r = request.into_inner();
        too_large(&r)?;
        self.serve(r.header, None, pb::KeyKind::Worker, &r.signature)
            .await
            .map(Response::new)
    }

    async fn get_cluster_key(
        &self,
        request: Request<pb::GetClusterKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let r = request.into_inner();
        too_large(&r)?;
        self.serve(
            r.header,
            Some(&r.cluster_id),
            pb::KeyKind::Cluster,
            &r.signature,
        )
        .await
        .map(Response::new)
    }

    async fn get_contract_key(
        &self,
        request: Request<pb::GetContractKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let r = request.into_inner();
        too_large(&r)?;
        self.serve(
            r.header,
            Some(&r.contract_id),
            pb::KeyKind::Contract,
            &r.signature,
        )
        .await
        .map(Response::new)
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
            .ok_or_else(|| Status::unavailable("the cluster is not initialised"))?;
        Ok(Response::new(info))
    }
}
