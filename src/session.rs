//! The WebSocket session actor: one per socket, between the wire and its stream.
//!
//! Read top to bottom, this file follows a frame: the stream of frames from
//! the wire ([`StreamHandler`]), the check of a sender's frame
//! ([`WsSession::on_data`]), its hand-off to the stream
//! ([`WsSession::publish`]), and what the stream sends back out
//! ([`Outbound`]). Then the session's life: it joins its stream when it
//! starts, pings the client so that dead connections are closed, and leaves
//! when it is dropped (its [`Admission`] does that).
//!
//! The end of a socket follows RFC 6455 §7.1.1: once both close frames have
//! passed, the server ends the TCP connection, not the client (a browser
//! fires `onclose` only then). When the client closes, the session answers
//! and stops at once. When the session closes, it waits for the client's
//! answer ([`CLOSE_GRACE`] at most) and then stops: the client's close
//! frame is the last thing it sends, so no unread data is left behind for
//! the kernel to answer with a reset. Either way the connection ends right
//! after the session stops (see `startup` for why actix-http no longer
//! lingers).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use twizzle_actors::admission::Admission;
use twizzle_actors::close::{self, Close};
use twizzle_actors::event::{error_frame, parse_event};
use twizzle_actors::gate::Rate;
use twizzle_actors::ids::UserId;
use twizzle_actors::metrics::Metrics;
use twizzle_actors::outbox;
use twizzle_actors::rate::TokenBucket;
use twizzle_actors::stream::{Disconnect, Joined, Outbound, Publish, RATE_LIMITED_FRAME};

use crate::connection::Cutoff;
use crate::inflow::{payload_len, Inflow};
use crate::ws_context::WsContext;

/// A socket silent for this many heartbeat intervals is closed.
pub const SILENT_INTERVALS: u32 = 3;
/// How long a socket the server closes waits for the client's close frame
/// before the connection is dropped anyway. A browser answers at once; a
/// client that does not is not worth its slot for longer.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A sender's frames over its rate are refused at most this many a second
/// per socket (in bursts of as many); past that the session reads on only
/// as fast, so a client flooding at wire speed is slowed down by TCP rather
/// than served a core. An honest sender is never near its rate.
pub const REFUSALS_PER_SEC: f64 = 1000.0;

/// Everything a session is made from.
pub struct SessionSetup {
    /// The socket's ticket: its stream, its slot, its number there.
    pub admission: Admission,
    /// For a viewer resuming, the offset of the last event it has.
    pub since: Option<u64>,
    /// How often to ping.
    pub heartbeat: Duration,
    /// Outbox capacity: unsent events queued before the stream drops the
    /// socket (see `Limits::outbox_capacity`).
    pub outbox_capacity: usize,
    /// Cuts the connection if the client stops reading; `None` if unknown.
    pub cutoff: Option<Arc<Cutoff>>,
    /// Told of every frame processed, so the connection reads on.
    pub inflow: Rc<Inflow>,
    /// Where the session counts refusals and closes.
    pub metrics: Arc<Metrics>,
    /// The rate a sender's events are held to on its stream.
    pub sender_rate: Rate,
}

/// A sender socket's own count of its events against its sender's rate,
/// and the pace at which the socket's frames over that rate are refused.
struct SenderPace {
    /// The sender's budget as this socket alone spends it on valid events.
    /// Its stream keeps the budget all of the sender's sockets there share
    /// and decides; but a socket that alone is past the rate is past the
    /// shared budget too, so its frames are refused here, before they are
    /// parsed or reach the stream.
    own: TokenBucket,
    /// Refusals of frames over the rate, at [`REFUSALS_PER_SEC`].
    refusals: TokenBucket,
}

/// One WebSocket connection to a stream.
pub struct WsSession {
    /// The socket's ticket; dropped with the session, which frees the slot
    /// and takes the socket out of its stream.
    admission: Admission,
    /// For a viewer resuming, the offset of the last event it has.
    since: Option<u64>,
    /// Set once the stream has taken the socket in.
    joined: Option<Joined>,
    /// When the client was last heard from (any frame, pongs included).
    last_heard: Instant,
    /// How often to ping.
    heartbeat: Duration,
    /// Unsent events queued before the stream drops the socket.
    outbox_capacity: usize,
    /// Lets the stream cut the connection; forgotten when the session goes.
    cutoff: Option<Arc<Cutoff>>,
    /// Told of every frame processed, so the connection reads on.
    inflow: Rc<Inflow>,
    /// Set once the session sent its close frame: from then on it writes
    /// nothing and waits only for the client's close.
    closing: bool,
    /// Where the session counts refusals and closes.
    metrics: Arc<Metrics>,
    /// How the server closed the socket, if it did (else the client did).
    closed_with: Option<Close>,
    /// The rate a sender's events are held to on its stream.
    sender_rate: Rate,
    /// Set once a sender socket joined; viewers have none.
    pace: Option<Box<SenderPace>>,
}

