//! `wagate link ID`: creates or starts the session through the running gateway (a session
//! already waiting for a scan is left alone, never restarted), shows each QR code in the
//! terminal as it comes, or a pairing code with `--phone`, and follows the session's events
//! until it is connected (exit 0) or linking fails (exit 1, with the reason).

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{base_url, Client, ClientError};
use super::table::SessionRow;
use super::{exit, DataDirArg, GatewayArgs};
use crate::http::qr::{render, QrFormat};
use crate::session::state::{reason, COMPANION_LIMIT_HINT};
use crate::session::StateKind;

/// How often the waiting line repeats while a QR code is up.
const REMINDER_EVERY: Duration = Duration::from_secs(15);

#[derive(Args, Debug)]
pub struct LinkArgs {
    /// The session's id (created if it does not exist).
    id: String,
    /// Link by phone number instead of a QR code: the number with country code; a pairing
    /// code is shown to type on that phone.
    #[arg(long)]
    phone: Option<String>,
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    data: DataDirArg,
}

pub async fn run(args: LinkArgs) -> anyhow::Result<i32> {
    let client = Client::new(base_url(&args.gateway, Some(&args.data.data_dir)), args.gateway.api_key.clone())?;
    let id = &args.id;
    let view = match client.call(Method::POST, "/v1/sessions", Some(json!({ "id": id }))).await {
        Ok(view) => view,
        Err(ClientError::NotRunning { url, reason }) => {
            eprintln!(
                "wagate: the gateway is not running at {url} ({reason}); start it first (wagate serve), or pass --url"
            );
            return Ok(exit::NOT_RUNNING);
        }
        Err(e) => return Err(e.into()),
    };
    if view["state"] == "connected" {
        println!("{id} is already linked and connected as {}", SessionRow::from_api(&view).who());
        return Ok(exit::OK);
    }
    // Subscribe before asking for a pairing code, so no state change is missed.
    let mut events = client.events(&format!("/v1/sessions/{id}/events")).await?;
    if let Some(phone) = &args.phone {
        let answer =
            client.call(Method::POST, &format!("/v1/sessions/{id}/pair-code"), Some(json!({ "phone": phone }))).await?;
        let code = answer["code"].as_str().unwrap_or_default();
        println!("pairing code for {id}: {code}");
        println!(
            "on the phone {phone}: WhatsApp > Settings > Linked devices > Link a device > \
             Link with phone number instead, then type the code (valid about 3 minutes)"
        );
    }

    let mut progress = Progress { id: id.clone(), show_qr: args.phone.is_none(), ..Progress::default() };
    let mut reminder = tokio::time::interval(REMINDER_EVERY);
    reminder.tick().await;
    loop {
        tokio::select! {
            event = events.next() => {
                let event = match event {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        eprintln!("wagate: the gateway closed the event stream (did it stop?); {id} is not linked yet");
                        return Ok(exit::FAILED);
                    }
                    Err(e) => return Err(e.into()),
                };
                if event.name != "state" {
                    continue;
                }
                let Ok(view) = serde_json::from_str::<Value>(&event.data) else { continue };
                if let Some(code) = progress.show(&view) {
                    return Ok(code);
                }
            }
            _ = reminder.tick() => progress.remind(),
        }
    }
}

/// What has been shown so far, so that each line appears once.
#[derive(Default)]
struct Progress {
    id: String,
    show_qr: bool,
    last: Option<(String, Option<String>)>,
    qr: Option<String>,
    qr_expires: Option<DateTime<Utc>>,
}

impl Progress {
    /// Shows what changed; `Some(exit code)` once linking is over.
    fn show(&mut self, view: &Value) -> Option<i32> {
        let row = SessionRow::from_api(view);
        let state = row.state?;
        if state == StateKind::AwaitingScan {
            self.qr_expires =
                view["qr_expires_at"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.to_utc());
            let qr = view["qr"].as_str().map(str::to_string);
            if self.show_qr && qr.is_some() && qr != self.qr {
                self.print_qr(qr.as_deref().unwrap_or_default());
            }
            self.qr = qr;
        } else {
            self.qr_expires = None;
        }
        let key = (state.as_str().to_string(), row.reason.clone());
        if self.last.as_ref() == Some(&key) {
            return None;
        }
        self.last = Some(key);
        match state {
            StateKind::Connected => {
                println!("connected as {}", row.who());
                return Some(exit::OK);
            }
            StateKind::Connecting if row.reason.as_deref() == Some(reason::RESTART_REQUIRED) => {
                println!("paired, restarting (515, normal)")
            }
            StateKind::Connecting => println!("connecting to WhatsApp…"),
            StateKind::AwaitingScan if !self.show_qr => {
                println!("waiting for the pairing code to be entered on the phone…")
            }
            StateKind::AwaitingScan => {}
            StateKind::Pairing => println!("the phone accepted the link; pairing…"),
            StateKind::Reconnecting => println!("{}; retrying…", row.reason_text()),
            StateKind::Stopped
            | StateKind::LoggedOut
            | StateKind::Replaced
            | StateKind::Banned
            | StateKind::Outdated
            | StateKind::Failed => {
                eprintln!(
                    "linking {} failed: {} ({}). {}",
                    self.id,
                    state.as_str(),
                    row.reason_text(),
                    row.explanation()
                );
                if row.needs_companion_hint() {
                    eprintln!("{COMPANION_LIMIT_HINT}");
                }
                return Some(exit::FAILED);
            }
        }
        None
    }

    fn print_qr(&self, qr: &str) {
        match render(qr, QrFormat::Text) {
            Ok(drawing) => {
                println!("scan this QR code with WhatsApp on the phone (Settings > Linked devices > Link a device):");
                print!("{}", String::from_utf8_lossy(&drawing));
            }
            Err(e) => println!("cannot draw the QR code ({e}); fetch it as an image: GET /v1/sessions/{}/qr", self.id),
        }
        self.remind();
    }

    fn remind(&self) {
        if let Some(expires) = self.qr_expires {
            let left = (expires - Utc::now()).num_seconds().max(0);
            let what = if self.show_qr { "scan" } else { "the pairing code" };
            println!("waiting for {what}… {left} s left on this code");
        }
    }
}
