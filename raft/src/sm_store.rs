//! The state machine store: [`GatekeeperState`] in memory, persisted in sled, with snapshots as
//! files written atomically.
//!
//! * The state is stored as **keyed tables** (members, epochs, workers, clusters, contracts,
//!   sessions, canary values and writers: one sled tree each, `table/<name>`, a record per key,
//!   its value as JSON) plus one small **meta record** (`sm/meta`: `{format: 2, last_applied,
//!   last_membership, state}` as JSON with its SHA-256, the state without those tables). While
//!   applying, every 200 ms, the records changed since the last write ([`crate::state::Table`]
//!   tracks them) and the meta record are written in **one sled transaction**, so the cost is
//!   that of the records changed, never of the whole state, and a crash leaves tables and
//!   `last_applied` consistent. sled does not fsync and may lag: acceptable, because the state
//!   is rebuilt from the durable log (entries after `last_applied` are re-applied) and the
//!   latest snapshot. A snapshot install (and a start from a snapshot newer than sled) rewrites
//!   everything: meta record removed first, tables rewritten, meta record last, so an
//!   interrupted rewrite leaves no meta record and the next open starts from that snapshot.
//! * **Migration**: a store of format 1 (the whole state as one record, `sm/state`, before the
//!   tables existed) is rewritten as tables at open, then its old record is removed; an
//!   interrupted migration is done again at the next open.
//! * A **store id** ties the sled directory to the node: it is written both into sled and into
//!   `<data_dir>/sm.id` when the store is created. A sled directory that fails to open, has lost
//!   its id or state record, or whose record fails its checksum makes [`SmStore::open`] fail with
//!   a clear error: the node refuses to start rather than serve wrong (or empty) state.
//! * Checkpoints are files `<data_dir>/snapshots/checkpoint-<index>.json`: the state at every
//!   multiple of the checkpoint interval, announced for this node's signature
//!   ([`SmStore::subscribe_checkpoints`]); once the state records a certificate for one (a
//!   majority of the voters signed its digest, [`crate::state::checkpoint`]), it becomes the
//!   snapshot, certificate attached. Snapshots are never made of the state of the moment.
//! * Snapshots are files `<data_dir>/snapshots/snapshot-<index>.json`: written to a temp file,
//!   fsynced, renamed, and the directory fsynced, before openraft is told the snapshot exists (so
//!   the log is purged only behind a durable snapshot). Their data is in the snapshot format of
//!   [`crate::snapshot`] (header, length, SHA-256, JSON), decoded by [`snapshot::decode_from`]
//!   only. Snapshot data is streamed between files and the network, never held whole in memory:
//!   checkpoints are encoded straight into their files, and openraft's snapshot data is a file
//!   (its data from the file's position to its end).
//! * Snapshots being received from a leader are streamed to `<data_dir>/snapshots/.incoming-*`
//!   files ([`SmStore::incoming_snapshot_path`]); leftovers of an interrupted transfer are
//!   removed at open.
//! * Every directory is created `0700` and every file `0600` ([`crate::private_fs`]).

