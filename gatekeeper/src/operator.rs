//! What an operator may ask of the cluster: the pure checks and request shaping behind
//! AdminService (`service/admin.rs` only decodes, calls these, and talks to the replica).

use crate::config::Mode;
use crate::error::{ApiError, ApiResult, ErrorCode};
use gatekeeper_proto::v1 as pb;
use gatekeeper_raft::state::{Bytes32, ChainEvent, Command, EpochStatus, GatekeeperState, Scheme};
use gatekeeper_raft::Node;
use std::collections::BTreeMap;

pub use gatekeeper_raft::state::{MAX_CANARY_KEY_BYTES, MAX_CANARY_VALUE_BYTES};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, message)
}

/// The initial voters and threshold an `Init` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitPlan {
    /// Initial voters.
    pub members: BTreeMap<u64, Node>,
    /// Requested threshold (None: the default majority).
    pub threshold: Option<u8>,
}

impl InitPlan {
    /// The threshold the cluster will use.
    pub fn effective_threshold(&self) -> u32 {
        self.threshold.map_or_else(
            || keyring::shares::default_threshold(self.members.len()) as u32,
            u32::from,
        )
    }
}

/// Checks an `Init` request: no cluster-wide scheme, a threshold of at most 255 and at most the
/// member count, no duplicate node ids. An empty member list means `this` node alone.
pub fn plan_init(r: &pb::InitRequest, this: (u64, Node)) -> ApiResult<InitPlan> {
    if r.scheme != 0 {
        return Err(ApiError::new(
            ErrorCode::Unimplemented,
            "a cluster-wide scheme is not built; schemes are set per compute cluster",
        ));
    }
    let threshold = match r.threshold {
        0 => None,
        t => Some(u8::try_from(t).map_err(|_| invalid("threshold must be at most 255"))?),
    };
    let mut members = BTreeMap::new();
    if r.members.is_empty() {
        members.insert(this.0, this.1);
    }
    for m in &r.members {
        let node = Node {
            raft_address: m.raft_address.clone(),
            api_address: m.api_address.clone(),
        };
        if members.insert(m.node_id, node).is_some() {
            return Err(invalid(format!("node id {} appears twice", m.node_id)));
        }
    }
    let n = members.len();
    if let Some(t) = threshold {
        if usize::from(t) > n {
            return Err(invalid(format!(
                "threshold {t} exceeds the {n} initial members"
            )));
        }
    }
    Ok(InitPlan { members, threshold })
}

/// Whether the admin listener's verified client certificate (its subject CN) may act as an
/// operator. Node certificates (`node-<id>`, from the cluster CA) are not operators', even when
/// the operator CA is the cluster CA (the development default): a member's credentials must not
/// be enough to join, remove or rotate.
pub fn check_operator(common_name: Option<&str>) -> ApiResult<()> {
    match common_name.and_then(crate::admission::node_id_of_name) {
        Some(id) => Err(ApiError::new(
            ErrorCode::NotAnOperator,
            format!(
                "the client certificate is node {id}'s, not an operator's: use an operator \
                 certificate (`gatekeeper certs operator`)"
            ),
        )),
        None => Ok(()),
    }
}

/// A `Join` of `node_id` given the current membership (node id, voter).
pub fn check_join(members: &[(u64, bool)], node_id: u64) -> ApiResult<()> {
    if members.iter().any(|(id, voter)| *id == node_id && *voter) {
        return Err(ApiError::new(
            ErrorCode::AlreadyMember,
            format!("node {node_id} is already a voter"),
        ));
    }
    Ok(())
}

/// A `Leave` of `node_id`: it must be a member, and removing it must leave at least as many
/// voters as the threshold of every live (active or dealing) epoch — otherwise that epoch's
/// shares could no longer be re-dealt and the epoch would be lost.
pub fn check_leave(
    members: &[(u64, bool)],
    state: &GatekeeperState,
    node_id: u64,
) -> ApiResult<()> {
    if !members.iter().any(|(id, _)| *id == node_id) {
        return Err(ApiError::new(
            ErrorCode::MemberNotFound,
            format!("node {node_id} is not a member"),
        ));
    }
    let voters_after = members
        .iter()
        .filter(|(id, voter)| *voter && *id != node_id)
        .count();
    let needed = state
        .epochs
        .values()
        .filter(|e| matches!(e.status, EpochStatus::Active | EpochStatus::Dealing))
        .map(|e| usize::from(e.threshold))
        .max()
        .unwrap_or(0);
    if voters_after < needed {
        return Err(ApiError::new(
            ErrorCode::BelowThreshold,
            format!(
                "removing node {node_id} would leave {voters_after} voters, fewer than the threshold {needed} of a live epoch"
            ),
        ));
    }
    Ok(())
}

