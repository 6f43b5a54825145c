//! `messages.upsert` for sessions whose webhook speaks the Node service's format: that
//! format carries the file itself (base64), so a media message is downloaded before its
//! event is recorded. The downloads run on their own task, one after the other, so the
//! session's loop never waits on a file and the session's messages keep their order.
//! A download uses the session's connection of the moment (one that dropped is replaced by
//! the next). Each event waits on disk (`pending_upserts`) until it is in the outbox; what a
//! crash interrupted is taken up again when the session starts next time.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::engine::{Connection, MediaRef};
use crate::webhook::Outbox;

/// A file not downloaded within this (waiting for a connection included) is given up; the
/// event goes out without it.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

type Current = Option<Arc<dyn Connection>>;

struct Job {
    /// Its row in `pending_upserts`, removed once the event is recorded.
    pending: Option<i64>,
    data: Value,
    media: Option<MediaRef>,
}

/// The queue of one session's `messages.upsert` events in the Node service's format.
pub(super) struct MediaUpserts {
    session: String,
    outbox: Outbox,
    jobs: mpsc::UnboundedSender<Job>,
    connection: watch::Sender<Current>,
}

impl MediaUpserts {
    /// Starts the worker; events a previous run left waiting go first.
    pub(super) fn spawn(session: String, outbox: Outbox) -> Self {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let (connection, current) = watch::channel::<Current>(None);
        let left_over = outbox.store().pending_upserts(&session).unwrap_or_else(|e| {
            warn!(session = %session, "could not read the events left waiting by the last run: {e}");
            Vec::new()
        });
        for event in left_over {
            let _ = jobs.send(Job { pending: Some(event.seq), data: event.data, media: event.media });
        }
        let this = Self { session: session.clone(), outbox: outbox.clone(), jobs, connection };
        tokio::spawn(async move {
            let mut current = current;
            while let Some(Job { pending, mut data, media }) = queue.recv().await {
                if let Some(media) = media {
                    data["media"]["data"] = fetch(&session, &data, &mut current, &media).await;
                }
                // The pending row goes only once the event is in the outbox: when recording
                // fails it stays, and the next start tries again.
                match outbox.record(&session, "messages.upsert", &data) {
                    Ok(_) => {
                        if let Some(seq) = pending {
                            if let Err(e) = outbox.store().remove_pending_upsert(seq) {
                                warn!(session = %session, "could not clear a recorded event from the pending list: {e}");
                            }
                        }
                    }
                    Err(e) => {
                        warn!(session = %session, "could not record a message's webhook event; it is kept for the next start: {e}")
                    }
                }
            }
        });
        this
    }

    /// The session's live connection, or `None` once it closed.
    pub(super) fn set_connection(&self, conn: Current) {
        self.connection.send_replace(conn);
    }

    /// Queues a received message's event; its file, if any, is downloaded first.
    pub(super) fn record(&self, data: Value, media: Option<MediaRef>) {
        let pending = match self.outbox.store().add_pending_upsert(&self.session, &data, media.as_ref()) {
            Ok(seq) => Some(seq),
            Err(e) => {
                warn!(session = %self.session, "could not keep a received message's event on disk: {e}");
                None
            }
        };
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { pending, data, media }) {
            // The worker is gone (only when the runtime shuts down): record without the file.
            warn!(session = %self.session, "the media download queue is closed; recording the message without its file");
            self.outbox.record_or_log(&self.session, "messages.upsert", &job.data);
        }
    }
}

/// The file as base64, or null (with a warning) when it could not be downloaded in time.
async fn fetch(session: &str, data: &Value, current: &mut watch::Receiver<Current>, media: &MediaRef) -> Value {
    let message = data["id"].as_str().unwrap_or_default();
    let deadline = Instant::now() + DOWNLOAD_TIMEOUT;
    let given_up = |why: String| {
        warn!(
            session,
            message, "the file of a received message was not downloaded ({why}); the webhook goes without it"
        );
        Value::Null
    };
    loop {
        let conn = match tokio::time::timeout_at(deadline, current.wait_for(Option::is_some)).await {
            Ok(Ok(conn)) => conn.clone().expect("waited for a connection"),
            Ok(Err(_)) => return given_up("the session is gone".into()),
            Err(_) => return given_up("no connection in time".into()),
        };
        match tokio::time::timeout_at(deadline, conn.download(media)).await {
            Ok(Ok(bytes)) => return Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            Ok(Err(e)) => {
                // The connection it used went away meanwhile: try again on the next one.
                let replaced = current.borrow().as_ref().is_none_or(|now| !Arc::ptr_eq(now, &conn));
                if !replaced {
                    return given_up(e.to_string());
                }
            }
            Err(_) => return given_up("it took too long".into()),
        }
    }
}
