//! Bounds how far a socket's incoming bytes may run ahead of its session.
//!
//! actix-web-actors' WebSocket decoder moves every byte the connection has
//! read into a buffer of its own, without limit, and hands the session one
//! frame at a time. A sender faster than its session would grow that buffer
//! without end. [`BoundedPayload`] sits between the connection and the
//! decoder and stops reading once `limit` bytes were handed over and not
//! yet processed; the session reports each frame it processed to
//! [`Inflow::consumed`], which lets reading go on. The connection then backs
//! up to the sender, as TCP does.
//!
//! The decoder also waits for a whole frame before it checks the frame's
//! size against the limit, so a frame announcing 10 MB would be buffered in
//! full before it is refused. [`BoundedPayload`] follows the frame headers
//! as the bytes pass and stops at the first header over the limit, so the
//! session can close the socket with 1009 at once.
//!
//! From then on it reads the client's bytes and drops them, frame by
//! frame, until the client's close frame has passed, and then ends: the
//! client's answer to the 1009 ends the session, and no unread data is left
//! behind to make the kernel reset the connection (which could cost the
//! client the close frame, or fail its write of the rest of the frame).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_http::ws::Item;
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use actix_web_actors::ws;
use futures_util::Stream;

/// The bytes handed to a socket's decoder and not yet processed.
pub struct Inflow {
    /// Reading pauses at this many outstanding bytes; more than two of the
    /// largest frames, so a whole frame is always there to decode.
    limit: usize,
    /// Bytes handed over minus bytes of frames processed.
    outstanding: Cell<usize>,
    /// The task to wake when reading may go on.
    waker: Cell<Option<Waker>>,
    /// The largest frame payload accepted.
    max_frame: u64,
    /// Set when a frame header announced more than `max_frame`.
    oversized: Cell<bool>,
}

impl Inflow {
    /// An inflow for frames of at most `max_frame_bytes` payload.
    pub fn new(max_frame_bytes: usize) -> Rc<Inflow> {
        Rc::new(Inflow {
            limit: max_frame_bytes.saturating_mul(2).saturating_add(64 * 1024),
            outstanding: Cell::new(0),
            waker: Cell::new(None),
            max_frame: max_frame_bytes as u64,
            oversized: Cell::new(false),
        })
    }

    /// Whether the client announced a frame over the limit (then the stream
    /// of frames ends with an error).
    pub fn oversized(&self) -> bool {
        self.oversized.get()
    }

    /// The session processed a frame with `payload` bytes of payload.
    pub fn consumed(&self, payload: usize) {
        let left = self
            .outstanding
            .get()
            .saturating_sub(client_frame_len(payload));
        self.outstanding.set(left);
        if left < self.limit {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }
}

/// The size on the wire of a client frame (always masked) with `payload` bytes.
pub fn client_frame_len(payload: usize) -> usize {
    let extended = match payload {
        0..=125 => 0,
        126..=65_535 => 2,
        _ => 8,
    };
    2 + extended + 4 + payload
}

/// The payload bytes of a frame as it came off the wire: what
/// [`client_frame_len`] turns back into the frame's size.
pub fn payload_len(message: &ws::Message) -> usize {
    match message {
        ws::Message::Text(text) => text.len(),
        ws::Message::Binary(bytes) | ws::Message::Ping(bytes) | ws::Message::Pong(bytes) => {
            bytes.len()
        }
        ws::Message::Continuation(
            Item::FirstText(bytes)
            | Item::FirstBinary(bytes)
            | Item::Continue(bytes)
            | Item::Last(bytes),
        ) => bytes.len(),
        ws::Message::Close(Some(reason)) => 2 + reason.description.as_ref().map_or(0, String::len),
        ws::Message::Close(None) | ws::Message::Nop => 0,
    }
}

/// The close frame's opcode (RFC 6455 §5.5.1).
const OPCODE_CLOSE: u8 = 0x8;

/// A frame header, as [`FrameScanner`] read it.
struct Header {
    /// The frame's opcode.
    opcode: u8,
    /// The frame's payload length.
    length: u64,
}

/// Follows frame boundaries in a byte stream by reading each header.
#[derive(Default)]
struct FrameScanner {
    /// The header being read (at most 14 bytes).
    header: [u8; 14],
    /// Header bytes read so far.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// Set while the current frame is a close frame.
    in_close: bool,
}

impl FrameScanner {
    /// Follows `bytes`; the payload length of the first header over `max`, if any.
    #[cfg(test)]
    fn scan(&mut self, mut bytes: &[u8], max: u64) -> Option<u64> {
        while let Some(header) = self.next_header(&mut bytes) {
            if header.length > max {
                return Some(header.length);
            }
        }
        None
    }

    /// Follows `bytes`; whether a whole close frame has passed.
    fn close_passed(&mut self, mut bytes: &[u8]) -> bool {
        loop {
            if self.in_close && self.remaining == 0 {
                return true;
            }
            match self.next_header(&mut bytes) {
                Some(header) => self.in_close = header.opcode == OPCODE_CLOSE,
                None if self.in_close && self.remaining == 0 => return true,
                None => return false,
            }
        }
    }

    /// Follows `bytes` up to the end of the next whole header, which it
    /// returns (and leaves `bytes` just after); `None` once `bytes` ran out
    /// first. Payloads are skipped.
    fn next_header(&mut self, bytes: &mut &[u8]) -> Option<Header> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.remaining -= skip as u64;
                *bytes = &bytes[skip..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            *bytes = &bytes[1..];
            if self.have < 2 {
                continue;
            }
            let short = self.header[1] & 0x7f;
            let extended = match short {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + extended + mask {
                continue;
            }
            let length = match short {
                126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                127 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&self.header[2..10]);
                    u64::from_be_bytes(n)
                }
                n => u64::from(n),
            };
            self.remaining = length;
            self.have = 0;
            return Some(Header {
                opcode: self.header[0] & 0x0f,
                length,
            });
        }
        None
    }
}

