//! Outbound proxies for WhatsApp traffic: HTTP CONNECT (optional basic auth) and SOCKS5
//! (optional username/password). Networks that block WhatsApp's WebSocket usually offer
//! one of these; failures are reported in words that name the proxy problem, and the
//! password never appears in them.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a proxy gets to set up a tunnel.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// An HTTP proxy's answer to CONNECT must fit in this.
const MAX_RESPONSE_HEAD: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    HttpConnect,
    Socks5,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    password: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("invalid proxy URL: {0}")]
    BadUrl(String),
    #[error("cannot reach the proxy {proxy}: {reason}")]
    Unreachable { proxy: String, reason: String },
    #[error("the proxy {proxy} refused the tunnel to {target} ({answer})")]
    Refused { proxy: String, target: String, answer: String },
    #[error("the proxy {proxy} rejected the credentials ({answer})")]
    BadCredentials { proxy: String, answer: String },
    #[error("the proxy {proxy} answered something unexpected: {reason}")]
    Protocol { proxy: String, reason: String },
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The URL with the password masked, for logs and API answers.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            ProxyKind::HttpConnect => "http",
            ProxyKind::Socks5 => "socks5",
        };
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => write!(f, "{scheme}://{user}:***@{}:{}", self.host, self.port),
            (Some(user), None) => write!(f, "{scheme}://{user}@{}:{}", self.host, self.port),
            _ => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

fn percent_decode(text: &str) -> Result<String, ProxyError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or_else(|| ProxyError::BadUrl("a % escape is cut short".into()))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ProxyError::BadUrl(format!("bad escape %{hex}")))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ProxyError::BadUrl("credentials are not UTF-8".into()))
}

