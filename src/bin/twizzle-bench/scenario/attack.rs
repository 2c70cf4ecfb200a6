//! `attack`: one honest stream, measured throughout, while attackers try
//! the server's limits one after another, against one server that keeps
//! its default limits (only its trusted proxies are set, to none on
//! loopback, so that no client here can name another with
//! `X-Forwarded-For`; and its metrics are served on a free loopback port,
//! for the server's own fan-out times).
//!
//! The honest sender sends realistic moves and orientations at a human
//! pace to the honest viewers, all from their own address, and every
//! viewer measures each event's latency and checks loss and order. The
//! phases: a baseline; one address opening thousands of sockets; one user
//! opening hundreds of sender sockets on one stream; one sender flooding
//! events of the largest size the frame limit allows; one address flooding
//! `GET /v0/streams`; all of them at once. Each attack comes from addresses
//! of its own and forges `X-Forwarded-For` on every request. Each phase
//! reports what the attacker was answered and the honest stream's latency,
//! loss and order over that phase; the run fails if the honest stream lost
//! or reordered anything, or if an attacker was not answered as SPEC says.

mod assault;
mod fanout;
mod http;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::rt::time::sleep;
use serde_json::json;
use twizzle_api_server::config::{Command, Limits, Settings};
use twizzle_api_server::error::ApiError;

use self::assault::{Answers, Expected, Flood, FloodTally, Knocks};
use super::{context, mb, ms, note_viewer_trouble, wait_until, Clock, Usage, Verdict, JOIN_WAIT};
use crate::cli::Options;
use crate::load::{self, ClientPool, Pace, SenderReport, Shared, SocketSpec, ViewerStats};
use crate::measure::{self, now_us};
use crate::report::{self, format_value, Figures};
use crate::target::{free_port, ClientLimits, RunningServer, Target};

/// The honest clients' address. Each attack comes from addresses of its
/// own: per-client limits count per address.
const HONEST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The last octet of the first attacker address (127.0.0.3).
const FIRST_ATTACKER: u8 = 3;
/// The trusted proxies the server is given: an address no client here
/// comes from, so that every loopback peer is a client itself.
const NO_LOOPBACK_PROXY: &str = "192.0.2.1";
/// Seconds of each phase but the frame flood, by default.
const PHASE_SECS: f64 = 15.0;
/// Honest viewers, by default.
const HONEST_VIEWERS: usize = 20;
/// Upgrades in flight at once in the socket attacks.
const UPGRADES_IN_FLIGHT: usize = 64;
/// Connections the request flood keeps alive, each asking again as soon as
/// it is answered.
const REQUEST_CONNECTIONS: usize = 8;
/// After its wave, the socket attacker goes on at this many times the
/// handshake rate until the phase ends, to reach its cap.
const RETRY_FACTOR: f64 = 5.0;
/// How often the honest client lists the streams.
const HONEST_LIST_EVERY: Duration = Duration::from_millis(500);
/// Sockets the server may hold at a phase's end beyond the baseline's and
/// the attacker's cap: connections it is refusing at that instant.
const SOCKET_SLACK: u64 = 16;
/// How long an attack may take to stop and collect its last answers.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// Client threads the attacks run on, one per attack of the last phase.
const ATTACK_THREADS: usize = 4;

/// One thing an attacker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// Anonymous viewer upgrades from one address, held when they open.
    Sockets,
    /// Sender upgrades of one user on one stream, held when they open.
    SenderSockets,
    /// One sender writing events of the frame limit's size, flat out.
    Frames,
    /// `GET /v0/streams` from one address, flat out.
    Requests,
}

/// One phase of the run.
struct Phase {
    name: &'static str,
    secs: f64,
    attacks: Vec<Attack>,
}

fn phases(o: &Options) -> Vec<Phase> {
    let secs = o.secs.unwrap_or(PHASE_SECS);
    let phase = |name, secs, attacks| Phase {
        name,
        secs,
        attacks,
    };
    vec![
        phase("0 baseline", secs, vec![]),
        phase("1 sockets from one address", secs, vec![Attack::Sockets]),
        phase(
            "2 sender sockets, one stream",
            secs,
            vec![Attack::SenderSockets],
        ),
        phase(
            "3 max-size frames flat out",
            o.flood_secs,
            vec![Attack::Frames],
        ),
        phase("4 GET /v0/streams flood", secs, vec![Attack::Requests]),
        phase(
            "5 all at once",
            secs,
            vec![
                Attack::Sockets,
                Attack::SenderSockets,
                Attack::Frames,
                Attack::Requests,
            ],
        ),
    ]
}

/// One line saying what the run does.
pub(super) fn describe(o: &Options) -> String {
    let phases = phases(o);
    format!(
        "attack: 1 honest sender ({}/s) x {} honest viewers through {} phases ({:.0} s) of attacks, default limits",
        o.rate,
        o.viewers.unwrap_or(HONEST_VIEWERS),
        phases.len(),
        phases.iter().map(|p| p.secs).sum::<f64>()
    )
}

