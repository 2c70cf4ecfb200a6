//! Sender sockets: the start marker, then events paced or flat out, with
//! a reader beside that answers pings and counts error frames.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use actix_web::rt::time::{sleep, sleep_until, Instant};

use super::{Pace, Shared, SocketSpec};
use crate::measure::{epoch, now_us};
use crate::ws::{self, FrameReader, ReadOutcome, Rng};

/// A send more than this far behind its schedule counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(5);
/// Frames a flooding sender writes per system call.
const FLOOD_BATCH: usize = 32;
/// How long past its end a sender's last write may block.
const SEND_GRACE: Duration = Duration::from_millis(100);
/// How long a sender waits to be told to start before it gives up.
const START_WAIT: Duration = Duration::from_secs(120);

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

/// Writes the `seq`-th event of a sender into `text`: every third a move, the
/// rest orientations, each 150 to 250 bytes like a smart cube's.
pub fn write_event(text: &mut String, seq: u64, sent_us: u64, binary_state: &str) {
    const FAMILIES: [&str; 6] = ["R", "U", "F", "L", "D", "B"];
    const AMOUNTS: [i32; 3] = [1, -1, 2];
    text.clear();
    if seq.is_multiple_of(3) {
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
pub(super) async fn run_sender(
    spec: &SocketSpec,
    pace: Pace,
    secs: f64,
    shared: &Shared,
) -> SenderReport {
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

/// A sender's buffers, reused for every write.
struct Batch {
    /// The event being written.
    text: String,
    /// The frames of one write.
    bytes: Vec<u8>,
    /// Where each event's frame ends in `bytes`, to count a batch cut short at the end.
    frame_ends: Vec<usize>,
}

impl Batch {
    /// Queued control frames, then `count` events from `*seq` on (advancing it).
    fn fill(
        &mut self,
        control: &RefCell<Vec<u8>>,
        seq: &mut u64,
        count: u64,
        state: &str,
        rng: &mut Rng,
    ) {
        self.bytes.clear();
        self.frame_ends.clear();
        self.bytes.append(&mut control.borrow_mut());
        for _ in 0..count {
            write_event(&mut self.text, *seq, now_us(), state);
            ws::encode_frame(
                &mut self.bytes,
                ws::OP_TEXT,
                self.text.as_bytes(),
                rng.mask(),
            );
            self.frame_ends.push(self.bytes.len());
            *seq += 1;
        }
    }
}

async fn send_events(
    stream: &TcpStream,
    plan: SendPlan<'_>,
    rng: &mut Rng,
    report: &mut SenderReport,
) {
    let Some(start) = wait_for_go(plan.shared, report).await else {
        return;
    };
    sleep_until(Instant::from_std(start)).await;
    let end = start + Duration::from_secs_f64(plan.secs);
    let state = binary_state(rng);
    let mut batch = Batch {
        text: String::with_capacity(256),
        bytes: Vec::with_capacity(FLOOD_BATCH * 256),
        frame_ends: Vec::with_capacity(FLOOD_BATCH),
    };
    let mut seq: u64 = 0;
    let (per_batch, planned) = match plan.pace {
        Pace::Rate(rate) => (1, (rate * plan.secs).floor() as u64),
        Pace::Flood { .. } => (FLOOD_BATCH as u64, u64::from(u32::MAX)),
    };
    if let Pace::Rate(_) = plan.pace {
        report.planned = planned;
    }
    while seq < planned {
        if !plan.wait_turn(start, end, seq, report).await || plan.shared.stop_sending.load(Relaxed)
        {
            break;
        }
        let first = seq;
        let count = per_batch.min(planned - seq);
        batch.fill(plan.control, &mut seq, count, &state, rng);
        // A server that stops reading must not hold the sender past the end.
        let written = ws::write_until(stream, &batch.bytes, end + SEND_GRACE).await;
        if !plan.count(&batch, first, written, report) {
            break;
        }
    }
}

/// The start time the conductor set, once it has; `None` (and a failure in
/// `report`) if it did not within [`START_WAIT`].
async fn wait_for_go(shared: &Shared, report: &mut SenderReport) -> Option<std::time::Instant> {
    let waited = std::time::Instant::now();
    let start_us = loop {
        let at = shared.start_at_us.load(Relaxed);
        if at != 0 {
            break at;
        }
        if waited.elapsed() > START_WAIT {
            report.failure = Some("never told to start".to_owned());
            return None;
        }
        sleep(Duration::from_millis(2)).await;
    };
    Some(epoch() + Duration::from_micros(start_us))
}

/// A random `binaryState` for a sender's moves, 64 characters like a real cube's.
fn binary_state(rng: &mut Rng) -> String {
    let mut state = String::with_capacity(64);
    let mut noise = [0u8; 48];
    for chunk in noise.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
    }
    ws::base64_into(&mut state, &noise);
    state
}

impl SendPlan<'_> {
    /// Waits until event `seq` may go: its time on a paced schedule (noting
    /// how late it is), or, flooding, until the viewers are less than the
    /// window behind. False once a flood's time is up.
    async fn wait_turn(
        &self,
        start: std::time::Instant,
        end: std::time::Instant,
        seq: u64,
        report: &mut SenderReport,
    ) -> bool {
        match self.pace {
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
                true
            }
            Pace::Flood { window } => {
                if std::time::Instant::now() >= end {
                    return false;
                }
                // Closed loop: wait while the average open viewer is `window` events behind.
                while window > 0 && in_flight(self.shared, self.index) >= window {
                    if std::time::Instant::now() >= end {
                        break;
                    }
                    sleep(Duration::from_millis(1)).await;
                }
                std::time::Instant::now() < end
            }
        }
    }

    /// Counts the events of `batch` (from `first` on) that `written` carried
    /// whole; false if the sender must stop: the write failed or, for a paced
    /// sender (noted as a failure), the server stopped reading.
    fn count(
        &self,
        batch: &Batch,
        first: u64,
        written: ws::Written,
        report: &mut SenderReport,
    ) -> bool {
        let whole = batch
            .frame_ends
            .iter()
            .filter(|e| **e <= written.bytes)
            .count() as u64;
        report.sent = first + whole;
        self.shared.sent[self.index].store(report.sent, Relaxed);
        if let Some(e) = written.error {
            report.failure = Some(format!("send failed after {} events: {e}", report.sent));
            return false;
        }
        if written.bytes < batch.bytes.len() {
            if let Pace::Rate(_) = self.pace {
                report.failure = Some(format!(
                    "the server stopped reading: send blocked after {} events",
                    report.sent
                ));
            }
            return false;
        }
        true
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
    use crate::load::viewer::number_after;

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
}
