//! `messages.upsert` for sessions whose webhook speaks the Node service's format: that
//! format carries the file itself (base64), so a media message is downloaded before its
//! event is recorded. The downloads run on their own task, one after the other, so the
//! session's loop never waits on a file and the session's messages keep their order.
//! Each event waits on disk (`pending_upserts`) until it is in the outbox; what a crash
//! interrupted is downloaded and recorded at the session's first connection of the next run.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::warn;

use crate::engine::{Connection, MediaRef};
use crate::store::PendingUpsert;
use crate::webhook::Outbox;

/// A download that takes longer than this is given up; the event goes out without the file.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

struct Job {
    /// Its row in `pending_upserts`, removed once the event is recorded.
    pending: Option<i64>,
    data: Value,
    download: Option<(Arc<dyn Connection>, MediaRef)>,
}

/// The queue of one session's `messages.upsert` events in the Node service's format.
pub(super) struct MediaUpserts {
    session: String,
    outbox: Outbox,
    jobs: mpsc::UnboundedSender<Job>,
    /// Events a previous run left waiting, read at start-up; queued again at the first
    /// connection (events that arrive in this run are never among them).
    left_over: Vec<PendingUpsert>,
}

impl MediaUpserts {
    pub(super) fn spawn(session: String, outbox: Outbox) -> Self {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let left_over = outbox.store().pending_upserts(&session).unwrap_or_else(|e| {
            warn!(session = %session, "could not read the events left waiting by the last run: {e}");
            Vec::new()
        });
        let this = Self { session: session.clone(), outbox: outbox.clone(), jobs, left_over };
        tokio::spawn(async move {
            while let Some(Job { pending, mut data, download }) = queue.recv().await {
                if let Some((conn, media)) = download {
                    data["media"]["data"] = fetch(&session, &data, conn.as_ref(), &media).await;
                }
                outbox.record_or_log(&session, "messages.upsert", &data);
                if let Some(seq) = pending {
                    if let Err(e) = outbox.store().remove_pending_upsert(seq) {
                        warn!(session = %session, "could not clear a recorded event from the pending list: {e}");
                    }
                }
            }
        });
        this
    }

    /// At the session's first connection of this run: queues again what a previous run
    /// left waiting, ahead of anything that arrives on this connection.
    pub(super) fn resume(&mut self, conn: &Arc<dyn Connection>) {
        for event in std::mem::take(&mut self.left_over) {
            let download = event.media.map(|media| (conn.clone(), media));
            let _ = self.jobs.send(Job { pending: Some(event.seq), data: event.data, download });
        }
    }

    /// Queues a received message's event; its file, if any, is fetched through `conn`.
    pub(super) fn record(&self, data: Value, media: Option<MediaRef>, conn: Option<Arc<dyn Connection>>) {
        let pending = match self.outbox.store().add_pending_upsert(&self.session, &data, media.as_ref()) {
            Ok(seq) => Some(seq),
            Err(e) => {
                warn!(session = %self.session, "could not keep a received message's event on disk: {e}");
                None
            }
        };
        let download = conn.zip(media);
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { pending, data, download }) {
            // The worker is gone (only when the runtime shuts down): record without the file.
            warn!(session = %self.session, "the media download queue is closed; recording the message without its file");
            self.outbox.record_or_log(&self.session, "messages.upsert", &job.data);
        }
    }
}

/// The file as base64, or null (with a warning) when it could not be downloaded.
async fn fetch(session: &str, data: &Value, conn: &dyn Connection, media: &MediaRef) -> Value {
    let message = data["id"].as_str().unwrap_or_default();
    match tokio::time::timeout(DOWNLOAD_TIMEOUT, conn.download(media)).await {
        Ok(Ok(bytes)) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        Ok(Err(e)) => {
            warn!(
                session,
                message, "could not download the file of a received message; the webhook goes without it: {e}"
            );
            Value::Null
        }
        Err(_) => {
            warn!(
                session,
                message, "downloading the file of a received message took too long; the webhook goes without it"
            );
            Value::Null
        }
    }
}
