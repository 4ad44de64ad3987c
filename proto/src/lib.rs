//! Gatekeeper's gRPC API, generated from the `.proto` files beside this crate.
//!
//! * [`v1`] — `gatekeeper.v1`: `KeyService` (workers), `PeerService` (node to node) and
//!   `AdminService` (operators).
//! * [`raft::v1`] — `gatekeeper.raft.v1`: `RaftService`, the Raft transport.
//!
//! Field meanings and the gRPC status code of every failure are documented in `docs/api.md`.

#![forbid(unsafe_code)]

pub mod codec;

/// `gatekeeper.v1`: the public API.
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::large_enum_variant,
        clippy::doc_overindented_list_items
    )]
    tonic::include_proto!("gatekeeper.v1");
}

/// `gatekeeper.raft.*`: the Raft transport.
pub mod raft {
    /// `gatekeeper.raft.v1`.
    pub mod v1 {
        #![allow(
            missing_docs,
            clippy::large_enum_variant,
            clippy::doc_overindented_list_items
        )]
        tonic::include_proto!("gatekeeper.raft.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Gatekeeper proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gatekeeper_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_names_every_service() {
        let fds = prost::bytes::Bytes::from_static(FILE_DESCRIPTOR_SET);
        // Decode as raw protobuf to check the services are present without prost-types.
        let text = String::from_utf8_lossy(&fds);
        for svc in ["KeyService", "PeerService", "AdminService", "RaftService"] {
            assert!(text.contains(svc), "descriptor set lacks {svc}");
        }
    }

    #[test]
    fn key_request_round_trips() {
        let req = v1::GetWorkerKeyRequest {
            header: Some(v1::KeyRequestHeader {
                gatekeeper_id: vec![1; 32],
                worker_public_key: vec![2; 32],
                recipient_public_key: vec![3; 32],
                epoch: Some(7),
                nonce: vec![4; 32],
                timestamp_ms: 1_700_000_000_000,
                attestation: None,
            }),
            signature: vec![5; 64],
        };
        let bytes = req.encode_to_vec();
        let back = v1::GetWorkerKeyRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.header.unwrap().epoch, Some(7));
    }
}
