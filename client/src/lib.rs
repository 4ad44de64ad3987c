//! The miner SDK: how a worker gets its keys from a Gatekeeper cluster.
//!
//! ```text
//! let mut c = MinerClient::new(vec!["10.0.0.1:8101".into()], worker_keypair);
//! let k = c.fetch(KeyTarget::Contract(contract_id), None).await?;   // current epoch
//! k.keypair  // the derived sr25519 key, verified end to end
//! ```
//!
//! For every response the client checks, before returning anything:
//! the cluster signature (against the epoch's cluster signing key from `GetClusterInfo`), that the
//! response answers exactly its request (`request_digest`), that the HPKE envelope opens with its
//! own recipient key in the right context, and that the opened seed expands to the advertised
//! public key. It retries the next endpoint on `UNAVAILABLE`, and caches keys per (target, epoch).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::key_service_client::KeyServiceClient;
use keyring::envelope::{self, subject, Envelope, EnvelopeContext, Purpose};
use keyring::sign::{EvidenceDigest, KeyRequest, KeyResponse, KeyTarget};
use keyring::{GatekeeperId, Signature, Sr25519Keypair, Sr25519PublicKey, X25519SecretKey};
use rand_core::{OsRng, RngCore};
use std::collections::HashMap;
use std::time::Duration;

/// Client failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The cluster answered with an error (its gRPC code and message).
    #[error("{code:?}: {message}")]
    Refused {
        /// gRPC code.
        code: tonic::Code,
        /// Server message.
        message: String,
    },
    /// No endpoint could be reached.
    #[error("no endpoint reachable: {0}")]
    Unavailable(String),
    /// A response failed verification: never trust its contents.
    #[error("response failed verification: {0}")]
    Verification(String),
}

/// A fetched, verified key.
#[derive(Clone, Debug)]
pub struct FetchedKey {
    /// Epoch it belongs to.
    pub epoch: u64,
    /// The derived keypair (secret).
    pub keypair: Sr25519Keypair,
    /// Node that served it.
    pub served_by: u64,
}

/// Produces attestation evidence over the 64 bytes of report data a request requires.
pub type EvidenceFn = Box<dyn Fn(&[u8; 64]) -> Option<pb::Attestation> + Send + Sync>;

/// A worker's client.
pub struct MinerClient {
    endpoints: Vec<String>,
    worker: Sr25519Keypair,
    recipient: X25519SecretKey,
    info: Option<pb::ClusterInfo>,
    cache: HashMap<(u8, Vec<u8>, u64), FetchedKey>,
    evidence: Option<EvidenceFn>,
    timeout: Duration,
    pinned: bool,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

/// The host part of `host:port` (`[v6]:port` gives `v6`): the name a node's certificate must be
/// valid for.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    address.rsplit_once(':').map_or(address, |(h, _)| h)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An error with its sources, joined with ": " ("transport error: …: invalid peer
/// certificate: UnknownIssuer"); tonic's transport errors say little without them.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

fn refused(s: tonic::Status) -> ClientError {
    ClientError::Refused {
        code: s.code(),
        message: s.message().to_string(),
    }
}

fn bad(m: impl Into<String>) -> ClientError {
    ClientError::Verification(m.into())
}

impl MinerClient {
    /// A client for `endpoints` (host:port of nodes' API listeners) acting as `worker`. A fresh
    /// X25519 recipient key is generated for this client's lifetime.
    pub fn new(endpoints: Vec<String>, worker: Sr25519Keypair) -> Self {
        Self {
            endpoints,
            worker,
            recipient: X25519SecretKey::generate(&mut OsRng),
            info: None,
            cache: HashMap::new(),
            evidence: None,
            timeout: Duration::from_secs(10),
            pinned: false,
            tls: None,
        }
    }

