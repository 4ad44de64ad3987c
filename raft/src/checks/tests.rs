//! One test per rule of [`super`]: each starts from a message a correct peer sends (accepted)
//! and changes one thing.

use super::*;
use crate::Command;
use openraft::{CommittedLeaderId, Entry, EntryPayload, Membership};
use std::collections::BTreeSet;

const ME: NodeId = 2;

fn lid(term: u64, node: NodeId, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn entry(l: LogId<NodeId>) -> Entry<TypeConfig> {
    Entry {
        log_id: l,
        payload: EntryPayload::Normal(Command(b"c".to_vec())),
    }
}

/// A leader (node 1, term 3) replicating entries 6..=8 after 5; it committed up to 7.
fn append() -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(lid(2, 1, 5)),
        entries: vec![
            entry(lid(2, 1, 6)),
            entry(lid(3, 1, 7)),
            entry(lid(3, 1, 8)),
        ],
        leader_commit: Some(lid(3, 1, 7)),
    }
}

fn membership() -> StoredMembership<NodeId, Node> {
    let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
    let nodes: BTreeMap<NodeId, Node> = [1, 2, 3].map(|i| (i, Node::default())).into();
    StoredMembership::new(Some(lid(1, 1, 1)), Membership::new(vec![voters], nodes))
}

/// This node: term 3, committed up to (2,1,4), log stored 1..=6 (the last uncommitted).
fn local() -> LocalView {
    LocalView {
        node_id: ME,
        vote: Vote::new_committed(3, 1),
        committed: Some(lid(2, 1, 4)),
        committed_membership: membership(),
        purged: None,
        stored: (1..=4)
            .map(|i| (i, lid(if i == 1 { 1 } else { 2 }, 1, i)))
            .chain([(5, lid(2, 1, 5)), (6, lid(2, 3, 6))])
            .collect(),
    }
}

fn shape(req: &AppendEntriesRequest<TypeConfig>) -> Result<(), Refused> {
    check_append_shape(req, ME, 3)
}

fn refused(r: Result<(), Refused>, says: &str) {
    match r {
        Ok(()) => panic!("accepted, expected a refusal saying {says:?}"),
        Err(Refused(m)) => assert!(m.contains(says), "{m:?} does not say {says:?}"),
    }
}

#[test]
fn a_correct_append_passes_every_check() {
    let req = append();
    shape(&req).unwrap();
    check_append_against_local(&req, &local()).unwrap();
    // A heartbeat, and the very first request to an empty follower.
    let hb = AppendEntriesRequest::<TypeConfig> {
        entries: vec![],
        ..append()
    };
    shape(&hb).unwrap();
    check_append_against_local(&hb, &local()).unwrap();
    let first = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 1),
        prev_log_id: None,
        entries: vec![entry(lid(0, 0, 0)), entry(lid(1, 1, 1))],
        leader_commit: None,
    };
    check_append_shape(&first, ME, 0).unwrap();
    check_append_against_local(&first, &LocalView::default()).unwrap();
    // A resend of entries this node already committed, with the same ids.
    let resend = AppendEntriesRequest::<TypeConfig> {
        prev_log_id: Some(lid(2, 1, 2)),
        entries: vec![
            entry(lid(2, 1, 3)),
            entry(lid(2, 1, 4)),
            entry(lid(2, 1, 5)),
        ],
        ..append()
    };
    shape(&resend).unwrap();
    check_append_against_local(&resend, &local()).unwrap();
}

