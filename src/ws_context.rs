//! The context a WebSocket session actor runs in, and the response body it
//! is: frames in from the client's payload, frames out to the connection.
//!
//! It does what actix-web-actors' `WebsocketContext` does, with two things
//! more:
//!
//! - Besides messages to encode, it takes frames already encoded
//!   ([`Frame`]), which is how every relayed event comes. A stream encodes
//!   an event once for all of its sockets; here the frame's bytes go to the
//!   connection as they are. When the only thing to write is one such
//!   frame, its shared bytes are the chunk handed to actix-http, with no
//!   copy here; several waiting are written as one chunk, so one write.
//! - The socket's outbox, what its stream sends it ([`WsContext::relay_from`]),
//!   is read by the body itself, not by the actor: an event goes from the
//!   stream to the connection without the actor running. The actor runs
//!   when something of its own wakes it (the client's frames, its timers,
//!   its mailbox, its futures), and hears of a close the stream sends as an
//!   [`Outbound::Close`] message, in order after the events before it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use actix::dev::{
    AsyncContextParts, ContextFut, ContextParts, Envelope, Mailbox, OneshotSender, ToEnvelope,
};
use actix::fut::ActorFuture;
use actix::prelude::*;
use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame as WireFrame, Message, ProtocolError};
use actix_web::error::{Error, PayloadError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::task::AtomicWaker;
use futures_util::Stream;
use twizzle_actors::outbox::Outgoing;
use twizzle_actors::stream::{Frame, Outbound};

/// Bytes of relayed frames gathered into one chunk at most; past it the
/// chunk goes out, and the rest of the outbox is read for the next.
const RELAY_CHUNK: usize = 64 * 1024;

/// What waits to be written, in order.
enum Out {
    /// A frame encoded already.
    Frame(Bytes),
    /// A message for the codec to encode.
    Message(Message),
}

/// The context of a WebSocket session actor.
pub struct WsContext<A>
where
    A: Actor<Context = WsContext<A>>,
{
    parts: ContextParts<A>,
    out: VecDeque<Out>,
    /// Set once the actor closed its side: nothing is written after that.
    closed: bool,
    /// What the socket's stream sends it, once the session joined.
    outgoing: Option<Outgoing>,
}

impl<A> WsContext<A>
where
    A: Actor<Context = Self> + StreamHandler<Result<Message, ProtocolError>> + Handler<Outbound>,
{
    /// Starts `actor` on the client's `payload`; the returned stream is the
    /// response body, to be polled by actix-http on the connection's thread.
    pub fn create<S>(
        actor: A,
        payload: S,
        codec: Codec,
    ) -> impl Stream<Item = Result<Bytes, Error>> + 'static
    where
        S: Stream<Item = Result<Bytes, PayloadError>> + Unpin + 'static,
    {
        let mailbox = Mailbox::default();
        let mut ctx = WsContext {
            parts: ContextParts::new(mailbox.sender_producer()),
            out: VecDeque::new(),
            closed: false,
            outgoing: None,
        };
        ctx.add_stream(Incoming::new(payload, codec.clone()));
        // Woken to begin with: the actor starts on the first poll.
        let wake = Arc::new(TaskWake {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Body {
            fut: ContextFut::new(ctx, actor, mailbox),
            codec,
            buf: BytesMut::new(),
            actor_waker: Waker::from(Arc::clone(&wake)),
            actor_wake: wake,
        }
    }
}

impl<A> WsContext<A>
where
    A: Actor<Context = Self>,
{
    /// Writes what the socket's stream sends it from now on: the body reads
    /// `outgoing` itself, writes its events and batches in order, and hands
    /// the actor a close as an [`Outbound::Close`] message.
    pub fn relay_from(&mut self, outgoing: Outgoing) {
        self.outgoing = Some(outgoing);
    }

    /// Writes a frame encoded already, shared with the stream's other sockets.
    pub fn frame(&mut self, frame: Frame) {
        if !self.closed {
            self.out.push_back(Out::Frame(frame.into_bytes()));
        }
    }

    /// Writes a text frame.
    pub fn text(&mut self, text: impl Into<ByteString>) {
        self.write(Message::Text(text.into()));
    }

    /// Writes a ping.
    pub fn ping(&mut self, payload: &[u8]) {
        self.write(Message::Ping(Bytes::copy_from_slice(payload)));
    }

    /// Writes a pong.
    pub fn pong(&mut self, payload: &[u8]) {
        self.write(Message::Pong(Bytes::copy_from_slice(payload)));
    }

    /// Writes the close frame; nothing is written after it. The body ends
    /// when the actor stops, so the session can wait for the client's answer.
    pub fn close(&mut self, reason: Option<actix_http::ws::CloseReason>) {
        self.write(Message::Close(reason));
        self.closed = true;
    }

    fn write(&mut self, message: Message) {
        if !self.closed {
            self.out.push_back(Out::Message(message));
        }
    }
}

impl<A> ActorContext for WsContext<A>
where
    A: Actor<Context = Self>,
{
    fn stop(&mut self) {
        self.parts.stop();
    }

    fn terminate(&mut self) {
        self.parts.terminate();
    }

    fn state(&self) -> ActorState {
        self.parts.state()
    }
}

impl<A> AsyncContext<A> for WsContext<A>
where
    A: Actor<Context = Self>,
{
    fn spawn<F>(&mut self, fut: F) -> SpawnHandle
    where
        F: ActorFuture<A, Output = ()> + 'static,
    {
        self.parts.spawn(fut)
    }

    fn wait<F>(&mut self, fut: F)
    where
        F: ActorFuture<A, Output = ()> + 'static,
    {
        self.parts.wait(fut);
    }

    fn waiting(&self) -> bool {
        self.parts.waiting()
            || matches!(
                self.parts.state(),
                ActorState::Stopping | ActorState::Stopped
            )
    }

    fn cancel_future(&mut self, handle: SpawnHandle) -> bool {
        self.parts.cancel_future(handle)
    }

    fn address(&self) -> Addr<A> {
        self.parts.address()
    }
}

impl<A> AsyncContextParts<A> for WsContext<A>
where
    A: Actor<Context = Self>,
{
    fn parts(&mut self) -> &mut ContextParts<A> {
        &mut self.parts
    }
}

impl<A, M> ToEnvelope<A, M> for WsContext<A>
where
    A: Actor<Context = WsContext<A>> + Handler<M>,
    M: actix::Message + Send + 'static,
    M::Result: Send,
{
    fn pack(msg: M, tx: Option<OneshotSender<M::Result>>) -> Envelope<A> {
        Envelope::new(msg, tx)
    }
}

/// The response body: runs the actor when it was woken, relays what the
/// stream sent, then hands actix-http what was written.
struct Body<A>
where
    A: Actor<Context = WsContext<A>>,
{
    fut: ContextFut<A, WsContext<A>>,
    codec: Codec,
    /// Frames gathered for one chunk, each chunk in an allocation of its
    /// own: one kept for the next would hold a burst's size per socket.
    buf: BytesMut,
    /// What the actor's own wakers wake: it notes that, then wakes the task.
    actor_wake: Arc<TaskWake>,
    /// `actor_wake` as a waker, made once.
    actor_waker: Waker,
}

/// A waker between a part of the connection's work and its task: notes
/// that the part has something to do, then wakes the task, which does that
/// part only when it was woken for it.
struct TaskWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl TaskWake {
    /// Whether the part was woken since the last call; `cx` is the task's.
    fn take(&self, cx: &Context<'_>) -> bool {
        self.task.register(cx.waker());
        self.woken.swap(false, Ordering::Acquire)
    }
}

impl<A> Body<A>
where
    A: Actor<Context = WsContext<A>> + Handler<Outbound>,
{
    /// Runs the actor if something of its own woke it.
    fn run_actor(&mut self, cx: &Context<'_>) {
        if self.fut.alive() && self.actor_wake.take(cx) {
            let mut actor_cx = Context::from_waker(&self.actor_waker);
            let _ = Pin::new(&mut self.fut).poll(&mut actor_cx);
        }
    }

    /// Moves what the stream sent into what is written, up to
    /// [`RELAY_CHUNK`] bytes; `true` if a close went to the actor.
    fn relay(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.fut.alive() {
            return false;
        }
        let ctx = self.fut.ctx();
        let Some(outgoing) = ctx.outgoing.as_mut() else {
            return false;
        };
        let mut bytes = 0;
        let mut close = None;
        while bytes < RELAY_CHUNK {
            match Pin::new(&mut *outgoing).poll_next(cx) {
                // Dropped once the actor closed its side, as `frame` does.
                Poll::Ready(Some(Outbound::Event(_) | Outbound::Batch(_))) if ctx.closed => {}
                Poll::Ready(Some(Outbound::Event(frame))) => {
                    bytes += frame.bytes().len();
                    ctx.out.push_back(Out::Frame(frame.into_bytes()));
                }
                Poll::Ready(Some(Outbound::Batch(frames))) => {
                    for frame in frames {
                        bytes += frame.bytes().len();
                        ctx.out.push_back(Out::Frame(frame.into_bytes()));
                    }
                }
                Poll::Ready(Some(item @ Outbound::Close(_))) => {
                    close = Some(item);
                    break;
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        // After the events before it; the stream sends none after.
        let Some(close) = close else { return false };
        self.fut.address().do_send(close);
        true
    }
}

impl<A> Stream for Body<A>
where
    A: Actor<Context = WsContext<A>> + Handler<Outbound>,
{
    type Item = Result<Bytes, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.run_actor(cx);
        if this.relay(cx) {
            // The close is in the actor's mailbox, which woke it.
            this.run_actor(cx);
        }
        let out = &mut this.fut.ctx().out;
        if out.len() == 1 {
            if let Some(Out::Frame(_)) = out.front() {
                if let Some(Out::Frame(bytes)) = out.pop_front() {
                    return Poll::Ready(Some(Ok(bytes)));
                }
            }
        }
        while let Some(item) = out.pop_front() {
            match item {
                Out::Frame(bytes) => this.buf.extend_from_slice(&bytes),
                Out::Message(message) => this.codec.encode(message, &mut this.buf)?,
            }
        }
        if !this.buf.is_empty() {
            Poll::Ready(Some(Ok(std::mem::take(&mut this.buf).freeze())))
        } else if this.fut.alive() {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }
}

/// The client's frames, decoded from the request's payload.
///
/// An actor's context polls each of its streams whenever the actor runs,
/// and a viewer's runs for every event it is sent. The payload is read only
/// when it woke the task (its waker is a [`TaskWake`]), so a viewer's
/// silent payload is not polled each time the viewer runs.
struct Incoming<S> {
    payload: S,
    codec: Codec,
    buf: BytesMut,
    /// Set once the payload ended.
    ended: bool,
    /// What the payload wakes: it notes that, then wakes the task.
    wake: Arc<TaskWake>,
    /// `wake` as a waker, made once.
    waker: Waker,
}

impl<S> Incoming<S> {
    fn new(payload: S, codec: Codec) -> Incoming<S> {
        // Woken to begin with: the payload is read the first time.
        let wake = Arc::new(TaskWake {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Incoming {
            payload,
            codec,
            buf: BytesMut::new(),
            ended: false,
            waker: Waker::from(Arc::clone(&wake)),
            wake,
        }
    }
}

impl<S> Stream for Incoming<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Message, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Taken before the payload is read: a wake from now on is seen next time.
        let woken = this.wake.take(cx);
        if !woken && this.buf.is_empty() && !this.ended {
            return Poll::Pending;
        }
        let mut payload_cx = Context::from_waker(&this.waker);
        while woken && !this.ended {
            match Pin::new(&mut this.payload).poll_next(&mut payload_cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                // Reading goes on after an error: past an oversized frame,
                // the payload drops what the client sends until its close
                // frame passed, and only then ends.
                Poll::Ready(Some(Err(e))) => {
                    // The payload may have more: it is read again next time.
                    this.wake.woken.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(ProtocolError::Io(std::io::Error::other(
                        e.to_string(),
                    )))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => break,
            }
        }
        match this.codec.decode(&mut this.buf)? {
            Some(frame) => Poll::Ready(Some(Ok(match frame {
                WireFrame::Text(data) => Message::Text(
                    ByteString::try_from(data)
                        .map_err(|e| ProtocolError::Io(std::io::Error::other(e.to_string())))?,
                ),
                WireFrame::Binary(data) => Message::Binary(data),
                WireFrame::Ping(payload) => Message::Ping(payload),
                WireFrame::Pong(payload) => Message::Pong(payload),
                WireFrame::Close(reason) => Message::Close(reason),
                WireFrame::Continuation(item) => Message::Continuation(item),
            }))),
            None if this.ended => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    /// Writes what it is given when it starts, then waits.
    struct Writer(Vec<Write>);

    enum Write {
        Frame(Frame),
        Text(&'static str),
        Close,
        Relay(Outgoing),
    }

    impl Actor for Writer {
        type Context = WsContext<Self>;

        fn started(&mut self, ctx: &mut Self::Context) {
            for write in self.0.drain(..) {
                match write {
                    Write::Frame(frame) => ctx.frame(frame),
                    Write::Text(text) => ctx.text(text),
                    Write::Close => ctx.close(None),
                    Write::Relay(outgoing) => ctx.relay_from(outgoing),
                }
            }
        }
    }

    impl StreamHandler<Result<Message, ProtocolError>> for Writer {
        fn handle(&mut self, _: Result<Message, ProtocolError>, _: &mut Self::Context) {}
    }

    impl Handler<Outbound> for Writer {
        type Result = ();

        fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
            if let Outbound::Close(_) = msg {
                ctx.close(None);
            }
        }
    }

    fn body(writes: Vec<Write>) -> Pin<Box<impl Stream<Item = Result<Bytes, Error>>>> {
        let payload = futures_util::stream::pending::<Result<Bytes, PayloadError>>();
        Box::pin(WsContext::create(Writer(writes), payload, Codec::new()))
    }

    #[actix::test]
    async fn one_frame_alone_goes_out_as_its_shared_bytes() {
        let frame = Frame::text("hello");
        let mut body = body(vec![Write::Frame(frame.clone())]);
        let chunk = body.next().await.unwrap().unwrap();
        assert_eq!(chunk, frame.bytes());
        assert_eq!(chunk.as_ptr(), frame.bytes().as_ptr(), "no copy");
    }

    #[actix::test]
    async fn frames_waiting_go_out_in_one_chunk_and_nothing_after_the_close() {
        let (a, b) = (Frame::text("a"), Frame::text("b"));
        let mut body = body(vec![
            Write::Frame(a.clone()),
            Write::Text("c"),
            Write::Frame(b.clone()),
            Write::Close,
            Write::Frame(Frame::text("after the close")),
            Write::Text("after the close"),
        ]);
        let chunk = body.next().await.unwrap().unwrap();
        let mut expected = a.bytes().to_vec();
        expected.extend_from_slice(Frame::text("c").bytes());
        expected.extend_from_slice(b.bytes());
        // A close frame without a reason: FIN and opcode 8, no payload.
        expected.extend_from_slice(&[0x88, 0x00]);
        assert_eq!(chunk, expected);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            body.as_mut().poll_next(&mut cx).is_pending(),
            "the body stays open for the client's close"
        );
    }

    #[actix::test]
    async fn relayed_events_go_out_in_order_and_a_close_reaches_the_actor() {
        let (outbox, outgoing) = twizzle_actors::outbox::channel(8);
        let mut body = body(vec![Write::Relay(outgoing)]);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(body.as_mut().poll_next(&mut cx).is_pending());

        let (a, b) = (Frame::text("a"), Frame::text("b"));
        outbox.try_send(a.clone()).unwrap();
        assert_eq!(
            body.next().await.unwrap().unwrap(),
            a.bytes(),
            "one event alone"
        );
        outbox.try_send(b.clone()).unwrap();
        outbox.push(Outbound::Batch(vec![a.clone(), b.clone()]));
        outbox.push(Outbound::Close(twizzle_actors::close::TOO_SLOW));
        outbox.try_send(Frame::text("after the close")).unwrap();
        let chunk = body.next().await.unwrap().unwrap();
        let mut expected = b.bytes().to_vec();
        expected.extend_from_slice(a.bytes());
        expected.extend_from_slice(b.bytes());
        // The actor's close frame, after the events before it.
        expected.extend_from_slice(&[0x88, 0x00]);
        assert_eq!(chunk, expected);
        assert!(
            body.as_mut().poll_next(&mut cx).is_pending(),
            "nothing is written after the close"
        );
        assert!(
            outbox.is_empty(),
            "what came after the close was read and dropped"
        );
    }
}
