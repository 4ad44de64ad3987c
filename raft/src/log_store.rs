//! The Raft log and vote: a write-ahead log that fsyncs before it acknowledges.
//!
//! Backed by the `raft-log` crate (by openraft's author; used by Databend's meta service): chunked
//! WAL files with per-record checksums, a background flush worker that batches fsyncs, and
//! recovery that drops a torn tail. openraft is told an append is durable only from the flush
//! worker's callback, after `fsync`; `save_vote`, `truncate` and `purge` wait for their fsync
//! before returning. (sled is not used here: its `flush` was seen to issue `sync_file_range`
//! only, never `fsync`.)

use crate::{NodeId, TypeConfig};
use codeq::{Decode, Encode};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, EntryPayload, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::{Config, RaftLog};

/// raft-log's flush worker statistics.
pub use raft_log::FlushMetrics;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{self, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Encodes a serde value as `u32be(len) || JSON`.
fn encode_json<T: Serialize, W: Write>(v: &T, mut w: W) -> io::Result<usize> {
    let bytes = serde_json::to_vec(v).map_err(io::Error::other)?;
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("record too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&bytes)?;
    Ok(4 + bytes.len())
}

fn decode_json<T: DeserializeOwned, R: Read>(mut r: R) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut buf)?;
    serde_json::from_slice(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

macro_rules! json_codec {
    ($name:ident, $inner:ty $(, $extra:ident)*) => {
        #[derive(Debug, Clone, Serialize, serde::Deserialize $(, $extra)*)]
        #[doc = concat!("WAL record wrapper for `", stringify!($inner), "`.")]
        pub struct $name(pub $inner);

        impl Encode for $name {
            fn encode<W: Write>(&self, w: W) -> io::Result<usize> {
                encode_json(&self.0, w)
            }
        }

        impl Decode for $name {
            fn decode<R: Read>(r: R) -> io::Result<Self> {
                decode_json(r).map($name)
            }
        }
    };
}

json_codec!(WalLogId, LogId<NodeId>, PartialEq, Eq);
json_codec!(WalPayload, EntryPayload<TypeConfig>);
json_codec!(WalVote, Vote<NodeId>, PartialEq, Eq);
json_codec!(WalUserData, (), PartialEq, Eq);

impl PartialOrd for WalLogId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for WalLogId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl PartialOrd for WalVote {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.0.partial_cmp(&other.0)
    }
}

/// Where the flush worker reports an fsync.
pub enum FlushCallback {
    /// openraft waiting for an append to become durable; when the append was handed over, and
    /// the histogram that times it.
    Append(
        LogFlushed<TypeConfig>,
        std::time::Instant,
        Option<prometheus_client::metrics::histogram::Histogram>,
    ),
    /// Our own wait (vote, truncate, purge).
    Wait(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl raft_log::Callback for FlushCallback {
    fn send(self, res: io::Result<()>) {
        match self {
            FlushCallback::Append(cb, started, timer) => {
                if let Some(h) = timer {
                    h.observe(started.elapsed().as_secs_f64());
                }
                cb.log_io_completed(res)
            }
            FlushCallback::Wait(tx) => {
                let _ = tx.send(res);
            }
        }
    }
}

/// raft-log type parameters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalTypes;

impl raft_log::Types for WalTypes {
    type LogId = WalLogId;
    type LogPayload = WalPayload;
    type Vote = WalVote;
    type Callback = FlushCallback;
    type UserData = WalUserData;

    fn log_index(log_id: &WalLogId) -> u64 {
        log_id.0.index
    }

    fn payload_size(payload: &WalPayload) -> u64 {
        match &payload.0 {
            EntryPayload::Normal(c) => c.0.len() as u64 + 16,
            _ => 64,
        }
    }
}

/// The last purged log id, and stored log ids by index (see [`LogStore::log_ids`]).
pub type StoredLogIds = (Option<LogId<NodeId>>, BTreeMap<u64, LogId<NodeId>>);

/// The durable Raft log and vote store. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<RaftLog<WalTypes>>>,
    /// Times appends until they are durable ([`LogStore::timed_by`]).
    append_duration: Option<prometheus_client::metrics::histogram::Histogram>,
}

fn io_err(e: io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

fn read_err(e: io::Error) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

/// Bytes of log entries raft-log keeps in memory.
pub const LOG_CACHE_BYTES: usize = 64 << 20;

impl LogStore {
    /// Opens (or creates) the log in `dir`. Fails on a log it cannot read back.
    pub fn open(dir: &Path) -> io::Result<Self> {
        crate::private_fs::create_dir_all(dir)?;
        let mut config = Config::new(dir.to_string_lossy());
        // openraft 0.9 waits for each append's flush before it takes the next write, so the
        // WAL's default wait for more writes to batch (1 ms) never finds any: it only added a
        // millisecond to every write, leader and followers alike (measured: replicated writes
        // were capped near 650/s whatever the number of clients).
        config.wal.flush_batch_wait = Some(std::time::Duration::ZERO);
        // Chunks of 64 MiB (the default is 1 GiB): a purge frees whole chunks behind it, so a
        // log of one large chunk never shrank (attack round 11).
        config.wal.chunk_max_size = Some(64 << 20);
        // Entries kept in memory (the rest are read from disk when a lagging follower needs
        // them): raft-log's default of 1 GiB made a node's memory grow with its log (475 MB
        // resident over a 734 MB log, attack round 11).
        config.log_cache_capacity = Some(LOG_CACHE_BYTES);
        let wal = RaftLog::<WalTypes>::open(Arc::new(config))?;
        Ok(Self {
            wal: Arc::new(Mutex::new(wal)),
            append_duration: None,
        })
    }

    /// Times each append, from the call until the flush worker reports it durable, in `h`.
    pub fn timed_by(mut self, h: prometheus_client::metrics::histogram::Histogram) -> Self {
        self.append_duration = Some(h);
        self
    }

    /// raft-log's flush worker statistics (batches, fsyncs and their total time).
    pub fn flush_metrics(&self) -> FlushMetrics {
        self.lock().stat().flush_metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RaftLog<WalTypes>> {
        // A poisoned lock means a panic mid-write: the process is going down anyway.
        self.wal.lock().expect("raft log lock poisoned")
    }

    /// Flushes with fsync and waits for it.
    async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock().flush(true, Some(FlushCallback::Wait(tx)))?;
        rx.await
            .map_err(|_| io::Error::other("raft log flush worker stopped"))?
    }

    /// The log ids stored at indices `from..=to` (those present: purged and absent indices are
    /// left out) and the last purged log id. Used to check peers' messages against this node's
    /// committed log before openraft sees them.
    pub fn log_ids(&self, from: u64, to: u64) -> io::Result<StoredLogIds> {
        let wal = self.lock();
        let st = wal.log_state();
        let purged = st.purged().map(|p| p.0);
        let Some(last) = st.last().map(|l| l.0.index) else {
            return Ok((purged, BTreeMap::new()));
        };
        let from = from.max(purged.map_or(0, |p| p.index + 1));
        let to = to.min(last);
        if from > to {
            return Ok((purged, BTreeMap::new()));
        }
        let ids = wal
            .read(from, to.saturating_add(1))
            .map(|r| r.map(|(id, _)| (id.0.index, id.0)))
            .collect::<io::Result<_>>()?;
        Ok((purged, ids))
    }

    fn read_range(&self, from: u64, to: u64) -> io::Result<Vec<Entry<TypeConfig>>> {
        let wal = self.lock();
        wal.read(from, to)
            .map(|r| {
                r.map(|(id, payload)| Entry {
                    log_id: id.0,
                    payload: payload.0,
                })
            })
            .collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let from = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(x) => *x + 1,
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        self.read_range(from, to).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let wal = self.lock();
        let st = wal.log_state();
        let purged = st.purged().map(|l| l.0);
        let last = st.last().map(|l| l.0).or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock()
            .save_vote(WalVote(*vote))
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        self.sync()
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().log_state().vote().map(|v| v.0))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        if let Some(c) = committed {
            let mut wal = self.lock();
            wal.commit(WalLogId(c)).map_err(io_err)?;
            // Best effort: the next synced append carries it to disk.
            wal.flush(false, None).map_err(io_err)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().log_state().committed().map(|c| c.0))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut wal = self.lock();
        // Entries at or below the purge point are already covered by it (openraft purges up to
        // the state machine's last_applied at startup); the WAL refuses to go back, so skip them.
        let purged = wal.log_state().purged().map(|p| p.0.index);
        wal.append(
            entries
                .into_iter()
                .filter(|e| purged.is_none_or(|p| e.log_id.index > p))
                .map(|e| (WalLogId(e.log_id), WalPayload(e.payload))),
        )
        .map_err(io_err)?;
        // Durable only when the flush worker has fsynced; openraft waits for the callback.
        wal.flush(
            true,
            Some(FlushCallback::Append(
                callback,
                started,
                self.append_duration.clone(),
            )),
        )
        .map_err(io_err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock().truncate(log_id.index).map_err(io_err)?;
        self.sync().await.map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock().purge(WalLogId(log_id)).map_err(io_err)?;
        self.sync().await.map_err(io_err)
    }
}
