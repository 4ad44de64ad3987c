//! The miner SDK: how a worker gets its keys from a Gatekeeper cluster.
//!
//! ```no_run
//! use gatekeeper_client::{read_key_file, KeyTarget, MinerClient};
//! use keyring::ContractId;
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // The worker's sr25519 key (`gatekeeper keygen --out worker.json`, registered on chain) and
//! // the cluster's CA bundle (`gatekeeper certs miner-bundle`).
//! let worker = read_key_file("worker.json")?;
//! let client = MinerClient::new(
//!     vec!["gk-1.example:8101".into(), "gk-2.example:8101".into()],
//!     worker,
//! )
//! .with_tls_ca_file("miner-ca.pem")?
//! .with_timeouts(Duration::from_secs(2), Duration::from_secs(5));
//!
//! // The worker's own key for the current epoch, verified end to end.
//! let key = client.fetch(KeyTarget::Worker, None).await?;
//! println!(
//!     "epoch {} key {:?} from {} in {:?}",
//!     key.epoch,
//!     key.keypair.public_key(),
//!     key.endpoint,
//!     key.elapsed
//! );
//!
//! // Several keys at once (one result each).
//! let contract = KeyTarget::Contract(ContractId([3; 32]));
//! for r in client.fetch_many(&[KeyTarget::Worker, contract], None).await {
//!     match r {
//!         Ok(k) => println!("{:?}", k.keypair.public_key()),
//!         Err(e) => eprintln!("{e}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! For every response the client checks, before returning anything (docs/api.md, "Writing a
//! client", gives the order and the bytes): the epoch, kind and subject asked for, that the
//! response answers exactly its request (`request_digest`), the cluster signature (against the
//! epoch's cluster signing key from `GetClusterInfo`, or a pinned [`pb::ClusterInfo`]), that the
//! HPKE envelope opens with its own recipient key in the right context, that the opened seed
//! expands to the advertised public key, and, for the current epoch, that the answer is not
//! older than the current epoch the client knows. The cluster description is asked once; a
//! response for a newer epoch makes the client ask again, but a refresh only ever adds epochs
//! ([`MinerClient::refresh_cluster_info`]).
//!
//! **Failover and retries.** A request goes to the endpoints in order; a node that cannot serve
//! now (unreachable, no leader, sealed, busy, timed out: [`retryable`]) or whose response fails
//! verification passes it to the next.
//! When every endpoint failed that way, the client waits (exponential backoff with jitter,
//! [`RetryPolicy`]) and tries them all again with a freshly signed request, up to
//! `RetryPolicy::rounds` times. A verdict any node would give (not registered, slashed, bad
//! signature, retired epoch, …) is returned at once as [`ClientError::Refused`], naming the
//! endpoint and the `gatekeeper-error-code`.
//!
//! **The cache.** Keys are cached per (target, epoch) for the client's lifetime:
//! - `fetch(target, Some(e))` answers from the cache when it holds that key, without asking;
//! - `fetch(target, None)` always asks (the current epoch may have changed) and caches the
//!   answer under its epoch;
//! - after a **rotation**, `fetch(target, None)` returns the new epoch's key; older epochs' keys
//!   stay cached (they still decrypt old data) until [`MinerClient::forget_epochs_below`] or
//!   [`MinerClient::clear_cache`];
//! - after a **slash** the cluster refuses every new request of that worker
//!   (`WORKER_NOT_ACTIVE`), but a key already delivered cannot be taken back, and the cache does
//!   not know about the slash: a slashed worker should stop and clear its cache.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod keyfile;
pub mod wire;

pub use keyfile::{read_key_file, write_key_file, KeyFileError};
pub use keyring::sign::KeyTarget;
pub use wire::{retryable, sign_request, verify_response, RequestInputs, SignedRequest};

use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::key_service_client::KeyServiceClient;
use keyring::sign::KeyRequest;
use keyring::{GatekeeperId, Sr25519Keypair, X25519SecretKey};
use rand_core::{OsRng, RngCore};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use wire::WireRequest;