use crate::now_ms;
use crate::private_fs;
use crate::snapshot;
use crate::state::{Bytes32, CheckpointCertificate, GatekeeperState};
use crate::{CommandReply, Node, NodeId, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::Transactional;
use std::fs;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// The whole state as one record (format 1, read only: migrated at open).
const STATE_KEY: &[u8] = b"sm/state";
/// The meta record: the state without its keyed tables (format 2).
const META_KEY: &[u8] = b"sm/meta";
const ID_KEY: &[u8] = b"sm/id";
/// Format of the meta record: 2 = tables in their own trees; 1 (read only) = the whole state
/// in one record under [`STATE_KEY`].
const FORMAT: u32 = 2;
/// sled's page cache (its default, 1 GiB, grew with the tables: the state itself is in memory
/// already, sled is read only at open).
const SLED_CACHE_BYTES: u64 = 32 << 20;
/// Prefix of the tables' sled trees.
const TABLE_TREE_PREFIX: &str = "table/";
/// Format of snapshot and checkpoint files: 4 = [`SNAPSHOT_FILE_MAGIC`], a JSON header line
/// (`format`, `meta`), then the data as is, streamed in and out (the body's SHA-256 in the
/// data's own header covers it; the certificate is signed); 3 (read only) = the same with the
/// SHA-256 of the data in the header line, which had to be known before the data was written;
/// 2 (read only) = one JSON object with the data as a JSON string (escaping and unescaping a
/// large state cost seconds of CPU per checkpoint); 1 (read only) = the same with the bare JSON
/// of [`Applied`] as data (files written before the snapshot format existed). Files of formats
/// 1 and 2 are rewritten in format 4 when first read.
const SNAPSHOT_FILE_FORMAT: u32 = 4;
/// Starts a snapshot or checkpoint file of format 4 (older files start with `{`).
const SNAPSHOT_FILE_MAGIC: &[u8] = b"GKSNAPFILE/4 ";
/// Starts a snapshot or checkpoint file of format 3 (read only).
const SNAPSHOT_FILE_MAGIC_3: &[u8] = b"GKSNAPFILE/3 ";
/// Longest header line of a snapshot file (its metadata: the membership and the members'
/// addresses).
const MAX_FILE_HEADER_BYTES: u64 = 1 << 20;
/// Prefix of snapshot files being received.
const INCOMING_PREFIX: &str = ".incoming-";
/// Prefix of checkpoint files (the state at a checkpoint index, waiting for its certificate).
const CHECKPOINT_PREFIX: &str = "checkpoint-";
/// Uncertified checkpoint files kept (the newest).
const KEEP_CHECKPOINTS: usize = 4;

/// Errors opening the state machine store. Each names the path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmOpenError {
    /// sled could not open its directory.
    #[error("cannot open state machine store {path}: {source}")]
    Sled {
        /// The sled directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// The store is damaged or does not belong to this data dir.
    #[error("state machine store {path} is corrupt: {reason}; restore it from backup, or wipe this node's data dir and rejoin it so it is rebuilt from a snapshot")]
    Corrupt {
        /// The sled directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Other IO on the data dir.
    #[error("state machine store {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
}

/// Why `data_dir` is not fresh for a restore: a non-empty `snapshots/`, or one of `names`
/// (relative to it) exists. `None`: fresh.
pub(crate) fn not_fresh(data_dir: &Path, names: &[&str]) -> Option<(PathBuf, io::Error)> {
    let refuse = |path: PathBuf| {
        let e = io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the data dir already holds state; restore only into a fresh data dir (empty it, keeping only the enclave directory)",
        );
        Some((path, e))
    };
    let snapshots = data_dir.join("snapshots");
    if fs::read_dir(&snapshots).is_ok_and(|mut d| d.next().is_some()) {
        return refuse(snapshots);
    }
    names
        .iter()
        .map(|n| data_dir.join(n))
        .find(|p| p.exists())
        .and_then(refuse)
}

/// A snapshot file opened at its first byte: its metadata, the file, its length.
pub type WholeSnapshotFile = (SnapshotMeta<NodeId, Node>, fs::File, u64);

/// Applied state plus the Raft bookkeeping that goes with it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    /// Last applied log id.
    pub last_applied: Option<LogId<NodeId>>,
    /// Last applied membership.
    pub last_membership: StoredMembership<NodeId, Node>,
    /// The state.
    pub state: GatekeeperState,
    /// Bytes of commands applied since the last checkpoint index. A checkpoint is also taken
    /// once they reach [`CHECKPOINT_LOG_BYTES`], so the log behind the certified checkpoint
    /// stays bounded in bytes, not only in entries. Replicated like the rest (every node counts
    /// the same entries) and zero at every checkpoint, so no checkpoint body carries it: the
    /// bodies are the same as before it existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_bytes_since_checkpoint: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Bytes of commands after which a checkpoint is taken even if the checkpoint interval has not
/// come (a member flooding the log with proposals refused at apply, or large batches, would
/// otherwise grow every node's log until the next multiple of the interval).
pub const CHECKPOINT_LOG_BYTES: u64 = 64 << 20;

/// Disagreeing checkpoint signatures are logged at most once a minute.
static DISAGREEING: crate::lograte::LogGate =
    crate::lograte::LogGate::new(std::time::Duration::from_secs(60));

impl Applied {
    /// What this state vouches for: its cluster id, its membership's voters, its members' keys
    /// (checkpoint certificates are verified against it).
    pub fn anchor(&self) -> crate::state::Anchor {
        let voters = match self.state.certified_voters() {
            Some(v) => v.clone(),
            None => self.last_membership.membership().voter_ids().collect(),
        };
        crate::state::Anchor::from_state(&self.state, voters)
    }

    /// The context an entry appended by `leader` is applied in: the membership in force (the
    /// last membership entry applied before it) and that leader.
    pub fn apply_context(&self, leader: NodeId) -> crate::state::ApplyContext {
        let m = self.last_membership.membership();
        crate::state::ApplyContext {
            leader,
            voters: m.voter_ids().collect(),
            learners: m.learner_ids().collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    format: u32,
    applied: Applied,
}

/// [`Record`] as written: the state borrowed, not cloned (a clone of the whole state every
/// 200 ms showed in the write path's profile).
#[derive(Serialize)]
struct RecordRef<'a> {
    format: u32,
    applied: &'a Applied,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    meta: SnapshotMeta<NodeId, Node>,
    /// The snapshot data exactly as sent to peers ([`crate::snapshot`] format).
    data: String,
    sha256: String,
}

/// The header line of a snapshot file of format 4 (or 3, which also has `sha256`).
#[derive(Serialize, Deserialize)]
struct SnapshotFileHeader {
    format: u32,
    meta: SnapshotMeta<NodeId, Node>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

/// The start of a snapshot or checkpoint file of format 4 (magic and header line); the data
/// follows as is.
fn snapshot_file_head(meta: &SnapshotMeta<NodeId, Node>) -> io::Result<Vec<u8>> {
    let mut head = SNAPSHOT_FILE_MAGIC.to_vec();
    serde_json::to_writer(
        &mut head,
        &SnapshotFileHeader {
            format: SNAPSHOT_FILE_FORMAT,
            meta: meta.clone(),
            sha256: None,
        },
    )
    .map_err(io::Error::other)?;
    head.push(b'\n');
    Ok(head)
}

/// A snapshot or checkpoint file opened for its data: `file` is at the data's first byte and
/// the data runs to the end of the file (`len` bytes). Never read into memory whole.
struct OpenSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    file: fs::File,
    len: u64,
}

impl OpenSnapshot {
    /// The data's header line (its body digest), leaving the file where it was.
    fn data_header(&mut self) -> io::Result<snapshot::Header> {
        let at = self.file.stream_position()?;
        let h = snapshot::read_header(&mut io::BufReader::new(&mut self.file)).map_err(damaged);
        self.file.seek(SeekFrom::Start(at))?;
        h
    }

    /// Checks the data whole without decoding the state ([`snapshot::check_from`]), leaving
    /// the file where it was.
    fn check(&mut self) -> io::Result<snapshot::Header> {
        let at = self.file.stream_position()?;
        let h = snapshot::check_from(&mut self.file, self.len).map_err(damaged);
        self.file.seek(SeekFrom::Start(at))?;
        h
    }

    /// Decodes the data and checks it against the metadata ([`snapshot::validate_from`]).
    fn validate(&mut self) -> Result<snapshot::SnapshotData, snapshot::SnapshotDataError> {
        snapshot::validate_from(
            &self.meta,
            io::BufReader::with_capacity(1 << 20, &mut self.file),
            self.len,
        )
    }
}

/// A snapshot file's data that does not check is `InvalidData` (a damaged file); failing to
/// read or write it is not.
fn damaged(e: snapshot::SnapshotDataError) -> io::Error {
    match e {
        snapshot::SnapshotDataError::Read(m) | snapshot::SnapshotDataError::Write(m) => {
            io::Error::other(m)
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}

/// Opens a snapshot or checkpoint file at its data. A file of format 3 has its data checked
/// against the checksum in its header (read once); one of formats 1 or 2 (the data inside a
/// JSON object) is rewritten in format 4 first.
fn open_snapshot_file(path: &Path) -> io::Result<OpenSnapshot> {
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let mut file = fs::File::open(path)?;
    let total = file.metadata()?.len();
    let mut line = Vec::new();
    io::BufReader::new(&mut file)
        .take(MAX_FILE_HEADER_BYTES)
        .read_until(b'\n', &mut line)?;
    let format = if line.starts_with(SNAPSHOT_FILE_MAGIC) {
        SNAPSHOT_FILE_FORMAT
    } else if line.starts_with(SNAPSHOT_FILE_MAGIC_3) {
        3
    } else if line.first() != Some(&b'{') {
        return Err(bad("not a snapshot file (no GKSNAPFILE magic)".into()));
    } else {
        // Formats 1 and 2: one JSON object, read whole once and rewritten.
        let (meta, data) = read_legacy_snapshot_file(path)?;
        let head = snapshot_file_head(&meta)?;
        write_file_atomic(path, |f| {
            f.write_all(&head)?;
            f.write_all(&data)
        })?;
        tracing::info!(path = %path.display(), "rewrote a snapshot file in format 4");
        return open_snapshot_file(path);
    };
    if line.last() != Some(&b'\n') {
        return Err(bad("no end of the header line".into()));
    }
    let h: SnapshotFileHeader =
        serde_json::from_slice(&line[SNAPSHOT_FILE_MAGIC.len()..line.len() - 1])
            .map_err(|e| bad(format!("header: {e}")))?;
    if h.format != format {
        return Err(bad(format!(
            "header of format {} in a format-{format} file",
            h.format
        )));
    }
    let start = line.len() as u64;
    file.seek(SeekFrom::Start(start))?;
    if format == 3 {
        let sum = h.sha256.unwrap_or_default();
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher)?;
        if hex::encode(hasher.finalize()) != sum {
            return Err(bad("checksum mismatch".into()));
        }
        file.seek(SeekFrom::Start(start))?;
    }
    Ok(OpenSnapshot {
        meta: h.meta,
        file,
        len: total - start,
    })
}

/// A snapshot file of format 1 or 2 (one JSON object), as metadata and data in the snapshot
/// format.
fn read_legacy_snapshot_file(path: &Path) -> io::Result<(SnapshotMeta<NodeId, Node>, Vec<u8>)> {
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let f: SnapshotFile =
        serde_json::from_slice(&fs::read(path)?).map_err(|e| bad(e.to_string()))?;
    if hex::encode(Sha256::digest(f.data.as_bytes())) != f.sha256 {
        return Err(bad("checksum mismatch".into()));
    }
    match f.format {
        2 => Ok((f.meta, f.data.into_bytes())),
        1 => {
            // Written before the snapshot format: the data is the bare JSON of the state.
            let a: Applied =
                serde_json::from_str(&f.data).map_err(|e| bad(format!("snapshot data: {e}")))?;
            Ok((f.meta, snapshot::encode(&a)))
        }
        other => Err(bad(format!("unknown snapshot file format {other}"))),
    }
}

/// The state machine store. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct SmStore {
    applied: Arc<RwLock<Applied>>,
    db: sled::Db,
    /// The default tree (meta record) then one tree per table, in [`crate::state::TABLES`]
    /// order: the trees of one persist transaction.
    /// Replaced (under the persist lock) by a full rewrite, which drops the table trees.
    trees: Arc<RwLock<Vec<sled::Tree>>>,
    /// Held while writing to sled, so writes land in the order their changes were taken.
    persist_lock: Arc<std::sync::Mutex<()>>,
    /// A write failed after its changes were taken: the next one rewrites everything.
    rewrite_all: Arc<std::sync::atomic::AtomicBool>,
    /// Full rewrites running or waiting in the background (after snapshot installs): apply
    /// does not wait for them, nor start another. A count: after two installs in a row, the
    /// first to end must not let apply rewrite inline while the second waits (found by review).
    rewriting: Arc<std::sync::atomic::AtomicU32>,
    /// Jobs for the checkpoint thread, which encodes and writes checkpoints and promotes
    /// certified ones, one at a time in apply order, off the apply path. Each job carries a
    /// handle of the store; the thread ends when the last handle is dropped.
    checkpoint_jobs: std::sync::mpsc::Sender<CheckpointJob>,
    /// The highest certified index handed to the checkpoint thread.
    promote_requested: Arc<AtomicU64>,
    /// Checkpoints handed to the checkpoint thread and not yet written. While any is, the
    /// applied index is not persisted past it: a restart would not apply (and checkpoint)
    /// that index again, and this node would never sign that checkpoint.
    checkpoints_pending: Arc<AtomicU64>,
    /// Held while a snapshot file is written and older ones removed.
    snapshot_writer: Arc<std::sync::Mutex<()>>,
    snapshot_dir: PathBuf,
    /// When the changes were last written (ms since the Unix epoch).
    last_persist_ms: Arc<AtomicU64>,
    /// The replica's instruments (apply duration and batch size are observed here).
    telemetry: crate::telemetry::RaftTelemetry,
    /// Numbers the incoming snapshot files of this process.
    incoming_seq: Arc<AtomicU64>,
    /// The state of the snapshot the Raft server received and validated last, handed to
    /// `install_snapshot` so it is not decoded a second time (a million workers' state is
    /// gigabytes while decoding: found by registry_bench).
    validated: Arc<std::sync::Mutex<Option<ValidatedSnapshot>>>,
    /// Checkpoint every this many log indexes (0: never).
    checkpoint_interval: Arc<AtomicU64>,
    /// Index of the newest snapshot file (0: none).
    snapshot_index: Arc<AtomicU64>,
    /// Index of the newest snapshot file known whole: written by this process (its data
    /// checked or made on the way) or checked at open. Sending it again does not re-read it.
    verified_snapshot: Arc<AtomicU64>,
    /// The newest checkpoint this node wrote: (index, body digest), for its signature.
    checkpoints: Arc<watch::Sender<Option<(u64, Bytes32)>>>,
    /// Index of the newest certified snapshot made from a checkpoint (openraft is told to take
    /// it as its snapshot).
    certified: Arc<watch::Sender<u64>>,
}

/// The changed records are written at most this often while applying (it only shortens replay:
/// the fsynced log and the latest snapshot rebuild everything after it).
const PERSIST_EVERY_MS: u64 = 200;
/// Records per sled batch in a full rewrite of the tables.
const REWRITE_CHUNK: usize = 10_000;

/// Applies a normal entry's bytes: one proposal, or a batch of them ([`crate::batch`]), each
/// applied on its own in order. The reply: the proposal's, or the framed list of the batch's
/// (a malformed batch is refused as a whole, changing nothing).
fn apply_normal(
    state: &mut GatekeeperState,
    bytes: &[u8],
    ctx: &crate::state::ApplyContext,
) -> Vec<u8> {
    let one = |state: &mut GatekeeperState, bytes: &[u8]| {
        let reply = state.apply_entry(bytes, ctx);
        if let Some((at, votes)) = state.disagreeing_checkpoint() {
            if let Some(n) = DISAGREEING.pass(std::time::Instant::now()) {
                let votes: Vec<String> = votes
                    .iter()
                    .map(|(n, d)| format!("node {n}: {}", hex::encode(&d.0[..8])))
                    .collect();
                tracing::error!(
                    index = at, votes = %votes.join(", "), since_last_line = n,
                    "nodes signed different states at the same checkpoint: their \
                     logs or state machines diverged (a leader that sent \
                     different entries under one log id, or a damaged node); \
                     nothing is certified until it is resolved"
                );
            }
        }
        serde_json::to_vec(&reply).expect("replies serialize")
    };
    match crate::batch::decode(bytes) {
        None => one(state, bytes),
        Some(Ok(items)) => {
            let replies: Vec<Vec<u8>> = items.into_iter().map(|i| one(state, i)).collect();
            crate::batch::encode(&replies)
        }
        Some(Err(e)) => serde_json::to_vec(&crate::state::Reply::Rejected {
            code: crate::state::RejectCode::MalformedCommand,
            message: e,
        })
        .expect("replies serialize"),
    }
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &e).into()
}

/// Writes `bytes` to `path` atomically: temp file (mode `0600`), fsync, rename, fsync of the
/// directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_parts(path, &[bytes])
}

/// [`write_atomic`] of the concatenation of `parts`.
fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    write_file_atomic(path, |f| {
        let mut w = io::BufWriter::with_capacity(1 << 20, f);
        for part in parts {
            w.write_all(part)?;
        }
        w.flush()
    })
}

