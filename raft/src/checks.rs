//! Checks on peers' Raft messages, made before openraft sees them.
//!
//! openraft trusts its peers: it treats a storage error as fatal (Raft stops until restart),
//! asserts invariants on what a leader sends (debug builds panic), and computes terms and indices
//! without overflow checks. A peer holding a valid member certificate can still send anything,
//! so the RaftService server ([`crate::network::RaftServer`]) refuses, with `INVALID_ARGUMENT`,
//! messages that would make openraft panic, stop, or rewrite what this node has committed; the
//! client ([`crate::network`]'s `PeerClient`) refuses answers of the same kind. A correct peer
//! can still send a message that conflicts with this node's committed log: a stale leader (lower
//! term) that has not yet learnt of its successor. openraft rejects such a message on its vote
//! before touching the log and answers with its higher vote, which makes that leader step down,
//! so the comparisons with the committed log and membership are skipped for a vote openraft
//! rejects ([`rejected_by_vote`]); what is refused is then only what no correct openraft 0.9 peer
//! sends. The rules, all pure functions of the message and a [`LocalView`]:
//!
//! * **Votes**: never this node's own id as leader/candidate; a term at most [`MAX_TERM`] and at
//!   most [`MAX_TERM_STEP`] above this node's term (openraft computes `term + 1` unchecked);
//!   committed in AppendEntries and InstallSnapshot (a leader's), uncommitted in a VoteRequest
//!   (a candidate's).
//! * **Log ids** in one message are ids of one log: indices at most [`MAX_INDEX`]; entries follow
//!   `prev_log_id` and each other index by index with non-decreasing leaders; no id newer than
//!   the sender's vote; `leader_commit` agrees with them.
//! * **Committed entries are never rewritten** (for a vote openraft accepts, i.e. `>=` this
//!   node's): every log id in the message at or below this
//!   node's committed index must be the one stored there (or, where the log is purged, not
//!   newer than the committed id); ids above it must not be older than it. A snapshot's last log
//!   id obeys the same rule, and its membership may not be older than the committed one.
//! * **`leader_commit`** is what the request itself establishes: a value beyond the request's
//!   last log id is lowered to it ([`effective_leader_commit`], the follower rule of the Raft
//!   paper, `commitIndex = min(leaderCommit, index of last new entry)`), so a forged commit point
//!   cannot make openraft apply entries this node does not have.

use crate::{Node, NodeId, TypeConfig};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{LogId, SnapshotMeta, StoredMembership, Vote};
use std::collections::BTreeMap;
use std::fmt;

/// Highest term accepted from a peer (openraft adds 1 to terms without overflow checks).
pub const MAX_TERM: u64 = 1 << 62;
/// Highest log index accepted from a peer.
pub const MAX_INDEX: u64 = 1 << 62;
/// Largest step above this node's own term a peer's vote may take. Terms grow by one per
/// election: 2^24 (16.7 million) elections are about 290 days of one election every 1.5 s, so
/// only a forged message jumps further. The step must stay small against [`MAX_TERM`]: each
/// granted (forged) VoteRequest can raise this node's term by the step, and a node at
/// `MAX_TERM` can never hold an election again; with 2^32 that took ~2^30 messages, with 2^24 it
/// takes ~2^38.
pub const MAX_TERM_STEP: u64 = 1 << 24;

/// Why a peer's message is refused (sent back as `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refuse<T>(msg: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(msg.into()))
}

/// The RPC a vote arrived in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    /// AppendEntries (sent by a leader).
    AppendEntries,
    /// Vote (sent by a candidate).
    Vote,
    /// InstallSnapshot (sent by a leader).
    InstallSnapshot,
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rpc::AppendEntries => "AppendEntries",
            Rpc::Vote => "VoteRequest",
            Rpc::InstallSnapshot => "InstallSnapshot",
        })
    }
}

