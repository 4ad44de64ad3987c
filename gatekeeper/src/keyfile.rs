//! Key files as `gatekeeper keygen` writes them: JSON `{"seed": hex, "public_key": hex}`, mode
//! 0600. Read by the node (the dev attestation key) and the miner CLI; the format and its reader
//! belong to the miner SDK ([`gatekeeper_client::keyfile`]), which workers use too.

use anyhow::Result;
use keyring::Sr25519Keypair;
use std::path::Path;

/// Reads a key file written by `gatekeeper keygen`.
pub fn read_key_file(path: &Path) -> Result<Sr25519Keypair> {
    Ok(gatekeeper_client::read_key_file(path)?)
}
