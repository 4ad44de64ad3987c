//! Replay protection: a request's timestamp must be inside the window and its nonce unseen within
//! it. Nonces are remembered per node for the window's length, so a replay at any one node within
//! the window is refused (a replay sent to a different node is bounded by the same window).

use std::collections::HashMap;
use std::sync::Mutex;

/// Remembers nonces for `window_ms`.
#[derive(Debug)]
pub struct NonceCache {
    window_ms: u64,
    seen: Mutex<HashMap<[u8; 32], u64>>,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Timestamp outside the window, by this many ms (signed: negative = in the past).
    Skew(i64),
    /// Nonce already used within the window.
    Replayed,
}

/// The replay facts about one request, read from a [`NonceCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// The window, in milliseconds either side of the node's clock.
    pub window_ms: u64,
    /// Whether the request's nonce was already used within the window.
    pub nonce_seen: bool,
}

impl Freshness {
    /// Checks a timestamp against the window.
    pub fn check_time(&self, timestamp_ms: u64, now_ms: u64) -> Result<(), ReplayError> {
        check_time(self.window_ms, timestamp_ms, now_ms)
    }
}

/// Whether `timestamp_ms` is within `window_ms` of `now_ms`.
pub fn check_time(window_ms: u64, timestamp_ms: u64, now_ms: u64) -> Result<(), ReplayError> {
    if timestamp_ms.abs_diff(now_ms) > window_ms {
        let skew = i64::try_from(timestamp_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(now_ms).unwrap_or(i64::MAX));
        return Err(ReplayError::Skew(skew));
    }
    Ok(())
}

impl NonceCache {
    /// A cache with the given window.
    pub fn new(window_ms: u64) -> Self {
        Self {
            window_ms,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the timestamp only (no state change).
    pub fn check_time(&self, timestamp_ms: u64, now_ms: u64) -> Result<(), ReplayError> {
        check_time(self.window_ms, timestamp_ms, now_ms)
    }

    /// What a decision needs to know about `nonce` at `now_ms`: the window, and whether the nonce
    /// was already used. The decision stays pure; [`NonceCache::use_nonce`] records.
    pub fn freshness(&self, nonce: &[u8; 32], now_ms: u64) -> Freshness {
        Freshness {
            window_ms: self.window_ms,
            nonce_seen: self.seen(nonce, now_ms),
        }
    }

    /// Whether `nonce` was used within the window (no state change). The authoritative check is
    /// [`NonceCache::use_nonce`], which tests and records atomically.
    pub fn seen(&self, nonce: &[u8; 32], now_ms: u64) -> bool {
        self.seen
            .lock()
            .expect("nonce lock")
            .get(nonce)
            .is_some_and(|exp| *exp > now_ms)
    }

    /// The window, in milliseconds either side of the node's clock.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Records the nonce if unseen; call only once every other check has passed.
    pub fn use_nonce(&self, nonce: &[u8; 32], now_ms: u64) -> Result<(), ReplayError> {
        let mut seen = self.seen.lock().expect("nonce lock");
        // Prune when the map doubles past its last pruned size, not on every request.
        if seen.len() > 4096 && seen.len().is_power_of_two() {
            seen.retain(|_, exp| *exp > now_ms);
        }
        match seen.get(nonce) {
            Some(exp) if *exp > now_ms => Err(ReplayError::Replayed),
            _ => {
                // Remember it until the latest time a request with this nonce could still pass.
                seen.insert(*nonce, now_ms + 2 * self.window_ms);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_replays() {
        let c = NonceCache::new(1000);
        assert_eq!(c.check_time(10_000, 10_500), Ok(()));
        assert_eq!(c.check_time(8_000, 10_000), Err(ReplayError::Skew(-2000)));
        assert_eq!(c.check_time(12_000, 10_000), Err(ReplayError::Skew(2000)));
        assert_eq!(c.use_nonce(&[1; 32], 10_000), Ok(()));
        assert_eq!(c.use_nonce(&[1; 32], 10_500), Err(ReplayError::Replayed));
        assert_eq!(c.use_nonce(&[2; 32], 10_500), Ok(()));
        // Long after the window the nonce may be forgotten.
        assert_eq!(c.use_nonce(&[1; 32], 20_000), Ok(()));
        // Absurd timestamps are refused, not overflowed.
        assert!(matches!(
            c.check_time(u64::MAX, 10_000),
            Err(ReplayError::Skew(_))
        ));
        assert!(matches!(
            c.check_time(0, u64::MAX),
            Err(ReplayError::Skew(_))
        ));
    }
}
