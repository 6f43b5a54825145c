//! The engine: the only part of wagate that knows the WhatsApp client library. The rest of
//! the gateway sees this small trait and wagate's own event and reason types.

mod compose;
mod content;
mod media_http;
pub mod migrate;
mod normalize;
pub use normalize::non_device;
mod presence;
pub mod scratch;
pub use presence::{ContactInfo, PresenceKind, PresenceUpdate};
pub mod postgres;
pub mod probe;
pub mod proxy;
pub mod shards;
mod store;
pub use store::{EngineStore, PgStore};
mod transport;
pub use transport::WHATSAPP_WS_URL;
mod whatsapp;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use content::{Contact, Content, InboundMedia, Location, MediaKind, MediaRef, MediaUpload, MessageRef, Outgoing};
pub use whatsapp::WhatsAppEngine;

/// Who a linked session is on WhatsApp.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Me {
    /// Phone-number JID of this device, e.g. `15551234567:1@s.whatsapp.net`.
    pub jid: Option<String>,
    pub lid: Option<String>,
    /// The phone number, digits only.
    pub phone: Option<String>,
    pub push_name: Option<String>,
}

/// The longest ban wagate waits out before it tries again. The server's `expire` is any
/// number of seconds (up to `u64::MAX`), which no clock can be advanced by.
pub const MAX_BAN: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a connection ended, in protocol terms (PROTOCOL.md section 8). The session
/// supervisor decides what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// `<stream:error code="515">`: normal after pairing; reconnect at once.
    RestartRequired,
    /// Another connection with the same credentials took over (`conflict type=replaced`).
    Replaced,
    /// Unlinked from the phone or refused as unknown (401, 403, 406, device_removed).
    LoggedOut { code: u16 },
    /// A temporary ban (402) until `expire` from now (at most [`MAX_BAN`]).
    TempBanned { expire: Duration },
    /// The client version is too old (405).
    Outdated,
    /// The account's devices disagree (411).
    MultiDeviceMismatch,
    /// Every QR ref of this connection expired unscanned.
    QrRefsExhausted,
    /// Another `<stream:error>` code (500, 503, ...).
    StreamError { code: u16 },
    /// A login `<failure>` with a reason not covered above.
    LoginFailure { code: u16 },
    /// The socket dropped, timed out or could not be opened.
    ConnectionLost { detail: String },
    /// The gateway closed it.
    ClosedByUs,
}

/// A message someone sent to the session, in wagate's own shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Inbound {
    pub id: String,
    /// The chat: the sender's JID for a direct message, the group's for a group.
    pub chat: String,
    /// Who wrote it, without the device part (`<phone>@s.whatsapp.net` or `<lid>@lid`).
    pub sender: String,
    pub sender_phone: Option<String>,
    pub sender_lid: Option<String>,
    pub push_name: Option<String>,
    /// Seconds since the epoch.
    pub timestamp: i64,
    /// `text`, `image`, `video`, `audio`, `voice`, `document`, `sticker`, `location`,
    /// `contact`, `reaction`, `poll`, `edit`, `revoke`, or `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text, or the caption of media.
    pub text: Option<String>,
    pub is_group: bool,
    pub group_id: Option<String>,
    /// The group's name, from the session's cache of group metadata.
    pub group_subject: Option<String>,
    /// The message this one answers (reply) or reacts to.
    pub quoted_id: Option<String>,
    /// The text or caption of the message a reply quotes, as the reply carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quoted_text: Option<String>,
    pub reaction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<InboundMedia>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
    pub from_me: bool,
    pub offline: bool,
}

/// How far a sent message got, by the receipts of the other side. States only move
/// forward in this order: a queued message either fails or is sent; a sent one can still
/// be delivered, read, played.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting in the outgoing queue for the session to reconnect.
    Queued,
    /// Given up: it could not be sent after it was queued.
    Failed,
    Sent,
    Delivered,
    Read,
    Played,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Failed => "failed",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "queued" => Some(Self::Queued),
            "failed" => Some(Self::Failed),
            "sent" => Some(Self::Sent),
            "delivered" => Some(Self::Delivered),
            "read" => Some(Self::Read),
            "played" => Some(Self::Played),
            _ => None,
        }
    }
}

/// Whether a phone number is on WhatsApp.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct NumberCheck {
    pub phone: String,
    pub exists: bool,
    pub jid: Option<String>,
    pub lid: Option<String>,
}

