//! What many accounts cost on one box. Not a test: it prints figures and asserts none.
//!
//! `cargo bench -p wagate --features sandbox --bench scale -- [--sessions N] [--profile P]
//! [--idle-minutes M] [--no-baileys]`
//!
//! - `--sessions N`: how many sessions to link (default 1000; `--sessions 2000` for the full
//!   figure). Figures are printed at 1, 100 and N.
//! - `--profile empty|small-business|both` (default both): the simulator's account profile.
//!   `small-business` gives every account contacts, groups, app state, a history sync at
//!   first link and a trickle of inbound messages (docs/simulator.md).
//! - `--idle-minutes M` (default 0): after the last checkpoint, samples the resident memory
//!   once a minute for M minutes of idle keepalives.
//! - `--no-baileys`: skip Baileys. Otherwise, when `interop/node_modules` is installed,
//!   Baileys 7 is linked 100 times in one Node process to the same simulator, side by side.
//!
//! The gateway is a release `wagate serve` child process (what `cargo bench` builds) linked to
//! the in-process simulator; everything is measured on the child from `/proc`:
//! resident memory (RSS) and its growth per session, open files per session (sockets and
//! files, not counting the benchmark's own API connections), idle CPU over 20 s, the link time
//! (scan -> `connected`, polled every 25 ms). At N, two send rounds (every session texts the
//! next one: first contact, then known contact) print texts per second, the API call's
//! p50/p99 and whether every text was received. Last, after a kill -9, the time until the
//! restarted gateway answers `/health` and until every session is connected again (paced by
//! the default `--reconnect-rate`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::footprint::{cpu_seconds, peak_resident_kib, resident_kib, OpenFiles};
use common::{free_port, start_sim, Api, GatewayProcess};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Links in flight at once, as an integrator linking accounts in bulk would have.
const LINKING_AT_ONCE: usize = 8;
/// Sends in flight at once in a send round (every session sends one text).
const SENDING_AT_ONCE: usize = 32;
/// How long the gateway is left alone before a sample, and how long idle CPU is measured.
const SETTLE: Duration = Duration::from_secs(10);
const CPU_WINDOW: Duration = Duration::from_secs(20);
/// Baileys is compared at this many sessions (more would take gigabytes).
const BAILEYS_SESSIONS: usize = 100;

struct Options {
    sessions: usize,
    profiles: Vec<&'static str>,
    idle_minutes: u64,
    baileys: bool,
}

impl Options {
    fn parse() -> Self {
        let mut options =
            Self { sessions: 1000, profiles: vec!["empty", "small-business"], idle_minutes: 0, baileys: true };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--sessions" => options.sessions = number(args.next(), "--sessions") as usize,
                "--idle-minutes" => options.idle_minutes = number(args.next(), "--idle-minutes"),
                "--no-baileys" => options.baileys = false,
                "--profile" => {
                    options.profiles = match args.next().as_deref() {
                        Some("empty") => vec!["empty"],
                        Some("small-business") => vec!["small-business"],
                        Some("both") => vec!["empty", "small-business"],
                        other => panic!("--profile takes empty, small-business or both, not {other:?}"),
                    }
                }
                // `cargo bench` adds `--bench`; anything else is a mistake worth saying.
                "--bench" => {}
                other => panic!("unknown argument {other}; see the top of benches/scale.rs"),
            }
        }
        assert!(options.sessions > 0, "--sessions must be at least 1");
        options
    }
}

fn number(value: Option<String>, flag: &str) -> u64 {
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{flag} takes a number"))
}

fn main() {
    let options = Options::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async {
            for profile in &options.profiles {
                bench(profile, &options).await;
            }
        });
}

/// One sample of the gateway process.
#[derive(Clone, Copy)]
struct Sample {
    sessions: usize,
    rss_kib: u64,
    held_files: usize,
    idle_cpu_percent: f64,
}

impl Sample {
    async fn take(pid: u32, api_port: u16, sessions: usize) -> Self {
        tokio::time::sleep(SETTLE).await;
        let cpu_before = cpu_seconds(pid);
        tokio::time::sleep(CPU_WINDOW).await;
        let idle_cpu_percent = (cpu_seconds(pid) - cpu_before) / CPU_WINDOW.as_secs_f64() * 100.0;
        Self { sessions, rss_kib: resident_kib(pid), held_files: OpenFiles::of(pid, api_port).held(), idle_cpu_percent }
    }
}

