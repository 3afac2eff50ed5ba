//! The retry schedule: exponential backoff with jitter, capped, up to a
//! maximum age after which the message is bounced.

use std::time::Duration;

/// When to try again after a transient failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The longest wait between two attempts.
    pub max: Duration,
    /// How long a message may stay queued before it is bounced.
    pub max_age: Duration,
}

impl RetrySchedule {
    /// The wait after `attempts` failed attempts (1 for the first), before
    /// jitter: `initial * 2^(attempts-1)`, capped at `max`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(32);
        self.initial
            .checked_mul(1u32 << exponent.min(31))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The backoff with jitter: uniformly within +-20 %, so that messages
    /// that failed together do not retry together.
    pub fn delay(&self, attempts: u32) -> Duration {
        let base = self.backoff(attempts);
        let factor: f64 = rand::random_range(0.8..1.2);
        base.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            max_age: Duration::from_secs(86400),
        }
    }

    #[test]
    fn doubles_then_caps() {
        let s = schedule();
        let waits: Vec<u64> = (1..=8).map(|n| s.backoff(n).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }

    proptest! {
        #[test]
        fn backoff_only_grows_and_stays_capped(initial in 1u64..10_000, max in 1u64..1_000_000, attempts in 1u32..200) {
            let s = RetrySchedule { initial: Duration::from_millis(initial), max: Duration::from_millis(max.max(initial)), max_age: Duration::ZERO };
            prop_assert!(s.backoff(attempts) <= s.backoff(attempts + 1));
            prop_assert!(s.backoff(attempts) <= s.max);
            let d = s.delay(attempts);
            prop_assert!(d >= s.backoff(attempts).mul_f64(0.79) && d <= s.backoff(attempts).mul_f64(1.21));
        }
    }
}
