//! The HTTP client the library uses for media (uploads to and downloads from WhatsApp's
//! CDN) and its version check. Ours rather than the library's default so that media takes
//! the same way out as the session's WebSocket (the same proxy, or none), goes only to
//! WhatsApp's own hosts, and streams downloads instead of holding them in memory.

use std::io::Read;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use wacore::net::StreamingHttpResponse;
use whatsapp_rust::http::{HttpClient, HttpRequest, HttpResponse};

use super::proxy::Proxy;
use super::EngineError;

/// Time to open a connection (through the proxy, if any).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A whole buffered exchange (uploads, the version check).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a media connection stays open for reuse once idle.
const MEDIA_IDLE_KEPT: Duration = Duration::from_secs(5);
/// A streamed download fails when no byte came for this long; its total time is bounded by
/// whoever waits for it.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks of a streamed download in flight between the network and the decryption: the
/// network waits when the disk is slower.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Which hosts media requests may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaHosts {
    /// WhatsApp's domains over HTTPS: every host a media-connection answer names, and the
    /// version check's.
    WhatsApp,
    /// Anything (the simulator's media host; sandbox builds only reach it).
    Any,
}

impl MediaHosts {
    /// `Err` says why a URL is refused.
    fn check(self, url: &str) -> Result<(), String> {
        if self == Self::Any {
            return Ok(());
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let whatsapp = ["whatsapp.net", "whatsapp.com"]
            .iter()
            .any(|domain| host == *domain || host.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.')));
        if parsed.scheme() != "https" || !whatsapp || parsed.port().is_some() || !parsed.username().is_empty() {
            return Err(format!("media requests go only to WhatsApp's HTTPS hosts, not to '{host}'"));
        }
        Ok(())
    }
}

pub struct MediaHttp {
    client: reqwest::Client,
    hosts: MediaHosts,
}

impl MediaHttp {
    /// `MediaHosts::Any` is only for the simulator, whose media host has a self-signed
    /// certificate: it also trusts any certificate.
    pub fn new(proxy: Option<&Proxy>, hosts: MediaHosts) -> Result<Self, EngineError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .tcp_nodelay(true)
            // Each session has a client of its own (its proxy), and a client keeps a used
            // connection for reuse: 90 s by default, so linking many accounts at once (each
            // downloads its history and app state) held two or three idle sockets per session,
            // past what the open-files budget gives a session. A few seconds still serve a
            // burst of downloads (history chunks, an album) with one connection.
            .pool_idle_timeout(MEDIA_IDLE_KEPT)
            // A redirect could lead anywhere; WhatsApp's CDN does not send them.
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(hosts == MediaHosts::Any);
        builder = match proxy {
            Some(proxy) => builder.proxy(proxy.for_http_client().map_err(|e| EngineError::Build(e.to_string()))?),
            // The proxy decision was made for the session already (environment included).
            None => builder.no_proxy(),
        };
        let client = builder.build().map_err(|e| EngineError::Build(format!("media HTTP client: {e}")))?;
        Ok(Self { client, hosts })
    }

    fn request(&self, request: HttpRequest) -> anyhow::Result<reqwest::RequestBuilder> {
        // The URL carries the media auth token: keep it out of error texts.
        self.hosts.check(&request.url).map_err(|e| anyhow::anyhow!("{e}"))?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())?;
        let mut call = self.client.request(method, &request.url);
        for (name, value) in &request.headers {
            call = call.header(name, value);
        }
        if let Some(body) = request.body {
            call = call.body(body);
        }
        Ok(call)
    }
}

fn without_url(e: reqwest::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", e.without_url())
}

#[async_trait]
impl HttpClient for MediaHttp {
    /// Any answer is `Ok`, whatever its status: the library reads 401/403/404 to refresh
    /// its media connection or try another host.
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        let response = self.request(request)?.timeout(EXCHANGE_TIMEOUT).send().await.map_err(without_url)?;
        let status_code = response.status().as_u16();
        let body = response.bytes().await.map_err(without_url)?;
        Ok(HttpResponse { status_code, body: body.to_vec() })
    }

    fn supports_streaming(&self) -> bool {
        true
    }

    /// Called by the library on a blocking thread, which reads the body as it decrypts.
    /// The exchange itself runs on the runtime and hands its chunks over a small channel.
    fn execute_streaming(&self, request: HttpRequest) -> anyhow::Result<StreamingHttpResponse> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("a streamed download needs the gateway's runtime"))?;
        let call = self.request(request)?;
        let (head_tx, head) = oneshot::channel();
        let (chunks_tx, chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
        runtime.spawn(async move {
            let mut response = match call.send().await {
                Ok(response) => response,
                Err(e) => return drop(head_tx.send(Err(without_url(e)))),
            };
            if head_tx.send(Ok(response.status().as_u16())).is_err() {
                return;
            }
            loop {
                let next = response.chunk().await.map_err(|e| std::io::Error::other(e.without_url().to_string()));
                let end = !matches!(next, Ok(Some(_)));
                // The reader is gone (it had enough, or failed): stop reading the network.
                if chunks_tx.send(next).await.is_err() || end {
                    return;
                }
            }
        });
        let status_code = head.blocking_recv().map_err(|_| anyhow::anyhow!("the download was abandoned"))??;
        Ok(StreamingHttpResponse { status_code, body: Box::new(ChunkReader { chunks, current: Default::default() }) })
    }
}

type Chunk = std::io::Result<Option<bytes::Bytes>>;

/// The body of a streamed download, read on a blocking thread.
struct ChunkReader {
    chunks: mpsc::Receiver<Chunk>,
    current: bytes::Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(Some(chunk))) => self.current = chunk,
                Some(Ok(None)) | None => return Ok(0),
                Some(Err(e)) => return Err(e),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_goes_only_to_whatsapp_hosts() {
        let whatsapp = MediaHosts::WhatsApp;
        for good in [
            "https://mmg.whatsapp.net/v/t62.7119-24/1_2_n.enc?ccb=11-4&oh=x",
            "https://media-fra5-1.cdn.whatsapp.net/v/t62/x.enc",
            "https://MMG.WhatsApp.NET/x",
            "https://web.whatsapp.com/sw.js",
        ] {
            assert_eq!(whatsapp.check(good), Ok(()), "{good}");
        }
        for bad in [
            "https://127.0.0.1/x",
            "https://mmg.whatsapp.net.evil.example/x",
            "https://evilwhatsapp.net/x",
            "https://mmg.whatsapp.net@127.0.0.1:9/x",
            "https://mmg.whatsapp.net:8443/x",
            "http://mmg.whatsapp.net/x",
            "https://user:pw@mmg.whatsapp.net/x",
            "file:///etc/passwd",
            "mmg.whatsapp.net/x",
        ] {
            assert!(whatsapp.check(bad).is_err(), "{bad} must be refused");
        }
        assert_eq!(MediaHosts::Any.check("https://127.0.0.1:4443/v/x"), Ok(()));
    }
}
