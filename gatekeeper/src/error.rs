//! The one catalog of errors Gatekeeper's services return, and the one mapping to the wire.
//!
//! Every refusal of KeyService, PeerService and AdminService is an [`ApiError`]: a stable string
//! code from [`ErrorCode`] (or, for a malformed key or envelope the keyring refused, the keyring's
//! own `KEYRING_…` code) plus a human-readable message naming the field or check. The code
//! decides the gRPC status code, always the same one for the same code, and travels in the
//! `gatekeeper-error-code` response metadata entry, so clients branch on it instead of parsing
//! messages. `From<ApiError> for tonic::Status` is the only place a handler's status is built;
//! statuses tonic makes itself get their code from [`transport_code`] (the API server's layer,
//! `service/layer.rs`) and the protobuf codec (`gatekeeper_proto::codec`).
//!
//! docs/api.md ("Error codes") lists the same codes; a test below keeps the two in step.
//! Codes never change meaning; a new failure gets a new code.
//!
//! Internal failures (`INTERNAL`) are logged with their detail; the client gets a generic message,
//! so nothing about keys or state leaks through an error.

use std::fmt;

/// The response metadata key that carries the stable error code.
pub use gatekeeper_proto::codec::ERROR_CODE_METADATA;

macro_rules! catalog {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal => $grpc:ident, )*) => {
        /// Gatekeeper's stable error codes. Each maps to exactly one gRPC status code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in catalog order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable string sent in `gatekeeper-error-code`.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The gRPC status code this error is always sent with.
            pub fn grpc(self) -> tonic::Code {
                match self { $(ErrorCode::$variant => tonic::Code::$grpc,)* }
            }
        }
    };
}

