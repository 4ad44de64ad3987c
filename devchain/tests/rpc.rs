//! The dev chain's JSON-RPC over a real WebSocket, as a Substrate client sees it.

use devchain::chain::{events_key, hex0x};
use devchain::runtime::Shapes;
use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::{WsClient, WsClientBuilder};
use parity_scale_codec::{Compact, Decode, Encode};
use serde_json::{json, Value};
use std::time::Duration;

async fn chain() -> (devchain::DevChain, WsClient) {
    let c = devchain::DevChain::start(devchain::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        block_time: Duration::from_millis(40),
        data_dir: None,
        shapes: Shapes::Standard,
    })
    .await
    .unwrap();
    let client = WsClientBuilder::default().build(c.url()).await.unwrap();
    (c, client)
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap().trim_start_matches("0x")).unwrap()
}

fn code(e: jsonrpsee::core::ClientError) -> i32 {
    match e {
        jsonrpsee::core::ClientError::Call(o) => o.code(),
        other => panic!("expected a call error, got {other}"),
    }
}

#[tokio::test]
async fn substrate_methods_answer_as_a_node_does() {
    let (c, rpc) = chain().await;
    let methods: Value = rpc.request("rpc_methods", rpc_params![]).await.unwrap();
    let list: Vec<&str> = methods["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(list.contains(&"chain_subscribeFinalizedHeads"));
    assert!(!list.iter().any(|m| m.starts_with("chainHead_v1_")));

    let genesis: Value = rpc
        .request("chain_getBlockHash", rpc_params![0])
        .await
        .unwrap();
    assert_eq!(unhex(&genesis), c.genesis_hash());
    let none: Value = rpc
        .request("chain_getBlockHash", rpc_params![1_000_000])
        .await
        .unwrap();
    assert_eq!(none, Value::Null);

    // Headers: the hash is blake2_256 of the SCALE-encoded header, parents link.
    let r = c
        .emit(vec![
            json!({"Gatekeeper": {"WorkerDeregistered": {"worker": hex0x(&[1; 32])}}}),
        ])
        .await
        .unwrap();
    let n = r["block"].as_u64().unwrap();
    let hash: Value = rpc
        .request("chain_getBlockHash", rpc_params![n])
        .await
        .unwrap();
    assert_eq!(hash, r["hash"]);
    let header: Value = rpc
        .request("chain_getHeader", rpc_params![hash.clone()])
        .await
        .unwrap();
    assert_eq!(header["number"], json!(format!("0x{n:x}")));
    let encoded = (
        <[u8; 32]>::try_from(unhex(&header["parentHash"])).unwrap(),
        Compact(n as u32),
        <[u8; 32]>::try_from(unhex(&header["stateRoot"])).unwrap(),
        <[u8; 32]>::try_from(unhex(&header["extrinsicsRoot"])).unwrap(),
        Vec::<()>::new(),
    )
        .encode();
    assert_eq!(
        sp_crypto_hashing::blake2_256(&encoded).to_vec(),
        unhex(&hash)
    );
    let parent: Value = rpc
        .request("chain_getBlockHash", rpc_params![n - 1])
        .await
        .unwrap();
    assert_eq!(header["parentHash"], parent);

    // System.Events at that block: 3 records (timestamp, the event, its success).
    let events: Value = rpc
        .request(
            "state_getStorage",
            rpc_params![hex0x(&events_key()), hash.clone()],
        )
        .await
        .unwrap();
    let bytes = unhex(&events);
    assert_eq!(Compact::<u32>::decode(&mut &bytes[..]).unwrap().0, 3);
    let other: Value = rpc
        .request("state_getStorage", rpc_params!["0x1234", hash.clone()])
        .await
        .unwrap();
    assert_eq!(other, Value::Null);

    // Runtime version and metadata through state_call.
    let v: Value = rpc
        .request(
            "state_call",
            rpc_params!["Core_version", "0x", hash.clone()],
        )
        .await
        .unwrap();
    let (spec_name, _impl, _auth, spec_version): (String, String, u32, u32) =
        Decode::decode(&mut &unhex(&v)[..]).unwrap();
    assert_eq!(
        (spec_name.as_str(), spec_version),
        ("gatekeeper-devchain", 101)
    );
    let versions: Value = rpc
        .request(
            "state_call",
            rpc_params!["Metadata_metadata_versions", "0x"],
        )
        .await
        .unwrap();
    assert_eq!(
        Vec::<u32>::decode(&mut &unhex(&versions)[..]).unwrap(),
        vec![15]
    );
    let md: Value = rpc
        .request(
            "state_call",
            rpc_params!["Metadata_metadata_at_version", hex0x(&15u32.encode())],
        )
        .await
        .unwrap();
    let md = Option::<Vec<u8>>::decode(&mut &unhex(&md)[..])
        .unwrap()
        .unwrap();
    assert_eq!(&md[..5], b"meta\x0f");
    let v14: Value = rpc
        .request(
            "state_call",
            rpc_params!["Metadata_metadata_at_version", hex0x(&14u32.encode())],
        )
        .await
        .unwrap();
    assert_eq!(unhex(&v14), vec![0], "None for versions it does not serve");

    // Errors: unknown method, unknown runtime call, unknown block, bad parameters.
    assert_eq!(
        code(
            rpc.request::<Value, _>("author_submitExtrinsic", rpc_params!["0x00"])
                .await
                .unwrap_err()
        ),
        -32601
    );
    assert_eq!(
        code(
            rpc.request::<Value, _>("state_call", rpc_params!["Nope_nope", "0x"])
                .await
                .unwrap_err()
        ),
        -32000
    );
    assert_eq!(
        code(
            rpc.request::<Value, _>(
                "state_getStorage",
                rpc_params![hex0x(&events_key()), hex0x(&[9; 32])]
            )
            .await
            .unwrap_err()
        ),
        -32000
    );
    let missing: Value = rpc
        .request("chain_getHeader", rpc_params![hex0x(&[9; 32])])
        .await
        .unwrap();
    assert_eq!(missing, Value::Null);
    assert_eq!(
        code(
            rpc.request::<Value, _>("chain_getHeader", rpc_params!["0xzz"])
                .await
                .unwrap_err()
        ),
        -32602
    );
    assert_eq!(
        code(
            rpc.request::<Value, _>("dev_submit", rpc_params![json!({"action": "fly"})])
                .await
                .unwrap_err()
        ),
        -32602
    );
    assert_eq!(
        code(
            rpc.request::<Value, _>(
                "dev_submit",
                rpc_params![json!({"action": "deregister_worker", "profile": "phala", "worker": hex0x(&[1; 32])})]
            )
            .await
            .unwrap_err()
        ),
        -32602
    );
    c.stop().await;
}

#[tokio::test]
async fn finalized_heads_stream_from_the_current_one() {
    let (c, rpc) = chain().await;
    let mut sub = rpc
        .subscribe::<Value, _>(
            "chain_subscribeFinalizedHeads",
            rpc_params![],
            "chain_unsubscribeFinalizedHeads",
        )
        .await
        .unwrap();
    let first = sub.next().await.unwrap().unwrap();
    let second = sub.next().await.unwrap().unwrap();
    let n = |h: &Value| {
        u64::from_str_radix(h["number"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    };
    assert!(n(&second) > n(&first));
    let head: Value = rpc
        .request("chain_getFinalizedHead", rpc_params![])
        .await
        .unwrap();
    let head_header: Value = rpc
        .request("chain_getHeader", rpc_params![head])
        .await
        .unwrap();
    assert!(n(&head_header) >= n(&second));
    // dev_events lists what was emitted, dev_status the chain.
    let r = c
        .emit(vec![
            json!({"PhalaComputation": {"WorkerEnterUnresponsive": {"session": hex0x(&[3; 32])}}}),
        ])
        .await
        .unwrap();
    let all: Value = rpc.request("dev_events", rpc_params![]).await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(all[0]["block"], r["block"]);
    assert_eq!(all[0]["index"], 1);
    let st: Value = rpc.request("dev_status", rpc_params![]).await.unwrap();
    assert_eq!(unhex(&st["genesis_hash"]), c.genesis_hash());
    c.stop().await;
}
