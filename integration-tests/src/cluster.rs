//! [`Cluster`]: `gatekeeper node` processes on loopback, each with its own config, data dir and
//! log files in a temporary directory, and the [`Opts`] they share.
//!
//! The `impl Cluster` is split by concern:
//! * this file: the types, the global lock, per-node accessors, failure reports and `Drop`;
//! * [`lifecycle`]: creating, starting, stopping, restarting and wiping nodes;
//! * [`admin`]: the operator-CLI wrappers (`status`, `put`, `get`, `init`, `join`, …) and
//!   `/metrics`;
//! * [`waits`]: bounded polling ([`Cluster::wait_for`]) and the waits built on it (leader
//!   agreement, convergence).

mod admin;
mod lifecycle;
mod waits;

use crate::processes::tail_lines;
use crate::util::lock;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Mutex, MutexGuard};

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
    /// TLS on every listener (default true): the cluster makes a CA, an operator certificate
    /// and one node certificate per node (`gatekeeper certs`) under `<dir>/certs`, and every
    /// client of the harness uses them. False: `plaintext = true` (development mode).
    pub tls: bool,
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
            tls: true,
        }
    }
}

struct Node {
    raft_addr: String,
    api_addr: String,
    admin_addr: String,
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

impl Cluster {
    /// The cluster's temporary directory (configs, data dirs, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

    /// Node `i`'s metrics listener (`/metrics`, `/livez`, `/readyz`), when the cluster has them
    /// ([`Opts::metrics`]).
    pub fn metrics_addr(&self, i: u64) -> Option<&str> {
        self.node(i).metrics_addr.as_deref()
    }

    /// The node's admin listener address (host:port).
    pub fn admin_addr(&self, i: u64) -> &str {
        &self.node(i).admin_addr
    }

    /// Where the cluster's certificates are (`ca.pem`, `operator.pem/key`, `node-<i>.pem/key`).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The cluster CA (what miners trust), when TLS is on.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.certs_dir().join("ca.pem"))
    }

    /// Node `id`'s certificate and key (they exist once the node was added).
    pub fn node_cert(&self, id: u64) -> (PathBuf, PathBuf) {
        let d = self.certs_dir();
        (
            d.join(format!("node-{id}.pem")),
            d.join(format!("node-{id}.key")),
        )
    }

    /// The operator's certificate and key.
    pub fn operator_cert(&self) -> (PathBuf, PathBuf) {
        let d = self.certs_dir();
        (d.join("operator.pem"), d.join("operator.key"))
    }

    fn target(&self, addr: &str, identity: Option<(PathBuf, PathBuf)>) -> crate::Target {
        crate::Target {
            addr: addr.to_string(),
            tls: self.ca_file().map(|ca| crate::ClientCerts { ca, identity }),
        }
    }

    /// Node `i`'s admin listener, as the operator (for [`admin_client`](crate::admin_client)).
    pub fn admin_target(&self, i: u64) -> crate::Target {
        self.target(self.admin_addr(i), Some(self.operator_cert()))
    }

    /// Node `i`'s key listener, as a miner (server TLS only).
    pub fn key_target(&self, i: u64) -> crate::Target {
        self.target(self.api_addr(i), None)
    }

    /// Node `i`'s cluster (Raft) listener, presenting node `as_node`'s certificate.
    pub fn raft_target(&self, i: u64, as_node: u64) -> crate::Target {
        self.target(self.raft_addr(i), Some(self.node_cert(as_node)))
    }

    /// The process id of node `i` while it runs.
    pub fn pid(&self, i: u64) -> Option<u32> {
        lock(&self.node(i).child).as_ref().map(|c| c.id())
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
