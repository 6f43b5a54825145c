//! Reconnect delays: exponential with jitter, and a harder schedule for `replaced`.

use std::time::Duration;

use rand::RngExt;

/// Reconnects after a drop: about 1 s, then doubling up to 3 minutes.
pub const RECONNECT: Schedule = Schedule { first: Duration::from_secs(1), cap: Duration::from_secs(180) };
/// After `replaced`: never fight the other connection; one minute, doubling up to an hour.
pub const REPLACED: Schedule = Schedule { first: Duration::from_secs(60), cap: Duration::from_secs(3600) };
/// A connection that stayed up this long resets the back-off.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub first: Duration,
    pub cap: Duration,
}

impl Schedule {
    /// The delay before attempt `attempt` (1-based): `first * 2^(attempt-1)`, capped, then
    /// jittered down by up to half so that many sessions do not reconnect in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let nominal = self.first.saturating_mul(1 << exponent).min(self.cap);
        let jitter = rand::rng().random_range(0.5..=1.0);
        nominal.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        for attempt in 1..30 {
            let delay = RECONNECT.delay(attempt);
            let nominal = RECONNECT.first.saturating_mul(1 << (attempt - 1).min(20)).min(RECONNECT.cap);
            assert!(delay <= nominal && delay >= nominal / 2, "attempt {attempt}: {delay:?} vs {nominal:?}");
        }
        assert!(RECONNECT.delay(1) <= Duration::from_secs(1));
        assert!(RECONNECT.delay(40) <= RECONNECT.cap);
    }
}
