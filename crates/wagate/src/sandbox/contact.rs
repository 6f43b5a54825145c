//! The simulated contact: a second WhatsApp account on the simulator whose linked device is
//! run by wagate's own session code (a session manager of its own, with its own data
//! directory, invisible to the API), and a small bot that answers what it receives: texts
//! come back as replies, "file" brings a PDF, anything else a short note.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{document, wait_for, Sandbox, SandboxError, CONTACT_PHONE};
use crate::engine::{Content, MediaKind, MediaUpload, Outgoing, WhatsAppEngine};
use crate::session::{SessionConfig, SessionError, SessionManager, SessionView, StateKind};
use crate::store::Store;
use crate::webhook::{Outbox, WebhookSettings};

/// The contact's session in its own manager.
pub const CONTACT_SESSION: &str = "contact";
/// A text that is this word (any case) is answered with a PDF.
pub const FILE_KEYWORD: &str = "file";
pub(super) const CONTACT_NAME: &str = "Sandbox contact";
const ABOUT: &str = "wagate sandbox contact: I echo every text; send \"file\" and I send you a PDF.";

pub struct Contact {
    manager: Arc<SessionManager>,
    bot: JoinHandle<()>,
}

impl Contact {
    /// Links the contact's device (a simulated phone scans its QR code) and starts answering.
    pub(super) async fn start(sandbox: &Sandbox, data_dir: &Path) -> Result<Self, SandboxError> {
        let store = Arc::new(Store::open(data_dir)?);
        let outbox = Outbox::new(store, WebhookSettings::default());
        let scratch_dir = data_dir.join("tmp");
        crate::store::private::create_dir(&scratch_dir)?;
        let scratch = crate::engine::scratch::Scratch::new(scratch_dir);
        let engine = Arc::new(WhatsAppEngine::direct(sandbox.endpoints.ws_url.clone(), scratch));
        let manager = SessionManager::new(engine, outbox, SessionConfig::default());
        manager.create(CONTACT_SESSION, None, None).await?;
        let inbox = manager.received(CONTACT_SESSION).ok_or(SessionError::NotFound)?;
        let waiting = wait_for(&manager, CONTACT_SESSION, "the contact's QR code", |v| {
            v.state == StateKind::AwaitingScan && v.qr.is_some()
        })
        .await?;
        sandbox.scan_as(waiting.qr.as_deref().unwrap_or_default(), CONTACT_PHONE).await?;
        wait_for(&manager, CONTACT_SESSION, "the contact to connect", |v| v.state == StateKind::Connected).await?;
        let about = json!({ "phone": CONTACT_PHONE, "about": ABOUT, "picture_url": null });
        if let Err(e) = sandbox.call("/control/profile", about).await {
            warn!("sandbox: could not set the contact's about text: {e}");
        }
        info!(phone = CONTACT_PHONE, "sandbox: the simulated contact is connected and answers messages");
        let bot = tokio::spawn(answer_all(manager.clone(), inbox));
        Ok(Self { manager, bot })
    }

    pub fn state(&self) -> Option<SessionView> {
        self.manager.get(CONTACT_SESSION)
    }

    pub(super) async fn stop(self) {
        self.bot.abort();
        self.manager.shutdown().await;
    }
}

async fn answer_all(manager: Arc<SessionManager>, mut inbox: broadcast::Receiver<Arc<Value>>) {
    loop {
        match inbox.recv().await {
            Ok(message) => {
                if let Err(e) = answer(&manager, &message).await {
                    warn!("sandbox: the simulated contact could not answer a message: {e}");
                }
            }
            Err(RecvError::Lagged(missed)) => {
                warn!("sandbox: the simulated contact missed {missed} messages (they came faster than it answers)")
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// What the contact says to `message` (a `messages.upsert` data object); `None`: nothing.
fn reply_to(message: &Value) -> Option<Content> {
    if message["is_group"].as_bool() == Some(true) {
        return None;
    }
    let kind = message["type"].as_str().unwrap_or("unknown");
    match (kind, message["text"].as_str()) {
        ("text", Some(text)) if text.trim().eq_ignore_ascii_case(FILE_KEYWORD) => {
            let from = message["sender_phone"].as_str().unwrap_or("you");
            Some(Content::Media(MediaUpload {
                kind: MediaKind::Document,
                data: document::pdf(&[
                    "Hello from the wagate sandbox",
                    &format!("The simulated contact +{CONTACT_PHONE} made this PDF"),
                    &format!("when +{from} wrote \"{FILE_KEYWORD}\","),
                    &format!("on {}.", chrono::Utc::now().format("%Y-%m-%d at %H:%M:%S UTC")),
                ]),
                mimetype: "application/pdf".into(),
                filename: Some("wagate-sandbox.pdf".into()),
                caption: Some("Here is your file".into()),
                voice: false,
            }))
        }
        ("text", Some(text)) => Some(Content::Text(text.to_string())),
        // Reactions, edits and revokes are about earlier messages: no answer.
        ("reaction" | "edit" | "revoke", _) => None,
        (other, _) => Some(Content::Text(format!(
            "I got your {other}. Send me a text and I echo it; send \"{FILE_KEYWORD}\" and I send you a PDF."
        ))),
    }
}

async fn answer(manager: &Arc<SessionManager>, message: &Value) -> Result<(), SessionError> {
    let Some(content) = reply_to(message) else { return Ok(()) };
    let Some(chat) = message["chat"].as_str() else { return Ok(()) };
    let quoted = message["id"].as_str().and_then(|id| manager.message_ref(CONTACT_SESSION, id).ok());
    let kind = content.kind();
    let sent = manager.send(CONTACT_SESSION, chat, Outgoing { content, reply_to: quoted }, None, true).await?;
    info!(to = %chat, message = %sent.id, "sandbox: the simulated contact answered with a {kind}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str) -> Value {
        json!({ "type": "text", "text": text, "is_group": false, "chat": "15550200001@s.whatsapp.net" })
    }

    #[test]
    fn texts_are_echoed_and_file_brings_a_pdf() {
        assert_eq!(reply_to(&text("hello")), Some(Content::Text("hello".into())));
        for word in ["file", " FILE ", "File"] {
            match reply_to(&text(word)) {
                Some(Content::Media(media)) => {
                    assert_eq!(media.kind, MediaKind::Document);
                    assert_eq!(media.mimetype, "application/pdf");
                    assert!(media.data.starts_with(b"%PDF-"));
                }
                other => panic!("{word:?}: {other:?}"),
            }
        }
        assert_eq!(reply_to(&text("files please")), Some(Content::Text("files please".into())));
    }

    #[test]
    fn groups_and_reactions_get_no_answer_and_media_a_note() {
        assert_eq!(reply_to(&json!({ "type": "text", "text": "hi", "is_group": true })), None);
        assert_eq!(reply_to(&json!({ "type": "reaction", "reaction": "👍", "is_group": false })), None);
        match reply_to(&json!({ "type": "image", "is_group": false })) {
            Some(Content::Text(note)) => assert!(note.contains("image"), "{note}"),
            other => panic!("{other:?}"),
        }
    }
}
