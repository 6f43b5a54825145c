//! `GET /metrics` in the Prometheus text format: what happened (counters, histograms) and
//! how things stand (gauges filled in at each scrape).

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::session::SessionManager;

pub struct Metrics {
    registry: Registry,
    pub reconnects: IntCounterVec,
    pub pairings: IntCounter,
    pub messages_sent: IntCounterVec,
    pub messages_received: IntCounterVec,
    pub send_seconds: Histogram,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_seconds: Histogram,
    pub webhook_delivery_seconds: Histogram,
    sessions: IntGaugeVec,
    outbox_depth: IntGauge,
    waiting_to_reconnect: IntGauge,
    memory: IntGauge,
}

/// Buckets from a millisecond to half a minute: sends and webhook calls.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Buckets from 5 ms to a day: an event's wait from being recorded to its delivery, which
/// includes retries while a receiver is down.
const DELIVERY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// Process-wide, as Prometheus metrics are.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("registered once");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("registered once");
    metric
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let pairings =
            IntCounter::new("wagate_pairings_total", "Devices linked (pair-success).").expect("valid metric");
        registry.register(Box::new(pairings.clone())).expect("registered once");
        let sessions =
            IntGaugeVec::new(Opts::new("wagate_sessions", "Sessions by state."), &["state"]).expect("valid metric");
        registry.register(Box::new(sessions.clone())).expect("registered once");
        let outbox_depth = IntGauge::new("wagate_webhook_outbox_pending", "Webhook events waiting for delivery.")
            .expect("valid metric");
        registry.register(Box::new(outbox_depth.clone())).expect("registered once");
        let waiting_to_reconnect = IntGauge::new(
            "wagate_sessions_waiting_to_reconnect",
            "Linked sessions restored at start that have not had their turn to reconnect (--reconnect-rate).",
        )
        .expect("valid metric");
        registry.register(Box::new(waiting_to_reconnect.clone())).expect("registered once");
        let memory = IntGauge::new("wagate_process_resident_memory_bytes", "Resident memory of the process.")
            .expect("valid metric");
        registry.register(Box::new(memory.clone())).expect("registered once");
        Self {
            reconnects: counter_vec(
                &registry,
                "wagate_reconnects_total",
                "Reconnects by the reason the connection ended.",
                "reason",
            ),
            messages_sent: counter_vec(&registry, "wagate_messages_sent_total", "Messages sent, by type.", "type"),
            messages_received: counter_vec(
                &registry,
                "wagate_messages_received_total",
                "Messages received, by type.",
                "type",
            ),
            send_seconds: histogram(
                &registry,
                "wagate_send_seconds",
                "From the send call to WhatsApp's ack.",
                LATENCY_BUCKETS,
            ),
            webhook_deliveries: counter_vec(
                &registry,
                "wagate_webhook_deliveries_total",
                "Webhook attempts by result.",
                "result",
            ),
            webhook_seconds: histogram(
                &registry,
                "wagate_webhook_seconds",
                "Duration of webhook requests.",
                LATENCY_BUCKETS,
            ),
            webhook_delivery_seconds: histogram(
                &registry,
                "wagate_webhook_delivery_seconds",
                "From an event being recorded to its webhook delivery, retries included.",
                DELIVERY_BUCKETS,
            ),
            registry,
            pairings,
            sessions,
            outbox_depth,
            waiting_to_reconnect,
            memory,
        }
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, manager: &SessionManager) -> String {
        self.sessions.reset();
        for session in manager.list() {
            self.sessions.with_label_values(&[session.state.as_str()]).inc();
        }
        self.waiting_to_reconnect.set(i64::try_from(manager.waiting_to_reconnect()).unwrap_or(i64::MAX));
        if let Ok(pending) = manager.store().pending_count() {
            self.outbox_depth.set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
        if let Some(bytes) = crate::http::resident_memory_bytes() {
            self.memory.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
