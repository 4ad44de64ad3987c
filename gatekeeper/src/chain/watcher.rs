//! The watcher loop (see the module docs of `chain`).

use super::bootstrap::{entry_events, maps, Parts};
use super::profile::{decode, Decoded, Profile};
use super::{Bootstrap, ChainSettings, ChainView};
use crate::clock::now_ms;
use gatekeeper_raft::replica::Replica;
use gatekeeper_raft::state::{
    Bytes32, ChainBlock, ChainBootstrapPart, ChainRecord, Command, IgnoredEvent, IndexedEvent,
    Lane, Reply,
};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subxt::backend::LegacyBackend;
use subxt::{OnlineClient, SubstrateConfig};
use tokio::sync::watch;

/// Most event records in one proposed range (a larger block is split).
pub const MAX_RECORDS_PER_RANGE: u32 = 2048;
/// Most blocks in one proposed batch.
pub const MAX_BLOCKS_PER_BATCH: usize = 64;
/// Most bytes of one proposed batch (encoded), well under the leader's limit for a
/// `ChainBlocks` proposal (`state::MAX_CHAIN_PROPOSAL_BYTES`, which also counts the envelope).
pub const CHAIN_BATCH_BYTES: usize = 768 << 10;

/// The encoded size of one range in a `ChainBlocks` command, with its separator.
fn range_bytes(block: &ChainBlock) -> usize {
    serde_json::to_vec(block)
        .map(|v| v.len() + 1)
        .unwrap_or(usize::MAX)
}

/// Most batches proposed between two looks at the finalized-heads stream, so a long catch-up
/// keeps reading heads (and is not mistaken for a stalled chain).
pub const MAX_BATCHES_PER_STEP: usize = 4;

type Api = OnlineClient<SubstrateConfig>;

/// One block's event records, decoded under a profile.
#[derive(Debug)]
pub struct DecodedBlock {
    /// Number.
    pub number: u64,
    /// Hash.
    pub hash: [u8; 32],
    /// Parent hash.
    pub parent_hash: [u8; 32],
    /// Event record count.
    pub records: u32,
    /// The profile's events.
    pub events: Vec<IndexedEvent>,
    /// Records of the profile that did not decode.
    pub undecodable: Vec<IgnoredEvent>,
}

impl DecodedBlock {
    /// The ranges of this block from record `from` on, each at most `MAX_RECORDS_PER_RANGE`
    /// records and, unless it is a single record, at most `CHAIN_BATCH_BYTES` encoded (an empty
    /// block is one empty range).
    pub fn ranges(&self, from: u32, genesis: [u8; 32], deadline_ms: u64) -> Vec<ChainBlock> {
        let mut out = vec![];
        let mut start = from;
        loop {
            let mut end = start
                .saturating_add(MAX_RECORDS_PER_RANGE)
                .min(self.records)
                .max(start);
            let mut range = self.range(start, end, genesis, deadline_ms);
            // Events with long fields: halve the range until it fits a proposal.
            while end - start > 1 && range_bytes(&range) > CHAIN_BATCH_BYTES {
                end = start + (end - start) / 2;
                range = self.range(start, end, genesis, deadline_ms);
            }
            out.push(range);
            if end >= self.records {
                return out;
            }
            start = end;
        }
    }

    /// Records `start..end` of this block as one range.
    fn range(&self, start: u32, end: u32, genesis: [u8; 32], deadline_ms: u64) -> ChainBlock {
        ChainBlock {
            genesis_hash: Bytes32(genesis),
            number: self.number,
            hash: Bytes32(self.hash),
            parent_hash: Bytes32(self.parent_hash),
            from_index: start,
            to_index: end,
            complete: end >= self.records,
            events: self
                .events
                .iter()
                .filter(|e| (start..end).contains(&e.index))
                .cloned()
                .collect(),
            undecodable: self
                .undecodable
                .iter()
                .filter(|e| (start..end).contains(&e.index))
                .cloned()
                .collect(),
            proposed_at_ms: now_ms(),
            rotation_deadline_ms: deadline_ms,
        }
    }
}