/// A group the session is in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct GroupInfo {
    /// The group JID, `<digits>@g.us`.
    pub id: String,
    pub subject: String,
    /// The creator's JID (a LID in LID-addressed groups) and phone number.
    pub owner: Option<String>,
    pub owner_phone: Option<String>,
    /// Seconds since the epoch.
    pub creation: Option<u64>,
    pub description: Option<String>,
    pub participants: Vec<GroupMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct GroupMember {
    pub jid: String,
    pub phone: Option<String>,
    pub lid: Option<String>,
    pub admin: bool,
    pub super_admin: bool,
}

/// A message the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub id: String,
    pub to: String,
    pub timestamp_ms: u64,
}

/// What a connection reports, in order. After `Closed` nothing more comes.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// Messages received (live or from the offline queue) that the engine could not
    /// commit through the [`InboundSink`] before their ack (kinds WhatsApp acks on their
    /// own path); they are to be recorded the same way, late.
    Messages(Vec<Inbound>),
    /// The other side's receipts for messages this session sent.
    Receipt {
        ids: Vec<String>,
        chat: String,
        state: DeliveryState,
        timestamp_ms: u64,
    },
    /// A QR code to show; valid for `valid_for`.
    Qr {
        code: String,
        valid_for: Duration,
    },
    /// The phone accepted the link: credentials are being stored, a 515 restart follows.
    Paired {
        me: Me,
    },
    /// Logged in and ready.
    Connected {
        me: Me,
    },
    /// A subscribed contact came online, went offline, or typed / stopped in our chat.
    Presence(PresenceUpdate),
    Closed(CloseReason),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the session's credential store could not be opened: {0}")]
    Store(String),
    #[error("the session's credential store: {0}")]
    Shard(#[from] shards::ShardError),
    #[error("the session's credential store: {0}")]
    Postgres(#[from] postgres::PgEngineError),
    #[error("the WhatsApp client could not be built: {0}")]
    Build(String),
    #[error("pairing code refused: {0}")]
    PairCode(String),
    /// A code asked for earlier can still be typed for this many seconds; the library
    /// does not issue a second one meanwhile.
    #[error("a pairing code was issued already and can be typed for another {0} s")]
    PairCodeOutstanding(u64),
    /// A newer request for a code on the same connection took this one's place.
    #[error("a newer pairing-code request replaced this one")]
    PairCodeCancelled,
    #[error("the connection is closed")]
    Closed,
    #[error("'{0}' is not a valid recipient")]
    BadRecipient(String),
    #[error("sending failed: {0}")]
    Send(String),
    #[error("WhatsApp refused the message: {0}")]
    Refused(String),
    #[error("media transfer failed: {0}")]
    Media(String),
    /// A received file that is not fetched at all: its reference is unsafe or too large.
    #[error("{0}")]
    UnsafeMedia(String),
}

/// A downloaded, decrypted file. It has no name on disk: nothing of it outlives the handle,
/// a crash included, and no other process can open it.
#[derive(Debug)]
pub struct Downloaded {
    /// Positioned at its start.
    pub file: std::fs::File,
    pub len: u64,
}

/// One open connection of one session.
#[async_trait]
pub trait Connection: Send + Sync {
    /// Asks WhatsApp for an 8-character code to type on the phone instead of scanning.
    async fn request_pair_code(&self, phone: &str) -> Result<String, EngineError>;
    /// Sends a message with id `id` (see [`new_message_id`]) to a JID (user or group),
    /// uploading its media first; returns once WhatsApp acknowledged it. Sending the same
    /// id again after a failure is safe: WhatsApp keeps one message per id.
    async fn send(&self, to: &str, message: &Outgoing, id: &str) -> Result<Sent, EngineError>;
    /// Downloads and decrypts a received file into a temporary file of its own, writing at
    /// most `cap` bytes (see [`MediaRef::download_cap`]); refuses a reference that is not
    /// safe to fetch ([`EngineError::UnsafeMedia`]).
    async fn download(&self, media: &MediaRef, cap: u64) -> Result<Downloaded, EngineError>;
    /// Sends read receipts for received messages of `chat` (`sender`: the author, for a
    /// group).
    async fn mark_read(&self, chat: &str, sender: Option<&str>, ids: &[String]) -> Result<(), EngineError>;
    /// Asks WhatsApp which of these phone numbers (digits) have an account.
    async fn check_numbers(&self, phones: &[String]) -> Result<Vec<NumberCheck>, EngineError>;
    /// Whether a phone number (digits) is on WhatsApp, with its about text and picture.
    async fn contact_info(&self, phone: &str) -> Result<ContactInfo, EngineError>;
    /// Asks WhatsApp for the presence and chat states of a user; they arrive as
    /// [`EngineEvent::Presence`].
    async fn subscribe_presence(&self, jid: &str) -> Result<(), EngineError>;
    /// Every group the account is in.
    async fn groups(&self) -> Result<Vec<GroupInfo>, EngineError>;
    /// One group's metadata; `None` when there is no such group or the account is not in it.
    async fn group(&self, jid: &str) -> Result<Option<GroupInfo>, EngineError>;
    /// Unlinks the device on WhatsApp (best effort when offline) and closes.
    async fn logout(&self);
    /// Closes the connection; its events end with `Closed(ClosedByUs)` unless it had
    /// already closed for another reason. Returns once its state is saved.
    async fn close(&self);
    /// False once the connection has ended.
    fn is_open(&self) -> bool;
}

/// Where received messages are committed before WhatsApp is told they arrived: the
/// engine acknowledges a message to the server only after `commit` returned `Ok`, so a
/// crash or a failed write before that makes WhatsApp deliver it again.
#[async_trait]
pub trait InboundSink: Send + Sync + 'static {
    /// Commits the batch durably, all or nothing; `Ok` only once it is on disk. A message
    /// committed before (same chat, sender and id: a redelivery) must make no second event.
    async fn commit(&self, messages: Vec<Inbound>) -> Result<(), String>;
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Opens a connection for the session whose state is in `store`. Received messages
    /// go to `inbound` before they are acknowledged; every other event arrives on `events`
    /// until `Closed`.
    async fn open(
        &self,
        session: &str,
        store: &EngineStore,
        proxy: Option<&proxy::Proxy>,
        inbound: std::sync::Arc<dyn InboundSink>,
        events: mpsc::UnboundedSender<EngineEvent>,
    ) -> Result<Box<dyn Connection>, EngineError>;

    /// The linked identity saved in `store`, or `None` when it holds no credentials.
    async fn linked_identity(&self, store: &EngineStore) -> Result<Option<Me>, EngineError>;

    /// Deletes every credential and key in `store`.
    async fn wipe(&self, store: &EngineStore) -> Result<(), EngineError>;
}

