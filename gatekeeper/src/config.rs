//! Node configuration: a TOML file, every key overridable by `GATEKEEPER_<KEY>` env variables.
//!
//! Defaults and why (see also docs/operations.md):
//! * `election_timeout_min_ms = 1000`, `election_timeout_max_ms = 2000`,
//!   `heartbeat_interval_ms = 250`. openraft's own defaults (150–300 ms / 50 ms) are LAN-lab
//!   values; every append here waits for an fsync, which takes 1–10 ms on SSDs and can spike past
//!   100 ms on shared or network disks. openraft advises an election timeout of at least 10× the
//!   p99 append latency and a heartbeat under half the minimum timeout; 1 s tolerates 100 ms fsync
//!   spikes without spurious elections while failing over within a few seconds (Vault's default,
//!   with its performance multiplier of 5, is 5 s).
//! * `snapshot_logs_since_last = 5000`: a snapshot every 5000 applied entries keeps restarts and
//!   new members fast while the state (registry, epochs) stays small.
//! * `max_in_snapshot_log_to_keep = 100`: entries kept behind a snapshot so a briefly lagging
//!   follower catches up from the log instead of a full snapshot. Entries can be 1 MiB batches
//!   (a chain catching up): with 1000 (openraft's default) a node joining after a large chain
//!   fill was sent 700 MB of log instead of a snapshot and did not catch up within the join
//!   timeout (registry_bench).
//! * `max_stale_ms = 5000`: stale reads are refused by a node that has not heard from a leader
//!   for longer than this (20 heartbeats).
//! * `max_snapshot_bytes = 256 MiB`: a snapshot is the JSON of the whole state; a state at
//!   Phala's scale (~40,000 workers and sessions, a dozen members) is about 20 MiB, so this leaves
//!   ten times that, while bounding what a peer can make a node stage on disk and decode
//!   (`gatekeeper_raft::network::DEFAULT_MAX_SNAPSHOT_BYTES`).
//! * Listener limits (`node/listen.rs`): `raft_max_connections = 256` (peers keep one HTTP/2
//!   connection each; room for reconnects of a large cluster), `api_max_connections = 4096`
//!   (workers, operators, peers' share fetches), both far below the usual descriptor limit and
//!   leaving descriptors for storage; `max_concurrent_streams = 256` per connection (a follower
//!   forwards concurrent writes over one connection: the write benchmark runs 256 writers);
//!   HTTP/2 keepalive pings every 20 s answered within 20 s; TCP keepalive after 60 s; a new
//!   connection must send within `connection_handshake_timeout_ms = 10000` and any connection is
//!   closed after `connection_idle_timeout_ms = 120000` without a byte (pings keep live clients
//!   well under it); `rpc_timeout_ms = 120000` bounds any RPC (above admin join's 6 ×
//!   `request_timeout_ms` and a snapshot transfer's 60 s).