/// What this node knows, read just before a check: openraft's vote, committed log id and
/// committed membership (from its core loop), and the log ids its log store holds at the indices
/// [`indices_to_read`] names.
#[derive(Clone, Debug, Default)]
pub struct LocalView {
    /// This node.
    pub node_id: NodeId,
    /// Its current vote.
    pub vote: Vote<NodeId>,
    /// Its committed log id.
    pub committed: Option<LogId<NodeId>>,
    /// Its committed membership.
    pub committed_membership: StoredMembership<NodeId, Node>,
    /// The last purged log id of its log.
    pub purged: Option<LogId<NodeId>>,
    /// Stored log ids by index (only the indices asked for; absent = not stored).
    pub stored: BTreeMap<u64, LogId<NodeId>>,
}

/// Checks a vote received in `rpc` against this node's id and term.
pub fn check_vote(
    vote: &Vote<NodeId>,
    rpc: Rpc,
    node_id: NodeId,
    local_term: u64,
) -> Result<(), Refused> {
    let term = vote.leader_id.term;
    if vote.leader_id.node_id == node_id {
        return refuse(format!(
            "{rpc}: vote {vote} names this node ({node_id}) itself; no peer sends that"
        ));
    }
    check_term(term, local_term, &format!("{rpc}: vote {vote}"))?;
    match rpc {
        Rpc::AppendEntries | Rpc::InstallSnapshot if !vote.committed => refuse(format!(
            "{rpc}: vote {vote} is not committed; only a leader sends {rpc}"
        )),
        Rpc::Vote if vote.committed => refuse(format!(
            "{rpc}: vote {vote} is committed; a candidate asks with an uncommitted vote"
        )),
        _ => Ok(()),
    }
}

fn check_term(term: u64, local_term: u64, what: &str) -> Result<(), Refused> {
    if term > MAX_TERM {
        return refuse(format!("{what}: term {term} exceeds the limit {MAX_TERM}"));
    }
    if term > local_term.saturating_add(MAX_TERM_STEP) {
        return refuse(format!(
            "{what}: term {term} is more than 2^24 above this node's term {local_term}"
        ));
    }
    Ok(())
}

/// A log id in a message whose sender holds `vote`.
fn check_log_id(l: &LogId<NodeId>, vote: &Vote<NodeId>, what: &str) -> Result<(), Refused> {
    if l.index > MAX_INDEX {
        return refuse(format!("{what} {l}: index exceeds the limit {MAX_INDEX}"));
    }
    if l.leader_id > vote.leader_id {
        return refuse(format!(
            "{what} {l} is from leader {}, newer than the sender's vote {vote}",
            l.leader_id
        ));
    }
    Ok(())
}

/// Whether two log ids can both be on one Raft log: the same index means the same id, a higher
/// index a leader no older.
fn consistent(a: &LogId<NodeId>, b: &LogId<NodeId>) -> bool {
    use std::cmp::Ordering::*;
    match a.index.cmp(&b.index) {
        Equal => a == b,
        Less => a.leader_id <= b.leader_id,
        Greater => a.leader_id >= b.leader_id,
    }
}

/// The request's log ids with their names: `prev_log_id`, then the entries.
fn request_log_ids(
    req: &AppendEntriesRequest<TypeConfig>,
) -> impl Iterator<Item = (String, LogId<NodeId>)> + '_ {
    req.prev_log_id
        .iter()
        .map(|p| ("prev_log_id".to_string(), *p))
        .chain(
            req.entries
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("entry {i}"), e.log_id)),
        )
}

/// The last log id the request establishes on the follower: its last entry, or `prev_log_id`.
pub fn request_last(req: &AppendEntriesRequest<TypeConfig>) -> Option<LogId<NodeId>> {
    req.entries.last().map(|e| e.log_id).or(req.prev_log_id)
}

