//! The one place in this crate that reads the wall clock. Decisions (issuance, the keeper's
//! planner, share authorization, attestation policy) take `now` as an argument; their callers get
//! it here.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    gatekeeper_raft::now_ms()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// The wall clock as a `SystemTime` (for certificate validity).
pub fn now() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms())
}
