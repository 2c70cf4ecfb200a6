//! `cluster`: one stream on `--nodes` nodes of our server sharing one
//! `nats-server` (started here, from PATH): its sender on node 1, its
//! `--viewers` spread evenly over the nodes, each node's viewers counted
//! apart (deliveries, latency, loss, order); and, in the same run, the same
//! load on one node on NATS, for the cost of the cluster beside it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::rt::time::sleep;
use serde_json::json;

use super::relay::Load;
use super::{
    context, make_streams, ms, source_addresses, wait_until, Verdict, JOIN_WAIT, RESERVED_FDS,
    RUN_ALLOWANCE, SAMPLE_EVERY,
};
use crate::cli::Options;
use crate::load::{self, ClientPool, Pace, Shared, SocketSpec, ViewerStats};
use crate::measure::{self, epoch, now_us};
use crate::nats::NatsProcess;
use crate::report::{self, format_value, Figures};
use crate::target::{ClientLimits, RunningServer, Target};

/// Viewers over all nodes by default.
const DEFAULT_VIEWERS: usize = 600;

/// The rows of the table: key, label, unit, decimals.
const ROWS: [(&str, &str, &str, usize); 13] = [
    ("viewers", "viewers connected", "", 0),
    ("viewer_connect_failures", "viewer sockets refused", "", 0),
    ("deliveries_expected", "deliveries expected", "", 0),
    ("deliveries", "deliveries received", "", 0),
    ("deliveries_per_sec", "deliveries per second", "/s", 0),
    ("lost", "lost deliveries", "", 0),
    ("reordered", "reordered deliveries", "", 0),
    ("latency_p50_ms", "latency p50", "ms", 2),
    ("latency_p99_ms", "latency p99", "ms", 2),
    ("latency_max_ms", "latency max", "ms", 2),
    ("server_cpu_pct", "server CPU, share of one core", "%", 0),
    ("nats_cpu_pct", "nats-server CPU, share of one core", "%", 0),
    ("gen_cpu_pct", "generator CPU, share of one core", "%", 0),
];

/// One line saying what the run does.
pub(super) fn describe(o: &Options) -> String {
    format!(
        "cluster: {} nodes on one nats-server, 1 sender on node 1 at {} events/s, {} viewers spread over the nodes, for {} s; then one node on NATS with the same load",
        o.nodes,
        o.rate,
        o.viewers.unwrap_or(DEFAULT_VIEWERS),
        o.secs.unwrap_or(10.0)
    )
}

/// `total` viewers over `nodes` nodes, as evenly as they go, the first
/// nodes taking one more where they do not divide.
pub(super) fn split(total: usize, nodes: usize) -> Vec<usize> {
    (0..nodes)
        .map(|k| total / nodes + usize::from(k < total % nodes))
        .collect()
}

/// What one node's viewers got.
#[derive(Default)]
pub(super) struct Tally {
    /// Viewer sockets that opened on it.
    pub connected: u64,
    /// Viewer sockets it refused (or that failed to open).
    pub refused: u64,
    /// Deliveries its viewers were owed.
    pub owed: u64,
    /// What its viewers saw.
    pub stats: ViewerStats,
    /// Its CPU seconds over the window (for a node), if known.
    pub cpu: Option<f64>,
}

