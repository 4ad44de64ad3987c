//! Talking to a node without the harness's process control: the gRPC [`admin_client`] for bulk
//! traffic, and the JSON views of the operator CLI's output (the contract of
//! `gatekeeper admin … --json`), parsed by [`AdminOutput::json`](crate::AdminOutput::json).

use crate::pb::admin_service_client::AdminServiceClient;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// PEM files a test client uses for TLS: the CA it trusts and, for mutual TLS, its certificate
/// and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCerts {
    /// CA bundle the server's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate and key (operator or node), if the listener needs one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Where and how to reach one listener: `host:port` and its TLS (`None`: plaintext).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// host:port.
    pub addr: String,
    /// TLS settings; `None` for a plaintext (development) node.
    pub tls: Option<ClientCerts>,
}

impl Target {
    /// A tonic endpoint for this target: `https://` verifying the server for its host with the
    /// CA (and presenting the identity), or `http://`.
    pub fn endpoint(&self) -> Result<tonic::transport::Endpoint> {
        let Some(tls) = &self.tls else {
            return tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                .with_context(|| format!("bad endpoint {}", self.addr));
        };
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        let host = self.addr.rsplit_once(':').map_or(&*self.addr, |(h, _)| h);
        let mut cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&tls.ca)?))
            .domain_name(host);
        if let Some((cert, key)) = &tls.identity {
            cfg = cfg.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        tonic::transport::Endpoint::from_shared(format!("https://{}", self.addr))
            .with_context(|| format!("bad endpoint {}", self.addr))?
            .tls_config(cfg)
            .with_context(|| format!("TLS settings for {}", self.addr))
    }

    /// A lazily connecting channel with a 2 s connect timeout and a 10 s deadline per call.
    /// Call it from inside a tokio runtime.
    pub fn channel(&self) -> Result<tonic::transport::Channel> {
        Ok(self
            .endpoint()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy())
    }
}

/// A gRPC `AdminService` client for `target` (a node's admin listener, see
/// [`Cluster::admin_target`](crate::Cluster::admin_target)), connecting lazily. Every call has a
/// 10 s deadline. Call it from inside a tokio runtime.
pub fn admin_client(target: &Target) -> Result<AdminServiceClient<tonic::transport::Channel>> {
    Ok(AdminServiceClient::new(target.channel()?))
}

// ---------------------------------------------------------------------------------------------
// Parsed CLI output (the contract of `gatekeeper admin … --json`).

/// One member, as printed by `admin status --json` / `admin members --json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Raft listener address.
    pub raft_address: String,
    /// API listener address.
    pub api_address: String,
    /// Voter (true) or learner (false).
    pub voter: bool,
}

/// `gatekeeper admin status --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Status {
    /// The answering node.
    pub node_id: u64,
    /// "leader", "follower", "candidate", "learner" or "uninitialized".
    pub role: String,
    /// The leader this node knows, if any.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied log index.
    pub last_applied: Option<u64>,
    /// Commit index.
    pub commit_index: Option<u64>,
    /// Membership as this node sees it.
    pub members: Vec<Member>,
    /// Audit sequence of the last applied command.
    pub audit_sequence: u64,
    /// The chain watcher's report (`None` when no chain is configured).
    #[serde(default)]
    pub chain: Option<ChainView>,
    /// `sealed`, `unsealing k/t` or `unsealed`.
    #[serde(default)]
    pub seal_status: String,
    /// The cluster id (hex), once initialised.
    #[serde(default)]
    pub gatekeeper_id: Option<String>,
    /// Epochs.
    #[serde(default)]
    pub epochs: Vec<EpochView>,
}

/// One epoch in `admin status --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct EpochView {
    /// Number.
    pub epoch: u64,
    /// `dealing`, `active`, `retired` or `aborted`.
    pub status: String,
    /// Master public key (hex).
    pub master_public_key: String,
}

/// The committed chain cursor in `admin status --json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CursorView {
    /// Block applied last.
    pub block: u64,
    /// Its hash (hex).
    pub block_hash: String,
    /// Event records of it applied.
    pub event_index: u32,
    /// Whether the block is fully applied.
    pub block_complete: bool,
}

