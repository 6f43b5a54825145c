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

    /// What wagate sends: 16 MB for photos, videos and audio, 100 MB for documents (a send
    /// is held in memory while it is encrypted and uploaded).
    pub fn max_bytes(self) -> usize {
        match self {
            Self::Document => 100 * 1024 * 1024,
            Self::Sticker => 1024 * 1024,
            Self::Image | Self::Video | Self::Audio => 16 * 1024 * 1024,
        }
    }

    /// What may arrive: WhatsApp's apps send documents of up to 2 GB; the rest as for sends.
    /// Downloads go to disk, so the operator's `--media-max` is what really bounds them.
    pub fn max_receive_bytes(self) -> u64 {
        match self {
            Self::Document => 2 * 1024 * 1024 * 1024,
            other => other.max_bytes() as u64,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// The longest `direct_path` accepted; WhatsApp's are well under 300 characters.
pub const MAX_DIRECT_PATH: usize = 2048;

/// Why a `direct_path` a message carries is refused, or `None` when it is a plain absolute
/// path on WhatsApp's media hosts. The library builds the download URL as
/// `https://{host}{direct_path}?...`, so anything but such a path (`@other-host/...`,
/// `//other-host/...`, `:port`, a scheme, ...) would make the URL point at a host the
/// sender chose, and the media auth token would go with the request.
pub fn direct_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("it is empty");
    }
    if path.len() > MAX_DIRECT_PATH {
        return Some("it is too long");
    }
    if !path.starts_with('/') {
        return Some("it does not start with '/'");
    }
    if path.contains("://") {
        return Some("it contains a URL scheme");
    }
    if path.contains("//") {
        return Some("it contains '//'");
    }
    if path.contains('@') {
        return Some("it contains '@'");
    }
    if path.contains('\\') {
        return Some("it contains '\\'");
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Some("it contains whitespace or control characters");
    }
    None
}

impl MediaRef {
    /// Whether this file can be fetched from WhatsApp's CDN safely: its `direct_path` is a
    /// plain absolute path and its declared size is within WhatsApp's limit for its kind.
    /// `Err` says why not.
    pub fn check_downloadable(&self) -> Result<(), String> {
        if let Some(problem) = direct_path_problem(&self.direct_path) {
            return Err(format!(
                "the {} has an invalid direct path ({problem}); it is not downloaded",
                self.kind.as_str()
            ));
        }
        let limit = self.kind.max_receive_bytes();
        if self.file_length > limit {
            return Err(format!(
                "the {} declares {} bytes, more than WhatsApp's limit of {limit} bytes for it; it is not downloaded",
                self.kind.as_str(),
                self.file_length
            ));
        }
        Ok(())
    }

    /// How many bytes a download of this file may write: what the message declared (a
    /// sender that declared nothing gets the limit), never more than WhatsApp's limit for
    /// its kind or `allowed` (the operator's limit, named by `setting` in the refusal). A
    /// CDN answer longer than the cap fails the download instead of filling the disk.
    pub fn download_cap(&self, allowed: u64, setting: &str) -> Result<u64, String> {
        self.check_downloadable()?;
        if self.file_length > allowed {
            return Err(format!(
                "the {} declares {} bytes, more than the {allowed} bytes this gateway downloads ({setting}); \
                 it is not downloaded",
                self.kind.as_str(),
                self.file_length
            ));
        }
        let limit = allowed.min(self.kind.max_receive_bytes());
        Ok(match self.file_length {
            0 => limit,
            declared => declared,
        })
    }
}

