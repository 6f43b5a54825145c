//! Webhooks that never lose an event: every event is written to the outbox in the store
//! before anything is sent; one dispatcher delivers them, in order per session, signed,
//! with retries and a dead letter.

pub mod cloud;
pub mod compat;
mod dispatcher;
pub mod envelope;
pub mod retry;
pub mod signing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::warn;

pub use dispatcher::{send_once, Dispatcher, TestOutcome};
pub use envelope::TestData;

use crate::store::{NewEvent, Store, StoreError, WebhookConfig, WebhookFormat};

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
    wake: Arc<Wake>,
    /// On a cluster, which sessions' events this node delivers: those it runs, so that each
    /// session's events go out from one node, in order (unset: all).
    owns: Arc<std::sync::OnceLock<Ownership>>,
}

/// Whether this node runs a session.
pub type Ownership = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Which sessions have new events for the dispatcher (a set, so it stays small however
/// many events come in before the dispatcher looks).
#[derive(Default)]
pub(crate) struct Wake {
    /// Session -> whether its queue must be read again from its start (a retried event).
    sessions: Mutex<HashMap<String, bool>>,
    notify: Notify,
}

impl Wake {
    fn session(&self, session: &str, from_start: bool) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = sessions.entry(session.to_string()).or_insert(false);
        *entry |= from_start;
        drop(sessions);
        self.notify.notify_one();
    }

    /// The sessions woken since the last call.
    pub(crate) fn take(&self) -> HashMap<String, bool> {
        std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }
}

impl Outbox {
    pub fn new(store: Arc<Store>, settings: WebhookSettings) -> Self {
        Self { store, settings: Arc::new(settings), wake: Arc::default(), owns: Arc::default() }
    }

    /// Delivers only the events of the sessions `owns` says this node runs.
    pub fn deliver_only(&self, owns: Ownership) {
        let _ = self.owns.set(owns);
    }

    /// Whether this node delivers the session's events.
    pub fn delivers(&self, session: &str) -> bool {
        self.owns.get().is_none_or(|owns| owns(session))
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The webhook that applies to a session: its own, else the default.
    pub fn endpoint(&self, session: &str) -> Result<Option<WebhookConfig>, StoreError> {
        let own = self.store.session_webhook(session)?;
        Ok(own.or_else(|| self.settings.default.clone()))
    }

    /// The event as it will be stored, or `None` when the session has no webhook that
    /// wants it. For callers that insert it in a transaction of their own
    /// ([`crate::store::insert_event`]); they call [`Outbox::wake`] after the commit.
    pub fn prepare(
        &self,
        session: &str,
        event: &str,
        data: &serde_json::Value,
    ) -> Result<Option<NewEvent>, StoreError> {
        let Some(endpoint) = self.endpoint(session)? else {
            return Ok(None);
        };
        if !endpoint.wants(event) {
            return Ok(None);
        }
        let now = now_ms();
        let id = envelope::new_event_id(now);
        let Some(body) = body(&self.store, &endpoint, &id, session, event, now, data) else {
            return Ok(None);
        };
        Ok(Some(NewEvent {
            id,
            session: session.to_string(),
            event: event.to_string(),
            body,
            created_ms: now,
            held: false,
        }))
    }

    /// The body of an already prepared event with new data (a held event's final form).
    pub fn body_of(&self, prepared: &NewEvent, data: &serde_json::Value) -> Result<Option<String>, StoreError> {
        let Some(endpoint) = self.endpoint(&prepared.session)? else {
            return Ok(None);
        };
        Ok(body(&self.store, &endpoint, &prepared.id, &prepared.session, &prepared.event, prepared.created_ms, data))
    }

    /// Records an event for delivery (when the session has a webhook that wants it) and
    /// wakes the dispatcher. Returns the event id once the row is on disk.
    pub async fn record(
        &self,
        session: &str,
        event: &str,
        data: &serde_json::Value,
    ) -> Result<Option<String>, StoreError> {
        let Some(prepared) = self.prepare(session, event, data)? else {
            return Ok(None);
        };
        let id = prepared.id.clone();
        self.store.enqueue_events(vec![prepared]).await?;
        self.wake(session);
        Ok(Some(id))
    }

    /// Like [`Outbox::record`], for callers that can only log a failure.
    pub async fn record_or_log(&self, session: &str, event: &str, data: &serde_json::Value) {
        if let Err(e) = self.record(session, event, data).await {
            warn!(session, event, "could not record the webhook event: {e}");
        }
    }

    /// Tells the dispatcher that the session has new events.
    pub fn wake(&self, session: &str) {
        self.wake.session(session, false);
    }

    /// Tells the dispatcher to read the session's queue again from its start (an older
    /// event was put back by a manual retry).
    pub fn wake_from_start(&self, session: &str) {
        self.wake.session(session, true);
    }

    pub(crate) fn woken(&self) -> Arc<Wake> {
        self.wake.clone()
    }
}

fn body(
    store: &Store,
    endpoint: &WebhookConfig,
    id: &str,
    session: &str,
    event: &str,
    timestamp_ms: u64,
    data: &serde_json::Value,
) -> Option<String> {
    let body = match endpoint.format {
        WebhookFormat::Native => {
            serde_json::to_string(&envelope::Envelope { id, event, session, timestamp_ms, data, v: 1 })
        }
        WebhookFormat::Compat => serde_json::to_string(&compat::body(session, event, data)?),
        WebhookFormat::Cloud => serde_json::to_string(&cloud::body(store, session, event, data)?),
    };
    Some(body.expect("bodies serialize"))
}
