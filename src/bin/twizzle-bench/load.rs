//! The load: viewer and sender sockets, run as one task each on a few client
//! threads (actix arbiters), and the counters they share with the conductor.
//!
//! A viewer reads frames in place, finds the sequence number and the send
//! time by scanning for two keys (no JSON tree), and keeps its counters in a
//! per-thread record that the conductor collects at the end. A sender stamps
//! each event with its sequence number and the shared clock (see
//! [`crate::measure::epoch`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use actix::Arbiter;
use actix_web::rt::net::TcpStream;
use actix_web::rt::time::{sleep, sleep_until, Instant};
use futures_util::future::{join_all, select, Either};

use crate::measure::{epoch, now_us, Histogram};
use crate::ws::{self, FrameReader, ReadOutcome, Rng};

/// Handshakes one client thread has in flight at once, so the server's accept
/// backlog is not overrun.
const CONNECTS_IN_FLIGHT: usize = 64;
/// Read buffer of a viewer that expects a stream of events.
pub const BUSY_VIEWER_BUFFER: usize = 8 * 1024;
/// Read buffer of a viewer that expects nothing but pings.
pub const IDLE_VIEWER_BUFFER: usize = 512;
/// A send more than this far behind its schedule counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(5);
/// Frames a flooding sender writes per system call.
const FLOOD_BATCH: usize = 32;
/// How long past its end a sender's last write may block.
const SEND_GRACE: Duration = Duration::from_millis(100);
/// How long a sender waits to be told to start before it gives up.
const START_WAIT: Duration = Duration::from_secs(120);

/// Counters the conductor reads while the load runs.
pub struct Shared {
    /// Viewer sockets open (upgraded) so far.
    pub connected: AtomicU64,
    /// Viewer sockets that could not be opened.
    pub connect_failed: AtomicU64,
    /// Viewers that have seen their stream's start marker (a `reset`), so
    /// they are surely joined before the first counted event.
    pub ready: AtomicU64,
    /// Viewer sockets the server closed, or that failed, while the run went on.
    pub ended_early: AtomicU64,
    /// Senders connected and ready to start.
    pub senders_ready: AtomicU64,
    /// Senders finished sending (or failed).
    pub senders_done: AtomicU64,
    /// When senders start, in µs since the epoch; 0 until the conductor says go.
    pub start_at_us: AtomicU64,
    /// Events sent so far, per stream.
    pub sent: Vec<AtomicU64>,
    /// Viewers connected, per stream.
    pub viewers: Vec<AtomicU64>,
    /// Event frames (with a sequence number) received by the viewers, per stream.
    pub delivered: Vec<AtomicU64>,
    /// Viewers whose socket ended during the run, per stream.
    pub ended: Vec<AtomicU64>,
    /// What ended viewers were owed while open (their highest sequence number
    /// + 1, summed), per stream.
    pub ended_owed: Vec<AtomicU64>,
    /// What each sender reported when it finished.
    pub sender_reports: Mutex<Vec<SenderReport>>,
}

impl Shared {
    /// Counters for `streams` streams, all zero.
    pub fn new(streams: usize) -> Arc<Shared> {
        Arc::new(Shared {
            connected: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            ended_early: AtomicU64::new(0),
            senders_ready: AtomicU64::new(0),
            senders_done: AtomicU64::new(0),
            start_at_us: AtomicU64::new(0),
            sent: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            viewers: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            ended: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            ended_owed: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            sender_reports: Mutex::new(Vec::new()),
        })
    }

    /// Deliveries owed to stream `s`'s viewers so far: every event sent to
    /// each open viewer, and to each viewer that ended, the events up to the
    /// last it saw.
    pub fn owed(&self, s: usize) -> u64 {
        let open = self.viewers[s]
            .load(Relaxed)
            .saturating_sub(self.ended[s].load(Relaxed));
        self.sent[s].load(Relaxed) * open + self.ended_owed[s].load(Relaxed)
    }