/// Fetches block `number` and decodes its events under `profile`. Undecodable records are
/// logged with block and index.
pub async fn fetch_block(api: &Api, profile: Profile, number: u64) -> Result<DecodedBlock, String> {
    let at = api
        .at_block(number)
        .await
        .map_err(|e| format!("block {number}: {e}"))?;
    let hash: [u8; 32] = at.block_hash().0;
    let header = at
        .block_header()
        .await
        .map_err(|e| format!("header of block {number}: {e}"))?;
    let events = at
        .events()
        .fetch()
        .await
        .map_err(|e| format!("events of block {number}: {e}"))?;
    let records = events.len();
    let mut out = DecodedBlock {
        number,
        hash,
        parent_hash: header.parent_hash.0,
        records,
        events: vec![],
        undecodable: vec![],
    };
    for (i, ev) in events.iter().enumerate() {
        let index = i as u32;
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                // The record itself does not decode against the chain's metadata, so the
                // records after it cannot be delimited either: report the rest as one.
                tracing::error!(block = number, index, error = %e, "event records do not decode against the chain's metadata; skipping the rest of the block");
                out.undecodable.push(IgnoredEvent {
                    block: number,
                    index,
                    name: "(event records)".into(),
                    reason: format!("records {index}..{records} do not decode: {e}"),
                });
                break;
            }
        };
        match decode(profile, ev.pallet_name(), ev.event_name(), &ev) {
            Decoded::Ignored => {}
            Decoded::Event(event) => out.events.push(IndexedEvent { index, event }),
            Decoded::Undecodable(reason) => {
                let name = format!("{}.{}", ev.pallet_name(), ev.event_name());
                tracing::warn!(block = number, index, event = %name, %reason, "skipping an event of an unexpected shape");
                out.undecodable.push(IgnoredEvent {
                    block: number,
                    index,
                    name,
                    reason,
                });
            }
        }
    }
    Ok(out)
}

/// Where the next range starts: `(block, first record)`, from the committed chain record.
pub fn next_position(chain: &ChainRecord, start_block: u64) -> (u64, u32) {
    match chain.cursor {
        None => (start_block, 0),
        Some(c) if c.block_complete => (c.block + 1, 0),
        Some(c) => (c.block, c.event_index),
    }
}

/// Connects a subxt client (legacy RPC backend) to `url`.
pub async fn connect(url: &str, timeout: Duration) -> Result<Api, String> {
    let rpc = with_timeout(
        timeout,
        "connecting",
        subxt::rpcs::RpcClient::from_insecure_url(url),
    )
    .await?;
    // Substrate answers at most 1000 keys per `state_getKeysPaged` (storage bootstrap).
    let backend = Arc::new(LegacyBackend::builder().storage_page_size(1000).build(rpc));
    with_timeout(
        timeout,
        "starting the client",
        OnlineClient::<SubstrateConfig>::from_backend(backend),
    )
    .await
}

