//! The stream actor: one per stream, owning its sockets and fanning out.
//!
//! WebSocket sessions join and leave it and publish their senders' events;
//! it relays each event to every other socket, keeps the [`Replay`] for
//! viewers who join later, hands each accepted event to the stream's
//! recording, and ends the stream when no sender has been connected for the
//! idle timeout. The registry started it, hears when it goes idle or live,
//! and hears when it stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use bytestring::ByteString;

use crate::close::{self, Close};
use crate::event::{error_frame, Event};
use crate::ids::{StreamId, UserId};
use crate::metrics::Metrics;
use crate::rate::TokenBucket;
use crate::replay::Replay;
use crate::store::RecordingStore;

/// Messages a stream's mailbox holds before publishing senders must wait.
pub const MAILBOX_CAPACITY: usize = 1024;
/// How often a stream that accepted events keeps a snapshot of its replay,
/// so that a restart reads at most this much of its recording.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// What a stream holds its senders and its recording to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamLimits {
    /// Events per second one sender may keep up, over all its sockets on
    /// the stream; the excess is dropped and answered `rate limit exceeded`.
    pub events_per_sec: f64,
    /// Events one sender may send in a burst.
    pub event_burst: f64,
    /// Bytes the recording may grow to; past it, events are relayed and
    /// kept in the replay but no longer recorded.
    pub max_recording_bytes: u64,
}

impl StreamLimits {
    /// No rate limit and no recording quota: for tests of other things.
    pub const NONE: StreamLimits = StreamLimits {
        events_per_sec: f64::INFINITY,
        event_burst: f64::INFINITY,
        max_recording_bytes: u64::MAX,
    };
}

/// The message of the error frame for an event over the sender's rate.
pub const RATE_LIMITED: &str = "rate limit exceeded";

/// Identifies a socket within the server; the registry hands them out.
pub type SocketId = u64;

/// What a stream tells one of its sockets.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Outbound {
    /// An event to write to the socket as a text frame.
    Event(ByteString),
    /// Close the socket with this code and reason.
    Close(Close),
}

/// Cuts a socket's connection from outside its session: for a session that
/// cannot run because its client stopped reading.
pub trait Disconnect: Send + Sync {
    /// Cuts the connection; the session is then dropped by the server.
    fn disconnect(&self);
}

/// Adds a socket to the stream; a sender if `user_id` is a permitted sender.
///
/// Sent through the socket's [`Admission`](crate::admission::Admission),
/// whose drop sends the matching [`Leave`], answered or not.
#[derive(Message)]
#[rtype(result = "Result<Joined, JoinError>")]
pub struct Join {
    /// The socket, as the registry numbered it.
    pub socket: SocketId,
    /// Where the stream sends the socket's events.
    pub outbox: Recipient<Outbound>,
    /// The signed-in user of the socket, if any.
    pub user_id: Option<UserId>,
    /// Cuts the connection when its client stops reading.
    pub disconnect: Option<Arc<dyn Disconnect>>,
}

/// The answer to a [`Join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The socket's ID, for `Publish`.
    pub socket: SocketId,
    /// Whether the socket may send events.
    pub sender: bool,
}

/// Why a stream took no socket: it is ending, and this is how its sockets
/// were closed (`stream ended`, or `server restarting` when it comes back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinError {
    /// The close the socket gets.
    pub close: Close,
}

/// Removes a socket from the stream; one that already left is ignored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The socket that closed.
    pub socket: SocketId,
}

/// A sender's checked event, to remember and relay.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// The socket it came from; it gets no echo.
    pub socket: SocketId,
    /// The event.
    pub event: Event,
    /// When its frame arrived, for the fan-out time.
    pub received: Instant,
}

/// Ends the stream now: the recording is synced, then every socket is
/// closed with `close`. Answered once that is done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndStream {
    /// How the sockets are closed.
    pub close: Close,
}

/// What the stream looks like right now.
#[derive(Message)]
#[rtype(result = "StreamStatus")]
pub struct GetStatus;

/// The answer to [`GetStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStatus {
    /// Sockets joined, senders and viewers.
    pub sockets: usize,
    /// Sender sockets joined.
    pub senders: usize,
    /// Whether the idle countdown is running.
    pub counting_down: bool,
}

