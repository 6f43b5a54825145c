//! The body every native webhook carries, and event ids.

use rand::RngExt;
use serde::Serialize;

/// `{"id": "evt_<ULID>", "event", "session", "timestamp_ms", "data", "v": 1}`; the id is
/// fixed when the event is recorded and stays the same across retries.
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    pub id: &'a str,
    pub event: &'a str,
    pub session: &'a str,
    pub timestamp_ms: u64,
    pub data: &'a serde_json::Value,
    pub v: u8,
}

/// What a `webhook.test` event carries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestData {
    /// Always `a test event from wagate`.
    pub message: &'static str,
}

impl TestData {
    pub const EVENT: TestData = TestData { message: "a test event from wagate" };
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// `evt_` and a ULID: 48 bits of milliseconds and 80 random bits in Crockford base32, so
/// ids sort by creation time.
pub fn new_event_id(now_ms: u64) -> String {
    let random: u128 = rand::rng().random::<u128>() & ((1u128 << 80) - 1);
    let value = (u128::from(now_ms & ((1 << 48) - 1)) << 80) | random;
    let mut text = String::with_capacity(30);
    text.push_str("evt_");
    for index in (0..26).rev() {
        let digit = (value >> (index * 5)) & 0x1f;
        text.push(CROCKFORD[digit as usize] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ulids_that_sort_by_time() {
        let a = new_event_id(1_700_000_000_000);
        let b = new_event_id(1_700_000_000_001);
        assert_eq!(a.len(), 30);
        assert!(a.starts_with("evt_"));
        assert!(a[4..].bytes().all(|c| CROCKFORD.contains(&c)));
        assert!(a < b);
        assert_ne!(new_event_id(5), new_event_id(5));
        // The time part of a known instant.
        assert_eq!(&new_event_id(0)[4..14], "0000000000");
    }
}