/// The media part of a received message, as events show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_absolute_direct_paths_are_accepted() {
        for good in [
            "/v/t62/ok.enc?ccb=1",
            "/v/t62.7119-24/12345_67890_n.enc?ccb=11-4&oh=01_Q5Aa&oe=6750A1B2&_nc_sid=5e03e0",
            "/mms/document/abc",
            "/o1/v/t24/f2/m232/AQN-x.enc?ccb=9-4&oh=01&oe=68&_nc_sid=e6ed6c&mms3=true",
        ] {
            assert_eq!(direct_path_problem(good), None, "{good}");
        }
        let too_long = format!("/{}", "a".repeat(MAX_DIRECT_PATH));
        for bad in [
            "@127.0.0.1:9/x",
            "//127.0.0.1:9/z",
            ".x@127.0.0.1:9/y",
            "https://evil/x",
            "/x@127.0.0.1:9/y",
            "/a//b",
            "/a/https://evil/x",
            "/a\\b",
            "/a b",
            "/a\tb",
            "/a\nHost: evil",
            "/a\u{0}b",
            "/a\u{a0}b",
            "",
            "v/t62/x.enc",
            ":9/x",
            too_long.as_str(),
        ] {
            assert!(direct_path_problem(bad).is_some(), "{bad:?} must be refused");
        }
        assert_eq!(direct_path_problem(&format!("/{}", "a".repeat(MAX_DIRECT_PATH - 1))), None);
    }

    fn reference(kind: MediaKind, direct_path: &str, file_length: u64) -> MediaRef {
        MediaRef {
            kind,
            direct_path: direct_path.to_string(),
            media_key: vec![1; 32],
            file_sha256: vec![2; 32],
            file_enc_sha256: vec![3; 32],
            file_length,
        }
    }

    #[test]
    fn downloads_need_a_safe_path_and_a_size_within_the_limit() {
        const GB: u64 = 1024 * 1024 * 1024;
        assert!(reference(MediaKind::Document, "/v/t62/ok.enc?ccb=1", 2 * GB).check_downloadable().is_ok());
        assert!(reference(MediaKind::Image, "/v/t62/ok.enc", 16 * 1024 * 1024).check_downloadable().is_ok());
        let error = reference(MediaKind::Document, "@127.0.0.1:9/x", 10).check_downloadable().unwrap_err();
        assert!(error.contains("invalid direct path"), "{error}");
        let error = reference(MediaKind::Document, "/v/t62/ok.enc", 2 * GB + 1).check_downloadable().unwrap_err();
        assert!(error.contains("limit"), "{error}");
        assert!(reference(MediaKind::Image, "/v/t62/ok.enc", 16 * 1024 * 1024 + 1).check_downloadable().is_err());
        assert!(reference(MediaKind::Sticker, "/v/t62/ok.enc", 1024 * 1024 + 1).check_downloadable().is_err());
        assert!(reference(MediaKind::Sticker, "/v/t62/ok.enc", 1024 * 1024).check_downloadable().is_ok());
    }

    #[test]
    fn a_download_is_capped_by_the_declared_size_the_kind_and_the_operator() {
        const MB: u64 = 1024 * 1024;
        let doc = |length| reference(MediaKind::Document, "/v/t62/ok.enc", length);
        assert_eq!(doc(5 * MB).download_cap(100 * MB, "--media-max"), Ok(5 * MB), "what it declared");
        assert_eq!(doc(0).download_cap(100 * MB, "--media-max"), Ok(100 * MB), "nothing declared: the operator's");
        let refused = doc(200 * MB).download_cap(100 * MB, "--media-max").unwrap_err();
        assert!(refused.contains("--media-max") && refused.contains("209715200"), "{refused}");
        assert_eq!(doc(200 * MB).download_cap(300 * MB, "--media-max"), Ok(200 * MB));
        let image = reference(MediaKind::Image, "/v/t62/ok.enc", 0);
        assert_eq!(image.download_cap(u64::MAX, "--media-max"), Ok(16 * MB), "nothing declared: WhatsApp's limit");
        let unsafe_path = reference(MediaKind::Image, "@127.0.0.1:9/x", 1);
        assert!(unsafe_path.download_cap(u64::MAX, "--media-max").unwrap_err().contains("invalid direct path"));
    }
}
