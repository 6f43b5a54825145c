//! Webhook throughput and latency: `cargo bench -p wagate --bench webhooks`
//! (`WAGATE_BENCH_EVENTS`, default 2000; `WAGATE_BENCH_SESSIONS`, default 10).
//!
//! Events are recorded into the outbox (as the sessions do: each session in order, all
//! sessions at once) and delivered by the real
//! dispatcher to a local receiver on 127.0.0.1 that answers 200. It prints events per
//! second and the p50/p99 latency from recording an event (the durable write included) to
//! its arrival. Figures only:
//! nothing here asserts a duration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use wagate::store::{Store, WebhookConfig};
use wagate::webhook::{Dispatcher, Outbox, WebhookSettings};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

fn main() {
    let events = env_number("WAGATE_BENCH_EVENTS", 2000);
    let sessions = env_number("WAGATE_BENCH_SESSIONS", 10);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench(events, sessions));
}

async fn receive(State(arrivals): State<Arrivals>, body: Bytes) -> &'static str {
    let envelope: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    arrivals.lock().unwrap().insert(envelope["id"].as_str().unwrap().to_string(), Instant::now());
    "ok"
}

async fn bench(events: usize, sessions: usize) {
    let arrivals: Arrivals = Arc::default();
    let app = Router::new().route("/hook", post(receive)).with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let webhook = WebhookConfig {
        url,
        secret: Some("whsec_YmVuY2htYXJr".into()),
        events: None,
        token: None,
        format: Default::default(),
    };
    for session in 0..sessions {
        store.create_session(&format!("bench-{session}"), Some(&webhook)).unwrap();
    }
    let outbox = Outbox::new(store, WebhookSettings::default());
    let dispatcher = Dispatcher::spawn(outbox.clone()).unwrap();

    let data = serde_json::json!({ "state": "connected", "detail": "benchmark event" });
    // Each session records its events in order, as a session's loop does; the sessions
    // record at the same time, as they do in a gateway.
    let started = Instant::now();
    let producers: Vec<_> = (0..sessions)
        .map(|session| {
            let (outbox, data) = (outbox.clone(), data.clone());
            let count = events / sessions + usize::from(session < events % sessions);
            tokio::spawn(async move {
                let session = format!("bench-{session}");
                let mut recorded = Vec::with_capacity(count);
                for _ in 0..count {
                    let at = Instant::now();
                    let id = outbox.record(&session, "connection.update", &data).await.unwrap();
                    recorded.push((id.expect("the session has a webhook"), at));
                }
                recorded
            })
        })
        .collect();
    let mut recorded = Vec::with_capacity(events);
    for producer in producers {
        recorded.extend(producer.await.unwrap());
    }
    let recording = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrivals.lock().unwrap().len() < events {
        assert!(Instant::now() < deadline, "not every event arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed();
    println!(
        "webhooks: burst of {events} events over {sessions} sessions delivered in {:.2} s: {:.0} events/s (recording alone {:.0} events/s)",
        total.as_secs_f64(),
        events as f64 / total.as_secs_f64(),
        events as f64 / recording.as_secs_f64()
    );
    report("burst", &recorded, &arrivals);

    // Steady traffic: one event every 5 ms, the way sessions produce them.
    let steady = events.min(500);
    let mut spaced = Vec::with_capacity(steady);
    for index in 0..steady {
        let session = format!("bench-{}", index % sessions);
        let at = Instant::now();
        let id = outbox.record(&session, "connection.update", &data).await.unwrap();
        spaced.push((id.expect("the session has a webhook"), at));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while arrivals.lock().unwrap().len() < events + steady {
        assert!(Instant::now() < deadline, "not every event arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    report(&format!("steady ({steady} events, one per 5 ms)"), &spaced, &arrivals);
    dispatcher.stop().await;
}

fn report(label: &str, recorded: &[(String, Instant)], arrivals: &Arrivals) {
    let arrivals = arrivals.lock().unwrap();
    let mut latencies: Vec<Duration> =
        recorded.iter().map(|(id, at)| arrivals[id].saturating_duration_since(*at)).collect();
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "webhooks: {label}: latency from record to arrival p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(0.50).as_secs_f64() * 1000.0,
        percentile(0.99).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0
    );
}