/// The server's environment: its defaults, but no trusted proxy on
/// loopback and its metrics on `metrics`, then `--env`.
fn env(o: &Options, metrics: SocketAddr) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "TWIZZLE_TRUSTED_PROXIES".to_owned(),
            NO_LOOPBACK_PROXY.to_owned(),
        ),
        ("TWIZZLE_METRICS_BIND".to_owned(), metrics.to_string()),
    ];
    env.extend(o.env.iter().cloned());
    env
}

/// The limits a server with `env` runs with, as its own settings read them.
fn limits_of(env: &[(String, String)]) -> Result<Limits, String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let settings = match Settings::parse(std::iter::empty::<String>(), lookup) {
        Ok(Command::Run(settings)) => settings,
        Ok(Command::Help(_)) => return Err("the server's settings asked for help".to_owned()),
        Err(e) => return Err(format!("the server's settings: {e}")),
    };
    if settings.trusted_proxies.iter().any(IpAddr::is_loopback) {
        return Err(
            "the attack needs a server that trusts no loopback peer as a proxy (TWIZZLE_TRUSTED_PROXIES)"
                .to_owned(),
        );
    }
    Ok(settings.limits)
}

/// Runs the attack against `target` and prints its table.
pub(super) async fn run(o: &Options, target: &Target, fd_limit: u64) -> Result<Verdict, String> {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let env = env(o, metrics);
    let limits = limits_of(&env)?;
    let title = describe(o);
    eprintln!("twizzle-bench: {title} against {} …", target.label);
    let mut server = RunningServer::start(target, ClientLimits::Default, &env).await?;
    let outcome = drive(o, &mut server, &limits, metrics).await;
    let outcome =
        outcome.map_err(|e| format!("{e}\nthe server's log ends:\n{}", server.log_tail(10)));
    let stopped = server.stop().await;
    let mut outcome = outcome?;
    if !stopped.clean {
        outcome
            .failures
            .push("the server did not stop on SIGTERM within 5 s and was killed".to_owned());
    }
    print(&title, &limits, &outcome);
    let failure = (!outcome.failures.is_empty()).then(|| {
        format!(
            "the attack run failed {} check(s):\n  {}",
            outcome.failures.len(),
            outcome.failures.join("\n  ")
        )
    });
    Ok(Verdict {
        json: json!({
            "context": context(o, fd_limit),
            "limits": {
                "max_frame_bytes": limits.max_frame_bytes,
                "sender_events_per_sec": limits.sender_events_per_sec,
                "sender_event_burst": limits.sender_event_burst,
                "max_sender_sockets_per_stream": limits.max_sender_sockets_per_stream,
                "max_recording_bytes": limits.max_recording_bytes,
                "max_sockets_per_client": limits.max_sockets_per_client,
                "handshakes_per_client_per_sec": limits.handshakes_per_client_per_sec,
                "handshake_burst": limits.handshake_burst,
                "requests_per_client_per_sec": limits.requests_per_client_per_sec,
                "request_burst": limits.request_burst,
            },
            "phases": outcome.phases.iter().map(|p| p.figures.to_json()).collect::<Vec<_>>(),
            "failures": outcome.failures,
        }),
        failure,
    })
}

/// Everything a run measured.
struct Outcome {
    phases: Vec<PhaseOutcome>,
    /// Checks that failed, each saying which phase and what.
    failures: Vec<String>,
}

/// What one phase measured.
struct PhaseOutcome {
    name: &'static str,
    /// One line per attack: what it sent and how it was answered.
    answers: Vec<String>,
    figures: Figures,
}

/// The honest client's `GET /v0/streams`, counted per phase.
#[derive(Default)]
struct HonestApi {
    ok: AtomicU64,
    failed: AtomicU64,
    /// The slowest answer this phase, µs.
    max_us: AtomicU64,
    /// The first failure.
    first_failure: Mutex<Option<String>>,
    quit: AtomicBool,
}

/// What the honest side and the attackers run on.
struct Run<'a> {
    o: &'a Options,
    server: &'a RunningServer,
    limits: &'a Limits,
    honest: Arc<Shared>,
    api: Arc<HonestApi>,
    viewer_pool: ClientPool,
    attack_pool: ClientPool,
    /// Its threads, busy by design: left out of the generator's warnings.
    attacker_threads: Vec<u32>,
    /// Where the server serves its metrics.
    metrics: SocketAddr,
    /// The last octet of the next attacker address.
    next_address: u8,
    /// The attacker's access token.
    attacker_token: String,
    /// The attacker's streams, each used by one attack of one phase.
    attacker_streams: Vec<String>,
    /// The honest stream.
    honest_id: String,
    /// Sockets the server held at the baseline's end.
    baseline_sockets: Option<u64>,
}