/// What a stream tells its registry.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum StreamNotice {
    /// A sender connected to a stream that had none: the countdown stopped.
    Live {
        /// The stream.
        id: StreamId,
    },
    /// The last sender left at `since`: the countdown started.
    Idle {
        /// The stream.
        id: StreamId,
        /// When the last sender left.
        since: SystemTime,
    },
    /// The countdown ran out. The registry forgets the stream, then ends it
    /// with [`EndStream`], so nobody finds a stream whose sockets were told
    /// it ended. The stream takes no new sockets meanwhile.
    Expired {
        /// The stream.
        id: StreamId,
    },
    /// The stream actor stopped, for whatever reason.
    Stopped {
        /// The stream.
        id: StreamId,
    },
}

/// Everything a stream actor is made from.
pub struct StreamSetup {
    /// The stream's ID.
    pub id: StreamId,
    /// Users allowed to send.
    pub senders: Vec<UserId>,
    /// How long the stream lives without a connected sender.
    pub idle_timeout: Duration,
    /// Where accepted events are kept, and the replay comes back from.
    pub recording: Box<dyn RecordingStore + Send>,
    /// The senders' rate and the recording's quota.
    pub limits: StreamLimits,
    /// Where the stream counts what it does.
    pub metrics: Arc<Metrics>,
    /// Told when the stream goes idle or live, expires, and stops. Without
    /// one, the stream ends itself when its countdown runs out.
    pub registry: Option<Recipient<StreamNotice>>,
    /// Since when the stream has had no sender: `None` for now (a new
    /// stream); earlier for a stream restored after a restart, whose
    /// countdown resumes where it was.
    pub idle_since: Option<SystemTime>,
}

/// One joined socket.
struct Member {
    /// Where its events go.
    outbox: Recipient<Outbound>,
    /// The sender it belongs to; `None` for a viewer.
    sender: Option<UserId>,
    /// Cuts its connection if it stops reading.
    disconnect: Option<Arc<dyn Disconnect>>,
}

/// One stream: its sockets, its replay, its countdown and recording.
pub struct StreamActor {
    /// The stream's ID.
    id: StreamId,
    /// Users allowed to send.
    senders: Vec<UserId>,
    /// Joined sockets by ID.
    members: HashMap<SocketId, Member>,
    /// How many joined sockets are senders; the countdown runs while this is zero.
    connected_senders: usize,
    /// The last reset, orientation and move, and the reset loop guard.
    replay: Replay,
    /// Events accepted when the last snapshot was kept.
    checkpointed: u64,
    /// How long the stream lives without a connected sender.
    idle_timeout: Duration,
    /// The running idle countdown, if no sender is connected.
    countdown: Option<SpawnHandle>,
    /// Where accepted events are kept.
    recording: Box<dyn RecordingStore + Send>,
    /// The senders' rate and the recording's quota.
    limits: StreamLimits,
    /// Where the stream counts what it does.
    metrics: Arc<Metrics>,
    /// Each sender's rate budget, shared by all its sockets here.
    budgets: HashMap<UserId, TokenBucket>,
    /// The error frame for an event over the rate, encoded once.
    rate_limited: ByteString,
    /// Set once the recording reached its quota: events are no longer
    /// recorded, and the snapshot is kept after each one instead, so that
    /// the replay still survives a crash.
    recording_full: bool,
    /// Told when the stream goes idle or live, expires, and stops.
    registry: Option<Recipient<StreamNotice>>,
    /// Set once the stream is ending, to how its sockets are closed: it
    /// takes no new sockets then, and tells them why.
    ending: Option<Close>,
    /// Since when no sender has been connected, for the first countdown.
    idle_since: Option<SystemTime>,
}

impl StreamActor {
    /// A stream actor, not yet started.
    pub fn new(setup: StreamSetup) -> StreamActor {
        StreamActor {
            id: setup.id,
            senders: setup.senders,
            members: HashMap::new(),
            connected_senders: 0,
            replay: Replay::default(),
            checkpointed: 0,
            idle_timeout: setup.idle_timeout,
            countdown: None,
            recording: setup.recording,
            limits: setup.limits,
            metrics: setup.metrics,
            budgets: HashMap::new(),
            rate_limited: error_frame(RATE_LIMITED),
            recording_full: false,
            registry: setup.registry,
            ending: None,
            idle_since: setup.idle_since,
        }
    }

