//! Key files as `gatekeeper keygen` writes them: one JSON object
//! `{"seed": "<64 hex>", "public_key": "<64 hex>"}`, mode 0600. The seed is the sr25519
//! mini-secret (expanded in Ed25519 mode); `public_key` is optional when reading and, when
//! present, must be the seed's public key.

use keyring::Sr25519Keypair;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Why a key file could not be loaded. The message never contains the secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a key file.
    #[error("{path} is not a gatekeeper key file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `public_key` is not the public key of `seed`.
    #[error("{path}: \"public_key\" is not the public key of \"seed\" (the file was edited or mixed up)")]
    Mismatch {
        /// The file.
        path: PathBuf,
    },
}

/// Writes `key` as a key file at `path` (mode 0600, synced). Refuses to replace an existing file
/// (`AlreadyExists`) unless `overwrite`.
pub fn write_key_file(
    path: impl AsRef<Path>,
    key: &Sr25519Keypair,
    overwrite: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let body = Zeroizing::new(format!(
        "{}\n",
        serde_json::json!({
            "seed": hex::encode(key.seed()),
            "public_key": hex::encode(key.public_key().as_bytes()),
        })
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path)?;
    // The mode applies only to a new file: an overwritten one is tightened before the secret
    // goes in.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(body.as_bytes())?;
    f.sync_all()
}

#[derive(serde::Deserialize)]
struct KeyFile {
    seed: Option<String>,
    public_key: Option<String>,
}

/// Reads a key file written by `gatekeeper keygen`.
pub fn read_key_file(path: impl AsRef<Path>) -> Result<Sr25519Keypair, KeyFileError> {
    let path = path.as_ref();
    let text = Zeroizing::new(std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    })?);
    parse(&text).map_err(|e| match e {
        None => KeyFileError::Mismatch {
            path: path.to_path_buf(),
        },
        Some(reason) => KeyFileError::Format {
            path: path.to_path_buf(),
            reason,
        },
    })
}

/// The keypair a key file's bytes hold: `Err(Some(reason))` for a malformed file, `Err(None)`
/// when the public key does not match the seed.
fn parse(bytes: &[u8]) -> Result<Sr25519Keypair, Option<&'static str>> {
    let f: KeyFile = serde_json::from_slice(bytes).map_err(|_| Some("not a JSON object"))?;
    let seed = Zeroizing::new(f.seed.ok_or(Some("no \"seed\""))?);
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(seed.as_str(), bytes.as_mut())
        .map_err(|_| Some("\"seed\" is not 64 hex characters"))?;
    let seed = bytes;
    let key = Sr25519Keypair::from_seed(&seed);
    if let Some(pk) = f.public_key {
        let pk: [u8; 32] = hex::decode(pk)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(Some("\"public_key\" is not 64 hex characters"))?;
        if pk != *key.public_key().as_bytes() {
            return Err(None);
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keygen_file_loads_and_damage_is_named() {
        let key = Sr25519Keypair::from_seed(&[7; 32]);
        let good = format!(
            "{{\"seed\":\"{}\",\"public_key\":\"{}\"}}\n",
            hex::encode(key.seed()),
            hex::encode(key.public_key().as_bytes())
        );
        assert_eq!(
            parse(good.as_bytes()).unwrap().public_key(),
            key.public_key()
        );
        let seed_only = format!("{{\"seed\":\"{}\"}}", hex::encode(key.seed()));
        assert!(parse(seed_only.as_bytes()).is_ok());
        assert_eq!(parse(b"seed=00").unwrap_err(), Some("not a JSON object"));
        assert_eq!(parse(b"{}").unwrap_err(), Some("no \"seed\""));
        assert_eq!(
            parse(b"{\"seed\":\"abcd\"}").unwrap_err(),
            Some("\"seed\" is not 64 hex characters")
        );
        let other = Sr25519Keypair::from_seed(&[8; 32]);
        let mixed = format!(
            "{{\"seed\":\"{}\",\"public_key\":\"{}\"}}",
            hex::encode(key.seed()),
            hex::encode(other.public_key().as_bytes())
        );
        assert_eq!(parse(mixed.as_bytes()).unwrap_err(), None);
        // The file error names the path, never the seed.
        let dir = std::env::temp_dir().join(format!("gk-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("worker.json");
        std::fs::write(&p, &mixed).unwrap();
        let e = read_key_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("worker.json") && !e.contains(&hex::encode(key.seed())),
            "{e}"
        );
        std::fs::write(&p, &good).unwrap();
        assert_eq!(read_key_file(&p).unwrap().public_key(), key.public_key());
        // What write_key_file writes reads back; it does not replace a file unless asked, and
        // a replaced file ends up 0600 whatever its mode was.
        let w = dir.join("written.json");
        std::fs::write(&w, "old").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_key_file(&w, &other, true).unwrap();
        assert_eq!(
            std::fs::metadata(&w).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_file(&w).unwrap();
        write_key_file(&w, &other, false).unwrap();
        assert_eq!(read_key_file(&w).unwrap().public_key(), other.public_key());
        assert_eq!(
            write_key_file(&w, &key, false).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        write_key_file(&w, &key, true).unwrap();
        assert_eq!(read_key_file(&w).unwrap().public_key(), key.public_key());
        assert_eq!(
            std::fs::metadata(&w).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            read_key_file(dir.join("missing")).unwrap_err(),
            KeyFileError::Read { .. }
        ));
    }
}