use crate::attestation::PolicyKind;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Development or production. Production refuses development-only features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Local development and tests.
    Development,
    /// Real deployments.
    Production,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every node setting. See the module docs for the reasoning behind the defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id; unique in the cluster, never reused.
    pub node_id: u64,
    /// Data directory (Raft log, state machine, snapshots).
    pub data_dir: PathBuf,
    /// Listen address of the cluster listener: RaftService and PeerService (host:port).
    pub raft_listen: String,
    /// Listen address of the key listener: KeyService (host:port).
    pub api_listen: String,
    /// Listen address of the admin listener: AdminService (host:port). Default: 127.0.0.1 with
    /// `api_listen`'s port + 1, so operators reach it only from the node's host unless configured.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// PEM bundle of the cluster CA: peers' client certificates on the cluster listener and
    /// peers' server certificates are verified against it; miners trust it for the key listener.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM chain of this node's certificate (SANs = its advertised hosts, CN = `node-<id>`): the
    /// server certificate of all three listeners and the client certificate towards peers.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file` (mode 0600).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// PEM bundle of the CA that issues operator certificates; default `tls_ca_file`.
    #[serde(default)]
    pub operator_ca_file: Option<PathBuf>,
    /// If not empty, only operator certificates with one of these names (CN or DNS SAN) may use
    /// the admin listener.
    #[serde(default)]
    pub operator_names: Vec<String>,
    /// Serve every listener in plaintext without client authentication. Development mode only,
    /// and only when set explicitly; TLS files must then be absent.
    #[serde(default)]
    pub plaintext: bool,
    /// TEST HOOK, development mode only: the leader appends proposals without checking who may
    /// make them, so tests can see every node refuse forged entries when it applies them.
    #[serde(default)]
    pub unchecked_proposals: bool,
    /// The audit log file (JSON lines, hash-chained; `gatekeeper audit verify`). Default: none
    /// in development, `<data_dir>/audit.log` in production.
    #[serde(default)]
    pub audit_path: Option<PathBuf>,
    /// Fail a request whose audit line cannot be written (fail-closed). Default: on in
    /// production, off in development.
    #[serde(default)]
    pub audit_required: Option<bool>,
    /// Raft address announced to peers; defaults to `raft_listen`.
    #[serde(default)]
    pub raft_advertise: Option<String>,
    /// API address announced to peers and clients; defaults to `api_listen`.
    #[serde(default)]
    pub api_advertise: Option<String>,
    /// Admin address announced to operators (a follower names the leader's when refusing a
    /// membership call); defaults to the admin listener's address.
    #[serde(default)]
    pub admin_advertise: Option<String>,
    /// Minimum election timeout.
    #[serde(default = "d_election_min")]
    pub election_timeout_min_ms: u64,
    /// Maximum election timeout.
    #[serde(default = "d_election_max")]
    pub election_timeout_max_ms: u64,
    /// Leader heartbeat interval.
    #[serde(default = "d_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// Build a snapshot every this many applied entries.
    #[serde(default = "d_snapshot")]
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind the latest snapshot.
    #[serde(default = "d_keep")]
    pub max_in_snapshot_log_to_keep: u64,
    /// Stale reads are refused after this long without leader contact.
    #[serde(default = "d_stale")]
    pub max_stale_ms: u64,
    /// Deadline for a forwarded write or a follower's read-index wait.
    #[serde(default = "d_request")]
    pub request_timeout_ms: u64,
    /// Enable `admin fault` (drills, tests). Refused in production mode.
    #[serde(default)]
    pub fault_hooks: bool,
    /// development | production.
    #[serde(default = "d_mode")]
    pub mode: Mode,
    /// text | json.
    #[serde(default = "d_log_format")]
    pub log_format: LogFormat,
    /// Enclave backend: `software` (development) or `gramine-sgx` (inside Gramine-SGX).
    #[serde(default = "d_enclave")]
    pub enclave: String,
    /// Where the enclave keeps its sealed state; default `<data_dir>/enclave`. For
    /// `gramine-sgx` this must be on Gramine's encrypted-files mount.
    #[serde(default)]
    pub enclave_dir: Option<PathBuf>,
    /// Gramine's attestation pseudo-file directory (`gramine-sgx` backend).
    #[serde(default = "d_attestation_dir")]
    pub gramine_attestation_dir: PathBuf,
    /// Let the software enclave run in production mode (loudly warned). Default false.
    #[serde(default)]
    pub allow_software_enclave_in_production: bool,
    /// Key file (as written by `gatekeeper keygen`) of the dev attestation key: the software
    /// enclave signs its evidence with it and the `dev` policy trusts it.
    #[serde(default)]
    pub dev_attestation_key_file: Option<PathBuf>,
    /// Evidence required from members asking for shares: none | dev | dcap.
    #[serde(default = "d_policy")]
    pub member_attestation: PolicyKind,
    /// Evidence required from workers asking for keys: none | dev | dcap.
    #[serde(default = "d_policy")]
    pub worker_attestation: PolicyKind,
    /// DCAP: allowed MRENCLAVE values (hex).
    #[serde(default)]
    pub allowed_mrenclave: Vec<String>,
    /// DCAP: allowed MRSIGNER values (hex).
    #[serde(default)]
    pub allowed_mrsigner: Vec<String>,
    /// DCAP: collateral (dcap-qvl `QuoteCollateralV3` JSON) used for quotes sent without their
    /// own. A PCCS URL source is not built yet.
    #[serde(default)]
    pub dcap_collateral_file: Option<PathBuf>,
    /// DCAP: worst acceptable TCB status.
    #[serde(default = "d_tcb")]
    pub min_tcb_status: String,
    /// Maximum age of dev evidence, seconds.
    #[serde(default = "d_evidence_age")]
    pub max_evidence_age_secs: u64,
    /// Requests whose timestamp is further than this from the node clock are refused; nonces are
    /// remembered for this long.
    #[serde(default = "d_window")]
    pub request_window_ms: u64,
    /// Read mode for serving keys: linearizable | stale.
    #[serde(default = "d_read_mode")]
    pub key_read_mode: String,
    /// Default rotation deadline.
    #[serde(default = "d_rotation_deadline")]
    pub rotation_deadline_ms: u64,
    /// How long `Join` waits for the new node to catch up and register evidence that passes
    /// the member policy before it gives up (the node is then removed, never made a voter).
    #[serde(default = "d_join_timeout")]
    pub join_timeout_ms: u64,
    /// WebSocket URL of a Substrate node to follow (`ws://` or `wss://`); none: no chain watcher
    /// (workers and clusters come only from the development path).
    #[serde(default)]
    pub chain_url: Option<String>,
    /// Event profile of the chain: `gatekeeper` (the Gatekeeper pallet) or `phala`.
    #[serde(default = "d_chain_profile")]
    pub chain_profile: String,
    /// How a cluster that has applied nothing of the chain starts: `storage` (read the registry
    /// maps at the latest finalized block, then follow events; the default) or `replay` (apply
    /// every block's events from `chain_start_block`).
    #[serde(default = "d_chain_bootstrap")]
    pub chain_bootstrap: String,
    /// With `chain_bootstrap = "replay"`: the first block applied (0: genesis).
    #[serde(default)]
    pub chain_start_block: u64,
    /// No new finalized block for this long: the chain is reported stalled and the watcher
    /// reconnects.
    #[serde(default = "d_chain_stall")]
    pub chain_stall_ms: u64,
    /// First reconnect delay (doubles per failure, with jitter).
    #[serde(default = "d_chain_reconnect_min")]
    pub chain_reconnect_min_ms: u64,
    /// Longest reconnect delay.
    #[serde(default = "d_chain_reconnect_max")]
    pub chain_reconnect_max_ms: u64,
    /// Deadline of each RPC call to the chain node.
    #[serde(default = "d_chain_rpc_timeout")]
    pub chain_rpc_timeout_ms: u64,
    /// host:port of an HTTP listener serving Prometheus metrics at `/metrics`; none: off.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// OTLP/gRPC endpoint (`http://collector:4317`) to export traces to; none: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Largest snapshot this node receives or sends, bytes.
    #[serde(default = "d_max_snapshot")]
    pub max_snapshot_bytes: u64,
    /// Open connections at most on the Raft listener.
    #[serde(default = "d_raft_conns")]
    pub raft_max_connections: usize,
    /// Open connections at most on the API listener.
    #[serde(default = "d_api_conns")]
    pub api_max_connections: usize,
    /// Open connections at most on the Raft listener from one source address (IPv6: one /64):
    /// what a compromised member (or a host holding one member's certificate) can take.
    #[serde(default = "d_raft_conns_per_source")]
    pub raft_max_connections_per_source: usize,
    /// Open connections at most on the key listener from one source address (IPv6: one /64).
    /// A TLS handshake there needs no credential: without this, one host could hold every
    /// connection of `api_max_connections`.
    #[serde(default = "d_api_conns_per_source")]
    pub api_max_connections_per_source: usize,
    /// Key requests in service at once on the key listener, over all connections (more wait).
    /// Bounds the memory unauthenticated callers can make the node hold in request bodies.
    #[serde(default = "d_api_requests")]
    pub api_max_requests: usize,
    /// Key requests in service at once from one source address (IPv6: one /64); more are
    /// refused with `SOURCE_BUSY`. Keeps one client from holding every slot of
    /// `api_max_requests`.
    #[serde(default = "d_api_requests_per_source")]
    pub api_max_requests_per_source: usize,
    /// Open connections at most on the admin listener.
    #[serde(default = "d_admin_conns")]
    pub admin_max_connections: usize,
    /// HTTP/2 streams (and requests in service) per connection, both listeners.
    #[serde(default = "d_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval on every server connection.
    #[serde(default = "d_h2_ping")]
    pub http2_keepalive_interval_ms: u64,
    /// An unanswered PING closes the connection after this long.
    #[serde(default = "d_h2_ping_timeout")]
    pub http2_keepalive_timeout_ms: u64,
    /// TCP keepalive idle time on accepted sockets.
    #[serde(default = "d_tcp_keepalive")]
    pub tcp_keepalive_ms: u64,
    /// A new connection that sends nothing for this long is closed.
    #[serde(default = "d_handshake")]
    pub connection_handshake_timeout_ms: u64,
    /// A connection that sends nothing for this long is closed.
    #[serde(default = "d_idle")]
    pub connection_idle_timeout_ms: u64,
    /// Longest RPC served, either listener.
    #[serde(default = "d_rpc_timeout")]
    pub rpc_timeout_ms: u64,
}

