//! Reconnect delays: capped exponential backoff with jitter, so that a fleet that lost its hub
//! at the same moment does not come back at the same moment.

use std::time::Duration;

use rand::Rng;

/// Delay before reconnect attempt `n` (from 0): `initial · 2ⁿ`, capped at `max`, then a random
/// point in its upper half ("equal jitter": never less than half the nominal delay, so the
/// backoff still backs off, and spread enough to de-synchronise a fleet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The nominal (un-jittered) delay before attempt `attempt`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The jittered delay before attempt `attempt`: in `[nominal / 2, nominal]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        let half = nominal / 2;
        let spread = u64::try_from((nominal - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rand::rng().random_range(0..=spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_jitters_in_the_upper_half() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        assert_eq!(b.nominal(0), Duration::from_millis(100));
        assert_eq!(b.nominal(3), Duration::from_millis(800));
        assert_eq!(b.nominal(10), Duration::from_secs(2));
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(2));
        for attempt in 0..12 {
            let d = b.delay(attempt);
            assert!(
                d >= b.nominal(attempt) / 2 && d <= b.nominal(attempt),
                "{d:?}"
            );
        }
    }
}
