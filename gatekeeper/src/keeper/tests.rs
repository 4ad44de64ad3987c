//! Unit tests of the pure decisions in this module (no network, no processes, no sleeps).
//!
//! Every test builds a committed state, a Raft membership and an enclave view, and asserts the
//! planner's steps as data. Node `n` has identity key `[n; 32]` and HPKE key `[100 + n; 32]`.

use super::*;
use crate::attestation::{member_evidence_ok, Policy, PolicyKind};
use crate::enclave::Recipient;
use gatekeeper_raft::state::{
    Bytes32, DealingRecord, EpochRecord, EpochStatus, GatekeeperState, HexBytes, MemberRecord,
    RotationOutcome, RotationRecord, SealedShare,
};
use std::collections::BTreeSet;

/// The planner's clock in every test, ms.
const NOW: u64 = 5_000_000;
/// `PlanConfig::rotation_deadline_ms` in every test.
const DEADLINE: u64 = 60_000;

fn b(x: u8) -> Bytes32 {
    Bytes32([x; 32])
}

fn identity(n: u64) -> Bytes32 {
    b(n as u8)
}

fn hpke(n: u64) -> Bytes32 {
    b(100 + n as u8)
}

fn member(n: u64) -> MemberRecord {
    MemberRecord {
        node_id: n,
        raft_address: format!("127.0.0.1:{}", 7000 + n),
        api_address: format!("127.0.0.1:{}", 8000 + n),
        identity_public_key: identity(n),
        hpke_public_key: hpke(n),
        attestation: HexBytes(vec![]),
        tls_spki: None,
        admin_address: None,
    }
}

/// An initialised cluster with these members registered and no epoch.
fn state(members: &[u64]) -> GatekeeperState {
    GatekeeperState {
        gatekeeper_id: Some(b(1)),
        members: members.iter().map(|n| (*n, member(*n))).collect(),
        ..Default::default()
    }
}

/// Epoch `n` (generation 0) with one share per holder, sealed to the holder's registered key.
/// An `Active` epoch has every holder's ack; any other has none.
fn epoch(n: u64, threshold: u8, status: EpochStatus, holders: &[u64]) -> EpochRecord {
    EpochRecord {
        epoch: n,
        threshold,
        master_public_key: b(10 + n as u8),
        cluster_signing_public_key: b(20 + n as u8),
        status,
        dealing: DealingRecord {
            generation: 0,
            commitments: (0..threshold).map(|i| b(200 + i)).collect(),
            wrapped_nonce: HexBytes(vec![0; 24]),
            wrapped_ciphertext: HexBytes(vec![1; 80]),
            shares: holders
                .iter()
                .enumerate()
                .map(|(i, h)| SealedShare {
                    node_id: *h,
                    index: (i + 1) as u8,
                    encapped_key: b(50),
                    ciphertext: HexBytes(vec![2; 48]),
                    recipient_hpke: hpke(*h),
                })
                .collect(),
            acked: if status == EpochStatus::Active {
                holders.iter().copied().collect()
            } else {
                BTreeSet::new()
            },
        },
    }
}

fn with(mut s: GatekeeperState, epochs: Vec<EpochRecord>) -> GatekeeperState {
    for e in epochs {
        s.epochs.insert(e.epoch, e);
    }
    s
}

/// `members` are all voters.
fn membership(members: &[u64], leader: Option<u64>) -> Membership {
    Membership {
        members: members.iter().map(|n| (*n, true)).collect(),
        leader,
    }
}

/// Node `me`'s enclave right after a restart: its registered keys, nothing else.
fn fresh(me: u64) -> EnclaveView {
    EnclaveView {
        identity: identity(me),
        hpke: hpke(me),
        ..Default::default()
    }
}

/// Node `me`'s enclave holding the masters and its own (opened) share of these epochs.
fn holding(me: u64, epochs: &[u64]) -> EnclaveView {
    EnclaveView {
        masters: epochs.iter().copied().collect(),
        shares: epochs.iter().map(|e| (*e, (1, true))).collect(),
        ..fresh(me)
    }
}

fn policy(kind: PolicyKind, dev_key: Option<keyring::Sr25519PublicKey>) -> Policy {
    Policy {
        kind,
        allowed_mrenclave: vec![],
        allowed_mrsigner: vec![],
        allowed_mrtd: vec![],
        min_tcb_status: "UpToDate".into(),
        max_evidence_age_secs: 1,
        dev_key,
        default_collateral: None,
    }
}

