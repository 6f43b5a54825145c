//! Files callers hand in to send: fetched from a URL or decoded from base64, within
//! WhatsApp's size limits, for the native API and the compat API alike.

use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::engine::{MediaKind, MediaUpload};
use crate::http::error::ApiError;

/// A file as the API takes it: `url` or `base64`, and what it is.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileInput {
    pub url: Option<String>,
    pub base64: Option<String>,
    pub mimetype: Option<String>,
    pub filename: Option<String>,
    pub caption: Option<String>,
    /// For audio: send it as a voice note.
    #[serde(default)]
    pub voice: bool,
}

/// How long fetching a file by URL may take, all of it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

static FETCHER: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(Duration::from_secs(15))
        .build()
        .expect("a default HTTP client builds")
});

impl FileInput {
    /// Reads the file and checks it against the limit of `kind`.
    pub async fn load(self, kind: MediaKind) -> Result<MediaUpload, ApiError> {
        let limit = kind.max_bytes();
        let what = kind.as_str();
        let (data, served_type) = match (self.url, self.base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(format!("{what}: give 'url' or 'base64', not both")))
            }
            (None, None) => return Err(ApiError::bad_request(format!("{what}: give 'url' or 'base64'"))),
            (None, Some(encoded)) => (decode_base64(&encoded, limit, what)?, None),
            (Some(url), None) => fetch(&url, limit, what).await?,
        };
        if data.is_empty() {
            return Err(ApiError::bad_request(format!("{what}: the file is empty")));
        }
        if self.voice && kind != MediaKind::Audio {
            return Err(ApiError::bad_request("'voice' only applies to audio"));
        }
        let mimetype = self
            .mimetype
            .or(served_type)
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| default_mimetype(kind).to_string());
        if !mimetype.contains('/') {
            return Err(ApiError::bad_request(format!("{what}: '{mimetype}' is not a MIME type")));
        }
        Ok(MediaUpload {
            kind,
            data,
            mimetype,
            filename: self.filename.filter(|f| !f.is_empty()),
            caption: self.caption.filter(|c| !c.is_empty()),
            voice: self.voice,
        })
    }
}

fn too_big(what: &str, limit: usize) -> ApiError {
    ApiError::bad_request(format!("{what}: the file is larger than WhatsApp's limit of {} MB", limit / (1024 * 1024)))
}

/// Standard base64, with or without padding; a `data:<type>;base64,` prefix is allowed.
pub fn decode_base64(encoded: &str, limit: usize, what: &str) -> Result<Vec<u8>, ApiError> {
    let encoded = match encoded.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => encoded,
    };
    let encoded: String = encoded.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if encoded.len() / 4 * 3 > limit + 3 {
        return Err(too_big(what, limit));
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded.trim_end_matches('=')))
        .map_err(|e| ApiError::bad_request(format!("{what}: 'base64' is not valid base64 ({e})")))?;
    if data.len() > limit {
        return Err(too_big(what, limit));
    }
    Ok(data)
}

/// Downloads the file, refusing it as soon as it outgrows the limit.
async fn fetch(url: &str, limit: usize, what: &str) -> Result<(Vec<u8>, Option<String>), ApiError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| ApiError::bad_request(format!("{what}: bad url '{url}': {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::bad_request(format!("{what}: only http:// and https:// URLs can be fetched")));
    }
    let failed = |reason: String| ApiError::bad_request(format!("{what}: could not fetch {url}: {reason}"));
    let mut response = FETCHER.get(parsed).send().await.map_err(|e| failed(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("the server answered {}", response.status())));
    }
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(too_big(what, limit));
    }
    let served_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .filter(|v| !v.is_empty() && v != "application/octet-stream");
    let mut data = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.without_url().to_string()))? {
        if data.len() + chunk.len() > limit {
            return Err(too_big(what, limit));
        }
        data.extend_from_slice(&chunk);
    }
    Ok((data, served_type))
}

fn default_mimetype(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Image => "image/jpeg",
        MediaKind::Video => "video/mp4",
        MediaKind::Audio => "audio/mpeg",
        MediaKind::Sticker => "image/webp",
        MediaKind::Document => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_with_prefix_padding_and_limits() {
        assert_eq!(decode_base64("aGVsbG8=", 100, "document").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8", 100, "document").unwrap(), b"hello");
        assert_eq!(decode_base64("data:application/pdf;base64,aGVs\nbG8=", 100, "document").unwrap(), b"hello");
        let error = decode_base64("aGVsbG8=", 4, "document").unwrap_err();
        assert!(error.message.contains("limit"), "{}", error.message);
        assert!(decode_base64("not base64!", 100, "document").unwrap_err().message.contains("not valid base64"));
    }
}