/// Writes a file atomically with what `write` writes into it: temp file (mode `0600`), fsync,
/// rename, fsync of the directory. If `write` fails the temp file is removed and `path` is
/// untouched.
fn write_file_atomic(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let written = (|| {
        let mut f = private_fs::create_new_file(&tmp)?;
        write(&mut f)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

impl SmStore {
    /// Opens the store under `data_dir` (`sm/` for sled, `sm.id`, `snapshots/`). Creates it on a
    /// fresh data dir; refuses a damaged one.
    pub fn open(data_dir: &Path) -> Result<Self, SmOpenError> {
        let sled_dir = data_dir.join("sm");
        let id_file = data_dir.join("sm.id");
        let snapshot_dir = data_dir.join("snapshots");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SmOpenError::Io { path, source }
        };
        private_fs::create_dir_all(&snapshot_dir).map_err(io(&snapshot_dir))?;
        remove_incoming(&snapshot_dir).map_err(io(&snapshot_dir))?;
        let corrupt = |reason: String| SmOpenError::Corrupt {
            path: sled_dir.clone(),
            reason,
        };

        let fresh = !id_file.exists();
        if fresh && sled_dir.exists() {
            return Err(corrupt(format!(
                "{} is missing but the sled directory exists",
                id_file.display()
            )));
        }
        let db = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|source| SmOpenError::Sled {
                path: sled_dir.clone(),
                source,
            })?;

        let trees = open_trees(&db).map_err(|source| SmOpenError::Sled {
            path: sled_dir.clone(),
            source,
        })?;
        let applied = if fresh {
            let mut id = [0u8; 16];
            getrandom_id(&mut id);
            let id_hex = hex::encode(id);
            let store = Self::new(Applied::default(), db, trees, snapshot_dir);
            store
                .db
                .insert(ID_KEY, id_hex.as_bytes())
                .map_err(|e| corrupt(e.to_string()))?;
            store.persist_all().map_err(|e| corrupt(e.to_string()))?;
            store.db.flush().map_err(|e| corrupt(e.to_string()))?;
            write_atomic(&id_file, id_hex.as_bytes()).map_err(io(&id_file))?;
            return Ok(store);
        } else {
            let want = fs::read_to_string(&id_file).map_err(io(&id_file))?;
            let have = db
                .get(ID_KEY)
                .map_err(|e| corrupt(e.to_string()))?
                .ok_or_else(|| corrupt("store id is missing (the sled data was lost)".into()))?;
            if have.as_ref() != want.trim().as_bytes() {
                return Err(corrupt(format!(
                    "store id {} does not match {} in {}",
                    String::from_utf8_lossy(&have),
                    want.trim(),
                    id_file.display()
                )));
            }
            load(&db, &trees).map_err(corrupt)?
        };
        let (applied, migrate, no_meta) = match applied {
            Loaded::Tables(a) => (a, false, false),
            Loaded::Format1(a) => (a, true, false),
            // An interrupted full rewrite: the snapshot it was made from is on disk (below).
            Loaded::NoMeta => (Applied::default(), false, true),
        };

        let store = Self::new(applied, db, trees, snapshot_dir);
        if migrate {
            store.persist_all().map_err(|e| corrupt(e.to_string()))?;
            store.db.flush().map_err(|e| corrupt(e.to_string()))?;
            tracing::info!(
                path = %sled_dir.display(),
                "migrated the state store to keyed tables (format 2)"
            );
        }
        // sled may lag (no fsync); the latest snapshot may be newer: start from the newer one.
        if let Some(mut snap) = store
            .open_latest_snapshot()
            .map_err(|e| corrupt(format!("snapshot: {e}")))?
        {
            let current = store.read().last_applied;
            if snap.meta.last_log_id > current || no_meta {
                let d = snap
                    .validate()
                    .map_err(|e| corrupt(format!("latest snapshot: {e}")))?;
                *store.applied.write().expect("sm lock") = d.applied;
                store.persist_all().map_err(|e| corrupt(e.to_string()))?;
            } else {
                // Not loaded, still checked: a damaged snapshot is found at start, not when a
                // follower needs it.
                snap.check()
                    .map_err(|e| corrupt(format!("latest snapshot: {e}")))?;
            }
            let index = snap.meta.last_log_id.map_or(0, |l| l.index);
            store.snapshot_index.store(index, Ordering::Relaxed);
            store.verified_snapshot.store(index, Ordering::Relaxed);
            store.certified.send_replace(index);
        } else if no_meta {
            return Err(corrupt(
                "the state record is missing and there is no snapshot to rebuild it from".into(),
            ));
        }
        // A certificate applied before a crash but not yet made into a snapshot; the newest
        // checkpoint still waiting for its signatures.
        let cert = store.read().state.checkpoint.clone();
        if let Some(cert) = cert {
            match store.promote(&cert) {
                Ok(_) => {}
                // A damaged checkpoint file is not this node's state: it is dropped, and the log
                // is kept until a later checkpoint is certified.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::error!(index = cert.index, error = %e, "dropping a damaged checkpoint file");
                    let _ = fs::remove_file(store.checkpoint_path(cert.index));
                }
                Err(e) => return Err(corrupt(format!("checkpoint: {e}"))),
            }
        }
        if let Some((index, path)) = store
            .checkpoint_files()
            .map_err(io(&store.snapshot_dir))?
            .pop()
        {
            // Checked whole before this node signs it.
            let checked = open_snapshot_file(&path).and_then(|mut f| f.check());
            match checked {
                Ok(h) => {
                    store
                        .checkpoints
                        .send_replace(Some((index, Bytes32(h.sha256))));
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a damaged checkpoint file"),
            }
        }
        Ok(store)
    }

    fn new(applied: Applied, db: sled::Db, trees: Vec<sled::Tree>, snapshot_dir: PathBuf) -> Self {
        Self {
            applied: Arc::new(RwLock::new(applied)),
            db,
            trees: Arc::new(RwLock::new(trees)),
            persist_lock: Default::default(),
            rewrite_all: Default::default(),
            rewriting: Default::default(),
            checkpoint_jobs: spawn_checkpoint_thread(),
            promote_requested: Default::default(),
            checkpoints_pending: Default::default(),
            snapshot_writer: Default::default(),
            snapshot_dir,
            last_persist_ms: Default::default(),
            telemetry: Default::default(),
            incoming_seq: Default::default(),
            validated: Default::default(),
            checkpoint_interval: Default::default(),
            snapshot_index: Default::default(),
            verified_snapshot: Default::default(),
            checkpoints: Arc::new(watch::channel(None).0),
            certified: Arc::new(watch::channel(0).0),
        }
    }

    /// The newest snapshot file, whole (its header line and data), checked first: what a backup
    /// holds ([`SmStore::restore`] reads it back). `None`: no snapshot yet (none certified).
    pub fn latest_snapshot_file(&self) -> io::Result<Option<WholeSnapshotFile>> {
        let Some(mut o) = self.open_latest_snapshot()? else {
            return Ok(None);
        };
        o.check()?;
        let mut file = o.file;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(0))?;
        Ok(Some((o.meta, file, len)))
    }

    /// A snapshot file's metadata (its header line only; nothing is checked beyond it).
    pub fn snapshot_file_meta(path: &Path) -> io::Result<SnapshotMeta<NodeId, Node>> {
        open_snapshot_file(path).map(|o| o.meta)
    }

    /// Reads a snapshot file offline (a backup's payload): its metadata and its state, decoded
    /// and checked against the metadata, the body digest and the certificate's shape.
    pub fn read_snapshot_file(
        path: &Path,
    ) -> io::Result<(SnapshotMeta<NodeId, Node>, snapshot::SnapshotData)> {
        let mut o = open_snapshot_file(path)?;
        let d = o.validate().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok((o.meta, d))
    }

    /// Makes a fresh data dir start from a snapshot file (a backup's payload): the state store
    /// is created, the snapshot written as this node's latest snapshot, and the state loaded
    /// from it and persisted. Refuses a data dir that already holds a state store. The Raft log
    /// is not touched (the caller writes the vote).
    pub fn restore(
        data_dir: &Path,
        snapshot_file: &Path,
    ) -> Result<(SnapshotMeta<NodeId, Node>, Applied), SmOpenError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SmOpenError::Io { path, source }
        };
        if let Some((path, source)) = not_fresh(data_dir, &["sm.id", "sm"]) {
            return Err(SmOpenError::Io { path, source });
        }
        let mut o = open_snapshot_file(snapshot_file).map_err(io(snapshot_file))?;
        let start = o.file.stream_position().map_err(io(snapshot_file))?;
        let d = o.validate().map_err(|e| SmOpenError::Corrupt {
            path: snapshot_file.to_path_buf(),
            reason: e.to_string(),
        })?;
        let store = SmStore::open(data_dir)?;
        let mut src = o.file;
        src.seek(SeekFrom::Start(start))
            .map_err(io(snapshot_file))?;
        store
            .write_snapshot(&o.meta, |f| io::copy(&mut src, f).map(|_| ()))
            .map_err(io(&store.snapshot_dir))?;
        let index = o.meta.last_log_id.map_or(0, |l| l.index);
        if !store.snapshot_path(index).exists() {
            return Err(SmOpenError::Io {
                path: store.snapshot_path(index),
                source: io::Error::other("the restored snapshot file was not written"),
            });
        }
        let restored = d.applied.clone();
        *store.applied.write().expect("sm lock poisoned") = d.applied;
        let corrupt = |e: String| SmOpenError::Corrupt {
            path: data_dir.join("sm"),
            reason: e,
        };
        store.persist_all().map_err(|e| corrupt(e.to_string()))?;
        store.db.flush().map_err(|e| corrupt(e.to_string()))?;
        store.snapshot_index.store(index, Ordering::Relaxed);
        Ok((o.meta, restored))
    }

    /// Waits until the checkpoints and snapshots of the entries applied so far are written.
    pub async fn checkpoints_written(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.checkpoint_jobs.send(CheckpointJob::Done(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The replica's instruments, shared by every handle of this store.
    pub fn telemetry(&self) -> &crate::telemetry::RaftTelemetry {
        &self.telemetry
    }

    /// Checkpoints every `interval` log indexes (0: never). Snapshots are made only from
    /// checkpoints a majority of the voters signed ([`crate::state::CheckpointCertificate`]).
    pub fn set_checkpoint_interval(&self, interval: u64) {
        self.checkpoint_interval.store(interval, Ordering::Relaxed);
    }

    /// Log index of this node's snapshot (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index.load(Ordering::Relaxed)
    }

    /// The newest checkpoint this node wrote, (index, body digest): what it signs.
    pub fn subscribe_checkpoints(&self) -> watch::Receiver<Option<(u64, Bytes32)>> {
        self.checkpoints.subscribe()
    }

    /// The index of the newest snapshot made from a certified checkpoint.
    pub fn subscribe_certified(&self) -> watch::Receiver<u64> {
        self.certified.subscribe()
    }

    fn checkpoint_path(&self, index: u64) -> PathBuf {
        self.snapshot_dir
            .join(format!("{CHECKPOINT_PREFIX}{index:020}.json"))
    }

    /// Checkpoint files, oldest first.
    fn checkpoint_files(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut out: Vec<(u64, PathBuf)> = fs::read_dir(&self.snapshot_dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let index = name
                    .strip_prefix(CHECKPOINT_PREFIX)?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((index, e.path()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Writes the state at a checkpoint index (keeping the newest few) and announces it. The
    /// state is encoded straight into the file ([`snapshot::encode_to`]), never into memory.
    fn write_checkpoint(&self, meta: &SnapshotMeta<NodeId, Node>, a: &Applied) -> io::Result<()> {
        let index = meta.last_log_id.map_or(0, |l| l.index);
        if index <= self.snapshot_index.load(Ordering::Relaxed) {
            return Ok(());
        }
        let head = snapshot_file_head(meta)?;
        let mut digest = None;
        write_file_atomic(&self.checkpoint_path(index), |f| {
            f.write_all(&head)?;
            digest = Some(snapshot::encode_to(a, f)?);
            Ok(())
        })?;
        let digest = digest.expect("written above");
        let files = self.checkpoint_files()?;
        for (_, p) in files
            .iter()
            .take(files.len().saturating_sub(KEEP_CHECKPOINTS))
        {
            let _ = fs::remove_file(p);
        }
        self.checkpoints.send_replace(Some((index, digest)));
        Ok(())
    }

    /// Makes the certified checkpoint `cert` this node's snapshot, if this node wrote that
    /// checkpoint and its state there is the certified one. Returns whether it did.
    fn promote(&self, cert: &CheckpointCertificate) -> io::Result<bool> {
        if cert.index <= self.snapshot_index.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let path = self.checkpoint_path(cert.index);
        if !path.exists() {
            tracing::debug!(
                index = cert.index,
                "no local checkpoint at the certified index; the next one will do"
            );
            return Ok(false);
        }
        let mut f = open_snapshot_file(&path)?;
        let digest = Bytes32(f.data_header()?.sha256);
        if digest != cert.digest {
            tracing::error!(
                index = cert.index,
                "this node's state at a checkpoint differs from the one a majority of the \
                 voters certified: its state machine diverged; wipe its data dir and rejoin it"
            );
            return Ok(false);
        }
        // Copied with the certificate in a stream; the body's checksum is checked on the way
        // (a damaged checkpoint file is not made the snapshot).
        let meta = f.meta.clone();
        self.write_snapshot(&meta, |out| {
            let mut w = io::BufWriter::with_capacity(1 << 20, out);
            snapshot::copy_with_certificate(
                &mut io::BufReader::with_capacity(1 << 20, &mut f.file),
                &mut w,
                cert,
            )
            .map_err(damaged)?;
            w.flush()
        })?;
        tracing::info!(
            index = cert.index,
            signers = cert.signatures.len(),
            "certified checkpoint"
        );
        Ok(true)
    }

    /// Drops checkpoint files at or below `index` (a snapshot there exists).
    fn forget_checkpoints(&self, index: u64) {
        if let Ok(files) = self.checkpoint_files() {
            for (i, p) in files {
                if i <= index {
                    let _ = fs::remove_file(p);
                }
            }
        }
    }

    /// A read guard on the applied state (for reads served by the node).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        self.applied.read().expect("sm lock poisoned")
    }

    /// The directory holding snapshot files.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    /// Keeps the state of a received snapshot the Raft server validated, for the
    /// `install_snapshot` of the same snapshot (replacing any earlier one).
    pub fn stage_validated(&self, meta: SnapshotMeta<NodeId, Node>, applied: Applied) {
        *self.validated.lock().unwrap_or_else(|e| e.into_inner()) = Some((meta, applied));
    }

    /// Forgets a staged state openraft did not install (its install takes it).
    pub fn clear_validated(&self) {
        self.validated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// A fresh path for a snapshot being received (`<snapshots>/.incoming-<pid>-<n>`). Removed at
    /// the next open if the transfer never finished.
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        let n = self
            .incoming_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.snapshot_dir
            .join(format!("{INCOMING_PREFIX}{}-{n}", std::process::id()))
    }

    /// Writes the records changed since the last write and the meta record, in one sled
    /// transaction.
    fn persist(&self) -> Result<(), sled::Error> {
        let order = self.persist_lock.lock().expect("persist lock poisoned");
        self.persist_locked(order)
    }

    /// [`SmStore::persist`], holding the persist lock.
    fn persist_locked(&self, order: std::sync::MutexGuard<'_, ()>) -> Result<(), sled::Error> {
        if self.rewrite_all.load(Ordering::Relaxed) {
            return self.persist_all_locked(order);
        }
        let (changes, meta) = {
            let mut a = self.applied.write().expect("sm lock poisoned");
            let changes = a.state.take_table_changes();
            (changes, encode_meta(&mut a))
        };
        let mut batches = vec![sled::Batch::default()];
        batches[0].insert(META_KEY, meta);
        for (_, records) in changes {
            let mut b = sled::Batch::default();
            for (k, v) in records {
                match v {
                    Some(v) => b.insert(k, v),
                    None => b.remove(k),
                }
            }
            batches.push(b);
        }
        let trees = self.trees.read().expect("trees lock poisoned").clone();
        let written = trees.as_slice().transaction(|views| {
            for (view, batch) in views.iter().zip(&batches) {
                view.apply_batch(batch)?;
            }
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        });
        self.last_persist_ms.store(now_ms(), Ordering::Relaxed);
        written.map_err(|e| {
            // The changes taken are not in sled: only a full rewrite makes it whole again.
            self.rewrite_all.store(true, Ordering::Relaxed);
            match e {
                sled::transaction::TransactionError::Storage(e) => e,
                sled::transaction::TransactionError::Abort(()) => {
                    sled::Error::ReportableBug("persist transaction aborted".into())
                }
            }
        })
    }

    /// Rewrites every table and the meta record (after a snapshot replaced the state, at
    /// creation and migration). The meta record is removed first and written last: an
    /// interrupted rewrite leaves none, and the next open starts from the latest snapshot.
    fn persist_all(&self) -> Result<(), sled::Error> {
        self.persist_all_locked(self.persist_lock.lock().expect("persist lock poisoned"))
    }

    /// [`SmStore::persist_all`], holding the persist lock.
    fn persist_all_locked(&self, _order: std::sync::MutexGuard<'_, ()>) -> Result<(), sled::Error> {
        // A copy of the tables (cheap) taken with the meta record under the lock; encoded and
        // written outside it, a chunk at a time (a registry of a million workers must not stop
        // every reader of the state, nor be encoded all at once: found by registry_bench). The
        // flag is cleared with the copy: a snapshot installed meanwhile sets it again, and the
        // next persist rewrites that state (clearing it at the end lost such a request).
        // The meta record (with the applied index) is not written past a checkpoint still
        // being written (see `checkpoints_pending`): the tables are, and the next write adds
        // the meta record with the changes since.
        let (tables, meta) = {
            let mut a = self.applied.write().expect("sm lock poisoned");
            let tables = a.state.tables_for_rewrite();
            self.rewrite_all.store(false, Ordering::Relaxed);
            let pending = self.checkpoints_pending.load(Ordering::Acquire) > 0;
            (tables, (!pending).then(|| encode_meta(&mut a)))
        };
        let written = self.rewrite_tables(tables, meta);
        if written.is_err() {
            self.rewrite_all.store(true, Ordering::Relaxed);
        }
        written
    }

    /// Writes `tables` in place of the stored ones, then `meta`.
    fn rewrite_tables(
        &self,
        tables: crate::state::Tables,
        meta: Option<Vec<u8>>,
    ) -> Result<(), sled::Error> {
        self.db.remove(META_KEY)?;
        // Dropping a tree frees its pages; clearing one removes its keys one by one (18 s of a
        // snapshot install at a million workers: found by registry_bench).
        for name in crate::state::TABLES {
            self.db.drop_tree(format!("{TABLE_TREE_PREFIX}{name}"))?;
        }
        let trees = open_trees(&self.db)?;
        *self.trees.write().expect("trees lock poisoned") = trees.clone();
        tables.for_each_chunk(REWRITE_CHUNK, |i, records| {
            let mut b = sled::Batch::default();
            for (k, v) in records {
                b.insert(k, v);
            }
            trees[1 + i].apply_batch(b)
        })?;
        if let Some(meta) = meta {
            self.db.insert(META_KEY, meta)?;
        }
        // A format-1 record is now migrated.
        self.db.remove(STATE_KEY)?;
        self.last_persist_ms.store(now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// Writes the changes if [`PERSIST_EVERY_MS`] passed since the last write and no
    /// checkpoint is waiting to be written.
    fn persist_if_due(&self) -> Result<(), sled::Error> {
        let last = self.last_persist_ms.load(Ordering::Relaxed);
        if now_ms().saturating_sub(last) >= PERSIST_EVERY_MS
            && self.checkpoints_pending.load(Ordering::Acquire) == 0
            && self.rewriting.load(Ordering::Acquire) == 0
        {
            // A full rewrite in the background (after a snapshot install) holds the lock for
            // seconds: apply goes on, and its changes are written once it is done.
            match self.persist_lock.try_lock() {
                Ok(order) => self.persist_locked(order)?,
                Err(std::sync::TryLockError::WouldBlock) => {}
                Err(std::sync::TryLockError::Poisoned(e)) => panic!("persist lock poisoned: {e}"),
            }
        }
        Ok(())
    }

    /// Writes the changes and flushes sled (called on graceful shutdown, after the pending
    /// checkpoints are written: [`SmStore::checkpoints_written`]).
    pub fn flush(&self) -> Result<(), sled::Error> {
        if self.checkpoints_pending.load(Ordering::Acquire) == 0 {
            self.persist()?;
        }
        self.db.flush().map(|_| ())
    }

    fn snapshot_path(&self, index: u64) -> PathBuf {
        self.snapshot_dir.join(format!("snapshot-{index:020}.json"))
    }

    /// The newest snapshot file, opened at its data. The checkpoint thread may write a newer
    /// one and remove this one meanwhile (openraft builds and sends snapshots concurrently): a
    /// file gone before it was opened is looked for again (a vanished file stopped Raft: found
    /// by test); once open, its data stays readable even if it is removed.
    fn open_latest_snapshot(&self) -> io::Result<Option<OpenSnapshot>> {
        let mut tries = 0;
        loop {
            let mut names: Vec<PathBuf> = fs::read_dir(&self.snapshot_dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("snapshot-") && n.ends_with(".json"))
                })
                .collect();
            names.sort();
            let Some(path) = names.pop() else {
                return Ok(None);
            };
            match open_snapshot_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 8 => tries += 1,
                other => return other.map(Some),
            }
        }
    }

    /// The newest snapshot as openraft takes it (to send it): its data is the file from its
    /// position on, checked first unless known whole (header, lengths, SHA-256, certificate;
    /// read once without decoding the state), so a damaged file is reported here rather than
    /// sent.
    fn latest_snapshot(&self) -> io::Result<Option<Snapshot<TypeConfig>>> {
        let Some(mut o) = self.open_latest_snapshot()? else {
            return Ok(None);
        };
        let index = o.meta.last_log_id.map_or(0, |l| l.index);
        if index != self.verified_snapshot.load(Ordering::Relaxed) {
            o.check()?;
            self.verified_snapshot.fetch_max(index, Ordering::Relaxed);
        }
        Ok(Some(Snapshot {
            meta: o.meta,
            snapshot: Box::new(tokio::fs::File::from_std(o.file)),
        }))
    }

    /// Writes a snapshot file (the data is what `data` writes) unless a newer one exists, then
    /// removes older snapshots and the checkpoints it covers.
    fn write_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, Node>,
        data: impl FnOnce(&mut fs::File) -> io::Result<()>,
    ) -> io::Result<()> {
        let index = meta.last_log_id.map_or(0, |l| l.index);
        let head = snapshot_file_head(meta)?;
        let path = self.snapshot_path(index);
        // One writer at a time: an installed snapshot and a promoted checkpoint (the checkpoint
        // thread) may land together, at the same index even.
        let _one = self
            .snapshot_writer
            .lock()
            .expect("snapshot writer lock poisoned");
        let snapshots = || -> io::Result<Vec<PathBuf>> {
            Ok(fs::read_dir(&self.snapshot_dir)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("snapshot-"))
                })
                .collect())
        };
        // A build that finishes after a newer snapshot was installed (openraft runs them
        // concurrently) must neither replace nor delete it: the log may already be purged up to
        // the newer one. Names are zero-padded, so they order as their indexes do.
        if snapshots()?.iter().any(|p| *p > path) {
            return Ok(());
        }
        write_file_atomic(&path, |f| {
            f.write_all(&head)?;
            data(f)
        })?;
        // Keep only the newest snapshot (it is durable now).
        for p in snapshots()? {
            if p < path {
                let _ = fs::remove_file(p);
            }
        }
        self.snapshot_index.fetch_max(index, Ordering::Relaxed);
        self.verified_snapshot.fetch_max(index, Ordering::Relaxed);
        self.forget_checkpoints(index);
        self.certified.send_if_modified(|c| {
            let newer = index > *c;
            *c = (*c).max(index);
            newer
        });
        Ok(())
    }
}

