//! The chain itself: blocks, their `System.Events` storage, finality, and persistence. No
//! networking here (see `rpc.rs`); the block producer in `lib.rs` calls [`Chain::produce`].
//!
//! Every block is final as soon as it is produced (instant finality, like a dev node with
//! manual seal and finalization). A block's header is a real Substrate header
//! (`parent_hash`, compact `number`, `state_root`, `extrinsics_root`, empty digest) and its hash is
//! `blake2_256` of the header's SCALE encoding, so clients that recompute hashes agree.
//!
//! Each emitted event is one "extrinsic": its record (phase `ApplyExtrinsic(i)`) is followed by a
//! `System.ExtrinsicSuccess` record, and every block starts with the timestamp inherent's
//! `ExtrinsicSuccess` at `ApplyExtrinsic(0)`, as on a real chain. Clients therefore see event
//! records they must ignore.
//!
//! Persistence (optional): `<dir>/chain.json` holds the chain's identity (a random seed that
//! makes every new chain's genesis unique, and its event shapes); `<dir>/blocks.jsonl` one line
//! per block, appended and fsynced as each block is produced. Reopening verifies every parent
//! link and continues the chain; a torn last line (a crash mid-write) is dropped.

use crate::runtime::{
    encode_event, runtime_version_bytes, spec_version, DispatchClass, DispatchInfo, Pays, Phase,
    Shapes, SystemEvent, Weight, H256,
};
use crate::storage::{Registry, Undo};
use anyhow::{bail, Context, Result};
use parity_scale_codec::{Compact, Encode};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A Substrate block header (`sp_runtime::generic::Header<u32, BlakeTwo256>`).
#[derive(Clone, Debug, PartialEq, Eq, Encode)]
pub struct Header {
    /// Parent block hash.
    pub parent_hash: [u8; 32],
    /// Block number.
    pub number: Compact<u32>,
    /// State root (here: a digest of the block's events and the chain seed).
    pub state_root: [u8; 32],
    /// Extrinsics root (here: a digest of the emitted events).
    pub extrinsics_root: [u8; 32],
    /// Digest logs (always empty here).
    pub digest: Vec<()>,
}

impl Header {
    /// `blake2_256` of the SCALE encoding: the block hash.
    pub fn hash(&self) -> [u8; 32] {
        sp_crypto_hashing::blake2_256(&self.encode())
    }

    /// The JSON shape Substrate's RPC returns.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "parentHash": hex0x(&self.parent_hash),
            "number": format!("0x{:x}", self.number.0),
            "stateRoot": hex0x(&self.state_root),
            "extrinsicsRoot": hex0x(&self.extrinsics_root),
            "digest": { "logs": [] },
        })
    }
}

/// `0x`-prefixed lowercase hex.
pub fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

/// One event as the dev chain emitted it: where it is and what it was (the JSON it was emitted
/// from). `dev_events` returns these: the chain's full event list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmittedEvent {
    /// Block number.
    pub block: u32,
    /// Index among the block's event records.
    pub index: u32,
    /// The runtime event, as JSON (`{"Pallet": {"Variant": {fields}}}`).
    pub event: serde_json::Value,
}

/// A produced block.
#[derive(Clone, Debug)]
pub struct Block {
    /// Its header.
    pub header: Header,
    /// Its hash.
    pub hash: [u8; 32],
    /// The SCALE-encoded `System.Events` value at this block.
    pub events: Vec<u8>,
    /// The emitted (non-System) events.
    pub emitted: Vec<EmittedEvent>,
    /// What this block changed in the registry storage (undoes it).
    undo: Undo,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    seed: String,
    shapes: Shapes,
}

#[derive(Serialize, Deserialize)]
struct BlockLine {
    number: u32,
    header: String,
    events: String,
    emitted: Vec<EmittedEvent>,
}

/// The chain state.
pub struct Chain {
    seed: [u8; 32],
    shapes: Shapes,
    blocks: Vec<Block>,
    pending: Vec<(serde_json::Value, Vec<u8>)>,
    log: Option<File>,
    dir: Option<PathBuf>,
    /// The registry storage after the head.
    storage: Registry,
    /// The last earlier block's storage rebuilt (a bootstrap reads one block many times).
    storage_cache: Option<(u32, Registry)>,
}

