//! Conversions between `gatekeeper.raft.v1` messages and openraft types.
//!
//! Incoming messages are untrusted: a missing or inconsistent field is a [`ConvertError`], turned
//! into `INVALID_ARGUMENT` by the server.

use crate::{Command, Node, NodeId, TypeConfig};
use gatekeeper_proto::raft::v1 as pb;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LeaderId, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};
use std::collections::{BTreeMap, BTreeSet};

/// A message that does not describe a valid openraft value.
#[derive(Debug, thiserror::Error)]
#[error("invalid raft message: {0}")]
pub struct ConvertError(pub String);

fn missing(what: &str) -> ConvertError {
    ConvertError(format!("missing {what}"))
}

/// openraft → proto.
pub fn vote_to_pb(v: &Vote<NodeId>) -> pb::Vote {
    pb::Vote {
        leader_id: Some(pb::LeaderId {
            term: v.leader_id.term,
            node_id: v.leader_id.node_id,
        }),
        committed: v.committed,
    }
}

/// proto → openraft.
pub fn vote_from_pb(v: Option<pb::Vote>) -> Result<Vote<NodeId>, ConvertError> {
    let v = v.ok_or_else(|| missing("vote"))?;
    let l = v.leader_id.ok_or_else(|| missing("vote.leader_id"))?;
    Ok(Vote {
        leader_id: LeaderId::new(l.term, l.node_id),
        committed: v.committed,
    })
}

/// openraft → proto.
pub fn log_id_to_pb(l: &LogId<NodeId>) -> pb::LogId {
    pb::LogId {
        term: l.leader_id.term,
        node_id: l.leader_id.node_id,
        index: l.index,
    }
}

/// proto → openraft.
pub fn log_id_from_pb(l: pb::LogId) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(l.term, l.node_id), l.index)
}

fn opt_log_id_from_pb(l: Option<pb::LogId>) -> Option<LogId<NodeId>> {
    l.map(log_id_from_pb)
}

/// openraft → proto.
pub fn membership_to_pb(m: &Membership<NodeId, Node>) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| pb::NodeIdSet {
                node_ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| {
                (
                    *id,
                    pb::Node {
                        raft_address: n.raft_address.clone(),
                        api_address: n.api_address.clone(),
                    },
                )
            })
            .collect(),
    }
}

/// proto → openraft.
pub fn membership_from_pb(m: pb::Membership) -> Result<Membership<NodeId, Node>, ConvertError> {
    if m.configs.is_empty() {
        return Err(ConvertError("membership without configs".into()));
    }
    let configs: Vec<BTreeSet<NodeId>> = m
        .configs
        .into_iter()
        .map(|c| c.node_ids.into_iter().collect())
        .collect();
    if configs.iter().any(BTreeSet::is_empty) {
        return Err(ConvertError("membership with a config of no voters".into()));
    }
    let nodes: BTreeMap<NodeId, Node> = m
        .nodes
        .into_iter()
        .map(|(id, n)| {
            (
                id,
                Node {
                    raft_address: n.raft_address,
                    api_address: n.api_address,
                },
            )
        })
        .collect();
    for c in &configs {
        for id in c {
            if !nodes.contains_key(id) {
                return Err(ConvertError(format!("voter {id} has no address")));
            }
        }
    }
    Ok(Membership::new(configs, nodes))
}

/// openraft → proto.
pub fn entry_to_pb(e: &Entry<TypeConfig>) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(c) => pb::entry::Payload::Command(c.0.clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

/// proto → openraft.
pub fn entry_from_pb(e: pb::Entry) -> Result<Entry<TypeConfig>, ConvertError> {
    let log_id = log_id_from_pb(e.log_id.ok_or_else(|| missing("entry.log_id"))?);
    let payload = match e.payload.ok_or_else(|| missing("entry.payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Command(c) => EntryPayload::Normal(Command(c)),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(m)?),
    };
    Ok(Entry { log_id, payload })
}

/// openraft → proto.
pub fn append_req_to_pb(r: &AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: r.prev_log_id.as_ref().map(log_id_to_pb),
        entries: r.entries.iter().map(entry_to_pb).collect(),
        leader_commit: r.leader_commit.as_ref().map(log_id_to_pb),
        election: Vec::new(),
    }
}

/// proto → openraft.
pub fn append_req_from_pb(
    r: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, ConvertError> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(r.vote)?,
        prev_log_id: opt_log_id_from_pb(r.prev_log_id),
        entries: r
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_from_pb(r.leader_commit),
    })
}

