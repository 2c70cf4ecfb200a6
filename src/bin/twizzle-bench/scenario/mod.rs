//! The scenarios: each starts a server, puts its load on it, measures what
//! it cost the server and the generator, and stops the server again.
//!
//! - `fanout`, `saturate`: what each asks of the server; both run the load in
//!   `relay`, streams with one sender and many viewers each.
//! - `idle`: many idle viewer sockets, opened in steps.
//! - `attack`: an honest stream while attackers try the limits, phase by phase.
//! - `cluster`: one stream over several nodes on one NATS, each node's
//!   viewers counted apart, beside one node on NATS.
//! - `compare`: a scenario against our server and one or more others, in
//!   rounds that rotate which goes first.
//!
//! This file holds what they share: CPU clocks and the usage between two,
//! signing in and making streams, and running one scenario against one server.

mod attack;
mod cluster;
mod compare;
mod fanout;
mod idle;
mod relay;
mod saturate;

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::time::{Duration, Instant};

use actix_web::rt::time::sleep;
use serde_json::{json, Value};

use crate::cli::{Options, PeerStart, Scenario};
use crate::load::{SocketSpec, ViewerStats};
use crate::measure;
use crate::report::{self, Figures};
use crate::target::{ClientLimits, RunningServer, Target};

/// Streams per signed-in user: the server's default per-user limit.
const STREAMS_PER_USER: usize = 10;
/// How often the server's memory and the delivery count are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// A pause that lets the server finish what a step started before it is measured.
const SETTLE: Duration = Duration::from_millis(500);
/// Open files kept free for everything but the sockets and the streams'
/// recordings (the server under test inherits the generator's limit, so both
/// are bounded by it).
const RESERVED_FDS: u64 = 200;
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
        Usage::between_except(a, b, &[])
    }

    /// [`Usage::between`], the threads `except` left out of the busiest
    /// thread (threads meant to be busy, such as attackers').
    fn between_except(a: &Clock, b: &Clock, except: &[u32]) -> Usage {
        let busiest_thread = b
            .threads
            .iter()
            .filter(|(tid, _)| !except.contains(tid))
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

    /// Adds the server's and the generator's CPU to `f`; with `deliveries`,
    /// the server's CPU per delivery too, the unit the targets are stated in.
    fn add_to(&self, f: &mut Figures, threads: usize, deliveries: Option<u64>) {
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
        if let Some(deliveries) = deliveries {
            f.add(
                "server_cpu_per_delivery_us",
                "server CPU per delivery",
                per_delivery_us(self.server_cpu, deliveries),
                "µs",
                2,
            );
        }
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
        self.add_machine_load(f);
    }

    /// The whole machine's CPU, and warnings when it was full or busy with others.
    fn add_machine_load(&self, f: &mut Figures) {
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

/// Microseconds of `cpu_secs` per delivery; `None` without deliveries.
fn per_delivery_us(cpu_secs: Option<f64>, deliveries: u64) -> Option<f64> {
    cpu_secs
        .filter(|_| deliveries > 0)
        .map(|c| c * 1e6 / deliveries as f64)
}

fn mb(kb: Option<u64>) -> Option<f64> {
    kb.map(|kb| kb as f64 / 1024.0)
}

fn ms(us: u64) -> Option<f64> {
    Some(us as f64 / 1000.0)
}

/// 127.0.0.2, 127.0.0.3, …: one source address runs out of ephemeral ports near 28,000 sockets.
fn source_addresses(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

/// Viewer sockets `range` of a run, each on stream `i % streams` from
/// source address `i % sources`, so both are spread evenly.
fn viewer_specs(
    server: &RunningServer,
    made: &[(String, String)],
    sources: &[IpAddr],
    range: Range<usize>,
) -> Vec<SocketSpec> {
    range
        .map(|i| SocketSpec {
            server: server.addr,
            source: sources[i % sources.len()],
            path: format!("/v0/streams/{}/socket", made[i % made.len()].0),
            stream: i % made.len(),
        })
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
        Scenario::Fanout => fanout::describe(o),
        Scenario::Saturate => saturate::describe(o),
        Scenario::Idle => idle::describe(o, fd_limit),
        Scenario::Attack => attack::describe(o),
        Scenario::Cluster => cluster::describe(o),
    }
}

/// Runs the scenario once against `target`.
pub async fn run(o: &Options, target: &Target, fd_limit: u64) -> Result<Figures, String> {
    let mut env = match o.scenario {
        Scenario::Fanout => fanout::env(o),
        Scenario::Saturate => saturate::env(),
        Scenario::Idle => Vec::new(),
        Scenario::Attack | Scenario::Cluster => {
            return Err(format!(
                "{} is a run of its own, not one of figures",
                o.scenario.name()
            ))
        }
    };
    env.extend(o.env.iter().cloned());
    eprintln!(
        "twizzle-bench: {} against {} …",
        describe(o, fd_limit),
        target.label
    );
    let mut server = RunningServer::start(target, ClientLimits::Lifted, &env).await?;
    let result = match o.scenario {
        Scenario::Fanout => relay::drive(o, &mut server, fd_limit, fanout::load(o)).await,
        Scenario::Saturate => relay::drive(o, &mut server, fd_limit, saturate::load(o)).await,
        Scenario::Idle => idle::drive(o, &mut server, fd_limit).await,
        Scenario::Attack | Scenario::Cluster => unreachable!("refused above"),
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

/// Our server: `--server-cmd`, or the binary next to this one.
fn ours(o: &Options) -> Result<Target, String> {
    match &o.server_cmd {
        Some(command) => Target::from_command("ours", command),
        None => Target::ours(),
    }
}

/// The other servers, in column order: each `--peer-cmd`, then the Node
/// peer in `--peer`.
fn others(o: &Options) -> Result<Vec<Target>, String> {
    o.peers()?
        .into_iter()
        .map(|peer| {
            let mut target = match &peer.start {
                PeerStart::Command(command) => Target::from_command(&peer.name, command)?,
                PeerStart::Node(dir) => Target::peer(dir)?,
            };
            target.label = peer.name;
            Ok(target)
        })
        .collect()
}

/// What a run hands back: its figures as JSON, and why it failed, if it did.
pub struct Verdict {
    /// The figures, and the context they were measured in.
    pub json: Value,
    /// The checks that failed, in one message; `None` if all passed (only
    /// `attack` checks anything).
    pub failure: Option<String>,
}

/// Runs what the options ask for, prints the table, and returns the figures as JSON.
pub async fn run_all(o: &Options, fd_limit: u64) -> Result<Verdict, String> {
    let title = describe(o, fd_limit);
    let passed = |json| Verdict {
        json,
        failure: None,
    };
    if o.compare {
        return compare::run(o, fd_limit, &title).await.map(passed);
    }
    let target = match &o.server_cmd {
        // Whatever it runs, it is not necessarily ours: say what it was.
        Some(command) => Target::from_command(command, command)?,
        // The options were checked: a single run has one other server at most.
        None => match others(o)?.into_iter().next() {
            Some(other) => other,
            None => ours(o)?,
        },
    };
    if o.scenario == Scenario::Attack {
        return attack::run(o, &target, fd_limit).await;
    }
    if o.scenario == Scenario::Cluster {
        return cluster::run(o, &target, fd_limit).await;
    }
    let figures = run(o, &target, fd_limit).await?;
    report::print_single(&title, &figures);
    Ok(passed(
        json!({"context": context(o, fd_limit), "runs": [figures.to_json()]}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_delivery_is_in_microseconds() {
        assert_eq!(per_delivery_us(Some(1.5), 1_000_000), Some(1.5));
        assert_eq!(per_delivery_us(Some(1.0), 0), None);
        assert_eq!(per_delivery_us(None, 10), None);
    }
}
