//! The JSON-RPC surface (jsonrpsee, WebSocket and HTTP on one port).
//!
//! Substrate methods (the ones subxt's legacy backend and common tools call), answered as a
//! Substrate node answers them:
//!
//! | method | answer |
//! |---|---|
//! | `rpc_methods` | `{"methods": [...]}` (no `chainHead_v1_*`: clients fall back to the legacy API) |
//! | `chain_getBlockHash [n?]` | hash of block `n` (default: the head), `null` if unknown |
//! | `chain_getFinalizedHead` | the head (every block is final) |
//! | `chain_getHeader [hash?]`, `chain_getBlock [hash?]` | header JSON / `{block: {header, extrinsics: []}}`, `null` if unknown |
//! | `chain_subscribeFinalizedHeads`, `chain_subscribeNewHeads`, `chain_subscribeAllHeads` | the current head, then every new one |
//! | `state_call [method, data, hash?]` | `Core_version`, `Metadata_metadata_versions`, `Metadata_metadata_at_version`, `Metadata_metadata` |
//! | `state_getStorage [key, hash?]` | `System.Events`, `System.Number` and the registry maps ([`crate::storage`]) at that block; `null` for other keys |
//! | `state_getKeysPaged [prefix, count, start?, hash?]` | up to `count` (≤ 1000) keys under `prefix` after `start`, in key order |
//! | `state_queryStorageAt [[keys], hash?]` | `[{block, changes: [[key, value or null], …]}]` |
//! | `state_getMetadata`, `state_getRuntimeVersion`, `state_subscribeRuntimeVersion` | as a node |
//! | `system_chain`, `system_name`, `system_version`, `system_properties`, `system_health` | constants |
//!
//! Development methods (the admin surface):
//!
//! | method | what it does |
//! |---|---|
//! | `dev_submit [{"profile": "gatekeeper"|"phala", "action": ..., ...}]` | emits an action's events into the next block and answers once that block is final: `{block, hash, events: [{block, index, event}]}` |
//! | `dev_emit [event]` | emits one raw runtime event (`{"Pallet": {"Variant": {fields}}}`) the same way |
//! | `dev_events [from?, to?]` | every emitted event of blocks `from..=to` |
//! | `dev_status` | genesis hash, head number and hash, block time, paused, data dir |
//! | `dev_pause`, `dev_resume` | stop / restart block production (a stalled chain) |
//!
//! Unknown methods get JSON-RPC's `-32601 Method not found`; bad parameters `-32602` with the
//! reason; a block hash the chain does not have `-32000` (as Substrate's "UnknownBlock").

use crate::actions::{events_for, Action, Profile};
use crate::chain::{events_key, hex0x, storage_key, Block, EmittedEvent};
use crate::Shared;
use jsonrpsee::types::error::{ErrorObjectOwned, INVALID_PARAMS_CODE};
use jsonrpsee::types::Params;
use jsonrpsee::RpcModule;
use parity_scale_codec::Encode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type RpcResult = Result<Value, ErrorObjectOwned>;

fn invalid(msg: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(INVALID_PARAMS_CODE, msg, None::<()>)
}

fn unknown_block(h: &[u8; 32]) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        -32000,
        format!(
            "Client error: UnknownBlock: header not found for {}",
            hex0x(h)
        ),
        None::<()>,
    )
}

fn parse_hash(v: &Value) -> Result<[u8; 32], ErrorObjectOwned> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid(format!("{v} is not a block hash string")))?;
    crate::runtime::parse_bytes32(s).map_err(invalid)
}

fn parse_hex(v: &Value) -> Result<Vec<u8>, ErrorObjectOwned> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid(format!("{v} is not a hex string")))?;
    hex::decode(s.strip_prefix("0x").unwrap_or(s)).map_err(|e| invalid(format!("{s:?}: {e}")))
}

fn parse_number(v: &Value) -> Result<u64, ErrorObjectOwned> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    if let Some(s) = v.as_str() {
        let parsed = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => s.parse(),
        };
        return parsed.map_err(|e| invalid(format!("block number {s:?}: {e}")));
    }
    Err(invalid(format!("{v} is not a block number")))
}

/// The positional parameters as JSON values (an absent list is empty).
fn args(p: &Params<'_>) -> Result<Vec<Value>, ErrorObjectOwned> {
    if p.as_str().is_none() {
        return Ok(vec![]);
    }
    match p.parse::<Value>()? {
        Value::Array(a) => Ok(a),
        Value::Null => Ok(vec![]),
        other => Ok(vec![other]),
    }
}

