//! `gatekeeper keygen`: writes an sr25519 key file ([`crate::keyfile`] reads them).

use anyhow::{bail, Context, Result};
use keyring::Sr25519Keypair;
use std::io::Write;
use std::path::Path;

/// Writes a fresh sr25519 key to `out` (mode 0600; refuses to overwrite unless `force`) and prints
/// its public key.
pub fn run(out: &Path, force: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = Sr25519Keypair::generate(&mut rand_core::OsRng);
    let body = zeroize::Zeroizing::new(
        serde_json::json!({
            "seed": hex::encode(key.seed()),
            "public_key": hex::encode(key.public_key().as_bytes()),
        })
        .to_string(),
    );
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = match opts.open(out) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!(
                "{} already exists; pass --force to overwrite it",
                out.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", out.display())),
    };
    f.write_all(format!("{}\n", body.as_str()).as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("{}", hex::encode(key.public_key().as_bytes()));
    Ok(())
}