/// How one endpoint failed to serve a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// No connection could be made (or it broke before an answer): the transport's error.
    Unreachable(String),
    /// The node answered, but its response failed verification (the failed check): a faulty
    /// node or something in between. Never trust such a response's contents.
    Verification(String),
    /// The node answered with an error it may not give on another try or another node.
    Refused {
        /// gRPC status code.
        code: tonic::Code,
        /// The `gatekeeper-error-code` metadata, when the node set one.
        error_code: Option<String>,
        /// The node's message.
        message: String,
    },
}

/// One endpoint's failure, as [`ClientError::Exhausted`] lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointFailure {
    /// `host:port`.
    pub endpoint: String,
    /// What happened there.
    pub failure: Failure,
}

fn code_text(code: tonic::Code, error_code: &Option<String>) -> String {
    match error_code {
        Some(c) => format!("{code:?} ({c})"),
        None => format!("{code:?}"),
    }
}

impl fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Failure::Unreachable(e) => write!(f, "{} unreachable: {e}", self.endpoint),
            Failure::Verification(e) => {
                write!(f, "{}: response failed verification: {e}", self.endpoint)
            }
            Failure::Refused {
                code,
                error_code,
                message,
            } => write!(
                f,
                "{} refused: {}: {message}",
                self.endpoint,
                code_text(*code, error_code)
            ),
        }
    }
}

/// Client failures. Each says which endpoint answered what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A node refused the request with a verdict every node would give (not registered,
    /// slashed, bad signature, retired epoch, …): not retried.
    #[error("{endpoint} refused: {}: {message}", code_text(*.code, .error_code))]
    Refused {
        /// The endpoint that answered.
        endpoint: String,
        /// gRPC code.
        code: tonic::Code,
        /// The `gatekeeper-error-code` metadata (docs/api.md, "Error codes").
        error_code: Option<String>,
        /// Server message.
        message: String,
    },
    /// Every endpoint failed in every round, each in a way another try might not
    /// ([`retryable`]): unreachable or timed out, no leader, sealed, busy — or its response
    /// failed verification (then another node is tried: one faulty node or path does not stop
    /// the others from serving). Lists the last failure of each endpoint.
    #[error("no endpoint could serve the request after {rounds} round(s): {}", list(.failures))]
    Exhausted {
        /// Rounds over the endpoints that were made.
        rounds: u32,
        /// The last failure of each endpoint, in endpoint order.
        failures: Vec<EndpointFailure>,
    },
    /// The cluster description is unusable: malformed, or from another cluster than the one
    /// this client knows.
    #[error("cluster description: {0}")]
    ClusterInfo(String),
    /// The client's own settings are unusable (no endpoints, a bad endpoint or TLS setting).
    #[error("client settings: {0}")]
    Config(String),
}

fn list(f: &[EndpointFailure]) -> String {
    f.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl ClientError {
    /// The `gatekeeper-error-code` of a refusal (for [`ClientError::Exhausted`], that of the
    /// last endpoint that answered with one).
    pub fn error_code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { error_code, .. } => error_code.as_deref(),
            ClientError::Exhausted { failures, .. } => {
                failures.iter().rev().find_map(|f| match &f.failure {
                    Failure::Refused { error_code, .. } => error_code.as_deref(),
                    _ => None,
                })
            }
            _ => None,
        }
    }
}

