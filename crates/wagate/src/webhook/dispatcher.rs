//! The one dispatcher: a worker per session that has events to deliver takes them in
//! order, sends each, records the outcome. Sessions are independent (each has at most one
//! request in flight, many sessions send at once); within a session an event waits until
//! the one before it was delivered or dead-lettered. A worker reads its session's queue
//! in small pages from where it stopped, so an event body is read only shortly before it
//! is sent, and a delivery is recorded without waiting for the disk (a crash before that
//! commit only repeats the delivery, with the same event id).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::retry::{self, Verdict};
use super::signing::signature;
use super::{now_ms, Outbox};
use crate::store::{OutboxEvent, WebhookConfig, WebhookFormat};

/// Requests in flight at once, over all sessions.
const MAX_IN_FLIGHT: usize = 64;
/// How many of a session's events a worker reads at once.
const PAGE: u32 = 32;
/// How much of a receiver's answer is kept for errors and the test endpoint.
const BODY_EXCERPT: usize = 500;
/// At most this much of a receiver's answer is read at all.
const MAX_ANSWER: usize = 64 * 1024;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Every session's queue is looked at this often even without a wake-up.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub struct Dispatcher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Dispatcher {
    pub fn spawn(outbox: Outbox) -> reqwest::Result<Self> {
        let client = http_client(outbox.settings().timeout)?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(outbox, client, stopped));
        Ok(Self { stop, task })
    }

    /// Stops taking new events; requests in flight are abandoned and sent again after the
    /// next start (same event id). Deliveries already made are on disk when this returns.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        // Webhooks go straight to the business system; a proxy for WhatsApp is not for them.
        .no_proxy()
        .user_agent(concat!("wagate/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What the dispatcher and one session's worker share.
struct WorkerSlot {
    /// New events came in since the worker last looked.
    more: bool,
    /// The queue must be read again from its start.
    from_start: bool,
    notify: Arc<Notify>,
}

/// The running workers, and where each session's queue was left: deliveries are recorded
/// without waiting, so a worker started later must go on from there, not read from the
/// start events whose delivery is not on disk yet.
#[derive(Default)]
struct Registry {
    slots: HashMap<String, WorkerSlot>,
    cursors: HashMap<String, i64>,
}

type Workers = Arc<Mutex<Registry>>;

fn lock(workers: &Workers) -> std::sync::MutexGuard<'_, Registry> {
    workers.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
struct Shared {
    outbox: Outbox,
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    workers: Workers,
    stopped: watch::Receiver<bool>,
}

async fn run(outbox: Outbox, client: reqwest::Client, stopped: watch::Receiver<bool>) {
    let shared = Shared {
        outbox: outbox.clone(),
        client,
        permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        workers: Arc::default(),
        stopped: stopped.clone(),
    };
    let wake = outbox.woken();
    let mut tasks = tokio::task::JoinSet::new();
    let mut stopped = stopped;
    let mut last_prune: Option<Instant> = None;
    let mut last_sweep: Option<Instant> = None;
    loop {
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            let outbox = outbox.clone();
            tasks.spawn(async move { drop(tokio::task::spawn_blocking(move || prune(&outbox)).await) });
        }
        if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            last_sweep = Some(Instant::now());
            let store = outbox.store().clone();
            match tokio::task::spawn_blocking(move || store.sessions_with_pending()).await {
                Ok(Ok(sessions)) => {
                    for session in sessions.into_iter().filter(|s| outbox.delivers(s)) {
                        start_or_nudge(&shared, &mut tasks, session, false);
                    }
                }
                Ok(Err(e)) => error!("cannot read the webhook outbox: {e}"),
                Err(e) => error!("cannot read the webhook outbox: {e}"),
            }
        }
        for (session, from_start) in wake.take().into_iter().filter(|(s, _)| outbox.delivers(s)) {
            start_or_nudge(&shared, &mut tasks, session, from_start);
        }
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = stopped.changed() => break,
        }
    }
    // Workers see the stop themselves; what they delivered is committed before returning.
    while tasks.join_next().await.is_some() {}
    if let Err(e) = outbox.store().flush().await {
        error!("could not record the last webhook deliveries: {e}");
    }
}

