//! What a stream sends one of its sockets, and the queue it goes through.
//!
//! A stream relays each event to every socket it has. The event is encoded
//! once, as the whole WebSocket frame a server sends ([`Frame`]), and every
//! socket's queue holds a reference to those same bytes: relaying costs a
//! socket one push onto its [`Outbox`], and the socket's session writes the
//! bytes as they are.
//!
//! The queue is bounded for live events: a socket whose client stopped
//! reading fills it, and [`Outbox::try_send`] says so, which is how its
//! stream knows to drop it. What must get through whatever the queue holds
//! (the replay a joining viewer starts from, a close) is pushed past the
//! bound with [`Outbox::push`], a few items at most per socket. The session
//! is woken only when the queue was empty: a session drains its queue
//! whenever it runs, so a wake is pending already otherwise.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use actix::Message;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::close::Close;

/// A WebSocket text frame as a server sends it, header and all: encoded
/// once, shared by every socket it goes to.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
    /// Where the text starts, past the header.
    header: u8,
}

impl Frame {
    /// The frame carrying `text`: FIN set, opcode text, unmasked (RFC 6455 §5.2).
    pub fn text(text: &str) -> Frame {
        let len = text.len();
        let mut bytes = Vec::with_capacity(len + 10);
        bytes.push(0x81);
        if len < 126 {
            bytes.push(len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            bytes.push(126);
            bytes.extend_from_slice(&len.to_be_bytes());
        } else {
            bytes.push(127);
            bytes.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let header = bytes.len() as u8;
        bytes.extend_from_slice(text.as_bytes());
        Frame {
            bytes: Bytes::from(bytes),
            header,
        }
    }

    /// The whole frame, to write to the socket as it is.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The whole frame, to write to the socket as it is.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The text the frame carries.
    pub fn as_str(&self) -> &str {
        let text = &self.bytes[usize::from(self.header)..];
        // SAFETY: the bytes past the header were copied from a `&str` in
        // `Frame::text`, and `Bytes` never changes them.
        unsafe { std::str::from_utf8_unchecked(text) }
    }
}

impl Deref for Frame {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a stream tells one of its sockets.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Outbound {
    /// An event to write to the socket.
    Event(Frame),
    /// Events to write in order: part of a recording a resuming viewer
    /// catches up on. Sent one batch at a time, each once the socket took
    /// the last ([`Outbox::send_batch`]), so a viewer catching up holds at
    /// most one in memory.
    Batch(Vec<Frame>),
    /// Close the socket with this code and reason.
    Close(Close),
}

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its capacity of items: the client is not reading.
    Full,
    /// The socket's session is gone.
    Gone,
}

/// The sending half of a socket's queue, held by its stream.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Mutex<Queue>>,
}

/// The receiving half, a stream of [`Outbound`] for the socket's session.
/// Dropping it tells the [`Outbox`] the socket is gone, and frees what
/// was queued.
pub struct Outgoing {
    shared: Arc<Mutex<Queue>>,
}

struct Queue {
    items: VecDeque<(Outbound, Option<oneshot::Sender<()>>)>,
    /// Live events the queue holds at most.
    capacity: usize,
    /// The session's waker, left while the queue was empty.
    waker: Option<Waker>,
    /// Set once the [`Outgoing`] is dropped.
    gone: bool,
}

/// A socket's queue holding at most `capacity` live events: its two halves.
pub fn channel(capacity: usize) -> (Outbox, Outgoing) {
    let shared = Arc::new(Mutex::new(Queue {
        items: VecDeque::new(),
        capacity,
        waker: None,
        gone: false,
    }));
    (
        Outbox {
            shared: Arc::clone(&shared),
        },
        Outgoing { shared },
    )
}

/// Locks a queue; one poisoned by a panic elsewhere is still consistent,
/// as every change to it is a single push or pop.
fn lock(shared: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Outbox {
    /// Queues a live event, unless the queue is full or the socket gone.
    pub fn try_send(&self, event: Frame) -> Result<(), Refused> {
        let mut queue = lock(&self.shared);
        if queue.gone {
            return Err(Refused::Gone);
        }
        if queue.items.len() >= queue.capacity {
            return Err(Refused::Full);
        }
        queue.items.push_back((Outbound::Event(event), None));
        wake(queue);
        Ok(())
    }

    /// Queues `item` whatever the queue holds: for the few items a socket
    /// must get (a replay, a close). Dropped if the socket is gone.
    pub fn push(&self, item: Outbound) {
        let mut queue = lock(&self.shared);
        if queue.gone {
            return;
        }
        queue.items.push_back((item, None));
        wake(queue);
    }

    /// Queues a batch whatever the queue holds; the future resolves once
    /// the session took it, or fails with [`Refused::Gone`] if it never will.
    pub fn send_batch(
        &self,
        frames: Vec<Frame>,
    ) -> impl std::future::Future<Output = Result<(), Refused>> + use<> {
        let (taken, told) = oneshot::channel();
        {
            let mut queue = lock(&self.shared);
            if !queue.gone {
                queue
                    .items
                    .push_back((Outbound::Batch(frames), Some(taken)));
                wake(queue);
            }
        }
        async move { told.await.map_err(|_| Refused::Gone) }
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        lock(&self.shared).items.len()
    }

    /// Whether nothing is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Wakes the session if it waits on the queue, after the lock is let go.
fn wake(mut queue: MutexGuard<'_, Queue>) {
    let waker = queue.waker.take();
    drop(queue);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl futures_util::Stream for Outgoing {
    type Item = Outbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        let mut queue = lock(&self.shared);
        match queue.items.pop_front() {
            Some((item, taken)) => {
                drop(queue);
                if let Some(taken) = taken {
                    let _ = taken.send(());
                }
                Poll::Ready(Some(item))
            }
            // The queue never ends: a stream that let its socket go drops
            // its `Outbox`, and the session goes on until its client leaves.
            None => {
                match &mut queue.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    waker => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let mut queue = lock(&self.shared);
        queue.gone = true;
        queue.waker = None;
        let items = std::mem::take(&mut queue.items);
        drop(queue);
        // Batches waiting are told they will not be taken as they drop.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use futures_util::{Stream, StreamExt};

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(outgoing: &mut Outgoing, waker: &Waker) -> Poll<Option<Outbound>> {
        Pin::new(outgoing).poll_next(&mut Context::from_waker(waker))
    }

    #[test]
    fn frames_carry_their_text_after_a_header_of_its_length() {
        for len in [0, 1, 125, 126, 65_535, 65_536] {
            let text = "x".repeat(len);
            let frame = Frame::text(&text);
            let header = match len {
                0..=125 => vec![0x81, len as u8],
                126..=65_535 => [vec![0x81, 126], (len as u16).to_be_bytes().to_vec()].concat(),
                _ => [vec![0x81, 127], (len as u64).to_be_bytes().to_vec()].concat(),
            };
            assert_eq!(&frame.bytes()[..header.len()], &header[..], "length {len}");
            assert_eq!(frame.bytes().len(), header.len() + len, "length {len}");
            assert_eq!(frame.as_str(), text, "length {len}");
        }
    }

    #[test]
    fn live_events_stop_at_the_capacity_and_pushes_do_not() {
        let (outbox, mut outgoing) = channel(2);
        outbox.try_send(Frame::text("1")).unwrap();
        outbox.try_send(Frame::text("2")).unwrap();
        assert_eq!(outbox.try_send(Frame::text("3")), Err(Refused::Full));
        outbox.push(Outbound::Close(crate::close::TOO_SLOW));
        assert_eq!(outbox.len(), 3);
        let waker = Waker::noop();
        let mut got = Vec::new();
        while let Poll::Ready(Some(item)) = poll(&mut outgoing, waker) {
            got.push(item);
        }
        assert_eq!(
            got,
            vec![
                Outbound::Event(Frame::text("1")),
                Outbound::Event(Frame::text("2")),
                Outbound::Close(crate::close::TOO_SLOW),
            ]
        );
        outbox.try_send(Frame::text("4")).unwrap();
    }

    #[test]
    fn the_session_is_woken_once_per_empty_queue() {
        let (outbox, mut outgoing) = channel(8);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        assert!(poll(&mut outgoing, &waker).is_pending());
        outbox.try_send(Frame::text("1")).unwrap();
        outbox.try_send(Frame::text("2")).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut outgoing, &waker).is_ready());
        assert!(poll(&mut outgoing, &waker).is_ready());
        assert!(poll(&mut outgoing, &waker).is_pending());
        outbox.push(Outbound::Event(Frame::text("3")));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[actix::test]
    async fn a_batch_is_answered_once_taken_and_refused_once_gone() {
        let (outbox, mut outgoing) = channel(1);
        let sent = outbox.send_batch(vec![Frame::text("a")]);
        assert_eq!(
            outgoing.next().await,
            Some(Outbound::Batch(vec![Frame::text("a")]))
        );
        assert_eq!(sent.await, Ok(()));
        let unsent = outbox.send_batch(vec![Frame::text("b")]);
        drop(outgoing);
        assert_eq!(unsent.await, Err(Refused::Gone));
        assert_eq!(outbox.try_send(Frame::text("c")), Err(Refused::Gone));
        assert_eq!(
            outbox.send_batch(vec![Frame::text("d")]).await,
            Err(Refused::Gone)
        );
    }
}