impl WsSession {
    /// A session, not yet started.
    pub fn new(setup: SessionSetup) -> WsSession {
        WsSession {
            admission: setup.admission,
            since: setup.since,
            joined: None,
            last_heard: Instant::now(),
            heartbeat: setup.heartbeat,
            outbox_capacity: setup.outbox_capacity,
            cutoff: setup.cutoff,
            inflow: setup.inflow,
            closing: false,
            metrics: setup.metrics,
            closed_with: None,
            sender_rate: setup.sender_rate,
            pace: None,
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        if let Ok(message) = &msg {
            self.inflow.consumed(payload_len(message));
        }
        if self.closing {
            // Data after the session's close frame is read and dropped; the
            // client's close (or a broken stream) ends the handshake.
            if matches!(msg, Ok(ws::Message::Close(_)) | Err(_)) {
                ctx.stop();
            }
            return;
        }
        match msg {
            Ok(ws::Message::Text(text)) => self.on_data(ctx, Ok(&text)),
            Ok(ws::Message::Binary(_)) => {
                self.on_data(ctx, Err("binary frames are not accepted: send JSON text"))
            }
            Ok(ws::Message::Continuation(Item::FirstText(_) | Item::FirstBinary(_))) => self
                .on_data(
                    ctx,
                    Err("fragmented messages are not accepted: send each event in one frame"),
                ),
            Ok(ws::Message::Continuation(_) | ws::Message::Pong(_) | ws::Message::Nop) => {}
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => self.too_big(ctx),
            Err(_) if self.inflow.oversized() => self.too_big(ctx),
            Err(e) => {
                log::info!(
                    "stream {}: closing a {}: protocol error: {e}",
                    self.admission.stream_id(),
                    self.role()
                );
                self.close_with(ctx, close::PROTOCOL_ERROR);
            }
        }
    }
}

impl WsSession {
    /// A data frame arrived: a viewer may not send; a sender's frame is
    /// checked and published (its stream holds the sender to its rate,
    /// over all of the sender's sockets there).
    fn on_data(&mut self, ctx: &mut WsContext<Self>, text: Result<&str, &'static str>) {
        let Some(joined) = self.joined else { return };
        if !joined.sender {
            self.metrics.rejected("not_permitted");
            return self.close_with(ctx, close::NOT_PERMITTED);
        }
        let text = match text {
            Ok(text) => text,
            Err(refusal) => return self.refuse(ctx, refusal),
        };
        let now = self.last_heard;
        if self.pace.as_ref().is_some_and(|pace| !pace.own.ready(now)) {
            return self.over_rate(ctx, now);
        }
        match parse_event(text) {
            Ok(event) => {
                if let Some(pace) = &mut self.pace {
                    pace.own.take(now);
                }
                self.publish(
                    Publish {
                        socket: joined.socket,
                        event,
                        received: now,
                    },
                    ctx,
                )
            }
            Err(refusal) => self.refuse(ctx, &refusal),
        }
    }

    /// Refuses a sender's frame over its rate, as its stream would, and
    /// past [`REFUSALS_PER_SEC`] waits before it reads the next frame.
    fn over_rate(&mut self, ctx: &mut WsContext<Self>, now: Instant) {
        self.metrics.rejected("rate_limited");
        self.metrics.limit_hit("sender_events");
        ctx.frame(RATE_LIMITED_FRAME.clone());
        let Some(pace) = &mut self.pace else { return };
        if !pace.refusals.take(now) {
            // This refusal is paid for with the next token, once it is
            // there. Nothing is read meanwhile: the client's bytes back up
            // in the inflow bound and then in TCP.
            let pause = pace.refusals.retry_after(now);
            let paid = actix::clock::sleep(pause)
                .into_actor(self)
                .map(|_, session, _| {
                    if let Some(pace) = &mut session.pace {
                        pace.refusals.take(Instant::now());
                    }
                });
            ctx.wait(paid);
        }
    }

    /// Answers a refused frame with an error frame; the socket stays open.
    fn refuse(&mut self, ctx: &mut WsContext<Self>, refusal: &str) {
        self.metrics.rejected("invalid");
        send_error(ctx, refusal);
    }

    /// A frame over the size limit closes the socket.
    fn too_big(&mut self, ctx: &mut WsContext<Self>) {
        self.metrics.limit_hit("frame_bytes");
        self.close_with(ctx, close::TOO_BIG);
    }

