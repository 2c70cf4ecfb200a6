//! The scenarios: each starts a server, puts its load on it, measures what
//! it cost the server and the generator, and stops the server again.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use actix_web::rt::time::sleep;
use serde_json::{json, Value};

use crate::cli::{Options, Scenario};
use crate::load::{self, ClientPool, Pace, Shared, SocketSpec, ViewerStats};
use crate::measure::{self, epoch, now_us};
use crate::report::{self, Figures};
use crate::target::{RunningServer, Target};

/// Streams per signed-in user: the server's default per-user limit.
const STREAMS_PER_USER: usize = 10;
/// Idle sockets per stream when `--streams` is not given.
const IDLE_SOCKETS_PER_STREAM: usize = 100;
/// How often the server's memory and the delivery count are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// A pause that lets the server finish what a step started before it is measured.
const SETTLE: Duration = Duration::from_millis(500);
/// Open files kept free for everything but the sockets and the streams'
/// recordings (the server under test inherits the generator's limit, so both
/// are bounded by it).
const RESERVED_FDS: u64 = 200;
/// Steps the idle sockets are opened in; memory is sampled after each.
const IDLE_STEPS: usize = 5;
/// How long senders and viewers may take to connect and join.
const JOIN_WAIT: Duration = Duration::from_secs(30);
/// Sockets outlive the run by at most this much if the conductor fails.
const RUN_ALLOWANCE: Duration = Duration::from_secs(600);
/// Cores other processes may use during a measurement before it is flagged.
const OTHER_LOAD: f64 = 0.2;
/// A generator thread busier than this share of a core may be the bottleneck.
const SATURATED: f64 = 0.9;

/// CPU times at one instant.
struct Clock {
    at: Instant,
    server_cpu: Option<f64>,
    own_cpu: f64,
    threads: Vec<(u32, f64)>,
    machine_busy: Option<f64>,
}

impl Clock {
    fn take(pid: u32) -> Clock {
        Clock {
            at: Instant::now(),
            server_cpu: measure::process_cpu_secs(pid),
            own_cpu: measure::own_cpu_secs(),
            threads: measure::own_thread_cpu_secs(),
            machine_busy: measure::machine_busy_secs(),
        }
    }
}

/// What the server and the generator spent between two clocks.
struct Usage {
    wall: f64,
    server_cpu: Option<f64>,
    own_cpu: f64,
    busiest_thread: f64,
    /// CPU seconds of every process on the machine, these two included.
    machine_busy: Option<f64>,
}

impl Usage {
    fn between(a: &Clock, b: &Clock) -> Usage {
        let busiest_thread = b
            .threads
            .iter()
            .map(|(tid, cpu)| {
                let before = a
                    .threads
                    .iter()
                    .find(|(t, _)| t == tid)
                    .map_or(0.0, |t| t.1);
                cpu - before
            })
            .fold(0.0, f64::max);
        Usage {
            wall: (b.at - a.at).as_secs_f64().max(1e-9),
            server_cpu: a.server_cpu.zip(b.server_cpu).map(|(a, b)| b - a),
            own_cpu: b.own_cpu - a.own_cpu,
            machine_busy: a.machine_busy.zip(b.machine_busy).map(|(a, b)| b - a),
            busiest_thread,
        }
    }