async fn bench(profile: &str, options: &Options) {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    if profile != "empty" {
        let (status, body) = control.post("/control/account-profile", json!({ "preset": profile })).await;
        assert_eq!(status, 200, "the simulator takes profile {profile}: {body}");
    }
    let data = tempfile::tempdir().expect("temporary directory");
    let port = free_port();
    let gateway = GatewayProcess::spawn(&sim, data.path(), port);
    gateway.ready().await;
    let pid = gateway.child.id();
    println!("\n== {profile} accounts, up to {} sessions (wagate pid {pid})", options.sessions);
    let base = Sample::take(pid, port, 0).await;
    println!(
        "{:>6} {:>9} {:>11} {:>13} {:>11} {:>10} {:>10} {:>10}",
        "N", "RSS MB", "MB/session", "marginal MB", "files/sess", "idle CPU%", "link p50", "link p99"
    );
    print_row(&base, &base, &base, &[]);

    let mut checkpoints = vec![1, 100, options.sessions];
    checkpoints.retain(|n| *n <= options.sessions);
    checkpoints.dedup();
    let mut linked = 0;
    let mut previous = base;
    for checkpoint in checkpoints {
        let times = link_range(&gateway.api, &control, linked..checkpoint, data.path()).await;
        linked = checkpoint;
        let sample = Sample::take(pid, port, linked).await;
        print_row(&sample, &base, &previous, &times);
        previous = sample;
    }

    println!("peak RSS so far: {:.1} MB", peak_resident_kib(pid) as f64 / 1024.0);
    for round in ["first contact", "known contact"] {
        send_round(&gateway.api, linked, round).await;
    }

    for minute in 1..=options.idle_minutes {
        tokio::time::sleep(Duration::from_secs(60)).await;
        println!("idle minute {minute}: RSS {:.1} MB", resident_kib(pid) as f64 / 1024.0);
    }

    restart(gateway, &sim, data.path(), port, linked).await;

    if options.baileys {
        baileys(&sim, profile).await;
    }
    sim.stop().await;
}

/// One line: the totals at `sample`, per session against `base` (no session), and the
/// marginal memory against the previous checkpoint.
fn print_row(sample: &Sample, base: &Sample, previous: &Sample, link_times: &[Duration]) {
    let mb = |kib: u64| kib as f64 / 1024.0;
    let per_session = |total: f64| if sample.sessions == 0 { 0.0 } else { total / sample.sessions as f64 };
    let added = sample.sessions.saturating_sub(previous.sessions);
    let marginal = if added == 0 { 0.0 } else { (mb(sample.rss_kib) - mb(previous.rss_kib)) / added as f64 };
    let (p50, p99) = percentiles(link_times);
    println!(
        "{:>6} {:>9.1} {:>11.3} {:>13.3} {:>11.2} {:>10.2} {:>10} {:>10}",
        sample.sessions,
        mb(sample.rss_kib),
        per_session(mb(sample.rss_kib) - mb(base.rss_kib)),
        marginal,
        per_session(sample.held_files as f64 - base.held_files as f64),
        sample.idle_cpu_percent,
        p50,
        p99,
    );
}

fn percentiles(times: &[Duration]) -> (String, String) {
    if times.is_empty() {
        return ("-".into(), "-".into());
    }
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    (format!("{:.0} ms", at(0.50)), format!("{:.0} ms", at(0.99)))
}

