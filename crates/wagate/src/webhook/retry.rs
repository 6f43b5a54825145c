//! When to try a failed delivery again.

use std::time::Duration;

use rand::RngExt;

/// Delay before attempt `attempt + 1` after `attempt` failures: 1 s doubling to 10 min, with
/// up to half taken off at random so receivers coming back are not hit by every event at once.
pub fn backoff(failures: u32) -> Duration {
    let nominal = Duration::from_secs(1).saturating_mul(1 << failures.saturating_sub(1).min(20)).min(MAX_DELAY);
    nominal.mul_f64(rand::rng().random_range(0.5..=1.0))
}

pub const MAX_DELAY: Duration = Duration::from_secs(600);

/// `Retry-After` as delay-seconds or an HTTP date, capped at an hour.
pub fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            at.signed_duration_since(now).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(Duration::from_secs(3600)))
}

/// What an answer means for the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again later (connection errors, timeouts, 5xx, 408, 429).
    Retry,
    /// The receiver refuses it; trying again would not help (other 4xx, redirects).
    Dead,
}

pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_delays() {
        assert_eq!(verdict(204), Verdict::Delivered);
        for status in [408, 429, 500, 502, 503] {
            assert_eq!(verdict(status), Verdict::Retry, "{status}");
        }
        for status in [301, 400, 401, 404, 410] {
            assert_eq!(verdict(status), Verdict::Dead, "{status}");
        }
        assert!(backoff(1) <= Duration::from_secs(1));
        assert!(backoff(30) <= MAX_DELAY && backoff(30) >= MAX_DELAY / 2);
        let now = chrono::Utc::now();
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("99999", now), Some(Duration::from_secs(3600)));
        let later = (now + chrono::Duration::seconds(30)).to_rfc2822();
        let parsed = retry_after(&later, now).unwrap();
        assert!(parsed <= Duration::from_secs(30) && parsed >= Duration::from_secs(29), "{parsed:?}");
        assert_eq!(retry_after("soon", now), None);
    }
}