/// Like [`at`], but an unknown block is `None` (a malformed hash is still an error).
fn maybe_at<'a>(
    chain: &'a crate::chain::Chain,
    arg: Option<&Value>,
) -> Result<Option<&'a Block>, ErrorObjectOwned> {
    match arg {
        None | Some(Value::Null) => Ok(Some(chain.head())),
        Some(v) => Ok(chain.by_hash(&parse_hash(v)?)),
    }
}

/// The block named by an optional hash argument (default: the head).
fn at<'a>(
    chain: &'a crate::chain::Chain,
    arg: Option<&Value>,
) -> Result<&'a Block, ErrorObjectOwned> {
    match arg {
        None | Some(Value::Null) => Ok(chain.head()),
        Some(v) => {
            let h = parse_hash(v)?;
            chain.by_hash(&h).ok_or_else(|| unknown_block(&h))
        }
    }
}

/// Most keys one `state_getKeysPaged` call answers (Substrate's limit).
const MAX_KEYS_PAGED: u64 = 1000;

/// Every method this module serves (for `rpc_methods`).
const METHODS: &[&str] = &[
    "rpc_methods",
    "chain_getBlockHash",
    "chain_getFinalizedHead",
    "chain_getHeader",
    "chain_getBlock",
    "chain_subscribeFinalizedHeads",
    "chain_unsubscribeFinalizedHeads",
    "chain_subscribeNewHeads",
    "chain_unsubscribeNewHeads",
    "chain_subscribeAllHeads",
    "chain_unsubscribeAllHeads",
    "state_call",
    "state_getStorage",
    "state_getKeysPaged",
    "state_queryStorageAt",
    "state_getMetadata",
    "state_getRuntimeVersion",
    "state_subscribeRuntimeVersion",
    "state_unsubscribeRuntimeVersion",
    "system_chain",
    "system_name",
    "system_version",
    "system_properties",
    "system_health",
    "dev_submit",
    "dev_emit",
    "dev_events",
    "dev_status",
    "dev_pause",
    "dev_resume",
];

#[derive(Deserialize)]
struct Submit {
    #[serde(default)]
    profile: Profile,
    #[serde(flatten)]
    action: Action,
}

/// Queues the events `make` computes (under the chain lock, so what it reads cannot change
/// before they are queued) for the next block, all or none, and waits until that block is
/// final. Answers the block and the emitted events.
pub(crate) async fn emit(
    shared: &Arc<Shared>,
    make: impl FnOnce(&crate::chain::Chain) -> Result<Vec<Value>, String>,
) -> RpcResult {
    let (target, first, count) = {
        let mut c = shared.lock();
        let events = make(&c).map_err(invalid)?;
        let count = events.len();
        let (target, first) = c.queue_all(events).map_err(invalid)?;
        (target, first, count)
    };
    let mut rx = shared.produced.subscribe();
    rx.wait_for(|n| *n >= target)
        .await
        .map_err(|_| ErrorObjectOwned::owned(-32000, "the dev chain stopped", None::<()>))?;
    let c = shared.lock();
    let b = c
        .by_number(u64::from(target))
        .ok_or_else(|| ErrorObjectOwned::owned(-32000, "block vanished", None::<()>))?;
    let emitted: Vec<EmittedEvent> = b.emitted.iter().skip(first).take(count).cloned().collect();
    Ok(json!({"block": target, "hash": hex0x(&b.hash), "events": emitted}))
}

fn reg<T, E: std::fmt::Debug>(r: Result<T, E>) {
    r.expect("each method is registered once");
}

