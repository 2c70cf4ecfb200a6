//! The stream actor: one per stream, owning its sockets and fanning out.
//!
//! WebSocket sessions join and leave it and publish their senders' events;
//! it relays each event to every other socket, keeps the [`Replay`] for
//! viewers who join later, hands each accepted event to the stream's
//! recording, and ends the stream when no sender has been connected for the
//! idle timeout. The registry started it, hears when it goes idle or live,
//! and hears when it stops.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use bytestring::ByteString;

use crate::close::{self, Close};
use crate::event::{error_frame, recorded_line, with_offset, Event, EventKind};
use crate::ids::{StreamId, UserId};
use crate::metrics::Metrics;
pub use crate::outbox::{Frame, Outbound, Outbox, Refused};
use crate::rate::TokenBucket;
use crate::replay::Replay;
use crate::store::journal::epoch_ms;
use crate::store::recording::frame_of;
use crate::store::{Chunk, Cursor, Followed, Kept, Recorded, RecordingStore, StoreError};

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
/// The error frame for an event over its sender's rate, encoded once for
/// the stream and the sessions, which refuse such events too.
pub static RATE_LIMITED_FRAME: LazyLock<Frame> =
    LazyLock::new(|| Frame::text(&error_frame(RATE_LIMITED)));
/// The message of the error frame for an event refused because the
/// recording is this far behind (a stalled disk).
pub const STORAGE_BUSY: &str = "storage busy";
/// Events accepted and waiting to be recorded (and then relayed) at most;
/// past it, a stalled disk costs senders their events, not memory.
pub const MAX_UNRECORDED: usize = 4096;
/// Events one write records at most, and so relays at once: after a stall
/// the events waiting go out in steps that viewers' queues can take.
pub const WRITE_BATCH: usize = 64;
/// Recorded events one read for a resuming viewer fetches.
pub const CATCH_UP_CHUNK: usize = 256;
/// Live events held for a viewer while it catches up, at most; past it the
/// viewer is dropped as too slow, as one whose queue is full.
pub const CATCH_UP_HELD: usize = 1024;
/// Times an event is appended to a shared recording before it is refused,
/// each time after another node's event took its offset.
pub const MAX_TRIES: u32 = 4;

/// How often a stream that follows a shared recording, and has sockets
/// here, compares where it is with the recording's end: a feed can lose
/// its last events without a later one showing the gap.
pub const FOLLOW_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Events from the feed held while this node's own append is in flight, at
/// most; past it they are dropped and read back from the recording.
pub const FOLLOW_HELD: usize = 4096;

/// Identifies a socket within the server; the registry hands them out.
pub type SocketId = u64;

/// The socket of an event another node recorded: none here.
const NO_SOCKET: SocketId = SocketId::MAX;

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
    pub outbox: Outbox,
    /// The signed-in user of the socket, if any.
    pub user_id: Option<UserId>,
    /// Cuts the connection when its client stops reading.
    pub disconnect: Option<Arc<dyn Disconnect>>,
    /// For a viewer resuming: the offset of the last event it has. It gets
    /// every event after it instead of the replay (or, if some are no
    /// longer kept, a `gap` frame and then the replay). Senders ignore it.
    pub since: Option<u64>,
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

/// How much the stream's recording holds now.
#[derive(Message)]
#[rtype(result = "RecordingSize")]
pub struct GetRecordingSize;

/// The answer to [`GetRecordingSize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordingSize {
    /// Events recorded.
    pub events: u64,
    /// Bytes recorded.
    pub bytes: u64,
}

/// Deletes what the stream recorded so far; the stream goes on, its replay
/// for late viewers kept, and records again from its next event. Answered
/// once the deletion is on disk.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct ClearRecording;

/// One joined socket.
struct Member {
    /// Where its events go.
    outbox: Outbox,
    /// The sender it belongs to; `None` for a viewer.
    sender: Option<UserId>,
    /// Cuts its connection if it stops reading.
    disconnect: Option<Arc<dyn Disconnect>>,
    /// Set while a resuming viewer is sent recorded events.
    catch_up: Option<CatchUp>,
}

/// A resuming viewer's way through the recording.
struct CatchUp {
    /// The offset of the last event it was sent.
    after: u64,
    /// The last event it is sent from the recording; later ones come live.
    until: u64,
    /// Where the next read goes on from.
    cursor: Cursor,
    /// Live events relayed meanwhile, sent once it has caught up.
    held: Vec<Frame>,
}

/// An accepted event on its way: recorded first, then relayed.
struct Unrecorded {
    /// The socket it came from; it gets no echo.
    from: SocketId,
    /// Its kind, for the replay.
    kind: EventKind,
    /// Its offset.
    offset: u64,
    /// `{"event":…,"data":…}`, as the sender's event was encoded.
    text: ByteString,
    /// The frame sockets get, with its offset.
    frame: ByteString,
    /// When it was received, in ms since the Unix epoch, for its recording.
    received_ms: u64,
    /// When its frame arrived, for the fan-out time.
    received: Instant,
    /// Whether it went to the recording (within its quota).
    recorded: bool,
    /// Appends of it that another node's got in before.
    tries: u32,
    /// Whether it has its offset (and was counted against its sender's
    /// rate); on a followed recording that waits for its append.
    admitted: bool,
    /// Its sender, on a followed recording.
    by: Option<UserId>,
}