    /// Starts the idle countdown for a stream idle since `since`.
    fn start_countdown(&mut self, since: SystemTime, ctx: &mut Context<Self>) {
        if self.countdown.is_some() {
            return;
        }
        let idle_for = SystemTime::now().duration_since(since).unwrap_or_default();
        let left = self.idle_timeout.saturating_sub(idle_for);
        self.countdown = Some(ctx.run_later(left, |actor, ctx| {
            log::info!(
                "stream {} ended: no sender for {:?}",
                actor.id,
                actor.idle_timeout
            );
            actor.ending = Some(close::STREAM_ENDED);
            match &actor.registry {
                Some(registry) => registry.do_send(StreamNotice::Expired {
                    id: actor.id.clone(),
                }),
                None => ctx.wait(actor.end(close::STREAM_ENDED)),
            }
        }));
    }

    /// Keeps the replay and syncs the recording, then closes every socket
    /// with `close` and stops: the recording is on disk before the sockets
    /// hear of the end, and before a shutdown goes on.
    fn end(&mut self, close: Close) -> impl ActorFuture<Self, Output = ()> {
        self.ending = Some(close);
        let checkpoint = self.recording.checkpoint(&self.replay.snapshot());
        let sync = self.recording.sync();
        async move {
            // Each store logs its own failure; the end goes on regardless.
            let _ = checkpoint.await;
            let _ = sync.await;
        }
        .into_actor(self)
        .map(move |(), actor, ctx| {
            for (_, member) in actor.members.drain() {
                actor.metrics.role(member.sender.is_some()).dec();
                // `do_send` on purpose: the close must get through even to a
                // socket whose queue is full.
                member.outbox.do_send(Outbound::Close(close));
            }
            actor.connected_senders = 0;
            ctx.stop();
        })
    }

    fn remove(&mut self, socket: SocketId, ctx: &mut Context<Self>) -> Option<Member> {
        let member = self.members.remove(&socket)?;
        self.metrics.role(member.sender.is_some()).dec();
        if member.sender.is_some() {
            self.connected_senders -= 1;
            if self.connected_senders == 0 && self.ending.is_none() {
                let now = SystemTime::now();
                self.start_countdown(now, ctx);
                self.notify(StreamNotice::Idle {
                    id: self.id.clone(),
                    since: now,
                });
            }
        }
        Some(member)
    }

    fn notify(&self, notice: StreamNotice) {
        if let Some(registry) = &self.registry {
            registry.do_send(notice);
        }
    }

    /// Keeps a snapshot of the replay if events came since the last one.
    fn checkpoint(&mut self, ctx: &mut Context<Self>) {
        let accepted = self.replay.accepted();
        if accepted == self.checkpointed {
            return;
        }
        let kept = self.recording.checkpoint(&self.replay.snapshot());
        ctx.spawn(kept.into_actor(self).map(move |kept, actor, _| {
            if kept.is_ok() {
                actor.checkpointed = accepted;
            }
        }));
    }

    /// Hands `text` to every socket but `from`; drops those that are full or gone.
    fn fan_out(&mut self, from: SocketId, text: &ByteString, ctx: &mut Context<Self>) {
        let mut dropped = Vec::new();
        let mut delivered = 0;
        for (&socket, member) in &self.members {
            if socket == from {
                continue;
            }
            match member.outbox.try_send(Outbound::Event(text.clone())) {
                Ok(()) => delivered += 1,
                Err(SendError::Full(_)) => dropped.push((socket, true)),
                Err(SendError::Closed(_)) => dropped.push((socket, false)),
            }
        }
        // One add per event, not one per delivery.
        self.metrics.deliveries.inc_by(delivered);
        for (socket, full) in dropped {
            let Some(member) = self.remove(socket, ctx) else {
                continue;
            };
            if full {
                self.metrics.limit_hit("queued_events");
                log::info!(
                    "stream {}: dropping socket {socket}: {}",
                    self.id,
                    close::TOO_SLOW.reason
                );
                // The close frame reaches a client that reads again; one
                // that does not is cut off, since its session cannot run.
                member.outbox.do_send(Outbound::Close(close::TOO_SLOW));
                if let Some(disconnect) = &member.disconnect {
                    disconnect.disconnect();
                }
            }
        }
    }
}