/// The `StartRotation` command a `Rotate` request asks for: `fresh_id` names it when the request
/// does not; a deadline of 0 means `default_deadline_ms`.
pub fn rotation(
    r: &pb::RotateRequest,
    default_deadline_ms: u64,
    now_ms: u64,
    fresh_id: impl FnOnce() -> String,
) -> Command {
    let rotation_id = if r.rotation_id.is_empty() {
        fresh_id()
    } else {
        r.rotation_id.clone()
    };
    let deadline = if r.deadline_ms == 0 {
        default_deadline_ms
    } else {
        r.deadline_ms
    };
    Command::StartRotation {
        rotation_id,
        requested_at_ms: now_ms,
        deadline_ms: now_ms.saturating_add(deadline),
    }
}

/// Whether the learner `node_id` may become a voter: it registered its enclave keys (a member
/// record exists) and its registration evidence passes the member policy at `now_secs`. (That
/// it caught up with the log is the replica's check.)
pub fn learner_ready(
    state: &GatekeeperState,
    node_id: u64,
    member_policy: &crate::attestation::Policy,
    now_secs: u64,
) -> Result<(), String> {
    let m = state
        .members
        .get(&node_id)
        .ok_or_else(|| format!("node {node_id} has not registered its enclave keys yet"))?;
    crate::attestation::member_evidence_ok(member_policy, m, now_secs)
}

/// The active epochs a `Retire` to `min_epoch` retires.
pub fn retiring(state: &GatekeeperState, min_epoch: u64) -> Vec<u64> {
    state
        .epochs
        .values()
        .filter(|e| e.status == EpochStatus::Active && e.epoch < min_epoch)
        .map(|e| e.epoch)
        .collect()
}

/// `ApplyDevEvent` is a development path.
pub fn allow_dev_events(mode: Mode) -> ApiResult<()> {
    if mode != Mode::Development {
        return Err(ApiError::new(
            ErrorCode::DevelopmentOnly,
            "ApplyDevEvent is a development path; this node runs in production mode",
        ));
    }
    Ok(())
}

/// `SetFault` needs `fault_hooks = true`.
pub fn allow_fault_hooks(enabled: bool) -> ApiResult<()> {
    if !enabled {
        return Err(ApiError::new(
            ErrorCode::FaultHooksDisabled,
            "fault hooks are disabled (set fault_hooks = true in development)",
        ));
    }
    Ok(())
}

