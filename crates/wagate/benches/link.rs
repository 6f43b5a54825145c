//! How long linking and a restart take, against the in-process simulator:
//! `cargo bench -p wagate --features sandbox --bench link` (`WAGATE_BENCH_RUNS`, default 5).
//!
//! 1. link: from the `/control/scan` request to the session's `connected` event;
//! 2. restart: from stopping the in-process gateway (then starting it again on the same
//!    data directory) to the restored session's `connected` event; also from the start
//!    alone, and the start's own share (until `Gateway::start` returns).
//!
//! It prints figures only: nothing here asserts a duration.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{link, start_gateway, start_sim, Api, WAIT};
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::{json, Value};

fn main() {
    let runs = match std::env::var("WAGATE_BENCH_RUNS") {
        Ok(text) => text.parse::<usize>().ok().filter(|n| *n > 0).expect("WAGATE_BENCH_RUNS must be a positive number"),
        Err(_) => 5,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench(runs));
}

async fn bench(runs: usize) {
    let sim = start_sim().await;
    let control = Api::sim(&sim);

    // 1. Linking: each run is a new session (and a new phone number) on one gateway.
    let data = tempfile::tempdir().expect("temporary directory");
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    let mut linking = Vec::with_capacity(runs);
    for run in 0..runs {
        let id = format!("bench-link-{run}");
        let (status, created) = api.post("/v1/sessions", json!({ "id": id })).await;
        assert_eq!(status, 201, "create {id}: {created}");
        let mut events = Events::open(&api, &id).await;
        let view = events.until("awaiting_scan").await;
        let body = json!({ "qr": view["qr"], "phone": format!("1555400{run:04}") });
        let started = Instant::now();
        let scan = {
            let control = control.clone();
            tokio::spawn(async move { control.post("/control/scan", body).await })
        };
        events.until("connected").await;
        linking.push(started.elapsed());
        let (status, linked) = scan.await.expect("scan task");
        assert_eq!(status, 200, "scan: {linked}");
    }
    gateway.stop().await;

    // 2. Restarts: one linked session, the gateway stopped and started again each run.
    let data = tempfile::tempdir().expect("temporary directory");
    let mut gateway = start_gateway(&sim, data.path()).await;
    link(&Api::gateway(gateway.addr), &control, "bench-restart", "15554100000").await;
    let mut restarts = Vec::with_capacity(runs);
    let mut starts = Vec::with_capacity(runs);
    let mut restores = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        gateway.stop().await;
        let starting = Instant::now();
        gateway = start_gateway(&sim, data.path()).await;
        restores.push(starting.elapsed());
        assert_eq!(gateway.restored, 1, "the linked session is restored");
        let mut events = Events::open(&Api::gateway(gateway.addr), "bench-restart").await;
        events.until("connected").await;
        restarts.push(started.elapsed());
        starts.push(starting.elapsed());
        // An open event stream would hold up the next graceful stop.
        drop(events);
    }
    gateway.stop().await;
    sim.stop().await;

    report("link: scan -> connected", &linking);
    report("restart: stop + start -> connected", &restarts);
    report("restart: start -> connected", &starts);
    report("restart: start -> API up (sessions restored)", &restores);
}

/// One plain line: median, min and max in milliseconds.
fn report(what: &str, samples: &[Duration]) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let middle = ms.len() / 2;
    let median = if ms.len() % 2 == 1 { ms[middle] } else { (ms[middle - 1] + ms[middle]) / 2.0 };
    println!("{what} ({} runs): median {median:.1} ms, min {:.1} ms, max {:.1} ms", ms.len(), ms[0], ms[ms.len() - 1]);
}

/// A session's Server-Sent Events (`/v1/sessions/{id}/events`): its state now, then each change.
struct Events {
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: Vec<u8>,
    seen: Vec<String>,
}

impl Events {
    async fn open(api: &Api, id: &str) -> Self {
        let response = reqwest::get(format!("{}/v1/sessions/{id}/events", api.base)).await.expect("events stream");
        assert_eq!(response.status(), 200, "events of {id}");
        let body = response.bytes_stream().map(|chunk| chunk.map(|bytes| bytes.to_vec())).boxed();
        Self { body, buffer: Vec::new(), seen: Vec::new() }
    }

    async fn next_state(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let event = String::from_utf8_lossy(&event);
                if let Some(data) = event.lines().find_map(|line| line.strip_prefix("data: ")) {
                    let view: Value = serde_json::from_str(data).expect("a state event is JSON");
                    self.seen.push(view["state"].as_str().unwrap_or("?").to_string());
                    return Some(view);
                }
                continue;
            }
            let chunk = self.body.next().await?.expect("events stream");
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The first event in `state`; a session that shows a QR code it was not asked for, or
    /// takes longer than [`WAIT`], ends the benchmark.
    async fn until(&mut self, state: &str) -> Value {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(view) = self.next_state().await {
                if view["state"] == state {
                    return Some(view);
                }
                assert!(view["state"] != "awaiting_scan", "an unexpected QR code: {view}");
            }
            None
        })
        .await;
        match found {
            Ok(Some(view)) => view,
            _ => panic!("no {state} event within {WAIT:?}; states seen: {:?}", self.seen),
        }
    }
}
