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

fn chain(block: u64, idx: u32, event: ChainEvent) -> Command {
    Command::Chain {
        cursor: ChainCursor {
            block,
            event_index: idx,
            block_hash: b(block as u8),
        },
        event,
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
fn chain_events_apply_exactly_once() {
    let mut s = genesis();
    let reg = chain(
        10,
        0,
        ChainEvent::WorkerRegistered {
            worker: b(7),
            attestation_provider: "dcap".into(),
            confidence_level: 1,
        },
    );
    assert!(applied(&s.apply(&reg)));
    let seq = s.audit_sequence;
    // The same event again, or anything at or before the cursor: duplicate, no change.
    let before = s.clone();
    assert_eq!(s.apply(&reg), Reply::Duplicate);
    assert_eq!(
        s.apply(&chain(
            9,
            5,
            ChainEvent::WorkerDeregistered { worker: b(7) }
        )),
        Reply::Duplicate
    );
    assert_eq!(s, before);
    assert_eq!(s.audit_sequence, seq);

    let slash = chain(
        10,
        1,
        ChainEvent::WorkerSlashed {
            worker: b(7),
            reason: "offline".into(),
        },
    );
    assert!(applied(&s.apply(&slash)));
    assert_eq!(
        s.workers[&b(7)].status,
        WorkerStatus::Slashed {
            block: 10,
            reason: "offline".into()
        }
    );
    assert_eq!(s.chain_cursor.unwrap().event_index, 1);
}

#[test]
fn rotation_requested_twice_on_chain_rotates_once() {
    let mut s = genesis();
    let ev = |block| {
        chain(
            block,
            0,
            ChainEvent::MasterKeyRotationRequested {
                rotation_id: "chain-7".into(),
            },
        )
    };
    assert!(applied(&s.apply(&ev(20))));
    let rotation = s.rotation.clone();
    // Seen again in a later block (e.g. re-emitted): applied as a no-op, no second rotation.
    assert!(applied(&s.apply(&ev(21))));
    assert_eq!(s.rotation, rotation);
    assert_eq!(s.rotation_ids.len(), 1);
}

#[test]
fn cluster_and_contract_assignment() {
    let mut s = genesis();
    let reg = |w| ChainEvent::WorkerRegistered {
        worker: b(w),
        attestation_provider: "root".into(),
        confidence_level: 1,
    };
    s.apply(&chain(1, 0, reg(7)));
    s.apply(&chain(1, 1, reg(8)));
    // A cluster naming an unknown worker is rejected, and the cursor does not move.
    let before = s.clone();
    let r = s.apply(&chain(
        2,
        0,
        ChainEvent::ClusterCreated {
            cluster: b(30),
            workers: vec![b(7), b(99)],
            scheme: Scheme::Phala,
        },
    ));
    assert_eq!(code(&r), RejectCode::UnknownWorker);
    assert_eq!(s, before);

    assert!(applied(&s.apply(&chain(
        2,
        1,
        ChainEvent::ClusterCreated {
            cluster: b(30),
            workers: vec![b(7)],
            scheme: Scheme::Phala,
        },
    ))));
    assert!(s.workers[&b(7)].clusters.contains(&b(30)));
    assert!(applied(&s.apply(&chain(
        3,
        0,
        ChainEvent::WorkerAddedToCluster {
            worker: b(8),
            cluster: b(30)
        }
    ))));
    assert!(applied(&s.apply(&chain(
        3,
        1,
        ChainEvent::ContractInstantiated {
            contract: b(40),
            cluster: b(30)
        }
    ))));
    assert_eq!(s.contracts[&b(40)], b(30));
    assert!(applied(&s.apply(&chain(
        4,
        0,
        ChainEvent::WorkerRemovedFromCluster {
            worker: b(7),
            cluster: b(30)
        }
    ))));
    assert!(!s.workers[&b(7)].clusters.contains(&b(30)));
    assert_eq!(
        code(&s.apply(&chain(
            4,
            1,
            ChainEvent::ContractInstantiated {
                contract: b(41),
                cluster: b(31)
            }
        ))),
        RejectCode::UnknownCluster
    );
}

#[test]
fn encoding_round_trips_and_bad_bytes_are_rejected() {
    let cmds = [
        member(1),
        epoch(0, 2, &[1, 2]),
        chain(5, 2, ChainEvent::WorkerDeregistered { worker: b(3) }),
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
        },
        member(1),
        member(2),
        epoch(0, 1, &[1, 2]),
        ack(0, 0, 1),
        ack(0, 0, 2),
        chain(
            1,
            0,
            ChainEvent::WorkerRegistered {
                worker: b(7),
                attestation_provider: "dcap".into(),
                confidence_level: 2,
            },
        ),
        Command::InitCluster {
            gatekeeper_id: b(9),
            threshold: None,
            genesis_dealer: None,
        }, // rejected on every replica
        chain(1, 0, ChainEvent::WorkerDeregistered { worker: b(7) }), // duplicate everywhere
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
    assert_eq!(s.chain_cursor, None);
    assert_eq!(s.workers[&b(7)].status, WorkerStatus::Active);
    // Real chain events still apply afterwards.
    assert!(applied(&s.apply(&chain(
        1,
        0,
        ChainEvent::WorkerSlashed {
            worker: b(7),
            reason: "test".into()
        }
    ))));
    // And a dev event naming an unknown worker is rejected like a chain one.
    assert_rejected(
        &mut s,
        &Command::DevEvent {
            event: ChainEvent::WorkerDeregistered { worker: b(99) },
        },
        RejectCode::UnknownWorker,
    );
}
