//! Backups: what `admin snapshot save` writes, `gatekeeper snapshot inspect` reads and
//! `gatekeeper restore` restores (docs/operations.md "Backup and restore").
//!
//! A backup file is one line, `GKBACKUP/1 ` and the [`Manifest`] as JSON, then a node's snapshot
//! file byte for byte (`GKSNAPFILE/4` header line and data: a checkpoint a majority of the
//! voters certified). The manifest's `snapshot_sha256` and `snapshot_bytes` cover those bytes.
//!
//! What a backup holds and what it cannot: the replicated state (members, epochs with their
//! dealings — the shares sealed to each member's enclave key —, workers, clusters, contracts,
//! the chain cursor, operators). Never a master secret: those exist only in enclave memory. A
//! restored cluster unseals only when at least `threshold` of the members listed in the
//! manifest come back with the same enclave identity (the same enclave directory or sealing
//! source), because each share opens only inside the enclave it was sealed to.

use gatekeeper_raft::state::{EpochStatus, GatekeeperState};
use gatekeeper_raft::{Node, NodeId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read, Write};

/// The first bytes of a backup file.
pub const BACKUP_MAGIC: &str = "GKBACKUP/1 ";

/// The longest manifest line read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// A member as the backup's state records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMember {
    /// Member id.
    pub node_id: NodeId,
    /// Raft address.
    pub raft_address: String,
    /// Key API address.
    pub api_address: String,
    /// The member's enclave HPKE public key: its shares are sealed to it (hex).
    pub enclave_public_key: String,
    /// The member's identity key (hex).
    pub identity_public_key: String,
    /// A voter in the snapshot's membership.
    pub voter: bool,
}

/// An epoch as the backup's state records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEpoch {
    /// Epoch number.
    pub epoch: u64,
    /// `dealing`, `active`, `retired` or `aborted`.
    pub status: String,
    /// Shares needed to rebuild its master.
    pub threshold: u8,
    /// Members holding a share.
    pub share_holders: Vec<NodeId>,
}

/// What a backup is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always 1.
    pub format: u32,
    /// The cluster's gatekeeper id (hex; empty before genesis).
    pub gatekeeper_id: String,
    /// The node that wrote it.
    pub source_node: NodeId,
    /// When it was written (ms since the Unix epoch, the source node's clock).
    pub created_at_ms: u64,
    /// The last log index the snapshot covers.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// Bytes of the snapshot file that follow the manifest line.
    pub snapshot_bytes: u64,
    /// SHA-256 of those bytes (hex).
    pub snapshot_sha256: String,
    /// The members (from the state at the time of the save; `snapshot inspect` prints the
    /// snapshot's own).
    pub members: Vec<ManifestMember>,
    /// The epochs.
    pub epochs: Vec<ManifestEpoch>,
}

fn status_name(s: EpochStatus) -> &'static str {
    match s {
        EpochStatus::Dealing => "dealing",
        EpochStatus::Active => "active",
        EpochStatus::Retired => "retired",
        EpochStatus::Aborted => "aborted",
    }
}

/// The members and epochs of `state` under `membership` (voter ids), as a manifest lists them.
pub fn describe(
    state: &GatekeeperState,
    voters: &std::collections::BTreeSet<NodeId>,
    nodes: &[(NodeId, Node)],
) -> (Vec<ManifestMember>, Vec<ManifestEpoch>) {
    let members = nodes
        .iter()
        .map(|(id, n)| {
            let rec = state.members.get(id);
            ManifestMember {
                node_id: *id,
                raft_address: n.raft_address.clone(),
                api_address: n.api_address.clone(),
                enclave_public_key: rec
                    .map(|r| hex::encode(r.hpke_public_key.0))
                    .unwrap_or_default(),
                identity_public_key: rec
                    .map(|r| hex::encode(r.identity_public_key.0))
                    .unwrap_or_default(),
                voter: voters.contains(id),
            }
        })
        .collect();
    let epochs = state
        .epochs
        .values()
        .map(|e| ManifestEpoch {
            epoch: e.epoch,
            status: status_name(e.status).into(),
            threshold: e.threshold,
            share_holders: e.dealing.shares.iter().map(|s| s.node_id).collect(),
        })
        .collect();
    (members, epochs)
}

/// Failures reading a backup file, each with what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a backup file.
    #[error("not a Gatekeeper backup (it does not start with {BACKUP_MAGIC:?})")]
    NotABackup,
    /// The manifest line does not parse.
    #[error("the backup's manifest does not parse: {0}")]
    Manifest(String),
    /// The snapshot bytes do not match the manifest.
    #[error("the backup is damaged: {0}")]
    Damaged(String),
}