/// Starts the session's worker, or tells the running one to look again.
fn start_or_nudge(shared: &Shared, tasks: &mut tokio::task::JoinSet<()>, session: String, from_start: bool) {
    let mut workers = lock(&shared.workers);
    if let Some(slot) = workers.slots.get_mut(&session) {
        slot.more = true;
        slot.from_start |= from_start;
        slot.notify.notify_one();
        return;
    }
    let notify = Arc::new(Notify::new());
    workers.slots.insert(session.clone(), WorkerSlot { more: false, from_start, notify: notify.clone() });
    drop(workers);
    let shared = shared.clone();
    tasks.spawn(async move { work_session(shared, session, notify).await });
}

/// Delivers one session's events in order until its queue is empty.
async fn work_session(shared: Shared, session: String, notify: Arc<Notify>) {
    let store = shared.outbox.store().clone();
    let mut stopped = shared.stopped.clone();
    let mut after_seq = lock(&shared.workers).cursors.get(&session).copied().unwrap_or(0);
    loop {
        // Stopped, or the session went to another node, which delivers from here on.
        if *stopped.borrow() || !shared.outbox.delivers(&session) {
            break;
        }
        let from_start = lock(&shared.workers).slots.get_mut(&session).is_some_and(|slot| {
            slot.more = false;
            std::mem::take(&mut slot.from_start)
        });
        if from_start {
            // Deliveries recorded without waiting must be on disk before the queue is read
            // again from its start, or they would be sent twice.
            if let Err(e) = store.flush().await {
                error!(session = %session, "could not record webhook deliveries: {e}");
            }
            after_seq = 0;
        }
        let page = {
            let (store, session) = (store.clone(), session.clone());
            tokio::task::spawn_blocking(move || store.next_pending(&session, after_seq, PAGE)).await
        };
        let page = match page {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                error!(session = %session, "cannot read the webhook outbox: {e}");
                wait(&notify, &mut stopped, Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                error!(session = %session, "cannot read the webhook outbox: {e}");
                break;
            }
        };
        if page.is_empty() {
            let mut workers = lock(&shared.workers);
            if workers.slots.get(&session).is_some_and(|slot| slot.more || slot.from_start) {
                continue;
            }
            workers.slots.remove(&session);
            workers.cursors.insert(session, after_seq);
            return;
        }
        for event in page {
            let now = now_ms();
            if event.next_attempt_ms > now {
                // Not due (a retry's back-off, or held): wait for it or for news, then
                // read again from here.
                let due = Duration::from_millis(event.next_attempt_ms - now);
                wait(&notify, &mut stopped, due.min(SWEEP_EVERY)).await;
                break;
            }
            let seq = event.seq;
            match deliver(&shared, event).await {
                Handled::Done => after_seq = seq,
                // Recorded for a later attempt: read again from here once it is due.
                Handled::Later => break,
            }
            if *stopped.borrow() || lock(&shared.workers).slots.get(&session).is_some_and(|slot| slot.from_start) {
                break;
            }
        }
    }
    let mut workers = lock(&shared.workers);
    workers.slots.remove(&session);
    workers.cursors.insert(session, after_seq);
}

async fn wait(notify: &Notify, stopped: &mut watch::Receiver<bool>, at_most: Duration) {
    tokio::select! {
        _ = notify.notified() => {}
        _ = tokio::time::sleep(at_most) => {}
        _ = stopped.changed() => {}
    }
}

