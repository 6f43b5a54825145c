//! The one dispatcher: takes the oldest pending event of each session, sends it, records
//! the outcome. Sessions are independent (each has at most one request in flight, many
//! sessions send at once); within a session an event waits until the one before it was
//! delivered or dead-lettered.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::retry::{self, Verdict};
use super::signing::signature;
use super::{now_ms, Outbox};
use crate::store::{OutboxEvent, WebhookConfig, WebhookFormat};

/// Requests in flight at once, over all sessions.
const MAX_IN_FLIGHT: usize = 64;
/// How much of a receiver's answer is kept for errors and the test endpoint.
const BODY_EXCERPT: usize = 500;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

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
    /// next start (same event id).
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

async fn run(outbox: Outbox, client: reqwest::Client, mut stopped: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut in_flight: HashSet<String> = HashSet::new();
    let (done, mut finished) = mpsc::unbounded_channel::<String>();
    let wake = outbox.woken();
    let mut last_prune: Option<Instant> = None;
    loop {
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            prune(&outbox);
        }
        let mut next_due: Option<u64> = None;
        match outbox.store().queue_heads() {
            Ok(heads) => {
                let now = now_ms();
                for head in heads {
                    if in_flight.contains(&head.session) {
                        continue;
                    }
                    if head.next_attempt_ms > now {
                        next_due = Some(next_due.map_or(head.next_attempt_ms, |d| d.min(head.next_attempt_ms)));
                        continue;
                    }
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        break;
                    };
                    in_flight.insert(head.session.clone());
                    let (outbox, client, done) = (outbox.clone(), client.clone(), done.clone());
                    tokio::spawn(async move {
                        let session = head.session.clone();
                        deliver(&outbox, &client, head).await;
                        drop(permit);
                        let _ = done.send(session);
                    });
                }
            }
            Err(e) => {
                error!("cannot read the webhook outbox: {e}");
                next_due = Some(now_ms() + 1000);
            }
        }
        let idle = next_due.map_or(Duration::from_secs(60), |due| Duration::from_millis(due.saturating_sub(now_ms())));
        tokio::select! {
            _ = wake.notified() => {}
            Some(session) = finished.recv() => {
                in_flight.remove(&session);
                while let Ok(session) = finished.try_recv() {
                    in_flight.remove(&session);
                }
            }
            _ = tokio::time::sleep(idle) => {}
            _ = stopped.changed() => return,
        }
    }
}

fn prune(outbox: &Outbox) {
    let before = now_ms().saturating_sub(outbox.settings().retention.as_millis() as u64);
    match outbox.store().prune_delivered(before) {
        Ok(0) => {}
        Ok(count) => info!("pruned {count} delivered webhook events"),
        Err(e) => warn!("could not prune delivered webhook events: {e}"),
    }
    // What replies and media downloads need of received messages; WhatsApp's CDN keeps
    // files for about a month, so older references are of no use.
    let before = now_ms().saturating_sub(RECEIVED_RETENTION.as_millis() as u64);
    match outbox.store().prune_received(before) {
        Ok(0) => {}
        Ok(count) => info!("forgot {count} received messages older than 30 days"),
        Err(e) => warn!("could not prune received messages: {e}"),
    }
}

const RECEIVED_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

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
    if let Some(secret) = endpoint.secret.as_deref().filter(|s| !s.is_empty()) {
        request = request.header("webhook-signature", signature(secret, id, timestamp, body.as_bytes()));
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
    let text = response.text().await.unwrap_or_default();
    Ok(Answer { status, retry_after, body: text.chars().take(BODY_EXCERPT).collect() })
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

async fn deliver(outbox: &Outbox, client: &reqwest::Client, event: OutboxEvent) {
    let store = outbox.store();
    let endpoint = match outbox.endpoint(&event.session) {
        Ok(Some(endpoint)) => endpoint,
        Ok(None) => {
            warn!(session = %event.session, id = %event.id, "webhook event dropped to the dead letter: the session has no webhook any more");
            let _ = store.mark_dead(event.seq, None, "no webhook configured", now_ms());
            return;
        }
        Err(e) => {
            error!(session = %event.session, "cannot read the session's webhook: {e}");
            let _ = store.mark_retry(event.seq, None, &e.to_string(), now_ms() + 1000);
            return;
        }
    };
    let attempt = event.attempts + 1;
    let started = Instant::now();
    let outcome = post(client, &endpoint, &event.id, &event.body).await;
    crate::metrics::METRICS.webhook_seconds.observe(started.elapsed().as_secs_f64());
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
            store.mark_delivered(event.seq, status, now)
        }
        Verdict::Dead => {
            let error = error.unwrap_or_default();
            warn!(session = %event.session, id = %event.id, "Webhook refused: {} - {error}; moved to the dead letter (retry it through the API once the receiver is fixed)", event.event);
            store.mark_dead(event.seq, status, &error, now)
        }
        Verdict::Retry => {
            let error = error.unwrap_or_default();
            let retrying_for = Duration::from_millis(now.saturating_sub(event.created_ms));
            if retrying_for >= outbox.settings().retry_for {
                warn!(session = %event.session, id = %event.id, attempt, "Webhook failed: {} - {error}; giving up after {}h, moved to the dead letter", event.event, retrying_for.as_secs() / 3600);
                store.mark_dead(event.seq, status, &error, now)
            } else {
                let delay = retry_after.unwrap_or_else(|| retry::backoff(attempt));
                warn!(session = %event.session, id = %event.id, attempt, "Webhook failed: {} - {error}; next attempt in {:.1}s", event.event, delay.as_secs_f64());
                store.mark_retry(event.seq, status, &error, now + delay.as_millis() as u64)
            }
        }
    };
    if let Err(e) = result {
        error!(session = %event.session, id = %event.id, "could not record the delivery outcome: {e}");
    }
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
#[derive(Debug, Serialize)]
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
