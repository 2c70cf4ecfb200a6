//! Viewer sockets: opened a batch at a time, then read until the run ends;
//! each thread's viewers count what they saw in one record.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix_web::rt::net::TcpStream;
use actix_web::rt::time::{sleep_until, Instant};
use futures_util::future::{join_all, select, Either};

use super::{Shared, SocketSpec};
use crate::measure::{now_us, Histogram};
use crate::ws::{self, FrameReader, ReadOutcome, Rng};

/// Handshakes one client thread has in flight at once, so the server's accept
/// backlog is not overrun.
const CONNECTS_IN_FLIGHT: usize = 64;

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

/// Takes the viewer counters of the client thread this runs on, leaving zeros.
pub(super) fn take_thread_stats() -> ViewerStats {
    THREAD_STATS.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

/// Opens `share`, a batch at a time, and starts a task reading each socket
/// that opened until `deadline`; counts the ones that did not.
pub(super) async fn open_share(
    share: Vec<SocketSpec>,
    buffer: usize,
    shared: Arc<Shared>,
    deadline: std::time::Instant,
) {
    let stats = THREAD_STATS.with(Rc::clone);
    let mut rng = Rng::new(share.len() as u64 ^ now_us());
    for batch in share.chunks(CONNECTS_IN_FLIGHT) {
        let seeds: Vec<u64> = batch.iter().map(|_| rng.next_u64()).collect();
        let opened = join_all(batch.iter().zip(seeds).map(|(spec, seed)| async move {
            let mut rng = Rng::new(seed);
            (
                spec,
                ws::connect(spec.server, spec.source, &spec.path, &mut rng).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_after_their_key() {
        assert_eq!(number_after(br#"{"seq": 42,"x":1}"#, b"\"seq\":"), Some(42));
        assert_eq!(number_after(br#"{"seq":"x"}"#, b"\"seq\":"), None);
        assert_eq!(number_after(br#"{"other":1}"#, b"\"seq\":"), None);
    }
}
