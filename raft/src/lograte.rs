//! Rate limits for log lines a caller can trigger at will (refused handshakes, refused peers,
//! node certificates at the admin listener), so a flood cannot fill the disk: a line at most once
//! per interval, carrying the count of the ones left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One rate-limited kind of log line.
#[derive(Debug)]
pub struct LogGate {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogGate {
    /// A gate letting one line through per `every`.
    pub const fn new(every: Duration) -> LogGate {
        LogGate {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(left out since the last line)` when a line may be written now, else `None` (and the
    /// event is counted).
    pub fn pass(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.is_none_or(|t| now.duration_since(t) >= self.every) {
            s.0 = Some(now);
            Some(std::mem::take(&mut s.1))
        } else {
            s.1 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_others() {
        let g = LogGate::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(g.pass(t0), Some(0));
        assert_eq!(g.pass(t0 + Duration::from_millis(10)), None);
        assert_eq!(g.pass(t0 + Duration::from_millis(999)), None);
        assert_eq!(g.pass(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(g.pass(t0 + Duration::from_secs(1)), None);
    }
}
