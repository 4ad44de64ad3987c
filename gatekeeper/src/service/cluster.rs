//! The cluster listener's admission, as RaftService's hook and PeerService's first check: reads
//! the caller's verified certificate and this node's membership view, and asks
//! [`crate::admission::admit`].

use crate::admission::{self, Caller, ClusterCall, ClusterView};
use crate::error::{ApiError, ErrorCode};
use crate::tls::ConnectInfo;
use gatekeeper_raft::network::{Admission, RaftCall};
use gatekeeper_raft::replica::Replica;
use gatekeeper_raft::NodeId;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Refusals are logged at most once a second (a member could otherwise fill the disk).
static REFUSALS: gatekeeper_raft::lograte::LogGate =
    gatekeeper_raft::lograte::LogGate::new(std::time::Duration::from_secs(1));

/// Admits the caller of `call` on a TLS cluster listener, or refuses it with
/// `PEER_NOT_ADMITTED` / `NO_CLIENT_CERTIFICATE`. Returns the caller's node id.
pub fn admit(
    replica: &Replica,
    extensions: &tonic::Extensions,
    call: ClusterCall,
    claimed: Option<NodeId>,
) -> Result<NodeId, ApiError> {
    let info = extensions.get::<ConnectInfo>();
    let peer = info.and_then(|c| c.peer.clone()).ok_or_else(|| {
        if info.is_some_and(|c| c.peer_certificates.is_some()) {
            ApiError::new(
                ErrorCode::PeerNotAdmitted,
                "the client certificate could not be parsed",
            )
        } else {
            ApiError::new(
                ErrorCode::NoClientCertificate,
                "the cluster listener needs a member's client certificate",
            )
        }
    })?;
    let nodes = replica.membership_nodes();
    let pinned: BTreeMap<NodeId, [u8; 32]> = replica
        .sm
        .read()
        .state
        .members
        .iter()
        .filter_map(|(id, m)| m.tls_spki.as_ref().map(|s| (*id, s.0)))
        .collect();
    let admitted = admission::admit(
        ClusterView {
            nodes: &nodes,
            pinned: &pinned,
        },
        Caller::from(&*peer),
        call,
        claimed,
    )
    .map_err(|r| {
        if let Some(left_out) = REFUSALS.pass(std::time::Instant::now()) {
            tracing::warn!(
                remote = %peer.remote_addr,
                call = ?call,
                reason = %r,
                refused_since_last_line = left_out,
                "cluster listener refused a caller"
            );
        }
        let e = ApiError::new(ErrorCode::PeerNotAdmitted, r.to_string());
        if matches!(r, admission::Refusal::NotInMembership { .. }) {
            // Lets a removed node tell it was removed (its `status` says so).
            e.with_metadata(
                gatekeeper_raft::network::REFUSAL_METADATA,
                gatekeeper_raft::network::NOT_IN_MEMBERSHIP,
            )
        } else {
            e
        }
    })?;
    // Admitted: the connection now counts as established (never evicted to make room). A
    // refused caller's connection stays pending: evictable and capped per address.
    if let Some(info) = info {
        info.mark_established();
    }
    Ok(admitted)
}

/// RaftService's admission hook over [`admit`].
pub fn raft_admission(replica: Replica) -> Admission {
    Arc::new(move |extensions: &tonic::Extensions, call: RaftCall| {
        let kind = ClusterCall::from_raft_method(call.method).ok_or_else(|| {
            tonic::Status::from(ApiError::new(
                ErrorCode::Unimplemented,
                format!("unknown Raft method {}", call.method),
            ))
        })?;
        admit(&replica, extensions, kind, call.claimed_sender)
            .map(|_| ())
            .map_err(tonic::Status::from)
    })
}
