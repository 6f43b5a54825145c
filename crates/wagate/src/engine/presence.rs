//! Presence: whether a contact is online, and what it is doing in the chat with this
//! session (typing, recording, stopped). Both arrive only for contacts the session
//! subscribed to.

use serde::Serialize;

/// What a contact is doing, in wagate's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceKind {
    Available,
    Unavailable,
    Composing,
    Recording,
    Paused,
}

impl PresenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Unavailable => "unavailable",
            Self::Composing => "composing",
            Self::Recording => "recording",
            Self::Paused => "paused",
        }
    }
}

/// One presence or chat-state change of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PresenceUpdate {
    /// The contact's JID as WhatsApp named it (`<phone>@s.whatsapp.net` or `<lid>@lid`).
    pub from: String,
    pub phone: Option<String>,
    pub presence: PresenceKind,
    /// Seconds since the epoch, when WhatsApp tells (with `unavailable`).
    pub last_seen: Option<i64>,
}

/// Profile facts of one phone number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ContactInfo {
    pub phone: String,
    pub exists: bool,
    pub jid: Option<String>,
    /// The "about" text; `None` when unset or hidden by the contact's privacy settings.
    pub about: Option<String>,
    /// A URL of the full-size profile picture; `None` when there is none or it is hidden.
    pub picture_url: Option<String>,
}
