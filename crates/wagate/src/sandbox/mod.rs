//! `wagate sandbox` (sandbox builds only): WhatsApp in a box, in this process. The simulator
//! (`wagate-sim`) runs beside the gateway; a simulated phone scans a session's QR code when
//! asked to (`POST /v1/sandbox/scan`, the console's "Scan with a simulated phone"), and a
//! simulated contact, a second account linked through the same engine wagate uses, answers
//! messages: it echoes texts and sends a small PDF for "file".

mod contact;
pub mod data_dir;
mod document;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tracing::info;
use wagate_sim::{Endpoints, ServerKeys, SimConfig, Simulator};

pub use contact::{Contact, CONTACT_SESSION, FILE_KEYWORD};

use crate::session::{SessionError, SessionManager, SessionView};
use crate::store::StoreError;

/// The simulated contact's number: +1 555 010 0100.
pub const CONTACT_PHONE: &str = "15550100100";
/// Numbers of the simulated phones that scan QR codes: +1 555 020 0001, then counting up,
/// one fresh account per scan (an account links at most 4 devices).
const FIRST_SCANNING_PHONE: u64 = 15_550_200_001;
/// How long a link through the simulator may take (the scan call waits for the pairing).
const LINK_WAIT: Duration = Duration::from_secs(40);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the simulator could not start: {0}")]
    Simulator(#[from] wagate_sim::SimError),
    #[error("the simulator's control API did not answer {call}: {reason}")]
    Control { call: &'static str, reason: String },
    /// The simulated phone could not do it; `status` is the simulator's answer.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the contact's download directory: {0}")]
    Scratch(#[from] std::io::Error),
}

/// What `GET /v1/sandbox` shows.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SandboxInfo {
    pub simulator: SimulatorInfo,
    pub contact: ContactInfo,
}

/// Where the in-process simulator listens.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SimulatorInfo {
    pub ws_url: String,
    pub control_url: String,
}

/// The simulated contact who writes back.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = SandboxContact)]
pub struct ContactInfo {
    pub phone: &'static str,
    pub name: &'static str,
    /// Its own connection's state; null until it is up.
    pub state: Option<crate::session::StateKind>,
    pub echoes: &'static str,
    /// A text with this word makes it send a file back.
    pub file_keyword: &'static str,
    pub file: &'static str,
}

/// A phone that scanned a QR code.
#[derive(Debug, Clone, Serialize)]
pub struct Scanned {
    /// The simulated phone's number (digits).
    pub phone: String,
    /// The linked device, e.g. `15550200001:1@s.whatsapp.net`.
    pub jid: String,
}

/// The simulator and the contact of one `wagate sandbox` run.
pub struct Sandbox {
    pub endpoints: Endpoints,
    simulator: Mutex<Option<Simulator>>,
    control: reqwest::Client,
    next_phone: AtomicU64,
    contact: Mutex<Option<Contact>>,
}

impl Sandbox {
    /// Starts the simulator on a free port of 127.0.0.1, then links the simulated contact
    /// (its data in `contact_dir`) and starts answering its messages.
    pub async fn start(contact_dir: &std::path::Path) -> Result<std::sync::Arc<Self>, SandboxError> {
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let simulator = Simulator::start(listen, ServerKeys::generate(), SimConfig::default()).await?;
        info!(ws_url = %simulator.endpoints.ws_url, "sandbox: the WhatsApp simulator runs in this process");
        let control = reqwest::Client::builder()
            // Loopback only: no proxy from the environment applies.
            .no_proxy()
            .timeout(LINK_WAIT)
            .build()
            .map_err(|e| SandboxError::Control { call: "setup", reason: e.to_string() })?;
        let sandbox = std::sync::Arc::new(Self {
            endpoints: simulator.endpoints.clone(),
            simulator: Mutex::new(Some(simulator)),
            control,
            next_phone: AtomicU64::new(FIRST_SCANNING_PHONE),
            contact: Mutex::new(None),
        });
        let contact = Contact::start(&sandbox, contact_dir).await;
        let contact = match contact {
            Ok(contact) => contact,
            Err(e) => {
                sandbox.stop().await;
                return Err(e);
            }
        };
        *sandbox.contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(contact);
        Ok(sandbox)
    }

    /// What the console and `GET /v1/sandbox` show.
    pub fn describe(&self) -> SandboxInfo {
        let contact = self.contact.lock().unwrap_or_else(|p| p.into_inner());
        let state = contact.as_ref().and_then(|c| c.state()).map(|v| v.state);
        SandboxInfo {
            simulator: SimulatorInfo {
                ws_url: self.endpoints.ws_url.clone(),
                control_url: self.endpoints.control_url.clone(),
            },
            contact: ContactInfo {
                phone: CONTACT_PHONE,
                name: contact::CONTACT_NAME,
                state,
                echoes: "every text, as a reply",
                file_keyword: FILE_KEYWORD,
                file: "a small PDF (wagate-sandbox.pdf)",
            },
        }
    }

    /// A fresh simulated phone scans `qr` (the text of a session's current QR code); returns
    /// once the client signed the pairing (its 515 restart and login follow).
    pub async fn scan(&self, qr: &str) -> Result<Scanned, SandboxError> {
        let phone = self.next_phone.fetch_add(1, Ordering::Relaxed).to_string();
        self.scan_as(qr, &phone).await
    }

    async fn scan_as(&self, qr: &str, phone: &str) -> Result<Scanned, SandboxError> {
        let answer = self.call("/control/scan", json!({ "qr": qr, "phone": phone })).await?;
        let jid = answer["jid"].as_str().unwrap_or_default().to_string();
        info!(phone, device = %jid, "sandbox: a simulated phone scanned the QR code");
        Ok(Scanned { phone: phone.to_string(), jid })
    }

    /// A POST to the simulator's control API; its error answers become `Refused`.
    async fn call(&self, path: &'static str, body: Value) -> Result<Value, SandboxError> {
        let url = format!("{}{path}", self.endpoints.control_url);
        let unreachable = |e: reqwest::Error| SandboxError::Control { call: path, reason: e.without_url().to_string() };
        let response = self.control.post(url).json(&body).send().await.map_err(unreachable)?;
        let status = response.status();
        let value: Value = response.json().await.map_err(unreachable)?;
        if status.is_success() {
            Ok(value)
        } else {
            let message = value["error"].as_str().map_or_else(|| value.to_string(), str::to_string);
            Err(SandboxError::Refused { status: status.as_u16(), message })
        }
    }

    /// Stops the contact, then the simulator (closing every client connection).
    pub async fn stop(&self) {
        let contact = self.contact.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(contact) = contact {
            contact.stop().await;
        }
        let simulator = self.simulator.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(simulator) = simulator {
            simulator.stop().await;
        }
    }
}

/// Waits until session `id` of `manager` is in a state `want` accepts.
pub(crate) async fn wait_for(
    manager: &SessionManager,
    id: &str,
    what: &str,
    want: impl Fn(&SessionView) -> bool,
) -> Result<SessionView, SandboxError> {
    let (current, mut changes) = manager.subscribe(id).ok_or(SessionError::NotFound)?;
    if want(&current) {
        return Ok(current);
    }
    let waited = tokio::time::timeout(LINK_WAIT, async {
        loop {
            match changes.recv().await {
                Ok(view) if want(&view) => return Ok(view),
                Ok(_) => {}
                // Some changes were missed: the current state says where it is.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Some(view) = manager.get(id).filter(|v| want(v)) {
                        return Ok(view);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err(SandboxError::Session(SessionError::Unavailable))
                }
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| Err(SandboxError::Timeout(what.to_string())))
}
