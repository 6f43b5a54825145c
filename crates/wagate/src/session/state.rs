//! A session's state as the API and the events show it, with the words an operator needs.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::Me;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    Stopped,
    Connecting,
    AwaitingScan,
    Pairing,
    Connected,
    Reconnecting,
    LoggedOut,
    Replaced,
    Banned,
    Outdated,
    Failed,
}

impl StateKind {
    /// The snake_case name used in the API and webhooks (the same as its JSON form).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Connecting => "connecting",
            Self::AwaitingScan => "awaiting_scan",
            Self::Pairing => "pairing",
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
            Self::LoggedOut => "logged_out",
            Self::Replaced => "replaced",
            Self::Banned => "banned",
            Self::Outdated => "outdated",
            Self::Failed => "failed",
        }
    }

    /// States in which the session holds or is opening a connection (or has one scheduled)
    /// on its own; a `start` then changes nothing.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Connecting | Self::AwaitingScan | Self::Pairing | Self::Connected | Self::Reconnecting)
    }
}

/// Machine-readable reasons, also used in logs and metrics.
pub mod reason {
    pub const STARTED: &str = "started";
    pub const RESTORED: &str = "restored";
    /// Linked, restored after a gateway start, waiting for its turn to reconnect.
    pub const WAITING_TURN: &str = "waiting_turn";
    pub const RESTART_REQUIRED: &str = "restart_required";
    pub const CONNECTION_LOST: &str = "connection_lost";
    pub const STREAM_ERROR: &str = "stream_error";
    pub const QR_TIMEOUT: &str = "qr_timeout";
    pub const LOGGED_OUT: &str = "logged_out";
    pub const LOGOUT_REQUESTED: &str = "logout_requested";
    pub const REPLACED: &str = "replaced";
    pub const TEMP_BANNED: &str = "temp_banned";
    pub const OUTDATED: &str = "client_outdated";
    pub const MULTI_DEVICE_MISMATCH: &str = "multi_device_mismatch";
    pub const BAD_SESSION: &str = "bad_session";
    pub const LOGIN_FAILURE: &str = "login_failure";
    pub const STOPPED: &str = "stopped";
    pub const MOVED: &str = "moved_to_another_node";
    /// On a cluster: no node holds the session's lease now.
    pub const NO_NODE: &str = "no_node_runs_it";
    /// On a cluster: the node that runs the session did not answer.
    pub const NODE_UNREACHABLE: &str = "node_unreachable";
    pub const PAIRING_INCOMPLETE: &str = "pairing_incomplete";
}

/// What `GET /v1/sessions/{id}` answers, and what every `connection.update` carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SessionView {
    pub id: String,
    pub state: StateKind,
    /// Why the session is in this state (see [`reason`]), with the protocol code if any.
    pub reason: Option<String>,
    pub code: Option<u16>,
    /// What a person should do, in words.
    pub detail: String,
    pub qr: Option<String>,
    pub qr_expires_at: Option<String>,
    pub me: Option<Me>,
    /// When the session entered this state.
    pub since: String,
    /// For `reconnecting` and `replaced`: the attempt number and when the next one starts.
    pub attempt: Option<u32>,
    pub next_attempt_at: Option<String>,
    /// For `banned`: when WhatsApp lifts the ban.
    pub banned_until: Option<String>,
    /// For `reconnecting`: why the last connection failed (a proxy problem, DNS, ...).
    pub last_error: Option<String>,
}

pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl SessionView {
    pub fn new(id: &str, state: StateKind, reason: Option<&str>, me: Option<Me>) -> Self {
        Self {
            id: id.to_string(),
            state,
            reason: reason.map(str::to_string),
            code: None,
            detail: String::new(),
            qr: None,
            qr_expires_at: None,
            me,
            since: timestamp(Utc::now()),
            attempt: None,
            next_attempt_at: None,
            banned_until: None,
            last_error: None,
        }
        .explained()
    }

    /// Fills `detail` from the state and reason.
    pub fn explained(mut self) -> Self {
        self.detail = explain(self.state, self.reason.as_deref(), self.code);
        if let Some(until) = &self.banned_until {
            self.detail = format!("{} The ban ends at {until}.", self.detail);
        }
        self
    }
}

/// What the registry keeps of a session's last state, so that `wagate status` and
/// `wagate doctor` can explain it while the gateway is not running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastState {
    pub state: StateKind,
    pub reason: Option<String>,
    pub code: Option<u16>,
    pub since: String,
    pub banned_until: Option<String>,
}

