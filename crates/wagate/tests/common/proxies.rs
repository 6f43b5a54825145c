//! Small outbound proxies for tests: HTTP CONNECT and SOCKS5, each with optional
//! credentials, logging the tunnels they open. Stopping one cuts its tunnels too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Socks5,
}

pub struct TestProxy {
    pub addr: SocketAddr,
    /// The target (`host:port`) of every tunnel opened, in order.
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestProxy {
    /// Listens on `addr` (port 0 for any) and accepts `credentials` (user, password) if set.
    pub async fn start(kind: Kind, addr: &str, credentials: Option<(&str, &str)>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("proxy listens");
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let credentials = credentials.map(|(u, p)| (u.to_string(), p.to_string()));
        let counter = log.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (credentials, counter) = (credentials.clone(), counter.clone());
                connections.spawn(async move {
                    let _ = serve(kind, client, credentials, counter).await;
                });
            }
        });
        Self { addr, log, task }
    }

    pub fn url(&self, kind: Kind, credentials: Option<(&str, &str)>) -> String {
        let scheme = if kind == Kind::Http { "http" } else { "socks5" };
        match credentials {
            Some((user, pass)) => format!("{scheme}://{user}:{pass}@{}", self.addr),
            None => format!("{scheme}://{}", self.addr),
        }
    }

    pub fn tunnels(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// How many tunnels went to `target` (`host:port`).
    pub fn tunnels_to(&self, target: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|t| *t == target).count()
    }

    /// Stops listening and cuts every tunnel (the JoinSet of connections is dropped).
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn serve(
    kind: Kind,
    mut client: TcpStream,
    credentials: Option<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let target = match kind {
        Kind::Http => http_handshake(&mut client, credentials.as_ref()).await?,
        Kind::Socks5 => socks5_handshake(&mut client, credentials.as_ref()).await?,
    };
    let Some((target, reply)) = target else { return Ok(()) };
    let mut upstream = TcpStream::connect(&target).await?;
    client.write_all(&reply).await?;
    log.lock().unwrap().push(target);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

async fn http_handshake(
    client: &mut TcpStream,
    credentials: Option<&(String, String)>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(client.read_u8().await?);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let target = head.split_whitespace().nth(1).unwrap_or_default().to_string();
    if let Some((user, pass)) = credentials {
        use base64::Engine;
        let expected = format!(
            "proxy-authorization: basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        if !head.lines().any(|l| l.eq_ignore_ascii_case(&expected)) {
            client.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n").await?;
            return Ok(None);
        }
    }
    Ok(Some((target, b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec())))
}

async fn socks5_handshake(
    client: &mut TcpStream,
    credentials: Option<&(String, String)>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut header = [0u8; 2];
    client.read_exact(&mut header).await?;
    let mut methods = vec![0u8; usize::from(header[1])];
    client.read_exact(&mut methods).await?;
    match credentials {
        None => client.write_all(&[5, 0]).await?,
        Some((user, pass)) => {
            if !methods.contains(&2) {
                client.write_all(&[5, 0xFF]).await?;
                return Ok(None);
            }
            client.write_all(&[5, 2]).await?;
            let mut version_len = [0u8; 2];
            client.read_exact(&mut version_len).await?;
            let mut got_user = vec![0u8; usize::from(version_len[1])];
            client.read_exact(&mut got_user).await?;
            let pass_len = client.read_u8().await?;
            let mut got_pass = vec![0u8; usize::from(pass_len)];
            client.read_exact(&mut got_pass).await?;
            if got_user != user.as_bytes() || got_pass != pass.as_bytes() {
                client.write_all(&[1, 1]).await?;
                return Ok(None);
            }
            client.write_all(&[1, 0]).await?;
        }
    }
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    let host = match request[3] {
        3 => {
            let len = client.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).to_string()
        }
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        _ => return Ok(None),
    };
    let port = client.read_u16().await?;
    Ok(Some((format!("{host}:{port}"), vec![5, 0, 0, 1, 0, 0, 0, 0, 0, 0])))
}