    /// Deliveries owed over all streams.
    pub fn expected(&self) -> u64 {
        (0..self.sent.len()).map(|s| self.owed(s)).sum()
    }

    /// Deliveries received over all streams.
    pub fn delivered(&self) -> u64 {
        self.delivered.iter().map(|d| d.load(Relaxed)).sum()
    }
}

/// What the viewers of one client thread saw; merged over threads at the end.
#[derive(Default, Clone)]
pub struct ViewerStats {
    /// Event frames received.
    pub delivered: u64,
    /// Event frames whose sequence number was not above the highest seen before
    /// on that socket (late or duplicate).
    pub reordered: u64,
    /// Sequence numbers skipped over (seen missing while later ones arrived).
    pub gaps: u64,
    /// End-to-end latency of each event frame, µs.
    pub latency: Histogram,
    /// Text frames that carried no sequence number and no start marker.
    pub other_frames: u64,
    /// Pings answered.
    pub pings: u64,
    /// Close codes the server sent, with counts.
    pub close_codes: BTreeMap<u16, u64>,
    /// Sockets that ended without a close frame (EOF or error).
    pub dropped: u64,
    /// Why sockets could not be opened, with counts.
    pub connect_errors: BTreeMap<String, u64>,
}

impl ViewerStats {
    /// Adds another thread's counters to these.
    pub fn merge(&mut self, other: &ViewerStats) {
        self.delivered += other.delivered;
        self.reordered += other.reordered;
        self.gaps += other.gaps;
        self.latency.merge(&other.latency);
        self.other_frames += other.other_frames;
        self.pings += other.pings;
        for (code, n) in &other.close_codes {
            *self.close_codes.entry(*code).or_default() += n;
        }
        self.dropped += other.dropped;
        for (why, n) in &other.connect_errors {
            *self.connect_errors.entry(why.clone()).or_default() += n;
        }
    }
}

thread_local! {
    /// The viewer counters of the client thread this runs on.
    static THREAD_STATS: Rc<RefCell<ViewerStats>> = Rc::default();
}

/// Where and how one socket connects.
#[derive(Clone)]
pub struct SocketSpec {
    /// The server under test.
    pub server: SocketAddr,
    /// The loopback address to connect from.
    pub source: IpAddr,
    /// `/v0/streams/{id}/socket`, with `?twizzleAccessToken=…` for a sender.
    pub path: String,
    /// Index of the stream, for the per-stream counters.
    pub stream: usize,
}

/// How a sender sends.
#[derive(Clone, Copy)]
pub enum Pace {
    /// This many events a second, on a fixed schedule, for the duration.
    Rate(f64),
    /// As fast as the socket takes them, for the duration; with a `window`
    /// above 0, also no further ahead of the viewers than that many events.
    Flood {
        /// Events the average viewer may be behind before the sender waits; 0: no limit.
        window: u64,
    },
}

/// What one sender did.
#[derive(Debug, Clone, Default)]
pub struct SenderReport {
    /// Events written to the socket.
    pub sent: u64,
    /// Events it meant to send (paced senders).
    pub planned: u64,
    /// Sends more than [`LATE_AFTER`] behind schedule.
    pub late: u64,
    /// The furthest behind schedule a send was, µs.
    pub max_lag_us: u64,
    /// Error frames the server answered with (e.g. `rate limit exceeded`).
    pub errors: u64,
    /// The first error message, to show.
    pub first_error: Option<String>,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

/// A set of client threads, each an actix arbiter running many socket tasks.
pub struct ClientPool {
    /// The threads.
    arbiters: Vec<Arbiter>,
    /// Round-robin position for the next socket.
    next: usize,
}

impl ClientPool {
    /// Starts `threads` client threads.
    pub fn new(threads: usize) -> ClientPool {
        ClientPool {
            arbiters: (0..threads.max(1)).map(|_| Arbiter::new()).collect(),
            next: 0,
        }
    }