impl Proxy {
    /// `http://[user:pass@]host:port` or `socks5://[user:pass@]host:port` (`socks5h` too).
    pub fn parse(url: &str) -> Result<Self, ProxyError> {
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| ProxyError::BadUrl("expected scheme://host:port".into()))?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "http" => ProxyKind::HttpConnect,
            "socks5" | "socks5h" => ProxyKind::Socks5,
            "https" => return Err(ProxyError::BadUrl("TLS to the proxy itself is not supported; use http://".into())),
            other => return Err(ProxyError::BadUrl(format!("unsupported scheme '{other}'; use http:// or socks5://"))),
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('?') {
            return Err(ProxyError::BadUrl("a proxy URL has no path".into()));
        }
        let (credentials, address) = match authority.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, authority),
        };
        let (username, password) = match credentials {
            Some(credentials) => {
                let (user, pass) = match credentials.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (credentials, None),
                };
                if user.is_empty() {
                    return Err(ProxyError::BadUrl("empty proxy username".into()));
                }
                (Some(percent_decode(user)?), pass.map(percent_decode).transpose()?)
            }
            None => (None, None),
        };
        let (host, port) =
            address.rsplit_once(':').ok_or_else(|| ProxyError::BadUrl("the proxy URL needs a port".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(ProxyError::BadUrl("the proxy URL has no host".into()));
        }
        let port: u16 = port.parse().map_err(|_| ProxyError::BadUrl(format!("'{port}' is not a port")))?;
        if kind == ProxyKind::Socks5
            && (username.as_ref().is_some_and(|u| u.len() > 255) || password.as_ref().is_some_and(|p| p.len() > 255))
        {
            return Err(ProxyError::BadUrl("SOCKS5 credentials are at most 255 bytes each".into()));
        }
        Ok(Self { kind, host: host.to_string(), port, username, password })
    }

    /// The same proxy for HTTP clients (media uploads and downloads). SOCKS5 resolves
    /// names at the proxy, as the WebSocket tunnel does.
    pub fn for_http_client(&self) -> Result<reqwest::Proxy, ProxyError> {
        let (scheme, host) = match self.kind {
            ProxyKind::HttpConnect => ("http", self.host.as_str()),
            ProxyKind::Socks5 => ("socks5h", self.host.as_str()),
        };
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
        let mut url = reqwest::Url::parse(&format!("{scheme}://{host}:{}", self.port))
            .map_err(|e| ProxyError::BadUrl(e.to_string()))?;
        if let Some(user) = &self.username {
            url.set_username(user).map_err(|()| ProxyError::BadUrl("the username cannot be used".into()))?;
            url.set_password(self.password.as_deref())
                .map_err(|()| ProxyError::BadUrl("the password cannot be used".into()))?;
        }
        reqwest::Proxy::all(url).map_err(|e| ProxyError::BadUrl(e.to_string()))
    }

    /// Opens a TCP connection to `host:port` through the proxy.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| ProxyError::Unreachable { proxy: self.to_string(), reason: e.to_string() })?;
        let _ = stream.set_nodelay(true);
        let handshake = async {
            match self.kind {
                ProxyKind::HttpConnect => self.http_connect(&mut stream, host, port).await,
                ProxyKind::Socks5 => self.socks5_connect(&mut stream, host, port).await,
            }
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(result) => result.map(|()| stream),
            Err(_) => Err(self.protocol("no answer to the tunnel request in time")),
        }
    }

    fn protocol(&self, reason: impl Into<String>) -> ProxyError {
        ProxyError::Protocol { proxy: self.to_string(), reason: reason.into() }
    }

    fn io(&self, error: std::io::Error) -> ProxyError {
        self.protocol(format!("the connection broke during the handshake: {error}"))
    }

    async fn http_connect(&self, stream: &mut TcpStream, host: &str, port: u16) -> Result<(), ProxyError> {
        let target = format!("{host}:{port}");
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(user) = &self.username {
            let pair = format!("{user}:{}", self.password.as_deref().unwrap_or(""));
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            request.push_str(&format!("Proxy-Authorization: Basic {encoded}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| self.io(e))?;
        // Read the answer's head byte by byte: nothing after it may be consumed, it
        // belongs to the tunnel.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_RESPONSE_HEAD {
                return Err(self.protocol("the answer to CONNECT is too long"));
            }
            let byte = stream.read_u8().await.map_err(|e| self.io(e))?;
            head.push(byte);
        }
        let head = String::from_utf8_lossy(&head);
        let status_line = head.lines().next().unwrap_or_default().to_string();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.protocol(format!("not an HTTP answer: '{status_line}'")))?;
        match status {
            200..=299 => Ok(()),
            407 => Err(ProxyError::BadCredentials { proxy: self.to_string(), answer: status_line }),
            _ => Err(ProxyError::Refused { proxy: self.to_string(), target, answer: status_line }),
        }
    }

    async fn socks5_connect(&self, stream: &mut TcpStream, host: &str, port: u16) -> Result<(), ProxyError> {
        let methods: &[u8] = if self.username.is_some() { &[0x00, 0x02] } else { &[0x00] };
        let mut greeting = vec![0x05, methods.len() as u8];
        greeting.extend_from_slice(methods);
        stream.write_all(&greeting).await.map_err(|e| self.io(e))?;
        let mut choice = [0u8; 2];
        stream.read_exact(&mut choice).await.map_err(|e| self.io(e))?;
        if choice[0] != 0x05 {
            return Err(self.protocol(format!("not a SOCKS5 proxy (version byte {})", choice[0])));
        }
        match choice[1] {
            0x00 => {}
            0x02 => {
                let user = self.username.as_deref().unwrap_or_default().as_bytes();
                let pass = self.password.as_deref().unwrap_or_default().as_bytes();
                let mut auth = vec![0x01, user.len() as u8];
                auth.extend_from_slice(user);
                auth.push(pass.len() as u8);
                auth.extend_from_slice(pass);
                stream.write_all(&auth).await.map_err(|e| self.io(e))?;
                let mut answer = [0u8; 2];
                stream.read_exact(&mut answer).await.map_err(|e| self.io(e))?;
                if answer[1] != 0x00 {
                    return Err(ProxyError::BadCredentials {
                        proxy: self.to_string(),
                        answer: format!("username/password refused (status {})", answer[1]),
                    });
                }
            }
            0xFF => {
                return Err(ProxyError::BadCredentials {
                    proxy: self.to_string(),
                    answer: "the proxy accepts none of our authentication methods (credentials missing?)".into(),
                })
            }
            other => return Err(self.protocol(format!("it chose authentication method {other}"))),
        }
        let host_bytes = host.as_bytes();
        if host_bytes.len() > 255 {
            return Err(self.protocol("target host name too long"));
        }
        let mut request = vec![0x05, 0x01, 0x00, 0x03, host_bytes.len() as u8];
        request.extend_from_slice(host_bytes);
        request.extend_from_slice(&port.to_be_bytes());
        stream.write_all(&request).await.map_err(|e| self.io(e))?;
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await.map_err(|e| self.io(e))?;
        if reply[1] != 0x00 {
            return Err(ProxyError::Refused {
                proxy: self.to_string(),
                target: format!("{host}:{port}"),
                answer: format!("SOCKS5 reply {}: {}", reply[1], socks_reply_text(reply[1])),
            });
        }
        // The bound address, which we do not need.
        let skip = match reply[3] {
            0x01 => 4,
            0x04 => 16,
            0x03 => usize::from(stream.read_u8().await.map_err(|e| self.io(e))?),
            other => return Err(self.protocol(format!("unknown address type {other}"))),
        };
        let mut rest = vec![0u8; skip + 2];
        stream.read_exact(&mut rest).await.map_err(|e| self.io(e))?;
        Ok(())
    }
}

