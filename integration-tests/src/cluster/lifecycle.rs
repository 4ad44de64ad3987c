//! Creating, starting, stopping, restarting and wiping the nodes of a [`Cluster`].

use super::{Cluster, Node, Opts, CLUSTER_LOCK};
use crate::processes::{gatekeeper_bin, read_from, run_command, scrub_env, tail_lines};
use crate::util::{lock, toml_str, POLL, WAIT};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
        let c = Cluster {
            dir,
            bin,
            opts,
            nodes: BTreeMap::new(),
            used_ports: BTreeSet::new(),
            _lock: guard,
        };
        if c.opts.tls {
            let certs = c.certs_dir().display().to_string();
            c.certs(&["ca", "--out", &certs]);
            c.certs(&[
                "operator", "--ca", &certs, "--name", "operator", "--out", &certs,
            ]);
        }
        c
    }

    /// Issues node `id`'s certificate and key (CN `node-<id>`, SANs 127.0.0.1 and localhost)
    /// into [`Cluster::certs_dir`] with the cluster CA; `renew` overwrites existing files (a new
    /// key).
    pub fn issue_node_cert(&self, id: u64, renew: bool) {
        let certs = self.certs_dir().display().to_string();
        let name = format!("node-{id}");
        let mut args = vec![
            "node",
            "--ca",
            &certs,
            "--name",
            &name,
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
            "--out",
            &certs,
        ];
        if renew {
            args.push("--force");
        }
        self.certs(&args);
    }

    /// Runs `gatekeeper certs <args…>`; fails the test with its output if it fails.
    pub fn certs(&self, args: &[&str]) {
        let mut all = vec!["certs"];
        all.extend_from_slice(args);
        let out = run_command(&self.bin, &all, Duration::from_secs(30));
        if !out.success() {
            self.fail(&format!("`gatekeeper certs` failed: {}", out.describe()));
        }
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

    /// A free loopback port not handed out before by this cluster.
    pub fn reserve_port(&mut self) -> u16 {
        self.free_port()
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
        let _ = writeln!(t, "admin_listen = {}", toml_str(&n.admin_addr));
        if o.tls {
            let (cert, key) = self.node_cert(i);
            let ca = self.certs_dir().join("ca.pem");
            for (k, v) in [
                ("tls_ca_file", ca),
                ("tls_cert_file", cert),
                ("tls_key_file", key),
            ] {
                let _ = writeln!(t, "{k} = {}", toml_str(&v.to_string_lossy()));
            }
        } else {
            let _ = writeln!(t, "plaintext = true");
        }
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
        let admin = self.free_port();
        if self.opts.tls {
            self.issue_node_cert(id, false);
        }
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
                admin_addr: format!("127.0.0.1:{admin}"),
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
                    let admin = self.free_port();
                    let n = self.nodes.get_mut(&id).expect("node exists");
                    n.raft_addr = format!("127.0.0.1:{raft}");
                    n.api_addr = format!("127.0.0.1:{api}");
                    n.admin_addr = format!("127.0.0.1:{admin}");
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
}