/// A fetched, verified key.
#[derive(Clone, Debug)]
pub struct FetchedKey {
    /// What it is the key of.
    pub target: KeyTarget,
    /// Epoch it belongs to.
    pub epoch: u64,
    /// The derived keypair (secret; its `Debug` shows only the public key).
    pub keypair: Sr25519Keypair,
    /// Node that served it (its Raft id).
    pub served_by: u64,
    /// The endpoint that answered (empty for a key from the cache).
    pub endpoint: String,
    /// How long the fetch took, retries included (zero from the cache).
    pub elapsed: Duration,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// Produces attestation evidence over the 64 bytes of report data a request requires.
pub type EvidenceFn = Box<dyn Fn(&[u8; 64]) -> Option<pb::Attestation> + Send + Sync>;

/// When to try again: rounds over all endpoints, with exponential backoff and jitter between
/// rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Rounds over the endpoints (at least 1).
    pub rounds: u32,
    /// Wait before the second round; doubled each round.
    pub initial_backoff: Duration,
    /// The longest wait between rounds.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 3 rounds, waiting 0.25 s then 0.5 s (each with jitter of up to half of it taken off).
    fn default() -> Self {
        Self {
            rounds: 3,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries: one round over the endpoints.
    pub fn once() -> Self {
        Self {
            rounds: 1,
            ..Self::default()
        }
    }

    /// The wait before round `round` (1-based; round 0 does not wait), before jitter.
    pub fn backoff(&self, round: u32) -> Duration {
        if round == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (round - 1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

type CacheKey = (u8, [u8; 32], u64);

/// A worker's client. Methods take `&self`: one client can be shared by tasks (cluster info,
/// the cache and connections are shared).
pub struct MinerClient {
    endpoints: Vec<String>,
    worker: Sr25519Keypair,
    recipient: X25519SecretKey,
    info: Mutex<Option<pb::ClusterInfo>>,
    pinned: bool,
    cache: Mutex<HashMap<CacheKey, FetchedKey>>,
    evidence: Option<EvidenceFn>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    tls: Option<tonic::transport::ClientTlsConfig>,
    plaintext: bool,
    channels: Mutex<HashMap<String, Channel>>,
    /// Held while a connection is made, so concurrent first calls make one.
    connecting: tokio::sync::Mutex<()>,
    last_refresh: Mutex<Option<Instant>>,
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

fn target_key(t: &KeyTarget, epoch: u64) -> CacheKey {
    let id = match t {
        KeyTarget::Worker => [0; 32],
        KeyTarget::Cluster(c) => c.0,
        KeyTarget::Contract(k) => k.0,
    };
    (t.kind(), id, epoch)
}

fn status_failure(s: &tonic::Status) -> Failure {
    // A status without an error code was made by the transport, not by a node: a broken
    // connection (UNAVAILABLE), the client's own timeout (tonic reports CANCELLED "Timeout
    // expired"), a deadline, a reset stream.
    if s.metadata().get("gatekeeper-error-code").is_none()
        && matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
        )
    {
        return Failure::Unreachable(error_chain(s));
    }
    Failure::Refused {
        code: s.code(),
        error_code: s
            .metadata()
            .get("gatekeeper-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        message: s.message().to_string(),
    }
}

impl MinerClient {
    /// A client for `endpoints` (host:port of nodes' API listeners) acting as `worker`. A fresh
    /// X25519 recipient key is generated for this client's lifetime. Defaults: connect timeout
    /// 2 s, request timeout 10 s, [`RetryPolicy::default`]. Give it the cluster's CA
    /// ([`MinerClient::with_tls_ca_file`]), or [`MinerClient::allow_plaintext`] for a development
    /// node: it does not fall back to plaintext by itself.
    pub fn new(endpoints: Vec<String>, worker: Sr25519Keypair) -> Self {
        Self {
            endpoints,
            worker,
            recipient: X25519SecretKey::generate(&mut OsRng),
            info: Mutex::new(None),
            pinned: false,
            cache: Mutex::new(HashMap::new()),
            evidence: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            tls: None,
            plaintext: false,
            channels: Mutex::new(HashMap::new()),
            connecting: tokio::sync::Mutex::new(()),
            last_refresh: Mutex::new(None),
        }
    }

    /// Speak plaintext gRPC: only development nodes with `plaintext = true` accept it, and
    /// anything on the path can read and change the traffic (the responses are still verified,
    /// and the keys still sealed to this client). Without this or a CA, every call fails with
    /// [`ClientError::Config`].
    pub fn allow_plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }

    /// Connect over TLS, trusting only the CA certificates in `pem` (the cluster's miner bundle,
    /// `gatekeeper certs miner-bundle`); each node's certificate must be valid for the host of
    /// its endpoint.
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

    /// Sets how long to wait for a connection to one endpoint, and for one call's answer.
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// Sets when to try again ([`RetryPolicy::once`] for no retries).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Trust only this cluster description (obtained out of band, e.g. from the operator or the
    /// chain): responses must be signed by its epochs' signing keys and `GetClusterInfo` is never
    /// asked. Without pinning, the signing keys come from `GetClusterInfo` over the same channel
    /// as the keys, so a man in the middle of that channel could substitute both.
    pub fn with_pinned_cluster_info(mut self, info: pb::ClusterInfo) -> Self {
        self.info = Mutex::new(Some(info));
        self.pinned = true;
        self
    }

    /// Attach attestation evidence to every request.
    pub fn with_evidence(mut self, f: EvidenceFn) -> Self {
        self.evidence = Some(f);
        self
    }

    /// Drops every cached key.
    pub fn clear_cache(&self) {
        self.cache.lock().expect("cache lock").clear();
    }

    /// Drops the cached keys of epochs below `min_epoch` (after the cluster retired them).
    pub fn forget_epochs_below(&self, min_epoch: u64) {
        self.cache
            .lock()
            .expect("cache lock")
            .retain(|k, _| k.2 >= min_epoch);
    }

    /// The tonic endpoint for `ep` (`host:port`), or why it is not one.
    fn endpoint_for(&self, ep: &str) -> Result<Endpoint, String> {
        if ep.contains("://") {
            return Err(format!("endpoint {ep:?}: give host:port, without a scheme"));
        }
        match &self.tls {
            Some(tls) => Channel::from_shared(format!("https://{ep}"))
                .map_err(|e| format!("endpoint {ep:?}: {e}"))?
                .tls_config(tls.clone().domain_name(host_of(ep)))
                .map_err(|e| format!("endpoint {ep:?}: TLS settings: {e}")),
            None => Channel::from_shared(format!("http://{ep}"))
                .map_err(|e| format!("endpoint {ep:?}: {e}")),
        }
    }

    /// The client's own settings, checked before anything is sent.
    fn check_settings(&self) -> Result<(), ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints".into()));
        }
        if self.tls.is_none() && !self.plaintext {
            return Err(ClientError::Config(
                "no TLS trust configured: give the cluster's miners' CA bundle \
                 (with_tls_ca_file), or allow_plaintext() for a development node"
                    .into(),
            ));
        }
        for ep in &self.endpoints {
            self.endpoint_for(ep).map_err(ClientError::Config)?;
        }
        Ok(())
    }

    /// A connection to `ep`, made once and shared (concurrent callers wait for the first).
    async fn channel(&self, ep: &str) -> Result<KeyServiceClient<Channel>, Failure> {
        let cached = |c: &Self| c.channels.lock().expect("channels lock").get(ep).cloned();
        if let Some(ch) = cached(self) {
            return Ok(KeyServiceClient::new(ch));
        }
        let _one = self.connecting.lock().await;
        if let Some(ch) = cached(self) {
            return Ok(KeyServiceClient::new(ch));
        }
        let ch = self
            .endpoint_for(ep)
            .map_err(Failure::Unreachable)?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .connect()
            .await
            .map_err(|e| Failure::Unreachable(error_chain(&e)))?;
        self.channels
            .lock()
            .expect("channels lock")
            .insert(ep.to_string(), ch.clone());
        Ok(KeyServiceClient::new(ch))
    }

    /// Sends one call to `ep`; a transport failure forgets the connection (the next call
    /// reconnects).
    async fn call<T, F, Fut>(&self, ep: &str, f: F) -> Result<T, Failure>
    where
        F: FnOnce(KeyServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let c = self.channel(ep).await?;
        match f(c).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                let failure = status_failure(&s);
                if matches!(failure, Failure::Unreachable(_)) {
                    self.channels.lock().expect("channels lock").remove(ep);
                }
                Err(failure)
            }
        }
    }

    /// Runs `attempt` against the endpoints in order, in rounds, per the retry policy: the
    /// first success wins; a [`retryable`] refusal, an unreachable endpoint or a response that
    /// failed verification moves on; any other refusal ends it.
    async fn each_endpoint<T, F, Fut>(&self, mut attempt: F) -> Result<(T, String), ClientError>
    where
        F: FnMut(String, u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        self.check_settings()?;
        let rounds = self.retry.rounds.max(1);
        let mut last: Vec<EndpointFailure> = Vec::new();
        for round in 0..rounds {
            let wait = self.retry.backoff(round);
            if !wait.is_zero() {
                // Jitter: up to half of the wait taken off, so clients do not retry in step.
                let half = wait.as_millis() as u64 / 2;
                let jitter = if half > 0 { OsRng.next_u64() % half } else { 0 };
                tokio::time::sleep(wait - Duration::from_millis(jitter)).await;
            }
            last.clear();
            for ep in &self.endpoints {
                match attempt(ep.clone(), round).await {
                    Ok(t) => return Ok((t, ep.clone())),
                    Err(Failure::Refused {
                        code,
                        error_code,
                        message,
                    }) if !retryable(code, error_code.as_deref()) => {
                        return Err(ClientError::Refused {
                            endpoint: ep.clone(),
                            code,
                            error_code,
                            message,
                        })
                    }
                    Err(failure) => last.push(EndpointFailure {
                        endpoint: ep.clone(),
                        failure,
                    }),
                }
            }
        }
        Err(ClientError::Exhausted {
            rounds,
            failures: last,
        })
    }

    /// Asks the endpoints for the cluster description (no caching).
    async fn ask_cluster_info(&self) -> Result<pb::ClusterInfo, ClientError> {
        let (info, _) = self
            .each_endpoint(|ep, _| async move {
                self.call(&ep, |mut c| async move {
                    c.get_cluster_info(pb::GetClusterInfoRequest {}).await
                })
                .await
            })
            .await?;
        GatekeeperId::from_slice(&info.gatekeeper_id)
            .map_err(|e| ClientError::ClusterInfo(format!("gatekeeper_id: {e}")))?;
        Ok(info)
    }

    /// The public cluster description: asked once, then cached (a pinned one is never asked
    /// for). See [`MinerClient::refresh_cluster_info`] for how it changes later.
    pub async fn cluster_info(&self) -> Result<pb::ClusterInfo, ClientError> {
        if let Some(i) = self.info.lock().expect("info lock").as_ref() {
            return Ok(i.clone());
        }
        let info = self.ask_cluster_info().await?;
        let mut known = self.info.lock().expect("info lock");
        // Two first askers: the first answer stays.
        Ok(known.get_or_insert(info).clone())
    }

    /// Asks for the cluster description again and **adds** what is new: epochs it did not list
    /// and higher current and minimum epochs. It never changes the gatekeeper id or the signing
    /// key of an epoch it already knows (a description naming another cluster is refused), so a
    /// faulty node cannot swap the keys responses are checked against. At most once per
    /// [`REFRESH_INTERVAL`]; never for a pinned description. Returns the description now held.
    pub async fn refresh_cluster_info(&self) -> Result<pb::ClusterInfo, ClientError> {
        let current = self.cluster_info().await?;
        if self.pinned {
            return Ok(current);
        }
        {
            let mut last = self.last_refresh.lock().expect("refresh lock");
            if last.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
                return Ok(current);
            }
            *last = Some(Instant::now());
        }
        let fresh = self.ask_cluster_info().await?;
        let mut guard = self.info.lock().expect("info lock");
        let known = guard.get_or_insert(current);
        merge_cluster_info(known, fresh).map_err(ClientError::ClusterInfo)?;
        Ok(known.clone())
    }