/// Aborts a task when dropped (a bootstrap's storage reader outlives no failed proposal).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the registry maps of `profile` at block `number` (whose hash must be `hash` when
/// given) from storage entry `offset` on, and sends them as bootstrap parts; the last part sent
/// ends the bootstrap. Returns early (`Ok`) when the receiver is gone.
pub async fn read_storage(
    api: Api,
    profile: Profile,
    genesis: [u8; 32],
    (number, hash): (u64, Option<[u8; 32]>),
    offset: u64,
    t: Duration,
    tx: tokio::sync::mpsc::Sender<ChainBootstrapPart>,
) -> Result<(), String> {
    let at = with_timeout(t, "opening the bootstrap block", api.at_block(number)).await?;
    let found = at.block_hash().0;
    if let Some(h) = hash.filter(|h| *h != found) {
        return Err(format!(
            "block {number} has hash {} on the chain, but the bootstrap in progress reads block \
             hash {}; refusing to continue it",
            hex::encode(found),
            hex::encode(h)
        ));
    }
    let mut parts = Parts::new(Bytes32(genesis), number, Bytes32(found), offset);
    let mut index = 0u64;
    let storage = at.storage();
    for (pallet, item) in maps(profile) {
        let name = format!("{pallet}.{item}");
        let mut entries = with_timeout(
            t,
            &format!(
                "reading the storage map {name} (a chain without it needs chain_bootstrap = \"replay\")"
            ),
            storage.iter((*pallet, *item), Vec::<subxt::ext::scale_value::Value>::new()),
        )
        .await?;
        loop {
            let kv = match tokio::time::timeout(t, entries.next()).await {
                Err(_) => return Err(format!("reading {name}: no answer within {t:?}")),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(format!("reading {name}: {e}")),
                Ok(Some(Ok(kv))) => kv,
            };
            index += 1;
            if index <= offset {
                continue;
            }
            let key = kv
                .key()
                .ok()
                .and_then(|k| k.part(0))
                .and_then(|p| p.decode_as::<[u8; 32]>().ok().flatten());
            let events = match key {
                Some(k) => entry_events(pallet, item, k, kv.value()),
                None => Err(format!(
                    "key 0x{} does not end in a 32-byte id",
                    hex::encode(kv.key_bytes())
                )),
            };
            if let Some(part) = parts.push(&name, events) {
                if tx.send(part).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    let _ = tx.send(parts.finish()).await;
    Ok(())
}

/// The watcher.
pub struct Watcher {
    /// This node's replica.
    pub replica: Replica,
    /// Settings.
    pub settings: ChainSettings,
    /// Shared view for status and metrics.
    pub view: Arc<Mutex<ChainView>>,
}

async fn with_timeout<T, E: std::fmt::Display>(
    d: Duration,
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {d:?}")),
    }
}

impl Watcher {
    fn view(&self) -> std::sync::MutexGuard<'_, ChainView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs until `stop` turns true: connect, follow, and on any failure reconnect after a
    /// capped exponential backoff.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut delay = self.settings.reconnect_min;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                _ = stop.wait_for(|v| *v) => return,
                r = self.session() => r,
            };
            let e = match result {
                Ok(()) => return,
                Err(e) => e,
            };
            {
                let mut v = self.view();
                v.connected = false;
                v.last_error = Some(e.clone());
                v.reconnects += 1;
            }
            // A session that lasted a while was healthy: start the backoff over.
            if started.elapsed() > self.settings.reconnect_max {
                delay = self.settings.reconnect_min;
            }
            let jitter = Duration::from_millis(
                u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng))
                    % (delay.as_millis() as u64 / 4 + 1),
            );
            tracing::warn!(url = %self.settings.url, error = %e, retry_in = ?(delay + jitter), "chain watcher disconnected");
            tokio::select! {
                _ = stop.wait_for(|v| *v) => return,
                _ = tokio::time::sleep(delay + jitter) => {}
            }
            delay = (delay * 2).min(self.settings.reconnect_max);
        }
    }

    /// One session: connect, then follow finalized heads and (as leader) propose blocks.
    /// Returns only with an error (the caller reconnects).
    async fn session(&self) -> Result<(), String> {
        let t = self.settings.rpc_timeout;
        let api = connect(&self.settings.url, t).await?;
        let genesis: [u8; 32] = api.genesis_hash().0;
        let mut heads =
            with_timeout(t, "subscribing to finalized heads", api.stream_blocks()).await?;
        {
            let mut v = self.view();
            v.connected = true;
            v.last_error = None;
        }
        tracing::info!(url = %self.settings.url, genesis = %hex::encode(genesis), profile = self.settings.profile.as_str(), "chain watcher connected");
        let mut finalized: Option<u64> = None;
        // When this session last saw the finalized head advance (or its first head).
        let mut progress = Instant::now();
        // Poll at least this often: leadership may change without a new head.
        let tick = Duration::from_millis(250);
        // Whether the last catch-up step stopped with blocks still to apply.
        let mut behind = false;
        // The last block fetched: a block larger than one proposal is proposed in several
        // ranges, and fetched and decoded once.
        let mut last_block: Option<DecodedBlock> = None;
        loop {
            let wait = if behind {
                Duration::from_millis(1)
            } else {
                tick
            };
            let next = tokio::time::timeout(wait, heads.next()).await;
            match next {
                Ok(Some(Ok(b))) => {
                    let n = b.number();
                    if finalized.is_none_or(|f| n > f) {
                        finalized = Some(n);
                        progress = Instant::now();
                        let mut v = self.view();
                        if v.finalized.is_none_or(|f| n > f) {
                            v.finalized_at = Some(Instant::now());
                        }
                        v.finalized = Some(n);
                    }
                }
                Ok(Some(Err(e))) => return Err(format!("finalized heads: {e}")),
                Ok(None) => return Err("the finalized-heads subscription ended".into()),
                Err(_) => {}
            }
            if progress.elapsed() > self.settings.stall {
                return Err(format!(
                    "no new finalized block for {:?} (stalled chain or silent connection)",
                    progress.elapsed()
                ));
            }
            behind = false;
            if let Some(f) = finalized {
                if self.replica.is_leader() {
                    behind = self.catch_up(&api, genesis, f, &mut last_block).await?;
                    self.view().last_error = None;
                }
            }
        }
    }

    /// As leader: proposes the finalized blocks after the cursor, in batches, at most
    /// [`MAX_BATCHES_PER_STEP`] of them. `Ok(true)`: more blocks are waiting.
    async fn catch_up(
        &self,
        api: &Api,
        genesis: [u8; 32],
        finalized: u64,
        last_block: &mut Option<DecodedBlock>,
    ) -> Result<bool, String> {
        let mut last_cursor = None;
        for _ in 0..MAX_BATCHES_PER_STEP {
            if !self.replica.is_leader() {
                return Ok(false);
            }
            let chain = self.replica.sm.read().state.chain.clone();
            if last_cursor.is_some() && last_cursor == Some(chain.cursor) {
                // A duplicate that did not move this node's cursor: the state is ahead of
                // what this node has applied, or the proposal repeats itself. Start over.
                return Err(format!(
                    "the cursor did not advance past {:?}; restarting the session",
                    chain.cursor.map(|c| (c.block, c.event_index))
                ));
            }
            last_cursor = Some(chain.cursor);
            if let Some(g) = chain.genesis_hash {
                if g.0 != genesis {
                    return Err(format!(
                        "the chain at {} has genesis {}, but this cluster follows genesis {}; refusing to apply its blocks",
                        self.settings.url,
                        hex::encode(genesis),
                        hex::encode(g.0)
                    ));
                }
            }
            if chain.cursor.is_none()
                && (chain.bootstrap.is_some() || self.settings.bootstrap == Bootstrap::Storage)
            {
                self.bootstrap(api, genesis, finalized, &chain).await?;
                return Ok(true);
            }
            let (mut number, mut from) = next_position(&chain, self.settings.start_block);
            if number > finalized {
                return Ok(false);
            }
            let mut batch: Vec<ChainBlock> = vec![];
            let mut records = 0u32;
            while number <= finalized
                && batch.len() < MAX_BLOCKS_PER_BATCH
                && records < MAX_RECORDS_PER_RANGE
            {
                let b = match last_block.take().filter(|b| b.number == number) {
                    Some(b) => b,
                    None => {
                        with_timeout(
                            self.settings.rpc_timeout * 2,
                            "fetching a block",
                            fetch_block(api, self.settings.profile, number),
                        )
                        .await?
                    }
                };
                if let Some(c) = chain.cursor.filter(|c| c.block == number) {
                    if c.block_hash.0 != b.hash {
                        return Err(format!(
                            "block {number} has hash {} on the chain but {} was applied; refusing to continue",
                            hex::encode(b.hash),
                            hex::encode(c.block_hash.0)
                        ));
                    }
                }
                for r in b.ranges(from, genesis, self.settings.rotation_deadline_ms) {
                    records += r.to_index - r.from_index;
                    let done = r.complete;
                    batch.push(r);
                    if !done && records >= MAX_RECORDS_PER_RANGE {
                        break;
                    }
                }
                let finished = batch.last().is_some_and(|r| r.complete);
                *last_block = Some(b);
                if !finished {
                    break;
                }
                number += 1;
                from = 0;
            }
            // The leader refuses a ChainBlocks proposal over its size limit: fewer ranges go now
            // and the rest next step (the count limits above do not bound bytes when events
            // carry long fields).
            // Each range is encoded once; the batch's size is their sum (plus the brackets).
            let mut sizes: Vec<usize> = batch.iter().map(range_bytes).collect();
            let mut bytes = sizes.iter().fold(1usize, |a, &b| a.saturating_add(b));
            while batch.len() > 1 && bytes > CHAIN_BATCH_BYTES {
                batch.pop();
                bytes = bytes.saturating_sub(sizes.pop().unwrap_or(0));
            }
            if bytes > CHAIN_BATCH_BYTES {
                tracing::error!(
                    block = batch.first().map(|b| b.number).unwrap_or_default(),
                    bytes,
                    "one event record is over the chain proposal size limit; it cannot be \
                     proposed and chain following stops here (fail closed: skipping it could \
                     skip a slashing)"
                );
            }
            let (first, last) = (
                batch.first().map(|b| b.number).unwrap_or_default(),
                batch.last().map(|b| b.number).unwrap_or_default(),
            );
            let events: usize = batch.iter().map(|b| b.events.len()).sum();
            let finished = batch.iter().filter(|b| b.complete).count() as u64;
            let span = crate::trace_span!("chain.commit_blocks", first, last, events);
            let out = tracing::Instrument::instrument(
                self.replica
                    .write(&Command::ChainBlocks { blocks: batch }, Lane::Chain),
                span,
            )
            .await
            .map_err(|e| format!("proposing blocks {first}..={last}: {e}"))?;
            match out.reply {
                Reply::Applied { .. } => {
                    self.view().blocks_proposed += finished;
                    if events > 0 {
                        tracing::info!(blocks = %format!("{first}..={last}"), events, "chain events committed");
                    } else {
                        tracing::debug!(blocks = %format!("{first}..={last}"), "chain blocks committed");
                    }
                }
                // Another proposer (a former leader) got there first: read the cursor again.
                Reply::Duplicate => {}
                Reply::Rejected { code, message } => {
                    return Err(format!(
                        "blocks {first}..={last} refused by the state machine: {code:?}: {message}"
                    ))
                }
            }
        }
        Ok(true)
    }

    /// As leader, on a cluster without a cursor: reads the registry maps at the latest
    /// finalized block (or the block of the bootstrap in progress, skipping the entries it
    /// already applied) and proposes them as `ChainBootstrap` parts, the last of which sets the
    /// cursor. Reading runs ahead of proposing by at most two parts. Stops early (`Ok`) when
    /// leadership is lost.
    async fn bootstrap(
        &self,
        api: &Api,
        genesis: [u8; 32],
        finalized: u64,
        chain: &ChainRecord,
    ) -> Result<(), String> {
        let Some(b) = chain.bootstrap else {
            return self
                .bootstrap_at(api, genesis, (finalized, None), 0, &mut 0)
                .await;
        };
        let mut proposed = 0;
        let at = (b.block, Some(b.block_hash.0));
        match self
            .bootstrap_at(api, genesis, at, b.entries, &mut proposed)
            .await
        {
            // The block's state may be gone from the chain node (pruned): start over at the
            // latest finalized block rather than never follow the chain (found by review).
            Err(e) if proposed == 0 && b.block < finalized => {
                tracing::warn!(block = b.block, error = %e, restart_at = finalized, "cannot continue the bootstrap from chain storage; starting it over at the latest finalized block");
                self.bootstrap_at(api, genesis, (finalized, None), 0, &mut proposed)
                    .await
            }
            r => r,
        }
    }

    /// Reads block `number`'s registry maps from entry `offset` on and proposes them;
    /// `proposed` counts the parts committed.
    async fn bootstrap_at(
        &self,
        api: &Api,
        genesis: [u8; 32],
        (number, hash): (u64, Option<[u8; 32]>),
        offset: u64,
        proposed: &mut usize,
    ) -> Result<(), String> {
        tracing::info!(
            block = number,
            from_entry = offset,
            profile = self.settings.profile.as_str(),
            "bootstrapping the registry from chain storage"
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let reader = tokio::spawn(read_storage(
            api.clone(),
            self.settings.profile,
            genesis,
            (number, hash),
            offset,
            self.settings.rpc_timeout,
            tx,
        ));
        let _abort = AbortOnDrop(reader.abort_handle());
        while let Some(part) = rx.recv().await {
            if !self.propose_part(part).await? {
                return Ok(());
            }
            *proposed += 1;
        }
        reader
            .await
            .map_err(|e| format!("the storage reader ended: {e}"))?
    }

    /// Proposes one bootstrap part. `Ok(false)`: this node is no longer the leader.
    async fn propose_part(&self, part: ChainBootstrapPart) -> Result<bool, String> {
        if !self.replica.is_leader() {
            return Ok(false);
        }
        let (block, first, entries, last) = (part.block, part.offset, part.entries, part.last);
        let out = self
            .replica
            .write(&Command::ChainBootstrap(part), Lane::Chain)
            .await
            .map_err(|e| format!("proposing storage entries {first}.. of block {block}: {e}"))?;
        match out.reply {
            Reply::Applied { .. } if last => {
                tracing::info!(block, entries = first + entries, "registry bootstrapped from chain storage; following events from the next block")
            }
            Reply::Applied { .. } => {
                tracing::debug!(block, first, entries, "storage entries committed")
            }
            Reply::Duplicate => {}
            Reply::Rejected { code, message } => {
                return Err(format!(
                    "storage entries {first}.. of block {block} refused by the state machine: {code:?}: {message}"
                ))
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devchain::actions::{Action, Profile as DevProfile};
    use devchain::runtime::{AttestationProvider, Public, Shapes, H256};
    use gatekeeper_raft::state::{ChainEvent, GatekeeperState, Scheme, WorkerStatus};

    async fn chain(shapes: Shapes) -> devchain::DevChain {
        devchain::DevChain::start(devchain::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            block_time: Duration::from_millis(30),
            data_dir: None,
            shapes,
        })
        .await
        .unwrap()
    }

    async fn submit(c: &devchain::DevChain, p: DevProfile, a: Action) -> u64 {
        c.submit(p, &a).await.unwrap()["block"].as_u64().unwrap()
    }

    fn key(b: u8) -> Bytes32 {
        Bytes32([b; 32])
    }

    /// The registry of a state, without the block numbers (a bootstrap learns the state, not
    /// when each part of it happened).
    fn registry(s: &GatekeeperState) -> String {
        let workers: Vec<String> = s
            .workers
            .values()
            .map(|w| {
                let status = match &w.status {
                    WorkerStatus::Active => "active".to_string(),
                    WorkerStatus::Slashed { reason, .. } => format!("slashed: {reason}"),
                    WorkerStatus::Removed { .. } => "removed".into(),
                    WorkerStatus::Unresponsive { .. } => "unresponsive".into(),
                };
                format!(
                    "{:?} {} {} {status} {:?}",
                    w.public_key, w.attestation_provider, w.confidence_level, w.clusters
                )
            })
            .collect();
        let clusters: Vec<String> = s
            .clusters
            .values()
            .map(|c| format!("{:?} {:?}", c.id, c.scheme))
            .collect();
        let contracts: Vec<String> = s
            .contracts
            .iter()
            .map(|(k, v)| format!("{k:?}>{v:?}"))
            .collect();
        let sessions: Vec<String> = s
            .sessions
            .iter()
            .map(|(k, v)| format!("{k:?}>{v:?}"))
            .collect();
        format!("{workers:#?}\n{clusters:?}\n{contracts:?}\n{sessions:?}")
    }

    /// Applies every block up to `head` through `ChainBlocks`, as a replaying watcher does.
    async fn replayed(api: &Api, c: &devchain::DevChain, p: Profile, head: u64) -> GatekeeperState {
        let mut s = GatekeeperState::default();
        for n in 1..=head {
            let b = fetch_block(api, p, n).await.unwrap();
            let blocks = b.ranges(0, c.genesis_hash(), 0);
            let r = s.apply(&Command::ChainBlocks { blocks });
            assert!(matches!(r, Reply::Applied { .. }), "block {n}: {r:?}");
        }
        s
    }

    /// Bootstraps from the storage of `head` from entry `offset` on; answers the state and the
    /// parts.
    async fn bootstrapped(
        api: &Api,
        c: &devchain::DevChain,
        p: Profile,
        head: u64,
        offset: u64,
        mut s: GatekeeperState,
    ) -> (GatekeeperState, Vec<ChainBootstrapPart>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let reader = tokio::spawn(read_storage(
            api.clone(),
            p,
            c.genesis_hash(),
            (head, None),
            offset,
            Duration::from_secs(5),
            tx,
        ));
        let mut parts = vec![];
        while let Some(part) = rx.recv().await {
            let r = s.apply(&Command::ChainBootstrap(part.clone()));
            assert!(matches!(r, Reply::Applied { .. }), "{part:?}: {r:?}");
            parts.push(part);
        }
        reader.await.unwrap().unwrap();
        (s, parts)
    }

    #[tokio::test]
    async fn a_bootstrap_from_storage_reaches_the_state_a_replay_reaches_in_both_profiles() {
        let c = chain(Shapes::Standard).await;
        let api = connect(&c.url(), Duration::from_secs(5)).await.unwrap();
        let (w1, w2, w3) = (Public([1; 32]), Public([2; 32]), Public([3; 32]));
        let cl = H256([9; 32]);
        for p in [DevProfile::Gatekeeper, DevProfile::Phala] {
            for w in [w1, w2, w3] {
                let a = Action::RegisterWorker {
                    worker: w,
                    provider: Some(AttestationProvider::Dcap),
                    confidence_level: 2,
                };
                submit(&c, p, a).await;
            }
            let slash = Action::SlashWorker {
                worker: w2,
                reason: "double signing".into(),
            };
            submit(&c, p, slash).await;
            let cluster = H256([p as u8 + 9; 32]);
            let create = Action::CreateCluster {
                cluster,
                workers: vec![w1, w3],
            };
            submit(&c, p, create).await;
            let remove = Action::RemoveWorkerFromCluster {
                worker: w3,
                cluster,
            };
            submit(&c, p, remove).await;
            let contract = Action::InstantiateContract {
                contract: H256([p as u8 + 0x40; 32]),
                cluster,
            };
            submit(&c, p, contract).await;
        }
        let deregister = Action::DeregisterWorker { worker: w3 };
        submit(&c, DevProfile::Gatekeeper, deregister).await;
        let _ = cl;
        let head = api.at_current_block().await.unwrap().block_number();
        for p in [Profile::Gatekeeper, Profile::Phala] {
            let want = replayed(&api, &c, p, head).await;
            let (got, parts) = bootstrapped(&api, &c, p, head, 0, GatekeeperState::default()).await;
            assert_eq!(registry(&got), registry(&want), "{p:?}");
            assert!(!got.workers.is_empty());
            let cursor = got.chain.cursor.unwrap();
            assert_eq!((cursor.block, cursor.block_complete), (head, true));
            assert_eq!(cursor.block_hash, want.chain.cursor.unwrap().block_hash);
            assert_eq!(
                got.chain.events_ignored, 0,
                "{:?}",
                got.chain.recent_ignored
            );
            // A new leader resuming after the first two entries reads the rest only.
            let total: u64 = parts.iter().map(|p| p.entries).sum();
            let mut half = GatekeeperState::default();
            let first = bootstrapped(&api, &c, p, head, 0, GatekeeperState::default())
                .await
                .1;
            let mut two = first[0].clone();
            two.entries = 2;
            two.events = entry_prefix_events(&first[0], 2);
            two.undecodable.clear();
            two.last = false;
            assert!(matches!(
                half.apply(&Command::ChainBootstrap(two)),
                Reply::Applied { .. }
            ));
            let (resumed, rest) = bootstrapped(&api, &c, p, head, 2, half).await;
            assert_eq!(rest[0].offset, 2);
            assert_eq!(rest.iter().map(|p| p.entries).sum::<u64>(), total - 2);
            assert_eq!(registry(&resumed), registry(&want), "{p:?} resumed");
        }
        // Blocks continue a bootstrapped cluster: one more registration applies on top.
        let (mut s, _) = bootstrapped(
            &api,
            &c,
            Profile::Gatekeeper,
            head,
            0,
            GatekeeperState::default(),
        )
        .await;
        let n = submit(
            &c,
            DevProfile::Gatekeeper,
            Action::RegisterWorker {
                worker: Public([4; 32]),
                provider: None,
                confidence_level: 1,
            },
        )
        .await;
        for b in head + 1..=n {
            let blocks = fetch_block(&api, Profile::Gatekeeper, b)
                .await
                .unwrap()
                .ranges(0, c.genesis_hash(), 0);
            let r = s.apply(&Command::ChainBlocks { blocks });
            assert!(matches!(r, Reply::Applied { .. }), "{r:?}");
        }
        assert!(s.workers.contains_key(&key(4)));
        c.stop().await;
    }

    /// The events of the first `n` entries of a part (each Gatekeeper/Phala worker entry's
    /// events start with its registration).
    fn entry_prefix_events(part: &ChainBootstrapPart, n: usize) -> Vec<ChainEvent> {
        let starts: Vec<usize> = part
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, ChainEvent::WorkerRegistered { .. }))
            .map(|(i, _)| i)
            .collect();
        part.events[..starts[n]].to_vec()
    }

    #[test]
    fn ranges_split_by_bytes_as_well_as_by_records() {
        // 300 records, each a slashing with a 10 KiB reason: 3 MB, over four proposals' worth.
        let records = 300;
        let b = DecodedBlock {
            number: 9,
            hash: [1; 32],
            parent_hash: [2; 32],
            records,
            events: (0..records)
                .map(|index| IndexedEvent {
                    index,
                    event: ChainEvent::WorkerSlashed {
                        worker: key(3),
                        reason: "r".repeat(10 << 10),
                    },
                })
                .collect(),
            undecodable: vec![],
        };
        let r = b.ranges(5, [0; 32], 0);
        assert!(r.len() >= 4, "{} ranges", r.len());
        let mut next = 5;
        for (i, range) in r.iter().enumerate() {
            assert_eq!(range.from_index, next, "contiguous");
            assert!(range.to_index > range.from_index);
            assert!(range_bytes(range) <= CHAIN_BATCH_BYTES, "range {i} fits");
            assert_eq!(range.complete, i == r.len() - 1);
            assert_eq!(range.events.len() as u32, range.to_index - range.from_index);
            next = range.to_index;
        }
        assert_eq!(next, records);
        // A single record over the limit still goes alone (the watcher reports it).
        let mut big = b;
        big.events.truncate(1);
        big.records = 1;
        if let ChainEvent::WorkerSlashed { reason, .. } = &mut big.events[0].event {
            *reason = "r".repeat(CHAIN_BATCH_BYTES);
        }
        let r = big.ranges(0, [0; 32], 0);
        assert_eq!((r.len(), r[0].to_index, r[0].complete), (1, 1, true));
    }

    #[tokio::test]
    async fn subxt_follows_the_dev_chain_and_decodes_the_gatekeeper_profile() {
        let c = chain(Shapes::Standard).await;
        let api = connect(&c.url(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(api.genesis_hash().0, c.genesis_hash());
        let w = Public([7; 32]);
        let reg = submit(
            &c,
            DevProfile::Gatekeeper,
            Action::RegisterWorker {
                worker: w,
                provider: Some(AttestationProvider::Dcap),
                confidence_level: 2,
            },
        )
        .await;
        let slash = submit(
            &c,
            DevProfile::Gatekeeper,
            Action::SlashWorker {
                worker: w,
                reason: "double signing".into(),
            },
        )
        .await;
        // Finalized heads arrive through the subscription.
        let mut heads = api.stream_blocks().await.unwrap();
        let first = heads.next().await.unwrap().unwrap().number();
        assert!(first >= slash, "{first} < {slash}");

        let b = fetch_block(&api, Profile::Gatekeeper, reg).await.unwrap();
        assert_eq!(b.number, reg);
        // Records: timestamp success, the event, its success.
        assert_eq!(b.records, 3);
        assert_eq!(
            b.events,
            vec![IndexedEvent {
                index: 1,
                event: ChainEvent::WorkerRegistered {
                    worker: key(7),
                    attestation_provider: "dcap".into(),
                    confidence_level: 2
                }
            }]
        );
        let prev = fetch_block(&api, Profile::Gatekeeper, reg - 1)
            .await
            .unwrap();
        assert_eq!(b.parent_hash, prev.hash);
        let s = fetch_block(&api, Profile::Gatekeeper, slash).await.unwrap();
        assert_eq!(
            s.events[0].event,
            ChainEvent::WorkerSlashed {
                worker: key(7),
                reason: "double signing".into()
            }
        );
        // The same blocks under the phala profile carry nothing of it.
        assert!(fetch_block(&api, Profile::Phala, reg)
            .await
            .unwrap()
            .events
            .is_empty());
        // Ranges cover the records exactly once.
        let r = b.ranges(0, c.genesis_hash(), 0);
        assert_eq!(
            (r.len(), r[0].from_index, r[0].to_index, r[0].complete),
            (1, 0, 3, true)
        );
        assert!(b.ranges(1, c.genesis_hash(), 0)[0].complete);

        let rot = submit(
            &c,
            DevProfile::Gatekeeper,
            Action::RequestRotation { rotation_id: None },
        )
        .await;
        let cl = H256([9; 32]);
        let cc = submit(
            &c,
            DevProfile::Gatekeeper,
            Action::CreateCluster {
                cluster: cl,
                workers: vec![w],
            },
        )
        .await;
        let ci = submit(
            &c,
            DevProfile::Gatekeeper,
            Action::InstantiateContract {
                contract: H256([10; 32]),
                cluster: cl,
            },
        )
        .await;
        let ev = |n| {
            let api = api.clone();
            async move {
                fetch_block(&api, Profile::Gatekeeper, n)
                    .await
                    .unwrap()
                    .events
            }
        };
        assert_eq!(
            ev(rot).await[0].event,
            ChainEvent::MasterKeyRotationRequested {
                rotation_id: "chain:1".into()
            }
        );
        assert_eq!(
            ev(cc).await[0].event,
            ChainEvent::ClusterCreated {
                cluster: key(9),
                workers: vec![key(7)],
                scheme: Scheme::Native
            }
        );
        assert_eq!(
            ev(ci).await[0].event,
            ChainEvent::ContractInstantiated {
                contract: key(10),
                cluster: key(9)
            }
        );
        c.stop().await;
    }

    #[tokio::test]
    async fn the_phala_profile_maps_phala_pallet_events() {
        let c = chain(Shapes::Standard).await;
        let api = connect(&c.url(), Duration::from_secs(5)).await.unwrap();
        let w = Public([3; 32]);
        let session = Bytes32(devchain::actions::phala_session(&w));
        let reg = submit(
            &c,
            DevProfile::Phala,
            Action::RegisterWorker {
                worker: w,
                provider: None,
                confidence_level: 128,
            },
        )
        .await;
        let b = fetch_block(&api, Profile::Phala, reg).await.unwrap();
        let events: Vec<ChainEvent> = b.events.into_iter().map(|e| e.event).collect();
        assert_eq!(
            events,
            vec![
                ChainEvent::WorkerRegistered {
                    worker: key(3),
                    attestation_provider: "none".into(),
                    confidence_level: 128
                },
                ChainEvent::SessionBound {
                    session,
                    worker: key(3)
                }
            ]
        );
        let slash = submit(
            &c,
            DevProfile::Phala,
            Action::SlashWorker {
                worker: w,
                reason: String::new(),
            },
        )
        .await;
        let reclaim0 = submit(
            &c,
            DevProfile::Phala,
            Action::ReclaimWorker {
                worker: w,
                slashed: 0,
            },
        )
        .await;
        let reclaim = submit(
            &c,
            DevProfile::Phala,
            Action::ReclaimWorker {
                worker: w,
                slashed: 5,
            },
        )
        .await;
        let cl = H256([4; 32]);
        let cc = submit(
            &c,
            DevProfile::Phala,
            Action::CreateCluster {
                cluster: cl,
                workers: vec![w],
            },
        )
        .await;
        let inst = submit(
            &c,
            DevProfile::Phala,
            Action::InstantiateContract {
                contract: H256([5; 32]),
                cluster: cl,
            },
        )
        .await;
        let ev = |n| {
            let api = api.clone();
            async move {
                fetch_block(&api, Profile::Phala, n)
                    .await
                    .unwrap()
                    .events
                    .into_iter()
                    .map(|e| e.event)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            ev(slash).await,
            vec![ChainEvent::SessionUnresponsive { session }]
        );
        assert_eq!(ev(reclaim0).await, vec![]);
        assert!(matches!(
            ev(reclaim).await[..],
            [ChainEvent::SessionSlashed { .. }]
        ));
        assert_eq!(
            ev(cc).await,
            vec![
                ChainEvent::ClusterCreated {
                    cluster: key(4),
                    workers: vec![],
                    scheme: Scheme::Phala
                },
                ChainEvent::WorkerAddedToCluster {
                    worker: key(3),
                    cluster: key(4)
                }
            ]
        );
        // Instantiating maps; Instantiated (same block) changes nothing.
        assert_eq!(
            ev(inst).await,
            vec![ChainEvent::ContractInstantiated {
                contract: key(5),
                cluster: key(4)
            }]
        );
        c.stop().await;
    }

    #[tokio::test]
    async fn events_of_an_unexpected_shape_are_reported_and_the_rest_of_the_block_decodes() {
        let c = chain(Shapes::Broken).await;
        let api = connect(&c.url(), Duration::from_secs(5)).await.unwrap();
        let ok = serde_json::json!({"Gatekeeper": {"WorkerDeregistered": {"worker": format!("0x{}", "01".repeat(32))}}});
        let bad = serde_json::json!({"Gatekeeper": {"WorkerSlashed": {"worker": 7, "reason": 9}}});
        // The bad event and a good one after it, in one block.
        let r = c.emit(vec![bad, ok]).await.unwrap();
        let n = r["block"].as_u64().unwrap();
        let b = fetch_block(&api, Profile::Gatekeeper, n).await.unwrap();
        assert_eq!(b.undecodable.len(), 1, "{b:?}");
        assert_eq!(b.undecodable[0].index, 1);
        assert_eq!(b.undecodable[0].name, "Gatekeeper.WorkerSlashed");
        assert!(
            b.undecodable[0].reason.contains("worker"),
            "{}",
            b.undecodable[0].reason
        );
        assert_eq!(b.records, 5);
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.events[0].index, 3);
        c.stop().await;
    }
}