fn config() -> PlanConfig {
    PlanConfig {
        member_policy: policy(PolicyKind::None, None),
        rotation_deadline_ms: DEADLINE,
    }
}

/// The recipients for these nodes, with their registered HPKE keys.
fn to(nodes: &[u64]) -> Vec<Recipient> {
    nodes
        .iter()
        .map(|n| Recipient {
            node_id: *n,
            hpke: keyring::X25519PublicKey::from_slice(&hpke(*n).0).unwrap(),
        })
        .collect()
}

fn rotation(id: &str, epoch: u64, deadline_ms: u64) -> RotationRecord {
    RotationRecord {
        rotation_id: id.into(),
        requested_at_ms: NOW - 1_000,
        deadline_ms,
        epoch,
        outcome: RotationOutcome::InProgress,
    }
}

fn run(me: u64, s: &GatekeeperState, m: &Membership, e: &EnclaveView) -> Vec<Step> {
    plan(me, s, m, e, &config(), NOW)
}

/// A 3-node cluster with epoch 0 active (threshold 2) and leader 1.
fn active3() -> (GatekeeperState, Membership) {
    (
        with(
            state(&[1, 2, 3]),
            vec![epoch(0, 2, EpochStatus::Active, &[1, 2, 3])],
        ),
        membership(&[1, 2, 3], Some(1)),
    )
}

// --- registration ---------------------------------------------------------------------------

#[test]
fn a_node_outside_the_membership_reports_sealed_and_does_nothing_else() {
    let (s, _) = active3();
    let m = membership(&[1, 2], Some(1));
    assert_eq!(
        run(3, &s, &m, &holding(3, &[0])),
        vec![Step::Seal("sealed")]
    );
}

#[test]
fn nothing_happens_before_the_cluster_is_initialised() {
    let s = GatekeeperState::default();
    let m = membership(&[1, 2, 3], Some(1));
    assert_eq!(run(1, &s, &m, &fresh(1)), vec![]);
}

#[test]
fn an_unregistered_member_registers_first() {
    let s = state(&[2, 3]);
    let m = membership(&[1, 2, 3], Some(1));
    assert_eq!(run(1, &s, &m, &fresh(1)), vec![Step::Register]);
}

#[test]
fn a_member_registered_with_other_enclave_keys_registers_again() {
    let (s, m) = active3();
    // Wiped enclave: new HPKE key.
    let wiped = EnclaveView {
        hpke: b(99),
        ..holding(2, &[0])
    };
    assert_eq!(run(2, &s, &m, &wiped), vec![Step::Register]);
    // New identity key.
    let wiped = EnclaveView {
        identity: b(98),
        ..holding(2, &[0])
    };
    assert_eq!(run(2, &s, &m, &wiped), vec![Step::Register]);
    // A new TLS certificate key (renewed certificate): the record must pin it.
    let renewed = EnclaveView {
        tls_spki: Some(b(97)),
        ..holding(2, &[0])
    };
    assert_eq!(run(2, &s, &m, &renewed), vec![Step::Register]);
}

// --- genesis --------------------------------------------------------------------------------

#[test]
fn the_leader_deals_epoch_0_to_every_voter_with_a_majority_threshold() {
    let s = state(&[1, 2, 3]);
    let m = membership(&[1, 2, 3], Some(1));
    assert_eq!(
        run(1, &s, &m, &fresh(1)),
        vec![Step::DealGenesis {
            threshold: 2,
            recipients: to(&[1, 2, 3]),
            imported: false,
        }]
    );
    // Followers wait.
    assert_eq!(run(2, &s, &m, &fresh(2)), vec![Step::Seal("sealed")]);
    // Five voters: three shares needed.
    let s = state(&[1, 2, 3, 4, 5]);
    let m = membership(&[1, 2, 3, 4, 5], Some(1));
    assert_eq!(
        run(1, &s, &m, &fresh(1)),
        vec![Step::DealGenesis {
            threshold: 3,
            recipients: to(&[1, 2, 3, 4, 5]),
            imported: false,
        }]
    );
}