#[test]
fn votes_naming_this_node_or_with_wild_terms_are_refused() {
    let mut req = append();
    req.vote = Vote::new_committed(3, ME);
    refused(shape(&req), "names this node");
    req.vote = Vote::new(3, 1);
    refused(shape(&req), "not committed");
    req.vote = Vote::new_committed(u64::MAX, 1);
    refused(shape(&req), "exceeds the limit");
    req.vote = Vote::new_committed(3 + (1 << 24) + 1, 1);
    refused(shape(&req), "more than 2^24 above");
    // A big but plausible step is fine.
    req.vote = Vote::new_committed(3 + 1000, 1);
    shape(&req).unwrap();

    let vr = |vote| VoteRequest::new(vote, Some(lid(2, 1, 6)));
    check_vote_request(&vr(Vote::new(4, 3)), ME, 3).unwrap();
    refused(
        check_vote_request(&vr(Vote::new(4, ME)), ME, 3),
        "names this node",
    );
    refused(
        check_vote_request(&vr(Vote::new_committed(4, 3)), ME, 3),
        "is committed",
    );
    refused(
        check_vote_request(&vr(Vote::new(u64::MAX, 3)), ME, 3),
        "exceeds the limit",
    );
    let future_log = VoteRequest::new(Vote::new(4, 3), Some(lid(9, 3, 6)));
    refused(
        check_vote_request(&future_log, ME, 3),
        "newer than the sender's vote",
    );
}

#[test]
fn log_ids_of_one_message_must_form_one_log() {
    // A gap after prev_log_id, a gap between entries, a repeated index.
    let mut req = append();
    req.entries.remove(0);
    refused(shape(&req), "expected 6");
    let mut req = append();
    req.entries.remove(1);
    refused(shape(&req), "expected 7");
    let mut req = append();
    req.entries[1] = entry(lid(3, 1, 6));
    refused(shape(&req), "expected 7");
    // No prev_log_id: entries start at index 0.
    let mut req = append();
    req.prev_log_id = None;
    req.leader_commit = None;
    refused(shape(&req), "expected 0");
    // An older leader after a newer one.
    let mut req = append();
    req.entries[2] = entry(lid(2, 1, 8));
    refused(shape(&req), "older leader");
    // An entry newer than the sender's own vote.
    let mut req = append();
    req.entries[2] = entry(lid(4, 1, 8));
    refused(shape(&req), "newer than the sender's vote");
    // Indices past the limit (index + 1 must not overflow anywhere).
    let mut req = append();
    req.prev_log_id = Some(lid(2, 1, u64::MAX));
    req.entries.clear();
    req.leader_commit = None;
    refused(shape(&req), "index exceeds the limit");
    // leader_commit that is not on the same log.
    let mut req = append();
    req.leader_commit = Some(lid(2, 1, 7));
    refused(shape(&req), "contradicts entry 1");
    let mut req = append();
    req.leader_commit = Some(lid(1, 1, 900));
    refused(shape(&req), "contradicts");
    let mut req = append();
    req.leader_commit = Some(lid(4, 1, 9));
    refused(shape(&req), "newer than the sender's vote");
}

#[test]
fn rewriting_committed_entries_is_refused() {
    // Every request here carries a vote >= this node's (3,1): openraft would accept it, so the
    // comparisons with the committed log apply (see a_stale_leaders_append_is_left_to_openraft).
    let l = local();
    // The attack: an entry at index 1 from a newer leader, i.e. a conflict far below the
    // committed index 4.
    let attack = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(9, 1),
        prev_log_id: None,
        entries: vec![entry(lid(0, 0, 0)), entry(lid(9, 1, 1))],
        leader_commit: Some(lid(9, 1, 1)),
    };
    check_append_shape(&attack, ME, 3).unwrap();
    refused(
        check_append_against_local(&attack, &l),
        "conflicts with this node's committed entry",
    );
    // The same through prev_log_id.
    let mut req = append();
    req.vote = Vote::new_committed(9, 1);
    req.prev_log_id = Some(lid(9, 1, 3));
    req.entries = vec![entry(lid(9, 1, 4))];
    req.leader_commit = None;
    shape(&req).unwrap_or_else(|e| panic!("{e}"));
    refused(check_append_against_local(&req, &l), "prev_log_id");
    // At the committed index itself, even when the store is not consulted.
    let mut l2 = l.clone();
    l2.stored.clear();
    req.prev_log_id = Some(lid(9, 1, 4));
    req.entries = vec![];
    refused(check_append_against_local(&req, &l2), "conflicts");
    // Below a purged point, nothing is stored: a newer leader than the committed one is refused,
    // an older one (as any earlier entry of the log) passes.
    let mut purged = l.clone();
    purged.purged = Some(lid(2, 1, 3));
    purged.stored.retain(|&i, _| i > 3);
    req.prev_log_id = Some(lid(9, 1, 2));
    refused(
        check_append_against_local(&req, &purged),
        "from a newer leader",
    );
    req.prev_log_id = Some(lid(2, 1, 3));
    check_append_against_local(&req, &purged).unwrap();
    req.prev_log_id = Some(lid(1, 1, 3));
    refused(check_append_against_local(&req, &purged), "conflicts");
    // Past the committed index, an older leader than the committed one is refused...
    let mut req = append();
    req.vote = Vote::new_committed(3, 1);
    req.prev_log_id = Some(lid(1, 1, 5));
    req.entries = vec![entry(lid(3, 1, 6))];
    req.leader_commit = None;
    shape(&req).unwrap();
    refused(check_append_against_local(&req, &l), "older leader");
    // ...while overwriting an uncommitted entry (stored 6 is (2,3,6)) is normal Raft.
    check_append_against_local(&append(), &l).unwrap();
}

