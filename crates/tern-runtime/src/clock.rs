//! The wall clock, as the Unix times Tern stores and sends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch (zero if the clock is set before it).
fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Milliseconds since the Unix epoch: message timestamps, revocation
/// watermarks, presence expiries.
pub fn now_ms() -> i64 {
    since_epoch().as_millis() as i64
}

/// Seconds since the Unix epoch: token claims and row creation times.
pub fn now_secs() -> i64 {
    since_epoch().as_secs() as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn milliseconds_and_seconds_agree() {
        let (ms, secs) = (super::now_ms(), super::now_secs());
        assert!(ms > 1_600_000_000_000, "{ms}");
        assert!((ms / 1000 - secs).abs() <= 1, "{ms} {secs}");
    }
}