#[test]
fn the_designated_genesis_dealer_deals_the_imported_secret_even_when_not_leader() {
    let s = GatekeeperState {
        genesis_dealer: Some(2),
        ..state(&[1, 2, 3])
    };
    let m = membership(&[1, 2, 3], Some(1));
    assert_eq!(
        run(2, &s, &m, &fresh(2)),
        vec![Step::DealGenesis {
            threshold: 2,
            recipients: to(&[1, 2, 3]),
            imported: true,
        }]
    );
    // The leader leaves genesis to the dealer.
    assert_eq!(run(1, &s, &m, &fresh(1)), vec![Step::Seal("sealed")]);
    // Also with no leader known.
    let m = membership(&[1, 2, 3], None);
    assert_eq!(
        run(2, &s, &m, &fresh(2)),
        vec![Step::DealGenesis {
            threshold: 2,
            recipients: to(&[1, 2, 3]),
            imported: true,
        }]
    );
}

#[test]
fn genesis_waits_until_every_voter_is_registered() {
    let s = state(&[1, 2]);
    let m = membership(&[1, 2, 3], Some(1));
    assert_eq!(run(1, &s, &m, &fresh(1)), vec![Step::Seal("sealed")]);
    // A learner does not hold a share, so its registration is not awaited.
    let m = Membership {
        members: vec![(1, true), (2, true), (4, false)],
        leader: Some(1),
    };
    assert_eq!(
        run(1, &s, &m, &fresh(1)),
        vec![Step::DealGenesis {
            threshold: 2,
            recipients: to(&[1, 2]),
            imported: false,
        }]
    );
}

#[test]
fn genesis_uses_the_threshold_given_at_init() {
    let m = membership(&[1, 2, 3], Some(1));
    for t in [1, 3] {
        let s = GatekeeperState {
            genesis_threshold: Some(t),
            ..state(&[1, 2, 3])
        };
        assert_eq!(
            run(1, &s, &m, &fresh(1)),
            vec![Step::DealGenesis {
                threshold: usize::from(t),
                recipients: to(&[1, 2, 3]),
                imported: false,
            }]
        );
    }
}

// --- member evidence ------------------------------------------------------------------------

#[test]
fn nothing_is_dealt_while_a_voters_registration_evidence_fails_the_member_policy() {
    let dev = keyring::Sr25519Keypair::from_seed(&[1; 32]);
    let evidence = |n: u64| {
        let key = keyring::X25519PublicKey::from_slice(&hpke(n).0).unwrap();
        let rd = keyring::sign::report_data(&identity(n).0, &key, &[0; 32]);
        // Issued long before NOW: the age limit does not apply to registration evidence.
        HexBytes(keyring::dev_attestation::issue(&dev, &rd, 1_000))
    };
    let config = PlanConfig {
        member_policy: policy(PolicyKind::Dev, Some(dev.public_key())),
        rotation_deadline_ms: DEADLINE,
    };
    let m = membership(&[1, 2, 3], Some(1));
    let mut s = state(&[1, 2, 3]);
    for n in [1, 2, 3] {
        s.members.get_mut(&n).unwrap().attestation = evidence(n);
    }
    // Every voter's evidence binds its keys: genesis is dealt.
    assert_eq!(
        plan(1, &s, &m, &fresh(1), &config, NOW),
        vec![Step::DealGenesis {
            threshold: 2,
            recipients: to(&[1, 2, 3]),
            imported: false,
        }]
    );
    // Node 3 presents node 2's evidence: blocked, no dealing.
    s.members.get_mut(&3).unwrap().attestation = evidence(2);
    let refused = member_evidence_ok(&config.member_policy, &s.members[&3], NOW / 1000)
        .expect_err("node 3's evidence is refused");
    assert!(refused.starts_with("node 3:"), "{refused}");
    let blocked = vec![
        Step::Blocked {
            refused: vec![refused.clone()],
        },
        Step::Seal("sealed"),
    ];
    assert_eq!(plan(1, &s, &m, &fresh(1), &config, NOW), blocked);
    // Every node reports it; none deals.
    assert_eq!(plan(2, &s, &m, &fresh(2), &config, NOW), blocked);
    // Later, with an epoch to re-deal to a new voter, the leader does not re-deal either.
    let mut s = with(s, vec![epoch(0, 2, EpochStatus::Active, &[1, 2])]);
    s.members.get_mut(&3).unwrap().attestation = HexBytes(vec![]);
    let refused = member_evidence_ok(&config.member_policy, &s.members[&3], NOW / 1000)
        .expect_err("no evidence is refused");
    assert_eq!(
        plan(1, &s, &m, &holding(1, &[0]), &config, NOW),
        vec![
            Step::Blocked {
                refused: vec![refused]
            },
            Step::Seal("unsealed")
        ]
    );
    // A rotation that cannot be dealt while blocked is still aborted at its deadline, by the
    // leader only, so the operator can start another one.
    s.rotation = Some(rotation("r1", 1, NOW - 1));
    let abort = Step::AbortRotation {
        rotation_id: "r1".into(),
        reason: "dealing was blocked (a voter's evidence fails the member policy) until the \
                 deadline"
            .into(),
    };
    let steps = plan(1, &s, &m, &holding(1, &[0]), &config, NOW);
    assert!(steps.contains(&abort), "{steps:?}");
    assert!(!plan(2, &s, &m, &holding(2, &[0]), &config, NOW).contains(&abort));
    // Before its deadline it is left alone.
    s.rotation = Some(rotation("r1", 1, NOW + 1));
    assert!(!plan(1, &s, &m, &holding(1, &[0]), &config, NOW)
        .iter()
        .any(|x| matches!(x, Step::AbortRotation { .. })));
}