async fn drive(
    o: &Options,
    server: &mut RunningServer,
    limits: &Limits,
    metrics: SocketAddr,
) -> Result<Outcome, String> {
    let phases = phases(o);
    let honest_token = server.sign_in().await?;
    let attacker_token = server.sign_in().await?;
    // The honest stream first: with streams spread over the stream threads
    // in turn, attacker streams share its thread too.
    let honest_id = server.create_stream(&honest_token).await?;
    let needed = phases
        .iter()
        .flat_map(|p| &p.attacks)
        .filter(|a| matches!(a, Attack::SenderSockets | Attack::Frames))
        .count();
    let mut attacker_streams = Vec::with_capacity(needed);
    for _ in 0..needed {
        attacker_streams.push(server.create_stream(&attacker_token).await?);
    }
    attacker_streams.reverse();

    let honest = Shared::new(1);
    let total_secs: f64 = phases.iter().map(|p| p.secs).sum();
    // The sender is stopped at the end; this only bounds it.
    let sender_secs = total_secs + phases.len() as f64 * STOP_WAIT.as_secs_f64();
    let mut sender_pool = ClientPool::new(1);
    sender_pool.spawn_senders(
        vec![SocketSpec {
            server: server.addr,
            source: HONEST,
            path: format!("/v0/streams/{honest_id}/socket?twizzleAccessToken={honest_token}"),
            stream: 0,
        }],
        Pace::Rate(o.rate),
        sender_secs,
        &honest,
    );
    if !wait_until(JOIN_WAIT, || honest.senders_ready.load(Relaxed) >= 1).await {
        return Err("the honest sender did not connect in time".to_owned());
    }
    if let Some(failure) = sender_reports(&honest)
        .iter()
        .find_map(|r| r.failure.clone())
    {
        return Err(format!("the honest sender failed: {failure}"));
    }
    let viewers = o.viewers.unwrap_or(HONEST_VIEWERS);
    let deadline = Instant::now() + Duration::from_secs_f64(sender_secs + o.drain_secs + 60.0);
    let mut viewer_pool = ClientPool::new(o.threads);
    let specs = (0..viewers)
        .map(|_| SocketSpec {
            server: server.addr,
            source: HONEST,
            path: format!("/v0/streams/{honest_id}/socket"),
            stream: 0,
        })
        .collect();
    viewer_pool.spawn_viewers(specs, load::BUSY_VIEWER_BUFFER, &honest, deadline);
    if !wait_until(JOIN_WAIT, || honest.settled() >= viewers as u64).await
        || honest.connected.load(Relaxed) < viewers as u64
    {
        return Err(format!(
            "only {} of {viewers} honest viewers connected",
            honest.connected.load(Relaxed)
        ));
    }
    if !wait_until(JOIN_WAIT, || honest.ready.load(Relaxed) >= viewers as u64).await {
        return Err("the honest viewers did not all see the start marker".to_owned());
    }
    let api = Arc::new(HonestApi::default());
    let addr = server.addr;
    let poller = Arc::clone(&api);
    sender_pool.spawn_task(move || list_honestly(addr, poller));

    // The attackers get only the CPU the server and the honest clients
    // leave idle, as an attacker on another machine would take none of it.
    let attack_pool = ClientPool::new(ATTACK_THREADS);
    let attacker_threads = attack_pool.run_last(Duration::from_secs(5));
    let mut run = Run {
        o,
        server,
        limits,
        honest: Arc::clone(&honest),
        api: Arc::clone(&api),
        viewer_pool,
        attack_pool,
        attacker_threads,
        metrics,
        next_address: FIRST_ATTACKER,
        attacker_token,
        attacker_streams,
        honest_id,
        baseline_sockets: None,
    };
    // Go: the first phase starts with the honest sender.
    honest.start_at_us.store(now_us() + 100_000, Relaxed);
    sleep(Duration::from_millis(100)).await;
    let mut outcome = Outcome {
        phases: Vec::new(),
        failures: Vec::new(),
    };
    for (i, phase) in phases.iter().enumerate() {
        let last = i + 1 == phases.len();
        let measured = run.phase(phase, last, &mut outcome.failures).await?;
        outcome.phases.push(measured);
    }
    api.quit.store(true, Relaxed);
    let reports = sender_reports(&honest);
    for report in &reports {
        if let Some(failure) = &report.failure {
            outcome
                .failures
                .push(format!("the honest sender failed: {failure}"));
        }
        if report.errors > 0 {
            outcome.failures.push(format!(
                "the honest sender got {} error frame(s), e.g. {}",
                report.errors,
                report.first_error.clone().unwrap_or_default()
            ));
        }
    }
    let (expected, delivered) = (honest.expected(), honest.delivered());
    if delivered < expected {
        outcome.failures.push(format!(
            "the honest viewers got {delivered} of the {expected} deliveries owed: {} lost",
            expected - delivered
        ));
    }
    run.viewer_pool.stop();
    run.attack_pool.stop();
    sender_pool.stop();
    Ok(outcome)
}

/// What the senders have reported so far.
fn sender_reports(shared: &Shared) -> Vec<SenderReport> {
    shared
        .sender_reports
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default()
}

/// The honest client: `GET /v0/streams` every [`HONEST_LIST_EVERY`] from
/// the honest address, each answer counted, until `api.quit`.
async fn list_honestly(server: SocketAddr, api: Arc<HonestApi>) {
    let mut connection = None;
    let mut buf = Vec::new();
    while !api.quit.load(Relaxed) {
        let started = Instant::now();
        let stream = match connection.take() {
            Some(stream) => Ok(stream),
            None => http::connect(server, HONEST)
                .await
                .map_err(|e| format!("connect: {e}")),
        };
        let answer = match &stream {
            Ok(stream) => http::get(stream, &mut buf, server, "/v0/streams", "").await,
            Err(e) => Err(e.clone()),
        };
        let took = started.elapsed().as_micros() as u64;
        api.max_us.fetch_max(took, Relaxed);
        match answer {
            Ok(answer) if answer.status == 200 => {
                api.ok.fetch_add(1, Relaxed);
                if answer.keep_alive {
                    connection = stream.ok();
                }
            }
            Ok(answer) => api.fail(format!("{} {:?}", answer.status, answer.error)),
            Err(e) => api.fail(e),
        }
        sleep(HONEST_LIST_EVERY.saturating_sub(started.elapsed())).await;
    }
}

