//! Admission of new members against real processes: a node becomes a voter only after it has
//! caught up with the log and registered evidence that passes the member policy; a join of a node
//! that never runs leaves the voter set (and the learner set) unchanged and says why.

use gatekeeper_integration_tests::{Cluster, Opts};
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn a_join_of_a_node_that_never_starts_changes_nothing_and_says_why() {
    let mut c = Cluster::start(
        3,
        Opts {
            extra_config: vec!["join_timeout_ms = 3000".into()],
            ..Opts::default()
        },
    );
    let leader = c.leader();
    let before = c.members(leader).unwrap();
    // Addresses where nothing listens.
    let raft = format!("127.0.0.1:{}", c.reserve_port());
    let api = format!("127.0.0.1:{}", c.reserve_port());
    let out = c.admin_timeout(
        leader,
        &[
            "join",
            "--node-id",
            "5",
            "--raft-address",
            &raft,
            "--api-address",
            &api,
        ],
        Duration::from_secs(60),
    );
    assert!(!out.success(), "the join should fail: {}", out.describe());
    let text = out.describe();
    assert!(
        text.contains("node 5 was not made a voter") && text.contains("did not catch up"),
        "the refusal should say why: {text}"
    );
    // Through a follower too (forwarded to the leader).
    let follower = *c.ids().iter().find(|i| **i != leader).unwrap();
    let out = c.admin_timeout(
        follower,
        &[
            "join",
            "--node-id",
            "6",
            "--raft-address",
            &raft,
            "--api-address",
            &api,
        ],
        Duration::from_secs(60),
    );
    assert!(!out.success(), "the join should fail: {}", out.describe());
    assert!(
        out.describe().contains("node 6 was not made a voter"),
        "{}",
        out.describe()
    );
    // Voters and learners are as before, and the cluster still commits.
    c.wait_for(
        "the learners to be removed again",
        Duration::from_secs(30),
        || {
            let now = c.members(leader)?;
            let ids = |m: &gatekeeper_integration_tests::MembersView| -> BTreeSet<(u64, bool)> {
                m.members.iter().map(|x| (x.id, x.voter)).collect()
            };
            if ids(&now) == ids(&before) {
                Ok(())
            } else {
                Err(format!(
                    "members {:?}, before {:?}",
                    ids(&now),
                    ids(&before)
                ))
            }
        },
    );
    c.put_ok(leader, "after-failed-join", "ok");
}