    /// Connect over TLS, trusting only the CA certificates in `pem` (the cluster's miner bundle,
    /// `gatekeeper certs miner-bundle`); each node's certificate must be valid for the host of
    /// its endpoint. Without this the client speaks plaintext, which only development nodes with
    /// `plaintext = true` accept.
    pub fn with_tls_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls = Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        );
        self
    }

    /// [`MinerClient::with_tls_ca_pem`] from a file.
    pub fn with_tls_ca_file(self, path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        Ok(self.with_tls_ca_pem(pem))
    }

    /// Trust only this cluster description (obtained out of band, e.g. from the operator or the
    /// chain): responses must be signed by its epochs' signing keys and `GetClusterInfo` is never
    /// asked. Without pinning, the signing keys come from `GetClusterInfo` over the same channel
    /// as the keys, so a man in the middle of that channel could substitute both.
    pub fn with_pinned_cluster_info(mut self, info: pb::ClusterInfo) -> Self {
        self.info = Some(info);
        self.pinned = true;
        self
    }

    /// Attach attestation evidence to every request.
    pub fn with_evidence(mut self, f: EvidenceFn) -> Self {
        self.evidence = Some(f);
        self
    }

    async fn connect(
        &self,
        ep: &str,
    ) -> Result<KeyServiceClient<tonic::transport::Channel>, String> {
        let endpoint = match &self.tls {
            Some(tls) => tonic::transport::Endpoint::from_shared(format!("https://{ep}"))
                .map_err(|e| e.to_string())?
                .tls_config(tls.clone().domain_name(host_of(ep)))
                .map_err(|e| format!("{ep}: TLS settings: {e}"))?,
            None => tonic::transport::Endpoint::from_shared(format!("http://{ep}"))
                .map_err(|e| e.to_string())?,
        };
        let ch = endpoint
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(|e| format!("{ep}: {}", error_chain(&e)))?;
        Ok(KeyServiceClient::new(ch))
    }

    /// Fetches (and caches) the public cluster description.
    pub async fn cluster_info(&mut self, refresh: bool) -> Result<pb::ClusterInfo, ClientError> {
        if let (Some(i), true) = (&self.info, !refresh || self.pinned) {
            return Ok(i.clone());
        }
        let mut last = String::new();
        for ep in self.endpoints.clone() {
            let mut c = match self.connect(&ep).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match c.get_cluster_info(pb::GetClusterInfoRequest {}).await {
                Ok(r) => {
                    let info = r.into_inner();
                    self.info = Some(info.clone());
                    return Ok(info);
                }
                Err(s) if s.code() == tonic::Code::Unavailable => last = s.message().into(),
                Err(s) => return Err(refused(s)),
            }
        }
        Err(ClientError::Unavailable(last))
    }

    fn signing_key_for(&self, epoch: u64) -> Option<Sr25519PublicKey> {
        self.info
            .as_ref()?
            .epochs
            .iter()
            .find(|e| e.epoch == epoch)
            .and_then(|e| Sr25519PublicKey::from_slice(&e.cluster_signing_public_key).ok())
    }

    /// Fetches a key for `target` at `epoch` (None = current), verified end to end.
    pub async fn fetch(
        &mut self,
        target: KeyTarget,
        epoch: Option<u64>,
    ) -> Result<FetchedKey, ClientError> {
        let target_id = match target {
            KeyTarget::Worker => vec![],
            KeyTarget::Cluster(c) => c.0.to_vec(),
            KeyTarget::Contract(k) => k.0.to_vec(),
        };
        if let Some(e) = epoch {
            if let Some(k) = self.cache.get(&(target.kind(), target_id.clone(), e)) {
                return Ok(k.clone());
            }
        }
        let info = self.cluster_info(false).await?;
        let gk = GatekeeperId::from_slice(&info.gatekeeper_id).map_err(|e| bad(e.to_string()))?;
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let recipient = self.recipient.public_key();
        let rd =
            keyring::sign::report_data(self.worker.public_key().as_bytes(), &recipient, &nonce);
        let attestation = self.evidence.as_ref().and_then(|f| f(&rd));
        let req = KeyRequest {
            target,
            gatekeeper_id: gk,
            worker: self.worker.public_key(),
            recipient,
            epoch,
            nonce,
            timestamp_ms: now_ms(),
            evidence: attestation
                .as_ref()
                .map(|a| EvidenceDigest::new(a.kind as u8, &a.evidence, &a.collateral)),
        };
        let signature = req.sign(&self.worker).0.to_vec();
        let header = pb::KeyRequestHeader {
            gatekeeper_id: gk.0.to_vec(),
            worker_public_key: req.worker.as_bytes().to_vec(),
            recipient_public_key: recipient.as_bytes().to_vec(),
            epoch,
            nonce: nonce.to_vec(),
            timestamp_ms: req.timestamp_ms,
            attestation,
        };
        let mut last = String::new();
        let mut resp = None;
        for ep in self.endpoints.clone() {
            let mut c = match self.connect(&ep).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let r = match target {
                KeyTarget::Worker => {
                    c.get_worker_key(pb::GetWorkerKeyRequest {
                        header: Some(header.clone()),
                        signature: signature.clone(),
                    })
                    .await
                }
                KeyTarget::Cluster(_) => {
                    c.get_cluster_key(pb::GetClusterKeyRequest {
                        header: Some(header.clone()),
                        cluster_id: target_id.clone(),
                        signature: signature.clone(),
                    })
                    .await
                }
                KeyTarget::Contract(_) => {
                    c.get_contract_key(pb::GetContractKeyRequest {
                        header: Some(header.clone()),
                        contract_id: target_id.clone(),
                        signature: signature.clone(),
                    })
                    .await
                }
            };
            match r {
                Ok(r) => {
                    resp = Some(r.into_inner());
                    break;
                }
                // The same signed request may go to the next node: nothing was served (a refused
                // request spends no nonce). FAILED_PRECONDITION: that node is sealed or behind.
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::FailedPrecondition
                    ) && self.endpoints.len() > 1 =>
                {
                    last = format!("{}: {}", s.code(), s.message())
                }
                Err(s) if s.code() == tonic::Code::Unavailable => last = s.message().into(),
                Err(s) => return Err(refused(s)),
            }
        }
        let r = resp.ok_or(ClientError::Unavailable(last))?;
        let key = self.verify(&req, &r).await?;
        self.cache
            .insert((target.kind(), target_id, key.epoch), key.clone());
        Ok(key)
    }

    async fn verify(
        &mut self,
        req: &KeyRequest,
        r: &pb::KeyResponse,
    ) -> Result<FetchedKey, ClientError> {
        if let Some(e) = req.epoch {
            if r.epoch != e {
                return Err(bad(format!("asked for epoch {e}, got {}", r.epoch)));
            }
        }
        if self.signing_key_for(r.epoch).is_none() {
            self.cluster_info(true).await?;
        }
        let signer = self
            .signing_key_for(r.epoch)
            .ok_or_else(|| bad(format!("epoch {} is not in the cluster info", r.epoch)))?;
        let env_pb = r
            .sealed_secret
            .as_ref()
            .ok_or_else(|| bad("no sealed_secret"))?;
        let env = Envelope::from_parts(
            env_pb.version,
            &env_pb.encapped_key,
            env_pb.ciphertext.clone(),
        )
        .map_err(|e| bad(e.to_string()))?;
        let derived =
            Sr25519PublicKey::from_slice(&r.derived_public_key).map_err(|e| bad(e.to_string()))?;
        let digest: [u8; 32] = r
            .request_digest
            .as_slice()
            .try_into()
            .map_err(|_| bad("request_digest is not 32 bytes"))?;
        if digest != req.digest() {
            return Err(bad("response answers another request"));
        }
        let body = KeyResponse {
            kind: r.kind as u8,
            epoch: r.epoch,
            subject: r.subject.clone(),
            cluster_id: r.cluster_id.clone(),
            scheme: r.scheme as u8,
            derived_public_key: derived,
            sealed_secret: env.clone(),
            request_digest: digest,
            issued_at_ms: r.issued_at_ms,
            served_by: r.served_by,
        };
        let sig = Signature::from_slice(&r.signature).map_err(|e| bad(e.to_string()))?;
        body.verify(&signer, &sig)
            .map_err(|_| bad("cluster signature does not verify"))?;
        let subject_id: &[u8] = match req.target {
            KeyTarget::Worker => req.worker.as_bytes(),
            KeyTarget::Cluster(ref c) => c.as_bytes(),
            KeyTarget::Contract(ref k) => k.as_bytes(),
        };
        let ctx = EnvelopeContext {
            purpose: Purpose::KeyDelivery,
            gatekeeper_id: req.gatekeeper_id,
            epoch: r.epoch,
            subject: subject::key_delivery(req.target.kind(), subject_id, req.worker.as_bytes()),
            recipient: self.recipient.public_key(),
        };
        let seed = envelope::open(&ctx, &self.recipient, &env).map_err(|e| bad(e.to_string()))?;
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| bad("seed is not 32 bytes"))?;
        let keypair = Sr25519Keypair::from_seed(&seed);
        if keypair.public_key() != derived {
            return Err(bad("opened seed does not match derived_public_key"));
        }
        Ok(FetchedKey {
            epoch: r.epoch,
            keypair,
            served_by: r.served_by,
        })
    }
}
