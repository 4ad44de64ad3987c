//! Which Raft membership changes an operator authorized (design.md §10.5).
//!
//! openraft's membership entries are not commands: the leader makes them (`add_learner`,
//! `change_membership`) after the operator's signed `AuthorizeJoin` / `AuthorizeLeave` is
//! applied. A follower checks every membership entry a leader sends against its own applied
//! state with [`check_membership_change`] before the entry reaches its log, so a leader cannot
//! add, move or drop a node, or form a joint configuration, that no operator asked for (a forged
//! joint configuration gave a member a veto over every write: fourth attack round).
//!
//! What an operator's commands grant, kept in the state:
//! - `membership_grants`: node → Raft address it may hold in the membership: the initial voters
//!   (`InitCluster`) and each `AuthorizeJoin`; an `AuthorizeLeave` withdraws its node's;
//! - `leave_grants`: nodes an operator authorized to leave (`AuthorizeLeave`; a later
//!   `AuthorizeJoin` of the node withdraws it).

use super::GatekeeperState;
use crate::{Node, NodeId};
use openraft::Membership;
use std::collections::BTreeSet;

/// Checks that `next` (a membership entry) may follow `prev` (the membership in force before
/// it) under the operator grants in `state`:
/// - its configurations are `prev`'s last configuration, alone or followed by one new one
///   (entering or leaving a joint configuration the way openraft does, never two new ones);
/// - a voter the new configuration adds holds a membership grant, and one it drops a leave
///   grant;
/// - a node it adds, or moves to another Raft address, holds a membership grant for exactly that
///   address; a node it drops holds a leave grant, or is a learner holding a membership grant
///   (undoing a join that failed).
///
/// Returns why not.
pub fn check_membership_change(
    state: &GatekeeperState,
    prev: &Membership<NodeId, Node>,
    next: &Membership<NodeId, Node>,
) -> Result<(), String> {
    let before = prev.get_joint_config();
    let after = next.get_joint_config();
    let Some(in_force) = before.last() else {
        return Err("no configuration in force before this membership".into());
    };
    // Leaving a joint configuration keeps its second half, the one in force (checked when the
    // joint configuration was entered).
    let target = match after.as_slice() {
        [only] if only == in_force => only,
        [first, second] if first == in_force && second != in_force => second,
        _ => {
            return Err(format!(
                "configuration {after:?} does not follow {before:?}: a membership change keeps \
                 the configuration in force and adds at most one"
            ))
        }
    };
    let base = in_force;
    for v in target.difference(base) {
        if !state.membership_grants.contains_key(v) {
            return Err(format!(
                "node {v} is made a voter, but no operator authorized it to join"
            ));
        }
    }
    for v in base.difference(target) {
        if !state.leave_grants.contains(v) {
            return Err(format!(
                "voter {v} is dropped, but no operator authorized it to leave"
            ));
        }
    }
    let old_voters: BTreeSet<NodeId> = before.iter().flatten().copied().collect();
    for (id, node) in next.nodes() {
        // A node's API address changes only by leaving and joining again: clients find the
        // cluster's nodes through it (a leader re-pointed a member's: attack round 8).
        if let Some(old) = prev.get_node(id) {
            if old.api_address != node.api_address && old.raft_address == node.raft_address {
                return Err(format!(
                    "node {id}'s API address changes from {} to {}: an address changes only by \
                     leave and join",
                    old.api_address, node.api_address
                ));
            }
        }
        let moved = prev
            .get_node(id)
            .is_none_or(|old| old.raft_address != node.raft_address);
        if moved && state.membership_grants.get(id) != Some(&node.raft_address) {
            return Err(format!(
                "node {id} is added at {}, but no operator authorized it to join at that address",
                node.raft_address
            ));
        }
    }
    for (id, _) in prev.nodes() {
        if next.get_node(id).is_some() || state.leave_grants.contains(id) {
            continue;
        }
        let failed_join = !old_voters.contains(id) && state.membership_grants.contains_key(id);
        if !failed_join {
            return Err(format!(
                "node {id} is dropped, but no operator authorized it to leave"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(port: u16) -> Node {
        Node {
            raft_address: format!("127.0.0.1:{port}"),
            api_address: format!("127.0.0.1:{}", port + 1000),
        }
    }

    /// A membership of `configs`, with every voter plus `learners` as nodes (node n at port
    /// 7000 + n, or `moved` ones at 9000 + n).
    fn m(configs: &[&[NodeId]], learners: &[NodeId], moved: &[NodeId]) -> Membership<NodeId, Node> {
        let configs: Vec<BTreeSet<NodeId>> = configs
            .iter()
            .map(|c| c.iter().copied().collect())
            .collect();
        let mut nodes = BTreeMap::new();
        for id in configs.iter().flatten().chain(learners) {
            let port = if moved.contains(id) { 9000 } else { 7000 } + *id as u16;
            nodes.insert(*id, node(port));
        }
        Membership::new(configs, nodes)
    }

    fn state(grants: &[NodeId], leaves: &[NodeId]) -> GatekeeperState {
        let mut s = GatekeeperState::default();
        for g in grants {
            s.membership_grants
                .insert(*g, node(7000 + *g as u16).raft_address);
        }
        s.leave_grants = leaves.iter().copied().collect();
        s
    }

    #[test]
    fn an_authorized_join_adds_a_learner_then_a_voter_through_a_joint_configuration() {
        let s = state(&[1, 2, 3, 4], &[]);
        let three = m(&[&[1, 2, 3]], &[], &[]);
        let learner = m(&[&[1, 2, 3]], &[4], &[]);
        let joint = m(&[&[1, 2, 3], &[1, 2, 3, 4]], &[], &[]);
        let done = m(&[&[1, 2, 3, 4]], &[], &[]);
        assert_eq!(check_membership_change(&s, &three, &learner), Ok(()));
        assert_eq!(check_membership_change(&s, &learner, &joint), Ok(()));
        assert_eq!(check_membership_change(&s, &joint, &done), Ok(()));
        // Without the operator's AuthorizeJoin: neither step.
        let s = state(&[1, 2, 3], &[]);
        assert!(check_membership_change(&s, &three, &learner)
            .unwrap_err()
            .contains("node 4 is added"));
        assert!(check_membership_change(&s, &learner, &joint)
            .unwrap_err()
            .contains("node 4 is made a voter"));
    }

    #[test]
    fn an_authorized_leave_drops_a_voter_and_an_unauthorized_one_is_refused() {
        let four = m(&[&[1, 2, 3, 4]], &[], &[]);
        let joint = m(&[&[1, 2, 3, 4], &[1, 2, 3]], &[], &[]);
        let done = m(&[&[1, 2, 3]], &[], &[]);
        let s = state(&[1, 2, 3], &[4]);
        assert_eq!(check_membership_change(&s, &four, &joint), Ok(()));
        assert_eq!(check_membership_change(&s, &joint, &done), Ok(()));
        let s = state(&[1, 2, 3, 4], &[]);
        assert!(check_membership_change(&s, &four, &joint)
            .unwrap_err()
            .contains("voter 4 is dropped"));
        // Dropping a node silently (voter 4 gone from the nodes without a configuration change
        // is impossible; a learner is the case): refused without a grant.
        let learner = m(&[&[1, 2, 3]], &[4], &[]);
        let s = state(&[1, 2, 3], &[]);
        assert!(check_membership_change(&s, &learner, &done)
            .unwrap_err()
            .contains("node 4 is dropped"));
        // A learner whose join the operator authorized may be dropped again (a failed join).
        let s = state(&[1, 2, 3, 4], &[]);
        assert_eq!(check_membership_change(&s, &learner, &done), Ok(()));
    }

    #[test]
    fn forged_configurations_and_moved_addresses_are_refused() {
        let s = state(&[1, 2, 3], &[]);
        let three = m(&[&[1, 2, 3]], &[], &[]);
        // The fourth round's veto: a joint configuration whose new half is the member alone.
        let veto = m(&[&[1, 2, 3], &[3]], &[], &[]);
        assert!(check_membership_change(&s, &three, &veto)
            .unwrap_err()
            .contains("voter 1 is dropped"));
        // A configuration that does not keep the one in force.
        let other = m(&[&[1, 2], &[1, 2, 3]], &[], &[]);
        assert!(check_membership_change(&s, &three, &other)
            .unwrap_err()
            .contains("does not follow"));
        let jump = m(&[&[3]], &[], &[]);
        assert!(check_membership_change(&s, &three, &jump)
            .unwrap_err()
            .contains("does not follow"));
        // A voter moved to another Raft address.
        let moved = m(&[&[1, 2, 3]], &[], &[2]);
        assert!(check_membership_change(&s, &three, &moved)
            .unwrap_err()
            .contains("node 2 is added at 127.0.0.1:9002"));
        // An unchanged membership passes (openraft re-appends one after a leader change).
        assert_eq!(check_membership_change(&s, &three, &three), Ok(()));
        // A joint configuration of the one in force twice: not a change openraft makes.
        let twice = m(&[&[1, 2, 3], &[1, 2, 3]], &[], &[]);
        assert!(check_membership_change(&s, &three, &twice)
            .unwrap_err()
            .contains("does not follow"));
        // A member's API address re-pointed (round 8).
        let mut api = three.clone();
        let mut nodes: BTreeMap<NodeId, Node> = api.nodes().map(|(i, n)| (*i, n.clone())).collect();
        nodes.get_mut(&1).unwrap().api_address = "127.0.0.1:39998".into();
        api = Membership::new(api.get_joint_config().clone(), nodes);
        assert!(check_membership_change(&s, &three, &api)
            .unwrap_err()
            .contains("node 1's API address changes"));
    }
}
