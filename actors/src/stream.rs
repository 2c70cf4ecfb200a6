//! The stream actor: one per stream, owning its sockets and its latest state.
//!
//! WebSocket sessions join and leave it and publish their senders' events; it
//! relays each event to every other socket, remembers the last reset,
//! orientation and move for viewers who join later, records every accepted
//! event, and ends the stream when no sender has been connected for the idle
//! timeout. The registry created it, hears when it goes idle or live (to keep
//! that on disk), and hears when it stops. A stream restored after a restart
//! rebuilds its last events from its recording.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use bytestring::ByteString;

use crate::event::{parse_event, Event, EventKind};

/// Close code for a stream that ended normally.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close reason sent to every socket when the idle countdown runs out.
pub const STREAM_ENDED: &str = "stream ended";
/// Close code for a socket dropped by policy (a viewer sending, a reader too slow).
pub const CLOSE_POLICY: u16 = 1008;
/// Close reason for a socket whose queue of unsent events filled up.
pub const TOO_SLOW: &str = "too many unsent events";

/// Messages a stream's mailbox holds before publishing senders must wait.
pub const MAILBOX_CAPACITY: usize = 1024;

/// Identifies a socket within its stream.
pub type SocketId = u64;

/// What a stream tells one of its sockets.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Outbound {
    /// An event to write to the socket as a text frame.
    Event(ByteString),
    /// Close the socket with this code and reason.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
}

/// Cuts a socket's connection from outside its session: for a session that
/// cannot run because its client stopped reading.
pub trait Disconnect: Send + Sync {
    /// Cuts the connection; the session is then dropped by the server.
    fn disconnect(&self);
}

/// Adds a socket to the stream; a sender if `user_id` is a permitted sender.
#[derive(Message)]
#[rtype(result = "Result<Joined, Ended>")]
pub struct Join {
    /// Where the stream sends this socket its events; a bounded mailbox.
    pub outbox: Recipient<Outbound>,
    /// The signed-in user of the socket, if any.
    pub user_id: Option<String>,
    /// Cuts the connection when its mailbox is full; `None` where there is
    /// no connection to cut (tests).
    pub disconnect: Option<Arc<dyn Disconnect>>,
}

/// How a socket joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The socket's ID, for `Leave` and `Publish`.
    pub socket: SocketId,
    /// Whether the socket may send events.
    pub sender: bool,
}

/// The stream has ended; nothing more can join it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended;

/// Removes a socket from the stream.
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
}

/// Ends the stream now: every socket is closed with this code and reason.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndStream {
    /// WebSocket close code for the sockets.
    pub code: u16,
    /// Close reason for the sockets.
    pub reason: &'static str,
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
        id: String,
    },
    /// The last sender left at `since`: the countdown started.
    Idle {
        /// The stream.
        id: String,
        /// When the last sender left.
        since: SystemTime,
    },
    /// The countdown ran out. The registry forgets the stream, then ends it
    /// with [`EndStream`], so nobody finds a stream whose sockets were told
    /// it ended. The stream takes no new sockets meanwhile.
    Expired {
        /// The stream.
        id: String,
    },
    /// The stream actor stopped, for whatever reason.
    Stopped {
        /// The stream.
        id: String,
    },
}

/// Everything a stream actor is made from.
pub struct StreamSetup {
    /// The stream's ID.
    pub id: String,
    /// User IDs allowed to send.
    pub senders: Vec<String>,
    /// How long the stream lives without a connected sender.
    pub idle_timeout: Duration,
    /// Where the recording goes (`{data}/log/streams/{id}.log`); none in tests that need no file.
    pub recording: Option<PathBuf>,
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
    outbox: Recipient<Outbound>,
    sender: bool,
    disconnect: Option<Arc<dyn Disconnect>>,
}

