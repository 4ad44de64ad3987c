//! Compiles the `.proto` files with protox (a pure-Rust protobuf compiler), so building Gatekeeper
//! needs no system `protoc`. The encoded descriptor set is kept for gRPC reflection.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "gatekeeper/v1/common.proto",
    "gatekeeper/v1/key.proto",
    "gatekeeper/v1/peer.proto",
    "gatekeeper/v1/admin.proto",
    "gatekeeper/raft/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    for p in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let fds = protox::compile(PROTOS, [&root]).map_err(|e| format!("protox: {e:?}"))?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("gatekeeper_descriptor.bin"), fds.encode_to_vec())?;
    // The public services (gatekeeper.v1): undecodable requests are INVALID_ARGUMENT with a
    // stable code (src/codec.rs). The Raft transport keeps prost's codec: it carries no error
    // catalog and its peers are other nodes.
    let v1: Vec<&str> = PROTOS
        .iter()
        .copied()
        .filter(|p| p.starts_with("gatekeeper/v1/"))
        .collect();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::GatekeeperCodec")
        .compile_fds(protox::compile(&v1, [&root]).map_err(|e| format!("protox: {e:?}"))?)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(
            protox::compile(["gatekeeper/raft/v1/raft.proto"], [&root])
                .map_err(|e| format!("protox: {e:?}"))?,
        )?;
    Ok(())
}