fn d_max_snapshot() -> u64 {
    gatekeeper_raft::network::DEFAULT_MAX_SNAPSHOT_BYTES
}
fn d_raft_conns() -> usize {
    256
}
fn d_api_conns() -> usize {
    4096
}
fn d_raft_conns_per_source() -> usize {
    32
}
fn d_api_conns_per_source() -> usize {
    128
}
fn d_api_requests() -> usize {
    256
}
fn d_api_requests_per_source() -> usize {
    64
}
fn d_admin_conns() -> usize {
    64
}
fn d_streams() -> u32 {
    256
}
fn d_h2_ping() -> u64 {
    20_000
}
fn d_h2_ping_timeout() -> u64 {
    20_000
}
fn d_tcp_keepalive() -> u64 {
    60_000
}
fn d_handshake() -> u64 {
    10_000
}
fn d_idle() -> u64 {
    120_000
}
fn d_rpc_timeout() -> u64 {
    120_000
}

fn d_chain_bootstrap() -> String {
    "storage".into()
}

fn d_chain_profile() -> String {
    "gatekeeper".into()
}
fn d_chain_stall() -> u64 {
    60_000
}
fn d_chain_reconnect_min() -> u64 {
    500
}
fn d_chain_reconnect_max() -> u64 {
    30_000
}
fn d_chain_rpc_timeout() -> u64 {
    10_000
}

fn d_attestation_dir() -> PathBuf {
    PathBuf::from("/dev/attestation")
}
fn d_enclave() -> String {
    "software".into()
}
fn d_policy() -> PolicyKind {
    PolicyKind::None
}
fn d_tcb() -> String {
    "UpToDate".into()
}
fn d_evidence_age() -> u64 {
    600
}
fn d_window() -> u64 {
    60_000
}
fn d_read_mode() -> String {
    "linearizable".into()
}
/// Default time a rotation's dealing may take (`rotation_deadline_ms`; also what
/// `gatekeeper admin rotate` signs when no `--deadline-ms` is given).
pub const DEFAULT_ROTATION_DEADLINE_MS: u64 = 60_000;

fn d_rotation_deadline() -> u64 {
    DEFAULT_ROTATION_DEADLINE_MS
}
fn d_join_timeout() -> u64 {
    30_000
}

fn d_election_min() -> u64 {
    1000
}
fn d_election_max() -> u64 {
    2000
}
fn d_heartbeat() -> u64 {
    250
}
fn d_snapshot() -> u64 {
    5000
}
fn d_keep() -> u64 {
    100
}
fn d_stale() -> u64 {
    5000
}
fn d_request() -> u64 {
    10_000
}
fn d_mode() -> Mode {
    Mode::Development
}
fn d_log_format() -> LogFormat {
    LogFormat::Text
}

/// Every key, for environment overrides (`GATEKEEPER_` + upper case).
pub const KEYS: &[&str] = &[
    "node_id",
    "data_dir",
    "raft_listen",
    "api_listen",
    "admin_listen",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "operator_ca_file",
    "operator_names",
    "plaintext",
    "unchecked_proposals",
    "audit_path",
    "audit_required",
    "raft_advertise",
    "api_advertise",
    "admin_advertise",
    "election_timeout_min_ms",
    "election_timeout_max_ms",
    "heartbeat_interval_ms",
    "snapshot_logs_since_last",
    "max_in_snapshot_log_to_keep",
    "max_stale_ms",
    "request_timeout_ms",
    "fault_hooks",
    "mode",
    "log_format",
    "enclave",
    "enclave_dir",
    "gramine_attestation_dir",
    "allow_software_enclave_in_production",
    "dev_attestation_key_file",
    "member_attestation",
    "worker_attestation",
    "allowed_mrenclave",
    "allowed_mrsigner",
    "dcap_collateral_file",
    "min_tcb_status",
    "max_evidence_age_secs",
    "request_window_ms",
    "key_read_mode",
    "rotation_deadline_ms",
    "join_timeout_ms",
    "chain_url",
    "chain_profile",
    "chain_bootstrap",
    "chain_start_block",
    "chain_stall_ms",
    "chain_reconnect_min_ms",
    "chain_reconnect_max_ms",
    "chain_rpc_timeout_ms",
    "metrics_listen",
    "otlp_endpoint",
    "max_snapshot_bytes",
    "raft_max_connections",
    "api_max_connections",
    "raft_max_connections_per_source",
    "api_max_connections_per_source",
    "admin_max_connections",
    "api_max_requests",
    "api_max_requests_per_source",
    "max_concurrent_streams",
    "http2_keepalive_interval_ms",
    "http2_keepalive_timeout_ms",
    "tcp_keepalive_ms",
    "connection_handshake_timeout_ms",
    "connection_idle_timeout_ms",
    "rpc_timeout_ms",
];

fn env_value(raw: &str) -> toml::Value {
    if raw.starts_with('[') {
        if let Ok(t) = format!("v = {raw}").parse::<toml::Table>() {
            if let Some(v) = t.get("v") {
                return v.clone();
            }
        }
    }
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_string()),
    }
}

/// `GATEKEEPER_*` variables the tools read (the operator and miner CLI, the dev chain, the
/// image and test scripts). A node ignores them; every other `GATEKEEPER_*` variable must name a
/// node setting ([`check_env_names`]).
pub const TOOL_VARIABLES: &[&str] = &[
    "GATEKEEPER_ENDPOINT",
    "GATEKEEPER_ADMIN_CA",
    "GATEKEEPER_ADMIN_CERT",
    "GATEKEEPER_ADMIN_KEY",
    "GATEKEEPER_ADMIN_SERVER_NAME",
    "GATEKEEPER_ADMIN_PLAINTEXT",
    "GATEKEEPER_MINER_CA",
    "GATEKEEPER_DEVCHAIN_URL",
    "GATEKEEPER_IMAGE",
    "GATEKEEPER_IMAGE_PROFILE",
    "GATEKEEPER_BASE_IMAGE",
    "GATEKEEPER_SKIP_IMAGE_BUILD",
    "GATEKEEPER_WRITE_VECTORS",
    "GATEKEEPER_TEST_BIN",
    "GATEKEEPER_TEST_DEVCHAIN_BIN",
];