// --- acking ---------------------------------------------------------------------------------

#[test]
fn a_holder_opens_and_acknowledges_its_share_of_a_dealing() {
    let s = with(
        state(&[1, 2, 3]),
        vec![epoch(0, 2, EpochStatus::Dealing, &[1, 2, 3])],
    );
    let m = membership(&[1, 2, 3], Some(1));
    // Not opened yet: open, then ack.
    assert_eq!(
        run(2, &s, &m, &fresh(2)),
        vec![
            Step::OpenOwnShare {
                epoch: 0,
                ack: true
            },
            Step::Seal("sealed")
        ]
    );
    // Opened (e.g. the ack write failed last tick): ack only.
    let opened = EnclaveView {
        shares: [(0, (1, true))].into(),
        ..fresh(2)
    };
    assert_eq!(
        run(2, &s, &m, &opened),
        vec![
            Step::Ack {
                epoch: 0,
                generation: 0
            },
            Step::Seal("sealed")
        ]
    );
    // Opened and acknowledged: nothing left for it.
    let mut acked = s.clone();
    acked.epochs.get_mut(&0).unwrap().dealing.acked.insert(2);
    assert_eq!(run(2, &acked, &m, &opened), vec![Step::Seal("sealed")]);
    // Acknowledged before a restart: open again, without a second ack.
    assert_eq!(
        run(2, &acked, &m, &fresh(2)),
        vec![
            Step::OpenOwnShare {
                epoch: 0,
                ack: false
            },
            Step::Seal("sealed")
        ]
    );
    // A node without a share of the dealing (a learner) has nothing to open.
    let m = Membership {
        members: vec![(1, true), (2, true), (3, true), (4, false)],
        leader: Some(1),
    };
    let s4 = with(
        state(&[1, 2, 3, 4]),
        vec![epoch(0, 2, EpochStatus::Dealing, &[1, 2, 3])],
    );
    assert_eq!(run(4, &s4, &m, &fresh(4)), vec![Step::Seal("sealed")]);
}

#[test]
fn the_ack_names_the_current_generation() {
    let mut s = with(
        state(&[1, 2, 3]),
        vec![epoch(0, 2, EpochStatus::Active, &[1, 2, 3])],
    );
    let d = &mut s.epochs.get_mut(&0).unwrap().dealing;
    d.generation = 4;
    d.acked.remove(&3);
    let m = membership(&[1, 2, 3], Some(1));
    assert_eq!(
        run(3, &s, &m, &holding(3, &[0])),
        vec![
            Step::Ack {
                epoch: 0,
                generation: 4
            },
            Step::Seal("unsealed")
        ]
    );
}

// --- unsealing ------------------------------------------------------------------------------

#[test]
fn a_restarted_node_opens_its_share_then_unseals_from_its_peers() {
    let (s, m) = active3();
    assert_eq!(
        run(2, &s, &m, &fresh(2)),
        vec![
            Step::OpenOwnShare {
                epoch: 0,
                ack: false
            },
            Step::Unseal {
                epoch: 0,
                threshold: 2,
                peers: vec![1, 3],
            }
        ]
    );
    // Own share already opened: unseal only. No seal report while unsealing.
    let opened = EnclaveView {
        shares: [(0, (1, true))].into(),
        ..fresh(2)
    };
    assert_eq!(
        run(2, &s, &m, &opened),
        vec![Step::Unseal {
            epoch: 0,
            threshold: 2,
            peers: vec![1, 3],
        }]
    );
}