fn socks_reply_text(code: u8) -> &'static str {
    match code {
        0x01 => "general failure",
        0x02 => "not allowed by the proxy's rules",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        _ => "unknown error",
    }
}

/// The proxy for `host` from the standard environment (`HTTPS_PROXY`, `ALL_PROXY`, lower
/// case too), unless `NO_PROXY` covers the host.
pub fn from_environment(host: &str) -> Option<Result<Proxy, ProxyError>> {
    let var = |name: &str| {
        std::env::var(name).ok().or_else(|| std::env::var(name.to_lowercase()).ok()).filter(|v| !v.is_empty())
    };
    if let Some(no_proxy) = var("NO_PROXY") {
        if bypassed(&no_proxy, host) {
            return None;
        }
    }
    var("HTTPS_PROXY").or_else(|| var("ALL_PROXY")).map(|url| Proxy::parse(&url))
}

fn bypassed(no_proxy: &str, host: &str) -> bool {
    no_proxy.split(',').map(str::trim).filter(|e| !e.is_empty()).any(|entry| {
        let entry = entry.trim_start_matches('.');
        entry == "*" || host == entry || host.ends_with(&format!(".{entry}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_passwords_never_show() {
        let proxy = Proxy::parse("socks5://alice:s%40cret@10.0.0.5:1080").unwrap();
        assert_eq!(proxy.kind, ProxyKind::Socks5);
        assert_eq!((proxy.host.as_str(), proxy.port), ("10.0.0.5", 1080));
        assert_eq!(proxy.username.as_deref(), Some("alice"));
        assert_eq!(proxy.password.as_deref(), Some("s@cret"));
        assert_eq!(proxy.to_string(), "socks5://alice:***@10.0.0.5:1080");
        assert!(!format!("{proxy:?}").contains("cret"));
        assert_eq!(Proxy::parse("http://proxy:3128").unwrap().kind, ProxyKind::HttpConnect);
        for bad in [
            "proxy:3128",
            "ftp://x:1",
            "http://host",
            "http://host:port",
            "http://:1",
            "https://p:1",
            "http://p:1/path",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_proxy_matches_hosts_and_domains() {
        assert!(bypassed("localhost,.whatsapp.net", "g.whatsapp.net"));
        assert!(bypassed("web.whatsapp.com", "web.whatsapp.com"));
        assert!(bypassed("*", "anything"));
        assert!(!bypassed("example.com", "web.whatsapp.com"));
    }
}
