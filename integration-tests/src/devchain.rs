//! A `gatekeeper-devchain run` process for tests: started on a fixed loopback port (so a
//! restart keeps its URL) with its blocks persisted in a directory (so a restart continues the
//! chain), driven through its CLI (`gatekeeper-devchain emit …`, a real RPC client).

use crate::processes::{devchain_bin, run_command, tail_lines, AdminOutput};
use crate::util::{lock, ADMIN_TIMEOUT, POLL, WAIT};
use serde_json::Value;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// How to run the dev chain.
#[derive(Clone, Debug)]
pub struct DevChainOpts {
    /// Milliseconds between blocks (default 250).
    pub block_time_ms: u64,
    /// Serve the `broken` event shapes (default false).
    pub broken_shapes: bool,
}

impl Default for DevChainOpts {
    fn default() -> Self {
        DevChainOpts {
            block_time_ms: 250,
            broken_shapes: false,
        }
    }
}

/// A running (or stopped) dev chain process.
pub struct DevChainProc {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    opts: DevChainOpts,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    starts: u32,
}

impl DevChainProc {
    /// Starts a dev chain on `127.0.0.1:port` persisting to `dir`, and waits until it answers.
    pub fn start(dir: &Path, port: u16, opts: DevChainOpts) -> DevChainProc {
        fs::create_dir_all(dir).expect("create the dev chain dir");
        let mut c = DevChainProc {
            bin: devchain_bin().expect("the gatekeeper-devchain binary"),
            dir: dir.to_path_buf(),
            port,
            opts,
            log: dir.join("devchain.log"),
            child: Mutex::new(None),
            starts: 0,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the dev chain log");
        let _ = writeln!(log, "===== harness: start #{} =====", self.starts);
        let err = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--block-time-ms")
            .arg(self.opts.block_time_ms.to_string())
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        if self.opts.broken_shapes {
            cmd.args(["--shapes", "broken"]);
        }
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GATEKEEPER_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", self.bin.display()));
        *lock(&self.child) = Some(child);
        let start = Instant::now();
        loop {
            if self.status().is_ok() {
                return;
            }
            if let Some(st) = lock(&self.child)
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the dev chain exited during start-up ({st}):\n{}",
                    tail_lines(&self.log, 40)
                );
            }
            assert!(
                start.elapsed() < WAIT,
                "the dev chain did not answer within {WAIT:?}:\n{}",
                tail_lines(&self.log, 40)
            );
            std::thread::sleep(POLL);
        }
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The node config line that follows this chain.
    pub fn config_line(&self) -> String {
        format!("chain_url = \"{}\"", self.url())
    }

    /// Runs `gatekeeper-devchain <command> --url URL <args…>`.
    fn run(&self, command: &str, args: &[&str]) -> AdminOutput {
        let url = self.url();
        let mut all = vec![command, "--url", &url];
        all.extend_from_slice(args);
        run_command(&self.bin, &all, ADMIN_TIMEOUT)
    }

    /// `gatekeeper-devchain emit --profile PROFILE <action…>`: answers once the block carrying
    /// the events is final, with `{block, hash, events}`.
    pub fn emit(&self, profile: &str, action: &[&str]) -> Result<Value, String> {
        let mut args = vec!["--profile", profile];
        args.extend_from_slice(action);
        self.run("emit", &args).json()
    }

    /// Like [`DevChainProc::emit`], panicking on failure; returns the block number.
    pub fn emit_ok(&self, profile: &str, action: &[&str]) -> u64 {
        let v = self
            .emit(profile, action)
            .unwrap_or_else(|e| panic!("emit {action:?}: {e}\n{}", tail_lines(&self.log, 20)));
        v["block"].as_u64().expect("emit answers a block number")
    }

    /// Every emitted event (`[{block, index, event}]`).
    pub fn events(&self) -> Vec<Value> {
        match self.run("events", &[]).json() {
            Ok(Value::Array(a)) => a,
            other => panic!("gatekeeper-devchain events: {other:?}"),
        }
    }

    /// `dev_status`.
    pub fn status(&self) -> Result<Value, String> {
        self.run("status", &[]).json()
    }

    /// The head block number.
    pub fn head(&self) -> u64 {
        self.status().expect("dev chain status")["head"]
            .as_u64()
            .expect("head")
    }

    /// Stop producing blocks.
    pub fn pause(&self) {
        let out = self.run("pause", &[]);
        assert!(out.success(), "{}", out.describe());
    }

    /// Produce blocks again.
    pub fn resume(&self) {
        let out = self.run("resume", &[]);
        assert!(out.success(), "{}", out.describe());
    }

    /// SIGKILL the chain (its blocks are fsynced as produced).
    pub fn kill9(&self) {
        if let Some(mut c) = lock(&self.child).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and directory: the chain continues.
    pub fn restart(&mut self) {
        assert!(
            lock(&self.child).is_none(),
            "the dev chain is still running"
        );
        self.spawn();
    }

    /// The tail of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_lines(&self.log, lines)
    }
}

impl Drop for DevChainProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