#[test]
fn unseal_asks_only_share_holders_with_member_records_and_never_itself() {
    // Node 4 holds a share but its record is gone; node 5 is a member without a share.
    let s = with(
        state(&[1, 2, 3, 5]),
        vec![epoch(0, 3, EpochStatus::Active, &[3, 1, 4, 2])],
    );
    let m = Membership {
        members: vec![(1, true), (2, true), (3, true), (5, false)],
        leader: Some(1),
    };
    assert_eq!(
        run(2, &s, &m, &fresh(2)).last(),
        Some(&Step::Unseal {
            epoch: 0,
            threshold: 3,
            peers: vec![3, 1],
        })
    );
}

#[test]
fn a_dealing_epoch_is_not_unsealed() {
    let (s, m) = active3();
    let mut dealing = epoch(1, 2, EpochStatus::Dealing, &[1, 2, 3]);
    dealing.dealing.acked.insert(2);
    let s = with(s, vec![dealing]);
    assert_eq!(
        run(2, &s, &m, &holding(2, &[0])),
        vec![
            Step::OpenOwnShare {
                epoch: 1,
                ack: false
            },
            Step::Seal("unsealed")
        ]
    );
    let opened = EnclaveView {
        shares: [(0, (1, true)), (1, (1, true))].into(),
        ..holding(2, &[0])
    };
    assert_eq!(run(2, &s, &m, &opened), vec![Step::Seal("unsealed")]);
}

#[test]
fn retired_and_aborted_epochs_are_skipped_entirely() {
    // Epoch 0 retired and epoch 1 aborted, both dealt to an older member set, unopened, unacked,
    // their masters not held: no open, ack, unseal or re-deal for them, on the leader or not.
    let s = GatekeeperState {
        min_epoch: 2,
        ..with(
            state(&[1, 2, 3]),
            vec![
                epoch(0, 2, EpochStatus::Retired, &[1, 2]),
                epoch(1, 2, EpochStatus::Aborted, &[1, 2, 4]),
                epoch(2, 2, EpochStatus::Active, &[1, 2, 3]),
            ],
        )
    };
    let m = membership(&[1, 2, 3], Some(1));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[2])),
        vec![Step::Seal("unsealed")]
    );
    assert_eq!(
        run(2, &s, &m, &holding(2, &[2])),
        vec![Step::Seal("unsealed")]
    );
}

#[test]
fn a_retired_epoch_generates_no_steps() {
    let s = GatekeeperState {
        min_epoch: 1,
        ..with(
            state(&[1, 2, 3]),
            vec![epoch(0, 2, EpochStatus::Retired, &[1, 2, 3])],
        )
    };
    let m = membership(&[1, 2, 3], Some(1));
    // With no active epoch left the node reports sealed, and nothing else.
    assert_eq!(run(1, &s, &m, &fresh(1)), vec![Step::Seal("sealed")]);
    assert_eq!(run(2, &s, &m, &fresh(2)), vec![Step::Seal("sealed")]);
}

// --- re-dealing -----------------------------------------------------------------------------

#[test]
fn a_join_makes_the_leader_redeal_to_the_new_voters() {
    let (s, _) = active3();
    let mut s = s;
    s.members.insert(4, member(4));
    let m = membership(&[1, 2, 3, 4], Some(1));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![
            Step::Redeal {
                epoch: 0,
                generation: 1,
                threshold: 2,
                recipients: to(&[1, 2, 3, 4]),
            },
            Step::Seal("unsealed")
        ]
    );
    // The next generation is one past the current one.
    s.epochs.get_mut(&0).unwrap().dealing.generation = 6;
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0]))[0],
        Step::Redeal {
            epoch: 0,
            generation: 7,
            threshold: 2,
            recipients: to(&[1, 2, 3, 4]),
        }
    );
}

#[test]
fn a_redeal_caps_the_threshold_by_the_voter_count() {
    // Node 3 left (its record already removed): 2 voters, threshold 3.
    let s = with(
        state(&[1, 2]),
        vec![epoch(0, 3, EpochStatus::Active, &[1, 2, 3])],
    );
    let m = membership(&[1, 2], Some(1));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![
            Step::Redeal {
                epoch: 0,
                generation: 1,
                threshold: 2,
                recipients: to(&[1, 2]),
            },
            Step::Seal("unsealed")
        ]
    );
}