#[test]
fn a_message_of_an_older_or_rival_vote_is_rejected_by_vote() {
    // The vote of a leader restored after a restart, against the node that refused it and
    // campaigned since: the server answers it with that node's newer vote (attack round 12).
    let restored = Vote::new_committed(2, 1);
    let mut l = local();
    for newer in [Vote::new(3, 2), Vote::new_committed(3, 2)] {
        l.vote = newer;
        assert!(rejected_by_vote(&restored, &l));
    }
    // Another leader of the same term, with a lower id.
    l.vote = Vote::new_committed(3, 2);
    assert!(rejected_by_vote(&Vote::new_committed(3, 1), &l));
    // The vote this node holds, or a newer one: checked (proof of election) as before.
    l.vote = restored;
    assert!(!rejected_by_vote(&restored, &l));
    l.vote = Vote::new(3, 2);
    assert!(!rejected_by_vote(&Vote::new_committed(4, 1), &l));
    l.vote = Vote::new(2, 1);
    assert!(!rejected_by_vote(&Vote::new_committed(2, 1), &l));
}

#[test]
fn a_stale_leaders_append_is_left_to_openraft() {
    // This node moved on: term 5 under leader 3, committed up to (5,3,6) where the old leader
    // (node 1, term 3) still believes index 6 is its uncommitted (3,1,6).
    let mut l = local();
    l.vote = Vote::new_committed(5, 3);
    l.committed = Some(lid(5, 3, 6));
    l.stored.insert(6, lid(5, 3, 6));
    let stale = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(lid(2, 1, 5)),
        entries: vec![entry(lid(3, 1, 6))],
        leader_commit: Some(lid(2, 1, 5)),
    };
    assert!(rejected_by_vote(&stale.vote, &l));
    check_append_shape(&stale, ME, 5).unwrap();
    // openraft answers it with HigherVote(5,3) and the old leader steps down.
    check_append_against_local(&stale, &l).unwrap();
    let hb = AppendEntriesRequest::<TypeConfig> {
        entries: vec![],
        prev_log_id: Some(lid(3, 1, 6)),
        ..stale.clone()
    };
    check_append_against_local(&hb, &l).unwrap();
    // The same conflict under a vote openraft accepts is refused.
    let mut current = stale.clone();
    current.vote = Vote::new_committed(5, 3);
    assert!(!rejected_by_vote(&current.vote, &l));
    refused(
        check_append_against_local(&current, &l),
        "conflicts with this node's committed entry",
    );
    // A same-term vote of another leader is not comparable: openraft rejects it too.
    assert!(rejected_by_vote(&Vote::new_committed(5, 1), &l));
    // The shape checks still apply to a stale leader.
    let mut bad = stale.clone();
    bad.entries = vec![entry(lid(3, 1, 7))];
    refused(check_append_shape(&bad, ME, 5), "expected 6");
    // A stale leader's snapshot: its header is checked, its conflicts are left to openraft.
    let v = Vote::new_committed(3, 1);
    check_snapshot_meta(&v, &meta(lid(3, 1, 2)), &l).unwrap();
    refused(
        check_snapshot_meta(&v, &meta(lid(4, 1, 40)), &l),
        "newer than",
    );
    refused(
        check_snapshot_meta(&Vote::new_committed(5, 3), &meta(lid(3, 1, 2)), &l),
        "conflicts",
    );
}