    /// Opens viewer sockets, spread over the threads; each thread opens its
    /// share a batch at a time and then reads them until the pool stops or
    /// `deadline` passes.
    pub fn spawn_viewers(
        &mut self,
        specs: Vec<SocketSpec>,
        buffer: usize,
        shared: &Arc<Shared>,
        deadline: std::time::Instant,
    ) {
        let threads = self.arbiters.len();
        let mut shares: Vec<Vec<SocketSpec>> = vec![Vec::new(); threads];
        for spec in specs {
            shares[self.next % threads].push(spec);
            self.next += 1;
        }
        for (arbiter, share) in self.arbiters.iter().zip(shares) {
            let shared = Arc::clone(shared);
            // Spawned from inside the thread: the tasks hold `Rc`s, so they stay on it.
            arbiter.spawn_fn(move || {
                actix_web::rt::spawn(async move {
                    let stats = THREAD_STATS.with(Rc::clone);
                    let mut rng = Rng::new(share.len() as u64 ^ now_us());
                    for batch in share.chunks(CONNECTS_IN_FLIGHT) {
                        let seeds: Vec<u64> = batch.iter().map(|_| rng.next_u64()).collect();
                        let opened =
                            join_all(batch.iter().zip(seeds).map(|(spec, seed)| async move {
                                let mut rng = Rng::new(seed);
                                (
                                    spec,
                                    ws::connect(spec.server, spec.source, &spec.path, &mut rng)
                                        .await,
                                )
                            }))
                            .await;
                        for (spec, result) in opened {
                            match result {
                                Ok((stream, leftover)) => {
                                    shared.viewers[spec.stream].fetch_add(1, Relaxed);
                                    shared.connected.fetch_add(1, Relaxed);
                                    let viewer = Viewer {
                                        index: spec.stream,
                                        stream,
                                        reader: FrameReader::new(buffer, &leftover),
                                        stats: Rc::clone(&stats),
                                        shared: Arc::clone(&shared),
                                        mask: rng.mask(),
                                    };
                                    actix_web::rt::spawn(viewer.run(deadline));
                                }
                                Err(e) => {
                                    *stats
                                        .borrow_mut()
                                        .connect_errors
                                        .entry(e.to_string())
                                        .or_default() += 1;
                                    shared.connect_failed.fetch_add(1, Relaxed);
                                }
                            }
                        }
                    }
                });
            });
        }
    }

    /// Starts one sender per spec, spread over the threads.
    pub fn spawn_senders(
        &mut self,
        specs: Vec<SocketSpec>,
        pace: Pace,
        secs: f64,
        shared: &Arc<Shared>,
    ) {
        for spec in specs {
            let arbiter = &self.arbiters[self.next % self.arbiters.len()];
            self.next += 1;
            let shared = Arc::clone(shared);
            arbiter.spawn_fn(move || {
                actix_web::rt::spawn(async move {
                    let report = run_sender(&spec, pace, secs, &shared).await;
                    shared
                        .sender_reports
                        .lock()
                        .expect("no sender panicked holding the reports")
                        .push(report);
                    shared.senders_done.fetch_add(1, Relaxed);
                });
            });
        }
    }

    /// Takes the viewer counters of every thread (waiting at most `wait`).
    pub fn collect(&self, wait: Duration) -> ViewerStats {
        let (tx, rx) = mpsc::channel();
        for arbiter in &self.arbiters {
            let tx = tx.clone();
            arbiter.spawn_fn(move || {
                let stats = THREAD_STATS.with(|s| std::mem::take(&mut *s.borrow_mut()));
                let _ = tx.send(stats);
            });
        }
        drop(tx);
        let mut total = ViewerStats::default();
        let until = std::time::Instant::now() + wait;
        for _ in 0..self.arbiters.len() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(stats) => total.merge(&stats),
                Err(_) => {
                    log::warn!("a client thread did not report its counters in time");
                    break;
                }
            }
        }
        total
    }

    /// Stops the threads, which closes every socket they hold, and waits for them.
    pub fn stop(mut self) {
        let arbiters = std::mem::take(&mut self.arbiters);
        for arbiter in &arbiters {
            arbiter.stop();
        }
        for arbiter in arbiters {
            let _ = arbiter.join();
        }
    }
}

