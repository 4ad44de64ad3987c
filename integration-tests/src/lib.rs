//! Helpers for tests that start real `gatekeeper` processes.

#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// Path of the `gatekeeper` binary from this workspace, building it first if it is missing
/// (`cargo test --workspace` does not always build other packages' binaries).
pub fn gatekeeper_bin() -> Result<PathBuf> {
    // target/<profile>/deps/<test-binary> -> target/<profile>/gatekeeper
    let exe = std::env::current_exe().context("current_exe")?;
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("test binary is not under target/<profile>/deps")?
        .to_path_buf();
    let bin = profile_dir.join("gatekeeper");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "gatekeeper", "--bin", "gatekeeper"]);
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
