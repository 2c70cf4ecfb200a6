//! The load fanout and saturate share: streams with one sender and many
//! viewers each. The senders connect first, then the viewers; the senders
//! start together, and the measured window runs from their start until the
//! last delivery (or the drain limit).

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::rt::time::sleep;

use super::{
    make_streams, mb, ms, note_viewer_trouble, source_addresses, viewer_specs, wait_until, Clock,
    Usage, JOIN_WAIT, RESERVED_FDS, RUN_ALLOWANCE, SAMPLE_EVERY,
};
use crate::cli::Options;
use crate::load::{self, ClientPool, Pace, SenderReport, Shared, SocketSpec, ViewerStats};
use crate::measure::{self, epoch, now_us};
use crate::report::Figures;
use crate::target::RunningServer;

/// How long the first viewer may take to see its stream's start marker
/// once the sockets are open. A server that does not send a joining viewer
/// the stream's start (a bare broadcast server) sends none, and its viewers
/// count as joined once their socket is open.
const MARKER_WAIT: Duration = Duration::from_secs(3);

/// What a run puts on the server.
pub(super) struct Load {
    /// Streams, each with one sender.
    pub streams: usize,
    /// Viewers per stream.
    pub per_stream: usize,
    /// Seconds of sending.
    pub secs: f64,
    /// How the senders send.
    pub pace: Pace,
}

impl Load {
    /// Viewers over all streams.
    fn viewers(&self) -> usize {
        self.streams * self.per_stream
    }

    /// Whether the senders send flat out.
    fn floods(&self) -> bool {
        matches!(self.pace, Pace::Flood { .. })
    }
}

/// A sample of the server's memory and of the deliveries so far.
#[derive(Clone, Copy)]
struct Sample {
    /// Seconds since the senders started.
    t: f64,
    rss_kb: Option<u64>,
    delivered: u64,
}

/// Where the sockets of a run go.
struct Plan<'a> {
    load: &'a Load,
    server: &'a RunningServer,
    /// Each stream's ID and its owner's token.
    made: Vec<(String, String)>,
    sources: Vec<IpAddr>,
    shared: Arc<Shared>,
}

/// How the viewers' sockets opened.
struct Opening {
    /// Every viewer socket was open or refused within `limit`.
    all_opened: bool,
    limit: Duration,
    secs: f64,
    /// Viewer sockets open once they were all open or refused (or `limit` passed).
    connected: u64,
    /// Every connected viewer saw its stream's start marker in time.
    all_ready: bool,
    /// Some viewer saw the start marker: the server sends a joining viewer
    /// the stream's start, so the marker says who is joined.
    replays: bool,
}

/// The measured window.
struct Window {
    /// When the senders started.
    start: Instant,
    samples: Vec<Sample>,
    /// When the deliveries last grew, and to how many.
    last_progress: (Instant, u64),
    /// Every delivery owed arrived before the drain limit.
    drained: bool,
    usage: Usage,
}

/// Everything a run measured, once its sockets are closed.
struct Outcome {
    opening: Opening,
    window: Window,
    peak_kb: Option<u64>,
    server_threads: Option<u64>,
    stats: ViewerStats,
    reports: Vec<SenderReport>,
}

/// Runs `load` against `server` and measures it.
pub(super) async fn drive(
    o: &Options,
    server: &mut RunningServer,
    fd_limit: u64,
    load: Load,
) -> Result<Figures, String> {
    fits(&load, fd_limit)?;
    let plan = Plan {
        made: make_streams(server, load.streams).await?,
        load: &load,
        server,
        sources: source_addresses(o.sources),
        shared: Shared::new(load.streams),
    };
    let deadline =
        Instant::now() + Duration::from_secs_f64(load.secs + o.drain_secs) + RUN_ALLOWANCE;
    let sender_pool = plan.start_senders().await?;
    let mut viewer_pool = ClientPool::new(o.threads);
    let opening = plan.open_viewers(&mut viewer_pool, deadline).await;
    let window = plan.measure(o.drain_secs).await;
    let peak_kb = measure::peak_rss_kb(server.pid);
    let server_threads = measure::thread_count(server.pid);
    let stats = viewer_pool.collect(Duration::from_secs(5));
    viewer_pool.stop();
    let reports = sender_reports(&plan.shared);
    sender_pool.stop();
    let outcome = Outcome {
        opening,
        window,
        peak_kb,
        server_threads,
        stats,
        reports,
    };
    Ok(plan.figures(o, &outcome))
}

