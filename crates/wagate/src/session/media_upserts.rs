//! `messages.upsert` for sessions whose webhook speaks the Node service's format: that
//! format carries the file itself (base64), so a media message is downloaded before its
//! event is recorded. The downloads run on their own task, one after the other, so the
//! session's loop never waits on a file and the session's messages keep their order.
//! A download uses the session's connection of the moment (one that dropped is replaced by
//! the next). Each event waits on disk (`pending_upserts`, written in the same commit as the
//! message itself, before WhatsApp gets its ack) until it is in the outbox; what a crash
//! interrupted is taken up again when the session starts next time.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use super::group_names::GroupNames;
use crate::engine::{Connection, MediaRef};
use crate::store;
use crate::webhook::Outbox;

/// A file not downloaded within this (waiting for a connection included) is given up; the
/// event goes out without it.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

type Current = Option<Arc<dyn Connection>>;

struct Job {
    /// Its row in `pending_upserts`, removed in the commit that records the event.
    pending: i64,
    data: Value,
    media: Option<MediaRef>,
}

/// The queue of one session's `messages.upsert` events in the Node service's format.
pub(super) struct MediaUpserts {
    jobs: mpsc::UnboundedSender<Job>,
}

impl MediaUpserts {
    /// Starts the worker; events a previous run left waiting go first.
    pub(super) fn spawn(
        session: String,
        outbox: Outbox,
        current: watch::Receiver<Current>,
        groups: Arc<GroupNames>,
    ) -> Self {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let left_over = outbox.store().pending_upserts(&session).unwrap_or_else(|e| {
            warn!(session = %session, "could not read the events left waiting by the last run: {e}");
            Vec::new()
        });
        for event in left_over {
            let _ = jobs.send(Job { pending: event.seq, data: event.data, media: event.media });
        }
        tokio::spawn(async move {
            let mut current = current;
            while let Some(Job { pending, mut data, media }) = queue.recv().await {
                if let Some(media) = media {
                    data["media"]["data"] = fetch(&session, &data, &mut current, &media).await;
                }
                name_group(&session, &mut data, &current, &groups).await;
                record(&session, &outbox, pending, &data).await;
            }
        });
        Self { jobs }
    }

    /// Queues a received message's event, already kept on disk as `pending`; its file, if
    /// any, is downloaded first.
    pub(super) fn enqueue(&self, pending: i64, data: Value, media: Option<MediaRef>) {
        // Only when the runtime shuts down is the worker gone: the event stays on disk
        // and the next start takes it up.
        let _ = self.jobs.send(Job { pending, data, media });
    }
}

/// Records the event and removes it from the pending list in one commit: when recording
/// fails it stays, and the next start tries again.
async fn record(session: &str, outbox: &Outbox, pending: i64, data: &Value) {
    let prepared = match outbox.prepare(session, "messages.upsert", data) {
        Ok(prepared) => prepared,
        Err(e) => {
            warn!(session = %session, "could not record a message's webhook event; it is kept for the next start: {e}");
            return;
        }
    };
    let written = outbox
        .store()
        .write(move |db| {
            if let Some(event) = &prepared {
                store::insert_event(db, event)?;
            }
            store::remove_pending_upsert(db, pending)
        })
        .await;
    match written {
        Ok(()) => outbox.wake(session),
        Err(e) => {
            warn!(session = %session, "could not record a message's webhook event; it is kept for the next start: {e}")
        }
    }
}

/// Fills in the group's subject when the message was committed before it was known.
async fn name_group(session: &str, data: &mut Value, current: &watch::Receiver<Current>, groups: &GroupNames) {
    if data["is_group"] != Value::Bool(true) || !data["group_subject"].is_null() {
        return;
    }
    let Some(group) = data["chat"].as_str().map(str::to_string) else { return };
    let conn = current.borrow().clone();
    let subject = match (groups.cached(&group), conn) {
        (Some(subject), _) => subject,
        (None, Some(conn)) => groups.subject(session, conn.as_ref(), &group).await,
        (None, None) => None,
    };
    data["group_subject"] = subject.into();
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
