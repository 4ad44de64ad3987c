//! Key files as `gatekeeper keygen` writes them: JSON `{"seed": hex, "public_key": hex}`, mode
//! 0600. Read by the node (the dev attestation key) and the miner CLI.

use anyhow::{Context, Result};
use keyring::Sr25519Keypair;
use std::path::Path;

/// Reads a key file written by `gatekeeper keygen`.
pub fn read_key_file(path: &Path) -> Result<Sr25519Keypair> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?,
    );
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a key file (JSON)", path.display()))?;
    let seed: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
        hex::decode(v["seed"].as_str().unwrap_or_default())
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| format!("{} has no 32-byte hex \"seed\"", path.display()))?,
    );
    Ok(Sr25519Keypair::from_seed(&seed))
}