/// The figures of `tally` over a window of `wall` seconds, of which the
/// sending took `secs`.
pub(super) fn figures_of(label: &str, tally: &Tally, wall: f64, secs: f64) -> Figures {
    let mut f = Figures::new(label);
    let stats = &tally.stats;
    f.add_count("viewers", "viewers connected", tally.connected);
    f.add_count(
        "viewer_connect_failures",
        "viewer sockets refused",
        tally.refused,
    );
    f.add_count("deliveries_expected", "deliveries expected", tally.owed);
    f.add_count("deliveries", "deliveries received", stats.delivered);
    f.add(
        "deliveries_per_sec",
        "deliveries per second",
        Some(stats.delivered as f64 / wall.max(secs)),
        "/s",
        0,
    );
    f.add_count(
        "lost",
        "lost deliveries",
        tally.owed.saturating_sub(stats.delivered),
    );
    f.add_count("reordered", "reordered deliveries", stats.reordered);
    let latency = |q: f64| (stats.delivered > 0).then(|| stats.latency.quantile(q));
    f.add(
        "latency_p50_ms",
        "latency p50",
        latency(0.5).and_then(ms),
        "ms",
        2,
    );
    f.add(
        "latency_p99_ms",
        "latency p99",
        latency(0.99).and_then(ms),
        "ms",
        2,
    );
    f.add(
        "latency_max_ms",
        "latency max",
        (stats.delivered > 0)
            .then(|| stats.latency.max())
            .and_then(ms),
        "ms",
        2,
    );
    f.add(
        "server_cpu_pct",
        "server CPU, share of one core",
        tally.cpu.map(|c| 100.0 * c / wall.max(1e-9)),
        "%",
        0,
    );
    f
}

/// What went wrong on each node, one line each (node 1 is the sender's).
pub(super) fn verdicts(tallies: &[Tally]) -> Vec<String> {
    let mut said = Vec::new();
    for (k, t) in tallies.iter().enumerate() {
        let node = k + 1;
        if t.refused > 0 {
            let why = t
                .stats
                .connect_errors
                .keys()
                .next()
                .map_or(String::new(), |why| format!(" ({why})"));
            said.push(format!(
                "node {node}: {} of {} viewer sockets were refused{why}",
                t.refused,
                t.refused + t.connected
            ));
        }
        let lost = t.owed.saturating_sub(t.stats.delivered);
        if lost > 0 {
            said.push(format!(
                "node {node}: {} of {} deliveries lost",
                format_value(Some(lost as f64), 0),
                format_value(Some(t.owed as f64), 0)
            ));
        }
        if t.stats.reordered > 0 {
            said.push(format!(
                "node {node}: {} deliveries out of order",
                t.stats.reordered
            ));
        }
    }
    said
}

/// Runs the cluster and then the single node, prints both side by side,
/// and returns every column as JSON.
pub(super) async fn run(o: &Options, target: &Target, fd_limit: u64) -> Result<Verdict, String> {
    let title = describe(o);
    let viewers = o.viewers.unwrap_or(DEFAULT_VIEWERS);
    let secs = o.secs.unwrap_or(10.0);
    if (viewers + 2) as u64 + RESERVED_FDS > fd_limit {
        return Err(format!(
            "{viewers} viewer sockets do not fit in the open-files limit of {fd_limit}; lower --viewers"
        ));
    }
    let mut env = super::fanout::env(o);
    env.extend(o.env.iter().cloned());
    eprintln!("twizzle-bench: {title} …");
    let cluster = on_cluster(o, target, &env, viewers, secs).await?;
    eprintln!("twizzle-bench: the same load on one node on NATS …");
    let single = on_one_node(o, target, fd_limit, &env, viewers, secs).await?;

    let mut columns = vec![single];
    columns.extend(cluster);
    let mut header = vec![""];
    header.extend(columns.iter().map(|f| f.target.as_str()));
    header.push("unit");
    let rows: Vec<Vec<String>> = ROWS
        .iter()
        .map(|(key, label, unit, decimals)| {
            let mut row = vec![(*label).to_owned()];
            row.extend(columns.iter().map(|f| format_value(f.get(key), *decimals)));
            row.push((*unit).to_owned());
            row
        })
        .collect();
    report::print_grid(&title, &header, &rows);
    for figures in &columns {
        report::print_remarks(figures);
    }
    Ok(Verdict {
        json: json!({
            "context": context(o, fd_limit),
            "nodes": o.nodes,
            "runs": columns.iter().map(Figures::to_json).collect::<Vec<_>>(),
        }),
        failure: None,
    })
}