/// Refuses a load whose sockets and recordings would not fit in the open-files limit.
fn fits(load: &Load, fd_limit: u64) -> Result<(), String> {
    let (total, streams) = (load.viewers(), load.streams);
    // The server holds a socket per viewer and sender and a recording per stream.
    if (total + 2 * streams) as u64 + RESERVED_FDS > fd_limit {
        return Err(format!(
            "{} sockets and {streams} recordings do not fit in the open-files limit of {fd_limit} (the server inherits it too); lower --viewers or --streams",
            total + streams
        ));
    }
    Ok(())
}

/// What the senders have reported so far.
fn sender_reports(shared: &Shared) -> Vec<SenderReport> {
    shared
        .sender_reports
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default()
}

impl Plan<'_> {
    /// Connects one sender per stream; returns once all are ready, or why not.
    async fn start_senders(&self) -> Result<ClientPool, String> {
        let mut sender_pool = ClientPool::new(1);
        let sender_specs = self
            .made
            .iter()
            .enumerate()
            .map(|(s, (id, token))| SocketSpec {
                server: self.server.addr,
                source: self.sources[s % self.sources.len()],
                path: format!("/v0/streams/{id}/socket?twizzleAccessToken={token}"),
                stream: s,
            })
            .collect();
        let shared = &self.shared;
        let streams = self.load.streams;
        sender_pool.spawn_senders(sender_specs, self.load.pace, self.load.secs, shared);
        if !wait_until(JOIN_WAIT, || {
            shared.senders_ready.load(Relaxed) >= streams as u64
        })
        .await
        {
            return Err("the senders did not connect in time".to_owned());
        }
        if shared.senders_done.load(Relaxed) > 0 {
            let why = sender_reports(shared)
                .iter()
                .find_map(|r| r.failure.clone())
                .unwrap_or_default();
            return Err(format!("a sender failed: {why}"));
        }
        Ok(sender_pool)
    }

    /// Opens every viewer socket on `pool`; returns once they are open and
    /// have seen their start marker, or the waits ran out.
    async fn open_viewers(&self, pool: &mut ClientPool, deadline: Instant) -> Opening {
        let (total, shared) = (self.load.viewers(), &self.shared);
        let specs = viewer_specs(self.server, &self.made, &self.sources, 0..total);
        let connect_started = Instant::now();
        pool.spawn_viewers(specs, load::BUSY_VIEWER_BUFFER, shared, deadline);
        let limit = JOIN_WAIT + Duration::from_millis(total as u64 * 5);
        let all_opened = wait_until(limit, || shared.settled() >= total as u64).await;
        let secs = connect_started.elapsed().as_secs_f64();
        let connected = shared.connected.load(Relaxed);
        let replays = wait_until(MARKER_WAIT, || {
            connected == 0 || shared.ready.load(Relaxed) > 0
        })
        .await;
        let all_ready =
            replays && wait_until(JOIN_WAIT, || shared.ready.load(Relaxed) >= connected).await;
        Opening {
            all_opened,
            limit,
            secs,
            connected,
            all_ready,
            replays,
        }
    }

    /// Starts the senders and samples until the last delivery, or until
    /// deliveries stall or the drain limit passes after the sending ends.
    async fn measure(&self, drain_secs: f64) -> Window {
        let (shared, pid) = (&self.shared, self.server.pid);
        let start_us = now_us() + 100_000;
        let before = Clock::take(pid);
        shared.start_at_us.store(start_us, Relaxed);
        let start = epoch() + Duration::from_micros(start_us);
        let send_end = start + Duration::from_secs_f64(self.load.secs);
        let drain_end = send_end + Duration::from_secs_f64(drain_secs);
        actix_web::rt::time::sleep_until(start.into()).await;
        let sample = |t: f64| Sample {
            t,
            rss_kb: measure::rss_kb(pid),
            delivered: shared.delivered(),
        };
        let mut samples = vec![sample(0.0)];
        let mut last_progress = (Instant::now(), 0u64);
        let mut drained = false;
        while Instant::now() < drain_end {
            sleep(SAMPLE_EVERY).await;
            let now = Instant::now();
            let s = sample((now - start).as_secs_f64());
            samples.push(s);
            if s.delivered != last_progress.1 {
                last_progress = (now, s.delivered);
            }
            let senders_done = shared.senders_done.load(Relaxed) >= self.load.streams as u64;
            if now >= send_end && senders_done {
                if s.delivered >= shared.expected() {
                    drained = true;
                    break;
                }
                if now - last_progress.0 > Duration::from_secs(1) {
                    break;
                }
            }
        }
        let after = Clock::take(pid);
        Window {
            start,
            samples,
            last_progress,
            drained,
            usage: Usage::between(&before, &after),
        }
    }

    /// The run's figures, warnings and notes, in table order.
    fn figures(&self, o: &Options, outcome: &Outcome) -> Figures {
        let mut f = Figures::new("");
        self.add_socket_figures(&mut f, &outcome.opening);
        self.add_delivery_figures(&mut f, outcome);
        add_latency_figures(&mut f, &outcome.stats);
        self.add_memory_figures(&mut f, outcome);
        let usage = &outcome.window.usage;
        f.add("window_s", "measured window", Some(usage.wall), "s", 2);
        usage.add_to(&mut f, o.threads, Some(outcome.stats.delivered));
        if !self.load.floods() {
            add_schedule_figures(&mut f, &outcome.reports);
        }
        add_sender_errors(&mut f, &outcome.reports);
        self.add_viewer_warnings(&mut f, o, outcome);
        if outcome.stats.gaps > 0 {
            f.notes.push(format!(
                "viewers saw {} sequence number(s) skipped mid-stream",
                outcome.stats.gaps
            ));
        }
        note_viewer_trouble(&mut f, &outcome.stats);
        f
    }

    /// The viewer sockets: how many, and how fast they opened.
    fn add_socket_figures(&self, f: &mut Figures, opening: &Opening) {
        f.add_count("streams", "streams", self.load.streams as u64);
        f.add_count("viewers", "viewers connected", opening.connected);
        f.add_count(
            "viewer_connect_failures",
            "viewer sockets that failed to open",
            self.shared.connect_failed.load(Relaxed),
        );
        f.add(
            "connect_rate",
            "viewer sockets opened per second",
            Some(opening.connected as f64 / opening.secs.max(1e-9)),
            "/s",
            0,
        );
    }

    /// Events sent, and deliveries owed and received.
    fn add_delivery_figures(&self, f: &mut Figures, outcome: &Outcome) {
        let (shared, stats, secs) = (&self.shared, &outcome.stats, self.load.secs);
        let sent: u64 = outcome.reports.iter().map(|r| r.sent).sum();
        let expected = shared.expected();
        let delivered = stats.delivered;
        let window = &outcome.window;
        let t_last = (window
            .last_progress
            .0
            .saturating_duration_since(window.start))
        .as_secs_f64();
        f.add_count("events_sent", "events sent (all senders)", sent);
        f.add(
            "send_rate_per_sender",
            "events sent per second per sender",
            Some(sent as f64 / self.load.streams as f64 / secs),
            "/s",
            1,
        );
        f.add_count("deliveries_expected", "deliveries expected", expected);
        f.add_count("deliveries", "deliveries received", delivered);
        f.add(
            "deliveries_per_sec",
            "deliveries per second (mean)",
            Some(delivered as f64 / t_last.max(secs)),
            "/s",
            0,
        );
        f.add(
            "deliveries_per_sec_peak",
            "deliveries per second (best 1 s)",
            peak_rate(&window.samples),
            "/s",
            0,
        );
        self.add_loss_figures(f, stats, expected);
    }

    /// What did not arrive, or not in order, or not on an open socket.
    fn add_loss_figures(&self, f: &mut Figures, stats: &ViewerStats, expected: u64) {
        f.add_count(
            "lost",
            "lost deliveries",
            expected.saturating_sub(stats.delivered),
        );
        f.add_count("reordered", "reordered deliveries", stats.reordered);
        f.add_count(
            "viewers_ended_early",
            "viewer sockets closed during the run",
            self.shared.ended_early.load(Relaxed),
        );
    }

    /// The server's memory over the window, and its threads.
    fn add_memory_figures(&self, f: &mut Figures, outcome: &Outcome) {
        let samples = &outcome.window.samples;
        let rss_at = |t: f64| {
            samples
                .iter()
                .min_by(|a, b| (a.t - t).abs().total_cmp(&(b.t - t).abs()))
                .and_then(|s| s.rss_kb)
        };
        f.add(
            "server_rss_start_mb",
            "server RSS at start of sending",
            mb(samples[0].rss_kb),
            "MB",
            1,
        );
        f.add(
            "server_rss_mid_mb",
            "server RSS mid-run",
            mb(rss_at(self.load.secs / 2.0)),
            "MB",
            1,
        );
        f.add(
            "server_rss_end_mb",
            "server RSS at the end",
            mb(samples.last().and_then(|s| s.rss_kb)),
            "MB",
            1,
        );
        f.add(
            "server_rss_peak_mb",
            "server peak RSS (VmHWM)",
            mb(outcome.peak_kb),
            "MB",
            1,
        );
        f.add(
            "server_threads",
            "server threads",
            outcome.server_threads.map(|n| n as f64),
            "",
            0,
        );
    }

    /// Viewers that did not open, join, get everything, or stay.
    fn add_viewer_warnings(&self, f: &mut Figures, o: &Options, outcome: &Outcome) {
        let (shared, opening) = (&self.shared, &outcome.opening);
        if !opening.all_opened {
            f.warnings.push(format!(
                "only {} of {} viewer sockets were open or refused after {:?}",
                shared.settled(),
                self.load.viewers(),
                opening.limit
            ));
        }
        if !opening.replays {
            f.notes.push(format!(
                "no viewer saw its stream's start marker within {MARKER_WAIT:?}: the server does not send a joining viewer the stream's start, so viewers count as joined once their socket is open"
            ));
        } else if !opening.all_ready {
            f.warnings.push(format!(
                "{} viewer(s) never saw the start marker, so may have joined after the first events",
                opening.connected.saturating_sub(shared.ready.load(Relaxed))
            ));
        }
        let (expected, delivered) = (shared.expected(), outcome.stats.delivered);
        if !outcome.window.drained && expected > delivered {
            f.warnings.push(format!(
                "{} deliveries were still outstanding when the run ended (--drain-secs {})",
                expected - delivered,
                o.drain_secs
            ));
        }
        let ended = shared.ended_early.load(Relaxed);
        if self.load.floods() && o.window == 0 && ended > 0 {
            f.warnings.push(format!(
                "{ended} viewer(s) were dropped: the server took events faster than it relayed them; --window N measures what it sustains"
            ));
        }
    }
}

