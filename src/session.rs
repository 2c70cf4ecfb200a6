//! The WebSocket session actor: one per socket, between the wire and its stream.
//!
//! It joins its stream when it starts and leaves when it stops, checks every
//! frame a sender sends before the stream sees it, writes what the stream
//! sends it, and pings the client so that dead connections are closed.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::Cutoff;
use crate::inflow::Inflow;
use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use twizzle_actors::event::parse_event;
use twizzle_actors::registry::{Registry, SocketClosed};
use twizzle_actors::stream::{
    Disconnect, Join, Joined, Leave, Outbound, Publish, StreamActor, CLOSE_NORMAL, CLOSE_POLICY,
    STREAM_ENDED,
};

/// A socket silent for this many heartbeat intervals is closed.
pub const SILENT_INTERVALS: u32 = 3;
/// Close code for a frame over the size limit.
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a socket that stopped answering pings.
const CLOSE_GOING_AWAY: u16 = 1001;

/// Everything a session is made from.
pub struct SessionSetup {
    /// The stream the socket belongs to; the registry has admitted the socket.
    pub stream: Addr<StreamActor>,
    /// The stream's ID, for log lines.
    pub stream_id: String,
    /// The signed-in user, if the socket came with an access token.
    pub user_id: Option<String>,
    /// Told when the socket closes, to keep the count of open sockets.
    pub registry: Addr<Registry>,
    /// How often to ping.
    pub heartbeat: Duration,
    /// Mailbox capacity: unsent events queued before the stream drops the
    /// socket (see `Limits::mailbox_capacity`).
    pub mailbox_capacity: usize,
    /// Sustained events per second a sender may send.
    pub events_per_sec: f64,
    /// Events a sender may send in a burst.
    pub event_burst: f64,
    /// Cuts the connection if the client stops reading; `None` if unknown.
    pub cutoff: Option<Arc<Cutoff>>,
    /// Told of every frame processed, so the connection reads on.
    pub inflow: Rc<Inflow>,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One WebSocket connection to a stream.
pub struct WsSession {
    /// The stream the socket belongs to.
    stream: Addr<StreamActor>,
    /// The stream's ID, for log lines.
    stream_id: String,
    /// The signed-in user, if any.
    user_id: Option<String>,
    /// Told when the socket closes.
    registry: Addr<Registry>,
    /// Set once the stream has taken the socket in.
    joined: Option<Joined>,
    /// When the client was last heard from (any frame, pongs included).
    last_heard: Instant,
    /// How often to ping.
    heartbeat: Duration,
    /// Unsent events queued before the stream drops the socket.
    mailbox_capacity: usize,
    /// Limits a sender's events.
    rate: RateLimit,
    /// Lets the stream cut the connection; forgotten when the session goes.
    cutoff: Option<Arc<Cutoff>>,
    /// Told of every frame processed, so the connection reads on.
    inflow: Rc<Inflow>,
}

impl WsSession {
    /// A session, not yet started.
    pub fn new(setup: SessionSetup) -> WsSession {
        WsSession {
            stream: setup.stream,
            stream_id: setup.stream_id,
            user_id: setup.user_id,
            registry: setup.registry,
            joined: None,
            last_heard: Instant::now(),
            heartbeat: setup.heartbeat,
            mailbox_capacity: setup.mailbox_capacity,
            rate: RateLimit::new(setup.events_per_sec, setup.event_burst),
            cutoff: setup.cutoff,
            inflow: setup.inflow,
        }
    }

    fn role(&self) -> &'static str {
        match self.joined {
            Some(Joined { sender: true, .. }) => "sender",
            Some(_) => "viewer",
            None => "unjoined socket",
        }
    }

