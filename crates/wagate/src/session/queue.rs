//! Sending what waited in the outgoing queue once the session is connected again, in the
//! order it was accepted. One drain runs per session at a time (the lock); a message whose
//! send fails because the connection went away stays queued for the next connection.

use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::engine::{Connection, DeliveryState, EngineError, Sent};
use crate::store::{self, Queued, Store};
use crate::webhook::Outbox;

/// Failed attempts (a dropped connection counts) before a queued message is given up.
const MAX_ATTEMPTS: u32 = 5;
/// Pause before trying a message again on a connection that is still up, times its attempts.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything a drain needs, shared by the supervisor and the manager.
#[derive(Clone)]
pub(super) struct Drainer {
    pub session: String,
    pub store: Arc<Store>,
    pub outbox: Outbox,
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drainer {
    /// Sends queued messages over `conn` until the queue is empty or the connection ends.
    /// A message WhatsApp refuses, or one that keeps failing, is given up so that it never
    /// holds back the ones behind it for long.
    pub async fn drain(self, conn: Arc<dyn Connection>) {
        let _one_at_a_time = self.lock.lock().await;
        loop {
            // A drain that waited for the lock may hold a connection that has ended since:
            // it must not count failures against the messages.
            if !conn.is_open() {
                return;
            }
            let next = match self.store.next_queued(&self.session) {
                Ok(Some(next)) => next,
                Ok(None) => return,
                Err(e) => {
                    warn!(session = %self.session, "could not read the outgoing queue: {e}");
                    return;
                }
            };
            let started = Instant::now();
            match conn.send(&next.to, &next.message, &next.id).await {
                Ok(sent) => {
                    if !self.take_off(&next) {
                        return;
                    }
                    // A receipt may have moved it past `sent` already: then no `sent` event.
                    let at = sent.timestamp_ms;
                    advance_and_announce(&self.outbox, &self.session, &sent.id, &sent.to, DeliveryState::Sent, at)
                        .await;
                    note_sent(&self.session, next.message.content.kind(), &sent, started);
                }
                Err(e @ (EngineError::BadRecipient(_) | EngineError::Refused(_))) => {
                    if !self.give_up(&next, &e.to_string()).await {
                        return;
                    }
                }
                Err(e) => {
                    let attempts = self.store.queued_attempt_failed(next.seq).unwrap_or(MAX_ATTEMPTS);
                    if attempts >= MAX_ATTEMPTS {
                        if !self.give_up(&next, &format!("{e} ({attempts} attempts)")).await {
                            return;
                        }
                        continue;
                    }
                    if !conn.is_open() {
                        warn!(session = %self.session, message = %next.id, "queued message not sent yet ({e}); it waits for the next connection");
                        return;
                    }
                    // The connection is fine but this message failed (an upload, say): try it
                    // again shortly rather than at the next reconnect.
                    warn!(session = %self.session, message = %next.id, attempt = attempts, "queued message not sent ({e}); trying again");
                    tokio::time::sleep(RETRY_PAUSE * attempts).await;
                }
            }
        }
    }

    /// Takes a message off the queue; false (logged) when the store would not, which stops
    /// the drain rather than sending the message again and again.
    fn take_off(&self, queued: &Queued) -> bool {
        match self.store.dequeue(queued.seq) {
            Ok(()) => true,
            Err(e) => {
                warn!(session = %self.session, message = %queued.id, "could not take a message off the outgoing queue: {e}");
                false
            }
        }
    }

    /// Fails every queued message, for a session that will not reconnect (logged out).
    pub async fn give_up_all(&self, why: &str) {
        while let Ok(Some(next)) = self.store.next_queued(&self.session) {
            if !self.give_up(&next, why).await {
                return;
            }
        }
    }

    /// Fails a queued message; false when it could not be taken off the queue.
    async fn give_up(&self, queued: &Queued, why: &str) -> bool {
        warn!(session = %self.session, message = %queued.id, "gave up a queued message: {why}");
        if !self.take_off(queued) {
            return false;
        }
        let now = crate::webhook::now_ms();
        advance_and_announce(&self.outbox, &self.session, &queued.id, &queued.to, DeliveryState::Failed, now).await;
        true
    }
}

/// What follows every send WhatsApp acknowledged: metrics and a log line.
pub(super) fn note_sent(session: &str, kind: &str, sent: &Sent, started: Instant) {
    let metrics = &crate::metrics::METRICS;
    metrics.send_seconds.observe(started.elapsed().as_secs_f64());
    metrics.messages_sent.with_label_values(&[kind]).inc();
    info!(session = %session, message = %sent.id, kind, "message sent");
}

/// What a `message.status` event carries.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StatusChange<'a> {
    /// The message's id, as its send answered.
    pub id: &'a str,
    pub chat: &'a str,
    pub status: DeliveryState,
    /// When WhatsApp reported it, milliseconds since the epoch.
    pub timestamp_ms: u64,
}

/// The `message.status` event of a state change, ready to insert.
pub(super) fn status_event(
    outbox: &Outbox,
    session: &str,
    id: &str,
    chat: &str,
    state: DeliveryState,
    timestamp_ms: u64,
) -> Option<crate::store::NewEvent> {
    let data = serde_json::to_value(StatusChange { id, chat, status: state, timestamp_ms }).expect("serializes");
    outbox.prepare(session, "message.status", &data).unwrap_or_else(|e| {
        warn!(session, "could not prepare a message.status event: {e}");
        None
    })
}

/// Moves a sent message's state forward and, when it moved, records its `message.status`
/// event in the same commit. Returns whether it moved.
pub(super) async fn advance_and_announce(
    outbox: &Outbox,
    session: &str,
    id: &str,
    chat: &str,
    state: DeliveryState,
    timestamp_ms: u64,
) -> bool {
    let event = status_event(outbox, session, id, chat, state, timestamp_ms);
    let (owner, message) = (session.to_string(), id.to_string());
    let moved = outbox
        .store()
        .write(move |db| {
            let moved = store::advance_status(db, &owner, &message, state, timestamp_ms)?;
            if let (true, Some(event)) = (moved, &event) {
                store::insert_event(db, event)?;
            }
            Ok(moved)
        })
        .await;
    match moved {
        Ok(moved) => {
            if moved {
                outbox.wake(session);
            }
            moved
        }
        Err(e) => {
            warn!(session, message = id, "could not record the message's new state: {e}");
            false
        }
    }
}

/// Records a message WhatsApp acknowledged (and its `sent` event) before anyone is told.
pub(super) async fn record_sent(outbox: &Outbox, session: &str, sent: &Sent) -> Result<(), crate::store::StoreError> {
    let event = status_event(outbox, session, &sent.id, &sent.to, DeliveryState::Sent, sent.timestamp_ms);
    let (owner, id, to, at) = (session.to_string(), sent.id.clone(), sent.to.clone(), sent.timestamp_ms);
    outbox
        .store()
        .write(move |db| {
            store::record_sent(db, &owner, &id, &to, at)?;
            if let Some(event) = &event {
                store::insert_event(db, event)?;
            }
            Ok(())
        })
        .await?;
    outbox.wake(session);
    Ok(())
}