/// The most deliveries in any second of the samples, per second.
fn peak_rate(samples: &[Sample]) -> Option<f64> {
    samples
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let b = samples[i..].iter().find(|b| b.t - a.t >= 0.999)?;
            Some((b.delivered - a.delivered) as f64 / (b.t - a.t))
        })
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))
}

/// End-to-end latency of the deliveries.
fn add_latency_figures(f: &mut Figures, stats: &ViewerStats) {
    f.add(
        "latency_p50_ms",
        "latency p50",
        ms(stats.latency.quantile(0.5)),
        "ms",
        2,
    );
    f.add(
        "latency_p99_ms",
        "latency p99",
        ms(stats.latency.quantile(0.99)),
        "ms",
        2,
    );
    f.add(
        "latency_p999_ms",
        "latency p99.9",
        ms(stats.latency.quantile(0.999)),
        "ms",
        2,
    );
    f.add(
        "latency_mean_ms",
        "latency mean",
        Some(stats.latency.mean() / 1000.0),
        "ms",
        2,
    );
    f.add(
        "latency_max_ms",
        "latency max",
        ms(stats.latency.max()),
        "ms",
        2,
    );
}

/// How well paced senders kept their schedule.
fn add_schedule_figures(f: &mut Figures, reports: &[SenderReport]) {
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let planned: u64 = reports.iter().map(|r| r.planned).sum();
    let max_lag = reports.iter().map(|r| r.max_lag_us).max().unwrap_or(0);
    let late: u64 = reports.iter().map(|r| r.late).sum();
    f.add(
        "sender_max_lag_ms",
        "sender's worst lag behind schedule",
        ms(max_lag),
        "ms",
        2,
    );
    f.add_count("sender_late", "sends over 5 ms behind schedule", late);
    if late * 100 > planned.max(1) || max_lag > 50_000 {
        f.warnings.push(format!(
            "the generator fell behind its send schedule: {late} of {planned} sends over 5 ms late, worst {:.1} ms",
            max_lag as f64 / 1000.0
        ));
    }
    if sent < planned {
        f.warnings.push(format!(
            "the senders sent {sent} of {planned} planned events"
        ));
    }
}

/// The error frames the senders got, and the senders that failed.
fn add_sender_errors(f: &mut Figures, reports: &[SenderReport]) {
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    f.add_count("sender_error_frames", "error frames to senders", errors);
    if let Some(first) = reports.iter().find_map(|r| r.first_error.clone()) {
        f.notes
            .push(format!("senders got {errors} error frame(s), e.g. {first}"));
    }
    for failure in reports.iter().filter_map(|r| r.failure.as_ref()) {
        f.warnings.push(format!("a sender failed: {failure}"));
    }
}