/// The load on one node on a nats-server of its own: the fanout figures.
async fn on_one_node(
    o: &Options,
    target: &Target,
    fd_limit: u64,
    env: &[(String, String)],
    viewers: usize,
    secs: f64,
) -> Result<Figures, String> {
    let nats = NatsProcess::start()?;
    let mut env = env.to_vec();
    env.push(("TWIZZLE_NATS_URL".to_owned(), nats.url()));
    let mut server = RunningServer::start(target, ClientLimits::Lifted, &env).await?;
    let load = Load {
        streams: 1,
        per_stream: viewers,
        secs,
        pace: Pace::Rate(o.rate),
    };
    let (started, nats_before) = (Instant::now(), measure::process_cpu_secs(nats.pid));
    let result = super::relay::drive(o, &mut server, fd_limit, load).await;
    let nats_cpu = nats_before
        .zip(measure::process_cpu_secs(nats.pid))
        .map(|(a, b)| 100.0 * (b - a) / started.elapsed().as_secs_f64().max(1e-9));
    let result =
        result.map_err(|e| format!("{e}\nthe server's log ends:\n{}", server.log_tail(10)));
    server.stop().await;
    let mut figures = result?;
    figures.target = "one node".to_owned();
    figures.add(
        "nats_cpu_pct",
        "nats-server CPU, share of one core (whole run)",
        nats_cpu,
        "%",
        0,
    );
    Ok(figures)
}

/// The cluster's run: its columns, the whole cluster first, then each node.
async fn on_cluster(
    o: &Options,
    target: &Target,
    env: &[(String, String)],
    viewers: usize,
    secs: f64,
) -> Result<Vec<Figures>, String> {
    let nats = NatsProcess::start()?;
    let mut env = env.to_vec();
    env.push(("TWIZZLE_NATS_URL".to_owned(), nats.url()));
    let mut nodes = Vec::with_capacity(o.nodes);
    for _ in 0..o.nodes {
        nodes.push(RunningServer::start(target, ClientLimits::Lifted, &env).await?);
    }
    let result = drive(o, &mut nodes, &nats, viewers, secs).await;
    let result = result.map_err(|e| {
        let logs: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(k, n)| format!("node {}'s log ends:\n{}", k + 1, n.log_tail(10)))
            .collect();
        format!("{e}\n{}", logs.join("\n"))
    });
    for node in nodes {
        node.stop().await;
    }
    result
}

/// CPU seconds of the nodes, NATS and this process, at one instant.
struct Cpu {
    at: Instant,
    nodes: Vec<Option<f64>>,
    nats: Option<f64>,
    own: f64,
}

impl Cpu {
    fn take(nodes: &[RunningServer], nats: &NatsProcess) -> Cpu {
        Cpu {
            at: Instant::now(),
            nodes: nodes
                .iter()
                .map(|n| measure::process_cpu_secs(n.pid))
                .collect(),
            nats: measure::process_cpu_secs(nats.pid),
            own: measure::own_cpu_secs(),
        }
    }
}