impl From<&SessionView> for LastState {
    fn from(view: &SessionView) -> Self {
        Self {
            state: view.state,
            reason: view.reason.clone(),
            code: view.code,
            since: view.since.clone(),
            banned_until: view.banned_until.clone(),
        }
    }
}

/// A reason in a few plain words, with its protocol code, for tables and one-line summaries
/// (`explain` says what to do about it).
pub fn reason_words(why: &str, code: Option<u16>) -> String {
    let words = match (why, code) {
        (reason::STARTED, _) => "started",
        (reason::RESTORED, _) => "restored after a gateway restart",
        (reason::WAITING_TURN, _) => "waiting for its turn to reconnect after a gateway start",
        (reason::RESTART_REQUIRED, _) => "normal restart after pairing (515)",
        (reason::CONNECTION_LOST, _) => "connection lost",
        (reason::STREAM_ERROR, Some(500)) => "bad session (500)",
        (reason::STREAM_ERROR, Some(503)) => "WhatsApp unavailable (503)",
        (reason::STREAM_ERROR, Some(408)) => "connection timed out (408)",
        (reason::STREAM_ERROR, Some(428)) => "connection closed by WhatsApp (428)",
        (reason::STREAM_ERROR, _) => "stream error",
        (reason::QR_TIMEOUT, _) => "no QR code scanned in time",
        (reason::LOGGED_OUT, Some(403)) => "account locked by WhatsApp (403)",
        (reason::LOGGED_OUT, Some(406)) => "logged out by WhatsApp (406)",
        (reason::LOGGED_OUT, _) => "unlinked from the phone (401)",
        (reason::LOGOUT_REQUESTED, _) => "logged out on request",
        (reason::REPLACED, _) => "the same account connected elsewhere (440)",
        (reason::TEMP_BANNED, _) => "temporarily banned (402)",
        (reason::OUTDATED, _) => "wagate too old for WhatsApp (405)",
        (reason::MULTI_DEVICE_MISMATCH, _) => "multi-device mismatch (411)",
        (reason::BAD_SESSION, _) => "bad session, repeated (500)",
        (reason::LOGIN_FAILURE, _) => "login refused",
        (reason::STOPPED, _) => "stopped by the gateway",
        (reason::MOVED, _) => "another node of the cluster runs this session now",
        (reason::NO_NODE, _) => "no node runs it now; a live node takes it within a lease time",
        (reason::NODE_UNREACHABLE, _) => "the node that runs it did not answer",
        (reason::PAIRING_INCOMPLETE, _) => "unfinished pairing, linking anew",
        (other, _) => return with_code(other, code),
    };
    // Words that name their code already keep it; the others get the code that came.
    if words.ends_with(')') {
        words.to_string()
    } else {
        with_code(words, code)
    }
}

fn with_code(words: &str, code: Option<u16>) -> String {
    match code {
        Some(code) => format!("{words} ({code})"),
        None => words.to_string(),
    }
}

/// The reminder for sessions whose linking failed or that were unlinked: a full phone
/// refuses new companions, and nothing on wagate's side says so.
pub const COMPANION_LIMIT_HINT: &str = "A phone links at most 4 companion devices: if linking fails, unlink one in \
     WhatsApp > Settings > Linked devices, then link again.";

/// Whether [`COMPANION_LIMIT_HINT`] applies to a session in this state.
pub fn needs_companion_hint(state: StateKind, why: Option<&str>) -> bool {
    match state {
        StateKind::LoggedOut => why != Some(reason::LOGOUT_REQUESTED),
        StateKind::Failed => why == Some(reason::QR_TIMEOUT),
        _ => why == Some(reason::PAIRING_INCOMPLETE),
    }
}