#[test]
fn a_leader_without_the_master_does_not_redeal() {
    let (mut s, _) = active3();
    s.members.insert(4, member(4));
    let m = membership(&[1, 2, 3, 4], Some(1));
    let opened = EnclaveView {
        shares: [(0, (1, true))].into(),
        ..fresh(1)
    };
    assert_eq!(
        run(1, &s, &m, &opened),
        vec![Step::Unseal {
            epoch: 0,
            threshold: 2,
            peers: vec![2, 3],
        }]
    );
}

#[test]
fn a_holder_reregistered_with_a_new_hpke_key_gets_a_redeal() {
    // Node 3 was wiped and rejoined: its record has a new HPKE key, its share is sealed to the
    // old one. Same voters as holders.
    let (mut s, m) = active3();
    s.members.get_mut(&3).unwrap().hpke_public_key = b(99);
    let mut recipients = to(&[1, 2]);
    recipients.push(Recipient {
        node_id: 3,
        hpke: keyring::X25519PublicKey::from_slice(&[99; 32]).unwrap(),
    });
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![
            Step::Redeal {
                epoch: 0,
                generation: 1,
                threshold: 2,
                recipients,
            },
            Step::Seal("unsealed")
        ]
    );
    // Once re-dealt to the new key, nothing more.
    s.epochs.get_mut(&0).unwrap().dealing.shares[2].recipient_hpke = b(99);
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![Step::Seal("unsealed")]
    );
}

#[test]
fn a_dealing_epoch_is_redealt_too() {
    // Epoch 1 (a rotation's, still dealing) was dealt before node 4 joined.
    let (mut s, _) = active3();
    s.members.insert(4, member(4));
    let mut e1 = epoch(1, 2, EpochStatus::Dealing, &[1, 2, 3]);
    e1.dealing.acked.insert(1);
    let mut s = with(s, vec![e1]);
    // Epoch 0 already re-dealt to 1..4.
    s.epochs
        .insert(0, epoch(0, 2, EpochStatus::Active, &[1, 2, 3, 4]));
    let m = membership(&[1, 2, 3, 4], Some(1));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0, 1]))[0],
        Step::Redeal {
            epoch: 1,
            generation: 1,
            threshold: 2,
            recipients: to(&[1, 2, 3, 4]),
        }
    );
}

// --- leave ----------------------------------------------------------------------------------

#[test]
fn the_leader_removes_a_departed_members_record_before_anything_else() {
    // Node 3 left Raft membership; a queued rotation and a re-dealing are also due.
    let (mut s, _) = active3();
    s.pending_rotations = vec!["chain:1".into()];
    let m = membership(&[1, 2], Some(1));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![Step::RemoveMember { node_id: 3 }, Step::Seal("unsealed")]
    );
    // Also while a rotation is to be dealt.
    s.pending_rotations.clear();
    s.rotation = Some(rotation("r", 1, NOW + 1_000));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![Step::RemoveMember { node_id: 3 }, Step::Seal("unsealed")]
    );
    // Lowest id first, one per tick.
    s.members.insert(4, member(4));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0]))[0],
        Step::RemoveMember { node_id: 3 }
    );
}

// --- rotation -------------------------------------------------------------------------------

#[test]
fn the_leader_deals_a_rotations_epoch_with_the_current_threshold() {
    let (mut s, m) = active3();
    s.rotation = Some(rotation("r1", 1, NOW + 1_000));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![
            Step::DealRotation {
                epoch: 1,
                rotation_id: "r1".into(),
                threshold: 2,
                recipients: to(&[1, 2, 3]),
            },
            Step::Seal("unsealed")
        ]
    );
    // The threshold is the current (highest active) epoch's, not a majority.
    s.epochs
        .insert(0, epoch(0, 3, EpochStatus::Active, &[1, 2, 3]));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0]))[0],
        Step::DealRotation {
            epoch: 1,
            rotation_id: "r1".into(),
            threshold: 3,
            recipients: to(&[1, 2, 3]),
        }
    );
}

#[test]
fn a_rotations_threshold_is_capped_by_the_member_count() {
    // Threshold 3, but only voters 1 and 2 remain (3's record removed). The rotation is dealt
    // before the pending re-dealing of epoch 0.
    let mut s = with(
        state(&[1, 2]),
        vec![epoch(0, 3, EpochStatus::Active, &[1, 2, 3])],
    );
    s.rotation = Some(rotation("r1", 1, 0));
    let m = membership(&[1, 2], Some(1));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0]))[0],
        Step::DealRotation {
            epoch: 1,
            rotation_id: "r1".into(),
            threshold: 2,
            recipients: to(&[1, 2]),
        }
    );
}

