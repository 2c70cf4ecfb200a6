//! The attackers. Each runs on the attack's client thread until it is told
//! to stop, and counts every answer as it comes, sorted by what SPEC says
//! the server must answer; anything else is kept with its status and error.
//!
//! - [`Knocks`]: WebSocket upgrades, or `GET`s on connections kept alive,
//!   as fast as a few connections in flight allow, and optionally at a
//!   steady pace after that. Sockets that open are held (read, and pings
//!   answered) until the stop.
//! - [`Flood`]: one sender writing events of the largest size the frame
//!   limit allows, flat out, with a viewer of its own stream beside it that
//!   counts what was relayed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::rt::net::TcpStream;
use actix_web::rt::time::{sleep, timeout};

use super::http::{self, Answer, Upgrade};
use crate::load::ClientPool;
use crate::measure::now_us;
use crate::ws::{self, FrameReader, ReadOutcome, Rng};

/// How often a waiting attacker looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Largest frames a flooding sender writes per system call.
const FLOOD_BATCH: usize = 8;
/// How long after its last write a flood waits for the answers to it.
const FLOOD_SETTLE: Duration = Duration::from_secs(5);
/// How long a flood may go without a new answer before it stops waiting.
const FLOOD_QUIET: Duration = Duration::from_secs(1);

/// What the server must answer an attacker.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The status of a success: 101 for an upgrade, 200 for a `GET`.
    pub success: u16,
    /// The error of a 429 over a rate, which must carry `Retry-After`.
    pub too_fast: String,
    /// The error of a 429 over a cap, if the attack can meet one.
    pub capped: Option<String>,
}

/// The answers an attack got, counted as they come.
#[derive(Default)]
pub struct Answers {
    /// Requests sent.
    pub attempts: AtomicU64,
    /// Answered with the success status.
    pub successes: AtomicU64,
    /// 429 over a rate, with a `Retry-After` of at least one second.
    pub too_fast: AtomicU64,
    /// 429 over a rate without a usable `Retry-After`: against SPEC.
    pub too_fast_without_retry: AtomicU64,
    /// 429 naming the cap.
    pub capped: AtomicU64,
    /// Anything else, by status and error (or by what failed).
    pub others: Mutex<BTreeMap<String, u64>>,
    /// Upgraded sockets open now.
    pub held: AtomicU64,
    /// Upgraded sockets the server closed or cut.
    pub dropped: AtomicU64,
    /// How they ended: the close code, or how the connection ended.
    pub drop_reasons: Mutex<BTreeMap<String, u64>>,
    /// Workers still running (0 once the attack has stopped).
    pub running: AtomicU64,
}

impl Answers {
    fn other(&self, what: String) {
        let mut others = self.others.lock().expect("no attacker panicked holding it");
        *others.entry(what).or_default() += 1;
    }

    fn sort(&self, answer: &Answer, expected: &Expected) {
        let error = answer.error.as_deref().unwrap_or("");
        if answer.status == expected.success {
            self.successes.fetch_add(1, Relaxed);
        } else if answer.status == 429 && error == expected.too_fast {
            let retry = answer
                .retry_after
                .as_deref()
                .and_then(|r| r.parse::<u64>().ok());
            if retry.is_some_and(|secs| secs >= 1) {
                self.too_fast.fetch_add(1, Relaxed);
            } else {
                self.too_fast_without_retry.fetch_add(1, Relaxed);
            }
        } else if answer.status == 429 && expected.capped.as_deref() == Some(error) {
            self.capped.fetch_add(1, Relaxed);
        } else {
            self.other(format!("{} {error:?}", answer.status));
        }
    }