/// One stream: its sockets, its replay, its countdown and recording.
///
/// An accepted event is recorded before it is relayed, so that an event
/// any socket saw is in the recording (in the kernel, which a `kill -9`
/// does not lose) and a viewer's replay after a restart is never older
/// than what it was shown. The recording is written on the store's own
/// threads: the events accepted meanwhile queue up and go to the
/// recording in one write once the last one finished, and the stream's
/// thread never waits for a disk.
pub struct StreamActor {
    /// The stream's ID.
    id: StreamId,
    /// Users allowed to send.
    senders: Vec<UserId>,
    /// Joined sockets by ID.
    members: HashMap<SocketId, Member>,
    /// How many joined sockets are senders; the countdown runs while this is zero.
    connected_senders: usize,
    /// The replay as of the last relayed event: what viewers get and the
    /// snapshot keeps.
    replay: Replay,
    /// The replay as of the last accepted event, relayed or not: it gives
    /// offsets and applies the reset loop guard in the order events came.
    head: Replay,
    /// Accepted events waiting for the write in flight to finish.
    unrecorded: Vec<Unrecorded>,
    /// Whether a write (and its events' relay) is in flight.
    writing: bool,
    /// Sessions waiting for the recording to be cleared.
    clearing: Vec<tokio::sync::oneshot::Sender<Result<(), StoreError>>>,
    /// Told once nothing is waiting to be recorded.
    flushed: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Which offsets the recording holds.
    kept: Kept,
    /// Bytes handed to the recording, for its quota.
    recorded_bytes: u64,
    /// Events accepted when the last snapshot was kept.
    checkpointed: u64,
    /// Whether a snapshot is being written.
    checkpointing: bool,
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
    /// The error frame for an event refused while the recording is behind.
    storage_busy: Frame,
    /// Set once the recording reached its quota: events are no longer
    /// recorded, and the snapshot is kept with each write instead, so that
    /// the replay and the offsets still survive a crash.
    recording_full: bool,
    /// Told when the stream goes idle or live, expires, and stops.
    registry: Option<Recipient<StreamNotice>>,
    /// Set once the stream is ending, to how its sockets are closed: it
    /// takes no new sockets or events then, and tells them why.
    ending: Option<Close>,
    /// Since when no sender has been connected, for the first countdown.
    idle_since: Option<SystemTime>,
    /// Set when the recording is shared with other nodes (cluster mode):
    /// the stream relays what they record, and its own appends can be
    /// refused for theirs.
    following: bool,
    /// Events from other nodes held while an append of this node's own is
    /// in flight, in the order they came.
    remote: VecDeque<Remote>,
    /// Set while the recording is read for events the feed missed.
    repairing: bool,
    /// Set when the feed may have missed events: the recording is read
    /// for them as soon as no append is in flight.
    behind: bool,
    /// Set when the recording could not be opened: opened again on the
    /// next check, before anything else is read from it.
    reopen: bool,
    /// Set when the last read of the recording reached its end, and no
    /// event was taken since: an event still ahead of the stream then is
    /// not preceded by any the recording has.
    read_to_end: bool,
    /// Set when this node appended to the recording since its last
    /// snapshot.
    appended: bool,
    /// Set while events wait for the recording to be read on, after
    /// another node's append took their offsets.
    rebasing: bool,
}

