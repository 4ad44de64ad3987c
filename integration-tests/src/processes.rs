//! Locating (and building) the workspace's binaries, and running short-lived commands
//! (`gatekeeper admin …`, `gatekeeper-devchain emit …`) with a timeout and captured output
//! ([`AdminOutput`]); reading node and chain log files.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

/// Path of the miner SDK's example program `name` (`client/examples/<name>.rs`), built once per
/// test process like [`gatekeeper_bin`].
pub fn client_example_bin(name: &str) -> Result<PathBuf> {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return Ok(p.clone());
    }
    let p = locate_and_build_target("gatekeeper-client", "--example", name)?;
    built.push((name.to_string(), p.clone()));
    Ok(p)
}

fn locate_and_build(package: &str, bin_name: &str) -> Result<PathBuf> {
    locate_and_build_target(package, "--bin", bin_name)
}

/// Finds (and, under cargo or when missing, builds) binary `name` of `package`; `kind` is
/// `--bin` or `--example`.
fn locate_and_build_target(package: &str, kind: &str, bin_name: &str) -> Result<PathBuf> {
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
    let bin = if kind == "--example" {
        profile_dir.join("examples").join(bin_name)
    } else {
        profile_dir.join(bin_name)
    };
    let under_cargo = std::env::var_os("CARGO").is_some();
    if under_cargo || !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", package, kind, bin_name]);
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

/// Remove inherited `GATEKEEPER_*` variables: the node and CLI read their settings from them.
pub(crate) fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GATEKEEPER_") {
            cmd.env_remove(k);
        }
    }
}

/// Run `gatekeeper admin --endpoint <target> <TLS flags> <args…>`, killing it after `timeout`.
/// The TLS flags are `--ca/--cert/--key` from the target, or `--plaintext`.
pub fn run_admin(
    bin: &Path,
    target: &crate::Target,
    args: &[&str],
    timeout: Duration,
) -> AdminOutput {
    let mut flags: Vec<String> = vec!["admin".into(), "--endpoint".into(), target.addr.clone()];
    match &target.tls {
        None => flags.push("--plaintext".into()),
        Some(t) => {
            flags.push("--ca".into());
            flags.push(t.ca.display().to_string());
            if let Some((cert, key)) = &t.identity {
                flags.push("--cert".into());
                flags.push(cert.display().to_string());
                flags.push("--key".into());
                flags.push(key.display().to_string());
            }
        }
    }
    let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
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

pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let _ = f.seek(SeekFrom::Start(offset));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
