//! The one retry policy: capped exponential backoff without jitter.
//!
//! Every loop that reconnects or retries (lease keeper, watchers, the etcd watch, the
//! shop's follower and fence, the node's initial stake, the gateway's ledger follower)
//! waits by a [`Backoff`] built from a [`RetryPolicy`], so "how long after the n-th
//! failure" is decided in one place. The delays come from `backon`'s exponential backoff;
//! this wrapper adds what those loops need and `backon` leaves out: the sequence never
//! ends (they retry until told to stop) and it starts again after a success
//! ([`Backoff::reset`]). No jitter: the retriers are a handful of processes, not a herd,
//! and the partition tests reason about exact worst-case waits.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// How long to wait after consecutive failures: `min`, then doubling up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure of a run.
    pub min: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl RetryPolicy {
    /// Waits from `min`, doubling up to `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// The same policy with no wait longer than `cap`.
    pub fn capped_at(self, cap: Duration) -> Self {
        Self {
            min: self.min.min(cap),
            max: self.max.min(cap),
        }
    }

    /// A fresh run of delays under this policy.
    pub fn backoff(self) -> Backoff {
        Backoff {
            policy: self,
            delays: self.builder().build(),
        }
    }

    fn builder(self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .without_max_times()
    }
}

/// The delays of one run of failures under a [`RetryPolicy`].
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// The wait before the next attempt (each call is one more failure).
    pub fn next_delay(&mut self) -> Duration {
        // Unlimited attempts: `backon` ends the sequence only at a total-delay limit,
        // which this policy never sets.
        self.delays.next().unwrap_or(self.policy.max)
    }

    /// An attempt succeeded: the next failure waits `min` again.
    pub fn reset(&mut self) {
        *self = self.policy.backoff();
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rounded(delay: Duration) -> u128 {
        // backon multiplies in f32 seconds: compare to the millisecond.
        (delay + MS / 2).as_millis()
    }

    /// Delays double from min to max, stay at max, and start again after a reset.
    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut backoff = RetryPolicy::new(100 * MS, 1000 * MS).backoff();
        let first: Vec<u128> = (0..7).map(|_| rounded(backoff.next_delay())).collect();
        assert_eq!(first, [100, 200, 400, 800, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(rounded(backoff.next_delay()), 100);
    }

    /// A cap below max bounds every delay, min included.
    #[test]
    fn capped_policy_never_waits_longer_than_the_cap() {
        let policy = RetryPolicy::new(100 * MS, 2000 * MS).capped_at(300 * MS);
        let mut backoff = policy.backoff();
        let delays: Vec<u128> = (0..4).map(|_| rounded(backoff.next_delay())).collect();
        assert_eq!(delays, [100, 200, 300, 300]);
        let tiny = RetryPolicy::new(100 * MS, 2000 * MS).capped_at(50 * MS);
        assert_eq!(rounded(tiny.backoff().next_delay()), 50);
    }

    /// The sequence never ends: thousands of failures still get a delay of max.
    #[test]
    fn the_sequence_never_runs_out() {
        let mut backoff = RetryPolicy::new(MS, 4 * MS).backoff();
        for _ in 0..10_000 {
            backoff.next_delay();
        }
        assert_eq!(rounded(backoff.next_delay()), 4);
    }
}
