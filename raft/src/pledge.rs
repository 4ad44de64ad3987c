//! A vote a follower gives the leader it follows when that leader stands again in a newer term,
//! outside openraft (design.md §10.3, "Standing again").
//!
//! A member can make the leader step down by answering it with a newer vote of its own; the
//! leader then stands again at once, in the term above. openraft's leader lease makes every
//! follower refuse every candidate, that leader included, until the lease expires, and a member
//! asking the moment it expired won (found by test). So a follower gives the leader it follows
//! its vote in the new term itself, and records it here: the record binds this node as a
//! persisted Raft vote does (no other candidate in that term or below, no leader of an older
//! term, no own candidacy in it) until openraft's own vote reaches it, which happens with the
//! first message of the re-elected leader. The record is a file, fsynced before the grant leaves,
//! so a restart in between keeps it.
//!
//! The decisions are pure functions of the record and the message ([`forbids_vote`],
//! [`forbids_leader`]); [`Pledge`] holds and persists the record.

use crate::NodeId;
use openraft::Vote;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Whether a vote pledged as `pledge` forbids granting `request` (a candidate's vote, or this
/// node's own candidacy): one below it in openraft's order of leaders (term, then node id: in
/// openraft's default mode a term may have several leaders, and a voter's vote only rises in
/// that order). The pledged vote itself may be answered again.
pub fn forbids_vote(pledge: &Vote<NodeId>, request: &Vote<NodeId>) -> bool {
    request.leader_id < pledge.leader_id
}

/// Whether a vote pledged as `pledge` forbids following `leader` (the vote of an AppendEntries or
/// snapshot): a leader below the pledged one in openraft's order (an older term, or the same
/// term and a lower node id: found by review).
pub fn forbids_leader(pledge: &Vote<NodeId>, leader: &Vote<NodeId>) -> bool {
    leader.leader_id < pledge.leader_id
}

/// The pledge record of one node: at most one vote, kept in a file.
#[derive(Clone, Debug)]
pub struct Pledge {
    path: PathBuf,
    vote: Arc<Mutex<Option<Vote<NodeId>>>>,
}

impl Pledge {
    /// Loads the record kept at `path` (none if the file does not exist).
    pub fn open(path: &Path) -> io::Result<Self> {
        let vote = match std::fs::read(path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("vote pledge {}: {e}", path.display()),
                )
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Self {
            path: path.to_path_buf(),
            vote: Arc::new(Mutex::new(vote)),
        })
    }

    /// A record that is never persisted (tests, and nodes built without a data dir).
    pub fn in_memory() -> Self {
        Self {
            path: PathBuf::new(),
            vote: Arc::default(),
        }
    }

    /// The pledged vote if it still binds: openraft's `current` vote has not reached it. A
    /// pledge `current` reached is dropped (and its file removed).
    pub fn in_force(&self, current: &Vote<NodeId>) -> Option<Vote<NodeId>> {
        let mut v = self.vote.lock().expect("pledge lock");
        match *v {
            Some(p) if *current >= p => {
                *v = None;
                if !self.path.as_os_str().is_empty() {
                    if let Err(e) = std::fs::remove_file(&self.path) {
                        if e.kind() != io::ErrorKind::NotFound {
                            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a kept vote pledge");
                        }
                    }
                }
                None
            }
            other => other,
        }
    }

    /// Records `vote`, durably, before the grant it backs is sent. Only upwards: `false` (and
    /// nothing recorded) for a vote not above the pledge in force, unless it is that very vote
    /// (a repeated request is answered again).
    pub fn give(&self, vote: Vote<NodeId>) -> io::Result<bool> {
        let mut v = self.vote.lock().expect("pledge lock");
        match *v {
            Some(p) if p == vote => return Ok(true),
            Some(p) if vote.partial_cmp(&p) != Some(std::cmp::Ordering::Greater) => {
                return Ok(false)
            }
            _ => {}
        }
        if !self.path.as_os_str().is_empty() {
            let tmp = self.path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = crate::private_fs::create_new_file(&tmp)?;
            f.write_all(&serde_json::to_vec(&vote).map_err(io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        *v = Some(vote);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(term: u64, node: NodeId, committed: bool) -> Vote<NodeId> {
        let mut v = Vote::new(term, node);
        v.committed = committed;
        v
    }

    #[test]
    fn a_pledge_forbids_other_candidates_up_to_its_term_and_older_leaders() {
        // openraft's order: term, then node id.
        let p = vote(9, 2, false);
        assert!(forbids_vote(&p, &vote(9, 1, false)));
        assert!(forbids_vote(&p, &vote(5, 3, false)));
        assert!(!forbids_vote(&p, &vote(9, 2, false)));
        assert!(!forbids_vote(&p, &vote(9, 3, false)));
        assert!(!forbids_vote(&p, &vote(10, 1, false)));
        assert!(forbids_leader(&p, &vote(8, 2, true)));
        assert!(forbids_leader(&p, &vote(9, 1, true)));
        assert!(!forbids_leader(&p, &vote(9, 2, true)));
        assert!(!forbids_leader(&p, &vote(9, 3, true)));
        assert!(!forbids_leader(&p, &vote(12, 1, true)));
    }

    #[test]
    fn a_pledge_survives_a_restart_and_ends_when_the_raft_vote_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote-pledge");
        let p = Pledge::open(&path).unwrap();
        assert_eq!(p.in_force(&vote(3, 1, true)), None);
        assert!(p.give(vote(9, 1, false)).unwrap());
        // Only upwards; the same vote again is answered again.
        assert!(p.give(vote(9, 1, false)).unwrap());
        assert!(!p.give(vote(7, 1, false)).unwrap());
        assert!(!p.give(vote(9, 0, false)).unwrap());
        let again = Pledge::open(&path).unwrap();
        assert_eq!(again.in_force(&vote(3, 1, true)), Some(vote(9, 1, false)));
        assert_eq!(again.in_force(&vote(9, 1, true)), None);
        assert!(!path.exists(), "a pledge that ended keeps its file");
        assert_eq!(
            Pledge::open(&path).unwrap().in_force(&vote(3, 1, true)),
            None
        );
    }

    #[test]
    fn a_damaged_pledge_file_is_an_error_not_a_missing_pledge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote-pledge");
        std::fs::write(&path, b"{not json").unwrap();
        let e = Pledge::open(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