/// A canary write's key and value sizes.
pub fn check_canary(key: &str, value: &str) -> ApiResult<()> {
    if key.is_empty() || key.len() > MAX_CANARY_KEY_BYTES {
        return Err(invalid(format!(
            "key must be 1 to {MAX_CANARY_KEY_BYTES} bytes"
        )));
    }
    if value.len() > MAX_CANARY_VALUE_BYTES {
        return Err(invalid(format!(
            "value must be at most {MAX_CANARY_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The chain event an `ApplyDevEvent` request carries.
pub fn dev_event(r: pb::ApplyDevEventRequest) -> ApiResult<ChainEvent> {
    let b32 = |v: &[u8], what: &str| -> ApiResult<Bytes32> {
        v.try_into()
            .map(Bytes32)
            .map_err(|_| invalid(format!("{what} must be 32 bytes")))
    };
    use pb::apply_dev_event_request::Event as E;
    let event = match r.event.ok_or_else(|| invalid("event is required"))? {
        E::WorkerRegistered(e) => {
            keyring::Sr25519PublicKey::from_slice(&e.worker)
                .map_err(|x| ApiError::field("worker", &x))?;
            ChainEvent::WorkerRegistered {
                worker: b32(&e.worker, "worker")?,
                attestation_provider: e.attestation_provider,
                confidence_level: u8::try_from(e.confidence_level)
                    .map_err(|_| invalid("confidence_level above 255"))?,
            }
        }
        E::WorkerDeregistered(e) => ChainEvent::WorkerDeregistered {
            worker: b32(&e.worker, "worker")?,
        },
        E::WorkerSlashed(e) => ChainEvent::WorkerSlashed {
            worker: b32(&e.worker, "worker")?,
            reason: e.reason,
        },
        E::ClusterCreated(e) => ChainEvent::ClusterCreated {
            cluster: b32(&e.cluster, "cluster")?,
            workers: e
                .workers
                .iter()
                .map(|w| b32(w, "workers[]"))
                .collect::<Result<_, _>>()?,
            scheme: if e.scheme == pb::DerivationScheme::Phala as i32 {
                Scheme::Phala
            } else {
                Scheme::Native
            },
        },
        E::WorkerAddedToCluster(e) => ChainEvent::WorkerAddedToCluster {
            worker: b32(&e.worker, "worker")?,
            cluster: b32(&e.cluster, "cluster")?,
        },
        E::WorkerRemovedFromCluster(e) => ChainEvent::WorkerRemovedFromCluster {
            worker: b32(&e.worker, "worker")?,
            cluster: b32(&e.cluster, "cluster")?,
        },
        E::ContractInstantiated(e) => ChainEvent::ContractInstantiated {
            contract: b32(&e.contract, "contract")?,
            cluster: b32(&e.cluster, "cluster")?,
        },
    };
    Ok(event)
}

/// How far an operator-signed rotation's `requested_at_ms` may be from this node's clock.
pub const MAX_OPERATOR_CLOCK_SKEW_MS: u64 = gatekeeper_raft::state::MAX_OPERATOR_SKEW_MS;

/// The command an operator signed, checked against the call it came with: it decodes, it is the
/// kind of command the call proposes (`expected` names it), it was signed within
/// [`MAX_OPERATOR_CLOCK_SKEW_MS`] of `now_ms` (its sequence is the signing time in
/// microseconds: a signed request that was never sent expires), and a rotation's request time
/// is within the same bound. Returns the command and the operator's
/// proof (under `name`, the caller's certificate name); the signature itself is checked by
/// `gatekeeper_raft::state::authorize` on the leader and on every node.
pub fn signed_command(
    auth: &pb::OperatorAuthorization,
    name: Option<&str>,
    expected: &str,
    now_ms: u64,
) -> ApiResult<(Command, gatekeeper_raft::state::OperatorProof)> {
    let Some(name) = name else {
        return Err(ApiError::new(
            ErrorCode::CommandNotAuthorized,
            "an operator authorization needs the operator's client certificate (its name)",
        ));
    };
    let signed_ms = auth.sequence / 1000;
    if signed_ms.abs_diff(now_ms) > MAX_OPERATOR_CLOCK_SKEW_MS {
        return Err(ApiError::new(
            ErrorCode::CommandNotAuthorized,
            format!(
                "the operator authorization was signed at {signed_ms} ms (its sequence is the \
                 signing time in µs), more than {} s from this node's clock ({now_ms} ms): sign \
                 it again, and check both clocks",
                MAX_OPERATOR_CLOCK_SKEW_MS / 1000
            ),
        ));
    }
    let command: Command = serde_json::from_str(&auth.command_json)
        .map_err(|e| invalid(format!("authorization.command_json: {e}")))?;
    let kind = gatekeeper_raft::state::command_name(&command);
    if kind != expected {
        return Err(invalid(format!(
            "authorization.command_json is a {kind}, this call proposes a {expected}"
        )));
    }
    if let Command::StartRotation {
        requested_at_ms, ..
    } = &command
    {
        if requested_at_ms.abs_diff(now_ms) > MAX_OPERATOR_CLOCK_SKEW_MS {
            return Err(invalid(format!(
                "the signed rotation was requested at {requested_at_ms} ms, more than {} s from \
                 this node's clock ({now_ms} ms): check both clocks",
                MAX_OPERATOR_CLOCK_SKEW_MS / 1000
            )));
        }
    }
    Ok((
        command,
        gatekeeper_raft::state::OperatorProof {
            name: name.to_string(),
            seq: auth.sequence,
            signature: gatekeeper_raft::state::HexBytes(auth.signature.clone()),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_commands_must_match_the_call_and_be_fresh() {
        let now_ms = 1_800_000_000_000;
        let auth = |cmd: &Command, signed_ms: u64| pb::OperatorAuthorization {
            command_json: serde_json::to_string(cmd).unwrap(),
            sequence: signed_ms * 1000 + 7,
            signature: vec![1, 2, 3],
        };
        let retire = Command::SetMinEpoch { min_epoch: 2 };
        let (c, proof) = signed_command(
            &auth(&retire, now_ms - 1000),
            Some("alice"),
            "SetMinEpoch",
            now_ms,
        )
        .unwrap();
        assert_eq!(c, retire);
        assert_eq!(
            (proof.name.as_str(), proof.seq),
            ("alice", (now_ms - 1000) * 1000 + 7)
        );
        // No operator name, another kind of command, an expired or future signature.
        let code = |r: ApiResult<_>| r.map(|_: (Command, _)| ()).unwrap_err().code().unwrap();
        assert_eq!(
            code(signed_command(
                &auth(&retire, now_ms),
                None,
                "SetMinEpoch",
                now_ms
            )),
            ErrorCode::CommandNotAuthorized
        );
        assert_eq!(
            code(signed_command(
                &auth(&retire, now_ms),
                Some("a"),
                "StartRotation",
                now_ms
            )),
            ErrorCode::InvalidArgument
        );
        let old = auth(&retire, now_ms - MAX_OPERATOR_CLOCK_SKEW_MS - 1000);
        let e = signed_command(&old, Some("a"), "SetMinEpoch", now_ms).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::CommandNotAuthorized));
        assert!(e.to_string().contains("sign it again"), "{e}");
        let ahead = auth(&retire, now_ms + MAX_OPERATOR_CLOCK_SKEW_MS + 1000);
        assert_eq!(
            code(signed_command(&ahead, Some("a"), "SetMinEpoch", now_ms)),
            ErrorCode::CommandNotAuthorized
        );
        // A rotation requested far from the node's clock, though freshly signed.
        let rotate = Command::StartRotation {
            rotation_id: "r".into(),
            requested_at_ms: now_ms - MAX_OPERATOR_CLOCK_SKEW_MS - 1,
            deadline_ms: now_ms + 60_000,
        };
        assert_eq!(
            code(signed_command(
                &auth(&rotate, now_ms),
                Some("a"),
                "StartRotation",
                now_ms
            )),
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn node_certificates_are_not_operators() {
        for ok in [
            Some("operator"),
            Some("alice"),
            Some("node"),
            Some("node-x"),
            None,
        ] {
            check_operator(ok).unwrap();
        }
        for node in ["node-1", "node-42"] {
            let e = check_operator(Some(node)).unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::NotAnOperator), "{node}");
        }
    }
    use gatekeeper_raft::state::EpochRecord;

    fn node(i: u64) -> Node {
        Node {
            raft_address: format!("127.0.0.1:{}", 7000 + i),
            api_address: format!("127.0.0.1:{}", 8000 + i),
        }
    }

    fn member(i: u64) -> pb::InitMember {
        pb::InitMember {
            node_id: i,
            raft_address: node(i).raft_address,
            api_address: node(i).api_address,
        }
    }

    fn code(r: ApiResult<impl std::fmt::Debug>) -> ErrorCode {
        r.unwrap_err().code().unwrap()
    }

    #[test]
    fn init_defaults_to_this_node_and_a_majority() {
        let p = plan_init(&pb::InitRequest::default(), (4, node(4))).unwrap();
        assert_eq!(p.members.keys().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(p.effective_threshold(), 1);
        let r = pb::InitRequest {
            members: vec![member(1), member(2), member(3)],
            ..Default::default()
        };
        let p = plan_init(&r, (1, node(1))).unwrap();
        assert_eq!(p.members.len(), 3);
        assert_eq!(p.threshold, None);
        assert_eq!(p.effective_threshold(), 2);
    }

    #[test]
    fn init_refusals() {
        let mut r = pb::InitRequest {
            members: vec![member(1), member(2)],
            threshold: 3,
            ..Default::default()
        };
        assert_eq!(
            code(plan_init(&r, (1, node(1)))),
            ErrorCode::InvalidArgument
        );
        r.threshold = 300;
        assert_eq!(
            code(plan_init(&r, (1, node(1)))),
            ErrorCode::InvalidArgument
        );
        r.threshold = 2;
        r.members.push(member(2));
        assert_eq!(
            code(plan_init(&r, (1, node(1)))),
            ErrorCode::InvalidArgument
        );
        let r = pb::InitRequest {
            scheme: pb::DerivationScheme::Phala as i32,
            ..Default::default()
        };
        assert_eq!(code(plan_init(&r, (1, node(1)))), ErrorCode::Unimplemented);
    }

    #[test]
    fn join_refuses_an_existing_voter_but_promotes_a_learner() {
        let m = [(1, true), (2, true), (3, false)];
        assert_eq!(code(check_join(&m, 2)), ErrorCode::AlreadyMember);
        check_join(&m, 3).unwrap();
        check_join(&m, 4).unwrap();
    }

    fn state_with_threshold(t: u8, status: EpochStatus) -> GatekeeperState {
        let mut s = GatekeeperState::default();
        s.epochs.insert(
            0,
            EpochRecord {
                epoch: 0,
                threshold: t,
                master_public_key: Bytes32([1; 32]),
                cluster_signing_public_key: Bytes32([2; 32]),
                status,
                dealing: gatekeeper_raft::state::DealingRecord {
                    generation: 0,
                    commitments: vec![],
                    wrapped_nonce: Default::default(),
                    wrapped_ciphertext: Default::default(),
                    shares: vec![],
                    acked: Default::default(),
                },
            },
        );
        s
    }

    #[test]
    fn leave_keeps_enough_voters_for_every_live_epoch() {
        let m = [(1, true), (2, true), (3, true)];
        let s = state_with_threshold(2, EpochStatus::Active);
        assert_eq!(code(check_leave(&m, &s, 9)), ErrorCode::MemberNotFound);
        check_leave(&m, &s, 3).unwrap();
        let two = [(1, true), (2, true)];
        assert_eq!(code(check_leave(&two, &s, 2)), ErrorCode::BelowThreshold);
        // A dealing epoch counts; a retired one does not.
        let dealing = state_with_threshold(2, EpochStatus::Dealing);
        assert_eq!(
            code(check_leave(&two, &dealing, 2)),
            ErrorCode::BelowThreshold
        );
        let retired = state_with_threshold(2, EpochStatus::Retired);
        check_leave(&two, &retired, 2).unwrap();
        // A learner leaving does not reduce the voters.
        let with_learner = [(1, true), (2, true), (3, false)];
        check_leave(&with_learner, &s, 3).unwrap();
    }

    #[test]
    fn a_learner_is_ready_once_registered_with_evidence_that_passes() {
        use crate::attestation::{Policy, PolicyKind};
        let dev = keyring::Sr25519Keypair::from_seed(&[1; 32]);
        let policy = Policy {
            kind: PolicyKind::Dev,
            allowed_mrenclave: vec![],
            allowed_mrsigner: vec![],
            allowed_mrtd: vec![],
            min_tcb_status: "UpToDate".into(),
            max_evidence_age_secs: 1,
            dev_key: Some(dev.public_key()),
            default_collateral: None,
        };
        let mut s = GatekeeperState::default();
        let err = learner_ready(&s, 4, &policy, 2_000).unwrap_err();
        assert!(err.contains("has not registered"), "{err}");
        let id = keyring::Sr25519Keypair::from_seed(&[2; 32]).public_key();
        let hpke = keyring::X25519SecretKey::from_bytes(&[3; 32])
            .unwrap()
            .public_key();
        let rd = keyring::sign::report_data(id.as_bytes(), &hpke, &[0; 32]);
        let mut record = gatekeeper_raft::state::MemberRecord {
            node_id: 4,
            raft_address: "a:1".into(),
            api_address: "a:2".into(),
            identity_public_key: Bytes32(*id.as_bytes()),
            hpke_public_key: Bytes32(*hpke.as_bytes()),
            attestation: gatekeeper_raft::state::HexBytes(vec![]),
            tls_spki: None,
            admin_address: None,
        };
        s.members.insert(4, record.clone());
        assert!(learner_ready(&s, 4, &policy, 2_000).is_err(), "no evidence");
        record.attestation =
            gatekeeper_raft::state::HexBytes(keyring::dev_attestation::issue(&dev, &rd, 1_000));
        s.members.insert(4, record);
        learner_ready(&s, 4, &policy, 2_000).unwrap();
    }

    #[test]
    fn retire_reports_the_active_epochs_below_the_minimum() {
        let mut s = state_with_threshold(2, EpochStatus::Active);
        let mut e1 = s.epochs[&0].clone();
        e1.epoch = 1;
        s.epochs.insert(1, e1);
        let mut e2 = s.epochs[&0].clone();
        e2.epoch = 2;
        e2.status = EpochStatus::Dealing;
        s.epochs.insert(2, e2);
        assert_eq!(retiring(&s, 0), Vec::<u64>::new());
        assert_eq!(retiring(&s, 1), vec![0]);
        assert_eq!(retiring(&s, 3), vec![0, 1]);
    }

    #[test]
    fn rotation_fills_in_id_and_deadline() {
        let c = rotation(&pb::RotateRequest::default(), 5_000, 1_000, || {
            "fresh".into()
        });
        assert_eq!(
            c,
            Command::StartRotation {
                rotation_id: "fresh".into(),
                requested_at_ms: 1_000,
                deadline_ms: 6_000,
            }
        );
        let r = pb::RotateRequest {
            rotation_id: "mine".into(),
            deadline_ms: 10,
            reason: String::new(),
            authorization: None,
        };
        let c = rotation(&r, 5_000, u64::MAX - 5, || unreachable!());
        assert_eq!(
            c,
            Command::StartRotation {
                rotation_id: "mine".into(),
                requested_at_ms: u64::MAX - 5,
                deadline_ms: u64::MAX,
            }
        );
    }

    #[test]
    fn development_paths_are_refused_in_production() {
        assert_eq!(
            code(allow_dev_events(Mode::Production)),
            ErrorCode::DevelopmentOnly
        );
        allow_dev_events(Mode::Development).unwrap();
        assert_eq!(
            code(allow_fault_hooks(false)),
            ErrorCode::FaultHooksDisabled
        );
        allow_fault_hooks(true).unwrap();
    }

    #[test]
    fn canary_limits() {
        check_canary("k", &"v".repeat(MAX_CANARY_VALUE_BYTES)).unwrap();
        assert_eq!(code(check_canary("", "")), ErrorCode::InvalidArgument);
        let long = "k".repeat(MAX_CANARY_KEY_BYTES + 1);
        assert_eq!(code(check_canary(&long, "")), ErrorCode::InvalidArgument);
        let big = "v".repeat(MAX_CANARY_VALUE_BYTES + 1);
        assert_eq!(code(check_canary("k", &big)), ErrorCode::InvalidArgument);
    }

    #[test]
    fn dev_events_are_decoded_or_refused_with_the_field() {
        use pb::apply_dev_event_request::Event as E;
        let w = keyring::Sr25519Keypair::from_seed(&[7; 32]).public_key();
        let ok = dev_event(pb::ApplyDevEventRequest {
            event: Some(E::WorkerRegistered(pb::DevWorkerRegistered {
                worker: w.as_bytes().to_vec(),
                attestation_provider: "dev".into(),
                confidence_level: 1,
            })),
            authorization: None,
        })
        .unwrap();
        assert!(matches!(ok, ChainEvent::WorkerRegistered { .. }));
        let e = dev_event(pb::ApplyDevEventRequest::default()).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument));
        let e = dev_event(pb::ApplyDevEventRequest {
            event: Some(E::WorkerSlashed(pb::DevWorkerSlashed {
                worker: vec![1; 31],
                reason: String::new(),
            })),
            authorization: None,
        })
        .unwrap_err();
        assert!(e.message().contains("worker"), "{e}");
        let e = dev_event(pb::ApplyDevEventRequest {
            event: Some(E::WorkerRegistered(pb::DevWorkerRegistered {
                worker: w.as_bytes().to_vec(),
                attestation_provider: String::new(),
                confidence_level: 300,
            })),
            authorization: None,
        })
        .unwrap_err();
        assert!(e.message().contains("confidence_level"), "{e}");
    }
}