/// A received snapshot's metadata and the state it decoded to.
type ValidatedSnapshot = (SnapshotMeta<NodeId, Node>, Applied);

/// Work for the checkpoint thread.
enum CheckpointJob {
    /// Encode and write these checkpoints, then promote this certificate's.
    Write {
        store: Box<SmStore>,
        checkpoints: Vec<(SnapshotMeta<NodeId, Node>, Applied)>,
        certificate: Option<CheckpointCertificate>,
    },
    /// Answer once the jobs before it are done.
    Done(tokio::sync::oneshot::Sender<()>),
}

/// Starts the checkpoint thread; it ends when every sender is gone.
fn spawn_checkpoint_thread() -> std::sync::mpsc::Sender<CheckpointJob> {
    let (tx, rx) = std::sync::mpsc::channel::<CheckpointJob>();
    let spawned = std::thread::Builder::new()
        .name("gk-checkpoints".into())
        .spawn(move || {
            for job in rx {
                match job {
                    CheckpointJob::Write {
                        store,
                        checkpoints,
                        certificate,
                    } => {
                        // A checkpoint that could not be written is not certified here (no
                        // snapshot: the log is kept until a later one is): reported, not fatal.
                        let pending = !checkpoints.is_empty();
                        for (meta, a) in checkpoints {
                            if let Err(e) = store.write_checkpoint(&meta, &a) {
                                tracing::error!(error = %e, "writing a checkpoint failed");
                            }
                        }
                        if pending {
                            store.checkpoints_pending.fetch_sub(1, Ordering::AcqRel);
                        }
                        if let Some(c) = certificate {
                            if let Err(e) = store.promote(&c) {
                                tracing::error!(error = %e, index = c.index, "writing the certified snapshot failed");
                            }
                        }
                    }
                    CheckpointJob::Done(tx) => {
                        let _ = tx.send(());
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // Without the thread no checkpoint is written: the log is kept (nothing is lost).
        tracing::error!(error = %e, "could not start the checkpoint thread");
    }
    tx
}

/// Removes snapshot files left by transfers that never finished.
fn remove_incoming(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(INCOMING_PREFIX))
        {
            tracing::info!(path = %e.path().display(), "removing an unfinished incoming snapshot");
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

fn getrandom_id(out: &mut [u8; 16]) {
    // Uniqueness, not secrecy: time and pid are enough to tell two stores apart.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = Sha256::digest(format!("{nanos}-{}", std::process::id()));
    out.copy_from_slice(&h[..16]);
}

fn encode_record(a: &Applied) -> Vec<u8> {
    let body = serde_json::to_vec(&RecordRef {
        format: FORMAT,
        applied: a,
    })
    .expect("state serializes");
    let mut out = Sha256::digest(&body).to_vec();
    out.extend_from_slice(&body);
    out
}

/// The meta record of `a`: the state without its tables (moved out and back, at no cost).
fn encode_meta(a: &mut Applied) -> Vec<u8> {
    let tables = a.state.take_tables();
    let out = encode_record(a);
    a.state.put_tables(tables);
    out
}

/// A record: its format and what it holds.
fn decode_record(raw: &[u8]) -> Result<(u32, Applied), String> {
    if raw.len() < 32 {
        return Err("state record is truncated".into());
    }
    let (sum, body) = raw.split_at(32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("state record fails its checksum".into());
    }
    let r: Record = serde_json::from_slice(body).map_err(|e| format!("state record: {e}"))?;
    if r.format != FORMAT && r.format != 1 {
        return Err(format!(
            "unknown state record format {} (this version reads 1 and 2: a newer version wrote \
             this data directory; run that version)",
            r.format
        ));
    }
    Ok((r.format, r.applied))
}

/// The default tree, then each table's tree.
fn open_trees(db: &sled::Db) -> Result<Vec<sled::Tree>, sled::Error> {
    let mut trees = vec![(**db).clone()];
    for name in crate::state::TABLES {
        trees.push(db.open_tree(format!("{TABLE_TREE_PREFIX}{name}"))?);
    }
    Ok(trees)
}

/// What an existing store holds.
enum Loaded {
    /// Format 2: the meta record with the tables loaded into it.
    Tables(Applied),
    /// Format 1: the whole state in one record (to migrate).
    Format1(Applied),
    /// No record at all (an interrupted full rewrite).
    NoMeta,
}

fn load(db: &sled::Db, trees: &[sled::Tree]) -> Result<Loaded, String> {
    // A format-1 record is migrated even if a meta record exists (a migration interrupted
    // after its meta record, before the old record's removal).
    if let Some(raw) = db.get(STATE_KEY).map_err(|e| e.to_string())? {
        let (format, a) = decode_record(&raw)?;
        if format != 1 {
            return Err(format!("the record at sm/state has format {format}, not 1"));
        }
        return Ok(Loaded::Format1(a));
    }
    let Some(raw) = db.get(META_KEY).map_err(|e| e.to_string())? else {
        return Ok(Loaded::NoMeta);
    };
    let (format, mut a) = decode_record(&raw)?;
    if format != FORMAT {
        return Err(format!("the meta record has format {format}, not {FORMAT}"));
    }
    for (name, tree) in crate::state::TABLES.iter().zip(&trees[1..]) {
        for kv in tree.iter() {
            let (k, v) = kv.map_err(|e| e.to_string())?;
            a.state
                .load_record(name, &k, &v)
                .map_err(|e| format!("table {name}: {e}"))?;
        }
    }
    Ok(Loaded::Tables(a))
}

/// The snapshot metadata of the state `a`.
fn snapshot_meta(a: &Applied) -> SnapshotMeta<NodeId, Node> {
    let index = a.last_applied.map_or(0, |l| l.index);
    let term = a.last_applied.map_or(0, |l| l.leader_id.term);
    SnapshotMeta {
        last_log_id: a.last_applied,
        last_membership: a.last_membership.clone(),
        snapshot_id: format!("{term}-{index}"),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    /// The snapshot is the newest certified checkpoint, already written when its certificate
    /// was applied (openraft is asked to build one only then); never the state of the moment,
    /// which no one but this node vouches for.
    ///
    /// With checkpoints off (interval 0, which a replica never uses) it snapshots the state of
    /// the moment without a certificate, which no peer installs: openraft's storage conformance
    /// suite runs that way.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let this = self.clone();
        if self.checkpoint_interval.load(Ordering::Relaxed) == 0 {
            let a = self.read().clone();
            let m = snapshot_meta(&a);
            let f = tokio::task::spawn_blocking(move || {
                this.write_snapshot(&m, |f| snapshot::encode_to(&a, f).map(|_| ()))?;
                let path = this.snapshot_path(m.last_log_id.map_or(0, |l| l.index));
                match open_snapshot_file(&path) {
                    // Not written: a newer snapshot was installed meanwhile; that one is it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => this
                        .open_latest_snapshot()?
                        .ok_or_else(|| io::Error::other("the snapshot written is gone")),
                    other => other,
                }
            })
            .await
            .map_err(|e| snap_err(io::Error::other(e.to_string())))?
            .map_err(snap_err)?;
            return Ok(Snapshot {
                meta: f.meta,
                snapshot: Box::new(tokio::fs::File::from_std(f.file)),
            });
        }
        tokio::task::spawn_blocking(move || this.latest_snapshot())
            .await
            .map_err(|e| snap_err(io::Error::other(e.to_string())))?
            .map_err(snap_err)?
            .ok_or_else(|| {
                snap_err(io::Error::other(
                    "no certified checkpoint to make a snapshot of",
                ))
            })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = SmStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let a = self.read();
        Ok((a.last_applied, a.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandReply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        // No await below: the span stays entered for the whole (synchronous) apply.
        let _span = crate::telemetry::traces()
            .then(|| tracing::info_span!("raft.apply", entries = tracing::field::Empty).entered());
        let mut replies = Vec::new();
        let interval = self.checkpoint_interval.load(Ordering::Relaxed);
        let mut checkpoints = Vec::new();
        let certificate;
        {
            let mut a = self.applied.write().expect("sm lock poisoned");
            for entry in entries {
                let index = entry.log_id.index;
                let membership_change = matches!(entry.payload, EntryPayload::Membership(_));
                a.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => replies.push(CommandReply(Vec::new())),
                    EntryPayload::Normal(cmd) => {
                        a.log_bytes_since_checkpoint = a
                            .log_bytes_since_checkpoint
                            .saturating_add(cmd.0.len() as u64);
                        let ctx = a.apply_context(entry.log_id.leader_id.node_id);
                        replies.push(CommandReply(apply_normal(&mut a.state, &cmd.0, &ctx)));
                    }
                    EntryPayload::Membership(m) => {
                        a.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        replies.push(CommandReply(Vec::new()));
                    }
                }
                // Also right after a membership change, so the new voters are certified (by a
                // majority of them and of the voters certified before) while both are up.
                // A copy (its tables share every node with the state: O(1)) is encoded and
                // written by the checkpoint task, not here.
                if interval > 0
                    && (index % interval == 0
                        || membership_change
                        || a.log_bytes_since_checkpoint >= CHECKPOINT_LOG_BYTES)
                {
                    a.log_bytes_since_checkpoint = 0;
                    if checkpoints.is_empty() {
                        // Counted under the state lock: a full rewrite that copies this state
                        // sees the checkpoint pending (found by review).
                        self.checkpoints_pending.fetch_add(1, Ordering::AcqRel);
                    }
                    checkpoints.push((snapshot_meta(&a), a.clone()));
                }
            }
            certificate = a
                .state
                .checkpoint
                .clone()
                .filter(|c| c.index > self.snapshot_index.load(Ordering::Relaxed));
        }
        let certificate = certificate
            .filter(|c| self.promote_requested.fetch_max(c.index, Ordering::Relaxed) < c.index);
        if !checkpoints.is_empty() || certificate.is_some() {
            let job = CheckpointJob::Write {
                store: Box::new(self.clone()),
                checkpoints,
                certificate,
            };
            // The thread lives as long as any handle of the store (this one included); it is
            // gone only if it could not start or panicked.
            if let Err(std::sync::mpsc::SendError(job)) = self.checkpoint_jobs.send(job) {
                if let CheckpointJob::Write { checkpoints, .. } = job {
                    if !checkpoints.is_empty() {
                        self.checkpoints_pending.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                tracing::error!(
                    "the checkpoint thread is gone: no checkpoint is written or certified, and \
                     the log is kept; restart the node"
                );
            }
        }
        self.persist_if_due().map_err(sm_err)?;
        self.telemetry
            .apply_duration
            .observe(started.elapsed().as_secs_f64());
        self.telemetry
            .apply_batch_entries
            .observe(replies.len() as f64);
        if let Some(s) = &_span {
            s.record("entries", replies.len());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// An anonymous file in the snapshot directory (created and unlinked at once). The
    /// RaftService server does not use it: it stages received snapshots itself.
    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let path = self.incoming_snapshot_path();
        let open = || -> io::Result<fs::File> {
            let f = private_fs::create_new_file(&path)?;
            fs::remove_file(&path)?;
            Ok(f)
        };
        let f = open().map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, &e)))?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        // The RaftService server ran the same validation before openraft saw this snapshot; a
        // failure here is a bug or a snapshot from elsewhere, and stops Raft as storage errors do.
        let signature = meta.signature();
        let read_err = move |e: String| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(signature),
                &io::Error::new(io::ErrorKind::InvalidData, e),
            ))
        };
        // The data is the file from its position on, streamed: decoded if the server did not
        // stage it, then copied into the snapshot file.
        let mut file = snapshot.into_std().await;
        let staged = self
            .validated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|(m, _)| m == meta)
            .map(|(_, a)| a);
        let this = self.clone();
        let m = meta.clone();
        let (a, size, written) = tokio::task::spawn_blocking(move || {
            let start = file.stream_position().map_err(|e| Box::new(snap_err(e)))?;
            let len = file
                .metadata()
                .map_err(|e| Box::new(snap_err(e)))?
                .len()
                .saturating_sub(start);
            let a = match staged {
                Some(a) => a,
                None => {
                    let a = snapshot::validate_from(
                        &m,
                        io::BufReader::with_capacity(1 << 20, &mut file),
                        len,
                    )
                    .map_err(|e| Box::new(read_err(e.to_string())))?
                    .applied;
                    file.seek(SeekFrom::Start(start))
                        .map_err(|e| Box::new(snap_err(e)))?;
                    a
                }
            };
            let started = std::time::Instant::now();
            this.write_snapshot(&m, |out| {
                let copied = io::copy(&mut (&mut file).take(len), out)?;
                if copied != len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("snapshot data ended at {copied} of {len} bytes"),
                    ));
                }
                Ok(())
            })
            .map_err(|e| Box::new(snap_err(e)))?;
            Ok::<_, Box<StorageError<NodeId>>>((a, len, started.elapsed()))
        })
        .await
        .map_err(|e| snap_err(io::Error::other(e.to_string())))?
        .map_err(|e| *e)?;
        // No write of the changes of the state replaced may land between the replacement and
        // the rewrite (a meta record of the snapshot over the old tables: found by review).
        self.rewrite_all.store(true, Ordering::Relaxed);
        // The replaced state (large) is freed after the lock is released.
        let old = std::mem::replace(&mut *self.applied.write().expect("sm lock poisoned"), a);
        drop(old);
        // The snapshot file is durable: the tables are rewritten in the background (seconds
        // at a million workers, during which this node would answer no replication: found by
        // registry_bench). Until that rewrite ends the store has no meta record, so a restart
        // loads this snapshot file and replays the log after it.
        let this = self.clone();
        let index = meta.last_log_id.map_or(0, |l| l.index);
        self.rewriting.fetch_add(1, Ordering::AcqRel);
        std::thread::Builder::new()
            .name("gk-sm-rewrite".into())
            .spawn(move || {
                // Cleared however the rewrite ends (a panic included).
                struct Done(Arc<std::sync::atomic::AtomicU32>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                let _done = Done(this.rewriting.clone());
                let t = std::time::Instant::now();
                let r = this.persist_all();
                match r {
                    Ok(()) => tracing::info!(index, store_ms = t.elapsed().as_millis() as u64, "stored an installed snapshot's tables"),
                    Err(e) => tracing::error!(index, error = %e, "cannot store an installed snapshot's tables; retried at the next write"),
                }
            })
            .map_err(|e| {
                self.rewriting.fetch_sub(1, Ordering::AcqRel);
                sm_err(io::Error::other(e.to_string()))
            })?;
        tracing::info!(
            index,
            bytes = size,
            file_ms = written.as_millis() as u64,
            "installed a snapshot"
        );
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.latest_snapshot())
            .await
            .map_err(|e| snap_err(io::Error::other(e.to_string())))?
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{
        sign_proposal, Bytes32, Command, CommandSigner, HexBytes, Lane, MemberRecord, RejectCode,
        Reply,
    };
    use crate::Command as RaftCommand;
    use keyring::Sr25519Keypair;
    use openraft::{CommittedLeaderId, Entry, Membership};

    /// Node 1, the only voter, signing as its enclave would.
    struct Node1(Sr25519Keypair);

    impl CommandSigner for Node1 {
        fn node_id(&self) -> NodeId {
            1
        }
        fn sign(&self, message: &[u8]) -> [u8; 64] {
            keyring::sign::sign(&self.0, keyring::sign::SigningPurpose::Command, message).0
        }
    }

    fn node1() -> Node1 {
        Node1(Sr25519Keypair::from_seed(&[1; 32]))
    }

    /// An initialised state with node 1 registered and the only voter.
    fn seeded() -> Applied {
        let mut a = Applied {
            last_membership: StoredMembership::new(None, Membership::new(vec![[1].into()], None)),
            ..Applied::default()
        };
        a.state.gatekeeper_id = Some(Bytes32([7; 32]));
        a.state.members.insert(
            1,
            MemberRecord::for_tests(1, Bytes32(*node1().0.public_key().as_bytes())),
        );
        a
    }

    /// `c` proposed by node 1 on `lane`, as the log entry at `index` (sequence `index`; applies
    /// to a store seeded with [`seeded`]).
    fn entry(index: u64, lane: Lane, c: &Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(RaftCommand(sign_proposal(
                &node1(),
                &seeded().state,
                lane,
                index,
                c,
            ))),
        }
    }

    /// A canary write proposed by node 1.
    fn put(index: u64, key: &str) -> Entry<TypeConfig> {
        let c = Command::Put {
            key: key.into(),
            value: "v".into(),
        };
        entry(index, Lane::Canary, &c)
    }

    /// Opens, waiting briefly if the previous handle's sled threads still hold the directory
    /// lock (sled releases it asynchronously after the last handle drops).
    fn open_when_released(dir: &Path) -> Result<SmStore, SmOpenError> {
        for _ in 0..100 {
            match SmStore::open(dir) {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other,
            }
        }
        SmStore::open(dir)
    }

    /// Node 1's signature of checkpoint `index` with body digest `digest` (cluster [7; 32]).
    fn vote(index: u64, digest: Bytes32) -> crate::state::CheckpointVote {
        let m = crate::state::checkpoint_signing_bytes(&Bytes32([7; 32]), index, &digest);
        crate::state::CheckpointVote {
            index,
            digest,
            signature: HexBytes(node1().sign(&m).to_vec()),
        }
    }

    /// Node 1's `SignCheckpoint` proposal at log index `at`.
    fn sign_entry(at: u64, v: crate::state::CheckpointVote) -> Entry<TypeConfig> {
        entry(at, Lane::Keeper, &Command::SignCheckpoint(v))
    }

    /// Makes the current state a certified snapshot, as a checkpoint there signed by the only
    /// voter would (without moving the applied index).
    async fn certify_now(sm: &mut SmStore) -> Snapshot<TypeConfig> {
        let a = sm.read().clone();
        let meta = snapshot_meta(&a);
        let index = meta.last_log_id.unwrap().index;
        // The digest of the body as encoded in memory: the streamed checkpoint file must
        // hold the same body.
        let digest = snapshot::body_digest(&snapshot::encode(&a)).unwrap();
        // Checkpoints on (at indexes these tests never reach): build returns certified ones.
        sm.set_checkpoint_interval(1_000_000);
        sm.write_checkpoint(&meta, &a).unwrap();
        assert_eq!(*sm.subscribe_checkpoints().borrow(), Some((index, digest)));
        let v = vote(index, digest);
        let cert = CheckpointCertificate {
            index,
            digest,
            signatures: [(1, v.signature)].into_iter().collect(),
            voters: [1].into(),
        };
        assert!(sm.promote(&cert).unwrap());
        sm.build_snapshot().await.unwrap()
    }

    /// The bytes of a normal entry.
    /// A snapshot's data: its file from its position on.
    async fn data_of(s: &mut Snapshot<TypeConfig>) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        s.snapshot.read_to_end(&mut out).await.unwrap();
        out
    }

    /// Snapshot data as openraft hands it over: a file at its first byte.
    fn data_file(data: &[u8]) -> Box<tokio::fs::File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        Box::new(tokio::fs::File::from_std(f))
    }

    fn bytes_of(e: Entry<TypeConfig>) -> Vec<u8> {
        match e.payload {
            EntryPayload::Normal(c) => c.0,
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn a_batch_entry_applies_each_proposal_on_its_own_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = seeded_store(dir.path());
        // Two writes, a replay of the first (refused alone), a third write.
        let items = vec![
            bytes_of(put(1, "b1")),
            bytes_of(put(2, "b2")),
            bytes_of(put(1, "b1")),
            bytes_of(put(3, "b3")),
        ];
        let batch = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(RaftCommand(crate::batch::encode(&items))),
        };
        let replies = sm.apply(vec![batch]).await.unwrap();
        assert_eq!(replies.len(), 1);
        let parts = crate::batch::decode(&replies[0].0).unwrap().unwrap();
        let parts: Vec<Reply> = parts
            .iter()
            .map(|r| serde_json::from_slice(r).unwrap())
            .collect();
        assert!(matches!(parts[0], Reply::Applied { .. }), "{parts:?}");
        assert!(matches!(parts[1], Reply::Applied { .. }), "{parts:?}");
        assert!(
            matches!(&parts[2], Reply::Rejected { code, .. } if *code == RejectCode::Replayed),
            "{parts:?}"
        );
        assert!(matches!(parts[3], Reply::Applied { .. }), "{parts:?}");
        let kv = sm.read().state.kv.clone();
        assert_eq!(kv.keys().collect::<Vec<_>>(), ["b1", "b2", "b3"]);
        assert_eq!(sm.read().state.audit_sequence, 3);
    }

    #[tokio::test]
    async fn a_malformed_batch_entry_is_refused_whole_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = seeded_store(dir.path());
        let mut torn = crate::batch::encode(&[bytes_of(put(1, "t1"))]);
        torn.pop();
        let before = sm.read().state.clone();
        let replies = sm
            .apply(vec![Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
                payload: EntryPayload::Normal(RaftCommand(torn)),
            }])
            .await
            .unwrap();
        let reply: Reply = serde_json::from_slice(&replies[0].0).unwrap();
        assert!(
            matches!(&reply, Reply::Rejected { code, .. } if *code == RejectCode::MalformedCommand),
            "{reply:?}"
        );
        assert_eq!(sm.read().state, before);
        // A batch inside a batch is not a proposal either.
        let inner = crate::batch::encode(&[bytes_of(put(1, "t1"))]);
        let replies = sm
            .apply(vec![Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), 2),
                payload: EntryPayload::Normal(RaftCommand(crate::batch::encode(&[inner]))),
            }])
            .await
            .unwrap();
        let parts = crate::batch::decode(&replies[0].0).unwrap().unwrap();
        let reply: Reply = serde_json::from_slice(parts[0]).unwrap();
        assert!(
            matches!(&reply, Reply::Rejected { code, .. } if *code == RejectCode::MalformedCommand),
            "{reply:?}"
        );
        assert_eq!(sm.read().state, before);
    }

    #[tokio::test]
    async fn a_checkpoint_becomes_the_snapshot_once_signed_by_a_majority() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = seeded_store(dir.path());
        sm.set_checkpoint_interval(3);
        let mut written = sm.subscribe_checkpoints();
        let certified = sm.subscribe_certified();
        sm.apply(
            (1..=4)
                .map(|i| put(i, &format!("k{i}")))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
        sm.checkpoints_written().await;
        // Index 3 was checkpointed and announced; nothing is a snapshot yet.
        let (index, digest) = written.borrow_and_update().unwrap();
        assert_eq!(index, 3);
        assert!(sm.get_current_snapshot().await.unwrap().is_none());
        assert!(
            sm.build_snapshot().await.is_err(),
            "no certified checkpoint yet"
        );
        assert!(!certified.has_changed().unwrap());
        // A signature of another state does not certify index 3 for this node's snapshot.
        let other = Bytes32([1; 32]);
        sm.apply(vec![sign_entry(5, vote(3, other))]).await.unwrap();
        sm.checkpoints_written().await;
        assert_eq!(sm.read().state.checkpoint.as_ref().unwrap().digest, other);
        assert!(
            sm.get_current_snapshot().await.unwrap().is_none(),
            "diverged: not promoted"
        );
        // The right signature (a fresh store at the same point).
        let dir = tempfile::tempdir().unwrap();
        let mut sm = seeded_store(dir.path());
        sm.set_checkpoint_interval(3);
        let mut certified = sm.subscribe_certified();
        sm.apply(
            (1..=4)
                .map(|i| put(i, &format!("k{i}")))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
        sm.checkpoints_written().await;
        sm.apply(vec![sign_entry(5, vote(index, digest))])
            .await
            .unwrap();
        sm.checkpoints_written().await;
        assert!(certified.has_changed().unwrap());
        assert_eq!(*certified.borrow_and_update(), 3);
        let mut s = sm.build_snapshot().await.unwrap();
        assert_eq!(s.meta.last_log_id.unwrap().index, 3);
        let data = data_of(&mut s).await;
        let d = snapshot::validate(&s.meta, &data).unwrap();
        assert_eq!(d.digest, digest);
        assert_eq!(
            d.applied.state.kv.len(),
            3,
            "the state at the checkpoint, not at 5"
        );
        // It verifies against what the store knows, and the checkpoint file is gone.
        snapshot::verify_received(&d, sm.read().anchor()).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec![format!("snapshot-{:020}.json", 3)]);
    }

    #[tokio::test]
    async fn a_checkpoint_is_also_taken_once_the_log_grew_by_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = seeded_store(dir.path());
        sm.set_checkpoint_interval(1_000_000);
        let mut written = sm.subscribe_checkpoints();
        // Entries a member could append (refused at apply: they are not proposals), 1 MiB each.
        let junk = |i: u64| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(RaftCommand(vec![b'x'; 1 << 20])),
        };
        let per_budget = CHECKPOINT_LOG_BYTES >> 20;
        sm.apply((1..per_budget).map(junk).collect::<Vec<_>>())
            .await
            .unwrap();
        assert!(written.borrow_and_update().is_none(), "under the budget");
        assert_eq!(sm.read().log_bytes_since_checkpoint, (per_budget - 1) << 20);
        // The entry that reaches the budget is checkpointed, and the count starts again.
        sm.apply(vec![junk(per_budget)]).await.unwrap();
        sm.checkpoints_written().await;
        let (index, digest) = written.borrow_and_update().unwrap();
        assert_eq!(index, per_budget);
        assert_eq!(sm.read().log_bytes_since_checkpoint, 0);
        // The count is not in the checkpoint's body (so every node's body has the same bytes
        // as before the count existed), but it survives a restart between checkpoints.
        let file = std::fs::read(sm.checkpoint_path(index)).unwrap();
        assert!(!String::from_utf8_lossy(&file).contains("log_bytes_since_checkpoint"));
        sm.apply(vec![junk(per_budget + 1)]).await.unwrap();
        sm.checkpoints_written().await;
        sm.persist().unwrap();
        drop(sm);
        let sm = open_when_released(dir.path()).unwrap();
        assert_eq!(sm.read().log_bytes_since_checkpoint, 1 << 20);
        assert_ne!(digest, Bytes32([0; 32]));
    }

    /// Makes sled hold `a` (as if it had lost its later writes).
    fn store_as(sm: &SmStore, a: Applied) {
        *sm.applied.write().unwrap() = a;
        sm.persist_all().unwrap();
        sm.db.flush().unwrap();
    }

    /// A record of format 1: the whole state in one record, as versions before the tables
    /// wrote it.
    fn format1_record(a: &Applied) -> Vec<u8> {
        let body = serde_json::to_vec(&serde_json::json!({"format": 1, "applied": a})).unwrap();
        let mut out = Sha256::digest(&body).to_vec();
        out.extend_from_slice(&body);
        out
    }

    #[tokio::test]
    async fn a_format_1_store_is_migrated_to_tables_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let sm = store_with_writes(dir.path(), 40).await;
            let a = sm.read().clone();
            // Back to what the previous version left: one record, no tables, no meta record.
            sm.db.insert(STATE_KEY, format1_record(&a)).unwrap();
            sm.db.remove(META_KEY).unwrap();
            for t in &sm.trees.read().unwrap()[1..] {
                t.clear().unwrap();
            }
            sm.db.flush().unwrap();
            a
        };
        let sm = open_when_released(dir.path()).unwrap();
        assert_eq!(
            serde_json::to_value(&*sm.read()).unwrap(),
            serde_json::to_value(&before).unwrap()
        );
        assert!(
            sm.db.get(STATE_KEY).unwrap().is_none(),
            "old record removed"
        );
        assert!(sm.db.get(META_KEY).unwrap().is_some());
        let kv = sm.db.open_tree("table/kv").unwrap();
        assert_eq!(kv.len(), 40);
        drop((kv, sm));
        // And it opens as tables from then on.
        let sm = open_when_released(dir.path()).unwrap();
        assert_eq!(sm.read().state, before.state);
        assert_eq!(sm.read().last_applied, before.last_applied);
    }

    #[tokio::test]
    async fn writes_store_only_the_records_they_changed_and_a_small_meta_record() {
        let dir = tempfile::tempdir().unwrap();
        let sm = store_with_writes(dir.path(), 500).await;
        sm.persist().unwrap();
        let kv = sm.db.open_tree("table/kv").unwrap();
        assert_eq!(kv.len(), 500);
        let meta = sm.db.get(META_KEY).unwrap().unwrap();
        assert!(
            !String::from_utf8_lossy(&meta).contains("k499"),
            "the meta record holds no table"
        );
        assert!(meta.len() < 4096, "meta record of {} bytes", meta.len());
        // Nothing changed: nothing to write but the meta record.
        assert!(sm
            .applied
            .write()
            .unwrap()
            .state
            .take_table_changes()
            .iter()
            .all(|(_, c)| c.is_empty()));
        // One more write changes one kv record and its writer's record.
        let mut sm = sm;
        sm.apply(vec![put(501, "k501")]).await.unwrap();
        let changes = sm.applied.write().unwrap().state.take_table_changes();
        let changed: Vec<(&str, usize)> = changes
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(t, c)| (*t, c.len()))
            .collect();
        assert_eq!(changed, vec![("kv", 1), ("canary_writers", 1)]);
    }

    #[tokio::test]
    async fn an_interrupted_rewrite_restarts_from_the_snapshot_or_is_refused_without_one() {
        // With a snapshot: a rewrite that lost its meta record starts from the snapshot.
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = store_with_writes(dir.path(), 3).await;
            certify_now(&mut sm).await;
            sm.apply(vec![put(4, "k4")]).await.unwrap();
            sm.flush().unwrap();
            sm.db.remove(META_KEY).unwrap();
            sm.db.flush().unwrap();
        }
        let sm = open_when_released(dir.path()).unwrap();
        assert_eq!(sm.read().last_applied.unwrap().index, 3);
        assert_eq!(sm.read().state.kv.len(), 3);
        drop(sm);
        // Without one: refused, nothing served from a half-written store.
        let dir = tempfile::tempdir().unwrap();
        {
            let sm = store_with_writes(dir.path(), 3).await;
            sm.flush().unwrap();
            sm.db.remove(META_KEY).unwrap();
            sm.db.flush().unwrap();
        }
        let e = open_when_released(dir.path()).err().unwrap().to_string();
        assert!(e.contains("no snapshot to rebuild it from"), "{e}");
    }

    /// A store in `dir` holding [`seeded`].
    fn seeded_store(dir: &Path) -> SmStore {
        let sm = SmStore::open(dir).unwrap();
        *sm.applied.write().unwrap() = seeded();
        sm
    }

    async fn store_with_writes(dir: &Path, n: u64) -> SmStore {
        let mut sm = seeded_store(dir);
        let entries: Vec<_> = (1..=n).map(|i| put(i, &format!("k{i}"))).collect();
        sm.apply(entries).await.unwrap();
        sm
    }

    #[tokio::test]
    async fn reopen_keeps_applied_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let sm = store_with_writes(dir.path(), 3).await;
            sm.flush().unwrap();
        }
        let sm = open_when_released(dir.path()).unwrap();
        let a = sm.read();
        assert_eq!(a.last_applied.unwrap().index, 3);
        assert_eq!(a.state.kv.len(), 3);
    }

    #[tokio::test]
    async fn damaged_stores_are_refused() {
        // Checksum failure.
        let dir = tempfile::tempdir().unwrap();
        {
            let sm = store_with_writes(dir.path(), 2).await;
            sm.flush().unwrap();
            let mut raw = sm.db.get(META_KEY).unwrap().unwrap().to_vec();
            let last = raw.len() - 2;
            raw[last] ^= 1;
            sm.db.insert(META_KEY, raw).unwrap();
            sm.db.flush().unwrap();
        }
        let e = open_when_released(dir.path()).err().unwrap().to_string();
        assert!(e.contains("checksum"), "{e}");

        // A sled directory from another data dir (id mismatch).
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        store_with_writes(a.path(), 1).await.flush().unwrap();
        store_with_writes(b.path(), 1).await.flush().unwrap();
        std::fs::copy(b.path().join("sm.id"), a.path().join("sm.id")).unwrap();
        let e = open_when_released(a.path()).err().unwrap().to_string();
        assert!(e.contains("does not match"), "{e}");

        // The sled directory is gone but the data dir says a store existed.
        let c = tempfile::tempdir().unwrap();
        store_with_writes(c.path(), 1).await.flush().unwrap();
        std::fs::remove_dir_all(c.path().join("sm")).unwrap();
        let e = open_when_released(c.path()).err().unwrap().to_string();
        assert!(e.contains("store id is missing"), "{e}");
    }

    #[tokio::test]
    async fn a_newer_snapshot_wins_over_a_lagging_sled_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = store_with_writes(dir.path(), 5).await;
            certify_now(&mut sm).await;
            // Simulate sled losing its last updates (no fsync): put back an older record.
            let mut old = sm.read().clone();
            old.last_applied = Some(LogId::new(CommittedLeaderId::new(1, 1), 2));
            old.state.kv.retain(|k, _| k == "k1" || k == "k2");
            store_as(&sm, old);
        }
        let sm = open_when_released(dir.path()).unwrap();
        assert_eq!(sm.read().last_applied.unwrap().index, 5);
        assert_eq!(sm.read().state.kv.len(), 5);
    }

    #[tokio::test]
    async fn a_late_build_never_replaces_a_newer_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = store_with_writes(dir.path(), 3).await;
        let mut old = certify_now(&mut sm).await;
        sm.apply(vec![put(4, "k4")]).await.unwrap();
        let new = certify_now(&mut sm).await;
        // The build at index 3 finishes only now (it ran concurrently with an install at 4).
        let data = data_of(&mut old).await;
        sm.write_snapshot(&old.meta, |f| f.write_all(&data))
            .unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec![format!("snapshot-{:020}.json", 4)]);
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta.last_log_id, new.meta.last_log_id);
    }

    #[tokio::test]
    async fn snapshots_are_single_durable_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = store_with_writes(dir.path(), 3).await;
        let s1 = certify_now(&mut sm).await;
        sm.apply(vec![put(4, "k4")]).await.unwrap();
        let s2 = certify_now(&mut sm).await;
        assert!(s2.meta.last_log_id > s1.meta.last_log_id);
        let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec![format!("snapshot-{:020}.json", 4)]);
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta.last_log_id, s2.meta.last_log_id);
        // A snapshot file damaged after it was written is detected, not sent or loaded: by a
        // store that has not checked it yet, and at open.
        let p = dir.path().join("snapshots").join(&files[0]);
        let text = std::fs::read_to_string(&p).unwrap().replace("k4", "kX");
        std::fs::write(&p, text).unwrap();
        sm.verified_snapshot.store(0, Ordering::Relaxed);
        assert!(sm.get_current_snapshot().await.is_err());
        drop(sm);
        let e = open_when_released(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn snapshots_carry_the_snapshot_format_and_store_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = store_with_writes(dir.path(), 3).await;
        let mut s = certify_now(&mut sm).await;
        let data = data_of(&mut s).await;
        assert!(data.starts_with(b"GKSNAP/2 "));
        let d = snapshot::validate(&s.meta, &data).unwrap();
        snapshot::verify_received(&d, sm.read().anchor()).unwrap();
        let a = d.applied;
        assert_eq!(a.state.kv.len(), 3);
        for p in [
            dir.path().join("snapshots"),
            dir.path().join("sm.id"),
            dir.path()
                .join(format!("snapshots/snapshot-{:020}.json", 3)),
        ] {
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode(&p), want, "{}", p.display());
        }
    }

    #[tokio::test]
    async fn snapshot_files_hold_the_data_as_is_and_older_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let meta = {
            let mut sm = store_with_writes(dir.path(), 4).await;
            let mut s = certify_now(&mut sm).await;
            let path = dir
                .path()
                .join(format!("snapshots/snapshot-{:020}.json", 4));
            let file = std::fs::read(&path).unwrap();
            // Format 4: magic, header line, then the data byte for byte (not escaped).
            assert!(file.starts_with(SNAPSHOT_FILE_MAGIC));
            let data = data_of(&mut s).await;
            assert_eq!(file[file.len() - data.len()..], data);
            assert_eq!(file[..file.len() - data.len()].last(), Some(&b'\n'));
            assert!(
                !String::from_utf8_lossy(&file).contains("\\\""),
                "no escaped quotes"
            );
            // Rewritten as format 2 (one JSON object, the data a JSON string) it still loads.
            let data = String::from_utf8(data).unwrap();
            let legacy = serde_json::json!({
                "format": 2,
                "meta": s.meta,
                "sha256": hex::encode(Sha256::digest(data.as_bytes())),
                "data": data,
            });
            std::fs::write(&path, serde_json::to_vec(&legacy).unwrap()).unwrap();
            s.meta
        };
        let mut sm = open_when_released(dir.path()).unwrap();
        let mut cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, meta);
        let data = data_of(&mut cur).await;
        let a = snapshot::validate(&cur.meta, &data).unwrap().applied;
        assert_eq!(a.state.kv.len(), 4);
        let path = dir
            .path()
            .join(format!("snapshots/snapshot-{:020}.json", 4));
        // Read once, it was rewritten in format 4.
        assert!(std::fs::read(&path)
            .unwrap()
            .starts_with(SNAPSHOT_FILE_MAGIC));
        // Format 3 (the data's checksum in the header line) loads, and is checked.
        let header = |sum: &[u8]| {
            let mut f = SNAPSHOT_FILE_MAGIC_3.to_vec();
            serde_json::to_writer(
                &mut f,
                &serde_json::json!({"format": 3, "meta": meta, "sha256": hex::encode(sum)}),
            )
            .unwrap();
            f.push(b'\n');
            f
        };
        std::fs::write(
            &path,
            [header(&Sha256::digest(&data)), data.clone()].concat(),
        )
        .unwrap();
        let mut cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(data_of(&mut cur).await, data);
        std::fs::write(&path, [header(&[7; 32]), data.clone()].concat()).unwrap();
        assert!(sm.get_current_snapshot().await.is_err());
        // A damaged header is refused, not half read.
        let mut bad = SNAPSHOT_FILE_MAGIC.to_vec();
        bad.extend_from_slice(b"{\"format\":4}");
        std::fs::write(&path, bad).unwrap();
        assert!(sm.open_latest_snapshot().is_err());
    }

    #[tokio::test]
    async fn a_bad_snapshot_is_refused_by_install_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = store_with_writes(dir.path(), 5).await;
        let mut good = certify_now(&mut leader).await;
        let good_data = data_of(&mut good).await;

        let other = tempfile::tempdir().unwrap();
        let mut sm = store_with_writes(other.path(), 2).await;
        let before = sm.read().clone();
        let mut bad_meta = good.meta.clone();
        bad_meta.last_log_id = Some(LogId::new(CommittedLeaderId::new(1, 1), 9));
        let bare_json = serde_json::to_vec(&*leader.read()).unwrap();
        let mut flipped = good_data.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        for (meta, data) in [
            (&good.meta, b"garbage".to_vec()),
            (&good.meta, flipped),
            (&bad_meta, good_data.clone()),
            (&good.meta, bare_json),
        ] {
            let e = sm
                .install_snapshot(meta, data_file(&data))
                .await
                .unwrap_err();
            assert!(e.to_string().contains("snapshot"), "{e}");
            assert_eq!(sm.read().last_applied, before.last_applied);
            assert_eq!(sm.read().state, before.state);
            assert!(sm.get_current_snapshot().await.unwrap().is_none());
        }
        sm.install_snapshot(&good.meta, data_file(&good_data))
            .await
            .unwrap();
        assert_eq!(sm.read().state.kv.len(), 5);
    }

    #[tokio::test]
    async fn an_installed_snapshot_is_stored_in_the_background_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = store_with_writes(dir.path(), 5).await;
        let mut good = certify_now(&mut leader).await;
        let data = data_of(&mut good).await;
        for interrupted in [false, true] {
            let other = tempfile::tempdir().unwrap();
            {
                let mut sm = store_with_writes(other.path(), 2).await;
                sm.install_snapshot(&good.meta, data_file(&data))
                    .await
                    .unwrap();
                // Applying goes on while the tables are written.
                sm.apply(vec![put(6, "k6")]).await.unwrap();
                while sm.rewriting.load(Ordering::Acquire) != 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                if interrupted {
                    // As if the node died mid-rewrite: no meta record, tables half written.
                    let _order = sm.persist_lock.lock().unwrap();
                    sm.db.remove(META_KEY).unwrap();
                    sm.trees.read().unwrap()[1 + 6].clear().unwrap();
                    sm.db.flush().unwrap();
                } else {
                    sm.flush().unwrap();
                }
            }
            let sm = open_when_released(other.path()).unwrap();
            let a = sm.read();
            if interrupted {
                // The installed snapshot; the log after it is openraft's to replay.
                assert_eq!(a.last_applied, good.meta.last_log_id);
                assert_eq!(a.state.kv.len(), 5);
            } else {
                assert_eq!(a.last_applied.unwrap().index, 6);
                assert_eq!(a.state.kv.len(), 6);
            }
        }
    }

    #[tokio::test]
    async fn legacy_snapshot_files_load_and_unfinished_transfers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let meta = {
            let mut sm = store_with_writes(dir.path(), 4).await;
            let meta = certify_now(&mut sm).await.meta;
            // Rewrite the file as the previous version did: format 1, bare JSON data.
            let json = serde_json::to_string(&*sm.read()).unwrap();
            let legacy = serde_json::json!({
                "format": 1,
                "meta": meta,
                "sha256": hex::encode(Sha256::digest(json.as_bytes())),
                "data": json,
            });
            let path = dir
                .path()
                .join(format!("snapshots/snapshot-{:020}.json", 4));
            std::fs::write(&path, serde_json::to_vec(&legacy).unwrap()).unwrap();
            // Make sled lag behind it, so open() loads the snapshot.
            let mut old = sm.read().clone();
            old.last_applied = Some(LogId::new(CommittedLeaderId::new(1, 1), 1));
            store_as(&sm, old);
            meta
        };
        let incoming = dir.path().join("snapshots/.incoming-1-0");
        std::fs::write(&incoming, b"half a transfer").unwrap();
        let mut sm = open_when_released(dir.path()).unwrap();
        assert!(!incoming.exists(), "unfinished transfer removed at open");
        assert_eq!(sm.read().last_applied, meta.last_log_id);
        let mut cur = sm.get_current_snapshot().await.unwrap().unwrap();
        let data = data_of(&mut cur).await;
        let a = snapshot::validate(&cur.meta, &data).unwrap().applied;
        assert_eq!(a.state.kv.len(), 4);
        let p = sm.incoming_snapshot_path();
        assert!(p.starts_with(dir.path().join("snapshots")));
        assert_ne!(p, sm.incoming_snapshot_path());
    }
}
