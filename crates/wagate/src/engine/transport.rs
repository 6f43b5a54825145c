//! How the engine reaches WhatsApp: our own dialer in front of the library's WebSocket
//! transport. It sets TCP_NODELAY (stanzas are small; without it each request waits out
//! Nagle against the peer's delayed ACK, ~40 ms) and is where outbound proxies plug in.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::net::TcpStream;

use super::proxy::Proxy;
use tokio_websockets::{ClientBuilder, Connector, MaybeTlsStream, WebSocketStream};
use whatsapp_rust::transport::{default_tls_connector, from_websocket, Transport, TransportEvent, TransportFactory};

/// WhatsApp Web's own WebSocket endpoint and the `Origin` it expects.
pub const WHATSAPP_WS_URL: &str = "wss://web.whatsapp.com/ws/chat";
const ORIGIN: &str = "https://web.whatsapp.com";

pub struct Dialer {
    url: String,
    proxy: Option<Proxy>,
    /// Why the last dial failed, for the session's state (the library only logs it).
    last_error: Arc<Mutex<Option<String>>>,
}

impl Dialer {
    pub fn new(url: Option<&str>, proxy: Option<Proxy>, last_error: Arc<Mutex<Option<String>>>) -> Self {
        Self { url: url.unwrap_or(WHATSAPP_WS_URL).to_string(), proxy, last_error }
    }
}

#[async_trait]
impl TransportFactory for Dialer {
    async fn create_transport(
        &self,
    ) -> Result<(Arc<dyn Transport>, async_channel::Receiver<TransportEvent>), anyhow::Error> {
        let result = self.dial().await;
        if let Err(e) = &result {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
        }
        result
    }
}

impl Dialer {
    async fn dial(&self) -> Result<(Arc<dyn Transport>, async_channel::Receiver<TransportEvent>), anyhow::Error> {
        let target = Target::parse(&self.url)?;
        let tcp = target.connect(self.proxy.as_ref()).await?;
        let stream = target.secure(tcp).await?;
        let (ws, _) = target.upgrade(stream).await?;
        Ok(from_websocket(ws))
    }
}

/// Where a WhatsApp URL points, and the steps to reach it: TCP (direct or through a
/// proxy), TLS for `wss://`, the WebSocket upgrade. `wagate doctor` runs them one by one.
pub(super) struct Target {
    pub uri: http::Uri,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().map_err(|e| anyhow::anyhow!("bad WhatsApp URL {url}: {e}"))?;
        let host = uri.host().ok_or_else(|| anyhow::anyhow!("the WhatsApp URL {url} has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            other => anyhow::bail!("the WhatsApp URL must be ws:// or wss://, not {other:?}"),
        };
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { uri, host, port, tls })
    }

    pub async fn connect(&self, proxy: Option<&Proxy>) -> anyhow::Result<TcpStream> {
        let (host, port) = (self.host.as_str(), self.port);
        let tcp = match proxy {
            Some(proxy) => proxy.connect(host, port).await?,
            None => TcpStream::connect((host, port))
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to {host}:{port}: {e}"))?,
        };
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    pub async fn secure(&self, tcp: TcpStream) -> anyhow::Result<MaybeTlsStream<TcpStream>> {
        if self.tls {
            default_tls_connector().wrap(&self.host, tcp).await
        } else {
            Connector::Plain.wrap(&self.host, tcp).await
        }
        .map_err(|e| anyhow::anyhow!("TLS with {} failed: {e}", self.host))
    }

    /// The WebSocket upgrade; the server's answer comes with it (its `Date` header tells
    /// `doctor` the server's clock).
    pub async fn upgrade(
        &self,
        stream: MaybeTlsStream<TcpStream>,
    ) -> anyhow::Result<(WebSocketStream<MaybeTlsStream<TcpStream>>, http::Response<()>)> {
        ClientBuilder::from_uri(self.uri.clone())
            .add_header(http::header::ORIGIN, http::HeaderValue::from_static(ORIGIN))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .connect_on(stream)
            .await
            .map_err(|e| anyhow::anyhow!("WebSocket upgrade with {} failed: {e}", self.host))
    }
}
