//! Wall-clock time, one way: every timestamp the cluster stores or sends (registry
//! instances, shop records, cookies, cluster snapshots) is Unix milliseconds as `i64`, the
//! type of the protobuf fields that carry them. Durations and deadlines inside a process
//! use `Instant`, never this.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch (zero if the clock is set before 1970).
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch (saturating; zero before 1970).
pub fn unix_ms() -> i64 {
    millis(since_epoch())
}

/// `duration` in whole milliseconds, saturating: what a timestamp field adds to a time.
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    /// Milliseconds and the duration agree and lie after 2020.
    #[test]
    fn now_is_after_2020_in_both_forms() {
        let ms = super::unix_ms();
        let since = super::since_epoch();
        assert!(ms > 1_577_836_800_000, "{ms}");
        assert!(since.as_millis() + 1000 >= ms as u128);
    }
}