fn success(class: DispatchClass) -> SystemEvent {
    SystemEvent::ExtrinsicSuccess {
        dispatch_info: DispatchInfo {
            weight: Weight {
                ref_time: 100_000,
                proof_size: 0,
            },
            class,
            pays_fee: Pays::Yes,
        },
    }
}

fn record(phase: Phase, event: &[u8]) -> Vec<u8> {
    let mut r = phase.encode();
    r.extend_from_slice(event);
    r.extend(Vec::<H256>::new().encode());
    r
}

impl Chain {
    /// A new in-memory chain with a random identity.
    pub fn new(shapes: Shapes) -> Chain {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        Chain::genesis(seed, shapes, None)
    }

    /// The chain of identity `seed` with only its genesis block.
    fn genesis(seed: [u8; 32], shapes: Shapes, dir: Option<PathBuf>) -> Chain {
        let mut c = Chain {
            seed,
            shapes,
            blocks: vec![],
            pending: vec![],
            log: None,
            dir,
            storage: Registry::default(),
            storage_cache: None,
        };
        c.push_genesis();
        c
    }

    /// Opens the chain persisted in `dir`, or creates one there. `shapes` must match an existing
    /// chain's.
    pub fn open(dir: &Path, shapes: Shapes) -> Result<Chain> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let id_path = dir.join("chain.json");
        let blocks_path = dir.join("blocks.jsonl");
        let mut chain = if id_path.exists() {
            let id: Identity = serde_json::from_slice(
                &std::fs::read(&id_path)
                    .with_context(|| format!("cannot read {}", id_path.display()))?,
            )
            .with_context(|| format!("{} is not a dev chain identity", id_path.display()))?;
            if id.shapes != shapes {
                bail!(
                    "the chain in {} uses {:?} event shapes; it cannot be reopened with {:?}",
                    dir.display(),
                    id.shapes,
                    shapes
                );
            }
            let seed = crate::runtime::parse_bytes32(&id.seed).map_err(anyhow::Error::msg)?;
            let mut c = Chain::genesis(seed, shapes, Some(dir.to_path_buf()));
            c.load(&blocks_path)?;
            c
        } else {
            let c = Chain::new(shapes);
            let id = Identity {
                seed: hex::encode(c.seed),
                shapes,
            };
            let tmp = dir.join("chain.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&id)?)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &id_path)?;
            let _ = std::fs::remove_file(&blocks_path);
            Chain {
                dir: Some(dir.to_path_buf()),
                ..c
            }
        };
        chain.log = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&blocks_path)
                .with_context(|| format!("cannot open {}", blocks_path.display()))?,
        );
        Ok(chain)
    }

    fn load(&mut self, path: &Path) -> Result<()> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        // Every block is written as one line ending in '\n'; bytes after the last '\n' are a
        // write the process did not finish. A complete line that does not parse is damage.
        let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        for (n, line) in data[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let l: BlockLine = serde_json::from_slice(line).with_context(|| {
                format!("{} line {} is not a block record", path.display(), n + 1)
            })?;
            let events = hex::decode(l.events.trim_start_matches("0x"))
                .with_context(|| format!("block {} in {}: bad events", l.number, path.display()))?;
            if l.number != self.next_number() {
                bail!(
                    "{}: block {} recorded where block {} belongs",
                    path.display(),
                    l.number,
                    self.next_number()
                );
            }
            let header = self.header_for(l.number, &events, &l.emitted);
            if hex0x(&header.hash()) != l.header {
                bail!(
                    "{}: block {} does not continue the chain (hash {} recorded, {} computed)",
                    path.display(),
                    l.number,
                    l.header,
                    hex0x(&header.hash())
                );
            }
            let (storage, undo) = self.storage_after(&l.emitted);
            self.storage = storage;
            self.blocks.push(Block {
                hash: header.hash(),
                header,
                events,
                emitted: l.emitted,
                undo,
            });
        }
        if complete < data.len() {
            tracing::warn!(path = %path.display(), "dropping a torn last block record");
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(complete as u64)?;
            f.sync_all()?;
        }
        Ok(())
    }

    fn push_genesis(&mut self) {
        let header = Header {
            parent_hash: [0; 32],
            number: Compact(0),
            state_root: sp_crypto_hashing::blake2_256(&[&b"genesis"[..], &self.seed].concat()),
            extrinsics_root: sp_crypto_hashing::blake2_256(b""),
            digest: vec![],
        };
        self.blocks.push(Block {
            hash: header.hash(),
            header,
            events: vec![0],
            emitted: vec![],
            undo: vec![],
        });
    }

    /// The registry storage after a new block that emits `emitted` on top of the head, and
    /// what undoes it.
    fn storage_after(&self, emitted: &[EmittedEvent]) -> (Registry, Undo) {
        let mut storage = self.storage.clone();
        for e in emitted {
            storage.apply(e.block, &e.event);
        }
        let undo = storage.take_journal();
        (storage, undo)
    }

    /// The registry storage after block `number` (`None`: no such block).
    pub fn storage_at(&mut self, number: u32) -> Option<Registry> {
        let head = self.next_number().checked_sub(1)?;
        if number > head {
            return None;
        }
        if number == head {
            return Some(self.storage.clone());
        }
        if let Some((n, s)) = &self.storage_cache {
            if *n == number {
                return Some(s.clone());
            }
        }
        let mut s = self.storage.clone();
        for b in self.blocks[number as usize + 1..].iter().rev() {
            s.undo(&b.undo);
        }
        self.storage_cache = Some((number, s.clone()));
        Some(s)
    }

    fn header_for(&self, number: u32, events: &[u8], emitted: &[EmittedEvent]) -> Header {
        let parent = self.blocks.last().expect("genesis exists");
        let emitted_json = serde_json::to_vec(emitted).expect("JSON values serialize");
        Header {
            parent_hash: parent.hash,
            number: Compact(number),
            state_root: sp_crypto_hashing::blake2_256(
                &[&parent.header.state_root[..], events, &self.seed].concat(),
            ),
            extrinsics_root: sp_crypto_hashing::blake2_256(&emitted_json),
            digest: vec![],
        }
    }

    /// Event shapes of this chain.
    pub fn shapes(&self) -> Shapes {
        self.shapes
    }

    /// The persistence directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Queues a runtime event (JSON `{"Pallet": {"Variant": {fields}}}`) for the next block.
    /// Refused if it is not an event of this chain's runtime.
    pub fn queue(&mut self, event: serde_json::Value) -> Result<(), String> {
        self.queue_all(vec![event]).map(|_| ())
    }

    /// Queues events for the next block, all or none (every one must be an event of this
    /// chain's runtime). Answers the next block's number and the position of the first of them
    /// among its queued events.
    pub fn queue_all(&mut self, events: Vec<serde_json::Value>) -> Result<(u32, usize), String> {
        let encoded = events
            .into_iter()
            .map(|e| encode_event(self.shapes, &e).map(|b| (e, b)))
            .collect::<Result<Vec<_>, _>>()?;
        let first = self.pending.len();
        self.pending.extend(encoded);
        Ok((self.next_number(), first))
    }

    /// Number of the next block.
    pub fn next_number(&self) -> u32 {
        self.blocks.len() as u32
    }

    /// Produces (and finalizes) the next block from the queued events.
    /// If persisting fails, nothing changes: the queued events stay queued for the next try.
    pub fn produce(&mut self) -> Result<&Block> {
        let number = self.next_number();
        let pending = self.pending.clone();
        let mut records: Vec<Vec<u8>> = vec![];
        let mut emitted = vec![];
        // Extrinsic 0: the timestamp inherent.
        let mut sys = vec![0u8];
        sys.extend(success(DispatchClass::Mandatory).encode());
        records.push(record(Phase::ApplyExtrinsic(0), &sys));
        for (i, (json, bytes)) in pending.into_iter().enumerate() {
            let ext = i as u32 + 1;
            emitted.push(EmittedEvent {
                block: number,
                index: records.len() as u32,
                event: json,
            });
            records.push(record(Phase::ApplyExtrinsic(ext), &bytes));
            let mut sys = vec![0u8];
            sys.extend(success(DispatchClass::Normal).encode());
            records.push(record(Phase::ApplyExtrinsic(ext), &sys));
        }
        let mut events = Compact(records.len() as u32).encode();
        for r in records {
            events.extend(r);
        }
        let header = self.header_for(number, &events, &emitted);
        let (storage, undo) = self.storage_after(&emitted);
        let block = Block {
            hash: header.hash(),
            header,
            events,
            emitted,
            undo,
        };
        if let Some(log) = &mut self.log {
            let line = BlockLine {
                number,
                header: hex0x(&block.hash),
                events: hex0x(&block.events),
                emitted: block.emitted.clone(),
            };
            let mut text = serde_json::to_vec(&line)?;
            text.push(b'\n');
            let before = log.metadata().context("cannot stat the block log")?.len();
            if let Err(e) = log.write_all(&text).and_then(|_| log.sync_data()) {
                // Leave no partial line behind: the next block is appended after `before`.
                let _ = log.set_len(before);
                return Err(e).context("cannot persist the block");
            }
        }
        self.pending.clear();
        self.storage = storage;
        self.blocks.push(block);
        Ok(self.blocks.last().expect("just pushed"))
    }

    /// The genesis hash.
    pub fn genesis_hash(&self) -> [u8; 32] {
        self.blocks[0].hash
    }

    /// The latest (finalized) block.
    pub fn head(&self) -> &Block {
        self.blocks.last().expect("genesis exists")
    }

    /// A block by number.
    pub fn by_number(&self, n: u64) -> Option<&Block> {
        self.blocks.get(usize::try_from(n).ok()?)
    }

    /// A block by hash.
    pub fn by_hash(&self, h: &[u8; 32]) -> Option<&Block> {
        self.blocks.iter().rev().find(|b| &b.hash == h)
    }

    /// Every emitted event with block number in `from..=to`.
    pub fn emitted(&self, from: u64, to: u64) -> Vec<EmittedEvent> {
        self.blocks
            .iter()
            .filter(|b| (from..=to).contains(&u64::from(b.header.number.0)))
            .flat_map(|b| b.emitted.iter().cloned())
            .collect()
    }

    /// Every emitted event so far plus the queued ones (used to decide, e.g., Phala's
    /// `WorkerAdded` versus `WorkerUpdated`).
    pub fn all_events(&self) -> impl Iterator<Item = &serde_json::Value> {
        self.blocks
            .iter()
            .flat_map(|b| b.emitted.iter().map(|e| &e.event))
            .chain(self.pending.iter().map(|(j, _)| j))
    }

    /// `Core_version`'s answer.
    pub fn runtime_version(&self) -> Vec<u8> {
        runtime_version_bytes(self.shapes)
    }

    /// The JSON `state_getRuntimeVersion` answers.
    pub fn runtime_version_json(&self) -> serde_json::Value {
        let apis: Vec<serde_json::Value> = crate::runtime::api_ids()
            .into_iter()
            .map(|(id, v)| serde_json::json!([hex0x(&id), v]))
            .collect();
        serde_json::json!({
            "specName": crate::runtime::SPEC_NAME,
            "implName": crate::runtime::SPEC_NAME,
            "authoringVersion": 1,
            "specVersion": spec_version(self.shapes),
            "implVersion": 1,
            "apis": apis,
            "transactionVersion": 1,
            "stateVersion": 1,
        })
    }
}