#[test]
fn a_rotation_past_its_deadline_is_aborted() {
    let (s, m) = active3();
    // Its epoch is still dealing.
    let mut e1 = epoch(1, 2, EpochStatus::Dealing, &[1, 2, 3]);
    e1.dealing.acked.insert(1);
    let mut s = with(s, vec![e1]);
    s.rotation = Some(rotation("r1", 1, NOW - 1));
    let abort = Step::AbortRotation {
        rotation_id: "r1".into(),
        reason: "dealing did not complete before the deadline".into(),
    };
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0, 1])),
        vec![abort.clone(), Step::Seal("unsealed")]
    );
    // Its epoch was never dealt: aborted rather than dealt late.
    s.epochs.remove(&1);
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![abort, Step::Seal("unsealed")]
    );
}

#[test]
fn a_rotation_within_its_deadline_or_without_one_is_not_aborted() {
    let (s, m) = active3();
    let mut e1 = epoch(1, 2, EpochStatus::Dealing, &[1, 2, 3]);
    e1.dealing.acked.insert(1);
    let mut s = with(s, vec![e1]);
    // At the deadline exactly: not yet past it.
    for deadline in [NOW, NOW + 1, 0] {
        s.rotation = Some(rotation("r1", 1, deadline));
        assert_eq!(
            run(1, &s, &m, &holding(1, &[0, 1])),
            vec![Step::Seal("unsealed")],
            "deadline {deadline}"
        );
    }
    // Deadline 0 with the epoch not dealt yet: dealt, however late.
    s.epochs.remove(&1);
    assert_eq!(
        plan(1, &s, &m, &holding(1, &[0]), &config(), u64::MAX)[0],
        Step::DealRotation {
            epoch: 1,
            rotation_id: "r1".into(),
            threshold: 2,
            recipients: to(&[1, 2, 3]),
        }
    );
}

#[test]
fn a_finished_rotation_needs_nothing() {
    let (s, m) = active3();
    let mut s = with(s, vec![epoch(1, 2, EpochStatus::Aborted, &[1, 2, 3])]);
    let mut r = rotation("r1", 1, NOW - 1);
    r.outcome = RotationOutcome::Aborted("late".into());
    s.rotation = Some(r);
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![Step::Seal("unsealed")]
    );
}

// --- queued (chain) rotations ---------------------------------------------------------------

#[test]
fn the_leader_starts_the_oldest_queued_rotation() {
    let (mut s, m) = active3();
    s.pending_rotations = vec!["chain:7".into(), "chain:8".into()];
    let start = Step::StartRotation {
        rotation_id: "chain:7".into(),
        requested_at_ms: NOW,
        deadline_ms: NOW + DEADLINE,
    };
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![start.clone(), Step::Seal("unsealed")]
    );
    // After a finished rotation, too.
    let mut done = rotation("r0", 1, NOW - 10);
    done.outcome = RotationOutcome::Completed;
    s.rotation = Some(done);
    assert_eq!(run(1, &s, &m, &holding(1, &[0]))[0], start);
}

#[test]
fn a_queued_rotation_waits_for_the_one_in_progress() {
    let (s, m) = active3();
    let mut e1 = epoch(1, 2, EpochStatus::Dealing, &[1, 2, 3]);
    e1.dealing.acked.insert(1);
    let mut s = with(s, vec![e1]);
    s.rotation = Some(rotation("r1", 1, NOW + 1_000));
    s.pending_rotations = vec!["chain:7".into()];
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0, 1])),
        vec![Step::Seal("unsealed")]
    );
}

#[test]
fn a_queued_rotation_waits_for_an_active_genesis() {
    // Epoch 0 is still dealing.
    let mut e0 = epoch(0, 2, EpochStatus::Dealing, &[1, 2, 3]);
    e0.dealing.acked.insert(1);
    let mut s = with(state(&[1, 2, 3]), vec![e0]);
    s.pending_rotations = vec!["chain:7".into()];
    let m = membership(&[1, 2, 3], Some(1));
    assert_eq!(
        run(1, &s, &m, &holding(1, &[0])),
        vec![Step::Seal("sealed")]
    );
    // No epoch at all: genesis comes first.
    let mut s = state(&[1, 2, 3]);
    s.pending_rotations = vec!["chain:7".into()];
    assert_eq!(
        run(1, &s, &m, &fresh(1)),
        vec![Step::DealGenesis {
            threshold: 2,
            recipients: to(&[1, 2, 3]),
            imported: false,
        }]
    );
}

