//! Webhooks that never lose an event: every event is written to the outbox in the store
//! before anything is sent; one dispatcher delivers them, in order per session, signed,
//! with retries and a dead letter.

pub mod compat;
mod dispatcher;
pub mod envelope;
pub mod retry;
pub mod signing;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::warn;

pub use dispatcher::{send_once, Dispatcher, TestOutcome};

use crate::store::{Store, StoreError, WebhookConfig, WebhookFormat};

/// Delivery settings (`wagate serve --webhook-*`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Used by sessions that have no webhook of their own.
    pub default: Option<WebhookConfig>,
    pub timeout: Duration,
    /// How long an event is retried before it goes to the dead letter.
    pub retry_for: Duration,
    /// How long delivered events are kept (for the deliveries API), then pruned.
    pub retention: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            default: None,
            timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Where events are recorded. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<Store>,
    settings: Arc<WebhookSettings>,
    wake: Arc<Notify>,
}

impl Outbox {
    pub fn new(store: Arc<Store>, settings: WebhookSettings) -> Self {
        Self { store, settings: Arc::new(settings), wake: Arc::new(Notify::new()) }
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The webhook that applies to a session: its own, else the default.
    pub fn endpoint(&self, session: &str) -> Result<Option<WebhookConfig>, StoreError> {
        let own = self.store.session(session)?.and_then(|record| record.webhook);
        Ok(own.or_else(|| self.settings.default.clone()))
    }

    /// Records an event for delivery (when the session has a webhook that wants it) and
    /// wakes the dispatcher. Returns the event id. The row is on disk when this returns.
    pub fn record(&self, session: &str, event: &str, data: &serde_json::Value) -> Result<Option<String>, StoreError> {
        let Some(endpoint) = self.endpoint(session)? else {
            return Ok(None);
        };
        if !endpoint.wants(event) {
            return Ok(None);
        }
        let now = now_ms();
        let id = envelope::new_event_id(now);
        let body = match endpoint.format {
            WebhookFormat::Native => {
                serde_json::to_string(&envelope::Envelope { id: &id, event, session, timestamp_ms: now, data, v: 1 })
            }
            WebhookFormat::Compat => match compat::body(session, event, data) {
                Some(body) => serde_json::to_string(&body),
                None => return Ok(None),
            },
        }
        .expect("bodies serialize");
        self.store.enqueue_event(&id, session, event, &body, now)?;
        self.wake.notify_one();
        Ok(Some(id))
    }

    /// Like [`Outbox::record`], for callers that can only log a failure.
    pub fn record_or_log(&self, session: &str, event: &str, data: &serde_json::Value) {
        if let Err(e) = self.record(session, event, data) {
            warn!(session, event, "could not record the webhook event: {e}");
        }
    }

    /// Makes the dispatcher look at the queue now (after a manual retry).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn woken(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}