#[test]
fn leader_commit_never_points_past_what_the_request_establishes() {
    let mut req = append();
    assert_eq!(effective_leader_commit(&req), Some(lid(3, 1, 7)));
    req.leader_commit = Some(lid(3, 1, 50));
    shape(&req).unwrap();
    assert_eq!(effective_leader_commit(&req), Some(lid(3, 1, 8)));
    req.entries.clear();
    assert_eq!(effective_leader_commit(&req), Some(lid(2, 1, 5)));
    req.prev_log_id = None;
    assert_eq!(effective_leader_commit(&req), None);
    // A commit point inside the matching log must be the stored id.
    let mut req = append();
    req.entries.clear();
    req.prev_log_id = Some(lid(2, 1, 5));
    req.leader_commit = Some(lid(2, 1, 4));
    check_append_against_local(&req, &local()).unwrap();
    let mut l = local();
    l.committed = Some(lid(1, 1, 1));
    l.stored.insert(3, lid(1, 1, 3));
    req.leader_commit = Some(lid(2, 1, 3));
    refused(
        check_append_against_local(&req, &l),
        "differs from this node's entry",
    );
    assert_eq!(
        indices_to_read(&req, l.committed),
        vec![(5, 5), (3, 3)],
        "prev_log_id and the commit point are read"
    );
    assert_eq!(indices_to_read(&append(), local().committed), vec![]);
    let resend = AppendEntriesRequest::<TypeConfig> {
        prev_log_id: Some(lid(2, 1, 2)),
        entries: vec![
            entry(lid(2, 1, 3)),
            entry(lid(2, 1, 4)),
            entry(lid(2, 1, 5)),
        ],
        leader_commit: None,
        ..append()
    };
    assert_eq!(indices_to_read(&resend, local().committed), vec![(2, 4)]);
}

fn meta(last: LogId<NodeId>) -> SnapshotMeta<NodeId, Node> {
    SnapshotMeta {
        last_log_id: Some(last),
        last_membership: membership(),
        snapshot_id: "s".into(),
    }
}

#[test]
fn snapshot_headers_are_checked_against_the_committed_log() {
    let l = local();
    // Equal to this node's vote, so openraft would accept it and the committed log is compared.
    let v = Vote::new_committed(3, 1);
    assert!(!rejected_by_vote(&v, &l));
    check_snapshot_meta(&v, &meta(lid(3, 1, 40)), &l).unwrap();
    // Not newer than committed (openraft then ignores it): the same id passes.
    check_snapshot_meta(&v, &meta(lid(2, 1, 4)), &l).unwrap();
    refused(
        check_snapshot_meta(&Vote::new(3, 1), &meta(lid(3, 1, 40)), &l),
        "not committed",
    );
    refused(
        check_snapshot_meta(&Vote::new_committed(3, ME), &meta(lid(3, 1, 40)), &l),
        "names this node",
    );
    refused(
        check_snapshot_meta(&v, &meta(lid(4, 1, 40)), &l),
        "newer than the sender's vote",
    );
    // A snapshot "after" the committed id (newer leader) but at a lower index: it would roll the
    // state machine back.
    refused(
        check_snapshot_meta(&v, &meta(lid(3, 1, 2)), &l),
        "conflicts with this node's committed entry",
    );
    refused(
        check_snapshot_meta(&v, &meta(lid(1, 1, 40)), &l),
        "older leader",
    );
    let mut m = meta(lid(3, 1, 40));
    m.last_log_id = None;
    refused(check_snapshot_meta(&v, &m, &l), "no last log id");
    let mut m = meta(lid(3, 1, 40));
    m.last_membership = StoredMembership::new(None, membership().membership().clone());
    refused(check_snapshot_meta(&v, &m, &l), "no log id");
    m.last_membership = StoredMembership::new(Some(lid(3, 1, 41)), Membership::default());
    refused(check_snapshot_meta(&v, &m, &l), "not at or before");
    m.last_membership = StoredMembership::new(Some(lid(3, 1, 30)), Membership::default());
    refused(check_snapshot_meta(&v, &m, &l), "no voters");
    // Same membership log id, other members.
    let mut m = meta(lid(3, 1, 40));
    let voters: BTreeSet<NodeId> = [1, 2].into_iter().collect();
    let nodes: BTreeMap<NodeId, Node> = [1, 2].map(|i| (i, Node::default())).into();
    m.last_membership =
        StoredMembership::new(Some(lid(1, 1, 1)), Membership::new(vec![voters], nodes));
    refused(
        check_snapshot_meta(&v, &m, &l),
        "differs from this node's committed",
    );
    // An older membership than the committed one.
    let mut l2 = l.clone();
    l2.committed_membership =
        StoredMembership::new(Some(lid(2, 1, 3)), membership().membership().clone());
    refused(
        check_snapshot_meta(&v, &meta(lid(3, 1, 40)), &l2),
        "older than",
    );
}