/// Puts the load on the running nodes and measures it, each node apart.
async fn drive(
    o: &Options,
    nodes: &mut [RunningServer],
    nats: &NatsProcess,
    viewers: usize,
    secs: f64,
) -> Result<Vec<Figures>, String> {
    let made = make_streams(&mut nodes[0], 1).await?;
    let (id, token) = &made[0];
    let n = nodes.len();
    // Index k counts node k's viewers; all are owed what the sender sends.
    let shared = Shared::sent_by(vec![0; n]);
    let sources = source_addresses(o.sources);
    let deadline = Instant::now() + Duration::from_secs_f64(secs + o.drain_secs) + RUN_ALLOWANCE;

    let mut sender_pool = ClientPool::new(1);
    let sender = SocketSpec {
        server: nodes[0].addr,
        source: sources[0],
        path: format!("/v0/streams/{id}/socket?twizzleAccessToken={token}"),
        stream: 0,
    };
    sender_pool.spawn_senders(vec![sender], Pace::Rate(o.rate), secs, &shared);
    if !wait_until(JOIN_WAIT, || shared.senders_ready.load(Relaxed) >= 1).await {
        return Err("the sender did not connect in time".to_owned());
    }
    if shared.senders_done.load(Relaxed) > 0 {
        return Err("the sender failed to connect".to_owned());
    }

    // A pool per node, so that each node's viewers' latency is their own.
    let threads = o.threads.div_ceil(n).max(1);
    let mut pools = Vec::with_capacity(n);
    for (k, (node, share)) in nodes.iter().zip(split(viewers, n)).enumerate() {
        let specs = (0..share)
            .map(|i| SocketSpec {
                server: node.addr,
                source: sources[i % sources.len()],
                path: format!("/v0/streams/{id}/socket"),
                stream: k,
            })
            .collect();
        let mut pool = ClientPool::new(threads);
        pool.spawn_viewers(specs, load::BUSY_VIEWER_BUFFER, &shared, deadline);
        pools.push(pool);
    }
    let limit = JOIN_WAIT + Duration::from_millis(viewers as u64 * 5);
    let all_opened = wait_until(limit, || shared.settled() >= viewers as u64).await;
    let connected = shared.connected.load(Relaxed);
    let all_ready = wait_until(JOIN_WAIT, || shared.ready.load(Relaxed) >= connected).await;

    let (window, before, after) = measure_window(&shared, nodes, nats, secs, o.drain_secs).await;
    let mut tallies: Vec<Tally> = pools
        .iter()
        .enumerate()
        .map(|(k, pool)| {
            let stats = pool.collect(Duration::from_secs(5));
            Tally {
                connected: shared.viewers[k].load(Relaxed),
                refused: stats.connect_errors.values().sum(),
                owed: shared.owed(k),
                stats,
                cpu: before.nodes[k].zip(after.nodes[k]).map(|(a, b)| b - a),
            }
        })
        .collect();
    for pool in pools {
        pool.stop();
    }
    let reports = shared
        .sender_reports
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    sender_pool.stop();

    let wall = (after.at - before.at).as_secs_f64();
    let mut all = Tally::default();
    for t in &tallies {
        all.connected += t.connected;
        all.refused += t.refused;
        all.owed += t.owed;
        all.stats.merge(&t.stats);
    }
    all.cpu = tallies.iter().map(|t| t.cpu).sum();
    let mut cluster = figures_of("cluster", &all, window, secs);
    cluster.add(
        "nats_cpu_pct",
        "nats-server CPU, share of one core",
        before
            .nats
            .zip(after.nats)
            .map(|(a, b)| 100.0 * (b - a) / wall.max(1e-9)),
        "%",
        0,
    );
    cluster.add(
        "gen_cpu_pct",
        "generator CPU, share of one core",
        Some(100.0 * (after.own - before.own) / wall.max(1e-9)),
        "%",
        0,
    );
    cluster.warnings.extend(verdicts(&tallies));
    if !all_opened {
        cluster.warnings.push(format!(
            "only {} of {viewers} viewer sockets were open or refused after {limit:?}",
            shared.settled()
        ));
    }
    if !all_ready {
        cluster.warnings.push(format!(
            "{} viewer(s) never saw the start marker, so may have joined after the first events",
            connected.saturating_sub(shared.ready.load(Relaxed))
        ));
    }
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    cluster.notes.push(format!(
        "the sender on node 1 sent {sent} events; {} error frame(s) came back",
        reports.iter().map(|r| r.errors).sum::<u64>()
    ));
    if let Some(first) = reports.iter().find_map(|r| r.first_error.clone()) {
        cluster
            .notes
            .push(format!("the first error frame: {first}"));
    }
    let mut columns = vec![cluster];
    for (k, t) in tallies.iter_mut().enumerate() {
        let label = format!("node {}", k + 1);
        let mut f = figures_of(&label, t, window, secs);
        for (code, count) in &t.stats.close_codes {
            f.notes
                .push(format!("{count} viewer socket(s) closed with {code}"));
        }
        columns.push(f);
    }
    Ok(columns)
}