    /// How the upgraded sockets the server closed or cut ended.
    pub fn drop_reasons(&self) -> BTreeMap<String, u64> {
        self.drop_reasons
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The answers that were neither a success nor a refusal SPEC names.
    pub fn others(&self) -> BTreeMap<String, u64> {
        self.others.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// What a knocking attack sends.
#[derive(Debug, Clone)]
pub struct Knocks {
    /// The server under test.
    pub server: SocketAddr,
    /// The addresses it knocks from, in turn.
    pub sources: Vec<IpAddr>,
    /// The path (and query) of each request.
    pub path: String,
    /// WebSocket upgrades (held when they open); otherwise `GET`s on
    /// connections kept alive.
    pub upgrade: bool,
    /// Requests in flight at once.
    pub in_flight: usize,
    /// Requests sent as fast as they are answered; `u64::MAX`: until the stop.
    pub wave: u64,
    /// After the wave, requests a second until the stop; `None`: none.
    pub then_per_sec: Option<f64>,
    /// What the server must answer.
    pub expected: Expected,
}

/// A header that claims another client, which a server that trusts no
/// loopback peer ignores.
fn forged_header(rng: &mut Rng) -> String {
    let n = rng.next_u64();
    format!(
        "X-Forwarded-For: 198.51.{}.{}\r\n",
        (n >> 8) as u8,
        n as u8 | 1
    )
}

/// Starts `knocks` on `pool`; it counts into `answers` until `stop` is set.
pub fn start_knocks(
    pool: &mut ClientPool,
    knocks: Knocks,
    answers: &Arc<Answers>,
    stop: &Arc<AtomicBool>,
) {
    let (answers, stop) = (Arc::clone(answers), Arc::clone(stop));
    answers.running.fetch_add(knocks.in_flight as u64, Relaxed);
    pool.spawn_task(move || async move {
        let shared = Rc::new(KnockState {
            knocks,
            next: Cell::new(0),
            paced_from: Cell::new(None),
        });
        for worker in 0..shared.knocks.in_flight {
            let (shared, answers, stop) =
                (Rc::clone(&shared), Arc::clone(&answers), Arc::clone(&stop));
            actix_web::rt::spawn(async move {
                let rng = Rng::new(worker as u64 ^ now_us());
                if shared.knocks.upgrade {
                    upgrade_worker(&shared, &answers, &stop, rng).await;
                } else {
                    get_worker(&shared, &answers, &stop, rng).await;
                }
                answers.running.fetch_sub(1, Relaxed);
            });
        }
    });
}

/// What the workers of one knocking attack share (all on one thread).
struct KnockState {
    knocks: Knocks,
    /// The number of the next request.
    next: Cell<u64>,
    /// When the paced requests after the wave began.
    paced_from: Cell<Option<Instant>>,
}

impl KnockState {
    /// Waits for the next request's turn; its number, or `None` once the
    /// attack is over (stopped, or its wave done with no pace after it).
    async fn turn(&self, stop: &AtomicBool) -> Option<u64> {
        if stop.load(Relaxed) {
            return None;
        }
        let n = self.next.get();
        self.next.set(n + 1);
        if n < self.knocks.wave {
            return Some(n);
        }
        let rate = self.knocks.then_per_sec?;
        let from = match self.paced_from.get() {
            Some(from) => from,
            None => {
                let now = Instant::now();
                self.paced_from.set(Some(now));
                now
            }
        };
        let due = from + Duration::from_secs_f64((n - self.knocks.wave) as f64 / rate);
        while Instant::now() < due {
            if stop.load(Relaxed) {
                return None;
            }
            sleep(
                due.saturating_duration_since(Instant::now())
                    .min(STOP_CHECK),
            )
            .await;
        }
        (!stop.load(Relaxed)).then_some(n)
    }
}

async fn upgrade_worker(
    state: &KnockState,
    answers: &Arc<Answers>,
    stop: &Arc<AtomicBool>,
    mut rng: Rng,
) {
    let knocks = &state.knocks;
    while let Some(n) = state.turn(stop).await {
        let source = knocks.sources[n as usize % knocks.sources.len()];
        answers.attempts.fetch_add(1, Relaxed);
        let forged = forged_header(&mut rng);
        match http::upgrade(knocks.server, source, &knocks.path, &forged, &mut rng).await {
            Ok(Upgrade::Open(stream, leftover)) => {
                answers.successes.fetch_add(1, Relaxed);
                answers.held.fetch_add(1, Relaxed);
                let (answers, stop) = (Arc::clone(answers), Arc::clone(stop));
                let mask = rng.mask();
                actix_web::rt::spawn(async move {
                    if let Err(why) = hold(&stream, &leftover, mask, &stop).await {
                        answers.held.fetch_sub(1, Relaxed);
                        answers.dropped.fetch_add(1, Relaxed);
                        if let Ok(mut reasons) = answers.drop_reasons.lock() {
                            *reasons.entry(why).or_default() += 1;
                        }
                    }
                });
            }
            Ok(Upgrade::Refused(answer)) => answers.sort(&answer, &knocks.expected),
            Err(e) => answers.other(e),
        }
    }
}

async fn get_worker(state: &KnockState, answers: &Answers, stop: &AtomicBool, mut rng: Rng) {
    let knocks = &state.knocks;
    let mut connection: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(1024);
    while let Some(n) = state.turn(stop).await {
        let source = knocks.sources[n as usize % knocks.sources.len()];
        let stream = match connection.take() {
            Some(stream) => stream,
            None => match http::connect(knocks.server, source).await {
                Ok(stream) => stream,
                Err(e) => {
                    answers.other(format!("connect: {e}"));
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        answers.attempts.fetch_add(1, Relaxed);
        let forged = forged_header(&mut rng);
        match http::get(&stream, &mut buf, knocks.server, &knocks.path, &forged).await {
            Ok(answer) => {
                answers.sort(&answer, &knocks.expected);
                if answer.keep_alive {
                    connection = Some(stream);
                }
            }
            Err(e) => answers.other(e),
        }
    }
}

/// Holds an upgraded socket open until `stop`, reading what comes and
/// answering pings; how it ended if the server closed or cut it first.
async fn hold(
    stream: &TcpStream,
    leftover: &[u8],
    mask: [u8; 4],
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut reader = FrameReader::new(4096, leftover);
    let mut pongs = Vec::new();
    while !stop.load(Relaxed) {
        let mut closed = None;
        let read = reader.read(stream, |opcode, payload| match opcode {
            ws::OP_PING => ws::encode_frame(&mut pongs, ws::OP_PONG, payload, mask),
            ws::OP_CLOSE => closed = Some(ws::close_code(payload).unwrap_or(1005)),
            _ => {}
        });
        match timeout(STOP_CHECK, read).await {
            Err(_) => {}
            Ok(Ok(ReadOutcome::Frames)) => {
                if let Some(code) = closed {
                    return Err(format!("closed with {code}"));
                }
            }
            Ok(Ok(ReadOutcome::Eof)) => return Err("cut".to_owned()),
            Ok(Err(e)) => return Err(format!("failed: {e}")),
        }
        if !pongs.is_empty() {
            let until = Instant::now() + Duration::from_secs(1);
            let written = ws::write_until(stream, &pongs, until).await;
            pongs.clear();
            if let Some(e) = written.error {
                return Err(format!("a pong failed: {e}"));
            }
        }
    }
    Ok(())
}

/// What a flooding sender does.
#[derive(Debug, Clone)]
pub struct Flood {
    /// The server under test.
    pub server: SocketAddr,
    /// The address it floods from.
    pub source: IpAddr,
    /// Its sender socket's path, with the token.
    pub sender_path: String,
    /// The path of the viewer that counts what its stream relays.
    pub witness_path: String,
    /// The size of each event: the frame limit.
    pub frame_bytes: usize,
}

/// What a flood did, counted as it goes.
#[derive(Default)]
pub struct FloodTally {
    /// Events written whole.
    pub sent: AtomicU64,
    /// `rate limit exceeded` error frames to the sender.
    pub refused: AtomicU64,
    /// Other frames to the sender: against SPEC.
    pub other_frames: AtomicU64,
    /// The first of those.
    pub first_other: Mutex<Option<String>>,
    /// Events relayed to the witness.
    pub relayed: AtomicU64,
    /// When the last of them arrived, µs since the epoch.
    pub last_relay_us: AtomicU64,
    /// When the first and the last write went out, µs since the epoch.
    pub first_write_us: AtomicU64,
    /// When the last write went out, µs since the epoch.
    pub last_write_us: AtomicU64,
    /// Why a socket ended or failed before the stop: against SPEC.
    pub failures: Mutex<Vec<String>>,
    /// The flood stopped and its answers have come (or stopped coming).
    pub done: AtomicBool,
}

impl FloodTally {
    fn failed(&self, why: String) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.push(why);
        }
    }

    /// Why sockets ended or failed before the stop.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// The first frame to the sender that was not `rate limit exceeded`.
    pub fn first_other(&self) -> Option<String> {
        self.first_other.lock().ok().and_then(|f| f.clone())
    }

    /// Seconds from the first write to the last.
    pub fn writing_secs(&self) -> f64 {
        let (first, last) = (
            self.first_write_us.load(Relaxed),
            self.last_write_us.load(Relaxed),
        );
        last.saturating_sub(first) as f64 / 1e6
    }

    /// Seconds from the first write to the last relay: the server accepted
    /// every relayed event within them.
    pub fn accepting_secs(&self) -> f64 {
        let first = self.first_write_us.load(Relaxed);
        self.last_relay_us.load(Relaxed).saturating_sub(first) as f64 / 1e6
    }
}

/// Writes into `text` the `seq`-th flood event: a valid move of exactly
/// `bytes` bytes, padded in its `binaryState`. `None` if `bytes` is too
/// small for one.
pub fn max_event(text: &mut String, seq: u64, bytes: usize) -> Option<()> {
    text.clear();
    let _ = write!(
        text,
        r#"{{"event":"move","data":{{"latestMove":{{"type":"move","family":"R","amount":1,"seq":{seq}}},"timeStamp":{},"binaryState":""#,
        now_us()
    );
    const END: &str = r#""}}"#;
    let pad = bytes.checked_sub(text.len() + END.len())?;
    text.extend(std::iter::repeat_n('A', pad));
    text.push_str(END);
    Some(())
}

/// Starts `flood` on `pool`; it counts into `tally` until `stop` is set,
/// then waits for its answers and sets `tally.done`.
pub fn start_flood(
    pool: &mut ClientPool,
    flood: Flood,
    tally: &Arc<FloodTally>,
    stop: &Arc<AtomicBool>,
) {
    let (tally, stop) = (Arc::clone(tally), Arc::clone(stop));
    pool.spawn_task(move || async move {
        run_flood(&flood, &tally, &stop).await;
        tally.done.store(true, Relaxed);
    });
}

async fn run_flood(flood: &Flood, tally: &Arc<FloodTally>, stop: &Arc<AtomicBool>) {
    let mut rng = Rng::new(now_us());
    let open = |path: String, what: &'static str, mut rng: Rng| async move {
        ws::connect(flood.server, flood.source, &path, &mut rng)
            .await
            .map_err(|e| format!("the {what} socket: {e}"))
    };
    let witness = match open(
        flood.witness_path.clone(),
        "witness",
        Rng::new(rng.next_u64()),
    )
    .await
    {
        Ok(opened) => opened,
        Err(e) => return tally.failed(e),
    };
    let (sender, leftover) = match open(
        flood.sender_path.clone(),
        "flooding sender",
        Rng::new(rng.next_u64()),
    )
    .await
    {
        Ok(opened) => opened,
        Err(e) => return tally.failed(e),
    };
    let sender = Rc::new(sender);
    // The readers go on after the stop until the answers have come.
    let quit = Rc::new(Cell::new(false));
    let mask = rng.mask();
    let sender_reader = actix_web::rt::spawn(read_flood_socket(
        Rc::clone(&sender),
        leftover,
        mask,
        Side::Sender,
        Arc::clone(tally),
        Rc::clone(&quit),
    ));
    let (witness, witness_leftover) = witness;
    let witness_reader = actix_web::rt::spawn(read_flood_socket(
        Rc::new(witness),
        witness_leftover,
        rng.mask(),
        Side::Witness,
        Arc::clone(tally),
        Rc::clone(&quit),
    ));

    // One batch of distinct events, encoded once and written again and
    // again: the generator spends its time writing, not encoding.
    let mut text = String::with_capacity(flood.frame_bytes);
    let mut batch = Vec::with_capacity(FLOOD_BATCH * (flood.frame_bytes + 16));
    let mut ends = Vec::with_capacity(FLOOD_BATCH);
    for seq in 0..FLOOD_BATCH as u64 {
        if max_event(&mut text, seq, flood.frame_bytes).is_none() {
            return tally.failed(format!("no event fits in {} bytes", flood.frame_bytes));
        }
        ws::encode_frame(&mut batch, ws::OP_TEXT, text.as_bytes(), rng.mask());
        ends.push(batch.len());
    }
    tally.first_write_us.store(now_us(), Relaxed);
    'flood: while !stop.load(Relaxed) {
        let before = tally.sent.load(Relaxed);
        let mut done = 0;
        while done < batch.len() {
            // Bounded, so that a server that stops reading does not hide the stop.
            let written =
                ws::write_until(&sender, &batch[done..], Instant::now() + STOP_CHECK).await;
            done += written.bytes;
            let whole = ends.iter().filter(|&&end| end <= done).count() as u64;
            tally.sent.store(before + whole, Relaxed);
            tally.last_write_us.store(now_us(), Relaxed);
            if let Some(e) = written.error {
                tally.failed(format!("a flood write failed: {e}"));
                break 'flood;
            }
            if stop.load(Relaxed) {
                // A frame cut short is never answered; the socket goes at the end.
                break 'flood;
            }
        }
    }
    let settle_until = Instant::now() + FLOOD_SETTLE;
    let mut last = (Instant::now(), 0u64);
    while Instant::now() < settle_until {
        let answered = tally.refused.load(Relaxed) + tally.relayed.load(Relaxed);
        if answered >= tally.sent.load(Relaxed) {
            break;
        }
        if answered != last.1 {
            last = (Instant::now(), answered);
        } else if last.0.elapsed() > FLOOD_QUIET {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    quit.set(true);
    let _ = sender_reader.await;
    let _ = witness_reader.await;
}

/// Which of a flood's two sockets a reader reads.
#[derive(Clone, Copy)]
enum Side {
    Sender,
    Witness,
}

/// Counts what comes on one of a flood's sockets until `quit`.
async fn read_flood_socket(
    stream: Rc<TcpStream>,
    leftover: Vec<u8>,
    mask: [u8; 4],
    side: Side,
    tally: Arc<FloodTally>,
    quit: Rc<Cell<bool>>,
) {
    let mut reader = FrameReader::new(64 * 1024, &leftover);
    let mut pongs = Vec::new();
    while !quit.get() {
        let mut closed = None;
        let read = reader.read(&stream, |opcode, payload| match (opcode, side) {
            (ws::OP_TEXT, Side::Witness) => {
                tally.relayed.fetch_add(1, Relaxed);
                tally.last_relay_us.store(now_us(), Relaxed);
            }
            (ws::OP_TEXT, Side::Sender) => {
                if ws::find(payload, b"\"rate limit exceeded\"").is_some() {
                    tally.refused.fetch_add(1, Relaxed);
                } else {
                    tally.other_frames.fetch_add(1, Relaxed);
                    if let Ok(mut first) = tally.first_other.lock() {
                        first.get_or_insert_with(|| {
                            String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned()
                        });
                    }
                }
            }
            // The sender's frames keep it heard; only the witness must pong.
            (ws::OP_PING, Side::Witness) => {
                ws::encode_frame(&mut pongs, ws::OP_PONG, payload, mask)
            }
            (ws::OP_CLOSE, _) => closed = Some(ws::close_code(payload).unwrap_or(1005)),
            _ => {}
        });
        let what = match side {
            Side::Sender => "the flooding sender",
            Side::Witness => "the flood's witness",
        };
        match timeout(STOP_CHECK, read).await {
            Err(_) => {}
            Ok(Ok(ReadOutcome::Frames)) => {
                if let Some(code) = closed {
                    return tally.failed(format!("the server closed {what} with {code}"));
                }
            }
            Ok(Ok(ReadOutcome::Eof)) => return tally.failed(format!("the server cut {what}")),
            Ok(Err(e)) => return tally.failed(format!("reading {what}: {e}")),
        }
        if !pongs.is_empty() {
            // Only the witness pongs, and nothing else writes to it.
            let written =
                ws::write_until(&stream, &pongs, Instant::now() + Duration::from_secs(1)).await;
            pongs.clear();
            if written.error.is_some() {
                return tally.failed("the flood's witness could not answer a ping".to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_events_are_valid_and_exactly_the_size_asked() {
        let mut text = String::new();
        for (seq, bytes) in [(0, 8192), (123_456_789, 8192), (7, 200)] {
            max_event(&mut text, seq, bytes).unwrap();
            assert_eq!(text.len(), bytes);
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["event"], "move");
            assert!(value["data"]["binaryState"].is_string());
        }
        assert!(max_event(&mut text, 0, 50).is_none());
    }
}
