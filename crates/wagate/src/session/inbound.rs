//! Received messages, committed before WhatsApp hears they arrived. The engine calls
//! [`InboundRecorder::commit`] from whatsapp-rust's durability hook and acks a message to
//! the server only once it returned `Ok`; a crash before that makes WhatsApp deliver the
//! message again, and a redelivery (same chat, sender and id) makes no second event.
//!
//! Nothing here waits on the network between "received" and "committed": a group message
//! whose subject is not in the cache is committed held, and released with the subject once
//! it has been looked up. Messages of sessions with a Node-service webhook, whose event
//! carries the file, are committed to the list of events waiting for their download.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tracing::warn;

use super::group_names::{GroupNames, LOOKUP_TIMEOUT};
use super::media_upserts::MediaUpserts;
use crate::engine::{Connection, Inbound, InboundSink, MediaRef};
use crate::store::{self, NewEvent, WebhookFormat};
use crate::webhook::{now_ms, Outbox};

/// The session's connection of the moment (`None` while it has none).
pub(super) type Live = watch::Receiver<Option<Arc<dyn Connection>>>;

pub(super) struct InboundRecorder {
    pub session: String,
    pub outbox: Outbox,
    /// Where callers reach this gateway; events link to media downloads under it.
    pub public_url: String,
    pub groups: Arc<GroupNames>,
    pub live: Live,
    pub media_upserts: Arc<MediaUpserts>,
    /// Each newly committed message, as `messages.upsert` carries it, for whoever follows
    /// the session live (its event stream).
    pub received: broadcast::Sender<Arc<Value>>,
}

/// One message on its way into the store.
struct Item {
    message: Inbound,
    data: Value,
    /// Its `messages.upsert` event (native webhooks), if the session has a webhook.
    event: Option<NewEvent>,
}

/// What a commit added that is to be finished after it.
enum Added {
    /// A native event, held until its group's subject is known.
    Held { event: NewEvent, data: Value, group: String },
    /// A Node-service event waiting for its file.
    WaitingForFile { seq: i64, data: Value, media: Option<MediaRef> },
}

#[async_trait]
impl InboundSink for InboundRecorder {
    async fn commit(&self, messages: Vec<Inbound>) -> Result<(), String> {
        let compat = self.is_compat();
        let items = messages
            .into_iter()
            .filter(|m| !m.from_me)
            .map(|message| self.item(message, compat))
            .collect::<Result<Vec<_>, _>>()?;
        if items.is_empty() {
            return Ok(());
        }
        #[cfg(feature = "sandbox")]
        if let Some(delay) = sandbox_slow_commit() {
            tokio::time::sleep(delay).await;
        }
        let session = self.session.clone();
        // Copies only for live followers, when there are any.
        let followed = self.received.receiver_count() > 0;
        let (kinds, to_finish, shown) = self
            .outbox
            .store()
            .write(move |db| {
                let now = now_ms();
                let (mut kinds, mut to_finish, mut shown) = (Vec::new(), Vec::new(), Vec::new());
                for Item { message, data, event } in items {
                    if !store::claim_inbound(db, &session, &message, now)? {
                        continue;
                    }
                    store::record_received(db, &session, &message, now)?;
                    if followed {
                        shown.push(data.clone());
                    }
                    if compat {
                        let media = message.media.map(|m| m.location);
                        let seq = store::add_pending_upsert(db, &session, &data, media.as_ref())?;
                        to_finish.push(Added::WaitingForFile { seq, data, media });
                    } else if let Some(event) = event {
                        store::insert_event(db, &event)?;
                        if event.held {
                            to_finish.push(Added::Held { event, data, group: message.chat });
                        }
                    }
                    kinds.push(message.kind);
                }
                Ok((kinds, to_finish, shown))
            })
            .await
            .map_err(|e| {
                warn!(session = %self.session, "could not commit received messages; WhatsApp will deliver them again: {e}");
                e.to_string()
            })?;
        // Counted once committed: a batch that failed comes again and is counted then.
        for kind in kinds {
            crate::metrics::METRICS.messages_received.with_label_values(&[kind.as_str()]).inc();
        }
        self.outbox.wake(&self.session);
        for data in shown {
            // Nobody listening any more is fine.
            let _ = self.received.send(Arc::new(data));
        }
        for added in to_finish {
            match added {
                Added::Held { event, data, group } => self.release_later(event, data, group),
                Added::WaitingForFile { seq, data, media } => self.media_upserts.enqueue(seq, data, media),
            }
        }
        Ok(())
    }
}

/// Sandbox builds only: `WAGATE_SANDBOX_SLOW_COMMIT_MS` makes every commit of received
/// messages wait that long first, as a slow disk would, so that a test's kill lands
/// between a message's arrival and its commit (where only the ack-after-commit rule keeps
/// it from being lost).
#[cfg(feature = "sandbox")]
fn sandbox_slow_commit() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        let ms: u64 = std::env::var("WAGATE_SANDBOX_SLOW_COMMIT_MS").ok()?.parse().ok()?;
        Some(std::time::Duration::from_millis(ms))
    })
}

impl InboundRecorder {
    fn is_compat(&self) -> bool {
        match self.outbox.endpoint(&self.session) {
            Ok(endpoint) => endpoint.is_some_and(|e| e.format == WebhookFormat::Compat),
            Err(e) => {
                warn!(session = %self.session, "could not read the session's webhook settings: {e}");
                false
            }
        }
    }

    fn item(&self, mut message: Inbound, compat: bool) -> Result<Item, String> {
        if let Some(media) = &mut message.media {
            // The id comes from the sender: escaped, it stays one path segment. `.` and `..`
            // would still be dot segments (also as %2E), which clients fold into another
            // route: such a message gets no link (WhatsApp's own ids are never these).
            if message.id != "." && message.id != ".." {
                let message_id = crate::percent::encode(&message.id);
                media.url = Some(format!("{}/v1/sessions/{}/media/{message_id}", self.public_url, self.session));
            }
        }
        let mut held = false;
        if message.is_group {
            match self.groups.cached(&message.chat) {
                Some(subject) => message.group_subject = subject,
                None => held = true,
            }
        }
        let data = serde_json::to_value(&message).expect("messages serialize");
        let event = match compat {
            true => None,
            false => self.outbox.prepare(&self.session, "messages.upsert", &data).map_err(|e| e.to_string())?,
        };
        let event = event.map(|event| NewEvent { held, ..event });
        Ok(Item { message, data, event })
    }

    /// Looks up the group's subject, then lets the held event go with it (or without it,
    /// when the lookup fails: the message matters more than its group's name).
    fn release_later(&self, event: NewEvent, mut data: Value, group: String) {
        let (session, outbox, groups, mut live) =
            (self.session.clone(), self.outbox.clone(), self.groups.clone(), self.live.clone());
        tokio::spawn(async move {
            let conn = tokio::time::timeout(LOOKUP_TIMEOUT, live.wait_for(Option::is_some)).await;
            let conn = conn.ok().and_then(|c| c.ok()).and_then(|c| c.clone());
            if let Some(conn) = conn {
                data["group_subject"] = groups.subject(&session, conn.as_ref(), &group).await.into();
            }
            let body = match outbox.body_of(&event, &data) {
                Ok(Some(body)) => body,
                _ => event.body.clone(),
            };
            if let Err(e) = outbox.store().release_event(&event.id, body, now_ms()).await {
                warn!(session = %session, "could not release a group message's event; it goes at the next start: {e}");
            }
            outbox.wake(&session);
        });
    }
}