/// The human explanation of a state (PROTOCOL.md section 8 in operator words).
pub fn explain(state: StateKind, reason: Option<&str>, code: Option<u16>) -> String {
    let text = match (state, reason) {
        (StateKind::Stopped, Some(reason::NO_NODE)) => {
            "No node of the cluster runs this session right now (its node stopped or was cut off); a live node \
             takes it within a lease time, without a new QR code."
        }
        (StateKind::Stopped, Some(reason::NODE_UNREACHABLE)) => {
            "The node that runs this session did not answer; GET /v1/nodes shows whether it is alive."
        }
        (StateKind::Stopped, _) => "Not connected. Start the session to connect (a new QR code appears if it is not linked).",
        (StateKind::Connecting, Some(reason::RESTART_REQUIRED)) => {
            "Linked. WhatsApp asked for the normal restart after pairing (515); reconnecting with the new credentials now."
        }
        (StateKind::Connecting, Some(reason::PAIRING_INCOMPLETE)) => {
            "The last pairing did not complete (wagate stopped in the middle); starting a new link: scan the new QR code."
        }
        (StateKind::Connecting, _) => "Connecting to WhatsApp.",
        (StateKind::AwaitingScan, _) => {
            "Open WhatsApp on the phone, Settings > Linked devices > Link a device, and scan this QR code (or use a pairing code)."
        }
        (StateKind::Pairing, _) => "The phone accepted the link; finishing pairing. Nothing to do.",
        (StateKind::Connected, _) => "Connected to WhatsApp. Messages can be sent and received.",
        (StateKind::Reconnecting, Some(reason::STREAM_ERROR)) if code == Some(500) => {
            "WhatsApp reported a bad session (500); reconnecting. If this repeats, log out and link again."
        }
        (StateKind::Reconnecting, Some(reason::WAITING_TURN)) => {
            "The gateway has just started; linked sessions reconnect a few per second (--reconnect-rate) so WhatsApp sees no burst of logins. Messages sent meanwhile are queued; sending one moves this session to the front."
        }
        (StateKind::Reconnecting, _) => {
            "The connection to WhatsApp was lost; reconnecting automatically with back-off. Nothing to do unless it persists (check the network or proxy)."
        }
        (StateKind::LoggedOut, Some(reason::LOGOUT_REQUESTED)) => "Logged out as requested. Start the session to link it again with a new QR code.",
        (StateKind::LoggedOut, _) if code == Some(403) => {
            "WhatsApp locked this account (403) and unlinked the device. Its keys were deleted; once the account is usable on the phone again, start the session and scan a new QR code."
        }
        (StateKind::LoggedOut, _) => {
            "This device was unlinked (removed from the phone's Linked devices, or refused by WhatsApp). Its keys were deleted; start the session and scan a new QR code to link again."
        }
        (StateKind::Replaced, _) => {
            "Another connection with the same credentials took over (440: the same account is connected elsewhere, such as a second wagate on a copy of this data directory). Stop the other instance; wagate retries only after a long pause."
        }
        (StateKind::Banned, _) => "WhatsApp temporarily banned this account (402). wagate will not reconnect before the ban ends.",
        (StateKind::Outdated, _) => "WhatsApp refuses this client version (405). Update wagate, then start the session again.",
        (StateKind::Failed, Some(reason::QR_TIMEOUT)) => {
            "No QR code was scanned in time. Start the session again when the phone is at hand."
        }
        (StateKind::Failed, Some(reason::MULTI_DEVICE_MISMATCH)) => {
            "WhatsApp reported a multi-device mismatch (411). Log out, then link the device again."
        }
        (StateKind::Failed, Some(reason::BAD_SESSION)) => {
            "WhatsApp keeps rejecting this session (500). Log out and link the device again."
        }
        (StateKind::Failed, _) => "The session stopped after an error; see the reason. Start it again to retry.",
    };
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_json_form() {
        use StateKind::*;
        for state in [
            Stopped,
            Connecting,
            AwaitingScan,
            Pairing,
            Connected,
            Reconnecting,
            LoggedOut,
            Replaced,
            Banned,
            Outdated,
            Failed,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(serde_json::from_value::<StateKind>(state.as_str().into()).unwrap(), state);
        }
    }

    #[test]
    fn reasons_in_plain_words() {
        assert_eq!(reason_words(reason::RESTART_REQUIRED, None), "normal restart after pairing (515)");
        assert_eq!(reason_words(reason::LOGGED_OUT, Some(401)), "unlinked from the phone (401)");
        assert_eq!(reason_words(reason::STREAM_ERROR, Some(502)), "stream error (502)");
        assert_eq!(reason_words(reason::LOGIN_FAILURE, Some(409)), "login refused (409)");
        assert_eq!(reason_words("something_new", Some(7)), "something_new (7)");
        assert!(explain(StateKind::Replaced, Some(reason::REPLACED), Some(440)).contains("connected elsewhere"));
        assert!(explain(StateKind::LoggedOut, Some(reason::LOGGED_OUT), Some(403)).contains("locked"));
        let mut view = SessionView::new("a", StateKind::Banned, Some(reason::TEMP_BANNED), None);
        view.banned_until = Some("2030-01-01T00:00:00.000Z".into());
        assert!(view.explained().detail.ends_with("The ban ends at 2030-01-01T00:00:00.000Z."));
        assert!(needs_companion_hint(StateKind::LoggedOut, Some(reason::LOGGED_OUT)));
        assert!(!needs_companion_hint(StateKind::LoggedOut, Some(reason::LOGOUT_REQUESTED)));
        assert!(!needs_companion_hint(StateKind::Connected, None));
    }
}