    fn sign(&self, gk: GatekeeperId, target: KeyTarget, epoch: Option<u64>) -> SignedRequest {
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let recipient = self.recipient.public_key();
        let rd =
            keyring::sign::report_data(self.worker.public_key().as_bytes(), &recipient, &nonce);
        sign_request(
            &self.worker,
            &recipient,
            RequestInputs {
                target,
                gatekeeper_id: gk,
                epoch,
                nonce,
                timestamp_ms: now_ms(),
                attestation: self.evidence.as_ref().and_then(|f| f(&rd)),
            },
        )
    }

    /// Checks one response to `request` (docs/api.md, "Writing a client", step 4): first what
    /// needs no key, so that nothing is asked on an unchecked response's say-so; then, for an
    /// epoch this client does not know, a refresh (which only adds epochs); then the signature,
    /// the envelope and the derived key; and for a request of the current epoch, that the answer
    /// is not older than the current epoch this client knows.
    async fn check(
        &self,
        request: &KeyRequest,
        r: &pb::KeyResponse,
    ) -> Result<wire::VerifiedKey, Failure> {
        wire::check_binding(request, r).map_err(Failure::Verification)?;
        let lookup = |c: &Self| {
            let info = c.info.lock().expect("info lock");
            let info = info.as_ref()?;
            Some((
                wire::signing_key_for(info, r.epoch),
                info.current_epoch,
                info.min_epoch,
            ))
        };
        let mut known = lookup(self);
        if known.is_some_and(|(k, current, _)| k.is_none() && r.epoch > current) {
            // A newer epoch than this client knows: a rotation since it asked.
            if let Err(e) = self.refresh_cluster_info().await {
                return Err(Failure::Verification(format!(
                    "epoch {} is unknown and the cluster description could not be refreshed: {e}",
                    r.epoch
                )));
            }
            known = lookup(self);
        }
        let Some((Some(signer), current, min)) = known else {
            return Err(Failure::Verification(format!(
                "epoch {} is not in the {} cluster description",
                r.epoch,
                if self.pinned { "pinned" } else { "known" }
            )));
        };
        if r.epoch < min || (request.epoch.is_none() && r.epoch < current) {
            return Err(Failure::Verification(format!(
                "asked for the current epoch ({current}, retired below {min}), got epoch {}",
                r.epoch
            )));
        }
        verify_response(request, &self.recipient, &signer, r).map_err(Failure::Verification)
    }