/// One stream: its sockets, its latest state, its countdown and recording.
pub struct StreamActor {
    /// The stream's ID.
    id: String,
    /// User IDs allowed to send.
    senders: Vec<String>,
    /// Joined sockets by ID.
    members: HashMap<SocketId, Member>,
    /// The ID the next socket gets.
    next_socket: SocketId,
    /// How many joined sockets are senders; the countdown runs while this is zero.
    connected_senders: usize,
    /// Last accepted reset, replayed first to a new viewer.
    last_reset: Option<ByteString>,
    /// Last accepted orientation, replayed second.
    last_orientation: Option<ByteString>,
    /// Last accepted move, replayed third.
    last_move: Option<ByteString>,
    /// Kind of the last accepted event, for the reset loop guard.
    last_kind: Option<EventKind>,
    /// How long the stream lives without a connected sender.
    idle_timeout: Duration,
    /// The running idle countdown, if no sender is connected.
    countdown: Option<SpawnHandle>,
    /// Where the recording goes.
    recording_path: Option<PathBuf>,
    /// The open recording; `None` until started, or if it could not be opened.
    recording: Option<File>,
    /// Told when the stream goes idle or live, expires, and stops.
    registry: Option<Recipient<StreamNotice>>,
    /// Set when the countdown ran out: no new sockets, the end is coming.
    expired: bool,
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
            next_socket: 0,
            connected_senders: 0,
            last_reset: None,
            last_orientation: None,
            last_move: None,
            last_kind: None,
            idle_timeout: setup.idle_timeout,
            countdown: None,
            recording_path: setup.recording,
            recording: None,
            registry: setup.registry,
            expired: false,
            idle_since: setup.idle_since,
        }
    }

    /// Starts the idle countdown for a stream idle since `since`.
    fn start_countdown(&mut self, since: SystemTime, ctx: &mut Context<Self>) {
        if self.countdown.is_none() {
            let idle_for = SystemTime::now().duration_since(since).unwrap_or_default();
            let left = self.idle_timeout.saturating_sub(idle_for);
            self.countdown = Some(ctx.run_later(left, |actor, ctx| {
                log::info!(
                    "stream {} ended: no sender for {:?}",
                    actor.id,
                    actor.idle_timeout
                );
                actor.expired = true;
                match &actor.registry {
                    Some(registry) => registry.do_send(StreamNotice::Expired {
                        id: actor.id.clone(),
                    }),
                    None => actor.end(CLOSE_NORMAL, STREAM_ENDED, ctx),
                }
            }));
        }
    }

    fn end(&mut self, code: u16, reason: &'static str, ctx: &mut Context<Self>) {
        if let Some(file) = &self.recording {
            // Before the sockets hear of the end (and before a shutdown goes
            // on), the recording is on disk; while running, the page cache
            // is enough.
            if let Err(e) = file.sync_data() {
                log::warn!("stream {}: syncing the recording failed: {e}", self.id);
            }
        }
        for (_, member) in self.members.drain() {
            // `do_send` on purpose: the close must get through even to a
            // socket whose queue is full.
            member.outbox.do_send(Outbound::Close { code, reason });
        }
        self.connected_senders = 0;
        ctx.stop();
    }

    fn remove(&mut self, socket: SocketId, ctx: &mut Context<Self>) -> Option<Member> {
        let member = self.members.remove(&socket)?;
        if member.sender {
            self.connected_senders -= 1;
            if self.connected_senders == 0 {
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

    /// Remembers an accepted event as the latest of its kind.
    fn remember(&mut self, kind: EventKind, text: &ByteString) {
        self.last_kind = Some(kind);
        let slot = match kind {
            EventKind::Move => &mut self.last_move,
            EventKind::Orientation => &mut self.last_orientation,
            EventKind::Reset { .. } => &mut self.last_reset,
        };
        *slot = Some(text.clone());
    }

    /// Rebuilds the last events from an existing recording, cutting off a
    /// torn last line so the file stays whole JSON lines. Returns the file
    /// opened for appending.
    fn restore(&mut self, path: &Path) -> io::Result<File> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut whole = 0u64;
        let mut reader = BufReader::new(&mut file);
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line)?;
            if read == 0 || !line.ends_with('\n') {
                break;
            }
            whole += read as u64;
            if let Ok(event) = parse_event(line.trim_end()) {
                self.remember(event.kind, &event.text);
            }
        }
        let len = file.seek(io::SeekFrom::End(0))?;
        if len > whole {
            log::warn!(
                "stream {}: cutting a torn last line off {}",
                self.id,
                path.display()
            );
            file.set_len(whole)?;
        }
        Ok(file)
    }

    fn record(&mut self, text: &str) {
        let Some(file) = self.recording.as_mut() else {
            return;
        };
        let mut line = Vec::with_capacity(text.len() + 1);
        line.extend_from_slice(text.as_bytes());
        line.push(b'\n');
        // One write(2) into the page cache, no fsync: it survives the process
        // being killed, costs microseconds, and keeps the stream's thread free.
        if let Err(e) = file.write_all(&line) {
            log::error!("stream {}: recording stopped: {e}", self.id);
            self.recording = None;
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
        if let Some(path) = self.recording_path.clone() {
            match self.restore(&path) {
                Ok(file) => self.recording = Some(file),
                Err(e) => log::error!(
                    "stream {}: cannot open recording {}: {e}",
                    self.id,
                    path.display()
                ),
            }
        }
        let since = self.idle_since.unwrap_or_else(SystemTime::now);
        self.start_countdown(since, ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.notify(StreamNotice::Stopped {
            id: self.id.clone(),
        });
    }
}

impl Handler<Join> for StreamActor {
    type Result = Result<Joined, Ended>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        if self.expired || !matches!(ctx.state(), ActorState::Running) {
            return Err(Ended);
        }
        let sender = msg
            .user_id
            .as_ref()
            .is_some_and(|user| self.senders.contains(user));
        let socket = self.next_socket;
        self.next_socket += 1;
        if sender {
            self.connected_senders += 1;
            if let Some(countdown) = self.countdown.take() {
                ctx.cancel_future(countdown);
                self.notify(StreamNotice::Live {
                    id: self.id.clone(),
                });
            }
        } else {
            for text in [&self.last_reset, &self.last_orientation, &self.last_move]
                .into_iter()
                .flatten()
            {
                // At most three messages, so `do_send` cannot grow a mailbox
                // without bound, and the replay is never cut short.
                msg.outbox.do_send(Outbound::Event(text.clone()));
            }
        }
        self.members.insert(
            socket,
            Member {
                outbox: msg.outbox,
                sender,
                disconnect: msg.disconnect,
            },
        );
        Ok(Joined { socket, sender })
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
        if !self
            .members
            .get(&msg.socket)
            .is_some_and(|member| member.sender)
        {
            return;
        }
        let Event { kind, text } = msg.event;
        if matches!(kind, EventKind::Reset { .. }) && Some(kind) == self.last_kind {
            // The reset loop guard: the client can bounce the same reset back
            // and forth; the repeat is neither relayed nor kept.
            return;
        }
        self.remember(kind, &text);
        let mut dropped = Vec::new();
        for (&socket, member) in &self.members {
            if socket == msg.socket {
                continue;
            }
            match member.outbox.try_send(Outbound::Event(text.clone())) {
                Ok(()) => {}
                Err(SendError::Full(_)) => dropped.push((socket, true)),
                Err(SendError::Closed(_)) => dropped.push((socket, false)),
            }
        }
        for (socket, full) in dropped {
            if let Some(member) = self.remove(socket, ctx) {
                if full {
                    log::info!("stream {}: dropping socket {socket}: {TOO_SLOW}", self.id);
                    // The close frame reaches a client that reads again; one
                    // that does not is cut off, since its session cannot run.
                    member.outbox.do_send(Outbound::Close {
                        code: CLOSE_POLICY,
                        reason: TOO_SLOW,
                    });
                    if let Some(disconnect) = &member.disconnect {
                        disconnect.disconnect();
                    }
                }
            }
        }
        self.record(&text);
    }
}

impl Handler<EndStream> for StreamActor {
    type Result = ();

    fn handle(&mut self, msg: EndStream, ctx: &mut Self::Context) {
        self.end(msg.code, msg.reason, ctx);
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