/// The connection's incoming bytes, paused while too many are unprocessed,
/// and cut at the first frame over the size limit.
pub struct BoundedPayload<S> {
    inner: S,
    inflow: Rc<Inflow>,
    scanner: FrameScanner,
    /// Set once the client's close frame passed after an oversized frame.
    answered: bool,
}

impl<S> BoundedPayload<S> {
    /// Wraps `inner`, accounted in `inflow`.
    pub fn new(inner: S, inflow: Rc<Inflow>) -> BoundedPayload<S> {
        BoundedPayload {
            inner,
            inflow,
            scanner: FrameScanner::default(),
            answered: false,
        }
    }
}

impl<S> BoundedPayload<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    /// After an oversized frame: reads and drops the client's bytes until its
    /// close frame has passed (or the connection ends), then ends.
    fn discard(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, PayloadError>>> {
        while !self.answered {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => self.answered = self.scanner.close_passed(&bytes),
                Poll::Ready(Some(Err(_)) | None) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(None)
    }
}

impl<S> Stream for BoundedPayload<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.inflow.oversized.get() {
            return self.discard(cx);
        }
        if self.inflow.outstanding.get() >= self.inflow.limit {
            self.inflow.waker.set(Some(cx.waker().clone()));
            return Poll::Pending;
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                let this = &mut *self;
                let mut rest = &bytes[..];
                while let Some(header) = this.scanner.next_header(&mut rest) {
                    if header.length > this.inflow.max_frame {
                        this.inflow.oversized.set(true);
                        // What follows the header in this chunk is dropped too,
                        // and may hold the client's close already.
                        this.answered = this.scanner.close_passed(rest);
                        return Poll::Ready(Some(Err(PayloadError::Overflow)));
                    }
                }
                let outstanding = &this.inflow.outstanding;
                outstanding.set(outstanding.get() + bytes.len());
                Poll::Ready(Some(Ok(bytes)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_follow_rfc_6455() {
        assert_eq!(client_frame_len(0), 6);
        assert_eq!(client_frame_len(125), 131);
        assert_eq!(client_frame_len(126), 134);
        assert_eq!(client_frame_len(65_535), 65_543);
        assert_eq!(client_frame_len(65_536), 65_550);
    }

    #[actix_web::test]
    async fn reading_pauses_at_the_limit_and_resumes_when_consumed() {
        use futures_util::StreamExt;
        // One masked frame of 400,000 bytes, in chunks of 40,000.
        let mut wire = vec![0x81u8, 0x80 | 127];
        wire.extend_from_slice(&400_000u64.to_be_bytes());
        wire.extend_from_slice(&[0, 0, 0, 0]);
        wire.resize(400_000, 0);
        let chunks: Vec<Result<Bytes, PayloadError>> = wire
            .chunks(40_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let inflow = Inflow::new(1 << 20);
        let mut payload = BoundedPayload::new(futures_util::stream::iter(chunks), inflow.clone());
        // Just under the limit (2 MiB + 64 KiB): one more chunk passes, then reading waits.
        inflow.outstanding.set(2 * (1 << 20) + 64 * 1024 - 1);
        assert!(payload.next().await.is_some());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut payload).poll_next(&mut cx).is_pending());
        inflow.consumed(1 << 20);
        assert!(Pin::new(&mut payload).poll_next(&mut cx).is_ready());
    }

    #[test]
    fn a_header_over_the_limit_is_caught_before_its_payload() {
        let mut scanner = FrameScanner::default();
        // Two small masked frames, then one announcing 10 MB.
        let mut wire = vec![0x81, 0x80 | 3, 1, 2, 3, 4, b'a', b'b', b'c'];
        wire.extend_from_slice(&[0x81, 0x80 | 126, 0x01, 0x00, 9, 9, 9, 9]);
        wire.extend_from_slice(&[7u8; 256]);
        assert_eq!(scanner.scan(&wire, 65_536), None);
        let mut big = vec![0x81, 0x80 | 127];
        big.extend_from_slice(&(10u64 << 20).to_be_bytes());
        // Split across chunks, as a network would.
        assert_eq!(scanner.scan(&big[..5], 65_536), None);
        assert_eq!(scanner.scan(&big[5..], 65_536), None);
        assert_eq!(scanner.scan(&[1, 2, 3, 4], 65_536), Some(10 << 20));
    }

    #[test]
    fn a_close_frame_is_found_past_a_dropped_frame() {
        let mut scanner = FrameScanner::default();
        let mut big = vec![0x81, 0x80 | 126, 0x10, 0x00, 1, 2, 3, 4];
        let mut rest = &big[..];
        let header = scanner.next_header(&mut rest).expect("the big header");
        assert_eq!(header.length, 0x1000);
        big.resize(8 + 0x1000, b'x');
        // The rest of the big frame, a ping, then a close split across chunks.
        assert!(!scanner.close_passed(&big[8..]));
        assert!(!scanner.close_passed(&[0x89, 0x80, 9, 9, 9, 9]));
        assert!(!scanner.close_passed(&[0x88, 0x80 | 2, 1]));
        assert!(!scanner.close_passed(&[2, 3, 4, 0x03]));
        assert!(scanner.close_passed(&[0xe8]));
        // An empty close counts as soon as its header is whole.
        let mut scanner = FrameScanner::default();
        assert!(scanner.close_passed(&[0x88, 0x80, 1, 2, 3, 4]));
    }
}
