//! Helpers for tests that start real `gatekeeper` processes.
//!
//! * [`gatekeeper_bin`] finds (or builds) the workspace's `gatekeeper` binary.
//! * [`Cluster`] runs `gatekeeper node` processes on loopback ports, each with its own config,
//!   data dir and log files in a temporary directory, and drives them through the operator CLI
//!   (`gatekeeper admin --endpoint … <cmd>`, whose JSON output is parsed into [`Status`],
//!   [`MembersView`], [`PutAck`] and [`GetReply`]). Bulk traffic (write loads, benchmarks) goes
//!   through the gRPC client returned by [`admin_client`].
//!
//! Every wait is bounded ([`Cluster::wait_for`]); on timeout it panics with what it was waiting for,
//! the last observation, and the tail of every node's logs. Dropping a [`Cluster`] kills its
//! processes; when the dropping thread is panicking the temporary directory is kept and its path
//! printed, so a failed run can be inspected.
//!
//! Only one [`Cluster`] exists at a time in a process (a global lock, taken by
//! [`Cluster::start`]): `cargo test` runs tests on parallel threads, and several multi-node
//! clusters at once on a 2-core machine would turn election timeouts into flakiness.

#![forbid(unsafe_code)]

pub mod devchain;
pub use devchain::{DevChainOpts, DevChainProc};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use gatekeeper_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;

/// Default bound for every wait in the harness (leader election, catch-up, convergence). Generous:
/// tests run on a loaded 2-core CI machine against debug builds that fsync.
pub const WAIT: Duration = Duration::from_secs(30);
/// Default bound for one `gatekeeper admin` invocation.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for `admin join`, which waits until the new node has caught up (possibly by snapshot).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Poll interval of [`Cluster::wait_for`].
pub const POLL: Duration = Duration::from_millis(50);