fn prune(outbox: &Outbox) {
    let before = now_ms().saturating_sub(outbox.settings().retention.as_millis() as u64);
    match outbox.store().prune_delivered(before) {
        Ok(0) => {}
        Ok(count) => info!("pruned {count} delivered webhook events"),
        Err(e) => warn!("could not prune delivered webhook events: {e}"),
    }
    // The dead letter is kept as long (for the deliveries API and a manual retry).
    match outbox.store().prune_dead(before) {
        Ok(0) => {}
        Ok(count) => info!("pruned {count} dead webhook events"),
        Err(e) => warn!("could not prune dead webhook events: {e}"),
    }
    // Idempotency keys and the states of sent messages: a month covers any retry of a
    // request and the receipts that still come for a message.
    let before = now_ms().saturating_sub(SENT_RETENTION.as_millis() as u64);
    match outbox.store().prune_sent(before) {
        Ok((0, 0)) => {}
        Ok((keys, messages)) => {
            info!("forgot {keys} idempotency keys and {messages} sent messages older than 30 days")
        }
        Err(e) => warn!("could not prune idempotency keys and sent messages: {e}"),
    }
    // What replies and media downloads need of received messages; WhatsApp's CDN keeps
    // files for about a month, so older references are of no use.
    let before = now_ms().saturating_sub(RECEIVED_RETENTION.as_millis() as u64);
    match outbox.store().prune_received(before) {
        Ok(0) => {}
        Ok(count) => info!("forgot {count} received messages older than 30 days"),
        Err(e) => warn!("could not prune received messages: {e}"),
    }
    // The Cloud API face: notes of sends, uploaded files, upload sessions (docs/cloud-api.md).
    match outbox.store().prune_cloud(before) {
        Ok(0) => {}
        Ok(count) => info!("forgot {count} Cloud API records older than 30 days"),
        Err(e) => warn!("could not prune Cloud API records: {e}"),
    }
}

const RECEIVED_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
const SENT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// One HTTP answer.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

/// Sends one request: the body as it is, signed with the endpoint's secret.
async fn post(client: &reqwest::Client, endpoint: &WebhookConfig, id: &str, body: &str) -> Result<Answer, String> {
    let timestamp = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    let mut request = client
        .post(&endpoint.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string());
    match endpoint.secret.as_deref().filter(|s| !s.is_empty()) {
        // Meta's signature, and only it: Cloud API clients check this header.
        Some(secret) if endpoint.format == WebhookFormat::Cloud => {
            request = request.header("X-Hub-Signature-256", super::signing::hub_signature(secret, body.as_bytes()));
        }
        Some(secret) => {
            request = request.header("webhook-signature", signature(secret, id, timestamp, body.as_bytes()));
        }
        None => {}
    }
    if let Some(token) = endpoint.token.as_deref() {
        request = request.header("X-Webhook-Token", token);
    }
    if endpoint.format == WebhookFormat::Compat {
        // The ERPNext app's handler checks for it.
        request = request.header("X-Requested-With", "XMLHttpRequest");
    }
    let response = request.body(body.to_string()).send().await.map_err(describe_error)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::retry_after(v, chrono::Utc::now()));
    Ok(Answer { status, retry_after, body: read_excerpt(response).await })
}

/// The start of a receiver's answer: at most [`MAX_ANSWER`] bytes are read, however much
/// it sends.
async fn read_excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() >= MAX_ANSWER {
            break;
        }
    }
    String::from_utf8_lossy(&bytes).chars().take(BODY_EXCERPT).collect()
}