/// The shape of an AppendEntries: the vote, and that its log ids are ids of one log.
pub fn check_append_shape(
    req: &AppendEntriesRequest<TypeConfig>,
    node_id: NodeId,
    local_term: u64,
) -> Result<(), Refused> {
    let vote = &req.vote;
    check_vote(vote, Rpc::AppendEntries, node_id, local_term)?;
    if let Some(p) = &req.prev_log_id {
        check_log_id(p, vote, "AppendEntries: prev_log_id")?;
    }
    let mut expect = req.prev_log_id.map_or(0, |p| p.index + 1);
    let mut before = req.prev_log_id;
    for (i, e) in req.entries.iter().enumerate() {
        let l = e.log_id;
        check_log_id(&l, vote, &format!("AppendEntries: entry {i}"))?;
        if l.index != expect {
            return refuse(format!(
                "AppendEntries: entry {i} has index {}, expected {expect}: entries follow \
                 prev_log_id and each other without gaps",
                l.index
            ));
        }
        if let Some(b) = before {
            if l.leader_id < b.leader_id {
                return refuse(format!(
                    "AppendEntries: entry {i} ({l}) is from an older leader than {b} before it"
                ));
            }
        }
        before = Some(l);
        expect = l.index + 1;
    }
    if let Some(c) = &req.leader_commit {
        check_log_id(c, vote, "AppendEntries: leader_commit")?;
        if let Some((what, x)) = request_log_ids(req).find(|(_, x)| !consistent(c, x)) {
            return refuse(format!(
                "AppendEntries: leader_commit {c} contradicts {what} {x} of the same message"
            ));
        }
    }
    Ok(())
}

/// Index ranges (inclusive) whose stored log ids [`check_append_against_local`] needs, given this
/// node's committed log id: the request's log ids at or below it, and `prev_log_id` and
/// `leader_commit` when the commit point lies inside the log before `prev_log_id`.
pub fn indices_to_read(
    req: &AppendEntriesRequest<TypeConfig>,
    committed: Option<LogId<NodeId>>,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if let Some(c) = committed {
        let mut lo = None;
        let mut hi = None;
        for (_, x) in request_log_ids(req) {
            if x.index <= c.index {
                lo = Some(lo.map_or(x.index, |l: u64| l.min(x.index)));
                hi = Some(hi.map_or(x.index, |h: u64| h.max(x.index)));
            }
        }
        if let (Some(lo), Some(hi)) = (lo, hi) {
            out.push((lo, hi));
        }
    }
    if let (Some(lc), Some(p)) = (req.leader_commit, req.prev_log_id) {
        if lc.index < p.index {
            out.push((p.index, p.index));
            out.push((lc.index, lc.index));
        }
    }
    out
}

/// A log id at or below this node's committed index must be the stored one; above it, it must
/// not be older than the committed id.
fn check_against_committed(
    x: &LogId<NodeId>,
    local: &LocalView,
    what: &str,
) -> Result<(), Refused> {
    let Some(c) = local.committed else {
        return Ok(());
    };
    if x.index > c.index {
        if x.leader_id < c.leader_id {
            return refuse(format!(
                "{what} {x} follows this node's committed {c} but is from an older leader"
            ));
        }
        return Ok(());
    }
    let known = local
        .stored
        .get(&x.index)
        .copied()
        .or_else(|| (x.index == c.index).then_some(c))
        .or_else(|| local.purged.filter(|p| p.index == x.index));
    match known {
        Some(s) if s != *x => refuse(format!(
            "{what} {x} conflicts with this node's committed entry {s} (committed up to {c}); \
             committed entries are never truncated or rewritten"
        )),
        Some(_) => Ok(()),
        None if x.leader_id > c.leader_id => refuse(format!(
            "{what} {x} is at or below this node's committed {c} but from a newer leader"
        )),
        None => Ok(()),
    }
}

/// Whether openraft rejects a leader's `vote` on the vote alone: it accepts only a vote `>=` its
/// own (a partial order, so `!(a >= b)` is not `a < b`), and answers anything else with its
/// higher vote before it looks at the log. A stale leader (a lower term, still sending until it
/// learns of the newer one) needs exactly that answer to step down, so the comparisons with this
/// node's committed log and membership, which such a leader can legitimately fail, are skipped
/// for it. `local.vote` only grows, so a vote lower than it is lower than openraft's vote too.
pub fn rejected_by_vote(vote: &Vote<NodeId>, local: &LocalView) -> bool {
    !matches!(
        vote.partial_cmp(&local.vote),
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
    )
}