/// openraft → proto.
pub fn append_resp_to_pb(r: &AppendEntriesResponse<NodeId>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as R;
    let result = match r {
        AppendEntriesResponse::Success => R::Success(pb::Blank {}),
        AppendEntriesResponse::PartialSuccess(m) => R::PartialSuccess(pb::PartialSuccess {
            matching: m.as_ref().map(log_id_to_pb),
        }),
        AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(v)),
    };
    pb::AppendEntriesResponse {
        result: Some(result),
    }
}

/// proto → openraft.
pub fn append_resp_from_pb(
    r: pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<NodeId>, ConvertError> {
    use pb::append_entries_response::Result as R;
    Ok(match r.result.ok_or_else(|| missing("result"))? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::PartialSuccess(p) => {
            AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(p.matching))
        }
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from_pb(Some(v))?),
    })
}

/// openraft → proto.
pub fn vote_req_to_pb(r: &VoteRequest<NodeId>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: r.last_log_id.as_ref().map(log_id_to_pb),
    }
}

/// proto → openraft.
pub fn vote_req_from_pb(r: pb::VoteRequest) -> Result<VoteRequest<NodeId>, ConvertError> {
    Ok(VoteRequest {
        vote: vote_from_pb(r.vote)?,
        last_log_id: opt_log_id_from_pb(r.last_log_id),
    })
}

/// openraft → proto.
pub fn vote_resp_to_pb(r: &VoteResponse<NodeId>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id_to_pb),
        grant: Vec::new(),
    }
}

/// The grants of a proof of election, by node (a repeated node keeps its last grant).
pub fn election_from_pb(g: &[pb::ElectionGrant]) -> std::collections::BTreeMap<NodeId, Vec<u8>> {
    g.iter().map(|g| (g.node_id, g.signature.clone())).collect()
}

/// A proof of election as sent.
pub fn election_to_pb(g: &std::collections::BTreeMap<NodeId, Vec<u8>>) -> Vec<pb::ElectionGrant> {
    g.iter()
        .map(|(n, s)| pb::ElectionGrant {
            node_id: *n,
            signature: s.clone(),
        })
        .collect()
}

/// proto → openraft.
pub fn vote_resp_from_pb(r: pb::VoteResponse) -> Result<VoteResponse<NodeId>, ConvertError> {
    Ok(VoteResponse {
        vote: vote_from_pb(r.vote)?,
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_from_pb(r.last_log_id),
    })
}

/// openraft → proto.
pub fn snapshot_meta_to_pb(m: &SnapshotMeta<NodeId, Node>) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: m.last_log_id.as_ref().map(log_id_to_pb),
        last_membership: Some(pb::StoredMembership {
            log_id: m.last_membership.log_id().as_ref().map(log_id_to_pb),
            membership: Some(membership_to_pb(m.last_membership.membership())),
        }),
        snapshot_id: m.snapshot_id.clone(),
    }
}

/// proto → openraft.
pub fn snapshot_meta_from_pb(
    m: pb::SnapshotMeta,
) -> Result<SnapshotMeta<NodeId, Node>, ConvertError> {
    let sm = m
        .last_membership
        .ok_or_else(|| missing("meta.last_membership"))?;
    let membership = match sm.membership {
        Some(mm) if !mm.configs.is_empty() => membership_from_pb(mm)?,
        _ => Membership::default(),
    };
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(m.last_log_id),
        last_membership: StoredMembership::new(opt_log_id_from_pb(sm.log_id), membership),
        snapshot_id: m.snapshot_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(p: u16) -> Node {
        Node {
            raft_address: format!("127.0.0.1:{p}"),
            api_address: format!("127.0.0.1:{}", p + 1),
        }
    }

    #[test]
    fn append_entries_round_trip() {
        let m = Membership::new(
            vec![[1u64, 2].into_iter().collect()],
            [(1u64, node(1)), (2, node(3))]
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        );
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 9)),
            entries: vec![
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(3, 1), 10),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(3, 1), 11),
                    payload: EntryPayload::Normal(Command(b"cmd".to_vec())),
                },
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(3, 1), 12),
                    payload: EntryPayload::Membership(m),
                },
            ],
            leader_commit: None,
        };
        let back = append_req_from_pb(append_req_to_pb(&req)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{req:?}"));
    }

    #[test]
    fn votes_round_trip_including_unvoted() {
        for v in [Vote::new(4, 2), Vote::new_committed(5, 3), Vote::default()] {
            assert_eq!(vote_from_pb(Some(vote_to_pb(&v))).unwrap(), v);
        }
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(vote_from_pb(None).is_err());
        assert!(append_req_from_pb(pb::AppendEntriesRequest::default()).is_err());
        assert!(entry_from_pb(pb::Entry::default()).is_err());
        // A voter without an address.
        let m = pb::Membership {
            configs: vec![pb::NodeIdSet { node_ids: vec![7] }],
            nodes: Default::default(),
        };
        assert!(membership_from_pb(m).is_err());
    }
}
