//! The HTTP client the library uses for media (uploads to and downloads from WhatsApp's
//! CDN) and its version check. Ours rather than the library's default so that media takes
//! the same way out as the session's WebSocket: the same proxy, or none.

use std::time::Duration;

use async_trait::async_trait;
use whatsapp_rust::http::{HttpClient, HttpRequest, HttpResponse};

use super::proxy::Proxy;
use super::EngineError;

/// Time to open a connection (through the proxy, if any).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A whole exchange, body included: a 100 MB document on a slow line takes a while.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(600);

pub struct MediaHttp {
    client: reqwest::Client,
}

impl MediaHttp {
    /// `trust_any_certificate` is only for the simulator, whose media host has a
    /// self-signed certificate; it is never set against WhatsApp.
    pub fn new(proxy: Option<&Proxy>, trust_any_certificate: bool) -> Result<Self, EngineError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(EXCHANGE_TIMEOUT)
            .tcp_nodelay(true)
            .danger_accept_invalid_certs(trust_any_certificate);
        builder = match proxy {
            Some(proxy) => builder.proxy(proxy.for_http_client().map_err(|e| EngineError::Build(e.to_string()))?),
            // The proxy decision was made for the session already (environment included).
            None => builder.no_proxy(),
        };
        let client = builder.build().map_err(|e| EngineError::Build(format!("media HTTP client: {e}")))?;
        Ok(Self { client })
    }
}

#[async_trait]
impl HttpClient for MediaHttp {
    /// Any answer is `Ok`, whatever its status: the library reads 401/403/404 to refresh
    /// its media connection or try another host.
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())?;
        let mut call = self.client.request(method, &request.url);
        for (name, value) in &request.headers {
            call = call.header(name, value);
        }
        if let Some(body) = request.body {
            call = call.body(body);
        }
        // The URL carries the media auth token: keep it out of error texts.
        let response = call.send().await.map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
        let status_code = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
        Ok(HttpResponse { status_code, body: body.to_vec() })
    }
}