    fn add_to(&self, f: &mut Figures, threads: usize) {
        f.add(
            "server_cpu_s",
            "server CPU (user+sys)",
            self.server_cpu,
            "s",
            2,
        );
        f.add(
            "server_cpu_pct",
            "server CPU, share of one core",
            self.server_cpu.map(|c| 100.0 * c / self.wall),
            "%",
            0,
        );
        f.add(
            "gen_cpu_s",
            "generator CPU (user+sys)",
            Some(self.own_cpu),
            "s",
            2,
        );
        f.add(
            "gen_cpu_pct",
            "generator CPU, share of one core",
            Some(100.0 * self.own_cpu / self.wall),
            "%",
            0,
        );
        f.add(
            "gen_busiest_thread_pct",
            "generator's busiest thread",
            Some(100.0 * self.busiest_thread / self.wall),
            "% of a core",
            0,
        );
        if self.busiest_thread / self.wall > SATURATED {
            f.warnings.push(format!(
                "a generator thread used {:.0}% of a core: the generator may be the bottleneck, not the server (try --threads {})",
                100.0 * self.busiest_thread / self.wall,
                threads * 2
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let both = self.server_cpu.unwrap_or(0.0) + self.own_cpu;
        f.add(
            "machine_busy_cores",
            "machine CPU busy (all processes)",
            self.machine_busy.map(|busy| busy / self.wall),
            "cores",
            2,
        );
        let busy = self.machine_busy.unwrap_or(both).max(both);
        if busy / self.wall > SATURATED * cores {
            f.warnings.push(format!(
                "the machine's {cores:.0} cores were {:.0}% busy: server and generator competed for the CPU, so the server's figures are a lower bound",
                100.0 * busy / self.wall / cores
            ));
        }
        let others = (busy - both) / self.wall;
        if others > OTHER_LOAD {
            f.warnings.push(format!(
                "other processes used {others:.2} cores during the measurement: the figures are disturbed"
            ));
        }
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

fn mb(kb: Option<u64>) -> Option<f64> {
    kb.map(|kb| kb as f64 / 1024.0)
}

/// 127.0.0.2, 127.0.0.3, …: one source address runs out of ephemeral ports near 28,000 sockets.
fn source_addresses(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

/// Waits, checking every few milliseconds, until `done` or `limit` passes; whether it was done.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return false;
        }
        sleep(Duration::from_millis(5)).await;
    }
    true
}

/// One line saying what a run does, for titles.
pub fn describe(o: &Options, fd_limit: u64) -> String {
    match o.scenario {
        Scenario::Fanout => format!(
            "fanout: {} stream(s) x 1 sender x {} viewers, {} events/s per sender for {} s",
            o.streams.unwrap_or(1),
            o.viewers.unwrap_or(500),
            o.rate,
            o.secs.unwrap_or(10.0)
        ),
        Scenario::Saturate => format!(
            "saturate: {} stream(s) x 1 sender (flat out{}, rate limit lifted) x {} viewers for {} s",
            o.streams.unwrap_or(1),
            match o.window {
                0 => String::new(),
                n => format!(", at most {n} events ahead"),
            },
            o.viewers.unwrap_or(200),
            o.secs.unwrap_or(5.0)
        ),
        Scenario::Idle => {
            let (sockets, streams, _) = idle_plan(o, fd_limit);
            format!(
                "idle: {sockets} idle viewer sockets over {streams} streams, held {} s",
                o.secs.unwrap_or(5.0)
            )
        }
    }
}

/// Runs the scenario once against `target`.
pub async fn run(o: &Options, target: &Target, fd_limit: u64) -> Result<Figures, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    match o.scenario {
        Scenario::Saturate => {
            env.push(("TWIZZLE_SENDER_EVENTS_PER_SEC".into(), "1000000000".into()));
            env.push(("TWIZZLE_SENDER_EVENT_BURST".into(), "1000000000".into()));
        }
        Scenario::Fanout if o.rate > 100.0 => {
            // Headroom above the default limit of 200/s so pacing jitter is not refused.
            env.push((
                "TWIZZLE_SENDER_EVENTS_PER_SEC".into(),
                format!("{}", (o.rate * 2.0).ceil()),
            ));
            env.push((
                "TWIZZLE_SENDER_EVENT_BURST".into(),
                format!("{}", (o.rate * 4.0).ceil()),
            ));
        }
        _ => {}
    }
    env.extend(o.env.iter().cloned());
    eprintln!(
        "twizzle-bench: {} against {} …",
        describe(o, fd_limit),
        target.label
    );
    let mut server = RunningServer::start(target, &env).await?;
    let result = match o.scenario {
        Scenario::Fanout => drive_load(o, &mut server, fd_limit, false).await,
        Scenario::Saturate => drive_load(o, &mut server, fd_limit, true).await,
        Scenario::Idle => drive_idle(o, &mut server, fd_limit).await,
    };
    let result =
        result.map_err(|e| format!("{e}\nthe server's log ends:\n{}", server.log_tail(10)));
    let stopped = server.stop().await;
    result.map(|mut figures| {
        figures.target = target.label.clone();
        if stopped.clean {
            figures.notes.push(format!(
                "the server stopped on SIGTERM in {:.2} s",
                stopped.took.as_secs_f64()
            ));
        } else {
            figures
                .warnings
                .push("the server did not stop on SIGTERM within 5 s and was killed".to_owned());
        }
        figures
    })
}

/// Signs in users and creates `streams` streams; returns their IDs and each one's owner's token.
async fn make_streams(
    server: &mut RunningServer,
    streams: usize,
) -> Result<Vec<(String, String)>, String> {
    let mut tokens = Vec::new();
    for _ in 0..streams.div_ceil(STREAMS_PER_USER) {
        tokens.push(server.sign_in().await?);
    }
    let mut made = Vec::with_capacity(streams);
    for s in 0..streams {
        let token = &tokens[s / STREAMS_PER_USER];
        made.push((server.create_stream(token).await?, token.clone()));
    }
    Ok(made)
}

fn note_viewer_trouble(f: &mut Figures, stats: &ViewerStats) {
    for (why, n) in &stats.connect_errors {
        f.notes
            .push(format!("{n} viewer socket(s) failed to open: {why}"));
    }
    for (code, n) in &stats.close_codes {
        f.notes.push(format!(
            "the server closed {n} viewer socket(s) with code {code}"
        ));
    }
    if stats.dropped > 0 {
        f.notes.push(format!(
            "{} viewer socket(s) ended without a close frame",
            stats.dropped
        ));
    }
    if stats.other_frames > 0 {
        f.notes.push(format!(
            "viewers received {} text frame(s) that were not events",
            stats.other_frames
        ));
    }
}

/// `fanout` and `saturate`.
async fn drive_load(
    o: &Options,
    server: &mut RunningServer,
    fd_limit: u64,
    flood: bool,
) -> Result<Figures, String> {
    let streams = o.streams.unwrap_or(1);
    let per_stream = o.viewers.unwrap_or(if flood { 200 } else { 500 });
    let secs = o.secs.unwrap_or(if flood { 5.0 } else { 10.0 });
    let total = streams * per_stream;
    // The server holds a socket per viewer and sender and a recording per stream.
    if (total + 2 * streams) as u64 + RESERVED_FDS > fd_limit {
        return Err(format!(
            "{} sockets and {streams} recordings do not fit in the open-files limit of {fd_limit} (the server inherits it too); lower --viewers or --streams",
            total + streams
        ));
    }
    let made = make_streams(server, streams).await?;
    let shared = Shared::new(streams);
    let sources = source_addresses(o.sources);
    let deadline = Instant::now() + Duration::from_secs_f64(secs + o.drain_secs) + RUN_ALLOWANCE;

    let mut sender_pool = ClientPool::new(1);
    let pace = if flood {
        Pace::Flood { window: o.window }
    } else {
        Pace::Rate(o.rate)
    };
    let sender_specs = made
        .iter()
        .enumerate()
        .map(|(s, (id, token))| SocketSpec {
            server: server.addr,
            source: sources[s % sources.len()],
            path: format!("/v0/streams/{id}/socket?twizzleAccessToken={token}"),
            stream: s,
        })
        .collect();
    sender_pool.spawn_senders(sender_specs, pace, secs, &shared);
    if !wait_until(JOIN_WAIT, || {
        shared.senders_ready.load(Relaxed) >= streams as u64
    })
    .await
    {
        return Err("the senders did not connect in time".to_owned());
    }
    if shared.senders_done.load(Relaxed) > 0 {
        let reports = shared
            .sender_reports
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let why = reports
            .iter()
            .find_map(|r| r.failure.clone())
            .unwrap_or_default();
        return Err(format!("a sender failed: {why}"));
    }

    let mut viewer_pool = ClientPool::new(o.threads);
    let specs = (0..total)
        .map(|i| SocketSpec {
            server: server.addr,
            source: sources[i % sources.len()],
            path: format!("/v0/streams/{}/socket", made[i % streams].0),
            stream: i % streams,
        })
        .collect();
    let connect_started = Instant::now();
    viewer_pool.spawn_viewers(specs, load::BUSY_VIEWER_BUFFER, &shared, deadline);
    let opened = || shared.connected.load(Relaxed) + shared.connect_failed.load(Relaxed);
    let connect_limit = JOIN_WAIT + Duration::from_millis(total as u64 * 5);
    let all_opened = wait_until(connect_limit, || opened() >= total as u64).await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let connected = shared.connected.load(Relaxed);
    let all_ready = wait_until(JOIN_WAIT, || shared.ready.load(Relaxed) >= connected).await;

    // The measured window: from the senders' start until the last delivery (or the drain limit).
    let start_us = now_us() + 100_000;
    let before = Clock::take(server.pid);
    shared.start_at_us.store(start_us, Relaxed);
    let start = epoch() + Duration::from_micros(start_us);
    let send_end = start + Duration::from_secs_f64(secs);
    let drain_end = send_end + Duration::from_secs_f64(o.drain_secs);
    actix_web::rt::time::sleep_until(start.into()).await;
    let sample = |t: f64| Sample {
        t,
        rss_kb: measure::rss_kb(server.pid),
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
        let senders_done = shared.senders_done.load(Relaxed) >= streams as u64;
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
    let after = Clock::take(server.pid);
    let usage = Usage::between(&before, &after);
    let peak_kb = measure::peak_rss_kb(server.pid);
    let server_threads = measure::thread_count(server.pid);
    let stats = viewer_pool.collect(Duration::from_secs(5));
    viewer_pool.stop();
    let reports = shared
        .sender_reports
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    sender_pool.stop();

    let mut f = Figures::new("");
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let planned: u64 = reports.iter().map(|r| r.planned).sum();
    let expected = shared.expected();
    let delivered = stats.delivered;
    let t_last = (last_progress.0.saturating_duration_since(start)).as_secs_f64();
    let window = t_last.max(secs);
    let peak_rate = samples
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let b = samples[i..].iter().find(|b| b.t - a.t >= 0.999)?;
            Some((b.delivered - a.delivered) as f64 / (b.t - a.t))
        })
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    let rss_at = |t: f64| {
        samples
            .iter()
            .min_by(|a, b| (a.t - t).abs().total_cmp(&(b.t - t).abs()))
            .and_then(|s| s.rss_kb)
    };
    let ms = |us: u64| Some(us as f64 / 1000.0);

    f.add("streams", "streams", Some(streams as f64), "", 0);
    f.add(
        "viewers",
        "viewers connected",
        Some(connected as f64),
        "",
        0,
    );
    f.add(
        "viewer_connect_failures",
        "viewer sockets that failed to open",
        Some(shared.connect_failed.load(Relaxed) as f64),
        "",
        0,
    );
    f.add(
        "connect_rate",
        "viewer sockets opened per second",
        Some(connected as f64 / connect_secs.max(1e-9)),
        "/s",
        0,
    );
    f.add(
        "events_sent",
        "events sent (all senders)",
        Some(sent as f64),
        "",
        0,
    );
    f.add(
        "send_rate_per_sender",
        "events sent per second per sender",
        Some(sent as f64 / streams as f64 / secs),
        "/s",
        1,
    );
    f.add(
        "deliveries_expected",
        "deliveries expected",
        Some(expected as f64),
        "",
        0,
    );
    f.add(
        "deliveries",
        "deliveries received",
        Some(delivered as f64),
        "",
        0,
    );
    f.add(
        "deliveries_per_sec",
        "deliveries per second (mean)",
        Some(delivered as f64 / window),
        "/s",
        0,
    );
    f.add(
        "deliveries_per_sec_peak",
        "deliveries per second (best 1 s)",
        peak_rate,
        "/s",
        0,
    );
    f.add(
        "lost",
        "lost deliveries",
        Some(expected.saturating_sub(delivered) as f64),
        "",
        0,
    );
    f.add(
        "reordered",
        "reordered deliveries",
        Some(stats.reordered as f64),
        "",
        0,
    );
    f.add(
        "viewers_ended_early",
        "viewer sockets closed during the run",
        Some(shared.ended_early.load(Relaxed) as f64),
        "",
        0,
    );
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
        mb(rss_at(secs / 2.0)),
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
        mb(peak_kb),
        "MB",
        1,
    );
    f.add(
        "server_threads",
        "server threads",
        server_threads.map(|n| n as f64),
        "",
        0,
    );
    f.add("window_s", "measured window", Some(usage.wall), "s", 2);
    usage.add_to(&mut f, o.threads);
    if !flood {
        let max_lag = reports.iter().map(|r| r.max_lag_us).max().unwrap_or(0);
        let late: u64 = reports.iter().map(|r| r.late).sum();
        f.add(
            "sender_max_lag_ms",
            "sender's worst lag behind schedule",
            ms(max_lag),
            "ms",
            2,
        );
        f.add(
            "sender_late",
            "sends over 5 ms behind schedule",
            Some(late as f64),
            "",
            0,
        );
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
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    f.add(
        "sender_error_frames",
        "error frames to senders",
        Some(errors as f64),
        "",
        0,
    );
    if let Some(first) = reports.iter().find_map(|r| r.first_error.clone()) {
        f.notes
            .push(format!("senders got {errors} error frame(s), e.g. {first}"));
    }
    for failure in reports.iter().filter_map(|r| r.failure.as_ref()) {
        f.warnings.push(format!("a sender failed: {failure}"));
    }
    if !all_opened {
        f.warnings.push(format!(
            "only {} of {total} viewer sockets were open or refused after {connect_limit:?}",
            opened()
        ));
    }
    if !all_ready {
        f.warnings.push(format!(
            "{} viewer(s) never saw the start marker, so may have joined after the first events",
            connected.saturating_sub(shared.ready.load(Relaxed))
        ));
    }
    if !drained && expected > delivered {
        f.warnings.push(format!(
            "{} deliveries were still outstanding when the run ended (--drain-secs {})",
            expected - delivered,
            o.drain_secs
        ));
    }
    let ended = shared.ended_early.load(Relaxed);
    if flood && o.window == 0 && ended > 0 {
        f.warnings.push(format!(
            "{ended} viewer(s) were dropped: the server took events faster than it relayed them; --window N measures what it sustains"
        ));
    }
    if stats.gaps > 0 {
        f.notes.push(format!(
            "viewers saw {} sequence number(s) skipped mid-stream",
            stats.gaps
        ));
    }
    note_viewer_trouble(&mut f, &stats);
    Ok(f)
}

/// Idle sockets and streams to open within the open-files limit, and whether
/// the sockets were capped to fit.
fn idle_plan(o: &Options, fd_limit: u64) -> (usize, usize, bool) {
    // The server holds a socket per viewer and a recording per stream.
    let free = fd_limit.saturating_sub(RESERVED_FDS) as usize;
    let room = match o.streams {
        Some(streams) => free.saturating_sub(streams),
        None => free * IDLE_SOCKETS_PER_STREAM / (IDLE_SOCKETS_PER_STREAM + 1),
    };
    let sockets = o.sockets.min(room);
    let streams = o
        .streams
        .unwrap_or(sockets.div_ceil(IDLE_SOCKETS_PER_STREAM))
        .max(1);
    (sockets, streams, sockets < o.sockets)
}

/// `idle`.
async fn drive_idle(
    o: &Options,
    server: &mut RunningServer,
    fd_limit: u64,
) -> Result<Figures, String> {
    let mut f = Figures::new("");
    let (sockets, streams, capped) = idle_plan(o, fd_limit);
    if capped {
        f.warnings.push(format!(
            "asked for {} sockets, capped at {sockets}: the open-files limit is {fd_limit} and the server inherits it",
            o.sockets
        ));
    }
    let hold = o.secs.unwrap_or(5.0);
    let made = make_streams(server, streams).await?;
    let shared = Shared::new(streams);
    let sources = source_addresses(o.sources);
    let deadline = Instant::now() + Duration::from_secs_f64(hold) + RUN_ALLOWANCE;
    let mut pool = ClientPool::new(o.threads);

    sleep(SETTLE).await;
    let rss_before = measure::rss_kb(server.pid);
    let mut points: Vec<(f64, f64)> = rss_before
        .map(|kb| vec![(0.0, kb as f64)])
        .unwrap_or_default();
    let before = Clock::take(server.pid);
    let mut wanted = 0;
    let mut connect_time = Duration::ZERO;
    for step in 1..=IDLE_STEPS {
        let upto = sockets * step / IDLE_STEPS;
        let specs = (wanted..upto)
            .map(|i| SocketSpec {
                server: server.addr,
                source: sources[i % sources.len()],
                path: format!("/v0/streams/{}/socket", made[i % streams].0),
                stream: i % streams,
            })
            .collect();
        wanted = upto;
        let step_started = Instant::now();
        pool.spawn_viewers(specs, load::IDLE_VIEWER_BUFFER, &shared, deadline);
        let opened = || shared.connected.load(Relaxed) + shared.connect_failed.load(Relaxed);
        let limit = JOIN_WAIT + Duration::from_millis(sockets as u64 * 5 / IDLE_STEPS as u64);
        if !wait_until(limit, || opened() >= wanted as u64).await {
            f.warnings.push(format!(
                "only {} of {wanted} sockets were open or refused after {limit:?}",
                opened()
            ));
            break;
        }
        connect_time += step_started.elapsed();
        sleep(SETTLE).await;
        if let Some(kb) = measure::rss_kb(server.pid) {
            points.push((shared.connected.load(Relaxed) as f64, kb as f64));
        }
    }
    let connected = shared.connected.load(Relaxed);
    let rss_after = measure::rss_kb(server.pid);
    let opened_clock = Clock::take(server.pid);
    let connect_usage = Usage::between(&before, &opened_clock);

    // Hold the sockets open: memory should stay flat and the server idle.
    let hold_end = Instant::now() + Duration::from_secs_f64(hold);
    let mut rss_max_hold = rss_after;
    while Instant::now() < hold_end {
        sleep(SAMPLE_EVERY.min(hold_end.saturating_duration_since(Instant::now()))).await;
        rss_max_hold = rss_max_hold.max(measure::rss_kb(server.pid));
    }
    let held = Clock::take(server.pid);
    let hold_usage = Usage::between(&opened_clock, &held);
    let rss_end = measure::rss_kb(server.pid);
    let peak_kb = measure::peak_rss_kb(server.pid);
    let own_rss = measure::rss_kb(std::process::id());
    let ended_early = shared.ended_early.load(Relaxed);
    let stats = pool.collect(Duration::from_secs(5));
    pool.stop();

    let slope_kb = measure::slope(&points);
    let avg_kb = rss_before
        .zip(rss_after)
        .filter(|_| connected > 0)
        .map(|(a, b)| (b as f64 - a as f64) / connected as f64);
    f.add("streams", "streams", Some(streams as f64), "", 0);
    f.add(
        "sockets",
        "idle sockets open",
        Some(connected as f64),
        "",
        0,
    );
    f.add(
        "connect_failures",
        "sockets that failed to open",
        Some(shared.connect_failed.load(Relaxed) as f64),
        "",
        0,
    );
    f.add(
        "connect_rate",
        "sockets opened per second",
        Some(connected as f64 / connect_time.as_secs_f64().max(1e-9)),
        "/s",
        0,
    );
    f.add(
        "server_rss_before_mb",
        "server RSS before",
        mb(rss_before),
        "MB",
        1,
    );
    f.add(
        "server_rss_after_mb",
        "server RSS with the sockets open",
        mb(rss_after),
        "MB",
        1,
    );
    f.add(
        "server_rss_end_mb",
        "server RSS after holding them",
        mb(rss_end),
        "MB",
        1,
    );
    f.add(
        "server_rss_peak_mb",
        "server peak RSS (VmHWM)",
        mb(peak_kb),
        "MB",
        1,
    );
    f.add(
        "per_socket_kb",
        "server memory per socket (slope)",
        slope_kb,
        "KB",
        2,
    );
    f.add(
        "per_socket_avg_kb",
        "server memory per socket (after-before)/n",
        avg_kb,
        "KB",
        2,
    );
    f.add(
        "server_cpu_connect_s",
        "server CPU to open them",
        connect_usage.server_cpu,
        "s",
        2,
    );
    f.add(
        "server_cpu_hold_pct",
        "server CPU while they idle",
        hold_usage.server_cpu.map(|c| 100.0 * c / hold_usage.wall),
        "% of a core",
        1,
    );
    f.add(
        "gen_cpu_connect_s",
        "generator CPU to open them",
        Some(connect_usage.own_cpu),
        "s",
        2,
    );
    f.add("gen_rss_mb", "generator RSS", mb(own_rss), "MB", 1);
    f.add(
        "sockets_ended_early",
        "sockets closed while held",
        Some(ended_early as f64),
        "",
        0,
    );
    if let (Some(end), Some(after)) = (rss_max_hold, rss_after) {
        if end > after + after / 10 {
            f.warnings.push(format!(
                "server memory grew while the sockets idled: {:.1} MB to {:.1} MB",
                after as f64 / 1024.0,
                end as f64 / 1024.0
            ));
        }
    }
    if connect_usage.busiest_thread / connect_usage.wall > SATURATED {
        f.notes.push(
            "a generator thread was saturated while opening sockets: the connect rate is a lower bound".to_owned(),
        );
    }
    note_viewer_trouble(&mut f, &stats);
    Ok(f)
}

/// The settings and machine a run used, for the JSON.
fn context(o: &Options, fd_limit: u64) -> Value {
    json!({
        "scenario": o.scenario.name(),
        "description": describe(o, fd_limit),
        "streams": o.streams,
        "viewers_per_stream": o.viewers,
        "rate": o.rate,
        "secs": o.secs,
        "sockets": o.sockets,
        "client_threads": o.threads,
        "source_addresses": o.sources,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "open_files_limit": fd_limit,
        "extra_env": o.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
    })
}

/// Runs what the options ask for, prints the table, and returns the figures as JSON.
pub async fn run_all(o: &Options, fd_limit: u64) -> Result<Value, String> {
    let ours = || match &o.server_cmd {
        Some(command) => Target::from_command("ours", command),
        None => Target::ours(),
    };
    let peer = || match (&o.peer_cmd, &o.peer) {
        (Some(command), _) => Target::from_command("peer", command),
        (None, Some(dir)) => Target::peer(dir),
        (None, None) => Err("no peer given (--peer DIR or --peer-cmd CMD)".to_owned()),
    };
    let title = describe(o, fd_limit);
    if !o.compare {
        let target = match &o.server_cmd {
            // Whatever it runs, it is not necessarily ours: say what it was.
            Some(command) => Target::from_command(command, command)?,
            None if o.peer.is_some() || o.peer_cmd.is_some() => peer()?,
            None => ours()?,
        };
        let figures = run(o, &target, fd_limit).await?;
        report::print_single(&title, &figures);
        return Ok(json!({"context": context(o, fd_limit), "runs": [figures.to_json()]}));
    }
    let (ours, peer) = (ours()?, peer()?);
    let mut ours_runs = Vec::new();
    let mut peer_runs = Vec::new();
    let mut runs = Vec::new();
    for round in 0..o.rounds {
        // Alternate which goes first, so neither always gets the warmer machine.
        let order: [&Target; 2] = if round % 2 == 0 {
            [&ours, &peer]
        } else {
            [&peer, &ours]
        };
        for target in order {
            let figures = run(o, target, fd_limit).await?;
            let mut entry = figures.to_json();
            entry["round"] = json!(round + 1);
            runs.push(entry);
            if target.label == ours.label {
                ours_runs.push(figures);
            } else {
                peer_runs.push(figures);
            }
        }
    }
    report::print_compare(&title, &ours_runs, &peer_runs);
    Ok(json!({"context": context(o, fd_limit), "runs": runs}))
}