/// Refuses `GATEKEEPER_*` variable names that are neither a node setting (`GATEKEEPER_` + the
/// key in upper case) nor a tool's ([`TOOL_VARIABLES`]): a typo in the environment is refused as
/// a typo in the TOML file is, instead of silently leaving the default in place. The message
/// names each unknown variable and, when one is close, the setting it probably meant.
/// The TOML sections a config may group settings in, and the flat setting each of their keys
/// is: `[tls] ca_file` is `tls_ca_file` (and `GATEKEEPER_TLS_CA_FILE`).
pub const SECTIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "tls",
        &[
            ("ca_file", "tls_ca_file"),
            ("cert_file", "tls_cert_file"),
            ("key_file", "tls_key_file"),
            ("operator_ca_file", "operator_ca_file"),
            ("operator_names", "operator_names"),
            ("plaintext", "plaintext"),
        ],
    ),
    (
        "telemetry",
        &[
            ("metrics_listen", "metrics_listen"),
            ("otlp_endpoint", "otlp_endpoint"),
            ("log_format", "log_format"),
        ],
    ),
    (
        "audit",
        &[("path", "audit_path"), ("required", "audit_required")],
    ),
    (
        "chain",
        &[
            ("url", "chain_url"),
            ("profile", "chain_profile"),
            ("bootstrap", "chain_bootstrap"),
            ("start_block", "chain_start_block"),
            ("stall_ms", "chain_stall_ms"),
            ("reconnect_min_ms", "chain_reconnect_min_ms"),
            ("reconnect_max_ms", "chain_reconnect_max_ms"),
            ("rpc_timeout_ms", "chain_rpc_timeout_ms"),
        ],
    ),
];

/// Moves the settings of the [`SECTIONS`] to their flat names. A key a section does not have,
/// or a setting given both in a section and flat, is refused. Pure.
pub fn flatten_sections(mut table: toml::Table) -> Result<toml::Table> {
    for (section, keys) in SECTIONS {
        let Some(value) = table.remove(*section) else {
            continue;
        };
        let toml::Value::Table(inner) = value else {
            bail!("[{section}] must be a table of settings");
        };
        for (k, v) in inner {
            let Some((_, flat)) = keys.iter().find(|(name, _)| *name == k) else {
                bail!(
                    "unknown setting {k:?} in [{section}] (it has: {})",
                    keys.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                );
            };
            if table.contains_key(*flat) {
                bail!("{flat} is set twice: as {section}.{k} and as {flat}; keep one");
            }
            table.insert((*flat).to_string(), v);
        }
    }
    Ok(table)
}

pub fn check_env_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut unknown: Vec<String> = Vec::new();
    for name in names {
        let Some(key) = name.strip_prefix("GATEKEEPER_") else {
            continue;
        };
        let known = KEYS.iter().any(|k| k.to_uppercase() == key);
        if known || TOOL_VARIABLES.contains(&name) {
            continue;
        }
        let lower = key.to_lowercase();
        let near = KEYS
            .iter()
            .filter(|k| {
                k.starts_with(&lower) || lower.starts_with(*k) || edit_distance(k, &lower) <= 2
            })
            .map(|k| format!("GATEKEEPER_{}", k.to_uppercase()))
            .next();
        unknown.push(match near {
            Some(n) => format!("{name} (did you mean {n}?)"),
            None => name.to_string(),
        });
    }
    if !unknown.is_empty() {
        bail!(
            "unknown environment variable{}: {} — not a node setting (docs/operations.md, \
             \"Settings\") nor one of the tools' own variables",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", ")
        );
    }
    Ok(())
}

/// What changed between the addresses this node advertises now and those its membership entry
/// holds (`member`: raft, api; `None` when it is not a member): one line per address that
/// differs. The membership is what peers and clients dial, and a restart with a new
/// `raft_advertise` or `api_advertise` does not change it: it takes a `leave` and a `join`.
pub fn advertised_drift(raft: &str, api: &str, member: Option<(&str, &str)>) -> Vec<String> {
    let Some((m_raft, m_api)) = member else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if raft != m_raft {
        out.push(format!(
            "this node advertises Raft address {raft} but the membership holds {m_raft} (peers dial that)"
        ));
    }
    if api != m_api {
        out.push(format!(
            "this node advertises API address {api} but the membership holds {m_api} (clients are told that)"
        ));
    }
    out
}

