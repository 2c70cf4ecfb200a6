//! `idle`: many idle viewer sockets, opened in steps with the server's
//! memory sampled after each, then held open: what each socket costs.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::rt::time::sleep;

use super::{
    make_streams, mb, note_viewer_trouble, source_addresses, viewer_specs, wait_until, Clock,
    Usage, JOIN_WAIT, RESERVED_FDS, RUN_ALLOWANCE, SAMPLE_EVERY, SATURATED, SETTLE,
};
use crate::cli::Options;
use crate::load::{self, ClientPool, Shared};
use crate::measure;
use crate::report::Figures;
use crate::target::RunningServer;

/// Idle sockets per stream when `--streams` is not given.
const IDLE_SOCKETS_PER_STREAM: usize = 100;
/// Steps the idle sockets are opened in; memory is sampled after each.
const IDLE_STEPS: usize = 5;

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

/// One line saying what the run does.
pub(super) fn describe(o: &Options, fd_limit: u64) -> String {
    let (sockets, streams, _) = idle_plan(o, fd_limit);
    format!(
        "idle: {sockets} idle viewer sockets over {streams} streams, held {} s",
        o.secs.unwrap_or(5.0)
    )
}

/// Where the sockets of a run go.
struct Plan<'a> {
    server: &'a RunningServer,
    sockets: usize,
    /// Each stream's ID and its owner's token.
    made: Vec<(String, String)>,
    sources: Vec<IpAddr>,
    shared: Arc<Shared>,
}

/// Server memory and CPU over a run, and what its sockets did.
struct Readings {
    connected: u64,
    connect_failed: u64,
    /// Time spent opening sockets, the settling pauses left out.
    connect_time: Duration,
    /// Sockets open against server RSS in KB, after each step.
    points: Vec<(f64, f64)>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    /// The most the server held while the sockets idled.
    rss_max_hold: Option<u64>,
    rss_end: Option<u64>,
    peak_kb: Option<u64>,
    own_rss: Option<u64>,
    ended_early: u64,
    connect_usage: Usage,
    hold_usage: Usage,
}

/// Opens the idle sockets, holds them, and measures.
pub(super) async fn drive(
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
    let plan = Plan {
        made: make_streams(server, streams).await?,
        server,
        sockets,
        shared: Shared::new(streams),
        sources: source_addresses(o.sources),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(hold) + RUN_ALLOWANCE;
    let mut pool = ClientPool::new(o.threads);

    sleep(SETTLE).await;
    let pid = server.pid;
    let rss_before = measure::rss_kb(pid);
    let mut points: Vec<(f64, f64)> = rss_before
        .map(|kb| vec![(0.0, kb as f64)])
        .unwrap_or_default();
    let before = Clock::take(pid);
    let connect_time = plan
        .open_in_steps(&mut pool, deadline, &mut points, &mut f)
        .await;
    let connected = plan.shared.connected.load(Relaxed);
    let rss_after = measure::rss_kb(pid);
    let opened_clock = Clock::take(pid);
    let rss_max_hold = hold_open(pid, hold, rss_after).await;
    let held = Clock::take(pid);
    let rss_end = measure::rss_kb(pid);
    let peak_kb = measure::peak_rss_kb(pid);
    let own_rss = measure::rss_kb(std::process::id());
    let ended_early = plan.shared.ended_early.load(Relaxed);
    let stats = pool.collect(Duration::from_secs(5));
    pool.stop();

    let readings = Readings {
        connected,
        connect_failed: plan.shared.connect_failed.load(Relaxed),
        connect_time,
        points,
        rss_before,
        rss_after,
        rss_max_hold,
        rss_end,
        peak_kb,
        own_rss,
        ended_early,
        connect_usage: Usage::between(&before, &opened_clock),
        hold_usage: Usage::between(&opened_clock, &held),
    };
    add_figures(&mut f, streams, &readings);
    note_viewer_trouble(&mut f, &stats);
    Ok(f)
}

impl Plan<'_> {
    /// Opens the sockets in [`IDLE_STEPS`] steps, adding a memory point after
    /// each; stops early, with a warning, if a step does not finish in time.
    /// Returns the time spent opening.
    async fn open_in_steps(
        &self,
        pool: &mut ClientPool,
        deadline: Instant,
        points: &mut Vec<(f64, f64)>,
        f: &mut Figures,
    ) -> Duration {
        let (sockets, shared) = (self.sockets, &self.shared);
        let mut wanted = 0;
        let mut connect_time = Duration::ZERO;
        for step in 1..=IDLE_STEPS {
            let upto = sockets * step / IDLE_STEPS;
            let specs = viewer_specs(self.server, &self.made, &self.sources, wanted..upto);
            wanted = upto;
            let step_started = Instant::now();
            pool.spawn_viewers(specs, load::IDLE_VIEWER_BUFFER, shared, deadline);
            let limit = JOIN_WAIT + Duration::from_millis(sockets as u64 * 5 / IDLE_STEPS as u64);
            if !wait_until(limit, || shared.settled() >= wanted as u64).await {
                f.warnings.push(format!(
                    "only {} of {wanted} sockets were open or refused after {limit:?}",
                    shared.settled()
                ));
                break;
            }
            connect_time += step_started.elapsed();
            sleep(SETTLE).await;
            if let Some(kb) = measure::rss_kb(self.server.pid) {
                points.push((shared.connected.load(Relaxed) as f64, kb as f64));
            }
        }
        connect_time
    }
}