/// Writes the manifest line.
pub fn write_manifest(out: &mut impl Write, m: &Manifest) -> std::io::Result<()> {
    out.write_all(BACKUP_MAGIC.as_bytes())?;
    serde_json::to_writer(&mut *out, m)?;
    out.write_all(b"\n")
}

/// Reads the manifest line, leaving `r` at the snapshot's first byte.
pub fn read_manifest(r: &mut impl BufRead) -> Result<Manifest, BackupError> {
    let mut line = Vec::new();
    r.take(MAX_MANIFEST_BYTES).read_until(b'\n', &mut line)?;
    let rest = line
        .strip_prefix(BACKUP_MAGIC.as_bytes())
        .ok_or(BackupError::NotABackup)?;
    let rest = rest
        .strip_suffix(b"\n")
        .ok_or_else(|| BackupError::Manifest("no end of the manifest line".into()))?;
    let m: Manifest =
        serde_json::from_slice(rest).map_err(|e| BackupError::Manifest(e.to_string()))?;
    if m.format != 1 {
        return Err(BackupError::Manifest(format!(
            "format {} (this build reads format 1)",
            m.format
        )));
    }
    Ok(m)
}

/// Copies the snapshot bytes from `r` (after the manifest) to `out`, checking their size and
/// SHA-256 against the manifest.
pub fn copy_snapshot(
    m: &Manifest,
    r: &mut impl Read,
    out: &mut impl Write,
) -> Result<(), BackupError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > m.snapshot_bytes {
            return Err(BackupError::Damaged(format!(
                "more than the manifest's {} snapshot bytes",
                m.snapshot_bytes
            )));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    if total != m.snapshot_bytes {
        return Err(BackupError::Damaged(format!(
            "{total} snapshot bytes, the manifest says {} (truncated?)",
            m.snapshot_bytes
        )));
    }
    let sum = hex::encode(hasher.finalize());
    if sum != m.snapshot_sha256 {
        return Err(BackupError::Damaged(format!(
            "SHA-256 {sum} does not match the manifest's {}",
            m.snapshot_sha256
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(data: &[u8]) -> Manifest {
        Manifest {
            format: 1,
            gatekeeper_id: "ab".repeat(32),
            source_node: 2,
            created_at_ms: 1,
            index: 40,
            term: 3,
            snapshot_bytes: data.len() as u64,
            snapshot_sha256: hex::encode(Sha256::digest(data)),
            members: vec![],
            epochs: vec![],
        }
    }

    fn backup(m: &Manifest, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_manifest(&mut out, m).unwrap();
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn a_backup_reads_back_to_its_manifest_and_snapshot_bytes() {
        let data = b"GKSNAPFILE/4 {}\nbody".to_vec();
        let m = manifest(&data);
        let file = backup(&m, &data);
        let mut r = std::io::BufReader::new(&file[..]);
        assert_eq!(read_manifest(&mut r).unwrap(), m);
        let mut out = Vec::new();
        copy_snapshot(&m, &mut r, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn damage_truncation_and_foreign_files_are_refused_with_their_reason() {
        let data = b"GKSNAPFILE/4 {}\nbody".to_vec();
        let m = manifest(&data);
        let copy = |file: Vec<u8>| {
            let mut r = std::io::BufReader::new(&file[..]);
            let m = read_manifest(&mut r)?;
            copy_snapshot(&m, &mut r, &mut Vec::new())
        };
        let mut flipped = backup(&m, &data);
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(copy(flipped), Err(BackupError::Damaged(e)) if e.contains("SHA-256")));
        let mut short = backup(&m, &data);
        short.pop();
        assert!(matches!(copy(short), Err(BackupError::Damaged(e)) if e.contains("truncated")));
        let mut long = backup(&m, &data);
        long.push(b'x');
        assert!(matches!(copy(long), Err(BackupError::Damaged(_))));
        assert!(matches!(copy(data.clone()), Err(BackupError::NotABackup)));
        let mut bad = BACKUP_MAGIC.as_bytes().to_vec();
        bad.extend_from_slice(b"{not json}\n");
        assert!(matches!(copy(bad), Err(BackupError::Manifest(_))));
        let mut future = manifest(&data);
        future.format = 2;
        assert!(
            matches!(copy(backup(&future, &data)), Err(BackupError::Manifest(e)) if e.contains("format 2"))
        );
    }
}