impl Actor for StreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Sessions `try_send` their senders' events here and wait when it is
        // full: a stream fanning out slower than its senders send slows the
        // senders down rather than growing without bound.
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        // `wait`: no socket joins before the replay is back.
        let opened = self.recording.open();
        ctx.wait(opened.into_actor(self).map(|opened, actor, _| {
            // A recording that cannot be opened has logged why; the stream
            // goes on live, without its earlier replay.
            if let Ok(replay) = opened {
                actor.checkpointed = replay.accepted();
                actor.replay = replay;
            }
        }));
        let since = self.idle_since.unwrap_or_else(SystemTime::now);
        self.start_countdown(since, ctx);
        ctx.run_interval(CHECKPOINT_INTERVAL, Self::checkpoint);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.notify(StreamNotice::Stopped {
            id: self.id.clone(),
        });
    }
}

impl Handler<Join> for StreamActor {
    type Result = Result<Joined, JoinError>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        if let Some(close) = self.ending {
            return Err(JoinError { close });
        }
        if !matches!(ctx.state(), ActorState::Running) {
            return Err(JoinError {
                close: close::SERVER_RESTARTING,
            });
        }
        let sender = msg.user_id.filter(|user| self.senders.contains(user));
        self.metrics.role(sender.is_some()).inc();
        if sender.is_some() {
            self.connected_senders += 1;
            if let Some(countdown) = self.countdown.take() {
                ctx.cancel_future(countdown);
                self.notify(StreamNotice::Live {
                    id: self.id.clone(),
                });
            }
        } else {
            for text in self.replay.frames() {
                // At most three messages, so `do_send` cannot grow a mailbox
                // without bound, and the replay is never cut short.
                msg.outbox.do_send(Outbound::Event(text.clone()));
            }
        }
        self.members.insert(
            msg.socket,
            Member {
                outbox: msg.outbox,
                sender,
                disconnect: msg.disconnect,
            },
        );
        Ok(Joined {
            socket: msg.socket,
            sender: self.members[&msg.socket].sender.is_some(),
        })
    }
}

impl Handler<Leave> for StreamActor {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        self.remove(msg.socket, ctx);
    }
}

impl Handler<Publish> for StreamActor {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        let Some(member) = self.members.get(&msg.socket) else {
            return;
        };
        let Some(user) = &member.sender else { return };
        let limits = self.limits;
        let budget = self.budgets.entry(user.clone()).or_insert_with(|| {
            TokenBucket::new(limits.events_per_sec, limits.event_burst, Instant::now())
        });
        if !budget.take(Instant::now()) {
            self.metrics.rejected("rate_limited");
            self.metrics.limit_hit("sender_events");
            // One error frame per dropped event; a sender not reading its
            // own socket loses them rather than growing its mailbox.
            let _ = member
                .outbox
                .try_send(Outbound::Event(self.rate_limited.clone()));
            return;
        }
        if !self.replay.accept(&msg.event) {
            self.metrics.rejected("reset_loop");
            return;
        }
        self.metrics.events_accepted.inc();
        // Recorded before it is relayed: an event any socket saw is in the
        // kernel, so a viewer's replay after a `kill -9` is never older
        // than what it was shown.
        self.record(&msg.event.text, ctx);
        self.fan_out(msg.socket, &msg.event.text, ctx);
        let took = msg.received.elapsed();
        self.metrics.fanout_seconds.observe(took.as_secs_f64());
    }
}

impl StreamActor {
    /// Hands an accepted event to the recording, within its quota. A failed
    /// append has been logged by the recording; the event is relayed and in
    /// the replay all the same.
    fn record(&mut self, text: &str, ctx: &mut Context<Self>) {
        if !self.recording_full {
            let line = text.len() as u64 + 1;
            if self.recording.recorded_bytes().saturating_add(line)
                <= self.limits.max_recording_bytes
            {
                if self.recording.append(text).is_ok() {
                    self.metrics.recording_bytes.inc_by(line);
                }
                return;
            }
            self.recording_full = true;
            self.metrics.limit_hit("recording_bytes");
            log::warn!(
                "stream {}: recording stopped at its quota of {} bytes",
                self.id,
                self.limits.max_recording_bytes
            );
        }
        self.checkpoint(ctx);
    }
}

impl Handler<EndStream> for StreamActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: EndStream, _: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(Box::pin(self.end(msg.close)))
    }
}

impl Handler<GetStatus> for StreamActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(StreamStatus {
            sockets: self.members.len(),
            senders: self.connected_senders,
            counting_down: self.countdown.is_some(),
        })
    }
}