    /// Fetches a key for `target` at `epoch` (None = current), verified end to end (see the
    /// crate documentation for the cache, failover and retries).
    pub async fn fetch(
        &self,
        target: KeyTarget,
        epoch: Option<u64>,
    ) -> Result<FetchedKey, ClientError> {
        if let Some(e) = epoch {
            let cached = self
                .cache
                .lock()
                .expect("cache lock")
                .get(&target_key(&target, e))
                .cloned();
            if let Some(mut k) = cached {
                k.cached = true;
                k.endpoint.clear();
                k.elapsed = Duration::ZERO;
                return Ok(k);
            }
        }
        let start = Instant::now();
        let info = self.cluster_info().await?;
        let gk = GatekeeperId::from_slice(&info.gatekeeper_id)
            .map_err(|e| ClientError::ClusterInfo(format!("gatekeeper_id: {e}")))?;
        // One signed request per round: the same request may go to every endpoint of a round
        // (each node keeps its own nonces; a refused request spends none); a new round signs
        // afresh (new nonce and time).
        let signed: Mutex<Option<(u32, SignedRequest)>> = Mutex::new(None);
        let signed_ref = &signed;
        let (v, endpoint) = self
            .each_endpoint(|ep, round| async move {
                let s = {
                    let mut s = signed_ref.lock().expect("request lock");
                    if s.as_ref().map(|(r, _)| *r) != Some(round) {
                        *s = Some((round, self.sign(gk, target, epoch)));
                    }
                    s.as_ref().expect("just set").1.clone()
                };
                let wire = s.wire();
                let resp = self
                    .call(&ep, |mut c| async move {
                        match wire {
                            WireRequest::Worker(m) => c.get_worker_key(traced(m)).await,
                            WireRequest::Cluster(m) => c.get_cluster_key(traced(m)).await,
                            WireRequest::Contract(m) => c.get_contract_key(traced(m)).await,
                        }
                    })
                    .await?;
                self.check(&s.request, &resp).await
            })
            .await?;
        let key = FetchedKey {
            target,
            epoch: v.epoch,
            keypair: v.keypair,
            served_by: v.served_by,
            endpoint,
            elapsed: start.elapsed(),
            cached: false,
        };
        self.cache
            .lock()
            .expect("cache lock")
            .insert(target_key(&target, key.epoch), key.clone());
        Ok(key)
    }