/// An ignored chain event in `admin status --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct IgnoredView {
    /// Block.
    pub block: u64,
    /// Record index.
    pub index: u32,
    /// `Pallet.Event` or the decoded event's name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// `chain` in `admin status --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChainView {
    /// Chain URL.
    pub url: String,
    /// Event profile.
    pub profile: String,
    /// Watcher session up.
    pub connected: bool,
    /// No new finalized block within the stall bound.
    pub stalled: bool,
    /// Latest finalized block seen.
    pub finalized: u64,
    /// The committed cursor.
    pub cursor: CursorView,
    /// Finalized blocks not fully applied.
    pub lag_blocks: u64,
    /// Followed chain's genesis (hex).
    pub genesis_hash: String,
    /// Events applied.
    pub events_applied: u64,
    /// Events ignored.
    pub events_ignored: u64,
    /// Recent ignored events.
    pub recent_ignored: Vec<IgnoredView>,
    /// Last watcher error.
    pub last_error: String,
    /// Reconnections of this node's watcher.
    pub reconnects: u64,
    /// The bootstrap from chain storage, if the cluster started with one.
    pub bootstrap: Option<BootstrapView>,
}

/// `chain.bootstrap` in `admin status --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct BootstrapView {
    /// Block whose storage was read.
    pub block: u64,
    /// Storage entries applied.
    pub entries: u64,
    /// Whether it ended.
    pub complete: bool,
}

impl ChainView {
    /// Whether every event record of `block` is applied.
    pub fn applied_through(&self, block: u64) -> bool {
        self.cursor.block > block || (self.cursor.block == block && self.cursor.block_complete)
    }
}

impl Status {
    /// Ids of the voters in this node's view of the membership.
    pub fn voter_ids(&self) -> BTreeSet<u64> {
        self.members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect()
    }
    /// Ids of every member (voters and learners).
    pub fn member_ids(&self) -> BTreeSet<u64> {
        self.members.iter().map(|m| m.id).collect()
    }
}

/// `gatekeeper admin members --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct MembersView {
    /// The leader, if known.
    pub leader_id: Option<u64>,
    /// Committed membership.
    pub members: Vec<Member>,
}

/// `gatekeeper admin put KEY VALUE`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct PutAck {
    /// Log index at which the write was committed.
    pub log_index: u64,
    /// Audit sequence the write got.
    pub audit_sequence: u64,
    /// Leader that committed it.
    pub leader_id: u64,
}

/// `gatekeeper admin get KEY`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct GetReply {
    /// The value; `None` when the key was never written.
    pub value: Option<String>,
    /// Log index of the state the read was served from.
    pub applied_index: u64,
    /// Node that served the read.
    pub served_by: u64,
    /// For stale reads: milliseconds since the node last heard from a leader.
    pub staleness_ms: u64,
}

/// Read consistency of `admin get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed with a quorum (read-index).
    Linearizable,
    /// Served from the node's own applied state.
    Stale,
}

impl Consistency {
    /// The CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
        }
    }
}

/// A `GetWorkerKey` request for the current epoch from worker `w` to cluster `gk`, signed, with a
/// fresh nonce and recipient key and the current time (no attestation).
pub fn signed_worker_request(
    gk: &[u8],
    w: &keyring::Sr25519Keypair,
) -> gatekeeper_proto::v1::GetWorkerKeyRequest {
    use gatekeeper_proto::v1 as pb;
    use keyring::sign::{KeyRequest, KeyTarget};
    use keyring::{GatekeeperId, X25519SecretKey};
    use rand_core::{OsRng, RngCore};
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let recipient = X25519SecretKey::generate(&mut OsRng).public_key();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let body = KeyRequest {
        target: KeyTarget::Worker,
        gatekeeper_id: GatekeeperId::from_slice(gk).unwrap(),
        worker: w.public_key(),
        recipient,
        epoch: None,
        nonce,
        timestamp_ms: ts,
        evidence: None,
    };
    pb::GetWorkerKeyRequest {
        header: Some(pb::KeyRequestHeader {
            gatekeeper_id: gk.to_vec(),
            worker_public_key: w.public_key().as_bytes().to_vec(),
            recipient_public_key: recipient.as_bytes().to_vec(),
            epoch: None,
            nonce: nonce.to_vec(),
            timestamp_ms: ts,
            attestation: None,
        }),
        signature: body.sign(w).0.to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw gRPC calls and error codes (transport, per-source and authorization tests).

/// Sends and receives raw protobuf bytes, so one client can call any method of any service
/// (or send a request stream that never ends).
#[derive(Clone, Copy, Default, Debug)]
pub struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// The stable error code (`gatekeeper-error-code`) of a refused call; empty when it has none.
pub fn error_code(s: &tonic::Status) -> String {
    s.metadata()
        .get("gatekeeper-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}