impl Drop for ClientPool {
    /// A pool dropped without [`ClientPool::stop`] (an error, a signal) still
    /// stops its threads, which closes their sockets.
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// One viewer socket.
struct Viewer {
    /// Index of its stream, for the per-stream counters.
    index: usize,
    stream: TcpStream,
    reader: FrameReader,
    stats: Rc<RefCell<ViewerStats>>,
    shared: Arc<Shared>,
    mask: [u8; 4],
}

/// What a viewer's frame handler saw in one read, beyond the counters.
#[derive(Default)]
struct Seen {
    /// Event frames in this read.
    events: u64,
    /// The payload of a ping to answer (pings carry at most 125 bytes).
    ping: Option<([u8; 125], usize)>,
    /// The close code, if the server closed.
    closed: Option<u16>,
    /// The start marker arrived.
    marker: bool,
}

impl Viewer {
    async fn run(mut self, until: std::time::Instant) {
        let deadline = sleep_until(Instant::from_std(until));
        let mut deadline = std::pin::pin!(deadline);
        let mut highest: Option<u64> = None;
        let mut ready = false;
        let mut pong = Vec::with_capacity(16);
        loop {
            let mut seen = Seen::default();
            let outcome = {
                let stats = &self.stats;
                let read = self.reader.read(&self.stream, |opcode, payload| {
                    on_viewer_frame(opcode, payload, &mut highest, &mut seen, stats)
                });
                match select(std::pin::pin!(read), deadline.as_mut()).await {
                    Either::Left((outcome, _)) => outcome,
                    Either::Right(_) => return,
                }
            };
            if seen.events > 0 {
                self.shared.delivered[self.index].fetch_add(seen.events, Relaxed);
            }
            if seen.marker && !ready {
                ready = true;
                self.shared.ready.fetch_add(1, Relaxed);
            }
            if let Some((payload, len)) = seen.ping {
                pong.clear();
                ws::encode_frame(&mut pong, ws::OP_PONG, &payload[..len], self.mask);
                self.stats.borrow_mut().pings += 1;
                let written = ws::write_until(&self.stream, &pong, until).await;
                if written.error.is_some() || written.bytes < pong.len() {
                    self.ended(None, highest);
                    return;
                }
            }
            if let Some(code) = seen.closed {
                self.ended(Some(code), highest);
                return;
            }
            match outcome {
                Ok(ReadOutcome::Frames) => {}
                Ok(ReadOutcome::Eof) | Err(_) => {
                    self.ended(None, highest);
                    return;
                }
            }
        }
    }