/// Levenshtein distance (for suggestions; settings are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl NodeConfig {
    /// [`NodeConfig::load`] from this process's environment, after refusing unknown
    /// `GATEKEEPER_*` variables ([`check_env_names`]).
    pub fn load_from_process(path: Option<&Path>) -> Result<NodeConfig> {
        let names: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect();
        check_env_names(names.iter().map(String::as_str))?;
        NodeConfig::load(path, |k| std::env::var(k).ok())
    }

    /// Loads `path` (if given), applies `GATEKEEPER_*` overrides from `env`, and validates.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<NodeConfig> {
        let table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("config {} is not valid TOML", p.display()))?
            }
            None => toml::Table::new(),
        };
        let mut table = flatten_sections(table)?;
        for key in KEYS {
            let var = format!("GATEKEEPER_{}", key.to_uppercase());
            if let Some(v) = env(&var) {
                table.insert((*key).to_string(), env_value(&v));
            }
        }
        let cfg: NodeConfig = toml::Value::Table(table)
            .try_into()
            .context("invalid node configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if let Some(e) = &self.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                bail!("otlp_endpoint {e:?} must be a URL such as http://collector:4317");
            }
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            bail!("election_timeout_min_ms must be below election_timeout_max_ms");
        }
        if self.heartbeat_interval_ms * 2 > self.election_timeout_min_ms {
            bail!("heartbeat_interval_ms must be at most half of election_timeout_min_ms");
        }
        if self.mode == Mode::Production && self.fault_hooks {
            bail!("fault_hooks cannot be enabled in production mode");
        }
        match self.enclave.as_str() {
            "software" => {
                if self.mode == Mode::Production && !self.allow_software_enclave_in_production {
                    bail!(
                        "the software enclave keeps secrets in plain process memory; it is refused \
                         in production mode unless allow_software_enclave_in_production = true"
                    );
                }
            }
            "gramine-sgx" => {
                if self.member_attestation == PolicyKind::Dev
                    || self.worker_attestation == PolicyKind::Dev
                {
                    bail!("the gramine-sgx backend produces DCAP quotes, not dev attestations");
                }
            }
            other => bail!("unknown enclave backend {other:?} (software | gramine-sgx)"),
        }
        if self.mode == Mode::Production {
            for (key, kind) in [
                ("member_attestation", self.member_attestation),
                ("worker_attestation", self.worker_attestation),
            ] {
                if kind != PolicyKind::Dcap {
                    bail!(
                        "{key} = {:?} is for development only: production mode requires \
                         {key} = \"dcap\" (with \"none\" any registration passes, so any \
                         caller could be dealt a share or issued keys)",
                        policy_name(kind)
                    );
                }
            }
        }
        let uses_dev = self.member_attestation == PolicyKind::Dev
            || self.worker_attestation == PolicyKind::Dev;
        if uses_dev && self.dev_attestation_key_file.is_none() {
            bail!("the dev attestation policy needs dev_attestation_key_file");
        }
        if !["linearizable", "stale"].contains(&self.key_read_mode.as_str()) {
            bail!("key_read_mode must be linearizable or stale");
        }
        self.chain_profile()?;
        let bootstrap = self.chain_bootstrap()?;
        if bootstrap == crate::chain::Bootstrap::Storage && self.chain_start_block != 0 {
            bail!(
                "chain_start_block applies only with chain_bootstrap = \"replay\" (a storage \
                 bootstrap starts at the latest finalized block)"
            );
        }
        if let Some(url) = &self.chain_url {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                bail!("chain_url must be a ws:// or wss:// URL: {url:?}");
            }
        }
        if self.chain_reconnect_min_ms == 0
            || self.chain_reconnect_min_ms > self.chain_reconnect_max_ms
        {
            bail!("chain_reconnect_min_ms must be at least 1 and at most chain_reconnect_max_ms");
        }
        if self.join_timeout_ms == 0 {
            bail!("join_timeout_ms must be at least 1 (a joining node needs time to catch up)");
        }
        if self.rotation_deadline_ms == 0 {
            bail!("rotation_deadline_ms must be at least 1 (a rotation needs time to deal)");
        }
        if self.chain_stall_ms == 0 || self.chain_rpc_timeout_ms == 0 {
            bail!("chain_stall_ms and chain_rpc_timeout_ms must be at least 1");
        }
        self.validate_limits()?;
        self.validate_tls()?;
        for m in self.allowed_mrenclave.iter().chain(&self.allowed_mrsigner) {
            match hex::decode(m) {
                Ok(b) if b.len() == 32 => {}
                _ => bail!("allowed MRENCLAVE/MRSIGNER values must be 32 bytes of hex: {m:?}"),
            }
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<()> {
        let files = [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        if self.audit_is_required() && self.audit_file().is_none() {
            bail!("audit_required = true needs audit_path");
        }
        if self.unchecked_proposals && self.mode == Mode::Production {
            bail!(
                "unchecked_proposals = true is a development test hook: production mode refuses \
                 it"
            );
        }
        if self.plaintext {
            if self.mode == Mode::Production {
                bail!(
                    "plaintext = true is for development only: production mode needs \
                     tls_ca_file, tls_cert_file and tls_key_file"
                );
            }
            let set: Vec<&str> = files
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| *k)
                .chain(self.operator_ca_file.as_ref().map(|_| "operator_ca_file"))
                .chain((!self.operator_names.is_empty()).then_some("operator_names"))
                .collect();
            if !set.is_empty() {
                bail!(
                    "plaintext = true but {} {} set: choose TLS or plaintext",
                    set.join(", "),
                    if set.len() == 1 { "is" } else { "are" }
                );
            }
            return Ok(());
        }
        let missing: Vec<&str> = files
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !missing.is_empty() {
            bail!(
                "TLS needs tls_ca_file, tls_cert_file and tls_key_file ({} missing; \
                 `gatekeeper certs` makes them). For development without TLS set \
                 plaintext = true",
                missing.join(", ")
            );
        }
        let shared_ca =
            self.operator_ca_file.is_none() || self.operator_ca_file == self.tls_ca_file;
        if self.mode == Mode::Production && shared_ca && self.operator_names.is_empty() {
            bail!(
                "in production mode operators need their own CA (operator_ca_file, not the \
                 cluster CA) or an allowlist (operator_names): otherwise any certificate of the \
                 cluster CA could use the admin listener"
            );
        }
        if let Some(a) = &self.admin_listen {
            if a.parse::<std::net::SocketAddr>().is_err() {
                bail!("admin_listen {a:?} is not a host:port socket address");
            }
        }
        Ok(())
    }

    /// The admin listener's address: `admin_listen`, or 127.0.0.1 with `api_listen`'s port + 1.
    pub fn admin_listen(&self) -> Result<String> {
        if let Some(a) = &self.admin_listen {
            return Ok(a.clone());
        }
        let port = self
            .api_listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .and_then(|p| p.checked_add(1))
            .with_context(|| {
                format!(
                    "admin_listen is not set and api_listen {:?} has no port to derive it from",
                    self.api_listen
                )
            })?;
        Ok(format!("127.0.0.1:{port}"))
    }

    /// The admin address operators use: `admin_advertise`, else [`NodeConfig::admin_listen`].
    pub fn admin_address(&self) -> Result<String> {
        match &self.admin_advertise {
            Some(a) => Ok(a.clone()),
            None => self.admin_listen(),
        }
    }

    /// The admin listener's CA bundle: `operator_ca_file`, else `tls_ca_file`.
    pub fn operator_ca(&self) -> Option<&Path> {
        self.operator_ca_file
            .as_deref()
            .or(self.tls_ca_file.as_deref())
    }

    fn validate_limits(&self) -> Result<()> {
        if self.max_snapshot_bytes < 1 << 20 {
            bail!("max_snapshot_bytes must be at least 1048576 (1 MiB)");
        }
        if self.raft_max_connections < 8
            || self.api_max_connections < 8
            || self.admin_max_connections < 8
        {
            bail!(
                "raft_max_connections, api_max_connections and admin_max_connections must be \
                 at least 8"
            );
        }
        if self.raft_max_connections_per_source == 0 || self.api_max_connections_per_source == 0 {
            bail!(
                "raft_max_connections_per_source and api_max_connections_per_source must be at \
                 least 1"
            );
        }
        if self.api_max_requests == 0 || self.api_max_requests_per_source == 0 {
            bail!("api_max_requests and api_max_requests_per_source must be at least 1");
        }
        if self.max_concurrent_streams == 0 {
            bail!("max_concurrent_streams must be at least 1");
        }
        if self.http2_keepalive_interval_ms == 0
            || self.http2_keepalive_timeout_ms == 0
            || self.tcp_keepalive_ms < 1000
            || self.connection_handshake_timeout_ms == 0
        {
            bail!(
                "http2_keepalive_interval_ms, http2_keepalive_timeout_ms and \
                 connection_handshake_timeout_ms must be at least 1, tcp_keepalive_ms at least 1000"
            );
        }
        if self.connection_idle_timeout_ms
            <= self.http2_keepalive_interval_ms + self.http2_keepalive_timeout_ms
        {
            bail!(
                "connection_idle_timeout_ms must exceed http2_keepalive_interval_ms + \
                 http2_keepalive_timeout_ms, or live idle clients would be closed between pings"
            );
        }
        if self.rpc_timeout_ms <= self.join_timeout_ms + 2 * self.request_timeout_ms
            || self.rpc_timeout_ms < 60_000
        {
            bail!(
                "rpc_timeout_ms must exceed join_timeout_ms + 2 × request_timeout_ms (an admin \
                 join waits that long) and be at least 60000 (a snapshot transfer's deadline)"
            );
        }
        Ok(())
    }

    /// The configured event profile.
    pub fn chain_profile(&self) -> Result<crate::chain::Profile> {
        match self.chain_profile.as_str() {
            "gatekeeper" => Ok(crate::chain::Profile::Gatekeeper),
            "phala" => Ok(crate::chain::Profile::Phala),
            other => bail!("chain_profile must be gatekeeper or phala, not {other:?}"),
        }
    }

    /// How the chain watcher starts a cluster that has no chain cursor.
    pub fn chain_bootstrap(&self) -> Result<crate::chain::Bootstrap> {
        match self.chain_bootstrap.as_str() {
            "storage" => Ok(crate::chain::Bootstrap::Storage),
            "replay" => Ok(crate::chain::Bootstrap::Replay),
            other => bail!("chain_bootstrap must be storage or replay, not {other:?}"),
        }
    }

    /// The chain watcher's settings, when a chain is configured.
    pub fn chain_settings(&self) -> Option<crate::chain::ChainSettings> {
        let url = self.chain_url.clone()?;
        Some(crate::chain::ChainSettings {
            url,
            profile: self.chain_profile().ok()?,
            bootstrap: self.chain_bootstrap().ok()?,
            start_block: self.chain_start_block,
            stall: Duration::from_millis(self.chain_stall_ms),
            reconnect_min: Duration::from_millis(self.chain_reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.chain_reconnect_max_ms),
            rotation_deadline_ms: self.rotation_deadline_ms,
            rpc_timeout: Duration::from_millis(self.chain_rpc_timeout_ms),
        })
    }

    /// The Raft address peers use.
    pub fn raft_address(&self) -> String {
        self.raft_advertise
            .clone()
            .unwrap_or_else(|| self.raft_listen.clone())
    }

    /// The API address clients use.
    pub fn api_address(&self) -> String {
        self.api_advertise
            .clone()
            .unwrap_or_else(|| self.api_listen.clone())
    }

    /// The openraft configuration these settings give.
    pub fn raft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: "gatekeeper".into(),
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            heartbeat_interval: self.heartbeat_interval_ms,
            install_snapshot_timeout: 60_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            ..Default::default()
        }
    }

    /// The audit log file in effect (see `audit_path`).
    pub fn audit_file(&self) -> Option<PathBuf> {
        self.audit_path
            .clone()
            .or_else(|| (self.mode == Mode::Production).then(|| self.data_dir.join("audit.log")))
    }

    /// Whether a request fails when its audit line cannot be written (see `audit_required`).
    pub fn audit_is_required(&self) -> bool {
        self.audit_required.unwrap_or(self.mode == Mode::Production)
    }

    /// The enclave's directory.
    pub fn enclave_dir(&self) -> PathBuf {
        self.enclave_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("enclave"))
    }

    /// Request deadline.
    pub fn join_timeout(&self) -> Duration {
        Duration::from_millis(self.join_timeout_ms)
    }

    /// `request_timeout_ms` as a Duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

