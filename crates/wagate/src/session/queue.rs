//! Sending what waited in the outgoing queue once the session is connected again, in the
//! order it was accepted. One drain runs per session at a time (the lock); a message whose
//! send fails because the connection went away stays queued for the next connection.

use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::supervisor::record_status;
use crate::engine::{Connection, DeliveryState, EngineError, Sent};
use crate::store::{Queued, Store};
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
                    let advanced = self
                        .store
                        .advance_status(&self.session, &sent.id, DeliveryState::Sent, sent.timestamp_ms)
                        .unwrap_or_else(|e| {
                            warn!(session = %self.session, "could not record a sent message: {e}");
                            None
                        });
                    note_sent(
                        &self.outbox,
                        &self.session,
                        next.message.content.kind(),
                        &sent,
                        started,
                        advanced.is_some(),
                    );
                }
                Err(e @ (EngineError::BadRecipient(_) | EngineError::Refused(_))) => {
                    if !self.give_up(&next, &e.to_string()) {
                        return;
                    }
                }
                Err(e) => {
                    let attempts = self.store.queued_attempt_failed(next.seq).unwrap_or(MAX_ATTEMPTS);
                    if attempts >= MAX_ATTEMPTS {
                        if !self.give_up(&next, &format!("{e} ({attempts} attempts)")) {
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
    pub fn give_up_all(&self, why: &str) {
        while let Ok(Some(next)) = self.store.next_queued(&self.session) {
            if !self.give_up(&next, why) {
                return;
            }
        }
    }

    /// Fails a queued message; false when it could not be taken off the queue.
    fn give_up(&self, queued: &Queued, why: &str) -> bool {
        warn!(session = %self.session, message = %queued.id, "gave up a queued message: {why}");
        if !self.take_off(queued) {
            return false;
        }
        let now = crate::webhook::now_ms();
        match self.store.advance_status(&self.session, &queued.id, DeliveryState::Failed, now) {
            Ok(Some(_)) => {
                record_status(&self.outbox, &self.session, &queued.id, &queued.to, DeliveryState::Failed, now)
            }
            Ok(None) => {}
            Err(e) => warn!(session = %self.session, "could not record a failed message: {e}"),
        }
        true
    }
}

/// What follows every send WhatsApp acknowledged: metrics, the `sent` status event (unless
/// a receipt already moved the message further), a log line.
pub(super) fn note_sent(outbox: &Outbox, session: &str, kind: &str, sent: &Sent, started: Instant, announce: bool) {
    let metrics = &crate::metrics::METRICS;
    metrics.send_seconds.observe(started.elapsed().as_secs_f64());
    metrics.messages_sent.with_label_values(&[kind]).inc();
    if announce {
        record_status(outbox, session, &sent.id, &sent.to, DeliveryState::Sent, sent.timestamp_ms);
    }
    info!(session = %session, message = %sent.id, kind, "message sent");
}