/// Links sessions `range` (a few at a time); returns each one's scan -> connected time.
async fn link_range(api: &Api, control: &Api, range: std::ops::Range<usize>, data: &Path) -> Vec<Duration> {
    futures_util::stream::iter(range)
        .map(|i| async move {
            let id = format!("scale-{i:05}");
            let (status, body) = api.post("/v1/sessions", json!({ "id": id })).await;
            assert_eq!(status, 201, "create {id}: {body}");
            let view = api.wait_state(&id, "awaiting_scan").await;
            let started = Instant::now();
            let (status, body) =
                control.post("/control/scan", json!({ "qr": view["qr"], "phone": format!("1555{i:07}") })).await;
            assert_eq!(status, 200, "scan {id}: {body}");
            let connected = std::panic::AssertUnwindSafe(api.wait_state(&id, "connected"));
            if futures_util::FutureExt::catch_unwind(connected).await.is_err() {
                // The data directory goes with the benchmark: what the gateway said of the
                // session is the only trace of why.
                let log = std::fs::read_to_string(data.join("gateway.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
                panic!("{id} did not connect; the gateway's log of it:\n{}", lines.join("\n"));
            }
            started.elapsed()
        })
        .buffer_unordered(LINKING_AT_ONCE)
        .collect()
        .await
}

/// Every session sends one text to the next one's number (`round` says whether they have
/// written to each other before: a first contact fetches keys and sets up a Signal session,
/// which writes to the engine shards). Prints texts per second and the API call's p50/p99
/// (call to the server's ack), then waits until the gateway counted every text received.
async fn send_round(api: &Api, sessions: usize, round: &str) {
    if sessions < 2 {
        return;
    }
    let received_before = received_total(api).await;
    let started = Instant::now();
    let times: Vec<Duration> = futures_util::stream::iter(0..sessions)
        .map(|i| async move {
            let to = format!("1555{:07}", (i + 1) % sessions);
            let body = json!({ "to": to, "text": format!("scale {round} {i}") });
            let sent = Instant::now();
            let (status, answer) = api.post(&format!("/v1/sessions/scale-{i:05}/messages"), body).await;
            assert_eq!(status, 200, "send from scale-{i:05}: {answer}");
            sent.elapsed()
        })
        .buffer_unordered(SENDING_AT_ONCE)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut received = received_total(api).await - received_before;
    while received < sessions as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        received = received_total(api).await - received_before;
    }
    let (p50, p99) = percentiles(&times);
    println!(
        "send round ({round}): {sessions} texts, {SENDING_AT_ONCE} at a time, {:.0} texts/s, call -> ack p50 {p50} p99 {p99}; \
         received {received} of {sessions} after {:.1} s",
        sessions as f64 / elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// `wagate_messages_received_total`, all types together.
async fn received_total(api: &Api) -> u64 {
    let text = reqwest::get(format!("{}/metrics", api.base)).await.expect("/metrics").text().await.unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with("wagate_messages_received_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// kill -9, start again on the same data: how long until the API answers, and until every
/// session is connected again.
async fn restart(gateway: GatewayProcess, sim: &wagate_sim::Simulator, data: &Path, port: u16, sessions: usize) {
    gateway.kill_9();
    let started = Instant::now();
    let gateway = GatewayProcess::spawn(sim, data, port);
    gateway.ready().await;
    let api_up = started.elapsed();
    let (_, health) = gateway.api.get("/health").await;
    let waiting = health["sessions"]["waitingToReconnect"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60 + sessions as u64);
    let all_connected = loop {
        let (_, health) = gateway.api.get("/health").await;
        if health["sessions"]["connected"] == sessions {
            break started.elapsed();
        }
        assert!(Instant::now() < deadline, "not every session reconnected after the restart: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "restart after kill -9 with {sessions} sessions: API up {:.2} s ({waiting} waiting their turn), \
         all connected {:.1} s",
        api_up.as_secs_f64(),
        all_connected.as_secs_f64()
    );
    gateway.kill_9();
}

/// Baileys 7, linked `BAILEYS_SESSIONS` times in one Node process to the same simulator.
async fn baileys(sim: &wagate_sim::Simulator, profile: &str) {
    let interop = common::node::interop_dir();
    if !interop.join("node_modules/baileys").is_dir() {
        println!("Baileys: not compared (interop/node_modules is not installed: npm ci --prefix interop)");
        return;
    }
    let output = tokio::process::Command::new("node")
        .arg("--expose-gc")
        .arg(interop.join("bench/baileys_scale.mjs"))
        .args(["--ws-url", &sim.endpoints.ws_url, "--control-url", &sim.endpoints.control_url])
        .args(["--sessions", &BAILEYS_SESSIONS.to_string()])
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        println!("Baileys ({profile}): failed\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        return;
    }
    println!("Baileys 7 in one Node process, {profile} accounts:");
    println!(
        "{:>6} {:>9} {:>11} {:>13} {:>10} {:>10}",
        "N", "RSS MB", "MB/session", "marginal MB", "link p50", "link p99"
    );
    let mut previous: Option<Value> = None;
    for line in stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        let (n, rss) = (line["sessions"].as_f64().unwrap_or(0.0), line["rssMb"].as_f64().unwrap_or(0.0));
        let base = line["baseRssMb"].as_f64().unwrap_or(rss);
        let marginal = previous.as_ref().map_or(0.0, |p| {
            let added = n - p["sessions"].as_f64().unwrap_or(0.0);
            if added > 0.0 {
                (rss - p["rssMb"].as_f64().unwrap_or(0.0)) / added
            } else {
                0.0
            }
        });
        println!(
            "{:>6} {:>9.1} {:>11.3} {:>13.3} {:>10} {:>10}",
            n,
            rss,
            if n > 0.0 { (rss - base) / n } else { 0.0 },
            marginal,
            line["linkP50Ms"].as_f64().map_or("-".into(), |v| format!("{v:.0} ms")),
            line["linkP99Ms"].as_f64().map_or("-".into(), |v| format!("{v:.0} ms")),
        );
        previous = Some(line);
    }
}