/// Starts the sender and samples until every delivery owed arrived, or
/// deliveries stall for a second after the sending, or the drain limit
/// passes; returns the seconds from the start to the last delivery, and
/// the CPU clocks at both ends.
async fn measure_window(
    shared: &Arc<Shared>,
    nodes: &[RunningServer],
    nats: &NatsProcess,
    secs: f64,
    drain_secs: f64,
) -> (f64, Cpu, Cpu) {
    let start_us = now_us() + 100_000;
    let before = Cpu::take(nodes, nats);
    shared.start_at_us.store(start_us, Relaxed);
    let start = epoch() + Duration::from_micros(start_us);
    let send_end = start + Duration::from_secs_f64(secs);
    let drain_end = send_end + Duration::from_secs_f64(drain_secs);
    let mut last_progress = (Instant::now(), 0u64);
    while Instant::now() < drain_end {
        sleep(SAMPLE_EVERY).await;
        let now = Instant::now();
        let delivered = shared.delivered();
        if delivered != last_progress.1 {
            last_progress = (now, delivered);
        }
        if now >= send_end && shared.senders_done.load(Relaxed) >= 1 {
            if delivered >= shared.expected() {
                break;
            }
            if now - last_progress.0 > Duration::from_secs(1) {
                break;
            }
        }
    }
    let after = Cpu::take(nodes, nats);
    let window = last_progress
        .0
        .saturating_duration_since(start)
        .as_secs_f64();
    (window, before, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_are_spread_evenly() {
        assert_eq!(split(1500, 3), [500, 500, 500]);
        assert_eq!(split(10, 3), [4, 3, 3]);
        assert_eq!(split(1, 3), [1, 0, 0]);
        assert_eq!(split(7, 2).iter().sum::<usize>(), 7);
    }

    fn tally(connected: u64, refused: u64, owed: u64, delivered: u64) -> Tally {
        let mut t = Tally {
            connected,
            refused,
            owed,
            ..Tally::default()
        };
        t.stats.delivered = delivered;
        for _ in 0..delivered {
            t.stats.latency.record(2_000);
        }
        if refused > 0 {
            t.stats
                .connect_errors
                .insert("the upgrade was answered 404".to_owned(), refused);
        }
        t
    }

    #[test]
    fn each_nodes_loss_and_refusals_are_said() {
        let tallies = [
            tally(500, 0, 150_000, 150_000),
            tally(0, 500, 0, 0),
            tally(500, 0, 150_000, 149_000),
        ];
        assert_eq!(
            verdicts(&tallies),
            [
                "node 2: 500 of 500 viewer sockets were refused (the upgrade was answered 404)",
                "node 3: 1,000 of 150,000 deliveries lost",
            ]
        );
        assert!(verdicts(&tallies[..1]).is_empty());
    }

    #[test]
    fn a_nodes_figures_count_its_own_viewers() {
        let t = tally(500, 0, 15_000, 14_000);
        let f = figures_of("node 3", &t, 10.0, 10.0);
        assert_eq!(f.get("lost"), Some(1_000.0));
        assert_eq!(f.get("deliveries_per_sec"), Some(1_400.0));
        assert!(f
            .get("latency_p50_ms")
            .is_some_and(|ms| (1.0..=3.0).contains(&ms)));
        // No deliveries, no latency: n/a, not 0.
        let none = figures_of("node 2", &tally(0, 500, 0, 0), 10.0, 10.0);
        assert_eq!(none.get("latency_p99_ms"), None);
        assert_eq!(none.get("viewer_connect_failures"), Some(500.0));
    }
}