    /// Fetches the keys of several targets at once (concurrently, over the same connections);
    /// one result per target, in order.
    pub async fn fetch_many(
        &self,
        targets: &[KeyTarget],
        epoch: Option<u64>,
    ) -> Vec<Result<FetchedKey, ClientError>> {
        // The description once, before the fetches share it (each would otherwise ask).
        let _ = self.cluster_info().await;
        futures::future::join_all(targets.iter().map(|t| self.fetch(*t, epoch))).await
    }
}

/// The shortest time between two refreshes of the cluster description.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// Adds to `known` what `fresh` has that is new (see [`MinerClient::refresh_cluster_info`]).
pub fn merge_cluster_info(
    known: &mut pb::ClusterInfo,
    fresh: pb::ClusterInfo,
) -> Result<(), String> {
    if fresh.gatekeeper_id != known.gatekeeper_id {
        return Err(format!(
            "a node described another cluster (gatekeeper id {}, this client knows {})",
            hex::encode(&fresh.gatekeeper_id),
            hex::encode(&known.gatekeeper_id)
        ));
    }
    for e in fresh.epochs {
        if !known.epochs.iter().any(|k| k.epoch == e.epoch) {
            known.epochs.push(e);
        }
    }
    known.epochs.sort_by_key(|e| e.epoch);
    if fresh.current_epoch > known.current_epoch {
        known.current_epoch = fresh.current_epoch;
        known.cluster_signing_public_key = fresh.cluster_signing_public_key;
    }
    known.min_epoch = known.min_epoch.max(fresh.min_epoch);
    known.members = fresh.members;
    Ok(())
}

