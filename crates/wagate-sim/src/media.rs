//! The media host: WhatsApp's CDN in miniature. Clients learn its address from the
//! media-connection iq (`w:m`), upload encrypted blobs to `/mms/<type>/<token>` and fetch
//! them back by the `direct_path` the upload answered. Like the real CDN it never sees a
//! plaintext byte; it only checks that the blob is the one the token names.
//!
//! Clients build `https://` URLs for media, so the host speaks TLS with a self-signed
//! certificate for `127.0.0.1` made at start-up; test clients are told to trust it.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::info;

use wacore::download::MediaType;

use crate::error::SimError;

/// WhatsApp's own cap for documents (2 GB); the host refuses bigger uploads. Blobs are kept
/// in memory: a test that sends a large file pays for it in the simulator's process.
pub const MAX_BLOB: usize = 2 * 1024 * 1024 * 1024;
/// How long a media connection's auth token and hosts stay valid, in seconds.
pub const MEDIA_CONN_TTL: u64 = 3600;

/// What the media host counts, for tests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaStats {
    pub uploads: u64,
    pub downloads: u64,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    /// Uploads refused: wrong auth token, or a body that does not match its token.
    pub refused: u64,
    /// The addresses media requests came from (a proxy test checks these).
    pub peers: BTreeSet<String>,
    /// Blobs the simulated phones built for profiled accounts, as they were downloaded:
    /// history sync chunks and app-state snapshots.
    pub history_blobs_served: u64,
    pub app_state_blobs_served: u64,
}

/// What a blob the host builds on request is (see [`MediaStore::publish_generated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneratedKind {
    History,
    AppState,
}

impl GeneratedKind {
    fn media_type(self) -> MediaType {
        match self {
            Self::History => MediaType::History,
            Self::AppState => MediaType::AppState,
        }
    }
}

/// Builds a blob's plaintext again, byte for byte: generated blobs are not kept, only the
/// recipe, so thousands of profiled accounts do not hold their history in memory.
pub type BlobRecipe = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// Where a published blob is and how to check and decrypt it, as a phone puts it in a
/// history sync notification or an app-state external blob reference.
#[derive(Debug, Clone)]
pub struct Published {
    pub direct_path: String,
    pub media_key: [u8; 32],
    pub file_sha256: [u8; 32],
    pub file_enc_sha256: [u8; 32],
    pub file_length: u64,
    /// The encrypted size, what a download costs.
    pub encrypted_length: u64,
}

struct Generated {
    kind: GeneratedKind,
    media_key: [u8; 32],
    recipe: BlobRecipe,
}

/// The stored blobs and the token that authorises uploads.
pub struct MediaStore {
    /// `host:port` as clients must address it.
    pub hostname: String,
    pub auth: String,
    inner: Mutex<MediaInner>,
}

#[derive(Default)]
struct MediaInner {
    /// By direct path.
    blobs: HashMap<String, Bytes>,
    /// By direct path: blobs built again (and encrypted with their key) when downloaded.
    generated: HashMap<String, Generated>,
    stats: MediaStats,
}

impl MediaStore {
    pub fn new(hostname: String) -> Arc<Self> {
        let auth = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        Arc::new(Self { hostname, auth, inner: Mutex::new(MediaInner::default()) })
    }

    pub fn stats(&self) -> MediaStats {
        self.lock().stats.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MediaInner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn url_of(&self, direct_path: &str) -> String {
        format!("https://{}{direct_path}", self.hostname)
    }

    /// Makes a blob a phone built downloadable: encrypts `recipe`'s plaintext as media of
    /// `kind` with `media_key` once, for the hashes the phone announces, and keeps only the
    /// recipe. The same recipe and key give the same bytes at download time (media
    /// encryption derives its IV from the key).
    pub fn publish_generated(
        &self,
        kind: GeneratedKind,
        media_key: [u8; 32],
        recipe: BlobRecipe,
    ) -> Result<Published, SimError> {
        let encrypted = encrypt(kind, &media_key, &recipe())?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(encrypted.file_enc_sha256);
        let direct_path = format!("/v/{}/{token}.enc", kind.media_type().mms_type());
        let published = Published {
            direct_path: direct_path.clone(),
            media_key,
            file_sha256: encrypted.file_sha256,
            file_enc_sha256: encrypted.file_enc_sha256,
            file_length: encrypted.plaintext_length,
            encrypted_length: encrypted.data.len() as u64,
        };
        self.lock().generated.insert(direct_path, Generated { kind, media_key, recipe });
        Ok(published)
    }
}

struct Encrypted {
    data: Vec<u8>,
    file_sha256: [u8; 32],
    file_enc_sha256: [u8; 32],
    plaintext_length: u64,
}

fn encrypt(kind: GeneratedKind, media_key: &[u8; 32], plaintext: &[u8]) -> Result<Encrypted, SimError> {
    let encrypted = wacore::upload::encrypt_media_with_key(plaintext, kind.media_type(), Some(media_key))
        .map_err(|e| SimError::Media(e.to_string()))?;
    Ok(Encrypted {
        data: encrypted.data_to_upload,
        file_sha256: encrypted.file_sha256,
        file_enc_sha256: encrypted.file_enc_sha256,
        plaintext_length: plaintext.len() as u64,
    })
}

/// The `<media_conn>` answer: one primary host, this one.
pub fn media_conn_node(store: &MediaStore) -> wacore_binary::Node {
    use wacore_binary::builder::NodeBuilder;
    let ttl = MEDIA_CONN_TTL.to_string();
    NodeBuilder::new("media_conn")
        .attr("auth", store.auth.as_str())
        .attr("ttl", ttl.as_str())
        .attr("auth_ttl", ttl.as_str())
        .attr("max_buckets", "12")
        .children([NodeBuilder::new("host")
            .attr("hostname", store.hostname.as_str())
            .attr("type", "primary")
            .attr("maxContentLengthBytes", MAX_BLOB.to_string())
            .build()])
        .build()
}

/// A TLS listener serving the media routes until `stopped` resolves.
pub struct MediaServer {
    pub store: Arc<MediaStore>,
    listener: std::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
}

impl MediaServer {
    /// Binds the port and makes the certificate; serving starts with [`MediaServer::serve`].
    pub fn bind(ip: std::net::IpAddr) -> Result<Self, SimError> {
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let tls = self_signed_tls(addr.ip())?;
        Ok(Self { store: MediaStore::new(addr.to_string()), listener, tls })
    }

