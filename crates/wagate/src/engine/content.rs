//! What a message carries, in wagate's own terms: what the API asks to send, and the media
//! and rich parts of what arrives. The engine turns these into the library's protobufs.

use serde::{Deserialize, Serialize};

/// The kinds of media WhatsApp encrypts and stores on its CDN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
    Sticker,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Document => "document",
            Self::Sticker => "sticker",
        }
    }

    /// WhatsApp's limits: 16 MB for photos, videos and audio, 100 MB for documents.
    pub fn max_bytes(self) -> usize {
        match self {
            Self::Document => 100 * 1024 * 1024,
            Self::Sticker => 1024 * 1024,
            Self::Image | Self::Video | Self::Audio => 16 * 1024 * 1024,
        }
    }
}

/// A file to upload and send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaUpload {
    pub kind: MediaKind,
    #[serde(with = "b64")]
    pub data: Vec<u8>,
    pub mimetype: String,
    pub filename: Option<String>,
    pub caption: Option<String>,
    /// An audio file sent as a voice note (push-to-talk).
    pub voice: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub display_name: String,
    pub vcard: String,
}

/// A message already in a chat, as a reply or a reaction points at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    pub id: String,
    /// The chat it is in.
    pub chat: String,
    /// Who wrote it (for a group: the member; for a direct chat: the other side), `None`
    /// when this session wrote it.
    pub sender: Option<String>,
    /// Its text, shown in the quote bubble when known.
    pub text: Option<String>,
}

impl MessageRef {
    pub fn from_me(&self) -> bool {
        self.sender.is_none()
    }
}

/// Serialisable so that a message can wait in the outgoing queue across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    Text(String),
    Media(MediaUpload),
    Location(Location),
    Contact(Contact),
    /// An emoji on an earlier message; an empty emoji removes the reaction.
    Reaction {
        target: MessageRef,
        emoji: String,
    },
}

impl Content {
    /// The type name the API and the metrics use.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text(_) => "text",
            Self::Media(media) if media.voice => "voice",
            Self::Media(media) => media.kind.as_str(),
            Self::Location(_) => "location",
            Self::Contact(_) => "contact",
            Self::Reaction { .. } => "reaction",
        }
    }
}

/// Something to send, possibly as a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub content: Content,
    pub reply_to: Option<MessageRef>,
}

/// Where a received file lives on WhatsApp's CDN and the keys to decrypt it; kept so it
/// can be downloaded when somebody asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    pub kind: MediaKind,
    pub direct_path: String,
    #[serde(with = "b64")]
    pub media_key: Vec<u8>,
    #[serde(with = "b64")]
    pub file_sha256: Vec<u8>,
    #[serde(with = "b64")]
    pub file_enc_sha256: Vec<u8>,
    pub file_length: u64,
}

/// The media part of a received message, as events show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundMedia {
    pub mimetype: Option<String>,
    pub filename: Option<String>,
    pub size: u64,
    /// SHA-256 of the decrypted file, hex.
    pub sha256: String,
    /// wagate's download endpoint for it; set by the session layer.
    pub url: Option<String>,
    #[serde(skip)]
    pub location: MediaRef,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
