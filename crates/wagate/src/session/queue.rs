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

/// Connections a queued message may see fail under it before it is given up.
const MAX_ATTEMPTS: u32 = 5;

/// Everything a drain needs, shared by the supervisor and the manager.
#[derive(Clone)]
pub(super) struct Drainer {
    pub session: String,
    pub store: Arc<Store>,
    pub outbox: Outbox,
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drainer {
    /// Sends queued messages over `conn` until the queue is empty or the connection fails.
    pub async fn drain(self, conn: Arc<dyn Connection>) {
        let _one_at_a_time = self.lock.lock().await;
        loop {
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
                    let _ = self.store.dequeue(next.seq);
                    if let Err(e) =
                        self.store.advance_status(&self.session, &sent.id, DeliveryState::Sent, sent.timestamp_ms)
                    {
                        warn!(session = %self.session, "could not record a sent message: {e}");
                    }
                    note_sent(&self.outbox, &self.session, next.message.content.kind(), &sent, started);
                }
                Err(e @ (EngineError::BadRecipient(_) | EngineError::Refused(_))) => {
                    self.give_up(&next, &e.to_string())
                }
                Err(e) => {
                    let attempts = self.store.queued_attempt_failed(next.seq).unwrap_or(MAX_ATTEMPTS);
                    if attempts >= MAX_ATTEMPTS {
                        self.give_up(&next, &format!("{e} ({attempts} attempts)"));
                        continue;
                    }
                    warn!(session = %self.session, message = %next.id, "queued message not sent yet ({e}); it waits for the next connection");
                    return;
                }
            }
        }
    }

    /// Fails every queued message, for a session that will not reconnect (logged out).
    pub fn give_up_all(&self, why: &str) {
        while let Ok(Some(next)) = self.store.next_queued(&self.session) {
            self.give_up(&next, why);
        }
    }

    fn give_up(&self, queued: &Queued, why: &str) {
        warn!(session = %self.session, message = %queued.id, "gave up a queued message: {why}");
        let _ = self.store.dequeue(queued.seq);
        let now = crate::webhook::now_ms();
        match self.store.advance_status(&self.session, &queued.id, DeliveryState::Failed, now) {
            Ok(Some(_)) => {
                record_status(&self.outbox, &self.session, &queued.id, &queued.to, DeliveryState::Failed, now)
            }
            Ok(None) => {}
            Err(e) => warn!(session = %self.session, "could not record a failed message: {e}"),
        }
    }
}

/// What follows every send WhatsApp acknowledged: metrics, the `sent` status event, a log line.
pub(super) fn note_sent(outbox: &Outbox, session: &str, kind: &str, sent: &Sent, started: Instant) {
    let metrics = &crate::metrics::METRICS;
    metrics.send_seconds.observe(started.elapsed().as_secs_f64());
    metrics.messages_sent.with_label_values(&[kind]).inc();
    record_status(outbox, session, &sent.id, &sent.to, DeliveryState::Sent, sent.timestamp_ms);
    info!(session = %session, message = %sent.id, kind, "message sent");
}