/// An event another node recorded, as the feed or a read gave it.
struct Remote {
    /// Its offset, text and time.
    recorded: Recorded,
    /// Its kind, for the replay.
    kind: EventKind,
    /// Bytes of its recording line, for the quota.
    bytes: u64,
    /// Whose it is, where the node that recorded it said so.
    sender: Option<UserId>,
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
            head: Replay::default(),
            unrecorded: Vec::new(),
            writing: false,
            clearing: Vec::new(),
            flushed: Vec::new(),
            kept: Kept::default(),
            recorded_bytes: 0,
            checkpointed: 0,
            checkpointing: false,
            idle_timeout: setup.idle_timeout,
            countdown: None,
            recording: setup.recording,
            limits: setup.limits,
            metrics: setup.metrics,
            budgets: HashMap::new(),
            storage_busy: Frame::text(&error_frame(STORAGE_BUSY)),
            recording_full: false,
            registry: setup.registry,
            ending: None,
            idle_since: setup.idle_since,
            following: false,
            remote: VecDeque::new(),
            repairing: false,
            behind: false,
            reopen: false,
            read_to_end: false,
            appended: false,
            rebasing: false,
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
                None => {
                    let end = actor.end(close::STREAM_ENDED);
                    ctx.spawn(end);
                }
            }
        }));
    }

    /// Records and relays what was accepted, keeps the replay and syncs the
    /// recording, then closes every socket with `close` and stops: the
    /// recording is on disk before the sockets hear of the end, and before
    /// a shutdown goes on.
    fn end(&mut self, close: Close) -> impl ActorFuture<Self, Output = ()> {
        self.ending = Some(close);
        let flushed = self.flushed();
        async move {
            let _ = flushed.await;
        }
        .into_actor(self)
        .then(|(), actor, _| {
            // Of a shared recording, the nodes that appended since their
            // last snapshot keep it (another's would say less).
            let checkpoint = (!actor.following || actor.appended).then(|| {
                actor
                    .recording
                    .checkpoint(&actor.replay.snapshot(), actor.kept)
            });
            let sync = actor.recording.sync();
            async move {
                // Each store logs its own failure; the end goes on regardless.
                if let Some(checkpoint) = checkpoint {
                    let _ = checkpoint.await;
                }
                let _ = sync.await;
            }
            .into_actor(actor)
        })
        .map(move |(), actor, ctx| {
            for (_, member) in actor.members.drain() {
                actor.metrics.role(member.sender.is_some()).dec();
                // `do_send` on purpose: the close must get through even to a
                // socket whose queue is full.
                member.outbox.push(Outbound::Close(close));
            }
            actor.connected_senders = 0;
            ctx.stop();
        })
    }

    /// Resolves once every accepted event was recorded and relayed.
    fn flushed(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.writing || !self.unrecorded.is_empty() {
            self.flushed.push(tx);
        } else {
            let _ = tx.send(());
        }
        rx
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
        // Past the quota every write keeps a snapshot of its own. Of a
        // shared recording, the nodes that appended keep it: the others'
        // would say the same, or less.
        if accepted == self.checkpointed
            || self.checkpointing
            || self.recording_full
            || (self.following && !self.appended)
        {
            return;
        }
        self.appended = false;
        self.checkpointing = true;
        let kept = self
            .recording
            .checkpoint(&self.replay.snapshot(), self.kept);
        ctx.spawn(kept.into_actor(self).map(move |kept, actor, ctx| {
            actor.checkpointing = false;
            if kept.is_ok() {
                actor.checkpointed = accepted;
            }
            actor.write_next(ctx);
        }));
    }

    /// Starts the next write, unless one is in flight: a clearing asked
    /// for, else every accepted event not yet recorded, in one write.
    /// Their relay follows once it finished.
    fn write_next(&mut self, ctx: &mut Context<Self>) {
        // Nor while the recording is read for other nodes' events: an
        // event of this node's appended meanwhile could be read back as
        // theirs.
        if self.writing
            || self.repairing
            || self.rebasing
            || (self.checkpointing && self.snapshot_next())
        {
            // A write that keeps a snapshot waits for the one being kept:
            // two at once could land in either order.
            return;
        }
        if !self.clearing.is_empty() {
            self.writing = true;
            let kept = Kept::from_next(self.replay.accepted() + 1);
            let cleared = self.recording.clear(&self.replay.snapshot(), kept);
            ctx.spawn(cleared.into_actor(self).map(move |cleared, actor, ctx| {
                actor.writing = false;
                if cleared.is_ok() {
                    log::info!("stream {}: recording deleted", actor.id);
                    actor.kept = kept;
                    actor.recorded_bytes = 0;
                    actor.recording_full = false;
                    actor.checkpointed = actor.replay.accepted();
                }
                for waiter in actor.clearing.drain(..) {
                    let _ = waiter.send(cleared.clone());
                }
                actor.write_next(ctx);
            }));
            return;
        }
        if self.unrecorded.is_empty() {
            for waiter in self.flushed.drain(..) {
                let _ = waiter.send(());
            }
            return;
        }
        // A shared recording takes one event per append, so that a refusal
        // (another node appended first, NATS went away) is of one event,
        // never of part of a write.
        while self.following && !self.admit_next() {}
        if self.unrecorded.is_empty() {
            // Every event waiting was refused.
            for waiter in self.flushed.drain(..) {
                let _ = waiter.send(());
            }
            return;
        }
        let most = if self.following { 1 } else { WRITE_BATCH };
        let take = self.unrecorded.len().min(most);
        let mut batch: Vec<Unrecorded> = self.unrecorded.drain(..take).collect();
        let mut lines = Vec::new();
        for event in &mut batch {
            if self.recording_full {
                break;
            }
            let line = recorded_line(&event.text, event.offset, event.received_ms);
            let bytes = line.len() as u64;
            if self.recorded_bytes.saturating_add(bytes) > self.limits.max_recording_bytes {
                self.recording_full = true;
                self.metrics.limit_hit("recording_bytes");
                log::warn!(
                    "stream {}: recording stopped at its quota of {} bytes",
                    self.id,
                    self.limits.max_recording_bytes
                );
                break;
            }
            self.recorded_bytes += bytes;
            lines.extend_from_slice(line.as_bytes());
            event.recorded = true;
        }
        let attempted = lines.len() as u64;
        // A followed recording takes one event at a time: its sender's.
        let sender = batch
            .first()
            .and_then(|event| self.members.get(&event.from))
            .and_then(|member| member.sender.clone());
        let appended = (!lines.is_empty()).then(|| match (&sender, self.following) {
            (Some(sender), true) => self.recording.append_sent(lines, sender),
            _ => self.recording.append(lines),
        });
        // Events past the quota are kept only in the snapshot, which must
        // then hold them before they are relayed.
        let mut kept = self.kept;
        for event in batch.iter().filter(|e| e.recorded) {
            kept.extend(event.offset);
        }
        let snapshot = batch
            .iter()
            .any(|e| !e.recorded)
            .then(|| self.recording.checkpoint(&self.head.snapshot(), kept));
        // Other nodes hear of them all the same.
        let passed_on = (self.following && batch.iter().any(|e| !e.recorded)).then(|| {
            let lines: Vec<u8> = batch
                .iter()
                .filter(|e| !e.recorded)
                .flat_map(|e| recorded_line(&e.text, e.offset, e.received_ms).into_bytes())
                .collect();
            self.recording.pass_on(lines)
        });
        self.writing = true;
        let written = async move {
            let appended = match appended {
                Some(append) => append.await,
                None => Ok(()),
            };
            if let Some(snapshot) = snapshot {
                let _ = snapshot.await;
            }
            match passed_on {
                Some(passed_on) if appended.is_ok() => passed_on.await,
                _ => appended,
            }
        };
        ctx.spawn(written.into_actor(self).map(move |appended, actor, ctx| {
            actor.writing = false;
            match appended {
                Ok(()) => {
                    actor.kept = kept;
                    actor.appended = true;
                    actor.metrics.recording_bytes.inc_by(attempted);
                }
                // On a shared recording, what other nodes cannot read is
                // not relayed: the senders hear that it was refused, and
                // the stream reads on from the recording.
                // Another node appended first: its events are read, and
                // these go after them (a few times at most).
                Err(StoreError::Conflict(_)) if actor.following => {
                    actor.recorded_bytes -= attempted;
                    let (retried, refused): (Vec<_>, Vec<_>) =
                        batch.into_iter().partition(|event| event.tries < MAX_TRIES);
                    actor.tell_refused(&refused, &StoreError::Conflict(String::new()));
                    for mut event in retried.into_iter().rev() {
                        // Counted and given an offset again after the
                        // events read first.
                        if let Some(budget) =
                            event.by.as_ref().and_then(|by| actor.budgets.get_mut(by))
                        {
                            budget.give_back();
                        }
                        event.admitted = false;
                        event.recorded = false;
                        event.tries += 1;
                        actor.unrecorded.insert(0, event);
                    }
                    actor.head = actor.replay.clone();
                    actor.rebasing = true;
                    actor.behind = true;
                    actor.write_next(ctx);
                    actor.follow_on(ctx);
                    return;
                }
                Err(e) if actor.following => {
                    actor.recorded_bytes -= attempted;
                    actor.refuse_unrecorded(batch, &e);
                    actor.write_next(ctx);
                    actor.follow_on(ctx);
                    return;
                }
                // Logged by the recording. The events are relayed all the
                // same; the recording has a hole where they would be.
                Err(_) => actor.recorded_bytes -= attempted,
            }
            for event in batch {
                actor.relay(event, ctx);
            }
            actor.write_next(ctx);
            actor.follow_on(ctx);
        }));
    }

    /// Whether the next write keeps a snapshot: a clearing does, and so do
    /// events past the quota.
    fn snapshot_next(&self) -> bool {
        let waiting: u64 = self
            .unrecorded
            .iter()
            .map(|e| e.text.len() as u64 + 64)
            .sum();
        !self.clearing.is_empty()
            || self.recording_full
            || self.recorded_bytes.saturating_add(waiting) > self.limits.max_recording_bytes
    }

    /// Tells the senders of `batch` and of every event accepted after it
    /// that theirs were refused for `error`, and takes the stream back to
    /// its last relayed event: the events after it had offsets that
    /// followed the refused ones.
    fn refuse_unrecorded(&mut self, batch: Vec<Unrecorded>, error: &StoreError) {
        let refused: Vec<Unrecorded> = batch.into_iter().chain(self.unrecorded.drain(..)).collect();
        self.tell_refused(&refused, error);
        self.head = self.replay.clone();
        self.behind = true;
    }

    /// Tells the senders of `refused` that their events were refused for
    /// `error`, one error frame each.
    fn tell_refused(&mut self, refused: &[Unrecorded], error: &StoreError) {
        if refused.is_empty() {
            return;
        }
        let frame = Frame::text(&error_frame(error.public_message()));
        for event in refused {
            self.metrics.rejected("storage_unavailable");
            if let Some(member) = self.members.get(&event.from) {
                let _ = member.outbox.try_send(frame.clone());
            }
        }
        log::warn!(
            "stream {}: {} events refused: {error}",
            self.id,
            refused.len()
        );
    }

    /// Lets the events that lost their offsets to another node's go on,
    /// now that the recording was read to its end: each is counted and
    /// given its offset again when its turn comes.
    fn rebase(&mut self) {
        self.rebasing = false;
        self.head = self.replay.clone();
    }

    /// On a followed recording, counts the next waiting event against its
    /// sender's rate and gives it the offset after the last event here;
    /// `false` if it was refused (and taken out), `true` if it may go (or
    /// nothing waits).
    fn admit_next(&mut self) -> bool {
        let Some(event) = self.unrecorded.first_mut() else {
            return true;
        };
        if event.admitted {
            return true;
        }
        let now = Instant::now();
        let limits = self.limits;
        let over_rate = event.by.as_ref().is_some_and(|by| {
            !self
                .budgets
                .entry(by.clone())
                .or_insert_with(|| TokenBucket::new(limits.events_per_sec, limits.event_burst, now))
                .take(now)
        });
        let offset = if over_rate {
            None
        } else {
            self.head.admit(event.kind)
        };
        let Some(offset) = offset else {
            let event = self.unrecorded.remove(0);
            if over_rate {
                self.metrics.rejected("rate_limited");
                self.metrics.limit_hit("sender_events");
                if let Some(member) = self.members.get(&event.from) {
                    let _ = member.outbox.try_send(RATE_LIMITED_FRAME.clone());
                }
            } else {
                self.metrics.rejected("reset_loop");
            }
            return false;
        };
        if event.tries == 0 {
            self.metrics.events_accepted.inc();
        }
        event.offset = offset;
        event.frame = with_offset(&event.text, offset);
        event.admitted = true;
        self.head.remember(event.kind, offset, event.frame.clone());
        true
    }

    /// Relays what other nodes recorded, in order, once no append of this
    /// node's is in flight: the events the feed gave, and, where it left a
    /// gap, the recording's.
    fn follow_on(&mut self, ctx: &mut Context<Self>) {
        if !self.following
            || self.writing
            || self.repairing
            || (!self.unrecorded.is_empty() && !self.rebasing)
            || self.ending.is_some()
        {
            return;
        }
        if self.reopen {
            self.open_again(ctx);
            return;
        }
        while !self.behind {
            let Some(event) = self.remote.pop_front() else {
                break;
            };
            let next = self.replay.accepted() + 1;
            if event.recorded.offset < next {
                continue;
            }
            if event.recorded.offset > next {
                if !self.read_to_end {
                    // Read back first; the event waits for the read.
                    self.remote.push_front(event);
                    self.behind = true;
                    break;
                }
                // The recording was read to its end since the event came
                // and does not have the ones before it (deleted, or past
                // its quota): the viewers hear which they miss.
                log::warn!(
                    "stream {}: feed jumped from {} to {}; the recording has nothing between",
                    self.id,
                    next - 1,
                    event.recorded.offset
                );
                let gap = gap_frame(next - 1, event.recorded.offset - 1);
                self.fan_out(NO_SOCKET, &Frame::text(&gap), ctx);
            }
            self.read_to_end = false;
            self.take_remote(event, ctx);
        }
        if self.behind {
            self.repair(ctx);
        }
    }

    /// Takes the event another node recorded after the last one here:
    /// into the replay and the offsets kept, then to every socket.
    fn take_remote(&mut self, event: Remote, ctx: &mut Context<Self>) {
        let Remote {
            recorded,
            kind,
            bytes,
            sender,
        } = event;
        // One sender's budget is shared by their sockets on every node:
        // what they sent elsewhere counts here too.
        if let Some(sender) = sender.filter(|sender| self.senders.contains(sender)) {
            let limits = self.limits;
            let now = Instant::now();
            self.budgets
                .entry(sender)
                .or_insert_with(|| TokenBucket::new(limits.events_per_sec, limits.event_burst, now))
                .charge(now);
        }
        let frame = frame_of(&recorded);
        self.head.remember(kind, recorded.offset, frame.clone());
        self.kept.extend(recorded.offset);
        self.recorded_bytes += bytes;
        self.relay(
            Unrecorded {
                from: NO_SOCKET,
                kind,
                offset: recorded.offset,
                text: recorded.text,
                frame,
                received_ms: recorded.received_ms.unwrap_or_default(),
                received: Instant::now(),
                recorded: true,
                tries: 0,
                admitted: true,
                by: None,
            },
            ctx,
        );
    }

    /// Reads the recording on from the last event here, for what the feed
    /// missed; relays it, then goes on with the feed.
    fn repair(&mut self, ctx: &mut Context<Self>) {
        self.repairing = true;
        self.behind = false;
        self.read_to_end = false;
        let after = self.replay.accepted();
        let read = self
            .recording
            .read(after, Cursor::default(), CATCH_UP_CHUNK);
        ctx.spawn(read.into_actor(self).map(move |read, actor, ctx| {
            actor.repairing = false;
            let chunk = match read {
                Ok(chunk) => chunk,
                Err(e) => {
                    // The next check (a reconnect, the interval) tries again;
                    // events waiting to go after what it reads cannot.
                    log::debug!("stream {}: cannot read on from {after}: {e}", actor.id);
                    if actor.rebasing {
                        actor.rebasing = false;
                        actor.refuse_unrecorded(Vec::new(), &e);
                    }
                    actor.write_next(ctx);
                    return;
                }
            };
            let mut repaired = false;
            for recorded in chunk.events {
                let next = actor.replay.accepted() + 1;
                if recorded.offset < next {
                    continue;
                }
                if recorded.offset > next {
                    // Not in the recording either (deleted, or past its
                    // quota): the viewers hear which events they miss.
                    log::warn!(
                        "stream {}: the recording jumps from {} to {}",
                        actor.id,
                        next - 1,
                        recorded.offset
                    );
                    let gap = gap_frame(next - 1, recorded.offset - 1);
                    actor.fan_out(NO_SOCKET, &Frame::text(&gap), ctx);
                }
                let Ok(parsed) = crate::event::parse_recorded(&recorded.text) else {
                    continue;
                };
                let bytes = recorded_line(
                    &recorded.text,
                    recorded.offset,
                    recorded.received_ms.unwrap_or_default(),
                )
                .len() as u64;
                let remote = Remote {
                    kind: parsed.event.kind,
                    sender: recorded.sender.clone(),
                    recorded,
                    bytes,
                };
                actor.take_remote(remote, ctx);
                repaired = true;
            }
            if repaired {
                actor.metrics.gaps_repaired.inc();
            }
            // More to read: on at once.
            actor.behind = !chunk.done;
            actor.read_to_end = chunk.done;
            if chunk.done && actor.rebasing {
                actor.rebase();
            }
            actor.write_next(ctx);
            actor.follow_on(ctx);
        }));
    }

    /// Opens the recording again after it could not be opened at the
    /// start, unless events came meanwhile (then it is read on from them).
    fn open_again(&mut self, ctx: &mut Context<Self>) {
        self.repairing = true;
        let opened = self.recording.open();
        ctx.spawn(opened.into_actor(self).map(|opened, actor, ctx| {
            actor.repairing = false;
            let Ok(opened) = opened else {
                actor.write_next(ctx);
                return;
            };
            actor.reopen = false;
            if actor.head.accepted() == 0 && actor.replay.accepted() == 0 {
                actor.install(opened);
            } else {
                actor.behind = true;
            }
            actor.write_next(ctx);
            actor.follow_on(ctx);
        }));
    }

    /// Takes what an opened recording holds as the stream's state.
    fn install(&mut self, opened: crate::store::Opened) {
        self.checkpointed = opened.replay.accepted();
        self.head = opened.replay.clone();
        self.replay = opened.replay;
        self.kept = opened.kept;
        self.recorded_bytes = opened.bytes;
    }

    /// Relays a recorded event to every socket but its sender's.
    fn relay(&mut self, event: Unrecorded, ctx: &mut Context<Self>) {
        // Encoded once here, for every socket.
        let frame = Frame::text(&event.frame);
        self.replay.remember(event.kind, event.offset, event.frame);
        self.fan_out(event.from, &frame, ctx);
        let took = event.received.elapsed();
        self.metrics.fanout_seconds.observe(took.as_secs_f64());
    }

    /// Hands `text` to every socket but `from`; drops those that are full or gone.
    fn fan_out(&mut self, from: SocketId, frame: &Frame, ctx: &mut Context<Self>) {
        let mut dropped = Vec::new();
        let mut delivered = 0;
        for (&socket, member) in &mut self.members {
            if socket == from {
                continue;
            }
            if let Some(catch_up) = &mut member.catch_up {
                if catch_up.held.len() < CATCH_UP_HELD {
                    catch_up.held.push(frame.clone());
                    delivered += 1;
                } else {
                    dropped.push((socket, true));
                }
                continue;
            }
            match member.outbox.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(Refused::Full) => dropped.push((socket, true)),
                Err(Refused::Gone) => dropped.push((socket, false)),
            }
        }
        // One add per event, not one per delivery.
        self.metrics.deliveries.inc_by(delivered);
        for (socket, full) in dropped {
            self.drop_member(socket, full, ctx);
        }
    }

    /// Takes a socket out; one that fell behind is told so and cut off.
    fn drop_member(&mut self, socket: SocketId, too_slow: bool, ctx: &mut Context<Self>) {
        let Some(member) = self.remove(socket, ctx) else {
            return;
        };
        if too_slow {
            self.metrics.limit_hit("queued_events");
            log::info!(
                "stream {}: dropping socket {socket}: {}",
                self.id,
                close::TOO_SLOW.reason
            );
            // The close frame reaches a client that reads again; one
            // that does not is cut off, since its session cannot run.
            member.outbox.push(Outbound::Close(close::TOO_SLOW));
            if let Some(disconnect) = &member.disconnect {
                disconnect.disconnect();
            }
        }
    }

    /// What a joining viewer gets first: the replay, every event since its
    /// `since` (started here, sent as it is read), or a gap and the replay.
    fn welcome(&mut self, socket: SocketId, since: Option<u64>, ctx: &mut Context<Self>) {
        let latest = self.replay.accepted();
        let Some(member) = self.members.get_mut(&socket) else {
            return;
        };
        match since {
            None => {
                for text in self.replay.frames() {
                    // At most three frames, so pushing past the queue's
                    // bound costs little, and the replay is never cut short.
                    member.outbox.push(Outbound::Event(Frame::text(text)));
                }
            }
            Some(since) if since >= latest => {}
            Some(since) if self.kept.covers(since, latest) => {
                member.catch_up = Some(CatchUp {
                    after: since,
                    until: latest,
                    cursor: Cursor::default(),
                    held: Vec::new(),
                });
                self.catch_up(socket, ctx);
            }
            Some(since) => {
                let frames = gap_then_replay(&self.replay, since, latest);
                member.outbox.push(Outbound::Batch(frames));
            }
        }
    }

    /// Reads the next part of the recording for a viewer catching up.
    fn catch_up(&mut self, socket: SocketId, ctx: &mut Context<Self>) {
        let Some(catch_up) = self.members.get(&socket).and_then(|m| m.catch_up.as_ref()) else {
            return;
        };
        let read = self
            .recording
            .read(catch_up.after, catch_up.cursor, CATCH_UP_CHUNK);
        ctx.spawn(read.into_actor(self).map(move |read, actor, ctx| {
            actor.caught_up_with(socket, read, ctx);
        }));
    }

    /// Sends a viewer what was read for it, then reads on, or ends its
    /// catching up: with the live events held meanwhile, or, if the
    /// recording has a hole, a gap frame and the replay first.
    fn caught_up_with(
        &mut self,
        socket: SocketId,
        read: Result<Chunk, StoreError>,
        ctx: &mut Context<Self>,
    ) {
        let replay = &self.replay;
        let Some(member) = self.members.get_mut(&socket) else {
            return;
        };
        let Some(catch_up) = member.catch_up.as_mut() else {
            return;
        };
        let mut frames = Vec::new();
        let mut hole = read.is_err();
        if let Ok(chunk) = &read {
            for event in chunk
                .events
                .iter()
                .take_while(|e| e.offset <= catch_up.until)
            {
                if event.offset != catch_up.after + 1 {
                    hole = true;
                    break;
                }
                frames.push(Frame::text(&frame_of(event)));
                catch_up.after = event.offset;
            }
            catch_up.cursor = chunk.next;
            // The recording ended before the viewer caught up.
            hole |= chunk.done && catch_up.after < catch_up.until && frames.is_empty();
        }
        let finished = hole || catch_up.after >= catch_up.until;
        if hole {
            frames.extend(gap_then_replay(replay, catch_up.after, catch_up.until));
        }
        if finished {
            let held = std::mem::take(&mut catch_up.held);
            member.catch_up = None;
            frames.extend(held);
        }
        let sent = member.outbox.send_batch(frames);
        ctx.spawn(sent.into_actor(self).map(move |sent, actor, ctx| {
            if sent.is_err() {
                actor.drop_member(socket, false, ctx);
            } else if !finished {
                actor.catch_up(socket, ctx);
            }
        }));
    }
}

