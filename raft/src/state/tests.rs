use super::*;

fn b(x: u8) -> Bytes32 {
    Bytes32([x; 32])
}

fn member(id: NodeId) -> Command {
    Command::UpsertMember(MemberRecord {
        node_id: id,
        raft_address: format!("127.0.0.1:{}", 7000 + id),
        api_address: format!("127.0.0.1:{}", 8000 + id),
        identity_public_key: b(id as u8),
        hpke_public_key: b(100 + id as u8),
        attestation: HexBytes(vec![]),
        tls_spki: None,
        admin_address: None,
    })
}

fn dealing(generation: u64, threshold: u8, nodes: &[NodeId]) -> DealingRecord {
    DealingRecord {
        generation,
        commitments: (0..threshold).map(|i| b(200 + i)).collect(),
        wrapped_nonce: HexBytes(vec![0; 24]),
        wrapped_ciphertext: HexBytes(vec![1; 80]),
        shares: nodes
            .iter()
            .enumerate()
            .map(|(i, n)| SealedShare {
                node_id: *n,
                index: (i + 1) as u8,
                encapped_key: b(50),
                ciphertext: HexBytes(vec![2; 48]),
                recipient_hpke: b(100 + *n as u8),
            })
            .collect(),
        acked: BTreeSet::new(),
    }
}

fn epoch(n: u64, threshold: u8, nodes: &[NodeId]) -> Command {
    Command::InstallEpoch(EpochRecord {
        epoch: n,
        threshold,
        master_public_key: b(10 + n as u8),
        cluster_signing_public_key: b(20 + n as u8),
        status: EpochStatus::Dealing,
        dealing: dealing(0, threshold, nodes),
    })
}

fn ack(e: u64, g: u64, n: NodeId) -> Command {
    Command::AckShare {
        epoch: e,
        generation: g,
        node_id: n,
    }
}

/// Hash of test block `n` (the genesis hash is `hash(0)`).
fn hash(n: u64) -> Bytes32 {
    let mut h = [0xa0; 32];
    h[..8].copy_from_slice(&n.to_be_bytes());
    Bytes32(h)
}

/// A whole finalized block `n` (parent `n - 1`) whose event records are `events`, every one of
/// them decoded, as a one-block command.
fn block(n: u64, events: Vec<ChainEvent>) -> Command {
    Command::ChainBlocks {
        blocks: vec![chain_block(n, events)],
    }
}

fn chain_block(n: u64, events: Vec<ChainEvent>) -> ChainBlock {
    ChainBlock {
        genesis_hash: hash(0),
        number: n,
        hash: hash(n),
        parent_hash: hash(n.saturating_sub(1)),
        from_index: 0,
        to_index: events.len() as u32,
        complete: true,
        events: events
            .into_iter()
            .enumerate()
            .map(|(i, event)| IndexedEvent {
                index: i as u32,
                event,
            })
            .collect(),
        undecodable: vec![],
        proposed_at_ms: 1_000,
        rotation_deadline_ms: 60_000,
    }
}

fn one(b: ChainBlock) -> Command {
    Command::ChainBlocks { blocks: vec![b] }
}

/// Records `from..to` of block `n`, with the decoded events at the given indices.
fn range(n: u64, from: u32, to: u32, complete: bool, events: Vec<(u32, ChainEvent)>) -> Command {
    let mut b = chain_block(n, vec![]);
    b.from_index = from;
    b.to_index = to;
    b.complete = complete;
    b.events = events
        .into_iter()
        .map(|(index, event)| IndexedEvent { index, event })
        .collect();
    one(b)
}

fn reg(w: u8) -> ChainEvent {
    ChainEvent::WorkerRegistered {
        worker: b(w),
        attestation_provider: "dcap".into(),
        confidence_level: 1,
    }
}

fn applied(r: &Reply) -> bool {
    matches!(r, Reply::Applied { .. })
}