fn policy_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::None => "none",
        PolicyKind::Dev => "dev",
        PolicyKind::Dcap => "dcap",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sections_group_settings_under_their_flat_names() {
        let t: toml::Table = r#"
            node_id = 1
            [tls]
            ca_file = "/etc/gk/ca.pem"
            plaintext = false
            [telemetry]
            otlp_endpoint = "http://collector:4317"
            [audit]
            path = "/var/log/gk/audit.log"
            required = true
            [chain]
            url = "ws://chain:9944"
        "#
        .parse()
        .unwrap();
        let flat = flatten_sections(t).unwrap();
        assert_eq!(flat["tls_ca_file"].as_str(), Some("/etc/gk/ca.pem"));
        assert_eq!(flat["plaintext"].as_bool(), Some(false));
        assert_eq!(
            flat["otlp_endpoint"].as_str(),
            Some("http://collector:4317")
        );
        assert_eq!(flat["audit_path"].as_str(), Some("/var/log/gk/audit.log"));
        assert_eq!(flat["audit_required"].as_bool(), Some(true));
        assert_eq!(flat["chain_url"].as_str(), Some("ws://chain:9944"));
        assert!(!flat.contains_key("tls") && !flat.contains_key("audit"));
        for (section, keys) in SECTIONS {
            for (k, flat) in *keys {
                assert!(
                    KEYS.contains(flat),
                    "[{section}] {k} maps to unknown {flat}"
                );
            }
        }
    }

    #[test]
    fn a_section_refuses_unknown_keys_and_settings_given_twice() {
        let t: toml::Table = "[tls]\nca = \"x\"\n".parse().unwrap();
        let e = flatten_sections(t).unwrap_err().to_string();
        assert!(
            e.contains("unknown setting \"ca\" in [tls]") && e.contains("ca_file"),
            "{e}"
        );
        let t: toml::Table = "tls_ca_file = \"a\"\n[tls]\nca_file = \"b\"\n"
            .parse()
            .unwrap();
        let e = flatten_sections(t).unwrap_err().to_string();
        assert!(e.contains("tls_ca_file is set twice"), "{e}");
        let t: toml::Table = "tls = 3\n".parse().unwrap();
        assert!(flatten_sections(t)
            .unwrap_err()
            .to_string()
            .contains("must be a table"));
    }

    use super::*;
    use std::collections::HashMap;

    fn env(map: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn a_changed_advertised_address_is_reported_against_the_membership() {
        assert!(advertised_drift("a:1", "a:2", Some(("a:1", "a:2"))).is_empty());
        assert!(advertised_drift("a:1", "a:2", None).is_empty());
        let d = advertised_drift("b:1", "a:2", Some(("a:1", "a:2")));
        assert_eq!(d.len(), 1);
        assert!(
            d[0].contains("Raft address b:1") && d[0].contains("holds a:1"),
            "{d:?}"
        );
        assert_eq!(
            advertised_drift("b:1", "b:2", Some(("a:1", "a:2"))).len(),
            2
        );
    }

    #[test]
    fn unknown_gatekeeper_variables_are_refused_and_the_near_setting_named() {
        check_env_names([
            "PATH",
            "GATEKEEPER_NODE_ID",
            "GATEKEEPER_ELECTION_TIMEOUT_MIN_MS",
            "GATEKEEPER_ADMIN_CA",
            "GATEKEEPER_MINER_CA",
        ])
        .unwrap();
        // Every setting's variable is known.
        let all: Vec<String> = KEYS
            .iter()
            .map(|k| format!("GATEKEEPER_{}", k.to_uppercase()))
            .collect();
        check_env_names(all.iter().map(String::as_str)).unwrap();
        let e = check_env_names(["GATEKEEPER_ELECTION_TIMEOUT_MIN"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GATEKEEPER_ELECTION_TIMEOUT_MIN (did you mean GATEKEEPER_ELECTION_TIMEOUT_MIN_MS?)"),
            "{e}"
        );
        let e = check_env_names([
            "GATEKEEPER_NODEID",
            "GATEKEEPER_node_id",
            "GATEKEEPER_XYZZY",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("GATEKEEPER_NODEID (did you mean GATEKEEPER_NODE_ID?)"),
            "{e}"
        );
        assert!(e.contains("GATEKEEPER_node_id"), "{e}");
        assert!(
            e.contains("GATEKEEPER_XYZZY") && !e.contains("GATEKEEPER_XYZZY (did"),
            "{e}"
        );
        assert_eq!(edit_distance("node_id", "nodeid"), 1);
    }

    #[test]
    fn env_only_config_with_defaults() {
        let c = NodeConfig::load(
            None,
            env(&[
                ("GATEKEEPER_NODE_ID", "3"),
                ("GATEKEEPER_DATA_DIR", "/tmp/x"),
                ("GATEKEEPER_RAFT_LISTEN", "127.0.0.1:1"),
                ("GATEKEEPER_API_LISTEN", "127.0.0.1:2"),
                ("GATEKEEPER_PLAINTEXT", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.election_timeout_min_ms, 1000);
        assert_eq!(c.heartbeat_interval_ms, 250);
        assert_eq!(c.mode, Mode::Development);
        assert_eq!(c.api_address(), "127.0.0.1:2");
    }

    #[test]
    fn listener_and_snapshot_limits_have_defaults_and_env_overrides() {
        let base = [
            ("GATEKEEPER_NODE_ID", "1"),
            ("GATEKEEPER_DATA_DIR", "/d"),
            ("GATEKEEPER_RAFT_LISTEN", "a:1"),
            ("GATEKEEPER_API_LISTEN", "a:2"),
            ("GATEKEEPER_PLAINTEXT", "true"),
        ];
        let c = NodeConfig::load(None, env(&base)).unwrap();
        assert_eq!(c.max_snapshot_bytes, 256 << 20);
        assert_eq!((c.raft_max_connections, c.api_max_connections), (256, 4096));
        assert_eq!(c.max_concurrent_streams, 256);
        assert_eq!(c.connection_idle_timeout_ms, 120_000);
        let mut v = base.to_vec();
        v.push(("GATEKEEPER_API_MAX_CONNECTIONS", "64"));
        v.push(("GATEKEEPER_MAX_SNAPSHOT_BYTES", "2097152"));
        let c = NodeConfig::load(None, env(&v)).unwrap();
        assert_eq!(c.api_max_connections, 64);
        assert_eq!(c.max_snapshot_bytes, 2 << 20);
    }

    #[test]
    fn production_refuses_the_development_attestation_policies() {
        let prod = [
            ("GATEKEEPER_NODE_ID", "1"),
            ("GATEKEEPER_DATA_DIR", "/d"),
            ("GATEKEEPER_RAFT_LISTEN", "a:1"),
            ("GATEKEEPER_API_LISTEN", "a:2"),
            ("GATEKEEPER_TLS_CA_FILE", "/c/ca.pem"),
            ("GATEKEEPER_TLS_CERT_FILE", "/c/node-1.pem"),
            ("GATEKEEPER_TLS_KEY_FILE", "/c/node-1.key"),
            ("GATEKEEPER_MODE", "production"),
            ("GATEKEEPER_ALLOW_SOFTWARE_ENCLAVE_IN_PRODUCTION", "true"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = prod.to_vec();
            v.extend_from_slice(extra);
            NodeConfig::load(None, env(&v))
        };
        // The default member_attestation = "none" is refused, naming the key and the fix.
        let e = with(&[]).unwrap_err().to_string();
        assert!(
            e.contains("member_attestation = \"none\" is for development only")
                && e.contains("\"dcap\""),
            "{e}"
        );
        let e = with(&[("GATEKEEPER_WORKER_ATTESTATION", "dcap")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("member_attestation"), "{e}");
        let e = with(&[("GATEKEEPER_MEMBER_ATTESTATION", "dcap")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker_attestation = \"none\""), "{e}");
        let e = with(&[
            ("GATEKEEPER_MEMBER_ATTESTATION", "dev"),
            ("GATEKEEPER_WORKER_ATTESTATION", "dcap"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("member_attestation = \"dev\""), "{e}");
        let e = with(&[
            ("GATEKEEPER_MEMBER_ATTESTATION", "dcap"),
            ("GATEKEEPER_WORKER_ATTESTATION", "dcap"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("operators need their own CA"), "{e}");
        let ok = with(&[
            ("GATEKEEPER_MEMBER_ATTESTATION", "dcap"),
            ("GATEKEEPER_WORKER_ATTESTATION", "dcap"),
            ("GATEKEEPER_OPERATOR_CA_FILE", "/o/ca.pem"),
        ])
        .unwrap();
        assert_eq!(ok.mode, Mode::Production);
        // Development keeps "none" as its default.
        let dev = NodeConfig::load(None, env(&prod[..7])).unwrap();
        assert_eq!(dev.member_attestation, PolicyKind::None);
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "node_id = 1\ndata_dir = \"/d\"\nraft_listen = \"a:1\"\napi_listen = \"a:2\"\nheartbeat_interval_ms = 100\nplaintext = true\n",
        )
        .unwrap();
        let c = NodeConfig::load(Some(&p), env(&[("GATEKEEPER_NODE_ID", "9")])).unwrap();
        assert_eq!(c.node_id, 9);
        assert_eq!(c.heartbeat_interval_ms, 100);
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let base = [
            ("GATEKEEPER_NODE_ID", "1"),
            ("GATEKEEPER_DATA_DIR", "/d"),
            ("GATEKEEPER_RAFT_LISTEN", "a:1"),
            ("GATEKEEPER_API_LISTEN", "a:2"),
            ("GATEKEEPER_PLAINTEXT", "true"),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut v = base.to_vec();
            v.push(extra);
            NodeConfig::load(None, env(&v)).unwrap_err().to_string()
        };
        assert!(with(("GATEKEEPER_HEARTBEAT_INTERVAL_MS", "900")).contains("heartbeat"));
        let mut prod = base.to_vec();
        prod.push(("GATEKEEPER_MODE", "production"));
        prod.push(("GATEKEEPER_FAULT_HOOKS", "true"));
        assert!(NodeConfig::load(None, env(&prod))
            .unwrap_err()
            .to_string()
            .contains("production"));
        let e = NodeConfig::load(None, env(&[base[0], base[1], base[4]])).unwrap_err();
        assert!(format!("{e:#}").contains("raft_listen"), "{e:#}");
        assert!(with(("GATEKEEPER_CHAIN_PROFILE", "kusama")).contains("chain_profile"));
        assert!(with(("GATEKEEPER_CHAIN_URL", "http://x:1")).contains("ws://"));
        assert!(with(("GATEKEEPER_CHAIN_RECONNECT_MIN_MS", "0")).contains("reconnect"));
        assert!(with(("GATEKEEPER_ROTATION_DEADLINE_MS", "0")).contains("rotation_deadline_ms"));
        assert!(with(("GATEKEEPER_MAX_SNAPSHOT_BYTES", "1000")).contains("max_snapshot_bytes"));
        assert!(with(("GATEKEEPER_RAFT_MAX_CONNECTIONS", "2")).contains("raft_max_connections"));
        assert!(with(("GATEKEEPER_MAX_CONCURRENT_STREAMS", "0")).contains("streams"));
        assert!(with(("GATEKEEPER_CONNECTION_IDLE_TIMEOUT_MS", "30000")).contains("must exceed"));
        assert!(with(("GATEKEEPER_RPC_TIMEOUT_MS", "50000")).contains("rpc_timeout_ms"));
        assert!(with(("GATEKEEPER_REQUEST_TIMEOUT_MS", "50000")).contains("rpc_timeout_ms"));
        assert!(with(("GATEKEEPER_JOIN_TIMEOUT_MS", "110000")).contains("rpc_timeout_ms"));
        let mut chain = base.to_vec();
        chain.push(("GATEKEEPER_CHAIN_URL", "ws://127.0.0.1:9944"));
        chain.push(("GATEKEEPER_CHAIN_PROFILE", "phala"));
        let s = NodeConfig::load(None, env(&chain))
            .unwrap()
            .chain_settings()
            .unwrap();
        assert_eq!(s.profile, crate::chain::Profile::Phala);
        assert_eq!(s.stall, Duration::from_secs(60));
    }

    #[test]
    fn tls_is_required_unless_plaintext_is_set_in_development() {
        let base = [
            ("GATEKEEPER_NODE_ID", "1"),
            ("GATEKEEPER_DATA_DIR", "/d"),
            ("GATEKEEPER_RAFT_LISTEN", "127.0.0.1:7000"),
            ("GATEKEEPER_API_LISTEN", "0.0.0.0:7100"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            NodeConfig::load(None, env(&v))
        };
        let e = with(&[]).unwrap_err().to_string();
        assert!(
            e.contains("tls_ca_file, tls_cert_file, tls_key_file missing")
                && e.contains("plaintext = true"),
            "{e}"
        );
        let e = with(&[("GATEKEEPER_TLS_CA_FILE", "/c/ca.pem")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("(tls_cert_file, tls_key_file missing"), "{e}");
        let tls = [
            ("GATEKEEPER_TLS_CA_FILE", "/c/ca.pem"),
            ("GATEKEEPER_TLS_CERT_FILE", "/c/n.pem"),
            ("GATEKEEPER_TLS_KEY_FILE", "/c/n.key"),
        ];
        let c = with(&tls).unwrap();
        assert_eq!(c.admin_listen().unwrap(), "127.0.0.1:7101");
        assert_eq!(c.operator_ca(), Some(Path::new("/c/ca.pem")));
        let mut op = tls.to_vec();
        op.push(("GATEKEEPER_OPERATOR_CA_FILE", "/o/ca.pem"));
        op.push(("GATEKEEPER_OPERATOR_NAMES", "[\"alice\"]"));
        op.push(("GATEKEEPER_ADMIN_LISTEN", "10.0.0.1:9000"));
        let c = with(&op).unwrap();
        assert_eq!(c.operator_ca(), Some(Path::new("/o/ca.pem")));
        assert_eq!(c.operator_names, vec!["alice".to_string()]);
        assert_eq!(c.admin_listen().unwrap(), "10.0.0.1:9000");
        let mut mixed = tls.to_vec();
        mixed.push(("GATEKEEPER_PLAINTEXT", "true"));
        let e = with(&mixed).unwrap_err().to_string();
        assert!(e.contains("choose TLS or plaintext"), "{e}");
        let e = with(&[
            ("GATEKEEPER_PLAINTEXT", "true"),
            ("GATEKEEPER_MODE", "production"),
            ("GATEKEEPER_ALLOW_SOFTWARE_ENCLAVE_IN_PRODUCTION", "true"),
            ("GATEKEEPER_MEMBER_ATTESTATION", "dcap"),
            ("GATEKEEPER_WORKER_ATTESTATION", "dcap"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("plaintext = true is for development only"),
            "{e}"
        );
        assert!(with(&[("GATEKEEPER_PLAINTEXT", "true")]).is_ok());
    }
}