    /// Hands an event to the stream. If the stream's mailbox is full (it
    /// is fanning out slower than its senders send), the session waits for
    /// it before reading another frame, so the sender's own socket backs up
    /// instead of the stream's memory growing.
    fn publish(&mut self, publish: Publish, ctx: &mut WsContext<Self>) {
        let stream = self.admission.stream();
        match stream.try_send(publish) {
            Ok(()) | Err(SendError::Closed(_)) => {}
            Err(SendError::Full(publish)) => {
                ctx.wait(stream.send(publish).into_actor(self).map(|_, _, _| ()));
            }
        }
    }
}

/// What the stream sends comes here only as a close: its context writes
/// the events and batches itself (see `ws_context`), in order before it.
impl Handler<Outbound> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        if let Outbound::Close(close) = msg {
            self.close_with(ctx, close);
        }
    }
}

impl WsSession {
    /// Sends the close frame `close`, then stops when the client answers
    /// it, or after [`CLOSE_GRACE`]. A second close is ignored: one close
    /// frame per socket.
    fn close_with(&mut self, ctx: &mut WsContext<Self>, close: Close) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.closed_with = Some(close);
        ctx.close(Some(CloseReason {
            code: CloseCode::from(close.code),
            description: Some(close.reason.to_owned()),
        }));
        ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
    }
}

/// Answers a sender's refused frame with an error frame; the socket stays open.
fn send_error(ctx: &mut WsContext<WsSession>, message: &str) {
    ctx.text(error_frame(message));
}

impl WsSession {
    fn role(&self) -> &'static str {
        match self.joined {
            Some(Joined { sender: true, .. }) => "sender",
            Some(_) => "viewer",
            None => "unjoined socket",
        }
    }

    /// Pings every interval; closes a socket silent for [`SILENT_INTERVALS`].
    fn heartbeat(&self, ctx: &mut WsContext<Self>) {
        ctx.run_interval(self.heartbeat, |session, ctx| {
            if session.closing {
                return;
            }
            if session.last_heard.elapsed() > session.heartbeat * SILENT_INTERVALS {
                log::info!(
                    "stream {}: closing a silent {}",
                    session.admission.stream_id(),
                    session.role()
                );
                return session.close_with(ctx, close::SILENT);
            }
            ctx.ping(b"");
        });
    }

    /// Joins the stream; no frame is read or written before the stream has
    /// taken the socket in and queued its replay.
    fn join(&self, ctx: &mut WsContext<Self>) {
        let disconnect = self
            .cutoff
            .clone()
            .map(|cutoff| cutoff as Arc<dyn Disconnect>);
        // The stream `try_send`s events to the outbox; a full one means the
        // client stopped reading, and the stream drops the socket. See
        // `SessionSetup::outbox_capacity` for the size.
        let (outbox, outgoing) = outbox::channel(self.outbox_capacity);
        ctx.relay_from(outgoing);
        let join = self.admission.join(outbox, disconnect, self.since);
        let joining = self.admission.stream().send(join);
        ctx.wait(joining.into_actor(self).map(|answer, session, ctx| {
            match answer {
                Ok(Ok(joined)) => {
                    if joined.sender {
                        let rate = session.sender_rate;
                        let now = Instant::now();
                        session.pace = Some(Box::new(SenderPace {
                            own: TokenBucket::new(rate.per_sec, rate.burst, now),
                            refusals: TokenBucket::new(REFUSALS_PER_SEC, REFUSALS_PER_SEC, now),
                        }));
                    }
                    session.joined = Some(joined);
                    log::info!(
                        "stream {}: {} connected ({})",
                        session.admission.stream_id(),
                        session.role(),
                        session
                            .admission
                            .user_id()
                            .map_or("anonymous", UserId::as_str)
                    );
                }
                Ok(Err(refused)) => session.close_with(ctx, refused.close),
                // The stream's actor is gone: it ended, or the server is
                // stopping. Telling a client its stream ended when it comes
                // back after a restart would lose it; the other way round,
                // it retries once and hears 404.
                Err(_) => session.close_with(ctx, close::SERVER_RESTARTING),
            }
        }));
    }
}

impl Actor for WsSession {
    type Context = WsContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.heartbeat(ctx);
        self.join(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(cutoff) = &self.cutoff {
            cutoff.forget();
        }
        self.metrics
            .closed(self.closed_with.map_or("client", |close| close.label()));
        if self.joined.is_some() {
            log::info!(
                "stream {}: {} disconnected",
                self.admission.stream_id(),
                self.role()
            );
        }
    }
}

impl Drop for WsSession {
    fn drop(&mut self) {
        // A session cut off while stuck never ran `stopped`; actix-http drops
        // it before it closes the socket, so the descriptor is forgotten in time.
        if let Some(cutoff) = &self.cutoff {
            cutoff.forget();
        }
    }
}
