//! Sending through the HTTP API: `cargo bench -p wagate --features sandbox --bench messages`
//! (`WAGATE_BENCH_MESSAGES`, default 300; `WAGATE_BENCH_CONCURRENCY`, default 4).
//!
//! Two sessions are linked to the in-process simulator; session A sends texts to session
//! B's number through `POST /v1/sessions/A/messages`, which answers once the server acked.
//! Prints messages per second and the p50/p99 latency of the API call (call to server ack).
//!
//! Then the inbound side (`WAGATE_BENCH_INBOUND`, default 1000): B's gateway is stopped, A
//! sends that many texts (the simulator keeps them for B), B's gateway starts again and
//! the time until B's webhook receiver has every one of them is measured: simulator
//! delivers -> committed before the ack -> webhook delivered, for one session.
//! Figures only: nothing here asserts a duration.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::{link, start_gateway, start_sim, Api};
use serde_json::json;
use tokio::sync::Mutex;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

fn main() {
    let messages = env_number("WAGATE_BENCH_MESSAGES", 300);
    let concurrency = env_number("WAGATE_BENCH_CONCURRENCY", 4);
    let inbound = env_number("WAGATE_BENCH_INBOUND", 1000);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench(messages, concurrency, inbound));
}

async fn bench(messages: usize, concurrency: usize, inbound: usize) {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let (data, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    let gateway_b = start_gateway(&sim, data_b.path()).await;
    let api_b = Api::gateway(gateway_b.addr);
    let hooks = Receiver::start().await;
    link(&api, &control, "A", "15558000001").await;
    link(&api_b, &control, "B", "15558000002").await;
    // One message first, so sessions (prekey fetch, usync) are set up before timing.
    let (status, _) = api.post("/v1/sessions/A/messages", json!({ "to": "15558000002", "text": "warm-up" })).await;
    assert_eq!(status, 200);

    let latencies = Arc::new(Mutex::new(Vec::with_capacity(messages)));
    let started = Instant::now();
    let per_worker = messages.div_ceil(concurrency);
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (api, latencies) = (api.clone(), latencies.clone());
            tokio::spawn(async move {
                for n in 0..per_worker {
                    let text = format!("benchmark {worker}-{n}");
                    let at = Instant::now();
                    let (status, body) =
                        api.post("/v1/sessions/A/messages", json!({ "to": "15558000002", "text": text })).await;
                    assert_eq!(status, 200, "{body}");
                    latencies.lock().await.push(at.elapsed());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let total = started.elapsed();
    let mut latencies = latencies.lock().await.clone();
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "messages: {} texts with {concurrency} concurrent callers in {:.2} s: {:.0} messages/s",
        latencies.len(),
        total.as_secs_f64(),
        latencies.len() as f64 / total.as_secs_f64()
    );
    println!(
        "messages: API call to server ack: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(0.5)),
        ms(percentile(0.99)),
        ms(*latencies.last().unwrap())
    );

    // Inbound: a backlog waits for B, then B comes back and takes it all.
    let webhook = json!({ "url": hooks.url, "events": ["messages.upsert"] });
    let (status, body) = api_b.call(reqwest::Method::PUT, "/v1/sessions/B/webhook", Some(webhook)).await;
    assert_eq!(status, 200, "{body}");
    let before = hooks.received().len();
    gateway_b.stop().await;
    let senders: Vec<_> = (0..concurrency)
        .map(|worker| {
            let api = api.clone();
            tokio::spawn(async move {
                for n in 0..inbound.div_ceil(concurrency) {
                    let text = format!("inbound {worker}-{n}");
                    let (status, body) =
                        api.post("/v1/sessions/A/messages", json!({ "to": "15558000002", "text": text })).await;
                    assert_eq!(status, 200, "{body}");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let expected = before + inbound.div_ceil(concurrency) * concurrency;
    let started = Instant::now();
    let gateway_b = start_gateway(&sim, data_b.path()).await;
    hooks.wait_for("every inbound message", Duration::from_secs(600), |r| r.len() >= expected).await;
    let took = started.elapsed();
    println!(
        "messages: inbound, one session: {} texts from the offline queue to the webhook receiver in {:.2} s: {:.0} messages/s (gateway start included)",
        expected - before,
        took.as_secs_f64(),
        (expected - before) as f64 / took.as_secs_f64()
    );
    gateway.stop().await;
    gateway_b.stop().await;
    sim.stop().await;
}