fn describe_error(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "no answer within the timeout".into()
    } else if error.is_connect() {
        format!("cannot connect: {}", root_cause(&error))
    } else {
        root_cause(&error)
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut source = error;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// What became of an event.
enum Handled {
    /// Delivered or dead-lettered: the next one may go.
    Done,
    /// To be tried again later.
    Later,
}

async fn deliver(shared: &Shared, event: OutboxEvent) -> Handled {
    let store = shared.outbox.store();
    let endpoint = match shared.outbox.endpoint(&event.session) {
        Ok(Some(endpoint)) => endpoint,
        Ok(None) => {
            warn!(session = %event.session, id = %event.id, "webhook event dropped to the dead letter: the session has no webhook any more");
            return match store.mark_dead(event.seq, None, "no webhook configured", now_ms()).await {
                Ok(()) => Handled::Done,
                Err(_) => Handled::Later,
            };
        }
        Err(e) => {
            error!(session = %event.session, "cannot read the session's webhook: {e}");
            let _ = store.mark_retry(event.seq, None, &e.to_string(), now_ms() + 1000).await;
            return Handled::Later;
        }
    };
    let attempt = event.attempts + 1;
    let outcome = {
        let Ok(_permit) = shared.permits.acquire().await else { return Handled::Later };
        let started = Instant::now();
        let outcome = post(&shared.client, &endpoint, &event.id, &event.body).await;
        crate::metrics::METRICS.webhook_seconds.observe(started.elapsed().as_secs_f64());
        outcome
    };
    let now = now_ms();
    let (verdict, status, error, retry_after) = match &outcome {
        Ok(answer) => {
            let verdict = retry::verdict(answer.status);
            let error = (verdict != Verdict::Delivered).then(|| format!("HTTP {}: {}", answer.status, answer.body));
            (verdict, Some(answer.status), error, answer.retry_after)
        }
        Err(why) => (Verdict::Retry, None, Some(why.clone()), None),
    };
    let label = match verdict {
        Verdict::Delivered => "delivered",
        Verdict::Retry => "retry",
        Verdict::Dead => "dead",
    };
    crate::metrics::METRICS.webhook_deliveries.with_label_values(&[label]).inc();
    let result = match verdict {
        Verdict::Delivered => {
            let status = status.unwrap_or_default();
            let waited = Duration::from_millis(now.saturating_sub(event.created_ms));
            crate::metrics::METRICS.webhook_delivery_seconds.observe(waited.as_secs_f64());
            info!(session = %event.session, id = %event.id, attempt, "Webhook delivered: {} - Status: {}", event.event, status);
            if let Ok(answer) = &outcome {
                warn_if_rejected(&event, &answer.body);
            }
            store.mark_delivered_soon(event.seq, status, now);
            return Handled::Done;
        }
        Verdict::Dead => {
            let error = error.unwrap_or_default();
            warn!(session = %event.session, id = %event.id, "Webhook refused: {} - {error}; moved to the dead letter (retry it through the API once the receiver is fixed)", event.event);
            store.mark_dead(event.seq, status, &error, now).await.map(|()| Handled::Done)
        }
        Verdict::Retry => {
            let error = error.unwrap_or_default();
            let retrying_for = Duration::from_millis(now.saturating_sub(event.created_ms));
            if retrying_for >= shared.outbox.settings().retry_for {
                warn!(session = %event.session, id = %event.id, attempt, "Webhook failed: {} - {error}; giving up after {}h, moved to the dead letter", event.event, retrying_for.as_secs() / 3600);
                store.mark_dead(event.seq, status, &error, now).await.map(|()| Handled::Done)
            } else {
                let delay = retry_after.unwrap_or_else(|| retry::backoff(attempt));
                warn!(session = %event.session, id = %event.id, attempt, "Webhook failed: {} - {error}; next attempt in {:.1}s", event.event, delay.as_secs_f64());
                store
                    .mark_retry(event.seq, status, &error, now + delay.as_millis() as u64)
                    .await
                    .map(|()| Handled::Later)
            }
        }
    };
    result.unwrap_or_else(|e| {
        error!(session = %event.session, id = %event.id, "could not record the delivery outcome: {e}");
        Handled::Later
    })
}

/// The ERPNext app answers 200 with `{"status": "error"}` when it rejects a token: a 200
/// alone does not prove acceptance.
fn warn_if_rejected(event: &OutboxEvent, body: &str) {
    let Ok(answer) = serde_json::from_str::<serde_json::Value>(body) else { return };
    if answer.get("status").and_then(|s| s.as_str()) == Some("error") {
        warn!(session = %event.session, id = %event.id, "the receiver answered 200 but reported an error: {body}");
    }
}

/// What `POST /v1/sessions/{id}/webhook/test` reports.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestOutcome {
    pub delivered: bool,
    pub status: Option<u16>,
    pub body: Option<String>,
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// Sends one event right away, outside the outbox, and reports the answer.
pub async fn send_once(outbox: &Outbox, endpoint: &WebhookConfig, id: &str, body: &str) -> TestOutcome {
    let started = Instant::now();
    let outcome = match http_client(outbox.settings().timeout) {
        Ok(client) => post(&client, endpoint, id, body).await,
        Err(e) => Err(e.to_string()),
    };
    let latency_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(answer) => TestOutcome {
            delivered: retry::verdict(answer.status) == Verdict::Delivered,
            status: Some(answer.status),
            body: Some(answer.body),
            error: None,
            latency_ms,
        },
        Err(error) => TestOutcome { delivered: false, status: None, body: None, error: Some(error), latency_ms },
    }
}