/// The storage key of `System.Events`: `twox128("System") ++ twox128("Events")`.
pub fn events_key() -> Vec<u8> {
    storage_key("System", "Events")
}

/// The storage key of a plain storage value.
pub fn storage_key(pallet: &str, item: &str) -> Vec<u8> {
    [
        sp_crypto_hashing::twox_128(pallet.as_bytes()),
        sp_crypto_hashing::twox_128(item.as_bytes()),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deregister(w: u8) -> serde_json::Value {
        json!({"Gatekeeper": {"WorkerDeregistered": {"worker": hex0x(&[w; 32])}}})
    }

    #[test]
    fn the_events_storage_key_is_substrates() {
        assert_eq!(
            hex::encode(events_key()),
            "26aa394eea5630e07c48ae0c9558cef780d41e5e16056765bc8461851072c9d7"
        );
    }

    #[test]
    fn blocks_link_and_carry_their_events_as_scale_records() {
        let mut c = Chain::new(Shapes::Standard);
        let g = c.genesis_hash();
        c.queue(deregister(1)).unwrap();
        c.queue(deregister(2)).unwrap();
        assert!(c.queue(json!({"Gatekeeper": {"NoSuchEvent": {}}})).is_err());
        let b1 = c.produce().unwrap().clone();
        assert_eq!(b1.header.parent_hash, g);
        assert_eq!(b1.header.number.0, 1);
        // 1 (timestamp) + 2 × (event + ExtrinsicSuccess) records.
        assert_eq!(b1.events[0], Compact(5u32).encode()[0]);
        assert_eq!(
            b1.emitted.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![1, 3]
        );
        // Record 1: phase ApplyExtrinsic(1), pallet 50, variant 1, the key, no topics.
        let rec1 = record(
            Phase::ApplyExtrinsic(1),
            &crate::runtime::encode_event(Shapes::Standard, &deregister(1)).unwrap(),
        );
        assert!(b1.events.windows(rec1.len()).any(|w| w == rec1.as_slice()));
        let b2 = c.produce().unwrap().clone();
        assert_eq!(b2.header.parent_hash, b1.hash);
        assert_eq!(c.by_hash(&b1.hash).unwrap().header.number.0, 1);
        assert_eq!(c.emitted(0, 10).len(), 2);
        // Two chains never share a genesis.
        assert_ne!(Chain::new(Shapes::Standard).genesis_hash(), g);
    }

    #[test]
    fn every_block_serves_its_own_storage() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::storage::map_key("Gatekeeper", "Workers", &[4; 32]);
        let state = |c: &mut Chain, n: u32| c.storage_at(n).unwrap().get(&key).cloned();
        {
            let mut c = Chain::open(dir.path(), Shapes::Standard).unwrap();
            let w = hex0x(&[4; 32]);
            c.queue(json!({"Gatekeeper": {"WorkerRegistered": {"worker": w, "attestation_provider": null, "confidence_level": 1}}})).unwrap();
            c.produce().unwrap();
            c.queue(deregister(4)).unwrap();
            c.produce().unwrap();
            c.produce().unwrap();
            let (at0, at1, at2) = (state(&mut c, 0), state(&mut c, 1), state(&mut c, 2));
            assert_eq!(at0, None);
            assert!(
                at1.is_some() && at2.is_some() && at1 != at2,
                "{at1:?} {at2:?}"
            );
            assert_eq!(state(&mut c, 3), at2);
            assert!(c.storage_at(4).is_none());
        }
        // Reopened, the storage is rebuilt from the persisted events.
        let mut c = Chain::open(dir.path(), Shapes::Standard).unwrap();
        assert_eq!(state(&mut c, 0), None);
        assert!(state(&mut c, 1).is_some());
        assert_ne!(state(&mut c, 1), state(&mut c, 3));
    }

    #[test]
    fn a_persisted_chain_continues_after_reopening_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (g, h2) = {
            let mut c = Chain::open(dir.path(), Shapes::Standard).unwrap();
            c.queue(deregister(3)).unwrap();
            c.produce().unwrap();
            let h2 = c.produce().unwrap().hash;
            (c.genesis_hash(), h2)
        };
        // A torn write at the end: a whole record without its newline.
        let path = dir.path().join("blocks.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap().to_string();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(last.replace("\"number\":2", "\"number\":3").as_bytes())
            .unwrap();
        drop(f);
        let mut c = Chain::open(dir.path(), Shapes::Standard).unwrap();
        assert_eq!(c.genesis_hash(), g);
        assert_eq!(c.head().hash, h2);
        assert_eq!(c.emitted(0, 10).len(), 1);
        let b3 = c.produce().unwrap();
        assert_eq!(b3.header.parent_hash, h2);
        assert_eq!(b3.header.number.0, 3);
        drop(c);
        assert!(Chain::open(dir.path(), Shapes::Broken)
            .err()
            .unwrap()
            .to_string()
            .contains("Standard"));
        let c = Chain::open(dir.path(), Shapes::Standard).unwrap();
        assert_eq!(c.head().header.number.0, 3);
        drop(c);
        // Damage in the middle is refused, not silently cut.
        let text = std::fs::read_to_string(&path).unwrap();
        let damaged = text.replacen("\"number\":2", "\"numbr\":2", 1);
        std::fs::write(&path, damaged).unwrap();
        let e = Chain::open(dir.path(), Shapes::Standard).err().unwrap();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