catalog! {
    // --- Malformed requests ---
    /// The request exceeds the service's size limit.
    RequestTooLarge = "REQUEST_TOO_LARGE" => ResourceExhausted,
    /// Too many key requests from this source address are in service at once; retry shortly.
    SourceBusy = "SOURCE_BUSY" => ResourceExhausted,
    /// The message exceeds the transport's decoding limit (refused before any handler runs).
    MessageTooLarge = "MESSAGE_TOO_LARGE" => OutOfRange,
    /// The request bytes are not a valid protobuf message of the method's type.
    MalformedRequest = "MALFORMED_REQUEST" => InvalidArgument,
    /// A field is missing, has the wrong length or an undefined value; the message names it.
    InvalidArgument = "INVALID_ARGUMENT" => InvalidArgument,
    /// `gatekeeper_id` is not this cluster's.
    WrongGatekeeper = "WRONG_GATEKEEPER" => InvalidArgument,
    /// `timestamp_ms` is outside the replay window.
    TimestampSkew = "TIMESTAMP_SKEW" => InvalidArgument,
    /// The recipient X25519 key is a low-order point.
    RecipientLowOrder = "RECIPIENT_LOW_ORDER" => InvalidArgument,
    /// The request signature does not verify.
    BadSignature = "BAD_SIGNATURE" => Unauthenticated,
    /// The nonce was already used within the replay window.
    NonceReplayed = "NONCE_REPLAYED" => AlreadyExists,

    // --- Availability of the replicated state ---
    /// No leader is known or reachable.
    NoLeader = "NO_LEADER" => Unavailable,
    /// A stale read was refused: no leader contact within the bound.
    StaleRead = "STALE_READ" => Unavailable,
    /// Raft stopped or failed on this node.
    RaftUnavailable = "RAFT_UNAVAILABLE" => Unavailable,
    /// The cluster is not initialised yet.
    NotInitialized = "NOT_INITIALIZED" => Unavailable,
    /// The operation timed out; it may or may not have taken effect.
    Timeout = "TIMEOUT" => DeadlineExceeded,

    // --- Epochs and unsealing ---
    /// There is no active epoch yet.
    NoActiveEpoch = "NO_ACTIVE_EPOCH" => FailedPrecondition,
    /// The requested epoch does not exist.
    EpochNotFound = "EPOCH_NOT_FOUND" => NotFound,
    /// The epoch exists but is not active (dealing, retired or aborted).
    EpochNotActive = "EPOCH_NOT_ACTIVE" => FailedPrecondition,
    /// This node does not hold the epoch's master secret.
    NodeSealed = "NODE_SEALED" => FailedPrecondition,
    /// The share request names a generation other than the epoch's current one.
    GenerationMismatch = "GENERATION_MISMATCH" => NotFound,
    /// This node holds no opened share of the requested dealing.
    NoShareHeld = "NO_SHARE_HELD" => FailedPrecondition,

    // --- Workers, clusters, contracts ---
    /// The worker is not registered.
    WorkerNotRegistered = "WORKER_NOT_REGISTERED" => NotFound,
    /// The worker is slashed, deregistered or unresponsive.
    WorkerNotActive = "WORKER_NOT_ACTIVE" => PermissionDenied,
    /// The attestation evidence fails the policy.
    AttestationRejected = "ATTESTATION_REJECTED" => PermissionDenied,
    /// The cluster does not exist.
    ClusterNotFound = "CLUSTER_NOT_FOUND" => NotFound,
    /// The contract does not exist.
    ContractNotFound = "CONTRACT_NOT_FOUND" => NotFound,
    /// The worker is not assigned to the cluster.
    WorkerNotInCluster = "WORKER_NOT_IN_CLUSTER" => PermissionDenied,

    // --- Members ---
    /// The requester is not a current member of the cluster.
    NotAMember = "NOT_A_MEMBER" => PermissionDenied,
    /// The requester's key is not the one in its member record.
    MemberKeyMismatch = "MEMBER_KEY_MISMATCH" => PermissionDenied,
    /// The client certificate on the cluster listener is not a current member's (nor the joining node's), or the message claims another node than the certificate's.
    PeerNotAdmitted = "PEER_NOT_ADMITTED" => PermissionDenied,
    /// The admin listener's client certificate is a node's (named `node-<id>`), not an operator's.
    NotAnOperator = "NOT_AN_OPERATOR" => PermissionDenied,
    /// The proposer of a replicated command may not issue it, or its proof does not verify.
    CommandNotAuthorized = "COMMAND_NOT_AUTHORIZED" => PermissionDenied,
    /// A replicated command's sequence is not above its proposer's last: a replay.
    CommandReplayed = "COMMAND_REPLAYED" => Aborted,
    /// The audit log could not be written and `audit_required` is on: the request was not served.
    AuditFailed = "AUDIT_FAILED" => Unavailable,
    /// The listener needs a client certificate and the connection presented none.
    NoClientCertificate = "NO_CLIENT_CERTIFICATE" => Unauthenticated,
    /// Membership changes run on the leader only: this node is not it. The `gatekeeper-leader-admin` response metadata, when known, names the leader's admin address.
    NotLeader = "NOT_LEADER" => FailedPrecondition,
    /// The node is already a voter.
    AlreadyMember = "ALREADY_MEMBER" => AlreadyExists,
    /// The node is not a member.
    MemberNotFound = "MEMBER_NOT_FOUND" => NotFound,
    /// Removing the node would leave fewer voters than a live epoch's threshold.
    BelowThreshold = "BELOW_THRESHOLD" => FailedPrecondition,
    /// A joining node did not catch up, or did not register evidence that passes the member
    /// policy, in time: it was not made a voter (the message says whether removing it as a
    /// learner succeeded).
    LearnerNotReady = "LEARNER_NOT_READY" => FailedPrecondition,
    /// A backup was asked of a node with no snapshot yet (no checkpoint certified so far).
    NoSnapshot = "NO_SNAPSHOT" => FailedPrecondition,

    // --- Cluster operations ---
    /// The cluster is already initialised.
    AlreadyInitialized = "ALREADY_INITIALIZED" => FailedPrecondition,
    /// A rotation is already in progress (or none is, for an abort).
    RotationConflict = "ROTATION_CONFLICT" => FailedPrecondition,
    /// The object (rotation id, cluster, …) already exists; nothing new was done.
    AlreadyExists = "ALREADY_EXISTS" => AlreadyExists,
    /// The same command or event was already applied.
    Duplicate = "DUPLICATE" => AlreadyExists,
    /// The replicated state does not allow this now (the message says why).
    InvalidState = "INVALID_STATE" => FailedPrecondition,
    /// A chain block that does not belong to the followed chain.
    ChainMismatch = "CHAIN_MISMATCH" => FailedPrecondition,
    /// A chain block range that does not continue the committed cursor.
    ChainGap = "CHAIN_GAP" => FailedPrecondition,
    /// A development-only call on a node in production mode.
    DevelopmentOnly = "DEVELOPMENT_ONLY" => PermissionDenied,
    /// A fault hook call on a node without `fault_hooks = true`.
    FaultHooksDisabled = "FAULT_HOOKS_DISABLED" => PermissionDenied,
    /// The request asks for something this build does not implement.
    Unimplemented = "UNIMPLEMENTED" => Unimplemented,

    // --- Everything else ---
    /// An internal failure; the detail is in the node's log only.
    Internal = "INTERNAL" => Internal,
}