#[test]
fn peers_answers_are_checked_too() {
    let req = append();
    check_append_response(&req, &AppendEntriesResponse::Success).unwrap();
    check_append_response(&req, &AppendEntriesResponse::Conflict).unwrap();
    check_append_response(
        &req,
        &AppendEntriesResponse::PartialSuccess(Some(lid(3, 1, 7))),
    )
    .unwrap();
    refused(
        check_append_response(
            &req,
            &AppendEntriesResponse::PartialSuccess(Some(lid(3, 1, 9))),
        ),
        "did not send",
    );
    refused(
        check_append_response(&req, &AppendEntriesResponse::PartialSuccess(None)),
        "did not send",
    );
    let mut first = append();
    first.prev_log_id = None;
    refused(
        check_append_response(&first, &AppendEntriesResponse::Conflict),
        "no prev_log_id",
    );
    check_append_response(&req, &AppendEntriesResponse::HigherVote(Vote::new(4, 3))).unwrap();
    // A vote in the leader's own term (the leader's is committed): only a liar answers that,
    // to make the leader step down.
    refused(
        check_append_response(&req, &AppendEntriesResponse::HigherVote(Vote::new(3, 3))),
        "in the leader's own term",
    );
    // A newer vote naming the leader itself: it never asked for it.
    refused(
        check_append_response(&req, &AppendEntriesResponse::HigherVote(Vote::new(4, 1))),
        "names this leader itself",
    );
    refused(
        check_snapshot_response(&Vote::new(4, 1), &Vote::new_committed(3, 1)),
        "names this leader itself",
    );
    check_snapshot_response(&Vote::new_committed(3, 1), &Vote::new_committed(3, 1)).unwrap();
    refused(
        check_append_response(&req, &AppendEntriesResponse::HigherVote(Vote::new(2, 3))),
        "not above",
    );
    refused(
        check_append_response(
            &req,
            &AppendEntriesResponse::HigherVote(Vote::new(u64::MAX, 3)),
        ),
        "exceeds the limit",
    );
    let vr = VoteRequest::new(Vote::new(4, 1), None);
    check_vote_response(&vr, &VoteResponse::new(Vote::new(4, 1), None, true)).unwrap();
    refused(
        check_vote_response(
            &vr,
            &VoteResponse::new(Vote::new(u64::MAX - 1, 3), None, false),
        ),
        "exceeds the limit",
    );
    refused(
        check_vote_response(
            &vr,
            &VoteResponse::new(Vote::new(5, 3), Some(lid(5, 3, u64::MAX)), false),
        ),
        "exceeds the limits",
    );
    check_snapshot_response(&Vote::new_committed(4, 2), &Vote::new_committed(3, 1)).unwrap();
    refused(
        check_snapshot_response(&Vote::new_committed(1 << 40, 1), &Vote::new_committed(3, 1)),
        "more than 2^24 above",
    );
}