/// Holds the sockets open for `secs`: memory should stay flat and the server
/// idle. Returns the most the server held, `rss_after` included.
async fn hold_open(pid: u32, secs: f64, rss_after: Option<u64>) -> Option<u64> {
    let hold_end = Instant::now() + Duration::from_secs_f64(secs);
    let mut rss_max_hold = rss_after;
    while Instant::now() < hold_end {
        sleep(SAMPLE_EVERY.min(hold_end.saturating_duration_since(Instant::now()))).await;
        rss_max_hold = rss_max_hold.max(measure::rss_kb(pid));
    }
    rss_max_hold
}

/// The run's figures and warnings, in table order.
fn add_figures(f: &mut Figures, streams: usize, r: &Readings) {
    f.add_count("streams", "streams", streams as u64);
    f.add_count("sockets", "idle sockets open", r.connected);
    f.add_count(
        "connect_failures",
        "sockets that failed to open",
        r.connect_failed,
    );
    f.add(
        "connect_rate",
        "sockets opened per second",
        Some(r.connected as f64 / r.connect_time.as_secs_f64().max(1e-9)),
        "/s",
        0,
    );
    add_memory_figures(f, r);
    add_cpu_figures(f, r);
    if let (Some(end), Some(after)) = (r.rss_max_hold, r.rss_after) {
        if end > after + after / 10 {
            f.warnings.push(format!(
                "server memory grew while the sockets idled: {:.1} MB to {:.1} MB",
                after as f64 / 1024.0,
                end as f64 / 1024.0
            ));
        }
    }
    if r.connect_usage.busiest_thread / r.connect_usage.wall > SATURATED {
        f.notes.push(
            "a generator thread was saturated while opening sockets: the connect rate is a lower bound".to_owned(),
        );
    }
}

/// The server's memory before, with and after the sockets, and per socket.
fn add_memory_figures(f: &mut Figures, r: &Readings) {
    let avg_kb = r
        .rss_before
        .zip(r.rss_after)
        .filter(|_| r.connected > 0)
        .map(|(a, b)| (b as f64 - a as f64) / r.connected as f64);
    f.add(
        "server_rss_before_mb",
        "server RSS before",
        mb(r.rss_before),
        "MB",
        1,
    );
    f.add(
        "server_rss_after_mb",
        "server RSS with the sockets open",
        mb(r.rss_after),
        "MB",
        1,
    );
    f.add(
        "server_rss_end_mb",
        "server RSS after holding them",
        mb(r.rss_end),
        "MB",
        1,
    );
    f.add(
        "server_rss_peak_mb",
        "server peak RSS (VmHWM)",
        mb(r.peak_kb),
        "MB",
        1,
    );
    f.add(
        "per_socket_kb",
        "server memory per socket (slope)",
        measure::slope(&r.points),
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
}

/// CPU to open and to hold the sockets, the generator's memory, and sockets lost.
fn add_cpu_figures(f: &mut Figures, r: &Readings) {
    f.add(
        "server_cpu_connect_s",
        "server CPU to open them",
        r.connect_usage.server_cpu,
        "s",
        2,
    );
    f.add(
        "server_cpu_hold_pct",
        "server CPU while they idle",
        r.hold_usage
            .server_cpu
            .map(|c| 100.0 * c / r.hold_usage.wall),
        "% of a core",
        1,
    );
    f.add(
        "gen_cpu_connect_s",
        "generator CPU to open them",
        Some(r.connect_usage.own_cpu),
        "s",
        2,
    );
    f.add("gen_rss_mb", "generator RSS", mb(r.own_rss), "MB", 1);
    f.add_count(
        "sockets_ended_early",
        "sockets closed while held",
        r.ended_early,
    );
}
