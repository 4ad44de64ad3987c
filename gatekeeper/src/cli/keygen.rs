//! `gatekeeper keygen`: writes an sr25519 key file (the format belongs to the miner SDK,
//! [`gatekeeper_client::keyfile`]; [`crate::keyfile`] reads them).

use anyhow::{bail, Context, Result};
use keyring::Sr25519Keypair;
use std::path::Path;

/// Writes a fresh sr25519 key to `out` (mode 0600; refuses to overwrite unless `force`) and prints
/// its public key.
pub fn run(out: &Path, force: bool) -> Result<()> {
    let key = Sr25519Keypair::generate(&mut rand_core::OsRng);
    match gatekeeper_client::write_key_file(out, &key, force) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!(
                "{} already exists; pass --force to overwrite it",
                out.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", out.display())),
    }
    outln!("{}", hex::encode(key.public_key().as_bytes()));
    Ok(())
}
