//! `messages.upsert` for sessions whose webhook speaks the Node service's format: that
//! format carries the file itself (base64), so a media message is downloaded before its
//! event is recorded. The downloads run on their own task, one after the other, so the
//! session's loop never waits on a file and the session's messages keep their order.
//! A download uses the session's connection of the moment (one that dropped is replaced by
//! the next). Each event waits on disk (`pending_upserts`, written in the same commit as the
//! message itself, before WhatsApp gets its ack) until it is in the outbox; what a crash
//! interrupted is taken up again when the session starts next time.
//!
//! A file larger than `--compat-media-max` (or `--media-max`) is not downloaded at all: its
//! event goes out at once with `media.data: null` and `media.reason`, so an oversized file
//! never holds back the session's later messages. A file that is downloaded stays on disk
//! until it is encoded into its event.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use super::group_names::GroupNames;
use crate::engine::{Connection, Downloaded, MediaRef};
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

/// The largest file these events carry, and the setting that says so.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limit {
    pub bytes: u64,
    pub setting: &'static str,
}

impl MediaUpserts {
    /// Starts the worker; events a previous run left waiting go first.
    pub(super) fn spawn(
        session: String,
        outbox: Outbox,
        current: watch::Receiver<Current>,
        groups: Arc<GroupNames>,
        limit: Limit,
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
                    let (file, reason) = match fetch(&session, &data, &mut current, &media, limit).await {
                        Ok(file) => (Value::String(file), Value::Null),
                        Err(reason) => (Value::Null, Value::String(reason)),
                    };
                    data["media"]["data"] = file;
                    data["media"]["reason"] = reason;
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

/// The file as base64, or why it is not there (also logged).
async fn fetch(
    session: &str,
    data: &Value,
    current: &mut watch::Receiver<Current>,
    media: &MediaRef,
    limit: Limit,
) -> Result<String, String> {
    let message = data["id"].as_str().unwrap_or_default();
    let given_up = |why: String| {
        warn!(
            session,
            message, "the file of a received message was not downloaded ({why}); the webhook goes without it"
        );
        why
    };
    let cap = media.download_cap(limit.bytes, limit.setting).map_err(given_up)?;
    let deadline = Instant::now() + DOWNLOAD_TIMEOUT;
    loop {
        let conn = match tokio::time::timeout_at(deadline, current.wait_for(Option::is_some)).await {
            Ok(Ok(conn)) => conn.clone().expect("waited for a connection"),
            Ok(Err(_)) => return Err(given_up("the session is gone".into())),
            Err(_) => return Err(given_up("no connection in time".into())),
        };
        match tokio::time::timeout_at(deadline, conn.download(media, cap)).await {
            Ok(Ok(downloaded)) => return encode(downloaded).await.map_err(given_up),
            Ok(Err(e)) => {
                // The connection it used went away meanwhile: try again on the next one.
                let replaced = current.borrow().as_ref().is_none_or(|now| !Arc::ptr_eq(now, &conn));
                if !replaced {
                    return Err(given_up(e.to_string()));
                }
            }
            Err(_) => return Err(given_up("it took too long".into())),
        }
    }
}

/// Base64 of a downloaded file (at most the compat limit, so it fits in memory).
async fn encode(downloaded: Downloaded) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::with_capacity(usize::try_from(downloaded.len).unwrap_or(0));
        let mut file = downloaded.file;
        file.read_to_end(&mut bytes).map_err(|e| format!("reading the downloaded file: {e}"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    })
    .await
    .map_err(|e| format!("reading the downloaded file: {e}"))?
}