    fn ended(&self, code: Option<u16>, highest: Option<u64>) {
        self.shared.ended_early.fetch_add(1, Relaxed);
        self.shared.ended_owed[self.index].fetch_add(highest.map_or(0, |h| h + 1), Relaxed);
        self.shared.ended[self.index].fetch_add(1, Relaxed);
        let mut stats = self.stats.borrow_mut();
        match code {
            Some(code) => *stats.close_codes.entry(code).or_default() += 1,
            None => stats.dropped += 1,
        }
    }
}

fn on_viewer_frame(
    opcode: u8,
    payload: &[u8],
    highest: &mut Option<u64>,
    seen: &mut Seen,
    stats: &RefCell<ViewerStats>,
) {
    match opcode {
        ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONTINUATION => {
            let Some(seq) = number_after(payload, b"\"seq\":") else {
                if ws::find(payload, b"\"reset\"").is_some() {
                    seen.marker = true;
                } else {
                    stats.borrow_mut().other_frames += 1;
                }
                return;
            };
            let sent = number_after(payload, b"\"timeStamp\":").unwrap_or(0);
            let latency = now_us().saturating_sub(sent);
            seen.events += 1;
            let mut stats = stats.borrow_mut();
            stats.delivered += 1;
            stats.latency.record(latency);
            match *highest {
                Some(top) if seq <= top => stats.reordered += 1,
                Some(top) => {
                    stats.gaps += seq - top - 1;
                    *highest = Some(seq);
                }
                None => {
                    stats.gaps += seq;
                    *highest = Some(seq);
                }
            }
        }
        ws::OP_PING => {
            let len = payload.len().min(125);
            let mut copy = [0u8; 125];
            copy[..len].copy_from_slice(&payload[..len]);
            seen.ping = Some((copy, len));
        }
        ws::OP_CLOSE => seen.closed = Some(ws::close_code(payload).unwrap_or(1005)),
        _ => {}
    }
}

/// The unsigned integer right after `key` (spaces allowed), if `key` occurs.
pub fn number_after(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = ws::find(payload, key)? + key.len();
    let digits = payload[at..].iter().skip_while(|b| **b == b' ');
    let mut value: u64 = 0;
    let mut any = false;
    for &b in digits {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// Writes the `seq`-th event of a sender into `text`: every third a move, the
/// rest orientations, each 150 to 250 bytes like a smart cube's.
pub fn write_event(text: &mut String, seq: u64, sent_us: u64, binary_state: &str) {
    const FAMILIES: [&str; 6] = ["R", "U", "F", "L", "D", "B"];
    const AMOUNTS: [i32; 3] = [1, -1, 2];
    text.clear();
    if seq % 3 == 0 {
        let _ = write!(
            text,
            r#"{{"event":"move","data":{{"latestMove":{{"type":"move","family":"{}","amount":{},"innerLayer":1,"seq":{seq}}},"timeStamp":{sent_us},"binaryState":"{binary_state}"}}}}"#,
            FAMILIES[(seq / 3 % 6) as usize],
            AMOUNTS[(seq / 18 % 3) as usize],
        );
    } else {
        // A slowly turning cube: a unit quaternion with full-precision components.
        let angle = seq as f64 * 0.013;
        let (s, c) = (angle * 0.5).sin_cos();
        let (x, y, z) = (
            0.267_261_241_912_424_4,
            0.534_522_483_824_848_8,
            0.801_783_725_737_273_2,
        );
        let _ = write!(
            text,
            r#"{{"event":"orientation","data":{{"quaternion":{{"x":{},"y":{},"z":{},"w":{}}},"timeStamp":{sent_us},"seq":{seq}}}}}"#,
            x * s,
            y * s,
            z * s,
            c,
        );
    }
}

/// The start marker every sender sends first; viewers count it to know they are joined.
const START_MARKER: &str = r#"{"event":"reset","data":{"trackingOrientation":false}}"#;

/// Connects a sender, sends the start marker, waits for the go, then sends
/// for `secs` seconds at `pace`.
async fn run_sender(spec: &SocketSpec, pace: Pace, secs: f64, shared: &Shared) -> SenderReport {
    let mut report = SenderReport::default();
    let mut rng = Rng::new(spec.stream as u64 ^ now_us());
    let (stream, leftover) = match ws::connect(spec.server, spec.source, &spec.path, &mut rng).await
    {
        Ok(opened) => opened,
        Err(e) => {
            report.failure = Some(e.to_string());
            shared.senders_ready.fetch_add(1, Relaxed);
            return report;
        }
    };
    let stream = Rc::new(stream);
    let control = Rc::new(RefCell::new(Vec::<u8>::new()));
    let errors = Rc::new(RefCell::new((0u64, None::<String>)));
    let mask = rng.mask();
    let reader = actix_web::rt::spawn(read_sender_socket(
        Rc::clone(&stream),
        leftover,
        Rc::clone(&control),
        Rc::clone(&errors),
        mask,
    ));

    let mut batch = Vec::with_capacity(FLOOD_BATCH * 256);
    ws::encode_frame(&mut batch, ws::OP_TEXT, START_MARKER.as_bytes(), rng.mask());
    let until = std::time::Instant::now() + ws::HANDSHAKE_TIMEOUT;
    let written = ws::write_until(&stream, &batch, until).await;
    if let Some(e) = written.error {
        report.failure = Some(format!("sending the start marker: {e}"));
    } else if written.bytes < batch.len() {
        report.failure = Some("the server did not read the start marker".to_owned());
    }
    shared.senders_ready.fetch_add(1, Relaxed);
    if report.failure.is_none() {
        let plan = SendPlan {
            index: spec.stream,
            pace,
            secs,
            shared,
            control: &control,
        };
        send_events(&stream, plan, &mut rng, &mut report).await;
    }
    // Late error answers arrive after the last send; give them a moment.
    sleep(Duration::from_millis(200)).await;
    reader.abort();
    let (count, first) = errors.borrow().clone();
    report.errors = count;
    report.first_error = first;
    report
}

/// How a sender sends, and where its counters go.
struct SendPlan<'a> {
    /// Index of its stream.
    index: usize,
    pace: Pace,
    secs: f64,
    shared: &'a Shared,
    /// Pongs the reader queued, written at the next frame boundary.
    control: &'a RefCell<Vec<u8>>,
}

async fn send_events(
    stream: &TcpStream,
    plan: SendPlan<'_>,
    rng: &mut Rng,
    report: &mut SenderReport,
) {
    let SendPlan {
        index,
        pace,
        secs,
        shared,
        control,
    } = plan;
    let waited = std::time::Instant::now();
    let start_us = loop {
        let at = shared.start_at_us.load(Relaxed);
        if at != 0 {
            break at;
        }
        if waited.elapsed() > START_WAIT {
            report.failure = Some("never told to start".to_owned());
            return;
        }
        sleep(Duration::from_millis(2)).await;
    };
    let start = epoch() + Duration::from_micros(start_us);
    sleep_until(Instant::from_std(start)).await;
    let end = start + Duration::from_secs_f64(secs);

    let mut state = String::with_capacity(64);
    let mut noise = [0u8; 48];
    for chunk in noise.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
    }
    ws::base64_into(&mut state, &noise);
    let mut text = String::with_capacity(256);
    let mut batch: Vec<u8> = Vec::with_capacity(FLOOD_BATCH * 256);
    // Where each event's frame ends in `batch`, to count a batch cut short at the end.
    let mut frame_ends: Vec<usize> = Vec::with_capacity(FLOOD_BATCH);
    let mut seq: u64 = 0;
    let (per_batch, planned) = match pace {
        Pace::Rate(rate) => (1, (rate * secs).floor() as u64),
        Pace::Flood { .. } => (FLOOD_BATCH as u64, u64::from(u32::MAX)),
    };
    if let Pace::Rate(_) = pace {
        report.planned = planned;
    }
    while seq < planned {
        match pace {
            Pace::Rate(rate) => {
                let due = start + Duration::from_secs_f64(seq as f64 / rate);
                let now = std::time::Instant::now();
                if now < due {
                    sleep_until(Instant::from_std(due)).await;
                } else {
                    let lag = now - due;
                    report.max_lag_us = report.max_lag_us.max(lag.as_micros() as u64);
                    if lag > LATE_AFTER {
                        report.late += 1;
                    }
                }
            }
            Pace::Flood { window } => {
                if std::time::Instant::now() >= end {
                    break;
                }
                // Closed loop: wait while the average open viewer is `window` events behind.
                while window > 0 && in_flight(shared, index) >= window {
                    if std::time::Instant::now() >= end {
                        break;
                    }
                    sleep(Duration::from_millis(1)).await;
                }
                if std::time::Instant::now() >= end {
                    break;
                }
            }
        }
        batch.clear();
        frame_ends.clear();
        batch.append(&mut control.borrow_mut());
        let first = seq;
        for _ in 0..per_batch.min(planned - seq) {
            write_event(&mut text, seq, now_us(), &state);
            ws::encode_frame(&mut batch, ws::OP_TEXT, text.as_bytes(), rng.mask());
            frame_ends.push(batch.len());
            seq += 1;
        }
        // A server that stops reading must not hold the sender past the end.
        let written = ws::write_until(stream, &batch, end + SEND_GRACE).await;
        let whole = frame_ends.iter().filter(|e| **e <= written.bytes).count() as u64;
        report.sent = first + whole;
        shared.sent[index].store(report.sent, Relaxed);
        if let Some(e) = written.error {
            report.failure = Some(format!("send failed after {} events: {e}", report.sent));
            break;
        }
        if written.bytes < batch.len() {
            if let Pace::Rate(_) = pace {
                report.failure = Some(format!(
                    "the server stopped reading: send blocked after {} events",
                    report.sent
                ));
            }
            break;
        }
    }
}

/// Events the average open viewer of stream `index` has not received yet.
fn in_flight(shared: &Shared, index: usize) -> u64 {
    let open = shared.viewers[index]
        .load(Relaxed)
        .saturating_sub(shared.ended[index].load(Relaxed));
    if open == 0 {
        return 0;
    }
    let owed = shared.owed(index);
    owed.saturating_sub(shared.delivered[index].load(Relaxed)) / open
}

/// Reads a sender's socket: answers pings (through the writer, at a frame
/// boundary) and counts error frames.
async fn read_sender_socket(
    stream: Rc<TcpStream>,
    leftover: Vec<u8>,
    control: Rc<RefCell<Vec<u8>>>,
    errors: Rc<RefCell<(u64, Option<String>)>>,
    mask: [u8; 4],
) {
    let mut reader = FrameReader::new(4096, &leftover);
    loop {
        let outcome = reader
            .read(&stream, |opcode, payload| match opcode {
                ws::OP_TEXT => {
                    let mut errors = errors.borrow_mut();
                    errors.0 += 1;
                    if errors.1.is_none() {
                        errors.1 = Some(String::from_utf8_lossy(payload).into_owned());
                    }
                }
                ws::OP_PING => {
                    ws::encode_frame(&mut control.borrow_mut(), ws::OP_PONG, payload, mask)
                }
                _ => {}
            })
            .await;
        if !matches!(outcome, Ok(ReadOutcome::Frames)) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_the_size_of_a_smart_cubes() {
        let mut text = String::new();
        for seq in [0, 1, 2, 3, 99_999, 1_000_000] {
            write_event(&mut text, seq, 123_456_789_012, &"A".repeat(64));
            assert!(
                (150..=250).contains(&text.len()),
                "{} bytes: {text}",
                text.len()
            );
            let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert!(value["data"]["timeStamp"].is_u64());
            assert_eq!(number_after(text.as_bytes(), b"\"seq\":"), Some(seq));
            assert_eq!(
                number_after(text.as_bytes(), b"\"timeStamp\":"),
                Some(123_456_789_012)
            );
        }
    }

    #[test]
    fn numbers_are_found_after_their_key() {
        assert_eq!(number_after(br#"{"seq": 42,"x":1}"#, b"\"seq\":"), Some(42));
        assert_eq!(number_after(br#"{"seq":"x"}"#, b"\"seq\":"), None);
        assert_eq!(number_after(br#"{"other":1}"#, b"\"seq\":"), None);
    }
}