/// Path of the `gatekeeper` binary from this workspace, built (once per test process) so it is
/// never stale: `cargo test -p gatekeeper-integration-tests` does not rebuild another package's
/// binary, and a leftover `target/<profile>/gatekeeper` from an older build would silently test
/// old code. Under cargo (`CARGO` set) `cargo build -p gatekeeper` runs once, a fast no-op when
/// up to date; outside cargo an existing binary is used as is.
///
/// `GATEKEEPER_TEST_BIN` overrides the path.
pub fn gatekeeper_bin() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    if let Some(p) = std::env::var_os("GATEKEEPER_TEST_BIN") {
        return Ok(PathBuf::from(p));
    }
    BUILT
        .get_or_init(|| locate_and_build("gatekeeper", "gatekeeper").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// Path of the `gatekeeper-devchain` binary from this workspace, built once per test process
/// like [`gatekeeper_bin`]. `GATEKEEPER_TEST_DEVCHAIN_BIN` overrides the path.
pub fn devchain_bin() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    if let Some(p) = std::env::var_os("GATEKEEPER_TEST_DEVCHAIN_BIN") {
        return Ok(PathBuf::from(p));
    }
    BUILT
        .get_or_init(|| {
            locate_and_build("gatekeeper-devchain", "gatekeeper-devchain")
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn locate_and_build(package: &str, bin_name: &str) -> Result<PathBuf> {
    // Test binaries live in target/<profile>/deps/<test-binary>; binaries of this package (the
    // benchmarks) in target/<profile>/<bin>. Either way the gatekeeper binary is
    // target/<profile>/gatekeeper.
    let exe = std::env::current_exe().context("current_exe")?;
    let mut profile_dir = exe
        .parent()
        .context("current_exe has no parent directory")?
        .to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir
            .parent()
            .context("test binary is not under target/<profile>/deps")?
            .to_path_buf();
    }
    let bin = profile_dir.join(bin_name);
    let under_cargo = std::env::var_os("CARGO").is_some();
    if under_cargo || !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", package, "--bin", bin_name]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .context("running cargo build for the gatekeeper binary")?;
        if !status.success() || !bin.exists() {
            bail!("could not build {}", bin.display());
        }
    }
    Ok(bin)
}

/// A gRPC `AdminService` client for `url` (`http://host:port`), connecting lazily. Every call has
/// a 10 s deadline. Call it from inside a tokio runtime.
pub fn admin_client(url: &str) -> Result<AdminServiceClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad endpoint {url}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    Ok(AdminServiceClient::new(channel))
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

/// The result of one `gatekeeper admin` invocation.
#[derive(Debug)]
pub struct AdminOutput {
    /// The command line (for messages).
    pub command: String,
    /// Exit status; `None` when the harness killed the command after its timeout.
    pub status: Option<ExitStatus>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Wall-clock time the command took.
    pub elapsed: Duration,
}

impl AdminOutput {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    /// True if the harness had to kill it.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
    /// One-paragraph description for failure messages.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => format!("{s}"),
            None => "killed by the harness after its timeout".to_string(),
        };
        format!(
            "`{}` -> {} after {:.1?}; stdout: {:?}; stderr: {:?}",
            self.command,
            status,
            self.elapsed,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
    /// Parse stdout as JSON (the whole output, else its last non-empty line) if the command
    /// succeeded.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        if !self.success() {
            return Err(self.describe());
        }
        let text = self.stdout.trim();
        if let Ok(v) = serde_json::from_str(text) {
            return Ok(v);
        }
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(last).map_err(|e| {
            format!(
                "cannot parse the output of `{}` as the expected JSON: {e}; stdout: {text:?}",
                self.command
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster.

/// Node configuration shared by every node of a [`Cluster`].
#[derive(Clone, Debug)]
pub struct Opts {
    /// `election_timeout_min_ms` (default 300).
    pub election_timeout_min_ms: u64,
    /// `election_timeout_max_ms` (default 600).
    pub election_timeout_max_ms: u64,
    /// `heartbeat_interval_ms` (default 100).
    pub heartbeat_interval_ms: u64,
    /// `snapshot_logs_since_last`; `None` leaves the node's default.
    pub snapshot_logs_since_last: Option<u64>,
    /// `max_in_snapshot_log_to_keep`; `None` leaves the node's default.
    pub max_in_snapshot_log_to_keep: Option<u64>,
    /// `max_stale_ms`; `None` leaves the node's default.
    pub max_stale_ms: Option<u64>,
    /// `fault_hooks` (default true: tests use `admin fault`).
    pub fault_hooks: bool,
    /// Where to create the cluster's temporary directory (default: the system temp dir).
    pub base_dir: Option<PathBuf>,
    /// Extra lines appended to every node's TOML config (e.g. `chain_url = "ws://…"`).
    pub extra_config: Vec<String>,
    /// Give every node a `metrics_listen` port (read with [`Cluster::metrics`]).
    pub metrics: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            heartbeat_interval_ms: 100,
            snapshot_logs_since_last: None,
            max_in_snapshot_log_to_keep: None,
            max_stale_ms: None,
            fault_hooks: true,
            base_dir: None,
            extra_config: vec![],
            metrics: false,
        }
    }
}

struct Node {
    raft_addr: String,
    api_addr: String,
    metrics_addr: Option<String>,
    data_dir: PathBuf,
    config: PathBuf,
    out_log: PathBuf,
    err_log: PathBuf,
    child: Mutex<Option<Child>>,
    /// Exit status of the last process of this node that the harness saw exit.
    last_exit: Mutex<Option<ExitStatus>>,
    starts: u32,
}

static CLUSTER_LOCK: Mutex<()> = Mutex::new(());

/// `gatekeeper node` processes on loopback, driven through the operator CLI. Node ids start at 1.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    opts: Opts,
    nodes: BTreeMap<u64, Node>,
    used_ports: BTreeSet<u16>,
    _lock: MutexGuard<'static, ()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn toml_str(s: &str) -> String {
    // A JSON string is a valid TOML basic string for everything a path or address contains.
    serde_json::to_string(s).expect("string serialises")
}

/// Last `n` lines of a file (reads at most its last 256 KiB), each cut to 500 characters.
pub fn tail_lines(path: &Path, n: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return format!("({} does not exist)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    let mut out = String::new();
    for l in &lines[from..] {
        let cut: String = l.chars().take(500).collect();
        out.push_str("    ");
        out.push_str(&cut);
        if cut.len() < l.len() {
            out.push('…');
        }
        out.push('\n');
    }
    out
}

impl Cluster {
    /// Start `n` nodes (ids 1..=n), `init` node 1 with all of them as voters, and wait until every
    /// node agrees on a leader. Panics (with logs) on failure.
    pub fn start(n: usize, opts: Opts) -> Cluster {
        let mut c = Cluster::empty(opts);
        for _ in 0..n {
            c.add_node();
        }
        let ids = c.ids();
        c.init(ids[0], &ids)
            .unwrap_or_else(|e| c.fail(&format!("admin init on node {} failed: {e}", ids[0])));
        c.leader_among(&ids);
        c
    }

    /// A cluster with no node yet (use [`Cluster::add_node`] and [`Cluster::init`]).
    pub fn empty(opts: Opts) -> Cluster {
        let guard = lock(&CLUSTER_LOCK);
        let bin = gatekeeper_bin().expect("the gatekeeper binary");
        let mut b = tempfile::Builder::new();
        b.prefix("gatekeeper-it-");
        let dir = match &opts.base_dir {
            Some(base) => {
                fs::create_dir_all(base).expect("create base dir");
                b.tempdir_in(base)
            }
            None => b.tempdir(),
        }
        .expect("create the cluster's temporary directory");
        Cluster {
            dir,
            bin,
            opts,
            nodes: BTreeMap::new(),
            used_ports: BTreeSet::new(),
            _lock: guard,
        }
    }

    /// The cluster's temporary directory (configs, data dirs, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Appends a line to the config of every node started from now on (and rewrites the
    /// configs of existing nodes).
    pub fn add_config_line(&mut self, line: &str) {
        self.opts.extra_config.push(line.to_string());
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for i in ids {
            self.write_config(i);
        }
    }

    /// `GET /metrics` from node `i` (needs [`Opts::metrics`]): the exposition text.
    pub fn metrics(&self, i: u64) -> Result<String, String> {
        let addr = self
            .node(i)
            .metrics_addr
            .clone()
            .ok_or("this cluster runs without metrics listeners")?;
        http_get(&addr, "/metrics")
    }

    /// The value of metric `name` (a line `name value`) at node `i`.
    pub fn metric(&self, i: u64, name: &str) -> Result<f64, String> {
        let text = self.metrics(i)?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
            })
            .ok_or_else(|| format!("no metric {name} in:\n{text}"))
    }

    /// A free loopback port not handed out before by this cluster.
    pub fn reserve_port(&mut self) -> u16 {
        self.free_port()
    }

    /// Every node id the harness knows (running or not), ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of nodes whose process is running.
    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|&i| self.is_running(i))
            .collect()
    }

    fn node(&self, i: u64) -> &Node {
        self.nodes
            .get(&i)
            .unwrap_or_else(|| panic!("no node {i} in this cluster"))
    }

    /// The node's API address (host:port), as given to `--endpoint`.
    pub fn api_addr(&self, i: u64) -> &str {
        &self.node(i).api_addr
    }
    /// The node's Raft address (host:port).
    pub fn raft_addr(&self, i: u64) -> &str {
        &self.node(i).raft_addr
    }
    /// `http://` URL of the node's API, for [`admin_client`].
    pub fn api_url(&self, i: u64) -> String {
        format!("http://{}", self.node(i).api_addr)
    }
    /// The node's data dir.
    pub fn data_dir(&self, i: u64) -> &Path {
        &self.node(i).data_dir
    }
    /// The node's stderr log file.
    pub fn stderr_log(&self, i: u64) -> &Path {
        &self.node(i).err_log
    }
    /// The node's stdout log file.
    pub fn stdout_log(&self, i: u64) -> &Path {
        &self.node(i).out_log
    }

    fn free_port(&mut self) -> u16 {
        loop {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            let p = l.local_addr().expect("local_addr").port();
            if self.used_ports.insert(p) {
                return p;
            }
        }
    }

    fn write_config(&self, i: u64) {
        let n = self.node(i);
        let o = &self.opts;
        let mut t = String::new();
        let _ = writeln!(t, "node_id = {i}");
        let _ = writeln!(t, "data_dir = {}", toml_str(&n.data_dir.to_string_lossy()));
        let _ = writeln!(t, "raft_listen = {}", toml_str(&n.raft_addr));
        let _ = writeln!(t, "api_listen = {}", toml_str(&n.api_addr));
        let _ = writeln!(t, "election_timeout_min_ms = {}", o.election_timeout_min_ms);
        let _ = writeln!(t, "election_timeout_max_ms = {}", o.election_timeout_max_ms);
        let _ = writeln!(t, "heartbeat_interval_ms = {}", o.heartbeat_interval_ms);
        if let Some(v) = o.snapshot_logs_since_last {
            let _ = writeln!(t, "snapshot_logs_since_last = {v}");
        }
        if let Some(v) = o.max_in_snapshot_log_to_keep {
            let _ = writeln!(t, "max_in_snapshot_log_to_keep = {v}");
        }
        if let Some(v) = o.max_stale_ms {
            let _ = writeln!(t, "max_stale_ms = {v}");
        }
        let _ = writeln!(t, "fault_hooks = {}", o.fault_hooks);
        let _ = writeln!(t, "mode = \"development\"");
        if let Some(m) = &n.metrics_addr {
            let _ = writeln!(t, "metrics_listen = {}", toml_str(m));
        }
        for line in &o.extra_config {
            let _ = writeln!(t, "{line}");
        }
        fs::write(&n.config, t).expect("write node config");
    }

    /// Create and start a new node (next free id) that is not yet part of any membership, and wait
    /// until its API answers `status`. Returns its id.
    pub fn add_node(&mut self) -> u64 {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        let raft = self.free_port();
        let api = self.free_port();
        let metrics = self
            .opts
            .metrics
            .then(|| format!("127.0.0.1:{}", self.free_port()));
        let ndir = self.dir.path().join(format!("n{id}"));
        fs::create_dir_all(&ndir).expect("create node dir");
        self.nodes.insert(
            id,
            Node {
                raft_addr: format!("127.0.0.1:{raft}"),
                api_addr: format!("127.0.0.1:{api}"),
                metrics_addr: metrics,
                data_dir: ndir.join("data"),
                config: ndir.join("gatekeeper.toml"),
                out_log: ndir.join("stdout.log"),
                err_log: ndir.join("stderr.log"),
                child: Mutex::new(None),
                last_exit: Mutex::new(None),
                starts: 0,
            },
        );
        self.write_config(id);
        // A port picked by binding :0 can be taken by someone else before the node binds it:
        // pick new ports and try again (the node is not in any membership yet).
        for attempt in 1..=3 {
            self.spawn(id);
            match self.wait_api_up(id) {
                Ok(()) => return id,
                Err(stderr) if attempt < 3 && stderr.to_lowercase().contains("in use") => {
                    let raft = self.free_port();
                    let api = self.free_port();
                    let n = self.nodes.get_mut(&id).expect("node exists");
                    n.raft_addr = format!("127.0.0.1:{raft}");
                    n.api_addr = format!("127.0.0.1:{api}");
                    self.write_config(id);
                }
                Err(_) => break,
            }
        }
        self.fail(&format!("node {id} did not start"));
    }

    fn spawn(&mut self, i: u64) {
        let bin = self.bin.clone();
        let n = self.nodes.get_mut(&i).expect("node exists");
        n.starts += 1;
        let marker = format!(
            "===== harness: start #{} of node {i} ({}) =====\n",
            n.starts,
            n.config.display()
        );
        let open = |p: &Path| {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("open node log");
            f.write_all(marker.as_bytes()).expect("write node log");
            f
        };
        let out = open(&n.out_log);
        let err = open(&n.err_log);
        let mut cmd = Command::new(&bin);
        cmd.arg("node")
            .arg("--config")
            .arg(&n.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        scrub_env(&mut cmd);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
        *lock(&n.child) = Some(child);
    }

    /// Wait until node `i` answers `admin status`. Err(stderr of this start) if the process
    /// exits first; panics on timeout.
    fn wait_api_up(&self, i: u64) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.exited(i) {
                let stderr = tail_lines(&self.node(i).err_log, 60);
                eprintln!("node {i} exited during start-up ({st}):\n{stderr}");
                return Err(stderr);
            }
            let last = match self.status(i) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if start.elapsed() > WAIT {
                self.fail(&format!(
                    "node {i} did not answer `admin status` within {WAIT:?}; last: {last}"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// `Some(status)` if node `i`'s process has exited (reaping it), `None` if it is running or
    /// was never started / already reaped.
    fn exited(&self, i: u64) -> Option<ExitStatus> {
        let n = self.node(i);
        let mut child = lock(&n.child);
        let st = child.as_mut()?.try_wait().ok().flatten()?;
        *child = None;
        *lock(&n.last_exit) = Some(st);
        Some(st)
    }

    /// Whether node `i`'s process is running.
    pub fn is_running(&self, i: u64) -> bool {
        let _ = self.exited(i);
        lock(&self.node(i).child).is_some()
    }

    /// Run `gatekeeper admin --endpoint <node i's api> <args…>` with [`ADMIN_TIMEOUT`].
    pub fn admin(&self, i: u64, args: &[&str]) -> AdminOutput {
        self.admin_timeout(i, args, ADMIN_TIMEOUT)
    }

    /// [`Cluster::admin`] with an explicit timeout.
    pub fn admin_timeout(&self, i: u64, args: &[&str], timeout: Duration) -> AdminOutput {
        run_admin(&self.bin, &self.node(i).api_addr, args, timeout)
    }

    /// `admin status --json` on node `i`.
    pub fn status(&self, i: u64) -> Result<Status, String> {
        self.admin(i, &["status", "--json"]).json()
    }

    /// `admin members --json` on node `i`.
    pub fn members(&self, i: u64) -> Result<MembersView, String> {
        self.admin(i, &["members", "--json"]).json()
    }

    /// `admin put KEY VALUE` on node `i` (one attempt).
    pub fn put(&self, i: u64, key: &str, value: &str) -> Result<PutAck, String> {
        self.admin(i, &["put", key, value]).json()
    }

    /// `admin put` on node `i`, retried until it succeeds (bounded by [`WAIT`]). Retrying can apply
    /// the same key/value twice: use [`Cluster::put`] where that matters.
    pub fn put_ok(&self, i: u64, key: &str, value: &str) -> PutAck {
        self.wait_for(
            &format!("`put {key} {value}` on node {i} to commit"),
            WAIT,
            || self.put(i, key, value),
        )
    }

    /// `admin get KEY --consistency C` on node `i` (one attempt).
    pub fn get(&self, i: u64, key: &str, consistency: Consistency) -> Result<GetReply, String> {
        self.admin(i, &["get", key, "--consistency", consistency.as_str()])
            .json()
    }

    /// Wait until node `i` reads `key` (under `consistency`) as `expected`.
    pub fn wait_value(
        &self,
        i: u64,
        key: &str,
        consistency: Consistency,
        expected: Option<&str>,
    ) -> GetReply {
        self.wait_for(
            &format!(
                "node {i} to read {key:?} = {expected:?} ({})",
                consistency.as_str()
            ),
            WAIT,
            || {
                let r = self.get(i, key, consistency)?;
                if r.value.as_deref() == expected {
                    Ok(r)
                } else {
                    Err(format!("read {r:?}"))
                }
            },
        )
    }

    /// `admin init --member …` on node `via` with `members` as the initial voters.
    pub fn init(&self, via: u64, members: &[u64]) -> Result<(), String> {
        let specs: Vec<String> = members
            .iter()
            .map(|&m| format!("{m}={}={}", self.raft_addr(m), self.api_addr(m)))
            .collect();
        let mut args = vec!["init"];
        for s in &specs {
            args.push("--member");
            args.push(s);
        }
        let out = self.admin(via, &args);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    }

    /// `admin join` of node `id`, sent to node `via`.
    pub fn join(&self, via: u64, id: u64) -> Result<(), String> {
        let ids = id.to_string();
        let out = self.admin_timeout(
            via,
            &[
                "join",
                "--node-id",
                &ids,
                "--raft-address",
                self.raft_addr(id),
                "--api-address",
                self.api_addr(id),
            ],
            JOIN_TIMEOUT,
        );
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    }

    /// `admin leave --node-id id`, sent to node `via`.
    pub fn leave(&self, via: u64, id: u64) -> Result<(), String> {
        let ids = id.to_string();
        let out = self.admin(via, &["leave", "--node-id", &ids]);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    }

    /// `admin fault --isolate` (true) or `--heal` (false) on node `i`.
    pub fn fault(&self, i: u64, isolate: bool) -> Result<(), String> {
        let flag = if isolate { "--isolate" } else { "--heal" };
        let out = self.admin(i, &["fault", flag]);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    }

    /// Poll `f` every [`POLL`] until it returns `Ok`, at most `timeout`. On timeout, panic with
    /// `desc`, the last `Err` observation, and the tail of every node's logs.
    pub fn wait_for<T>(
        &self,
        desc: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let start = Instant::now();
        loop {
            let last = match f() {
                Ok(v) => return v,
                Err(e) => e,
            };
            if start.elapsed() >= timeout {
                self.fail(&format!(
                    "timed out after {timeout:?} waiting for {desc}\nlast observation: {last}"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until every running node agrees on one leader (same leader id and term, and the
    /// leader says it leads). Returns its id.
    pub fn leader(&self) -> u64 {
        let ids = self.running_ids();
        self.leader_among(&ids)
    }

    /// Wait until the nodes `ids` agree on a leader among them (same leader id and term, and the
    /// leader says it leads). Returns its id.
    pub fn leader_among(&self, ids: &[u64]) -> u64 {
        self.wait_for(
            &format!("nodes {ids:?} to agree on a leader among them"),
            WAIT,
            || self.agreed_leader(ids),
        )
    }

    /// One observation: the leader nodes `ids` agree on, or why they do not.
    pub fn agreed_leader(&self, ids: &[u64]) -> Result<u64, String> {
        let mut views = Vec::new();
        for &i in ids {
            let s = self.status(i).map_err(|e| format!("node {i}: {e}"))?;
            views.push((i, s.role, s.leader_id, s.term));
        }
        let (_, _, first, term) = views.first().cloned().ok_or("no nodes given")?;
        let l = first.ok_or_else(|| format!("no leader known; views {views:?}"))?;
        let agree = views
            .iter()
            .all(|(_, _, lid, t)| *lid == Some(l) && *t == term);
        let leads = views
            .iter()
            .any(|(i, role, _, _)| *i == l && role == "leader");
        if agree && leads && ids.contains(&l) {
            Ok(l)
        } else {
            Err(format!("views (node, role, leader_id, term): {views:?}"))
        }
    }

    /// Wait until nodes `ids` report the same `last_applied` and `audit_sequence`, with
    /// `last_applied` at least `min_applied`. Returns their statuses.
    pub fn wait_converged(&self, ids: &[u64], min_applied: u64) -> Vec<Status> {
        self.wait_for(
            &format!(
                "nodes {ids:?} to converge (same last_applied >= {min_applied} and audit_sequence)"
            ),
            WAIT,
            || {
                let mut all = Vec::new();
                for &i in ids {
                    all.push(self.status(i).map_err(|e| format!("node {i}: {e}"))?);
                }
                let summary: Vec<_> = all
                    .iter()
                    .map(|s| {
                        (
                            s.node_id,
                            s.role.clone(),
                            s.last_applied,
                            s.commit_index,
                            s.audit_sequence,
                        )
                    })
                    .collect();
                let applied = all[0].last_applied;
                let audit = all[0].audit_sequence;
                let same = all
                    .iter()
                    .all(|s| s.last_applied == applied && s.audit_sequence == audit);
                if same && applied.unwrap_or(0) >= min_applied {
                    Ok(all)
                } else {
                    Err(format!(
                        "(node, role, last_applied, commit_index, audit_sequence): {summary:?}"
                    ))
                }
            },
        )
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill9(&self, i: u64) {
        let n = self.node(i);
        let mut child = lock(&n.child);
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            if let Ok(st) = c.wait() {
                *lock(&n.last_exit) = Some(st);
            }
        }
    }

    /// SIGTERM node `i` (graceful shutdown) and wait for it to exit; returns its exit status.
    /// Panics if it is still running after [`WAIT`] (it is then SIGKILLed).
    pub fn stop(&self, i: u64) -> ExitStatus {
        let pid = {
            let child = lock(&self.node(i).child);
            match child.as_ref() {
                Some(c) => c.id(),
                None => {
                    return lock(&self.node(i).last_exit)
                        .unwrap_or_else(|| panic!("node {i} is not running"))
                }
            }
        };
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(st) = self.exited(i) {
                return st;
            }
            if start.elapsed() > WAIT {
                self.kill9(i);
                self.fail(&format!(
                    "node {i} (pid {pid}) did not exit within {WAIT:?} of SIGTERM (it was SIGKILLed)"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Start node `i` again with the same config and data dir, and wait until its API answers.
    pub fn restart(&mut self, i: u64) {
        assert!(!self.is_running(i), "restart: node {i} is still running");
        self.spawn(i);
        if self.wait_api_up(i).is_err() {
            self.fail(&format!("node {i} exited while restarting"));
        }
    }

    /// Start node `i` and expect it to exit by itself within `timeout` (e.g. on a corrupt data
    /// dir). Returns its exit status and what it wrote to stderr and stdout during this start.
    /// Panics if it is still running after `timeout` (it is then SIGKILLed).
    pub fn start_expecting_exit(&mut self, i: u64, timeout: Duration) -> (ExitStatus, String) {
        assert!(!self.is_running(i), "node {i} is still running");
        let err_from = fs::metadata(&self.node(i).err_log).map_or(0, |m| m.len());
        let out_from = fs::metadata(&self.node(i).out_log).map_or(0, |m| m.len());
        self.spawn(i);
        let start = Instant::now();
        loop {
            if let Some(st) = self.exited(i) {
                let mut text = read_from(&self.node(i).err_log, err_from);
                text.push_str(&read_from(&self.node(i).out_log, out_from));
                return (st, text);
            }
            if start.elapsed() > timeout {
                let serving = self.status(i);
                self.kill9(i);
                self.fail(&format!(
                    "node {i} was expected to refuse to start, but it was still running after \
                     {timeout:?} (status: {serving:?}); it was SIGKILLed"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Remove node `i`'s data dir (the node must not be running).
    pub fn wipe(&self, i: u64) {
        assert!(!self.is_running(i), "wipe: node {i} is still running");
        let d = self.data_dir(i);
        if d.exists() {
            fs::remove_dir_all(d).unwrap_or_else(|e| panic!("wipe {}: {e}", d.display()));
        }
    }

    /// Tail of node `i`'s logs.
    pub fn log_tail(&self, i: u64, lines: usize) -> String {
        let n = self.node(i);
        format!(
            "  stderr ({}):\n{}  stdout ({}):\n{}",
            n.err_log.display(),
            tail_lines(&n.err_log, lines),
            n.out_log.display(),
            tail_lines(&n.out_log, lines)
        )
    }

    /// State of every node and the tail of its logs.
    pub fn report(&self) -> String {
        let mut r = format!("cluster dir: {}\n", self.dir.path().display());
        for (&i, n) in &self.nodes {
            let running = self.is_running(i);
            let state = if running {
                "running".to_string()
            } else {
                match *lock(&n.last_exit) {
                    Some(st) => format!("not running (last exit: {st})"),
                    None => "never started".to_string(),
                }
            };
            let _ = writeln!(
                r,
                "--- node {i}: {state}; raft {} api {}; started {} time(s)",
                n.raft_addr, n.api_addr, n.starts
            );
            r.push_str(&self.log_tail(i, 25));
        }
        r
    }

    /// Panic with `msg` and [`Cluster::report`].
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n\n{}", self.report());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values() {
            if let Some(mut c) = lock(&n.child).take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "test failed: keeping the cluster directory {} (configs, data dirs, logs)",
                self.dir.path().display()
            );
        }
    }
}

/// A plain HTTP/1.1 GET; the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use std::net::TcpStream;
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {buf:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path} from {addr}: {head}"));
    }
    Ok(body.to_string())
}

fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let _ = f.seek(SeekFrom::Start(offset));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Remove inherited `GATEKEEPER_*` variables: the node and CLI read their settings from them.
fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GATEKEEPER_") {
            cmd.env_remove(k);
        }
    }
}

/// Run `gatekeeper admin --endpoint <endpoint> <args…>`, killing it after `timeout`.
pub fn run_admin(bin: &Path, endpoint: &str, args: &[&str], timeout: Duration) -> AdminOutput {
    let mut all = vec!["admin", "--endpoint", endpoint];
    all.extend_from_slice(args);
    run_command(bin, &all, timeout)
}

/// Run `bin <args…>` with the `GATEKEEPER_*` environment removed, killing it after `timeout`,
/// and capture its output.
pub fn run_command(bin: &Path, args: &[&str], timeout: Duration) -> AdminOutput {
    let name = bin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let command = format!("{name} {}", args.join(" "));
    let start = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    scrub_env(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return AdminOutput {
                command,
                status: None,
                stdout: String::new(),
                stderr: format!("cannot spawn {}: {e}", bin.display()),
                elapsed: start.elapsed(),
            }
        }
    };
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    AdminOutput {
        command,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}
