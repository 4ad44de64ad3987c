//! Bounded waits on a [`Cluster`]: [`Cluster::wait_for`] and the waits built on it.

use super::Cluster;
use crate::clients::Status;
use crate::util::{POLL, WAIT};
use std::time::{Duration, Instant};

impl Cluster {
    /// Poll `f` every [`POLL`] until it returns `Ok`, at most `timeout`. On timeout, panic with
    /// `desc`, the last `Err` observation, and the tail of every node's logs.
    pub fn wait_for<T>(
        &self,
        desc: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let start = Instant::now();
        loop {
            let last = match f() {
                Ok(v) => return v,
                Err(e) => e,
            };
            if start.elapsed() >= timeout {
                self.fail(&format!(
                    "timed out after {timeout:?} waiting for {desc}\nlast observation: {last}"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until every running node agrees on one leader (same leader id and term, and the
    /// leader says it leads). Returns its id.
    pub fn leader(&self) -> u64 {
        let ids = self.running_ids();
        self.leader_among(&ids)
    }

    /// Wait until the nodes `ids` agree on a leader among them (same leader id and term, and the
    /// leader says it leads). Returns its id.
    pub fn leader_among(&self, ids: &[u64]) -> u64 {
        self.wait_for(
            &format!("nodes {ids:?} to agree on a leader among them"),
            WAIT,
            || self.agreed_leader(ids),
        )
    }

    /// One observation: the leader nodes `ids` agree on, or why they do not.
    pub fn agreed_leader(&self, ids: &[u64]) -> Result<u64, String> {
        let mut views = Vec::new();
        for &i in ids {
            let s = self.status(i).map_err(|e| format!("node {i}: {e}"))?;
            views.push((i, s.role, s.leader_id, s.term));
        }
        let (_, _, first, term) = views.first().cloned().ok_or("no nodes given")?;
        let l = first.ok_or_else(|| format!("no leader known; views {views:?}"))?;
        let agree = views
            .iter()
            .all(|(_, _, lid, t)| *lid == Some(l) && *t == term);
        let leads = views
            .iter()
            .any(|(i, role, _, _)| *i == l && role == "leader");
        if agree && leads && ids.contains(&l) {
            Ok(l)
        } else {
            Err(format!("views (node, role, leader_id, term): {views:?}"))
        }
    }

    /// Wait until nodes `ids` report the same `last_applied` and `audit_sequence`, with
    /// `last_applied` at least `min_applied`. Returns their statuses.
    pub fn wait_converged(&self, ids: &[u64], min_applied: u64) -> Vec<Status> {
        self.wait_for(
            &format!(
                "nodes {ids:?} to converge (same last_applied >= {min_applied} and audit_sequence)"
            ),
            WAIT,
            || {
                let mut all = Vec::new();
                for &i in ids {
                    all.push(self.status(i).map_err(|e| format!("node {i}: {e}"))?);
                }
                let summary: Vec<_> = all
                    .iter()
                    .map(|s| {
                        (
                            s.node_id,
                            s.role.clone(),
                            s.last_applied,
                            s.commit_index,
                            s.audit_sequence,
                        )
                    })
                    .collect();
                let applied = all[0].last_applied;
                let audit = all[0].audit_sequence;
                let same = all
                    .iter()
                    .all(|s| s.last_applied == applied && s.audit_sequence == audit);
                if same && applied.unwrap_or(0) >= min_applied {
                    Ok(all)
                } else {
                    Err(format!(
                        "(node, role, last_applied, commit_index, audit_sequence): {summary:?}"
                    ))
                }
            },
        )
    }
}