/// A request carrying the caller's trace context (W3C `traceparent`), when the application uses
/// OpenTelemetry: the process's global propagator writes it (none is set by default, and then
/// nothing is added), so the node's server span continues the caller's trace.
fn traced<T>(message: T) -> tonic::Request<T> {
    struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);
    impl opentelemetry::propagation::Injector for Metadata<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                value.parse(),
            ) {
                self.0.insert(k, v);
            }
        }
    }
    let mut r = tonic::Request::new(message);
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(
            &opentelemetry::Context::current(),
            &mut Metadata(r.metadata_mut()),
        )
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RetryPolicy {
            rounds: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let waits: Vec<u128> = (0..6).map(|r| p.backoff(r).as_millis()).collect();
        assert_eq!(waits, [0, 100, 200, 400, 500, 500]);
    }

    #[test]
    fn errors_say_which_endpoint_did_what() {
        let e = ClientError::Exhausted {
            rounds: 2,
            failures: vec![
                EndpointFailure {
                    endpoint: "a:1".into(),
                    failure: Failure::Unreachable("connection refused".into()),
                },
                EndpointFailure {
                    endpoint: "b:2".into(),
                    failure: Failure::Refused {
                        code: tonic::Code::FailedPrecondition,
                        error_code: Some("NODE_SEALED".into()),
                        message: "this node is sealed for epoch 1".into(),
                    },
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "no endpoint could serve the request after 2 round(s): a:1 unreachable: connection \
             refused; b:2 refused: FailedPrecondition (NODE_SEALED): this node is sealed for epoch 1"
        );
        assert_eq!(e.error_code(), Some("NODE_SEALED"));
        let r = ClientError::Refused {
            endpoint: "b:2".into(),
            code: tonic::Code::PermissionDenied,
            error_code: Some("WORKER_NOT_ACTIVE".into()),
            message: "worker is slashed".into(),
        };
        assert_eq!(
            r.to_string(),
            "b:2 refused: PermissionDenied (WORKER_NOT_ACTIVE): worker is slashed"
        );
    }

    #[test]
    fn a_refresh_only_adds_epochs_and_never_changes_a_known_key_or_cluster() {
        let epoch = |e: u64, key: u8| pb::EpochInfo {
            epoch: e,
            cluster_signing_public_key: vec![key; 32],
            ..Default::default()
        };
        let mut known = pb::ClusterInfo {
            gatekeeper_id: vec![1; 32],
            current_epoch: 2,
            min_epoch: 1,
            epochs: vec![epoch(1, 1), epoch(2, 2)],
            cluster_signing_public_key: vec![2; 32],
            members: vec![],
        };
        // A node offering other keys for known epochs, a new epoch, an older current epoch.
        let fresh = pb::ClusterInfo {
            current_epoch: 3,
            min_epoch: 0,
            epochs: vec![epoch(1, 9), epoch(2, 9), epoch(3, 3)],
            cluster_signing_public_key: vec![3; 32],
            ..known.clone()
        };
        merge_cluster_info(&mut known, fresh).unwrap();
        let keys: Vec<(u64, u8)> = known
            .epochs
            .iter()
            .map(|e| (e.epoch, e.cluster_signing_public_key[0]))
            .collect();
        assert_eq!(keys, [(1, 1), (2, 2), (3, 3)]);
        assert_eq!((known.current_epoch, known.min_epoch), (3, 1));
        let older = pb::ClusterInfo {
            current_epoch: 1,
            ..known.clone()
        };
        merge_cluster_info(&mut known, older).unwrap();
        assert_eq!(known.current_epoch, 3);
        let other = pb::ClusterInfo {
            gatekeeper_id: vec![7; 32],
            ..known.clone()
        };
        let before = known.clone();
        assert!(merge_cluster_info(&mut known, other)
            .unwrap_err()
            .contains("another cluster"));
        assert_eq!(known, before);
    }

    #[test]
    fn a_transport_made_unavailable_is_unreachable_a_nodes_is_a_refusal() {
        let t = tonic::Status::unavailable("tcp connect error");
        assert!(matches!(status_failure(&t), Failure::Unreachable(_)));
        // The client's own timeout, as tonic reports it.
        let timeout = tonic::Status::cancelled("Timeout expired");
        assert!(matches!(status_failure(&timeout), Failure::Unreachable(_)));
        let mut n = tonic::Status::unavailable("no leader");
        n.metadata_mut()
            .insert("gatekeeper-error-code", "NO_LEADER".parse().unwrap());
        assert_eq!(
            status_failure(&n),
            Failure::Refused {
                code: tonic::Code::Unavailable,
                error_code: Some("NO_LEADER".into()),
                message: "no leader".into()
            }
        );
    }

    #[tokio::test]
    async fn every_endpoint_unreachable_is_exhausted_after_every_round() {
        // Two ports nothing listens on (bound then dropped).
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string()
        };
        let (a, b) = (free(), free());
        let c = MinerClient::new(
            vec![a.clone(), b.clone()],
            Sr25519Keypair::from_seed(&[1; 32]),
        )
        .allow_plaintext()
        .with_retry(RetryPolicy {
            rounds: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        });
        match c.fetch(KeyTarget::Worker, None).await.unwrap_err() {
            ClientError::Exhausted { rounds, failures } => {
                assert_eq!(rounds, 2);
                let eps: Vec<_> = failures.iter().map(|f| f.endpoint.clone()).collect();
                assert_eq!(eps, [a.clone(), b]);
                assert!(failures
                    .iter()
                    .all(|f| matches!(f.failure, Failure::Unreachable(_))));
            }
            e => panic!("{e}"),
        }
        let none = MinerClient::new(vec![], Sr25519Keypair::from_seed(&[1; 32]));
        assert!(matches!(
            none.fetch(KeyTarget::Worker, None).await.unwrap_err(),
            ClientError::Config(_)
        ));
        // A scheme in an endpoint is a settings error, not an unreachable node.
        let schemed = MinerClient::new(
            vec![format!("https://{a}")],
            Sr25519Keypair::from_seed(&[1; 32]),
        )
        .allow_plaintext();
        match schemed.fetch(KeyTarget::Worker, None).await.unwrap_err() {
            ClientError::Config(m) => assert!(m.contains("without a scheme"), "{m}"),
            e => panic!("{e}"),
        }
        // Neither a CA nor plaintext allowed: refused before anything is sent.
        let untrusting = MinerClient::new(vec![a], Sr25519Keypair::from_seed(&[1; 32]));
        match untrusting.fetch(KeyTarget::Worker, None).await.unwrap_err() {
            ClientError::Config(m) => assert!(m.contains("TLS"), "{m}"),
            e => panic!("{e}"),
        }
    }
}