// --- seal reporting and leadership ----------------------------------------------------------

#[test]
fn holding_every_active_master_reports_unsealed_last() {
    let s = with(
        state(&[1, 2, 3]),
        vec![
            epoch(0, 2, EpochStatus::Active, &[1, 2, 3]),
            epoch(1, 2, EpochStatus::Active, &[1, 2, 3]),
        ],
    );
    let m = membership(&[1, 2, 3], Some(1));
    assert_eq!(
        run(2, &s, &m, &holding(2, &[0, 1])),
        vec![Step::Seal("unsealed")]
    );
    // An unacked share is handled first; the report still comes last.
    let mut s2 = s.clone();
    s2.epochs.get_mut(&1).unwrap().dealing.acked.remove(&2);
    assert_eq!(
        run(2, &s2, &m, &holding(2, &[0, 1])),
        vec![
            Step::Ack {
                epoch: 1,
                generation: 0
            },
            Step::Seal("unsealed")
        ]
    );
    // One master missing: unseal it, and no report.
    let partial = EnclaveView {
        shares: [(0, (1, true)), (1, (1, true))].into(),
        ..holding(2, &[0])
    };
    assert_eq!(
        run(2, &s, &m, &partial),
        vec![Step::Unseal {
            epoch: 1,
            threshold: 2,
            peers: vec![1, 3],
        }]
    );
}

#[test]
fn only_the_leader_takes_leader_steps() {
    let (base, m) = active3();
    // A join to re-deal.
    let mut join = base.clone();
    join.members.insert(4, member(4));
    let join_m = membership(&[1, 2, 3, 4], Some(1));
    // A rotation to deal.
    let mut rot = base.clone();
    rot.rotation = Some(rotation("r1", 1, NOW + 1_000));
    // A rotation to abort.
    let mut late = base.clone();
    late.rotation = Some(rotation("r1", 1, NOW - 1));
    // A queued rotation to start.
    let mut queued = base.clone();
    queued.pending_rotations = vec!["chain:7".into()];
    // A departed member to remove.
    let left_m = membership(&[1, 2], Some(1));
    for (s, m) in [
        (&join, &join_m),
        (&rot, &m),
        (&late, &m),
        (&queued, &m),
        (&base, &left_m),
    ] {
        assert_ne!(run(1, s, m, &holding(1, &[0]))[0], Step::Seal("unsealed"));
        assert_eq!(
            run(2, s, m, &holding(2, &[0])),
            vec![Step::Seal("unsealed")],
            "{s:?}"
        );
    }
    // With no leader known, nobody takes leader steps.
    let none = membership(&[1, 2, 3, 4], None);
    assert_eq!(
        run(1, &join, &none, &holding(1, &[0])),
        vec![Step::Seal("unsealed")]
    );
}

#[test]
fn epoch_steps_name_their_epoch() {
    assert_eq!(
        Step::OpenOwnShare {
            epoch: 3,
            ack: true
        }
        .epoch(),
        Some(3)
    );
    assert_eq!(
        Step::Ack {
            epoch: 4,
            generation: 0
        }
        .epoch(),
        Some(4)
    );
    assert_eq!(
        Step::Unseal {
            epoch: 5,
            threshold: 1,
            peers: vec![]
        }
        .epoch(),
        Some(5)
    );
    assert_eq!(
        Step::Redeal {
            epoch: 0,
            generation: 1,
            threshold: 1,
            recipients: vec![]
        }
        .epoch(),
        None
    );
    assert_eq!(Step::Seal("sealed").epoch(), None);
}

#[test]
fn status_reports_unsealed_from_the_enclave_and_progress_only_for_an_active_epoch() {
    let unsealing = SealView {
        state: "unsealing".into(),
        collected: 1,
        threshold: 2,
        epoch: 3,
    };
    assert_eq!(reported_seal(&unsealing, true, &[3]).state, "unsealed");
    assert_eq!(reported_seal(&unsealing, false, &[3]), unsealing);
    // Progress for an epoch that is no longer active is not reported.
    assert_eq!(reported_seal(&unsealing, false, &[4]).state, "sealed");
    let stale = SealView {
        state: "unsealed".into(),
        ..Default::default()
    };
    // A cached "unsealed" does not survive a new active epoch the enclave lacks.
    assert_eq!(reported_seal(&stale, false, &[4]).state, "sealed");
}
