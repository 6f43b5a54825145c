//! The HTTP listener: the WhatsApp WebSocket at `/ws/chat` and the control API, on one port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use crate::conn::{self, ConnCommand};
use crate::control;
use crate::error::SimError;
use crate::keys::ServerKeys;
use crate::media::MediaServer;
use crate::state::{SimConfig, SimState};

/// What a client or test needs to reach a running simulator; also the line the binary
/// prints once it is ready.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoints {
    pub ws_url: String,
    pub control_url: String,
    /// The media host (HTTPS, self-signed certificate) that uploads and downloads go to.
    pub media_url: String,
    pub root_public_key: String,
}

/// A running simulator. Dropping it does not stop it; call [`Simulator::stop`].
pub struct Simulator {
    pub endpoints: Endpoints,
    state: Arc<SimState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Simulator {
    pub async fn start(listen: SocketAddr, keys: ServerKeys, config: SimConfig) -> Result<Self, SimError> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let media = MediaServer::bind(addr.ip())?;
        let endpoints = Endpoints {
            ws_url: format!("ws://{addr}/ws/chat"),
            control_url: format!("http://{addr}"),
            media_url: format!("https://{}", media.store.hostname),
            root_public_key: keys.root_public_hex(),
        };
        let state = SimState::new(keys, config, media.store.clone());
        let app = Router::new().route("/ws/chat", get(websocket)).merge(control::routes()).with_state(state.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let (media_shutdown, media_stopped) = oneshot::channel::<()>();
        tokio::spawn(media.serve(async {
            let _ = media_stopped.await;
        }));
        // Stanzas are small and latency matters: no Nagle delay on the server's writes.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
                let _ = media_shutdown.send(());
            });
            if let Err(e) = server.await {
                tracing::error!("simulator server failed: {e}");
            }
        });
        info!(ws_url = %endpoints.ws_url, "simulator listening");
        Ok(Self { endpoints, state, shutdown: Some(shutdown), task })
    }

    /// The line the binary prints on stdout once ready.
    pub fn ready_line(&self) -> String {
        serde_json::to_string(&self.endpoints).expect("endpoints serialize")
    }

    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Closes every client connection and stops listening.
    pub async fn stop(mut self) {
        self.state.stop();
        {
            let inner = self.state.lock();
            for live in inner.conns.values() {
                let _ = live.commands.send(ConnCommand::Close(None));
            }
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

async fn websocket(State(state): State<Arc<SimState>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| conn::serve(socket, state))
}