    fn close(ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: impl Into<String>) {
        ctx.close(Some(CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.into()),
        }));
        ctx.stop();
    }

    fn send_error(ctx: &mut ws::WebsocketContext<Self>, message: &str) {
        let frame = serde_json::json!({"event": "error", "data": {"message": message}});
        ctx.text(frame.to_string());
    }

    /// Hands an event to the stream. If the stream's mailbox is full (it
    /// is fanning out slower than its senders send), the session waits for
    /// it before reading another frame, so the sender's own socket backs up
    /// instead of the stream's memory growing.
    fn publish(&mut self, publish: Publish, ctx: &mut ws::WebsocketContext<Self>) {
        match self.stream.try_send(publish) {
            Ok(()) | Err(SendError::Closed(_)) => {}
            Err(SendError::Full(publish)) => {
                ctx.wait(self.stream.send(publish).into_actor(self).map(|_, _, _| ()));
            }
        }
    }

    /// A data frame arrived: a viewer may not send; a sender's frame is checked and published.
    fn on_data(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: Result<&str, &'static str>) {
        let Some(joined) = self.joined else { return };
        if !joined.sender {
            return Self::close(ctx, CLOSE_POLICY, "not permitted to send");
        }
        if !self.rate.take() {
            return Self::send_error(ctx, "rate limit exceeded");
        }
        let text = match text {
            Ok(text) => text,
            Err(refusal) => return Self::send_error(ctx, refusal),
        };
        match parse_event(text) {
            Ok(event) => self.publish(
                Publish {
                    socket: joined.socket,
                    event,
                },
                ctx,
            ),
            Err(refusal) => Self::send_error(ctx, &refusal),
        }
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The stream `try_send`s events here; a full mailbox means the client
        // stopped reading, and the stream drops the socket. See
        // `SessionSetup::mailbox_capacity` for the size.
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        ctx.run_interval(self.heartbeat, |session, ctx| {
            if session.last_heard.elapsed() > session.heartbeat * SILENT_INTERVALS {
                log::info!(
                    "stream {}: closing a silent {}",
                    session.stream_id,
                    session.role()
                );
                return Self::close(ctx, CLOSE_GOING_AWAY, "no answer to pings");
            }
            ctx.ping(b"");
        });
        let join = Join {
            outbox: ctx.address().recipient(),
            user_id: self.user_id.clone(),
            disconnect: self
                .cutoff
                .clone()
                .map(|cutoff| cutoff as Arc<dyn Disconnect>),
        };
        // `wait`: no frame is read or written before the stream has taken the
        // socket in and queued its replay.
        ctx.wait(self.stream.send(join).into_actor(self).map(
            |answer, session, ctx| match answer {
                Ok(Ok(joined)) => {
                    session.joined = Some(joined);
                    log::info!(
                        "stream {}: {} connected ({})",
                        session.stream_id,
                        session.role(),
                        session.user_id.as_deref().unwrap_or("anonymous")
                    );
                }
                Ok(Err(_)) | Err(_) => Self::close(ctx, CLOSE_NORMAL, STREAM_ENDED),
            },
        ));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(cutoff) = &self.cutoff {
            cutoff.forget();
        }
        if let Some(joined) = self.joined {
            self.stream.do_send(Leave {
                socket: joined.socket,
            });
            log::info!("stream {}: {} disconnected", self.stream_id, self.role());
        }
        self.registry.do_send(SocketClosed);
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

impl Handler<Outbound> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        match msg {
            Outbound::Event(text) => ctx.text(text),
            Outbound::Close { code, reason } => Self::close(ctx, code, reason),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        if let Ok(message) = &msg {
            self.inflow.consumed(payload_len(message));
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
            Err(ws::ProtocolError::Overflow) => Self::close(ctx, CLOSE_TOO_BIG, "frame too large"),
            Err(_) if self.inflow.oversized() => Self::close(ctx, CLOSE_TOO_BIG, "frame too large"),
            Err(e) => Self::close(ctx, 1002, format!("protocol error: {e}")),
        }
    }
}

/// The payload bytes of a frame as it came off the wire.
fn payload_len(message: &ws::Message) -> usize {
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