    pub async fn serve(self, stopped: impl std::future::Future<Output = ()> + Send + 'static) {
        let app = Router::new()
            .route("/mms/{kind}/{token}", post(upload))
            .route("/v/{kind}/{blob}", get(download))
            .layer(DefaultBodyLimit::max(MAX_BLOB))
            .with_state(self.store);
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            stopped.await;
            stopper.shutdown();
        });
        let server = axum_server::from_tcp_rustls(self.listener, self.tls);
        if let Err(e) = server.handle(handle).serve(app.into_make_service_with_connect_info::<SocketAddr>()).await {
            tracing::error!("media host failed: {e}");
        }
    }
}

fn self_signed_tls(ip: std::net::IpAddr) -> Result<axum_server::tls_rustls::RustlsConfig, SimError> {
    let certified = rcgen::generate_simple_self_signed(vec![ip.to_string(), "localhost".to_string()])
        .map_err(|e| SimError::Tls(format!("certificate: {e}")))?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| SimError::Tls(e.to_string()))?;
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)))
}

#[derive(Deserialize)]
struct UploadQuery {
    auth: Option<String>,
    token: Option<String>,
    /// `resume=1`: the client asks whether this blob is already (partly) here.
    resume: Option<String>,
}

fn refuse(store: &MediaStore, status: StatusCode, error: &str) -> Response {
    store.lock().stats.refused += 1;
    (status, Json(json!({ "error": error }))).into_response()
}

async fn upload(
    State(store): State<Arc<MediaStore>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((kind, token)): Path<(String, String)>,
    Query(query): Query<UploadQuery>,
    body: Bytes,
) -> Response {
    if query.auth.as_deref() != Some(store.auth.as_str()) {
        return refuse(&store, StatusCode::UNAUTHORIZED, "media auth token missing or stale");
    }
    if query.token.as_deref().is_some_and(|t| t != token) {
        return refuse(&store, StatusCode::BAD_REQUEST, "the token parameter does not match the path");
    }
    let direct_path = format!("/v/{kind}/{token}.enc");
    if query.resume.is_some() {
        let known = store.lock().blobs.contains_key(&direct_path);
        return if known {
            Json(json!({ "resume": "complete", "url": store.url_of(&direct_path), "direct_path": direct_path }))
                .into_response()
        } else {
            (StatusCode::NOT_FOUND, Json(json!({ "error": "no such upload" }))).into_response()
        };
    }
    // The token is the SHA-256 of the encrypted file: the CDN can check it without a key.
    let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&body));
    if digest != token {
        return refuse(&store, StatusCode::BAD_REQUEST, "the body's SHA-256 does not match the token");
    }
    let size = body.len();
    {
        let mut inner = store.lock();
        inner.stats.uploads += 1;
        inner.stats.bytes_uploaded += size as u64;
        inner.stats.peers.insert(peer.ip().to_string());
        inner.blobs.insert(direct_path.clone(), body);
    }
    info!(%kind, size, "media uploaded");
    Json(json!({ "url": store.url_of(&direct_path), "direct_path": direct_path })).into_response()
}

async fn download(
    State(store): State<Arc<MediaStore>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((kind, blob)): Path<(String, String)>,
) -> Response {
    let direct_path = format!("/v/{kind}/{blob}");
    let stored = store.lock().blobs.get(&direct_path).cloned();
    let body = match stored {
        Some(body) => body,
        None => match build_generated(&store, &direct_path).await {
            Some(body) => body,
            None => return (StatusCode::NOT_FOUND, Json(json!({ "error": "no such media" }))).into_response(),
        },
    };
    let mut inner = store.lock();
    inner.stats.downloads += 1;
    inner.stats.bytes_downloaded += body.len() as u64;
    inner.stats.peers.insert(peer.ip().to_string());
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

/// Builds a generated blob for a download, off the async workers (a large history chunk
/// takes a while to compress and encrypt).
async fn build_generated(store: &Arc<MediaStore>, direct_path: &str) -> Option<Bytes> {
    let (kind, media_key, recipe) = {
        let inner = store.lock();
        let generated = inner.generated.get(direct_path)?;
        (generated.kind, generated.media_key, generated.recipe.clone())
    };
    let built = tokio::task::spawn_blocking(move || encrypt(kind, &media_key, &recipe())).await;
    let encrypted = match built {
        Ok(Ok(encrypted)) => encrypted,
        Ok(Err(e)) => {
            tracing::warn!(direct_path, "could not build a phone's blob for download: {e}");
            return None;
        }
        Err(e) => {
            tracing::warn!(direct_path, "building a phone's blob for download failed: {e}");
            return None;
        }
    };
    let mut inner = store.lock();
    match kind {
        GeneratedKind::History => inner.stats.history_blobs_served += 1,
        GeneratedKind::AppState => inner.stats.app_state_blobs_served += 1,
    }
    Some(Bytes::from(encrypted.data))
}