/// Checks an AppendEntries (whose shape passed [`check_append_shape`]) against what this node has
/// committed. Passes a request whose vote openraft rejects ([`rejected_by_vote`]): openraft
/// answers it with its higher vote without touching the log.
pub fn check_append_against_local(
    req: &AppendEntriesRequest<TypeConfig>,
    local: &LocalView,
) -> Result<(), Refused> {
    if rejected_by_vote(&req.vote, local) {
        return Ok(());
    }
    for (what, x) in request_log_ids(req) {
        check_against_committed(&x, local, &format!("AppendEntries: {what}"))?;
    }
    if let Some(lc) = &req.leader_commit {
        check_against_committed(lc, local, "AppendEntries: leader_commit")?;
        if let Some(p) = &req.prev_log_id {
            // Where prev_log_id matches, the entries before it are the leader's: a commit point
            // among them must be the stored id.
            if lc.index < p.index && local.stored.get(&p.index) == Some(p) {
                if let Some(s) = local.stored.get(&lc.index) {
                    if s != lc {
                        return refuse(format!(
                            "AppendEntries: leader_commit {lc} differs from this node's entry {s} \
                             although prev_log_id {p} matches"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The commit point handed to openraft: `leader_commit`, lowered to the request's last log id
/// when it lies beyond it (nothing after that is known to match the leader's log yet).
pub fn effective_leader_commit(req: &AppendEntriesRequest<TypeConfig>) -> Option<LogId<NodeId>> {
    let lc = req.leader_commit?;
    let last = request_last(req)?;
    Some(if lc.index > last.index { last } else { lc })
}

/// Checks an InstallSnapshot header: the vote, the metadata's log ids and membership, and the
/// snapshot's last log id against this node's committed log id and membership. `local.stored`
/// should hold the ids at the snapshot's last index and its membership's index (when at or below
/// the committed index). The comparisons with this node's committed log and membership are
/// skipped when openraft rejects `vote` ([`rejected_by_vote`]).
pub fn check_snapshot_meta(
    vote: &Vote<NodeId>,
    meta: &SnapshotMeta<NodeId, Node>,
    local: &LocalView,
) -> Result<(), Refused> {
    check_vote(
        vote,
        Rpc::InstallSnapshot,
        local.node_id,
        local.vote.leader_id.term,
    )?;
    let Some(last) = meta.last_log_id else {
        return refuse("InstallSnapshot: the snapshot has no last log id");
    };
    check_log_id(&last, vote, "InstallSnapshot: last_log_id")?;
    let m = &meta.last_membership;
    let Some(ml) = m.log_id() else {
        return refuse("InstallSnapshot: the snapshot's membership has no log id");
    };
    check_log_id(ml, vote, "InstallSnapshot: membership log id")?;
    if ml.index > last.index || !consistent(ml, &last) {
        return refuse(format!(
            "InstallSnapshot: membership log id {ml} is not at or before last_log_id {last}"
        ));
    }
    if m.membership().voter_ids().next().is_none() {
        return refuse("InstallSnapshot: the snapshot's membership has no voters");
    }
    if rejected_by_vote(vote, local) {
        // openraft answers with its higher vote and installs nothing.
        return Ok(());
    }
    check_against_committed(&last, local, "InstallSnapshot: last_log_id")?;
    check_against_committed(ml, local, "InstallSnapshot: membership log id")?;
    let cm = &local.committed_membership;
    if let Some(cml) = cm.log_id() {
        if ml == cml && m.membership() != cm.membership() {
            return refuse(format!(
                "InstallSnapshot: membership at {ml} differs from this node's committed one"
            ));
        }
        if local.committed.is_none_or(|c| last.index > c.index) && ml < cml {
            return refuse(format!(
                "InstallSnapshot: membership {ml} is older than this node's committed {cml}"
            ));
        }
    }
    Ok(())
}

/// Checks a VoteRequest's shape.
pub fn check_vote_request(
    req: &VoteRequest<NodeId>,
    node_id: NodeId,
    local_term: u64,
) -> Result<(), Refused> {
    check_vote(&req.vote, Rpc::Vote, node_id, local_term)?;
    if let Some(l) = &req.last_log_id {
        check_log_id(l, &req.vote, "VoteRequest: last_log_id")?;
    }
    Ok(())
}

/// A vote in a peer's answer to a request this node sent with `sent`.
fn check_answer_vote(v: &Vote<NodeId>, sent: &Vote<NodeId>, what: &str) -> Result<(), Refused> {
    check_term(v.leader_id.term, sent.leader_id.term, what)
}

/// Checks a peer's answer to an AppendEntries this node sent.
pub fn check_append_response(
    req: &AppendEntriesRequest<TypeConfig>,
    resp: &AppendEntriesResponse<NodeId>,
) -> Result<(), Refused> {
    match resp {
        AppendEntriesResponse::Success => Ok(()),
        AppendEntriesResponse::PartialSuccess(m) => {
            let ok = match m {
                None => req.prev_log_id.is_none(),
                Some(m) => request_log_ids(req).any(|(_, x)| x == *m),
            };
            if ok {
                Ok(())
            } else {
                refuse(format!(
                    "AppendEntries answer: partial success at {m:?}, which this request did not send"
                ))
            }
        }
        AppendEntriesResponse::Conflict if req.prev_log_id.is_none() => {
            refuse("AppendEntries answer: conflict although the request had no prev_log_id")
        }
        AppendEntriesResponse::Conflict => Ok(()),
        AppendEntriesResponse::HigherVote(v) => {
            check_answer_vote(v, &req.vote, "AppendEntries answer: higher vote")?;
            // A follower that accepted this leader's committed vote has no other vote in the
            // same term: such an answer only makes the leader step down (found by attack).
            if v.leader_id.term == req.vote.leader_id.term && req.vote.is_committed() {
                return refuse(format!(
                    "AppendEntries answer: vote {v} in the leader's own term {}",
                    req.vote
                ));
            }
            // A newer vote for this very leader is one it never asked for: adopting it left a
            // leader stuck in a term no one followed (found by attack).
            if v.leader_id.node_id == req.vote.leader_id.node_id {
                return refuse(format!(
                    "AppendEntries answer: vote {v} names this leader itself"
                ));
            }
            if v > &req.vote {
                Ok(())
            } else {
                refuse(format!(
                    "AppendEntries answer: 'higher' vote {v} is not above the request's {}",
                    req.vote
                ))
            }
        }
    }
}

/// Checks a peer's answer to a VoteRequest this node sent.
pub fn check_vote_response(
    req: &VoteRequest<NodeId>,
    resp: &VoteResponse<NodeId>,
) -> Result<(), Refused> {
    check_answer_vote(&resp.vote, &req.vote, "VoteRequest answer: vote")?;
    if let Some(l) = &resp.last_log_id {
        if l.index > MAX_INDEX || l.leader_id.term > MAX_TERM {
            return refuse(format!(
                "VoteRequest answer: last_log_id {l} exceeds the limits"
            ));
        }
    }
    Ok(())
}

/// Checks a peer's answer to an InstallSnapshot this node sent with `sent`.
pub fn check_snapshot_response(vote: &Vote<NodeId>, sent: &Vote<NodeId>) -> Result<(), Refused> {
    check_answer_vote(vote, sent, "InstallSnapshot answer: vote")?;
    // Another committed vote in the leader's own term: no follower holds one (and openraft
    // cannot even order two such votes: comparing them panics).
    if vote.is_committed()
        && sent.is_committed()
        && vote.leader_id.term == sent.leader_id.term
        && vote.leader_id.node_id != sent.leader_id.node_id
    {
        return refuse(format!(
            "InstallSnapshot answer: vote {vote} in the leader's own term {sent}"
        ));
    }
    if vote != sent && vote.leader_id.node_id == sent.leader_id.node_id {
        return refuse(format!(
            "InstallSnapshot answer: vote {vote} names this leader itself"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
