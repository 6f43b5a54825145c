//! The disconnect policy (PROTOCOL.md section 8): for each way a connection ends, the one
//! right reaction. Pure, so every row is unit-tested; the supervisor carries it out.

use std::time::Duration;

use super::backoff::{Schedule, RECONNECT, REPLACED};
use super::state::{reason, StateKind};
use crate::engine::{CloseReason, MAX_BAN};

/// A 500 that repeats this many times in a row is reported instead of retried.
pub const BAD_SESSION_LIMIT: u32 = 3;

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Open a new connection at once: the 515 after pairing, or the next QR cycle.
    ReconnectNow { reason: &'static str },
    /// Wait, then reconnect; the session shows `state` meanwhile.
    Retry { state: StateKind, reason: &'static str, code: Option<u16>, schedule: Schedule },
    /// Unlinked: wipe the keys and wait for a new link.
    LoggedOut { code: u16 },
    /// Banned until `expire` from now (at most [`MAX_BAN`]); no reconnect before that.
    Banned { expire: Duration },
    /// Stay down in `state` until someone starts the session again.
    Stop { state: StateKind, reason: &'static str, code: Option<u16> },
}

/// What the policy needs to know besides the reason.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    /// The connection showed a QR code (the session is not linked yet).
    pub showed_qr: bool,
    /// QR cycles that ended unscanned before this one.
    pub qr_cycles_before: u32,
    pub qr_cycle_cap: u32,
    /// 500 stream errors in a row before this close.
    pub bad_sessions_before: u32,
}

pub fn decide(close: &CloseReason, now: Situation) -> Decision {
    use Decision::*;
    let qr_cycle_over = |reason| {
        if now.qr_cycles_before + 1 >= now.qr_cycle_cap {
            Stop { state: StateKind::Failed, reason: reason::QR_TIMEOUT, code: None }
        } else {
            ReconnectNow { reason }
        }
    };
    match close {
        CloseReason::RestartRequired => ReconnectNow { reason: reason::RESTART_REQUIRED },
        CloseReason::QrRefsExhausted => qr_cycle_over(reason::QR_TIMEOUT),
        CloseReason::ClosedByUs => Stop { state: StateKind::Stopped, reason: reason::STOPPED, code: None },
        CloseReason::LoggedOut { code } => LoggedOut { code: *code },
        CloseReason::Replaced => {
            Retry { state: StateKind::Replaced, reason: reason::REPLACED, code: Some(440), schedule: REPLACED }
        }
        CloseReason::TempBanned { expire } => Banned { expire: (*expire).min(MAX_BAN) },
        CloseReason::Outdated => Stop { state: StateKind::Outdated, reason: reason::OUTDATED, code: Some(405) },
        CloseReason::MultiDeviceMismatch => {
            Stop { state: StateKind::Failed, reason: reason::MULTI_DEVICE_MISMATCH, code: Some(411) }
        }
        CloseReason::StreamError { code: 500 } if now.bad_sessions_before + 1 >= BAD_SESSION_LIMIT => {
            Stop { state: StateKind::Failed, reason: reason::BAD_SESSION, code: Some(500) }
        }
        // While a QR is up, a drop ends that QR cycle too: the next connection shows a new one.
        _ if now.showed_qr && now.qr_cycles_before + 1 >= now.qr_cycle_cap => {
            Stop { state: StateKind::Failed, reason: reason::QR_TIMEOUT, code: None }
        }
        CloseReason::StreamError { code } => Retry {
            state: StateKind::Reconnecting,
            reason: reason::STREAM_ERROR,
            code: Some(*code),
            schedule: RECONNECT,
        },
        CloseReason::LoginFailure { code } => Retry {
            state: StateKind::Reconnecting,
            reason: reason::LOGIN_FAILURE,
            code: Some(*code),
            schedule: RECONNECT,
        },
        CloseReason::ConnectionLost { .. } => {
            Retry { state: StateKind::Reconnecting, reason: reason::CONNECTION_LOST, code: None, schedule: RECONNECT }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINKED: Situation =
        Situation { showed_qr: false, qr_cycles_before: 0, qr_cycle_cap: 3, bad_sessions_before: 0 };

    fn retry_state(decision: Decision) -> (StateKind, Option<u16>) {
        match decision {
            Decision::Retry { state, code, .. } => (state, code),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn restart_required_reconnects_at_once_never_wipes() {
        assert_eq!(
            decide(&CloseReason::RestartRequired, LINKED),
            Decision::ReconnectNow { reason: reason::RESTART_REQUIRED }
        );
        let unlinked = Situation { showed_qr: true, qr_cycles_before: 2, ..LINKED };
        assert_eq!(
            decide(&CloseReason::RestartRequired, unlinked),
            Decision::ReconnectNow { reason: reason::RESTART_REQUIRED },
            "515 right after a scan in the last QR cycle still reconnects"
        );
    }

    #[test]
    fn unlinking_codes_log_out() {
        for code in [401, 403, 406] {
            assert_eq!(decide(&CloseReason::LoggedOut { code }, LINKED), Decision::LoggedOut { code });
        }
    }

    #[test]
    fn replaced_backs_off_hard() {
        match decide(&CloseReason::Replaced, LINKED) {
            Decision::Retry { state: StateKind::Replaced, schedule, .. } => {
                assert!(schedule.first >= Duration::from_secs(60))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bans_outdated_and_mismatch_stop() {
        let expire = Duration::from_secs(600);
        assert_eq!(decide(&CloseReason::TempBanned { expire }, LINKED), Decision::Banned { expire });
        assert!(matches!(decide(&CloseReason::Outdated, LINKED), Decision::Stop { state: StateKind::Outdated, .. }));
        assert!(matches!(
            decide(&CloseReason::MultiDeviceMismatch, LINKED),
            Decision::Stop { state: StateKind::Failed, code: Some(411), .. }
        ));
    }

    #[test]
    fn a_ban_lasts_thirty_days_at_most_whatever_the_server_says() {
        const THIRTY_DAYS: Duration = Duration::from_secs(30 * 24 * 3600);
        for expire in
            [Duration::MAX, Duration::from_secs(u64::MAX), Duration::from_secs(i64::MAX as u64), THIRTY_DAYS * 2]
        {
            assert_eq!(
                decide(&CloseReason::TempBanned { expire }, LINKED),
                Decision::Banned { expire: THIRTY_DAYS },
                "{expire:?}"
            );
        }
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(decide(&CloseReason::TempBanned { expire: day }, LINKED), Decision::Banned { expire: day });
    }

    #[test]
    fn drops_and_server_errors_retry_with_backoff() {
        assert_eq!(
            retry_state(decide(&CloseReason::ConnectionLost { detail: "eof".into() }, LINKED)).0,
            StateKind::Reconnecting
        );
        for code in [408, 428, 503] {
            assert_eq!(
                retry_state(decide(&CloseReason::StreamError { code }, LINKED)),
                (StateKind::Reconnecting, Some(code))
            );
        }
    }

    #[test]
    fn a_repeating_500_is_reported() {
        assert_eq!(retry_state(decide(&CloseReason::StreamError { code: 500 }, LINKED)).1, Some(500));
        let third = Situation { bad_sessions_before: BAD_SESSION_LIMIT - 1, ..LINKED };
        assert!(matches!(
            decide(&CloseReason::StreamError { code: 500 }, third),
            Decision::Stop { state: StateKind::Failed, reason: reason::BAD_SESSION, .. }
        ));
    }

    #[test]
    fn qr_cycles_are_capped() {
        let showing = Situation { showed_qr: true, qr_cycles_before: 0, ..LINKED };
        assert!(matches!(decide(&CloseReason::QrRefsExhausted, showing), Decision::ReconnectNow { .. }));
        let last = Situation { qr_cycles_before: 2, ..showing };
        assert!(matches!(
            decide(&CloseReason::QrRefsExhausted, last),
            Decision::Stop { state: StateKind::Failed, reason: reason::QR_TIMEOUT, .. }
        ));
        assert!(matches!(
            decide(&CloseReason::ConnectionLost { detail: "eof".into() }, last),
            Decision::Stop { state: StateKind::Failed, reason: reason::QR_TIMEOUT, .. }
        ));
    }
}