/// Builds the RPC module over the shared chain.
pub(crate) fn module(shared: Arc<Shared>) -> RpcModule<Arc<Shared>> {
    let mut m = RpcModule::new(shared);

    reg(m.register_method("rpc_methods", |_, _, _| -> RpcResult {
        Ok(json!({ "methods": METHODS }))
    }));
    reg(
        m.register_method("chain_getBlockHash", |p, s, _| -> RpcResult {
            let a = args(&p)?;
            let c = s.lock();
            let one = |v: &Value| -> RpcResult {
                if v.is_null() {
                    return Ok(json!(hex0x(&c.head().hash)));
                }
                let n = parse_number(v)?;
                Ok(c.by_number(n)
                    .map_or(Value::Null, |b| json!(hex0x(&b.hash))))
            };
            match a.first() {
                None => one(&Value::Null),
                Some(Value::Array(list)) => list
                    .iter()
                    .map(one)
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array),
                Some(v) => one(v),
            }
        }),
    );
    reg(
        m.register_method("chain_getFinalizedHead", |_, s, _| -> RpcResult {
            Ok(json!(hex0x(&s.lock().head().hash)))
        }),
    );
    reg(
        m.register_method("chain_getHeader", |p, s, _| -> RpcResult {
            let a = args(&p)?;
            let c = s.lock();
            Ok(maybe_at(&c, a.first())?.map_or(Value::Null, |b| b.header.to_json()))
        }),
    );
    reg(m.register_method("chain_getBlock", |p, s, _| -> RpcResult {
        let a = args(&p)?;
        let c = s.lock();
        Ok(maybe_at(&c, a.first())?.map_or(Value::Null, |b| {
            json!({"block": {"header": b.header.to_json(), "extrinsics": []}, "justifications": null})
        }))
    }));
    reg(m.register_method("state_call", |p, s, _| -> RpcResult {
        let a = args(&p)?;
        let method = a
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("state_call needs a method name"))?;
        let data = a.get(1).map(parse_hex).transpose()?.unwrap_or_default();
        let c = s.lock();
        at(&c, a.get(2))?;
        let out = match method {
            "Core_version" => c.runtime_version(),
            "Metadata_metadata_versions" => vec![15u32].encode(),
            "Metadata_metadata_at_version" => {
                let v = <u32 as parity_scale_codec::Decode>::decode(&mut data.as_slice())
                    .map_err(|e| invalid(format!("metadata version: {e}")))?;
                let md = (v == 15).then(|| s.metadata.clone());
                md.encode()
            }
            "Metadata_metadata" => s.metadata.encode(),
            other => {
                return Err(ErrorObjectOwned::owned(
                    -32000,
                    format!("Client error: Execution failed: Exported method {other} is not found"),
                    None::<()>,
                ))
            }
        };
        Ok(json!(hex0x(&out)))
    }));
    reg(
        m.register_method("state_getStorage", |p, s, _| -> RpcResult {
            let a = args(&p)?;
            let key = parse_hex(
                a.first()
                    .ok_or_else(|| invalid("state_getStorage needs a key"))?,
            )?;
            let mut c = s.lock();
            let b = at(&c, a.get(1))?;
            if key == events_key() {
                return Ok(json!(hex0x(&b.events)));
            }
            if key == storage_key("System", "Number") {
                return Ok(json!(hex0x(&b.header.number.0.encode())));
            }
            let n = b.header.number.0;
            let storage = c.storage_at(n).ok_or_else(|| invalid("no such block"))?;
            Ok(storage.get(&key).map_or(Value::Null, |v| json!(hex0x(v))))
        }),
    );
    reg(
        m.register_method("state_getKeysPaged", |p, s, _| -> RpcResult {
            let a = args(&p)?;
            let prefix = parse_hex(a.first().unwrap_or(&Value::Null))?;
            let count = a
                .get(1)
                .and_then(Value::as_u64)
                .ok_or_else(|| invalid("state_getKeysPaged needs a count"))?;
            if count > MAX_KEYS_PAGED {
                return Err(invalid(format!(
                    "count exceeds maximum value. value: {count}, max: {MAX_KEYS_PAGED}"
                )));
            }
            let start = match a.get(2) {
                None | Some(Value::Null) => None,
                Some(v) => Some(parse_hex(v)?),
            };
            let mut c = s.lock();
            let n = at(&c, a.get(3))?.header.number.0;
            let storage = c.storage_at(n).ok_or_else(|| invalid("no such block"))?;
            let keys = storage.keys_paged(&prefix, count as usize, start.as_deref());
            Ok(json!(keys.iter().map(|k| hex0x(k)).collect::<Vec<_>>()))
        }),
    );
    reg(
        m.register_method("state_queryStorageAt", |p, s, _| -> RpcResult {
            let a = args(&p)?;
            let keys = a
                .first()
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("state_queryStorageAt needs a list of keys"))?
                .iter()
                .map(parse_hex)
                .collect::<Result<Vec<_>, _>>()?;
            let mut c = s.lock();
            let b = at(&c, a.get(1))?;
            let (n, hash) = (b.header.number.0, b.hash);
            let storage = c.storage_at(n).ok_or_else(|| invalid("no such block"))?;
            let changes: Vec<Value> = keys
                .iter()
                .map(|k| {
                    let v = storage.get(k).map_or(Value::Null, |v| json!(hex0x(v)));
                    json!([hex0x(k), v])
                })
                .collect();
            Ok(json!([{"block": hex0x(&hash), "changes": changes}]))
        }),
    );
    reg(
        m.register_method("state_getMetadata", |p, s, _| -> RpcResult {
            let a = args(&p)?;
            at(&s.lock(), a.first())?;
            Ok(json!(hex0x(&s.metadata)))
        }),
    );
    reg(
        m.register_method("state_getRuntimeVersion", |p, s, _| -> RpcResult {
            let a = args(&p)?;
            let c = s.lock();
            at(&c, a.first())?;
            Ok(c.runtime_version_json())
        }),
    );
    reg(m.register_method("system_chain", |_, _, _| -> RpcResult {
        Ok(json!("Gatekeeper Devchain"))
    }));
    reg(m.register_method("system_name", |_, _, _| -> RpcResult {
        Ok(json!("gatekeeper-devchain"))
    }));
    reg(m.register_method("system_version", |_, _, _| -> RpcResult {
        Ok(json!(env!("CARGO_PKG_VERSION")))
    }));
    reg(
        m.register_method("system_properties", |_, _, _| -> RpcResult {
            Ok(json!({"ss58Format": 42, "tokenDecimals": 12, "tokenSymbol": "GK"}))
        }),
    );
    reg(m.register_method("system_health", |_, _, _| -> RpcResult {
        Ok(json!({"peers": 0, "isSyncing": false, "shouldHavePeers": false}))
    }));

    for (sub, notif, unsub) in [
        (
            "chain_subscribeFinalizedHeads",
            "chain_finalizedHead",
            "chain_unsubscribeFinalizedHeads",
        ),
        (
            "chain_subscribeNewHeads",
            "chain_newHead",
            "chain_unsubscribeNewHeads",
        ),
        (
            "chain_subscribeAllHeads",
            "chain_allHead",
            "chain_unsubscribeAllHeads",
        ),
    ] {
        reg(
            m.register_subscription(sub, notif, unsub, |_, pending, s, _| async move {
                let mut heads = s.heads.subscribe();
                let current = s.lock().head().header.to_json();
                let Ok(sink) = pending.accept().await else {
                    return;
                };
                let send = |v: &Value| serde_json::value::to_raw_value(v).expect("JSON serializes");
                if sink.send(send(&current)).await.is_err() {
                    return;
                }
                loop {
                    let next = tokio::select! {
                        _ = sink.closed() => return,
                        h = heads.recv() => h,
                    };
                    match next {
                        Ok(h) => {
                            if sink.send(send(&h)).await.is_err() {
                                return;
                            }
                        }
                        // A slow subscriber skips to the newest head, as a node's would.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }),
        );
    }
    reg(m.register_subscription(
        "state_subscribeRuntimeVersion",
        "state_runtimeVersion",
        "state_unsubscribeRuntimeVersion",
        |_, pending, s, _| async move {
            let v = s.lock().runtime_version_json();
            let Ok(sink) = pending.accept().await else {
                return;
            };
            let raw = serde_json::value::to_raw_value(&v).expect("JSON serializes");
            if sink.send(raw).await.is_ok() {
                sink.closed().await;
            }
        },
    ));

    reg(m.register_async_method("dev_submit", |p, s, _| async move {
        let a = args(&p)?;
        let submit: Submit = serde_json::from_value(a.into_iter().next().unwrap_or_default())
            .map_err(|e| invalid(format!("not an action: {e}")))?;
        emit(&s, |c| events_for(c, submit.profile, &submit.action)).await
    }));
    reg(m.register_async_method("dev_emit", |p, s, _| async move {
        let a = args(&p)?;
        let ev = a
            .into_iter()
            .next()
            .ok_or_else(|| invalid("dev_emit needs an event"))?;
        emit(&s, |_| Ok(vec![ev])).await
    }));
    reg(m.register_method("dev_events", |p, s, _| -> RpcResult {
        let a = args(&p)?;
        let from = a.first().map(parse_number).transpose()?.unwrap_or(0);
        let to = a.get(1).map(parse_number).transpose()?.unwrap_or(u64::MAX);
        Ok(json!(s.lock().emitted(from, to)))
    }));
    reg(m.register_method("dev_status", |_, s, _| -> RpcResult {
        let c = s.lock();
        Ok(json!({
            "genesis_hash": hex0x(&c.genesis_hash()),
            "head": c.head().header.number.0,
            "head_hash": hex0x(&c.head().hash),
            "block_time_ms": s.block_time.as_millis() as u64,
            "paused": s.paused.load(std::sync::atomic::Ordering::SeqCst),
            "shapes": c.shapes(),
            "data_dir": c.dir().map(|d| d.display().to_string()),
        }))
    }));
    reg(m.register_method("dev_pause", |_, s, _| -> RpcResult {
        s.paused.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(json!(true))
    }));
    reg(m.register_method("dev_resume", |_, s, _| -> RpcResult {
        s.paused.store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(json!(true))
    }));
    m
}
