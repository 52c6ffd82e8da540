//! Sign-in attempts per username, rate-limited.
//!
//! Why: a password guesser otherwise gets as many tries as the hashing slots allow (about
//! a hundred a second here), against one account or many. Each username gets a burst of
//! [`SIGN_IN_BURST`] attempts and then one more every [`SIGN_IN_PERIOD`] (GCRA, the
//! `governor` crate's keyed limiter); past that, a sign-in is refused before any hash is
//! computed, with RESOURCE_EXHAUSTED and the wait. Every attempt counts, whether the
//! password was right or not, and whether the name exists or not: so the limit tells an
//! attacker nothing about which names exist, and a customer who mistypes a few times is
//! never held up. A limit, not a lock-out: nobody can lock a customer out for long by
//! guessing wrong on their name.
//!
//! The state is in memory, per shop process (sign-in is a read, so both shops answer it):
//! an attacker who reaches both shops directly gets twice the rate, and a restart starts
//! afresh, which gives no more than waiting one period would. Shared state (a replicated
//! counter per name) would turn every failed guess into a write; not worth it at this rate. Memory is bounded: names whose allowance is full again are dropped whenever
//! more than [`TRACKED_NAMES`] are tracked.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::error::ShopError;

/// Sign-in attempts one username may make at once.
pub const SIGN_IN_BURST: u32 = 5;
/// After the burst, one more attempt per username every this long.
pub const SIGN_IN_PERIOD: Duration = Duration::from_secs(12);
/// Past this many tracked names, those back at a full allowance are forgotten.
pub const TRACKED_NAMES: usize = 10_000;
/// Longest username prefix used as the key (longer names are refused by validation).
const KEY_CHARS: usize = 64;

/// The per-username sign-in limiter (the clock is a parameter for the tests).
pub struct SignInThrottle<C: Clock = DefaultClock> {
    limiter: RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl Default for SignInThrottle {
    fn default() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> SignInThrottle<C> {
    fn with_clock(clock: C) -> Self {
        let burst = NonZeroU32::new(SIGN_IN_BURST).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(SIGN_IN_PERIOD)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Counts one sign-in attempt for `username`; `ResourceExhausted` (saying how long to
    /// wait) when its allowance is used up.
    pub fn attempt(&self, username: &str) -> Result<(), ShopError> {
        if self.limiter.len() > TRACKED_NAMES {
            self.limiter.retain_recent();
        }
        // Usernames are unique without regard to ASCII case (`keys::username_key`), so
        // "Ann" and "ann" share one allowance.
        let key: String = username
            .chars()
            .take(KEY_CHARS)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            ShopError::ResourceExhausted(format!(
                "too many sign-in attempts for this username; retry in {} s",
                wait.as_secs().max(1)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A username gets its burst, then is refused with the wait named; other names are
    /// not affected, known or not.
    #[test]
    fn a_burst_per_name_then_refused() {
        let throttle = SignInThrottle::default();
        for _ in 0..SIGN_IN_BURST {
            assert_eq!(throttle.attempt("ann"), Ok(()));
        }
        match throttle.attempt("ann") {
            Err(ShopError::ResourceExhausted(msg)) => {
                assert!(
                    msg.contains("retry in 12 s") || msg.contains("retry in 11 s"),
                    "{msg}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            throttle.attempt("ANN").is_err(),
            "one allowance whatever the case"
        );
        assert_eq!(throttle.attempt("ben"), Ok(()));
        assert_eq!(throttle.attempt("nobody-by-this-name"), Ok(()));
    }

    /// The allowance comes back one attempt per period; spraying many names keeps the
    /// tracked set bounded: past the cap, names back at a full allowance are dropped.
    #[test]
    fn allowance_returns_and_tracked_names_stay_bounded() {
        let clock = governor::clock::FakeRelativeClock::default();
        let throttle = SignInThrottle::with_clock(clock.clone());
        for _ in 0..=SIGN_IN_BURST {
            let _ = throttle.attempt("ann");
        }
        assert!(throttle.attempt("ann").is_err());
        clock.advance(SIGN_IN_PERIOD);
        assert_eq!(
            throttle.attempt("ann"),
            Ok(()),
            "one attempt back per period"
        );

        for i in 0..=TRACKED_NAMES {
            throttle.attempt(&format!("name-{i}")).unwrap();
        }
        assert_eq!(throttle.limiter.len(), TRACKED_NAMES + 2);
        clock.advance(SIGN_IN_PERIOD * (SIGN_IN_BURST + 1));
        throttle.attempt("one-more").unwrap();
        assert!(
            throttle.limiter.len() <= 2,
            "names at a full allowance were dropped: {}",
            throttle.limiter.len()
        );
    }
}