impl HonestApi {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Relaxed);
        if let Ok(mut first) = self.first_failure.lock() {
            first.get_or_insert(why);
        }
    }
}

/// The server's sockets at a phase's end, for the socket cap's check.
struct SocketsSeen {
    /// How many more than at the baseline's end.
    above_baseline: Option<u64>,
    /// How many of those the phase's attacks may hold besides the sockets
    /// the socket attack holds.
    room: u64,
}

/// An attack under way in a phase.
enum Running {
    Knocks {
        attack: Attack,
        knocks: Knocks,
        answers: Arc<Answers>,
        /// Sockets it held at the phase's end, before the stop.
        held_at_end: u64,
    },
    Flood {
        stream: String,
        tally: Arc<FloodTally>,
    },
}

impl Run<'_> {
    /// The next attacker address.
    fn address(&mut self) -> Result<IpAddr, String> {
        let octet = self.next_address;
        self.next_address = octet
            .checked_add(1)
            .filter(|n| *n < 255)
            .ok_or("out of loopback addresses for the attackers")?;
        Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)))
    }

    fn attacker_stream(&mut self) -> Result<String, String> {
        self.attacker_streams
            .pop()
            .ok_or_else(|| "no attacker stream left".to_owned())
    }

    /// Starts `attack`; it runs until `stop`.
    fn start(&mut self, attack: Attack, stop: &Arc<AtomicBool>) -> Result<Running, String> {
        let limits = self.limits;
        let server = self.server.addr;
        let handshakes_too_fast = ApiError::TooFast {
            limit: "handshakes per client",
            retry_after: Duration::ZERO,
        }
        .to_string();
        let knocks = match attack {
            Attack::Sockets => Knocks {
                server,
                sources: vec![self.address()?],
                path: format!("/v0/streams/{}/socket", self.honest_id),
                upgrade: true,
                in_flight: UPGRADES_IN_FLIGHT,
                wave: self.o.attack_sockets as u64,
                then_per_sec: Some(limits.handshakes_per_client_per_sec * RETRY_FACTOR),
                expected: Expected {
                    success: 101,
                    too_fast: handshakes_too_fast,
                    capped: Some(
                        ApiError::TooManyClientSockets {
                            limit: limits.max_sockets_per_client,
                        }
                        .to_string(),
                    ),
                },
            },
            Attack::SenderSockets => {
                // One user, from enough addresses that the per-stream cap
                // is what stops it, not each address's handshake budget.
                let per_source = (limits.handshake_burst * 0.75).floor().max(1.0) as usize;
                let sources = self.o.sender_sockets.div_ceil(per_source).clamp(1, 32);
                let sources = (0..sources)
                    .map(|_| self.address())
                    .collect::<Result<Vec<_>, _>>()?;
                let stream = self.attacker_stream()?;
                Knocks {
                    server,
                    sources,
                    path: format!(
                        "/v0/streams/{stream}/socket?twizzleAccessToken={}",
                        self.attacker_token
                    ),
                    upgrade: true,
                    in_flight: UPGRADES_IN_FLIGHT,
                    wave: self.o.sender_sockets as u64,
                    then_per_sec: None,
                    expected: Expected {
                        success: 101,
                        too_fast: handshakes_too_fast,
                        capped: Some(
                            ApiError::TooManySenderSockets {
                                limit: limits.max_sender_sockets_per_stream,
                            }
                            .to_string(),
                        ),
                    },
                }
            }
            Attack::Requests => Knocks {
                server,
                sources: vec![self.address()?],
                path: "/v0/streams".to_owned(),
                upgrade: false,
                in_flight: REQUEST_CONNECTIONS,
                wave: u64::MAX,
                then_per_sec: None,
                expected: Expected {
                    success: 200,
                    too_fast: ApiError::TooFast {
                        limit: "requests per client",
                        retry_after: Duration::ZERO,
                    }
                    .to_string(),
                    capped: None,
                },
            },
            Attack::Frames => {
                let stream = self.attacker_stream()?;
                let tally = Arc::new(FloodTally::default());
                let flood = Flood {
                    server,
                    source: self.address()?,
                    sender_path: format!(
                        "/v0/streams/{stream}/socket?twizzleAccessToken={}",
                        self.attacker_token
                    ),
                    witness_path: format!("/v0/streams/{stream}/socket"),
                    frame_bytes: limits.max_frame_bytes,
                };
                assault::start_flood(&mut self.attack_pool, flood, &tally, stop);
                return Ok(Running::Flood { stream, tally });
            }
        };
        let answers = Arc::new(Answers::default());
        assault::start_knocks(&mut self.attack_pool, knocks.clone(), &answers, stop);
        Ok(Running::Knocks {
            attack,
            knocks,
            answers,
            held_at_end: 0,
        })
    }

    /// Runs one phase: its attacks for its time, then stops them, and
    /// measures the honest stream over it. Checks that fail go to `failures`.
    async fn phase(
        &mut self,
        phase: &Phase,
        last: bool,
        failures: &mut Vec<String>,
    ) -> Result<PhaseOutcome, String> {
        eprintln!(
            "twizzle-bench: phase {} ({:.0} s) …",
            phase.name, phase.secs
        );
        let pid = self.server.pid;
        let fanout_before = fanout::scrape(self.metrics).await;
        let before = Clock::take(pid);
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut running = Vec::new();
        for &attack in &phase.attacks {
            running.push(self.start(attack, &stop)?);
        }
        sleep(Duration::from_secs_f64(phase.secs)).await;
        let rss_kb = measure::rss_kb(pid);
        let sockets = measure::socket_fds(pid);
        for attack in &mut running {
            if let Running::Knocks {
                answers,
                held_at_end,
                ..
            } = attack
            {
                *held_at_end = answers.held.load(Relaxed);
            }
        }
        stop.store(true, Relaxed);
        let stopped = wait_until(STOP_WAIT, || {
            running.iter().all(|r| match r {
                Running::Knocks { answers, .. } => answers.running.load(Relaxed) == 0,
                Running::Flood { tally, .. } => tally.done.load(Relaxed),
            })
        })
        .await;
        let attack_secs = started.elapsed().as_secs_f64();
        if last {
            self.finish_honest().await;
        }
        let stats = self.viewer_pool.collect(Duration::from_secs(5));
        let after = Clock::take(pid);
        let fanout = fanout::scrape(self.metrics)
            .await
            .zip(fanout_before)
            .map(|(after, before)| after.since(&before));

        let mut figures = Figures::new(phase.name);
        let mut answers = Vec::new();
        let mut failed = Vec::new();
        if !stopped {
            failed.push(format!("an attack did not stop within {STOP_WAIT:?}"));
        }
        if phase.attacks.is_empty() {
            self.baseline_sockets = sockets;
            answers.push("no attack".to_owned());
        }
        let seen = SocketsSeen {
            above_baseline: sockets
                .zip(self.baseline_sockets)
                .map(|(s, b)| s.saturating_sub(b)),
            room: running.iter().map(|r| self.sockets_besides_held(r)).sum(),
        };
        for attack in &running {
            let (line, mut wrong) = self.judge(attack, attack_secs, &seen, &mut figures);
            answers.push(line);
            failed.append(&mut wrong);
        }
        self.add_honest(&mut figures, &stats, &mut failed);
        let bound_ms = |q| {
            fanout
                .as_ref()
                .and_then(|f| f.quantile_bound(q))
                .map(|secs| secs * 1000.0)
        };
        figures.add(
            "fanout_p50_ms",
            "server fan-out p50 at most (all streams)",
            bound_ms(0.5),
            "ms",
            2,
        );
        figures.add(
            "fanout_p99_ms",
            "server fan-out p99 at most (all streams)",
            bound_ms(0.99),
            "ms",
            2,
        );
        figures.add(
            "server_rss_mb",
            "server RSS at the phase's end",
            mb(rss_kb),
            "MB",
            1,
        );
        figures.add(
            "server_sockets",
            "server sockets at the phase's end",
            sockets.map(|n| n as f64),
            "",
            0,
        );
        let usage = Usage::between_except(&before, &after, &self.attacker_threads);
        figures.add("secs", "phase length", Some(usage.wall), "s", 1);
        usage.add_to(&mut figures, self.o.threads, None);
        failures.extend(failed.into_iter().map(|f| format!("{}: {f}", phase.name)));
        Ok(PhaseOutcome {
            name: phase.name,
            answers,
            figures,
        })
    }

    /// Stops the honest sender and waits for its last events to arrive.
    async fn finish_honest(&mut self) {
        let honest = &self.honest;
        honest.stop_sending.store(true, Relaxed);
        wait_until(Duration::from_secs(5), || {
            honest.senders_done.load(Relaxed) >= 1
        })
        .await;
        wait_until(Duration::from_secs_f64(self.o.drain_secs), || {
            honest.delivered() >= honest.expected()
        })
        .await;
    }

    /// The honest stream's figures over a phase, and what went wrong with it.
    fn add_honest(&self, f: &mut Figures, stats: &ViewerStats, failed: &mut Vec<String>) {
        let latency = &stats.latency;
        f.add(
            "latency_p50_ms",
            "honest latency p50",
            ms(latency.quantile(0.5)),
            "ms",
            2,
        );
        f.add(
            "latency_p99_ms",
            "honest latency p99",
            ms(latency.quantile(0.99)),
            "ms",
            2,
        );
        f.add(
            "latency_max_ms",
            "honest latency max",
            ms(latency.max()),
            "ms",
            2,
        );
        f.add_count("deliveries", "honest deliveries", stats.delivered);
        f.add_count("lost", "honest deliveries skipped", stats.gaps);
        f.add_count("reordered", "honest deliveries reordered", stats.reordered);
        let ok = self.api.ok.swap(0, Relaxed);
        let bad = self.api.failed.swap(0, Relaxed);
        let slowest = self.api.max_us.swap(0, Relaxed);
        f.add_count("honest_api_ok", "honest GET /v0/streams answered 200", ok);
        f.add_count("honest_api_failed", "honest GET /v0/streams failed", bad);
        f.add(
            "honest_api_max_ms",
            "honest GET /v0/streams slowest",
            ms(slowest),
            "ms",
            1,
        );
        note_viewer_trouble(f, stats);
        if stats.delivered == 0 {
            failed.push("the honest viewers got nothing".to_owned());
        }
        if stats.gaps > 0 || stats.reordered > 0 {
            failed.push(format!(
                "the honest viewers lost {} and reordered {} deliveries",
                stats.gaps, stats.reordered
            ));
        }
        let ended: u64 = stats.close_codes.values().sum::<u64>() + stats.dropped;
        if ended > 0 {
            failed.push(format!("{ended} honest viewer socket(s) ended"));
        }
        if bad > 0 {
            let first = self.api.first_failure.lock().ok().and_then(|f| f.clone());
            failed.push(format!(
                "{bad} honest GET /v0/streams failed, e.g. {}",
                first.unwrap_or_default()
            ));
        }
    }

    /// Sockets `attack` may have open at a phase's end on the server, beyond
    /// the sockets the socket attack holds: its requests in flight, and the
    /// sender sockets and the flood's two.
    fn sockets_besides_held(&self, attack: &Running) -> u64 {
        match attack {
            Running::Knocks {
                attack: Attack::SenderSockets,
                knocks,
                ..
            } => knocks.in_flight as u64 + self.limits.max_sender_sockets_per_stream as u64,
            Running::Knocks { knocks, .. } => knocks.in_flight as u64,
            Running::Flood { .. } => 2,
        }
    }

    /// What an attack was answered, as one line, with its figures added to
    /// `f`; and where that is not what SPEC says.
    fn judge(
        &self,
        attack: &Running,
        secs: f64,
        seen: &SocketsSeen,
        f: &mut Figures,
    ) -> (String, Vec<String>) {
        match attack {
            Running::Knocks {
                attack,
                knocks,
                answers,
                held_at_end,
            } => self.judge_knocks(*attack, knocks, answers, *held_at_end, secs, seen, f),
            Running::Flood { stream, tally } => self.judge_flood(stream, tally, f),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn judge_knocks(
        &self,
        attack: Attack,
        knocks: &Knocks,
        answers: &Answers,
        held: u64,
        secs: f64,
        seen: &SocketsSeen,
        f: &mut Figures,
    ) -> (String, Vec<String>) {
        let limits = self.limits;
        let attempts = answers.attempts.load(Relaxed);
        let successes = answers.successes.load(Relaxed);
        let too_fast = answers.too_fast.load(Relaxed);
        let capped = answers.capped.load(Relaxed);
        let others = answers.others();
        let other_count: u64 = others.values().sum();
        let mut wrong = Vec::new();
        if !others.is_empty() {
            wrong.push(format!("answers SPEC does not name: {others:?}"));
        }
        let without_retry = answers.too_fast_without_retry.load(Relaxed);
        if without_retry > 0 {
            wrong.push(format!(
                "{without_retry} 429(s) over a rate without a Retry-After"
            ));
        }
        let n = |v: u64| format_value(Some(v as f64), 0);
        let sources = knocks.sources.len();
        let from = if sources == 1 {
            "one address".to_owned()
        } else {
            format!("{sources} addresses")
        };
        match attack {
            Attack::Sockets => {
                let cap = limits.max_sockets_per_client as u64;
                let (rate, burst) = (limits.handshakes_per_client_per_sec, limits.handshake_burst);
                let allowed = (burst + rate * secs).floor() as u64 + 1;
                if successes > allowed {
                    wrong.push(format!(
                        "{successes} upgrades from one address in {secs:.1} s: more than its handshake budget of {allowed}"
                    ));
                }
                if successes < attempts.min(cap).min(burst as u64) {
                    wrong.push(format!(
                        "only {successes} upgrades of a fresh address's first {} admitted",
                        burst as u64
                    ));
                }
                if held > cap {
                    wrong.push(format!(
                        "one address held {held} sockets, over the cap of {cap}"
                    ));
                }
                let dropped = answers.dropped.load(Relaxed);
                if capped > 0 && held + dropped < cap {
                    wrong.push(format!(
                        "refused at the cap while holding {held} of {cap} ({dropped} dropped)"
                    ));
                }
                if dropped > 0 {
                    f.notes.push(format!(
                        "the server closed {dropped} of the attacker's sockets: {:?}",
                        answers.drop_reasons()
                    ));
                }
                let above = seen.above_baseline;
                if let Some(above) = above {
                    if above > cap + seen.room + SOCKET_SLACK {
                        wrong.push(format!(
                            "the server held {above} sockets more than at the baseline: over the cap of {cap} and {} for the other attacks' connections",
                            seen.room + SOCKET_SLACK
                        ));
                    }
                }
                f.add_count(
                    "sockets_attempts",
                    "attacker upgrades (one address)",
                    attempts,
                );
                f.add_count("sockets_101", "attacker upgrades admitted", successes);
                f.add_count(
                    "sockets_429_rate",
                    "attacker upgrades 429 over the handshake rate",
                    too_fast,
                );
                f.add_count(
                    "sockets_429_cap",
                    "attacker upgrades 429 at the socket cap",
                    capped,
                );
                f.add_count(
                    "sockets_other",
                    "attacker upgrades answered otherwise",
                    other_count,
                );
                f.add_count(
                    "sockets_held",
                    "attacker sockets open at the phase's end",
                    held,
                );
                let above = above.map_or("n/a".to_owned(), n);
                (
                    format!(
                        "sockets: {} upgrades from {from}: {} x 101, {} x 429 rate, {} x 429 cap, {} other; held {} (cap {cap}); server +{above} sockets",
                        n(attempts), n(successes), n(too_fast), n(capped), n(other_count), n(held)
                    ),
                    wrong,
                )
            }
            Attack::SenderSockets => {
                let cap = limits.max_sender_sockets_per_stream as u64;
                if successes != attempts.min(cap) {
                    wrong.push(format!(
                        "{successes} sender sockets admitted on one stream; the cap is {cap}"
                    ));
                }
                if held != successes {
                    wrong.push(format!(
                        "{} of the admitted sender sockets were closed",
                        successes - held.min(successes)
                    ));
                }
                f.add_count(
                    "senders_attempts",
                    "attacker sender upgrades (one stream)",
                    attempts,
                );
                f.add_count(
                    "senders_101",
                    "attacker sender upgrades admitted",
                    successes,
                );
                f.add_count(
                    "senders_429_cap",
                    "attacker sender upgrades 429 at the stream's cap",
                    capped,
                );
                f.add_count(
                    "senders_429_rate",
                    "attacker sender upgrades 429 over the handshake rate",
                    too_fast,
                );
                f.add_count(
                    "senders_other",
                    "attacker sender upgrades answered otherwise",
                    other_count,
                );
                (
                    format!(
                        "sender sockets: {} upgrades on one stream, from {from}: {} x 101 (cap {cap}), {} x 429 cap, {} x 429 rate, {} other",
                        n(attempts), n(successes), n(capped), n(too_fast), n(other_count)
                    ),
                    wrong,
                )
            }
            Attack::Requests => {
                let (rate, burst) = (limits.requests_per_client_per_sec, limits.request_burst);
                let allowed = (burst + rate * secs).floor() as u64 + 1;
                if successes > allowed {
                    wrong.push(format!(
                        "{successes} requests from one address answered 200 in {secs:.1} s: more than its budget of {allowed}"
                    ));
                }
                if successes < attempts.min(burst as u64) {
                    wrong.push(format!(
                        "only {successes} of a fresh address's first {} requests answered 200",
                        burst as u64
                    ));
                }
                f.add_count(
                    "api_attempts",
                    "attacker GET /v0/streams (one address)",
                    attempts,
                );
                f.add_count("api_200", "attacker GETs answered 200", successes);
                f.add_count("api_429", "attacker GETs 429 with Retry-After", too_fast);
                f.add_count("api_other", "attacker GETs answered otherwise", other_count);
                (
                    format!(
                        "requests: {} GET /v0/streams from {from}: {} x 200, {} x 429 with Retry-After, {} without, {} other",
                        n(attempts), n(successes), n(too_fast), n(without_retry), n(other_count)
                    ),
                    wrong,
                )
            }
            Attack::Frames => unreachable!("a flood is judged by judge_flood"),
        }
    }

    fn judge_flood(
        &self,
        stream: &str,
        tally: &FloodTally,
        f: &mut Figures,
    ) -> (String, Vec<String>) {
        let limits = self.limits;
        let mut wrong: Vec<String> = tally.failures();
        let sent = tally.sent.load(Relaxed);
        let relayed = tally.relayed.load(Relaxed);
        let refused = tally.refused.load(Relaxed);
        let other = tally.other_frames.load(Relaxed);
        let secs = tally.writing_secs();
        if other > 0 {
            wrong.push(format!(
                "{other} frame(s) to the flooding sender were not `rate limit exceeded`, e.g. {}",
                tally.first_other().unwrap_or_default()
            ));
        }
        if relayed + refused > sent {
            wrong.push(format!(
                "{relayed} flood events relayed and {refused} refused, of {sent} sent"
            ));
        }
        // Refused events whose error frame never came: the server drops
        // them when the sender's queue is full rather than grow it.
        let silent = sent.saturating_sub(relayed + refused);
        if silent > 0 {
            f.notes.push(format!(
                "{silent} of the flood's refused events got no `rate limit exceeded` frame (SPEC: one per dropped event): the server drops them when the sender's queue is full rather than grow it"
            ));
        }
        // Every relayed event was accepted between the first write and its
        // own arrival at the witness.
        let accepting = tally.accepting_secs();
        let allowed = (limits.sender_event_burst + limits.sender_events_per_sec * accepting).floor()
            as u64
            + 1;
        if relayed > allowed {
            wrong.push(format!(
                "{relayed} flood events relayed in {accepting:.2} s: more than the sender's budget of {allowed}"
            ));
        }
        if relayed < sent.min(limits.sender_event_burst as u64) {
            wrong.push(format!(
                "only {relayed} of the flood's first {} events (its burst) relayed",
                limits.sender_event_burst as u64
            ));
        }
        let path = self
            .server
            .data_dir()
            .join("log/streams")
            .join(format!("{stream}.log"));
        let recorded = std::fs::metadata(&path).map(|m| m.len()).ok();
        let quota = limits.max_recording_bytes;
        let line = limits.max_frame_bytes as u64 + 1;
        match recorded {
            Some(bytes) if bytes > quota => wrong.push(format!(
                "the flood's recording has {bytes} bytes, over its quota of {quota}"
            )),
            Some(_) => {}
            None => wrong.push(format!(
                "the flood's recording {} is missing",
                path.display()
            )),
        }
        let reached = recorded.is_some_and(|bytes| bytes + line > quota);
        f.add_count("flood_sent", "attacker max-size events sent", sent);
        f.add_count("flood_relayed", "attacker events relayed", relayed);
        f.add_count(
            "flood_refused",
            "attacker events refused (rate limit exceeded)",
            refused,
        );
        f.add_count("flood_other", "attacker frames answered otherwise", other);
        f.add_count(
            "flood_silent",
            "attacker events refused without an error frame",
            silent,
        );
        f.add(
            "flood_recording_bytes",
            "attacker stream's recording",
            recorded.map(|b| b as f64),
            "bytes",
            0,
        );
        f.add(
            "flood_rate",
            "attacker events relayed per second",
            Some(relayed as f64 / secs.max(1e-9)),
            "/s",
            1,
        );
        let n = |v: u64| format_value(Some(v as f64), 0);
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
        (
            format!(
                "frames: {} events of {} bytes in {secs:.0} s: {} relayed ({:.0}/s), {} refused with `rate limit exceeded`, {} without; recording {} of its {} quota{}",
                n(sent),
                limits.max_frame_bytes,
                n(relayed),
                relayed as f64 / secs.max(1e-9),
                n(refused),
                n(silent),
                recorded.map_or("n/a".to_owned(), mib),
                mib(quota),
                if reached { ", reached" } else { ", not reached" }
            ),
            wrong,
        )
    }
}

/// Prints the table, each phase's attacks, the remarks, and the verdict.
fn print(title: &str, limits: &Limits, outcome: &Outcome) {
    let baseline = outcome.phases.first().map(|p| &p.figures);
    let ratio = |f: &Figures, key: &str| match (f.get(key), baseline.and_then(|b| b.get(key))) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
        _ => "-".to_owned(),
    };
    let value = |f: &Figures, key: &str, decimals| format_value(f.get(key), decimals);
    let rows: Vec<Vec<String>> = outcome
        .phases
        .iter()
        .map(|p| {
            let f = &p.figures;
            vec![
                p.name.to_owned(),
                value(f, "secs", 0),
                format!(
                    "{} / {} / {}",
                    value(f, "latency_p50_ms", 2),
                    value(f, "latency_p99_ms", 2),
                    value(f, "latency_max_ms", 2)
                ),
                format!(
                    "{} / {}",
                    ratio(f, "latency_p50_ms"),
                    ratio(f, "latency_p99_ms")
                ),
                format!(
                    "{} / {}",
                    value(f, "fanout_p50_ms", 2),
                    value(f, "fanout_p99_ms", 2)
                ),
                format!("{} / {}", value(f, "lost", 0), value(f, "reordered", 0)),
                format!(
                    "{} / {}",
                    value(f, "honest_api_ok", 0),
                    value(f, "honest_api_failed", 0)
                ),
                value(f, "server_rss_mb", 1),
                value(f, "server_sockets", 0),
                format!(
                    "{} / {}",
                    value(f, "server_cpu_pct", 0),
                    value(f, "machine_busy_cores", 2)
                ),
            ]
        })
        .collect();
    report::print_grid(
        title,
        &[
            "phase",
            "s",
            "honest p50 / p99 / max ms",
            "vs baseline",
            "server fan-out p50 / p99 ms",
            "lost / reord",
            "honest GET ok / failed",
            "RSS MB",
            "sockets",
            "server CPU % / cores busy",
        ],
        &rows,
    );
    println!();
    for phase in &outcome.phases {
        for line in &phase.answers {
            println!("  {}: {line}", phase.name);
        }
    }
    println!(
        "\n  limits (the server's defaults unless --env set them): {} sockets, {}/s (burst {}) handshakes and {}/s (burst {}) requests per address; {} sender sockets and {}/s (burst {}) events per sender and stream; frames of {} bytes; recordings of {} bytes",
        limits.max_sockets_per_client,
        limits.handshakes_per_client_per_sec,
        limits.handshake_burst,
        limits.requests_per_client_per_sec,
        limits.request_burst,
        limits.max_sender_sockets_per_stream,
        limits.sender_events_per_sec,
        limits.sender_event_burst,
        limits.max_frame_bytes,
        limits.max_recording_bytes,
    );
    for phase in &outcome.phases {
        report::print_remarks(&phase.figures);
    }
    if outcome.failures.is_empty() {
        println!("\n  PASS: the honest stream lost and reordered nothing, and every attacker was answered as SPEC says");
    } else {
        println!("\n  FAIL:");
        for failure in &outcome.failures {
            println!("    {failure}");
        }
    }
}
