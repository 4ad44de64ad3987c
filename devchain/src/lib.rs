//! `gatekeeper-devchain`: a local development chain for Gatekeeper, in the spirit of anvil for
//! Ethereum.
//!
//! It speaks the Substrate JSON-RPC that subxt uses (WebSocket), serves frame-metadata V15
//! describing the `Gatekeeper` pallet and Phala's pallets ([`runtime`]), produces and finalizes
//! a block every `block_time`, and stores each block's `System.Events` SCALE-encoded exactly as a
//! Substrate node does ([`chain`]). Operators and tests drive it with actions ("register this
//! worker", "slash it", …; [`actions`]) over the `dev_*` RPC namespace ([`rpc`]) or the
//! `gatekeeper-devchain emit …` command; each action answers once the block that carries its
//! events is final.
//!
//! Embed it with [`DevChain::start`]; the `gatekeeper devnet` command does.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actions;
pub mod chain;
pub mod rpc;
pub mod runtime;
pub mod storage;

use anyhow::{Context, Result};
use chain::Chain;
use jsonrpsee::server::{Server, ServerHandle};
use runtime::Shapes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How to run a dev chain.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the RPC server listens (WebSocket and HTTP on the same port).
    pub listen: SocketAddr,
    /// Time between blocks (every block is final when produced).
    pub block_time: Duration,
    /// Persist blocks here and continue an existing chain found here; `None`: in memory.
    pub data_dir: Option<PathBuf>,
    /// `Gatekeeper` event shapes (fixed when the chain is created).
    pub shapes: Shapes,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9944)),
            block_time: Duration::from_millis(1000),
            data_dir: None,
            shapes: Shapes::Standard,
        }
    }
}

/// State shared by the block producer and the RPC handlers.
pub(crate) struct Shared {
    chain: Mutex<Chain>,
    /// The SCALE-encoded metadata (fixed for the chain's life).
    metadata: Vec<u8>,
    /// New heads (header JSON), for subscriptions.
    heads: tokio::sync::broadcast::Sender<serde_json::Value>,
    /// Number of the latest produced block.
    produced: tokio::sync::watch::Sender<u32>,
    paused: AtomicBool,
    block_time: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running dev chain. Dropping it without [`DevChain::stop`] leaves the server running until
/// the runtime ends.
pub struct DevChain {
    addr: SocketAddr,
    handle: ServerHandle,
    shared: Arc<Shared>,
    producer: tokio::task::JoinHandle<()>,
}

impl DevChain {
    /// Opens (or creates) the chain and starts the RPC server and the block producer.
    pub async fn start(config: Config) -> Result<DevChain> {
        let chain = match &config.data_dir {
            Some(d) => Chain::open(d, config.shapes)?,
            None => Chain::new(config.shapes),
        };
        let head = chain.head().header.number.0;
        let shared = Arc::new(Shared {
            metadata: runtime::metadata_bytes(chain.shapes()),
            chain: Mutex::new(chain),
            heads: tokio::sync::broadcast::channel(64).0,
            produced: tokio::sync::watch::channel(head).0,
            paused: AtomicBool::new(false),
            block_time: config.block_time,
        });
        let server = Server::builder()
            .set_config(
                jsonrpsee::server::ServerConfig::builder()
                    .max_response_body_size(64 << 20)
                    .build(),
            )
            .build(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = server.local_addr()?;
        let handle = server.start(rpc::module(shared.clone()));
        let producer = tokio::spawn(produce(shared.clone()));
        Ok(DevChain {
            addr,
            handle,
            shared,
            producer,
        })
    }

    /// The address the RPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://host:port`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The genesis hash.
    pub fn genesis_hash(&self) -> [u8; 32] {
        self.shared.lock().genesis_hash()
    }

    /// The latest block number.
    pub fn head(&self) -> u32 {
        self.shared.lock().head().header.number.0
    }

    /// Emits `action`'s events under `profile` and waits until the block carrying them is final.
    /// Answers `{block, hash, events}` as `dev_submit` does.
    pub async fn submit(
        &self,
        profile: actions::Profile,
        action: &actions::Action,
    ) -> Result<serde_json::Value> {
        rpc::emit(&self.shared, |c| actions::events_for(c, profile, action))
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
    }

    /// Emits raw runtime events (`{"Pallet": {"Variant": {fields}}}`) into the next block and
    /// waits until it is final, as `dev_emit` does.
    pub async fn emit(&self, events: Vec<serde_json::Value>) -> Result<serde_json::Value> {
        rpc::emit(&self.shared, |_| Ok(events))
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
    }

    /// Stops the server and the block producer.
    pub async fn stop(self) {
        self.producer.abort();
        let _ = self.handle.stop();
        self.handle.stopped().await;
    }
}

async fn produce(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.block_time);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if shared.paused.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        let produced = {
            let mut c = shared.lock();
            c.produce()
                .map(|b| (b.header.number.0, b.header.to_json(), b.emitted.len()))
        };
        match produced {
            Ok((n, header, emitted)) => {
                if emitted > 0 {
                    tracing::info!(block = n, events = emitted, "block finalized");
                } else {
                    tracing::debug!(block = n, "block finalized");
                }
                let _ = shared.heads.send(header);
                shared.produced.send_replace(n);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot produce a block; retrying")
            }
        }
    }
}