impl ErrorCode {
    /// The code for a stable string, if it is one of ours.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which catalog a code comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Code {
    /// One of [`ErrorCode`].
    Api(ErrorCode),
    /// A keyring refusal of a client-supplied key, id or envelope (`KEYRING_…`); always
    /// `INVALID_ARGUMENT`.
    Keyring(&'static str),
}

/// A refusal, as every service returns it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiError {
    code: Code,
    message: String,
    /// Extra response metadata (e.g. [`LEADER_ADMIN_METADATA`] with `NOT_LEADER`).
    metadata: Vec<(&'static str, String)>,
}

/// With `NOT_LEADER`: the leader's admin listener address, where an operator's client retries.
pub const LEADER_ADMIN_METADATA: &str = "gatekeeper-leader-admin";

impl ApiError {
    /// An error with a catalog code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: Code::Api(code),
            message: message.into(),
            metadata: vec![],
        }
    }

    /// Adds a response metadata entry (ASCII values only; others are dropped on the wire).
    pub fn with_metadata(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.metadata.push((key, value.into()));
        self
    }

    /// A client-supplied field the keyring refused: `INVALID_ARGUMENT` with the keyring's code
    /// and a message naming the field.
    pub fn field(field: &str, e: &keyring::Error) -> Self {
        Self {
            code: Code::Keyring(e.code()),
            message: format!("{field}: {e}"),
            metadata: vec![],
        }
    }

    /// An internal failure: the detail goes to the log, not to the client.
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, detail.to_string())
    }

    /// The catalog code, or `None` for a keyring code.
    pub fn code(&self) -> Option<ErrorCode> {
        match self.code {
            Code::Api(c) => Some(c),
            Code::Keyring(_) => None,
        }
    }

    /// The stable string sent in `gatekeeper-error-code`.
    pub fn code_str(&self) -> &'static str {
        match self.code {
            Code::Api(c) => c.as_str(),
            Code::Keyring(k) => k,
        }
    }

    /// The gRPC status code.
    pub fn grpc(&self) -> tonic::Code {
        match self.code {
            Code::Api(c) => c.grpc(),
            Code::Keyring(_) => tonic::Code::InvalidArgument,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code_str(), self.message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for tonic::Status {
    /// The one conversion to the wire: status code from the catalog, message, and the stable code
    /// in the `gatekeeper-error-code` metadata entry.
    fn from(e: ApiError) -> Self {
        let (grpc, code) = (e.grpc(), e.code_str());
        let message = if e.code == Code::Api(ErrorCode::Internal) {
            tracing::error!(error = %e.message, "internal error");
            "internal error (the detail is in the node's log)".to_string()
        } else {
            e.message
        };
        let mut status = tonic::Status::new(grpc, message);
        status.metadata_mut().insert(
            ERROR_CODE_METADATA,
            tonic::metadata::MetadataValue::from_static(code),
        );
        for (k, v) in e.metadata {
            if let Ok(v) = v.parse() {
                status.metadata_mut().insert(k, v);
            }
        }
        status
    }
}

/// The stable code for a non-OK status that tonic produced itself, before or instead of a
/// handler (so it carries no `gatekeeper-error-code` yet): `(grpc status to send, code)`.
/// `grpc_status` and `message` are the response's `grpc-status` and decoded `grpc-message`.
/// Framing errors of the request (no message, a truncated frame, a bad compression flag) are the
/// caller's fault: `INVALID_ARGUMENT` + `MALFORMED_REQUEST`, never `INTERNAL`.
pub fn transport_code(grpc_status: i32, message: &str) -> Option<(tonic::Code, ErrorCode)> {
    const FRAMING: &[&str] = &[
        "Missing request message",
        "Unexpected EOF decoding stream",
        "Message compressed",
        "protocol error: received message with invalid compression flag",
        "failed to decode",
    ];
    let code = match tonic::Code::from(grpc_status) {
        tonic::Code::Ok => return None,
        tonic::Code::Internal if FRAMING.iter().any(|f| message.starts_with(f)) => {
            ErrorCode::MalformedRequest
        }
        tonic::Code::Internal => ErrorCode::Internal,
        tonic::Code::OutOfRange => ErrorCode::MessageTooLarge,
        tonic::Code::Unimplemented => ErrorCode::Unimplemented,
        tonic::Code::DeadlineExceeded => ErrorCode::Timeout,
        tonic::Code::InvalidArgument => ErrorCode::MalformedRequest,
        _ => return None,
    };
    Some((code.grpc(), code))
}

/// The result type of the cores the services call.
pub type ApiResult<T> = Result<T, ApiError>;

/// How a state-machine rejection reads to a client: one mapping for every service.
pub fn rejected(code: gatekeeper_raft::state::RejectCode, message: String) -> ApiError {
    use gatekeeper_raft::state::RejectCode as R;
    let c = match code {
        R::MalformedCommand | R::InvalidDealing => ErrorCode::InvalidArgument,
        R::AlreadyInitialized => ErrorCode::AlreadyInitialized,
        R::NotInitialized | R::InvalidState | R::EpochOutOfOrder => ErrorCode::InvalidState,
        R::UnknownMember => ErrorCode::MemberNotFound,
        R::UnknownEpoch => ErrorCode::EpochNotFound,
        R::UnknownWorker => ErrorCode::WorkerNotRegistered,
        R::UnknownCluster => ErrorCode::ClusterNotFound,
        R::AlreadyExists => ErrorCode::AlreadyExists,
        R::RotationConflict => ErrorCode::RotationConflict,
        R::ChainMismatch => ErrorCode::ChainMismatch,
        R::ChainGap => ErrorCode::ChainGap,
        R::Unauthorized => ErrorCode::CommandNotAuthorized,
        R::Replayed => ErrorCode::CommandReplayed,
        _ => ErrorCode::InvalidState,
    };
    ApiError::new(c, message)
}

/// How a replica failure reads to a client: one mapping for every service.
pub fn replica(e: gatekeeper_raft::replica::ReplicaError) -> ApiError {
    use gatekeeper_raft::replica::ReplicaError as R;
    if let R::Refused { code, message } = e {
        return rejected(code, message);
    }
    let c = match &e {
        R::NoLeader { .. } => ErrorCode::NoLeader,
        R::TooStale { .. } => ErrorCode::StaleRead,
        R::Raft(_) => ErrorCode::RaftUnavailable,
        R::AlreadyInitialized => ErrorCode::AlreadyInitialized,
        R::Invalid(_) => ErrorCode::InvalidArgument,
        R::Timeout(_) => ErrorCode::Timeout,
        _ => ErrorCode::Internal,
    };
    ApiError::new(c, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The codes docs/api.md lists in its "Error codes" table: first column, backquoted.
    fn documented() -> BTreeSet<String> {
        let doc = include_str!("../../docs/api.md");
        let section = doc
            .split("## Error codes")
            .nth(1)
            .expect("docs/api.md has an \"## Error codes\" section");
        let section = section.split("\n## ").next().unwrap_or(section);
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn catalog_and_docs_list_the_same_codes() {
        let ours: BTreeSet<String> = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        let docs: BTreeSet<String> = documented()
            .into_iter()
            .filter(|c| !c.starts_with("KEYRING_"))
            .collect();
        assert_eq!(
            ours.symmetric_difference(&docs).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "ErrorCode and docs/api.md's error-code table differ"
        );
        assert_eq!(
            ours.len(),
            ErrorCode::ALL.len(),
            "a code string is used twice"
        );
    }

    #[test]
    fn docs_list_every_grpc_mapping_as_the_catalog_does() {
        let doc = include_str!("../../docs/api.md");
        let section = doc.split("## Error codes").nth(1).unwrap();
        for c in ErrorCode::ALL {
            let row = section
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` ", c.as_str())))
                .unwrap_or_else(|| panic!("{c} has no row"));
            let grpc = format!("{:?}", c.grpc());
            let upper: String = grpc
                .chars()
                .enumerate()
                .flat_map(|(i, ch)| {
                    let sep = (i > 0 && ch.is_uppercase()).then_some('_');
                    sep.into_iter().chain(ch.to_uppercase())
                })
                .collect();
            // Second column: the gRPC status.
            let documented = row.split('|').nth(2).unwrap_or_default().trim();
            assert_eq!(
                documented,
                format!("`{upper}`"),
                "{c}: docs row {row:?} gives another gRPC status"
            );
        }
    }

    #[test]
    fn status_carries_the_code_in_metadata() {
        let s: tonic::Status = ApiError::new(ErrorCode::WorkerNotActive, "slashed").into();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert_eq!(s.message(), "slashed");
        assert_eq!(
            s.metadata().get(ERROR_CODE_METADATA).unwrap(),
            "WORKER_NOT_ACTIVE"
        );
        let k = ApiError::field(
            "nonce",
            &keyring::Error::InvalidLength {
                what: "nonce",
                expected: 32,
                got: 3,
            },
        );
        let s: tonic::Status = k.into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            s.metadata().get(ERROR_CODE_METADATA).unwrap(),
            "KEYRING_INVALID_LENGTH"
        );
        assert!(s.message().starts_with("nonce: "));
    }

    #[test]
    fn internal_detail_stays_in_the_log() {
        let s: tonic::Status = ApiError::internal("sled: /data/x corrupt").into();
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("sled"));
        assert_eq!(s.metadata().get(ERROR_CODE_METADATA).unwrap(), "INTERNAL");
    }

    #[test]
    fn not_leader_carries_the_leaders_admin_address() {
        let s: tonic::Status = ApiError::new(ErrorCode::NotLeader, "leader is node 2")
            .with_metadata(LEADER_ADMIN_METADATA, "10.0.0.2:7102")
            .into();
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(s.metadata().get(ERROR_CODE_METADATA).unwrap(), "NOT_LEADER");
        assert_eq!(
            s.metadata().get(LEADER_ADMIN_METADATA).unwrap(),
            "10.0.0.2:7102"
        );
        // A value that is not valid metadata is dropped, not sent broken.
        let s: tonic::Status = ApiError::new(ErrorCode::NotLeader, "x")
            .with_metadata(LEADER_ADMIN_METADATA, "bad\nvalue")
            .into();
        assert!(s.metadata().get(LEADER_ADMIN_METADATA).is_none());
    }

    #[test]
    fn statuses_tonic_makes_itself_get_a_code() {
        use tonic::Code as C;
        let t = |s: C, m: &str| transport_code(s as i32, m);
        assert_eq!(t(C::Ok, ""), None);
        assert_eq!(
            t(C::Internal, "Missing request message."),
            Some((C::InvalidArgument, ErrorCode::MalformedRequest))
        );
        assert_eq!(
            t(C::Internal, "Unexpected EOF decoding stream."),
            Some((C::InvalidArgument, ErrorCode::MalformedRequest))
        );
        assert_eq!(
            t(C::Internal, "boom"),
            Some((C::Internal, ErrorCode::Internal))
        );
        assert_eq!(
            t(C::OutOfRange, "Error, decoded message length too large"),
            Some((C::OutOfRange, ErrorCode::MessageTooLarge))
        );
        assert_eq!(
            t(C::Unimplemented, ""),
            Some((C::Unimplemented, ErrorCode::Unimplemented))
        );
        assert_eq!(t(C::Cancelled, ""), None);
    }

    #[test]
    fn malformed_protobuf_code_matches_the_transport_codec() {
        assert_eq!(
            ErrorCode::MalformedRequest.as_str(),
            gatekeeper_proto::codec::MALFORMED_REQUEST_CODE
        );
    }

    #[test]
    fn every_state_machine_rejection_has_one_code() {
        use gatekeeper_raft::state::RejectCode as R;
        for (r, want) in [
            (R::AlreadyInitialized, ErrorCode::AlreadyInitialized),
            (R::UnknownWorker, ErrorCode::WorkerNotRegistered),
            (R::UnknownCluster, ErrorCode::ClusterNotFound),
            (R::AlreadyExists, ErrorCode::AlreadyExists),
            (R::RotationConflict, ErrorCode::RotationConflict),
            (R::ChainGap, ErrorCode::ChainGap),
        ] {
            assert_eq!(rejected(r, String::new()).code(), Some(want));
        }
    }
}
