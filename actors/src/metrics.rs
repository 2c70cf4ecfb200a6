//! What an operator can watch: the server's metric families, in the
//! Prometheus (OpenMetrics) text format.
//!
//! One [`Metrics`] per server, shared by every actor and the HTTP layer as
//! an `Arc`. Each metric is an atomic: writing one is a single add, so the
//! hot path (an event fanned out to its viewers) pays one add per event,
//! never one per delivery. Labelled families are for what is rare
//! (refusals, closes, limit hits, requests).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label set of one `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// A label set of one `limit`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Limit {
    limit: &'static str,
}

/// A label set of one socket `role`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Role {
    role: &'static str,
}

/// The label set of an HTTP request: its route pattern and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    route: String,
    status: u16,
}

/// What the cluster mode's engine shows an operator. The store that talks
/// to NATS keeps these as it works, from before the server's [`Metrics`]
/// exist, and [`Metrics::with_engine`] shows them.
#[derive(Clone, Debug)]
pub struct EngineMetrics {
    /// Each append of an event to its recording, to JetStream's
    /// acknowledgement.
    pub publish_seconds: Histogram,
    /// Times the connection to NATS came back after it was lost.
    pub reconnects: Counter,
}

impl Default for EngineMetrics {
    fn default() -> EngineMetrics {
        EngineMetrics {
            // 50 µs to about 1.6 s.
            publish_seconds: Histogram::new(exponential_buckets(50e-6, 2.0, 16)),
            reconnects: Counter::default(),
        }
    }
}

/// Every metric family the server keeps.
pub struct Metrics {
    registry: Registry,
    /// Open streams.
    pub streams: Gauge,
    /// Open sender sockets.
    pub senders: Gauge,
    /// Open viewer sockets.
    pub viewers: Gauge,
    /// Events accepted from senders (relayed and remembered).
    pub events_accepted: Counter,
    events_rejected: Family<Reason, Counter>,
    /// Events handed to sockets: one add of the count per event.
    pub deliveries: Counter,
    sockets_closed: Family<Reason, Counter>,
    http_requests: Family<Request, Counter>,
    limit_hits: Family<Limit, Counter>,
    /// Bytes appended to recordings.
    pub recording_bytes: Counter,
    /// From an event's arrival at its sender's session to its hand-off to
    /// the last socket of its stream.
    pub fanout_seconds: Histogram,
    /// Each durable write, from the call to the store's answer.
    pub state_sync_seconds: Histogram,
    /// Gaps in the live feed from other nodes, repaired from the recording
    /// before the next event was relayed.
    pub gaps_repaired: Counter,
    resident_memory: Gauge,
    open_fds: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub fn new() -> Arc<Metrics> {
        Metrics::with_engine(EngineMetrics::default())
    }

    /// A fresh set of metrics that shows `engine`'s too.
    pub fn with_engine(engine: EngineMetrics) -> Arc<Metrics> {
        let sockets = Family::<Role, Gauge>::default();
        // One statement each: a family's guard lives to the end of its
        // statement, and a second insert would wait on it for ever.
        let senders = sockets.get_or_create(&Role { role: "sender" }).clone();
        let viewers = sockets.get_or_create(&Role { role: "viewer" }).clone();
        let mut metrics = Metrics {
            registry: Registry::default(),
            streams: Gauge::default(),
            senders,
            viewers,
            events_accepted: Counter::default(),
            events_rejected: Family::default(),
            deliveries: Counter::default(),
            sockets_closed: Family::default(),
            http_requests: Family::default(),
            limit_hits: Family::default(),
            recording_bytes: Counter::default(),
            // 50 µs to about 1.6 s.
            fanout_seconds: Histogram::new(exponential_buckets(50e-6, 2.0, 16)),
            // 100 µs to about 3.3 s.
            state_sync_seconds: Histogram::new(exponential_buckets(100e-6, 2.0, 16)),
            gaps_repaired: Counter::default(),
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
        };
        let r = &mut metrics.registry;
        r.register("twizzle_streams", "Open streams", metrics.streams.clone());
        r.register("twizzle_sockets", "Open sockets by role", sockets);
        r.register(
            "twizzle_events_accepted",
            "Events accepted from senders",
            metrics.events_accepted.clone(),
        );
        r.register(
            "twizzle_events_rejected",
            "Events refused, by reason",
            metrics.events_rejected.clone(),
        );
        r.register(
            "twizzle_deliveries",
            "Events handed to sockets",
            metrics.deliveries.clone(),
        );
        r.register(
            "twizzle_sockets_closed",
            "Sockets closed, by reason",
            metrics.sockets_closed.clone(),
        );
        r.register(
            "twizzle_http_requests",
            "HTTP requests, by route and status",
            metrics.http_requests.clone(),
        );
        r.register(
            "twizzle_limit_hits",
            "Requests, sockets and events refused by a limit, by limit",
            metrics.limit_hits.clone(),
        );
        r.register(
            "twizzle_recording_bytes",
            "Bytes appended to recordings",
            metrics.recording_bytes.clone(),
        );
        r.register(
            "twizzle_fanout_seconds",
            "From an event's arrival to its hand-off to the last socket",
            metrics.fanout_seconds.clone(),
        );
        r.register(
            "twizzle_state_sync_seconds",
            "Each durable write of state",
            metrics.state_sync_seconds.clone(),
        );
        r.register(
            "twizzle_engine_publish_seconds",
            "Cluster mode: each append to a recording, to JetStream's acknowledgement",
            engine.publish_seconds,
        );
        r.register(
            "twizzle_engine_reconnects",
            "Cluster mode: times the connection to NATS came back",
            engine.reconnects,
        );
        r.register(
            "twizzle_gaps_repaired",
            "Cluster mode: gaps in the live feed repaired from the recording",
            metrics.gaps_repaired.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            metrics.resident_memory.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors of the process",
            metrics.open_fds.clone(),
        );
        Arc::new(metrics)
    }

    /// The gauge of open sockets of a role: senders, or viewers.
    pub fn role(&self, sender: bool) -> &Gauge {
        if sender {
            &self.senders
        } else {
            &self.viewers
        }
    }

    /// An event refused for `reason` (`invalid`, `rate_limited`, `reset_loop`).
    pub fn rejected(&self, reason: &'static str) {
        self.events_rejected.get_or_create(&Reason { reason }).inc();
    }

    /// A socket closed for `reason`.
    pub fn closed(&self, reason: &'static str) {
        self.sockets_closed.get_or_create(&Reason { reason }).inc();
    }

    /// Something refused by `limit`.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.get_or_create(&Limit { limit }).inc();
    }

    /// An HTTP request to `route` (its pattern) answered with `status`.
    pub fn http_request(&self, route: &str, status: u16) {
        let labels = Request {
            route: route.to_owned(),
            status,
        };
        self.http_requests.get_or_create(&labels).inc();
    }

    /// Adds one durable write that took `took`.
    pub fn state_synced(&self, took: Duration) {
        self.state_sync_seconds.observe(took.as_secs_f64());
    }

    /// The exposition, with the process's own figures read now.
    pub fn encode(&self) -> String {
        if let Some(rss) = resident_memory() {
            self.resident_memory.set(rss);
        }
        if let Some(fds) = open_fds() {
            self.open_fds.set(fds);
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The process's resident memory in bytes (Linux: `VmRSS` of `/proc/self/status`).
fn resident_memory() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open file descriptors (Linux: the entries of `/proc/self/fd`).
fn open_fds() -> Option<i64> {
    let count = std::fs::read_dir("/proc/self/fd").ok()?.count();
    i64::try_from(count).ok()
}