fn code(r: &Reply) -> RejectCode {
    match r {
        Reply::Rejected { code, .. } => *code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A 3-member cluster with epoch 0 active.
fn genesis() -> GatekeeperState {
    let mut s = GatekeeperState::default();
    for c in [
        Command::InitCluster {
            gatekeeper_id: b(1),
            threshold: None,
            genesis_dealer: None,
            production: false,
            operators: vec![],
            members: Default::default(),
        },
        member(1),
        member(2),
        member(3),
        epoch(0, 2, &[1, 2, 3]),
        ack(0, 0, 1),
        ack(0, 0, 2),
        ack(0, 0, 3),
    ] {
        let r = s.apply(&c);
        assert!(applied(&r), "{c:?} -> {r:?}");
    }
    s
}

/// Applies `c`, expects a rejection with `code`, and checks nothing changed.
fn assert_rejected(s: &mut GatekeeperState, c: &Command, expected: RejectCode) {
    let before = s.clone();
    let r = s.apply(c);
    assert_eq!(code(&r), expected, "{c:?}");
    assert_eq!(*s, before, "a rejected command changed the state");
}

#[test]
fn genesis_activates_after_every_member_acks() {
    let mut s = GatekeeperState::default();
    s.apply(&Command::InitCluster {
        gatekeeper_id: b(1),
        threshold: Some(2),
        genesis_dealer: None,
        production: false,
        operators: vec![],
        members: Default::default(),
    });
    assert_eq!(s.genesis_threshold, Some(2));
    for m in 1..=3 {
        s.apply(&member(m));
    }
    assert!(applied(&s.apply(&epoch(0, 2, &[1, 2, 3]))));
    assert_eq!(s.current_epoch(), None);
    s.apply(&ack(0, 0, 1));
    s.apply(&ack(0, 0, 2));
    assert_eq!(s.epochs[&0].status, EpochStatus::Dealing);
    s.apply(&ack(0, 0, 3));
    assert_eq!(s.epochs[&0].status, EpochStatus::Active);
    assert_eq!(s.current_epoch(), Some(0));
}

#[test]
fn audit_sequence_counts_applied_commands_only() {
    let mut s = genesis();
    assert_eq!(s.audit_sequence, 8);
    assert_rejected(
        &mut s,
        &Command::InitCluster {
            gatekeeper_id: b(2),
            threshold: None,
            genesis_dealer: None,
            production: false,
            operators: vec![],
            members: Default::default(),
        },
        RejectCode::AlreadyInitialized,
    );
    assert_eq!(s.audit_sequence, 8);
    assert_eq!(
        s.apply(&Command::Put {
            key: "k".into(),
            value: "v".into()
        }),
        Reply::Applied { audit_sequence: 9 }
    );
}

#[test]
fn invalid_dealings_are_rejected_without_change() {
    let mut s = GatekeeperState::default();
    assert_rejected(&mut s, &epoch(0, 1, &[]), RejectCode::NotInitialized);
    let mut s = genesis();
    // Wrong epoch number.
    assert_rejected(
        &mut s,
        &epoch(5, 2, &[1, 2, 3]),
        RejectCode::EpochOutOfOrder,
    );
    assert_rejected(
        &mut s,
        &epoch(0, 2, &[1, 2, 3]),
        RejectCode::EpochOutOfOrder,
    );
    // Threshold 0 / above n.
    assert_rejected(&mut s, &epoch(1, 0, &[1, 2, 3]), RejectCode::InvalidDealing);
    assert_rejected(&mut s, &epoch(1, 4, &[1, 2, 3]), RejectCode::InvalidDealing);
    // Share for a non-member.
    assert_rejected(&mut s, &epoch(1, 2, &[1, 2, 9]), RejectCode::UnknownMember);
    // Two shares for one node.
    assert_rejected(&mut s, &epoch(1, 2, &[1, 1, 2]), RejectCode::InvalidDealing);
    // Commitment count must equal the threshold.
    let mut e = match epoch(1, 2, &[1, 2, 3]) {
        Command::InstallEpoch(e) => e,
        _ => unreachable!(),
    };
    e.dealing.commitments.pop();
    assert_rejected(
        &mut s,
        &Command::InstallEpoch(e),
        RejectCode::InvalidDealing,
    );
    // Unknown epoch / wrong generation acks.
    assert_rejected(&mut s, &ack(7, 0, 1), RejectCode::UnknownEpoch);
    assert_rejected(&mut s, &ack(0, 1, 1), RejectCode::InvalidDealing);
    assert_rejected(&mut s, &ack(0, 0, 9), RejectCode::UnknownMember);
}

#[test]
fn redealing_bumps_generation_and_resets_acks() {
    let mut s = genesis();
    s.apply(&member(4));
    let r = s.apply(&Command::Redeal {
        epoch: 0,
        dealing: dealing(1, 2, &[1, 2, 3, 4]),
    });
    assert!(applied(&r), "{r:?}");
    assert_eq!(s.epochs[&0].dealing.generation, 1);
    assert!(s.epochs[&0].dealing.acked.is_empty());
    // Still active: the master secret did not change, only its shares.
    assert_eq!(s.current_epoch(), Some(0));
    // Skipping a generation, or replaying the same one, is refused.
    assert_rejected(
        &mut s,
        &Command::Redeal {
            epoch: 0,
            dealing: dealing(3, 2, &[1, 2, 3, 4]),
        },
        RejectCode::InvalidDealing,
    );
    assert_rejected(
        &mut s,
        &Command::Redeal {
            epoch: 0,
            dealing: dealing(1, 2, &[1, 2, 3, 4]),
        },
        RejectCode::InvalidDealing,
    );
    // An ack for the old generation is refused.
    assert_rejected(&mut s, &ack(0, 0, 1), RejectCode::InvalidDealing);
    assert!(applied(&s.apply(&ack(0, 1, 4))));
}

#[test]
fn rotation_lifecycle_and_min_epoch() {
    let mut s = genesis();
    // A new epoch is dealt only for the rotation in progress.
    assert_rejected(
        &mut s,
        &epoch(1, 2, &[1, 2, 3]),
        RejectCode::RotationConflict,
    );
    let start = Command::StartRotation {
        rotation_id: "r1".into(),
        requested_at_ms: 1_000,
        deadline_ms: 61_000,
    };
    assert!(applied(&s.apply(&start)));
    // One at a time; ids never reused.
    assert_rejected(
        &mut s,
        &Command::StartRotation {
            rotation_id: "r2".into(),
            requested_at_ms: 2_000,
            deadline_ms: 62_000,
        },
        RejectCode::RotationConflict,
    );
    assert!(applied(&s.apply(&epoch(1, 2, &[1, 2, 3]))));
    for n in 1..=3 {
        s.apply(&ack(1, 0, n));
    }
    assert_eq!(s.current_epoch(), Some(1));
    assert_eq!(
        s.rotation.as_ref().unwrap().outcome,
        RotationOutcome::Completed
    );
    // Old epoch still active (decryption-side) until min_epoch retires it.
    assert_eq!(s.epochs[&0].status, EpochStatus::Active);
    assert_rejected(&mut s, &start, RejectCode::AlreadyExists);
    assert_rejected(
        &mut s,
        &Command::SetMinEpoch { min_epoch: 2 },
        RejectCode::InvalidState,
    );
    assert!(applied(&s.apply(&Command::SetMinEpoch { min_epoch: 1 })));
    assert_eq!(s.epochs[&0].status, EpochStatus::Retired);
    assert_rejected(
        &mut s,
        &Command::SetMinEpoch { min_epoch: 0 },
        RejectCode::InvalidState,
    );
}

#[test]
fn aborted_rotation_leaves_the_old_epoch_current() {
    let mut s = genesis();
    s.apply(&Command::StartRotation {
        rotation_id: "r1".into(),
        requested_at_ms: 0,
        deadline_ms: 10,
    });
    s.apply(&epoch(1, 2, &[1, 2, 3]));
    s.apply(&ack(1, 0, 1));
    let r = s.apply(&Command::AbortRotation {
        rotation_id: "r1".into(),
        reason: "deadline passed".into(),
    });
    assert!(applied(&r));
    assert_eq!(s.epochs[&1].status, EpochStatus::Aborted);
    assert_eq!(s.current_epoch(), Some(0));
    assert_eq!(
        s.rotation.as_ref().unwrap().outcome,
        RotationOutcome::Aborted("deadline passed".into())
    );
    // Late acks cannot resurrect it.
    s.apply(&ack(1, 0, 2));
    s.apply(&ack(1, 0, 3));
    assert_eq!(s.epochs[&1].status, EpochStatus::Aborted);
    assert_rejected(
        &mut s,
        &Command::AbortRotation {
            rotation_id: "r1".into(),
            reason: "again".into(),
        },
        RejectCode::RotationConflict,
    );
}

#[test]
fn chain_blocks_apply_exactly_once() {
    let mut s = genesis();
    assert!(applied(&s.apply(&block(10, vec![reg(7)]))));
    let seq = s.audit_sequence;
    // The same block again, or any block before the cursor: duplicate, no change.
    let before = s.clone();
    assert_eq!(s.apply(&block(10, vec![reg(7)])), Reply::Duplicate);
    assert_eq!(
        s.apply(&block(
            9,
            vec![ChainEvent::WorkerDeregistered { worker: b(7) }]
        )),
        Reply::Duplicate
    );
    assert_eq!(s, before);
    assert_eq!(s.audit_sequence, seq);

    let slash = ChainEvent::WorkerSlashed {
        worker: b(7),
        reason: "offline".into(),
    };
    assert!(applied(&s.apply(&block(11, vec![slash]))));
    assert_eq!(
        s.workers[&b(7)].status,
        WorkerStatus::Slashed {
            block: 11,
            reason: "offline".into()
        }
    );
    let c = s.chain.cursor.unwrap();
    assert_eq!((c.block, c.block_hash, c.event_index), (11, hash(11), 1));
    assert!(c.block_complete);
    assert_eq!(s.chain.genesis_hash, Some(hash(0)));
    assert_eq!(s.chain.events_applied, 2);
}

#[test]
fn a_block_range_that_does_not_continue_the_cursor_is_refused() {
    let mut s = genesis();
    // The first applied block may be any block, but only from its first event.
    assert_rejected(
        &mut s,
        &range(5, 1, 2, true, vec![(1, reg(7))]),
        RejectCode::ChainGap,
    );
    assert!(applied(&s.apply(&block(5, vec![reg(7)]))));
    // A skipped block.
    assert_rejected(&mut s, &block(7, vec![reg(8)]), RejectCode::ChainGap);
    // The next block of another fork (parent is not the applied block 5).
    let mut fork = chain_block(6, vec![reg(8)]);
    fork.parent_hash = b(0xee);
    assert_rejected(&mut s, &one(fork.clone()), RejectCode::ChainMismatch);
    // Block 5 again with another hash.
    fork.number = 5;
    fork.parent_hash = hash(4);
    assert_rejected(&mut s, &one(fork.clone()), RejectCode::ChainMismatch);
    // Another chain altogether.
    let mut other = chain_block(6, vec![reg(8)]);
    other.genesis_hash = b(0xdd);
    assert_rejected(&mut s, &one(other), RejectCode::ChainMismatch);
    // Malformed ranges.
    assert_rejected(
        &mut s,
        &range(6, 0, 1, true, vec![(3, reg(8))]),
        RejectCode::MalformedCommand,
    );
    assert_rejected(
        &mut s,
        &range(6, 0, 3, true, vec![(2, reg(8)), (1, reg(9))]),
        RejectCode::MalformedCommand,
    );
    assert!(applied(&s.apply(&block(6, vec![reg(8)]))));
}

#[test]
fn a_batch_of_blocks_applies_all_or_nothing() {
    let mut s = genesis();
    assert!(applied(&s.apply(&block(1, vec![]))));
    let batch = |blocks: Vec<ChainBlock>| Command::ChainBlocks { blocks };
    // Block 3 does not follow block 1: the whole batch (block 2 included) is refused.
    assert_rejected(
        &mut s,
        &batch(vec![
            chain_block(2, vec![reg(7)]),
            chain_block(3, vec![]),
            chain_block(5, vec![]),
        ]),
        RejectCode::ChainGap,
    );
    assert_rejected(&mut s, &batch(vec![]), RejectCode::MalformedCommand);
    // A batch re-proposed after it partly applied: the applied prefix is skipped.
    assert!(applied(&s.apply(&batch(vec![
        chain_block(2, vec![reg(7)]),
        chain_block(3, vec![reg(8)])
    ]))));
    assert!(applied(&s.apply(&batch(vec![
        chain_block(2, vec![reg(7)]),
        chain_block(3, vec![reg(8)]),
        chain_block(4, vec![reg(9)])
    ]))));
    assert_eq!(s.chain.events_applied, 3);
    assert_eq!(
        s.apply(&batch(vec![
            chain_block(3, vec![reg(8)]),
            chain_block(4, vec![reg(9)])
        ])),
        Reply::Duplicate
    );
    // A duplicate after a fresh block inside one batch is malformed ordering.
    assert_rejected(
        &mut s,
        &batch(vec![chain_block(5, vec![]), chain_block(4, vec![])]),
        RejectCode::ChainGap,
    );
    assert_eq!(s.chain.cursor.unwrap().block, 4);
}

#[test]
fn a_large_block_applies_in_ranges_each_exactly_once() {
    let mut s = genesis();
    assert!(applied(&s.apply(&block(1, vec![]))));
    let first = range(2, 0, 2, false, vec![(0, reg(7)), (1, reg(8))]);
    assert!(applied(&s.apply(&first)));
    // The next block cannot be applied before block 2 is finished.
    assert_rejected(&mut s, &block(3, vec![]), RejectCode::ChainGap);
    // Re-proposing the first range (a new leader) is a duplicate; an overlapping one a gap.
    assert_eq!(s.apply(&first), Reply::Duplicate);
    assert_rejected(
        &mut s,
        &range(2, 1, 3, true, vec![(2, reg(9))]),
        RejectCode::ChainGap,
    );
    assert!(applied(&s.apply(&range(2, 2, 3, true, vec![(2, reg(9))]))));
    assert_eq!(s.workers.len(), 3);
    assert_eq!(
        s.apply(&range(2, 2, 3, true, vec![(2, reg(9))])),
        Reply::Duplicate
    );
    assert!(applied(&s.apply(&block(3, vec![]))));
}

#[test]
fn a_block_left_incomplete_at_its_last_record_can_still_be_finished() {
    let mut s = genesis();
    assert!(applied(&s.apply(&block(1, vec![]))));
    // Every record of block 2 applied, but not marked complete (e.g. an older proposer).
    assert!(applied(&s.apply(&range(2, 0, 2, false, vec![(0, reg(7))]))));
    assert_rejected(&mut s, &block(3, vec![]), RejectCode::ChainGap);
    // The empty range that finishes it applies once; then block 3 may follow.
    let finish = range(2, 2, 2, true, vec![]);
    assert!(applied(&s.apply(&finish)));
    assert!(s.chain.cursor.unwrap().block_complete);
    assert_eq!(s.apply(&finish), Reply::Duplicate);
    assert!(applied(&s.apply(&block(3, vec![]))));
    // An empty range that does not finish its block says nothing: malformed.
    assert_rejected(
        &mut s,
        &range(4, 0, 0, false, vec![]),
        RejectCode::MalformedCommand,
    );
}

#[test]
fn events_that_do_not_apply_are_recorded_and_the_block_still_counts() {
    let mut s = genesis();
    let mut blk = chain_block(
        4,
        vec![
            reg(7),
            // Unknown worker: not applicable, recorded.
            ChainEvent::WorkerSlashed {
                worker: b(99),
                reason: "x".into(),
            },
        ],
    );
    // A record of a known name that did not decode (index 2), reported by the watcher.
    blk.to_index = 3;
    blk.undecodable.push(IgnoredEvent {
        block: 4,
        index: 2,
        name: "Gatekeeper.WorkerSlashed".into(),
        reason: "field worker: expected 32 bytes".into(),
    });
    assert!(applied(&s.apply(&one(blk))));
    assert_eq!(s.workers[&b(7)].status, WorkerStatus::Active);
    assert_eq!(s.chain.events_applied, 1);
    assert_eq!(s.chain.events_ignored, 2);
    let names: Vec<(u32, &str)> = s
        .chain
        .recent_ignored
        .iter()
        .map(|i| (i.index, i.name.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![(1, "WorkerSlashed"), (2, "Gatekeeper.WorkerSlashed")]
    );
    assert!(s.chain.recent_ignored[0].reason.contains("UnknownWorker"));
    assert_eq!(s.chain.cursor.unwrap().event_index, 3);
    // Only the most recent ignored events are kept.
    for n in 5..30 {
        let slash = ChainEvent::WorkerDeregistered { worker: b(98) };
        assert!(applied(&s.apply(&block(n, vec![slash]))));
    }
    assert_eq!(s.chain.recent_ignored.len(), RECENT_IGNORED);
    assert_eq!(s.chain.recent_ignored.last().unwrap().block, 29);
    assert_eq!(s.chain.events_ignored, 27);
}

#[test]
fn rotation_requested_twice_on_chain_rotates_once() {
    let mut s = genesis();
    let ev = || ChainEvent::MasterKeyRotationRequested {
        rotation_id: "chain:7".into(),
    };
    assert!(applied(&s.apply(&block(20, vec![ev()]))));
    let rotation = s.rotation.clone().unwrap();
    assert_eq!(rotation.rotation_id, "chain:7");
    assert_eq!(rotation.requested_at_ms, 1_000);
    assert_eq!(rotation.deadline_ms, 61_000);
    // Seen again in a later block (e.g. re-emitted): a no-op, no second rotation.
    assert!(applied(&s.apply(&block(21, vec![ev()]))));
    assert_eq!(s.rotation.as_ref(), Some(&rotation));
    assert_eq!(s.rotation_ids.len(), 1);
    assert!(s.pending_rotations.is_empty());
}

#[test]
fn rotations_requested_while_one_runs_are_queued_in_order() {
    let mut s = genesis();
    let ev = |id: &str| ChainEvent::MasterKeyRotationRequested {
        rotation_id: id.into(),
    };
    assert!(applied(&s.apply(&block(
        1,
        vec![ev("chain:1"), ev("chain:2"), ev("chain:3")]
    ))));
    assert_eq!(s.rotation.as_ref().unwrap().rotation_id, "chain:1");
    assert_eq!(s.pending_rotations, vec!["chain:2", "chain:3"]);
    // Seen again while queued: still once.
    assert!(applied(&s.apply(&block(2, vec![ev("chain:2")]))));
    assert_eq!(s.pending_rotations, vec!["chain:2", "chain:3"]);
    // The leader starts the next one once the first finished; it leaves the queue.
    assert!(applied(&s.apply(&Command::AbortRotation {
        rotation_id: "chain:1".into(),
        reason: "test".into(),
    })));
    assert!(applied(&s.apply(&Command::StartRotation {
        rotation_id: "chain:2".into(),
        requested_at_ms: 5,
        deadline_ms: 10,
    })));
    assert_eq!(s.pending_rotations, vec!["chain:3"]);
}

#[test]
fn a_rotation_requested_before_genesis_waits_for_an_active_epoch() {
    let mut s = GatekeeperState::default();
    let ev = ChainEvent::MasterKeyRotationRequested {
        rotation_id: "chain:1".into(),
    };
    assert!(applied(&s.apply(&block(1, vec![ev]))));
    assert_eq!(s.rotation, None);
    assert_eq!(s.pending_rotations, vec!["chain:1"]);
}

#[test]
fn phala_sessions_map_liveness_and_slashes_to_their_worker() {
    let mut s = genesis();
    let session = b(60);
    assert!(applied(&s.apply(&block(
        1,
        vec![
            reg(7),
            ChainEvent::SessionBound {
                session,
                worker: b(7)
            },
            // A session of an unknown worker: not applicable.
            ChainEvent::SessionBound {
                session: b(61),
                worker: b(99)
            },
        ]
    ))));
    assert_eq!(s.sessions.get(&session), Some(&b(7)));
    assert_eq!(s.sessions.len(), 1);
    assert!(applied(&s.apply(&block(
        2,
        vec![ChainEvent::SessionUnresponsive { session }]
    ))));
    assert_eq!(
        s.workers[&b(7)].status,
        WorkerStatus::Unresponsive { block: 2 }
    );
    assert!(applied(&s.apply(&block(
        3,
        vec![ChainEvent::SessionResponsive { session }]
    ))));
    assert_eq!(s.workers[&b(7)].status, WorkerStatus::Active);
    assert!(applied(&s.apply(&block(
        4,
        vec![ChainEvent::SessionSlashed {
            session,
            reason: "stake slashed".into()
        }]
    ))));
    // Responsive again does not lift a slash.
    assert!(applied(&s.apply(&block(
        5,
        vec![ChainEvent::SessionResponsive { session }]
    ))));
    assert!(matches!(
        s.workers[&b(7)].status,
        WorkerStatus::Slashed { block: 4, .. }
    ));
    // Nor does a re-registration: a slash is final for that worker key.
    assert!(applied(&s.apply(&block(6, vec![reg(7)]))));
    assert!(matches!(
        s.workers[&b(7)].status,
        WorkerStatus::Slashed { block: 4, .. }
    ));
    // Unbinding with the wrong worker is not applicable; with the right one it unbinds.
    assert!(applied(&s.apply(&block(
        7,
        vec![
            ChainEvent::SessionUnbound {
                session,
                worker: b(8)
            },
            ChainEvent::SessionUnbound {
                session,
                worker: b(7)
            },
        ]
    ))));
    assert!(s.sessions.is_empty());
    assert_eq!(s.chain.events_ignored, 2);
}

#[test]
fn cluster_and_contract_assignment() {
    let mut s = genesis();
    assert!(applied(&s.apply(&block(1, vec![reg(7), reg(8)]))));
    // A cluster naming an unknown worker is not applied (recorded as ignored).
    assert!(applied(&s.apply(&block(
        2,
        vec![
            ChainEvent::ClusterCreated {
                cluster: b(30),
                workers: vec![b(7), b(99)],
                scheme: Scheme::Phala,
            },
            ChainEvent::ClusterCreated {
                cluster: b(31),
                workers: vec![b(7)],
                scheme: Scheme::Phala,
            },
        ]
    ))));
    assert!(!s.clusters.contains_key(&b(30)));
    assert!(s.workers[&b(7)].clusters.contains(&b(31)));
    assert_eq!(s.chain.events_ignored, 1);
    assert!(applied(&s.apply(&block(
        3,
        vec![
            ChainEvent::WorkerAddedToCluster {
                worker: b(8),
                cluster: b(31)
            },
            ChainEvent::ContractInstantiated {
                contract: b(40),
                cluster: b(31)
            },
        ]
    ))));
    assert_eq!(s.contracts[&b(40)], b(31));
    assert!(s.workers[&b(8)].clusters.contains(&b(31)));
    assert!(applied(&s.apply(&block(
        4,
        vec![
            ChainEvent::WorkerRemovedFromCluster {
                worker: b(7),
                cluster: b(31)
            },
            ChainEvent::ContractInstantiated {
                contract: b(41),
                cluster: b(32)
            },
        ]
    ))));
    assert!(!s.workers[&b(7)].clusters.contains(&b(31)));
    assert!(!s.contracts.contains_key(&b(41)));
    assert!(s
        .chain
        .recent_ignored
        .last()
        .unwrap()
        .reason
        .contains("UnknownCluster"));
}

#[test]
fn encoding_round_trips_and_bad_bytes_are_rejected() {
    let cmds = [
        member(1),
        epoch(0, 2, &[1, 2]),
        block(5, vec![ChainEvent::WorkerDeregistered { worker: b(3) }]),
        Command::Put {
            key: "a".into(),
            value: "b".into(),
        },
    ];
    for c in &cmds {
        assert_eq!(&decode_command(&encode_command(c)).unwrap(), c);
    }
    let mut s = genesis();
    let before = s.clone();
    assert_eq!(
        code(&s.apply_encoded(b"not json")),
        RejectCode::MalformedCommand
    );
    assert_eq!(
        code(&s.apply_encoded(br#"{"v":2,"cmd":{"type":"put","key":"a","value":"b"}}"#)),
        RejectCode::MalformedCommand
    );
    assert_eq!(
        code(&s.apply_encoded(br#"{"v":1,"cmd":{"type":"no_such_command"}}"#)),
        RejectCode::MalformedCommand
    );
    assert_eq!(s, before);
    // A frozen v1 encoding keeps applying (old logs must replay).
    let old = br#"{"v":1,"cmd":{"type":"put","key":"frozen","value":"yes"}}"#;
    assert!(applied(&s.apply_encoded(old)));
    assert_eq!(s.kv["frozen"], "yes");
}

#[test]
fn replicas_applying_the_same_log_agree() {
    let log: Vec<Vec<u8>> = [
        Command::InitCluster {
            gatekeeper_id: b(1),
            threshold: None,
            genesis_dealer: None,
            production: false,
            operators: vec![],
            members: Default::default(),
        },
        member(1),
        member(2),
        epoch(0, 1, &[1, 2]),
        ack(0, 0, 1),
        ack(0, 0, 2),
        block(
            1,
            vec![ChainEvent::WorkerRegistered {
                worker: b(7),
                attestation_provider: "dcap".into(),
                confidence_level: 2,
            }],
        ),
        Command::InitCluster {
            gatekeeper_id: b(9),
            threshold: None,
            genesis_dealer: None,
            production: false,
            operators: vec![],
            members: Default::default(),
        }, // rejected on every replica
        block(1, vec![ChainEvent::WorkerDeregistered { worker: b(7) }]), // duplicate everywhere
    ]
    .iter()
    .map(encode_command)
    .collect();
    let run = || {
        let mut s = GatekeeperState::default();
        let replies: Vec<Reply> = log.iter().map(|e| s.apply_encoded(e)).collect();
        (s, replies)
    };
    let (a, ra) = run();
    let (b_, rb) = run();
    assert_eq!(a, b_);
    assert_eq!(ra, rb);
    assert_eq!(a.workers[&b(7)].status, WorkerStatus::Active);
    assert_eq!(a.gatekeeper_id, Some(b(1)));
}

#[test]
fn old_init_entries_still_decode_and_threshold_zero_is_rejected() {
    // An InitCluster written before `threshold` existed.
    let old = br#"{"v":1,"cmd":{"type":"init_cluster","gatekeeper_id":"0101010101010101010101010101010101010101010101010101010101010101"}}"#;
    let mut s = GatekeeperState::default();
    assert!(applied(&s.apply_encoded(old)));
    assert_eq!(s.genesis_threshold, None);
    let mut s = GatekeeperState::default();
    assert_rejected(
        &mut s,
        &Command::InitCluster {
            gatekeeper_id: b(1),
            threshold: Some(0),
            genesis_dealer: None,
            production: false,
            operators: vec![],
            members: Default::default(),
        },
        RejectCode::InvalidDealing,
    );
}

#[test]
fn dev_events_apply_without_moving_the_cursor() {
    let mut s = genesis();
    let r = s.apply(&Command::DevEvent {
        event: ChainEvent::WorkerRegistered {
            worker: b(7),
            attestation_provider: "root".into(),
            confidence_level: 1,
        },
    });
    assert!(applied(&r));
    assert_eq!(s.chain.cursor, None);
    assert_eq!(s.workers[&b(7)].status, WorkerStatus::Active);
    // Real chain events still apply afterwards.
    assert!(applied(&s.apply(&block(
        1,
        vec![ChainEvent::WorkerSlashed {
            worker: b(7),
            reason: "test".into()
        }]
    ))));
    assert!(matches!(
        s.workers[&b(7)].status,
        WorkerStatus::Slashed { .. }
    ));
    // And a dev event naming an unknown worker is rejected like a chain one.
    assert_rejected(
        &mut s,
        &Command::DevEvent {
            event: ChainEvent::WorkerDeregistered { worker: b(99) },
        },
        RejectCode::UnknownWorker,
    );
}

#[test]
fn a_member_record_with_a_low_order_hpke_key_is_refused() {
    let mut s = GatekeeperState::default();
    let Command::UpsertMember(mut m) = member(3) else {
        unreachable!()
    };
    m.hpke_public_key = b(0);
    let r = s.apply(&Command::UpsertMember(m.clone()));
    assert!(
        matches!(&r, Reply::Rejected { code: RejectCode::InvalidState, message } if message.contains("low-order")),
        "{r:?}"
    );
    assert!(!s.members.contains_key(&3));
    m.hpke_public_key = b(103);
    assert!(applied(&s.apply(&Command::UpsertMember(m))));
}

#[test]
fn a_copy_without_registries_keeps_everything_else() {
    let mut s = GatekeeperState {
        gatekeeper_id: Some(Bytes32([7; 32])),
        min_epoch: 3,
        audit_sequence: 9,
        ..Default::default()
    };
    s.kv.insert("k".into(), "v".into());
    s.canary_writers.entry("k".into()).or_default().insert(1, 5);
    s.contracts.insert(Bytes32([1; 32]), Bytes32([2; 32]));
    s.sessions.insert(Bytes32([3; 32]), Bytes32([4; 32]));
    s.rotation_ids.insert("r1".into());
    s.genesis_voters.insert(1);
    let lean = s.without_registries();
    let mut expected = s.clone();
    expected.kv.clear();
    expected.canary_writers.clear();
    expected.contracts.clear();
    expected.sessions.clear();
    expected.workers.clear();
    expected.clusters.clear();
    assert_eq!(lean, expected);
}

/// Part `offset..offset + entries` of a bootstrap from the storage of block `n`.
fn boot(n: u64, offset: u64, entries: u64, events: Vec<ChainEvent>, last: bool) -> Command {
    Command::ChainBootstrap(ChainBootstrapPart {
        genesis_hash: hash(0),
        block: n,
        block_hash: hash(n),
        offset,
        entries,
        events,
        undecodable: vec![],
        last,
    })
}

#[test]
fn a_bootstrap_from_storage_applies_its_parts_in_order_then_blocks_continue_it() {
    let mut s = genesis();
    let slash = ChainEvent::WorkerSlashed {
        worker: b(8),
        reason: "offline".into(),
    };
    // A part that does not start the bootstrap, or a rotation request in one: refused.
    assert_rejected(
        &mut s,
        &boot(100, 2, 2, vec![reg(7)], false),
        RejectCode::ChainGap,
    );
    let rotation = ChainEvent::MasterKeyRotationRequested {
        rotation_id: "chain:1".into(),
    };
    assert_rejected(
        &mut s,
        &boot(100, 0, 1, vec![rotation], false),
        RejectCode::MalformedCommand,
    );
    assert_rejected(
        &mut s,
        &boot(100, 0, 0, vec![], false),
        RejectCode::MalformedCommand,
    );

    assert!(applied(&s.apply(&boot(
        100,
        0,
        2,
        vec![reg(7), reg(8)],
        false
    ))));
    assert_eq!(s.chain.cursor, None);
    assert_eq!(s.chain.bootstrap.map(|b| b.entries), Some(2));
    // Blocks wait for the bootstrap; a part of another block, or one that skips entries, is
    // refused; a repeat is a duplicate.
    assert_rejected(&mut s, &block(101, vec![reg(9)]), RejectCode::ChainGap);
    for (block, offset) in [(99, 2), (99, 0), (101, 2)] {
        assert_rejected(
            &mut s,
            &boot(block, offset, 1, vec![], false),
            RejectCode::ChainMismatch,
        );
    }
    assert_rejected(
        &mut s,
        &boot(100, 3, 1, vec![], false),
        RejectCode::ChainGap,
    );
    let before = s.clone();
    assert_eq!(
        s.apply(&boot(100, 0, 2, vec![reg(7), reg(8)], false)),
        Reply::Duplicate
    );
    assert_eq!(s, before);

    assert!(applied(&s.apply(&boot(100, 2, 1, vec![slash], true))));
    assert_eq!(s.chain.bootstrap, None);
    assert_eq!(
        s.chain.bootstrapped.map(|b| (b.block, b.entries)),
        Some((100, 3))
    );
    let c = s.chain.cursor.unwrap();
    assert_eq!(
        (c.block, c.block_hash, c.block_complete),
        (100, hash(100), true)
    );
    assert_eq!(s.workers[&b(7)].status, WorkerStatus::Active);
    assert_eq!(s.workers[&b(7)].registered_at, 100);
    assert!(matches!(
        s.workers[&b(8)].status,
        WorkerStatus::Slashed { block: 100, .. }
    ));
    // A deposed leader's late part is a duplicate; a second bootstrap past the cursor would
    // skip blocks.
    assert_eq!(s.apply(&boot(100, 2, 1, vec![], true)), Reply::Duplicate);
    assert_rejected(
        &mut s,
        &boot(200, 0, 1, vec![reg(9)], true),
        RejectCode::ChainGap,
    );
    // Blocks continue from the block after the bootstrap's.
    assert_rejected(&mut s, &block(102, vec![reg(9)]), RejectCode::ChainGap);
    assert!(applied(&s.apply(&block(101, vec![reg(9)]))));
    assert!(s.workers.contains_key(&b(9)));
}

#[test]
fn a_bootstrap_whose_block_cannot_be_read_any_more_starts_over_at_a_later_block() {
    let mut s = genesis();
    assert!(applied(&s.apply(&boot(
        100,
        0,
        2,
        vec![reg(7), reg(8)],
        false
    ))));
    // The chain node pruned block 100: the leader starts again at block 300.
    assert!(applied(&s.apply(&boot(300, 0, 1, vec![reg(9)], false))));
    assert_eq!(
        s.chain.bootstrap.map(|b| (b.block, b.entries)),
        Some((300, 1))
    );
    assert!(
        !s.workers.contains_key(&b(7)),
        "the abandoned bootstrap's records go"
    );
    assert!(applied(&s.apply(&boot(300, 1, 1, vec![reg(8)], true))));
    assert_eq!(s.workers.len(), 2);
    assert_eq!(
        s.chain.bootstrapped.map(|b| (b.block, b.entries)),
        Some((300, 2))
    );
    // A late part of the abandoned bootstrap is a duplicate now (the cursor is past it).
    assert_eq!(
        s.apply(&boot(100, 2, 1, vec![reg(7)], true)),
        Reply::Duplicate
    );
}

#[test]
fn a_bootstrap_of_another_chain_is_refused_and_entries_that_do_not_apply_are_recorded() {
    let mut s = genesis();
    assert!(applied(&s.apply(&boot(5, 0, 1, vec![reg(7)], false))));
    let mut other = boot(5, 1, 1, vec![reg(8)], true);
    if let Command::ChainBootstrap(p) = &mut other {
        p.genesis_hash = b(0xee);
    }
    assert_rejected(&mut s, &other, RejectCode::ChainMismatch);
    // A cluster of an unknown worker is recorded as ignored; the bootstrap still ends.
    let cluster = ChainEvent::ClusterCreated {
        cluster: b(0xc1),
        workers: vec![b(0x99)],
        scheme: Scheme::Native,
    };
    assert!(applied(&s.apply(&boot(5, 1, 1, vec![cluster], true))));
    assert_eq!(s.chain.events_ignored, 1);
    assert_eq!(s.chain.recent_ignored[0].name, "ClusterCreated");
    assert!(s.chain.cursor.is_some());
}