/// A `gap` frame for the events after `after` up to `until`, then the
/// replay's frames among them: the state as of `until` for a viewer that
/// cannot have every event.
fn gap_then_replay(replay: &Replay, after: u64, until: u64) -> Vec<Frame> {
    let mut frames = vec![Frame::text(&gap_frame(after, until))];
    frames.extend(
        replay
            .frames_between(after, until)
            .map(|text| Frame::text(text)),
    );
    frames
}

/// A `gap` frame for the events after `after` up to `until`.
fn gap_frame(after: u64, until: u64) -> ByteString {
    ByteString::from(format!(
        r#"{{"event":"gap","data":{{"from":{},"to":{until}}}}}"#,
        after + 1
    ))
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
        ctx.wait(opened.into_actor(self).map(|opened, actor, ctx| {
            // A recording that cannot be opened has logged why; the stream
            // goes on live, without its earlier replay (a shared one is
            // opened again at the next check).
            match opened {
                Ok(opened) => actor.install(opened),
                Err(_) => actor.reopen = true,
            }
            if let Some(feed) = actor.recording.follow() {
                actor.following = true;
                ctx.add_stream(feed);
                ctx.run_interval(FOLLOW_CHECK_INTERVAL, |actor, ctx| {
                    if !actor.members.is_empty() || actor.reopen {
                        actor.behind = true;
                        actor.follow_on(ctx);
                    }
                });
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

impl StreamHandler<Followed> for StreamActor {
    fn handle(&mut self, followed: Followed, ctx: &mut Self::Context) {
        match followed {
            Followed::Check => self.behind = true,
            Followed::Event {
                recorded,
                kind,
                bytes,
            } => {
                // At or before the last event accepted here: this node's
                // own, or one whose append refused this node's, which the
                // refusal reads back from the recording.
                if recorded.offset <= self.head.accepted() {
                    return;
                }
                if self.remote.len() >= FOLLOW_HELD {
                    // Read back from the recording instead.
                    self.remote.truncate(1);
                    self.behind = true;
                } else {
                    self.remote.push_back(Remote {
                        sender: recorded.sender.clone(),
                        recorded,
                        kind,
                        bytes,
                    });
                }
            }
        }
        self.follow_on(ctx);
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // Not the stream's end: the interval reads on from the recording.
        log::warn!("stream {}: its recording's feed ended", self.id);
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
        let is_sender = sender.is_some();
        self.metrics.role(is_sender).inc();
        if is_sender {
            self.connected_senders += 1;
            if let Some(countdown) = self.countdown.take() {
                ctx.cancel_future(countdown);
                self.notify(StreamNotice::Live {
                    id: self.id.clone(),
                });
            }
        }
        self.members.insert(
            msg.socket,
            Member {
                outbox: msg.outbox,
                sender,
                disconnect: msg.disconnect,
                catch_up: None,
            },
        );
        if !is_sender {
            self.welcome(msg.socket, msg.since, ctx);
        }
        Ok(Joined {
            socket: msg.socket,
            sender: is_sender,
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
        if self.ending.is_some() {
            // Its socket is about to hear that the stream ended.
            return;
        }
        let Some(member) = self.members.get(&msg.socket) else {
            return;
        };
        let Some(user) = &member.sender else { return };
        if self.following {
            // Checked and given its offset when its turn to be appended
            // comes: only then has this node read every event before it.
            if self.unrecorded.len() >= MAX_UNRECORDED {
                self.metrics.rejected("storage_busy");
                let _ = member.outbox.try_send(self.storage_busy.clone());
                return;
            }
            self.unrecorded.push(Unrecorded {
                from: msg.socket,
                by: Some(user.clone()),
                kind: msg.event.kind,
                offset: 0,
                text: msg.event.text,
                frame: ByteString::new(),
                received_ms: epoch_ms(SystemTime::now()),
                received: msg.received,
                recorded: false,
                tries: 0,
                admitted: false,
            });
            self.write_next(ctx);
            return;
        }
        let limits = self.limits;
        let budget = self.budgets.entry(user.clone()).or_insert_with(|| {
            TokenBucket::new(limits.events_per_sec, limits.event_burst, Instant::now())
        });
        if !budget.take(Instant::now()) {
            self.metrics.rejected("rate_limited");
            self.metrics.limit_hit("sender_events");
            // One error frame per dropped event; a sender not reading its
            // own socket loses them rather than growing its outbox.
            let _ = member.outbox.try_send(RATE_LIMITED_FRAME.clone());
            return;
        }
        if self.unrecorded.len() >= MAX_UNRECORDED {
            self.metrics.rejected("storage_busy");
            let _ = member.outbox.try_send(self.storage_busy.clone());
            return;
        }
        let Some(offset) = self.head.admit(msg.event.kind) else {
            self.metrics.rejected("reset_loop");
            return;
        };
        self.metrics.events_accepted.inc();
        let frame = with_offset(&msg.event.text, offset);
        self.head.remember(msg.event.kind, offset, frame.clone());
        self.unrecorded.push(Unrecorded {
            from: msg.socket,
            by: None,
            kind: msg.event.kind,
            offset,
            text: msg.event.text,
            frame,
            received_ms: epoch_ms(SystemTime::now()),
            received: msg.received,
            recorded: false,
            tries: 0,
            admitted: true,
        });
        self.write_next(ctx);
    }
}

impl Handler<ClearRecording> for StreamActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: ClearRecording, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.clearing.push(tx);
        self.write_next(ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Failed("the stream ended".to_owned())))
        })
    }
}

impl Handler<EndStream> for StreamActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: EndStream, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.end(msg.close))
    }
}

impl Handler<GetRecordingSize> for StreamActor {
    type Result = MessageResult<GetRecordingSize>;

    fn handle(&mut self, _: GetRecordingSize, _: &mut Self::Context) -> Self::Result {
        MessageResult(RecordingSize {
            events: self.kept.events,
            bytes: self.recording.recorded_bytes(),
        })
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
