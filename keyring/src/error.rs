//! The keyring's one error type, with stable codes.

/// Everything the keyring can refuse. Each variant has a stable [`Error::code`] that the node maps
/// to a gRPC status (docs/api.md); messages never contain secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A threshold of 0 was asked for.
    #[error("threshold must be at least 1")]
    ThresholdZero,
    /// The threshold is larger than the number of shares.
    #[error("threshold {threshold} exceeds the number of shares {shares}")]
    ThresholdExceedsShares {
        /// Requested threshold.
        threshold: usize,
        /// Requested (or available) number of shares.
        shares: usize,
    },
    /// More than 255 shares (or none) were asked for.
    #[error("number of shares must be between 1 and 255, got {0}")]
    ShareCountOutOfRange(usize),
    /// A share carried index 0 (the secret's own x-coordinate).
    #[error("share index 0 is not allowed")]
    ZeroShareIndex,
    /// Two shares with the same index were given.
    #[error("duplicate share index {0}")]
    DuplicateShareIndex(u8),
    /// A share does not lie on the polynomial the commitments describe.
    #[error("share {index} does not match the dealing's commitments")]
    ShareVerificationFailed {
        /// Index of the offending share.
        index: u8,
    },
    /// Fewer verified shares than the threshold.
    #[error("{got} verified shares given, {needed} needed")]
    NotEnoughShares {
        /// Verified shares given.
        got: usize,
        /// The dealing's threshold.
        needed: usize,
    },
    /// The rebuilt secret's public key is not the epoch's master public key.
    #[error("reconstructed secret does not match the epoch's master public key")]
    MasterKeyMismatch,
    /// The commitments are malformed (bad point encoding, wrong count, identity point).
    #[error("invalid share commitments: {0}")]
    InvalidCommitments(&'static str),
    /// The wrapped master secret failed to decrypt under the rebuilt share key.
    #[error("wrapped master secret failed to open (wrong dealing or tampered)")]
    WrappedSecretOpenFailed,
    /// A byte string had the wrong length.
    #[error("{what} must be {expected} bytes, got {got}")]
    InvalidLength {
        /// What was being parsed.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// Bytes that should be a public key are not a valid point (or are a weak point).
    #[error("invalid {0} public key")]
    InvalidPublicKey(&'static str),
    /// Bytes that should be a secret key or scalar are not canonical.
    #[error("invalid {0} secret encoding")]
    InvalidSecret(&'static str),
    /// An sr25519 signature did not verify (or did not parse).
    #[error("signature verification failed")]
    BadSignature,
    /// HPKE sealing failed (for example a low-order recipient key).
    #[error("envelope could not be sealed: {0}")]
    EnvelopeSealFailed(&'static str),
    /// An HPKE envelope did not open: wrong recipient, other context, or modified bytes.
    #[error("envelope failed to open (wrong recipient, context or tampered ciphertext)")]
    EnvelopeOpenFailed,
    /// An envelope of a version this build does not know.
    #[error("unsupported envelope version {0}")]
    UnsupportedEnvelopeVersion(u32),
    /// A sealed blob shorter than its header.
    #[error("sealed blob is truncated ({0} bytes)")]
    SealedBlobTruncated(usize),
    /// A sealed blob of a version this build does not know.
    #[error("unsupported sealed blob version {0}")]
    UnsupportedSealedVersion(u8),
    /// A sealed blob made under another sealing key.
    #[error("sealed blob was made under another sealing key (key id {0})")]
    SealingKeyMismatch(String),
    /// A sealed blob failed authentication.
    #[error("sealed blob failed to open (tampered or wrong label)")]
    SealedBlobOpenFailed,
}

impl Error {
    /// A stable, machine-readable code (`KEYRING_…`). Codes never change meaning; new errors get
    /// new codes. The node logs and returns them with the gRPC status.
    pub fn code(&self) -> &'static str {
        match self {
            Error::ThresholdZero => "KEYRING_THRESHOLD_ZERO",
            Error::ThresholdExceedsShares { .. } => "KEYRING_THRESHOLD_EXCEEDS_SHARES",
            Error::ShareCountOutOfRange(_) => "KEYRING_SHARE_COUNT_OUT_OF_RANGE",
            Error::ZeroShareIndex => "KEYRING_ZERO_SHARE_INDEX",
            Error::DuplicateShareIndex(_) => "KEYRING_DUPLICATE_SHARE_INDEX",
            Error::ShareVerificationFailed { .. } => "KEYRING_SHARE_VERIFICATION_FAILED",
            Error::NotEnoughShares { .. } => "KEYRING_NOT_ENOUGH_SHARES",
            Error::MasterKeyMismatch => "KEYRING_MASTER_KEY_MISMATCH",
            Error::InvalidCommitments(_) => "KEYRING_INVALID_COMMITMENTS",
            Error::WrappedSecretOpenFailed => "KEYRING_WRAPPED_SECRET_OPEN_FAILED",
            Error::InvalidLength { .. } => "KEYRING_INVALID_LENGTH",
            Error::InvalidPublicKey(_) => "KEYRING_INVALID_PUBLIC_KEY",
            Error::InvalidSecret(_) => "KEYRING_INVALID_SECRET",
            Error::BadSignature => "KEYRING_BAD_SIGNATURE",
            Error::EnvelopeSealFailed(_) => "KEYRING_ENVELOPE_SEAL_FAILED",
            Error::EnvelopeOpenFailed => "KEYRING_ENVELOPE_OPEN_FAILED",
            Error::UnsupportedEnvelopeVersion(_) => "KEYRING_UNSUPPORTED_ENVELOPE_VERSION",
            Error::SealedBlobTruncated(_) => "KEYRING_SEALED_BLOB_TRUNCATED",
            Error::UnsupportedSealedVersion(_) => "KEYRING_UNSUPPORTED_SEALED_VERSION",
            Error::SealingKeyMismatch(_) => "KEYRING_SEALING_KEY_MISMATCH",
            Error::SealedBlobOpenFailed => "KEYRING_SEALED_BLOB_OPEN_FAILED",
        }
    }
}

/// Result alias used throughout the keyring.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Checks that `bytes` has exactly `N` bytes and returns it as an array.
pub(crate) fn fixed<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| Error::InvalidLength {
        what,
        expected: N,
        got: bytes.len(),
    })
}