/// `15551234567:1@s.whatsapp.net` -> `15551234567`.
pub fn phone_of_jid(jid: &str) -> Option<String> {
    let user = jid.split('@').next()?.split(':').next()?;
    (!user.is_empty() && user.bytes().all(|b| b.is_ascii_digit())).then(|| user.to_string())
}

/// Whether `jid` names a chat messages can go to: a user by phone number or LID
/// (`<digits>[:<device>]@s.whatsapp.net`, `@lid`) or a group (`<digits>[-<digits>]@g.us`),
/// in a form the client library parses. Anything else with an `@` is the caller's mistake:
/// the library refused `status@broadcast` only after the send was accepted (a 502), and
/// reads `1:x@s.whatsapp.net` as another chat (`1@s.whatsapp.net`).
pub fn is_chat_jid(jid: &str) -> bool {
    let Some((user, server)) = jid.split_once('@') else { return false };
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match server {
        "s.whatsapp.net" | "lid" => match user.split_once(':') {
            Some((user, device)) => digits(user) && digits(device) && device.parse::<u16>().is_ok(),
            None => digits(user),
        },
        "g.us" => match user.split_once('-') {
            Some((creator, created)) => digits(creator) && digits(created),
            None => digits(user),
        },
        _ => false,
    };
    well_formed && jid.parse::<wacore_binary::Jid>().is_ok()
}

/// A new message id in WhatsApp Web's format (`3EB0` and hex), made before sending so that
/// a message can be named while it waits in the queue.
pub fn new_message_id() -> String {
    format!("3EB0{}", hex::encode_upper(rand::random::<[u8; 9]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_jids() {
        for good in
            ["15551234567@s.whatsapp.net", "15551234567:2@s.whatsapp.net", "99123@lid", "120363@g.us", "1555-16@g.us"]
        {
            assert!(is_chat_jid(good), "{good}");
        }
        for bad in
            ["status@broadcast", "a@b", "1:x@s.whatsapp.net", "1:x@g.us", "1:2@g.us", "-1@g.us", "1-@g.us", "@lid"]
        {
            assert!(!is_chat_jid(bad), "{bad}");
        }
    }
}
