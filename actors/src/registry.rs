//! The registry: creates, lists and finds streams, and counts sockets.
//!
//! HTTP handlers ask it for a new stream, the list, or a stream to connect a
//! socket to. Each stream actor tells it when it stops; when the registry
//! stops, it ends every stream, so no stream outlives it.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;

use crate::ids;
use crate::stream::{EndStream, StreamActor, StreamSetup, StreamStopped};

/// The recordings' folder inside the data directory.
pub const RECORDINGS_DIR: &str = "log/streams";
/// Close code for the sockets of streams ended because the server stops.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close reason for the sockets of streams ended because the server stops.
pub const SERVER_RESTARTING: &str = "server restarting";

/// How the registry runs its streams.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The data directory; recordings go to its `log/streams`. `None` records nothing.
    pub data_dir: Option<PathBuf>,
    /// How long a stream lives without a connected sender.
    pub idle_timeout: Duration,
    /// Open streams one user may have created.
    pub max_streams_per_user: usize,
    /// Open sockets over all streams.
    pub max_sockets: usize,
}

/// A stream as listed: its ID and permitted senders' user IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream's ID.
    pub id: String,
    /// User IDs allowed to send; the creator first.
    pub senders: Vec<String>,
}

/// Why the registry refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// No open stream has that ID.
    UnknownStream,
    /// The user already has this many open streams.
    TooManyStreams {
        /// The limit in force.
        limit: usize,
    },
    /// This many sockets are open already.
    TooManySockets {
        /// The limit in force.
        limit: usize,
    },
}

/// Creates a stream whose only sender is `owner`.
#[derive(Message)]
#[rtype(result = "Result<StreamSummary, RegistryError>")]
pub struct CreateStream {
    /// The user ID of the creator.
    pub owner: String,
}

/// Lists the open streams, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<StreamSummary>")]
pub struct ListStreams;

/// Finds an open stream.
#[derive(Message)]
#[rtype(result = "Option<Addr<StreamActor>>")]
pub struct FindStream {
    /// The stream's ID.
    pub id: String,
}

/// Admits one more socket to a stream, within the limit on open sockets.
///
/// Every admitted socket must be followed by one [`SocketClosed`].
#[derive(Message)]
#[rtype(result = "Result<Addr<StreamActor>, RegistryError>")]
pub struct OpenSocket {
    /// The stream the socket is for.
    pub stream_id: String,
}

/// A socket admitted by [`OpenSocket`] has closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SocketClosed;

/// One open stream.
struct Entry {
    addr: Addr<StreamActor>,
    senders: Vec<String>,
    /// Creation order, for a stable listing.
    seq: u64,
}

/// Creates, lists and finds streams; counts open sockets.
pub struct Registry {
    /// Open streams by ID.
    streams: HashMap<String, Entry>,
    /// Open streams by creator, for the per-user limit.
    streams_per_user: HashMap<String, usize>,
    /// Sockets admitted and not yet closed.
    sockets: usize,
    /// The next stream's creation number.
    next_seq: u64,
    /// Limits and timeouts.
    settings: RegistrySettings,
    /// Threads to spread stream actors over; empty runs them on the registry's.
    arbiters: Vec<ArbiterHandle>,
    /// The arbiter the next stream goes to.
    next_arbiter: usize,
}

impl Registry {
    /// A registry that starts its streams on `arbiters` in turn (or its own thread if none).
    ///
    /// Creates the recordings' folder up front, so a bad data directory stops
    /// the server at start-up rather than failing streams one by one.
    pub fn new(settings: RegistrySettings, arbiters: Vec<ArbiterHandle>) -> io::Result<Registry> {
        if let Some(dir) = &settings.data_dir {
            std::fs::create_dir_all(dir.join(RECORDINGS_DIR))?;
        }
        Ok(Registry {
            streams: HashMap::new(),
            streams_per_user: HashMap::new(),
            sockets: 0,
            next_seq: 0,
            settings,
            arbiters,
            next_arbiter: 0,
        })
    }

    fn summary(id: &str, entry: &Entry) -> StreamSummary {
        StreamSummary {
            id: id.to_owned(),
            senders: entry.senders.clone(),
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        for entry in self.streams.values() {
            entry.addr.do_send(EndStream {
                code: CLOSE_GOING_AWAY,
                reason: SERVER_RESTARTING,
            });
        }
    }
}

impl Handler<CreateStream> for Registry {
    type Result = Result<StreamSummary, RegistryError>;

    fn handle(&mut self, msg: CreateStream, ctx: &mut Self::Context) -> Self::Result {
        let limit = self.settings.max_streams_per_user;
        let open = self.streams_per_user.entry(msg.owner.clone()).or_default();
        if *open >= limit {
            return Err(RegistryError::TooManyStreams { limit });
        }
        *open += 1;
        let id = ids::new_stream_id();
        let setup = StreamSetup {
            id: id.clone(),
            senders: vec![msg.owner.clone()],
            idle_timeout: self.settings.idle_timeout,
            recording: self
                .settings
                .data_dir
                .as_ref()
                .map(|dir| dir.join(RECORDINGS_DIR).join(format!("{id}.log"))),
            registry: Some(ctx.address().recipient()),
        };
        let addr = if self.arbiters.is_empty() {
            StreamActor::new(setup).start()
        } else {
            let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
            self.next_arbiter = self.next_arbiter.wrapping_add(1);
            StreamActor::start_in_arbiter(arbiter, move |_| StreamActor::new(setup))
        };
        let entry = Entry {
            addr,
            senders: vec![msg.owner.clone()],
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let summary = Self::summary(&id, &entry);
        self.streams.insert(id.clone(), entry);
        log::info!("stream {id} created by {}", msg.owner);
        Ok(summary)
    }
}

impl Handler<ListStreams> for Registry {
    type Result = MessageResult<ListStreams>;

    fn handle(&mut self, _: ListStreams, _: &mut Self::Context) -> Self::Result {
        let mut entries: Vec<_> = self.streams.iter().collect();
        entries.sort_by_key(|(_, entry)| entry.seq);
        MessageResult(
            entries
                .into_iter()
                .map(|(id, entry)| Self::summary(id, entry))
                .collect(),
        )
    }
}

impl Handler<FindStream> for Registry {
    type Result = Option<Addr<StreamActor>>;

    fn handle(&mut self, msg: FindStream, _: &mut Self::Context) -> Self::Result {
        self.streams.get(&msg.id).map(|entry| entry.addr.clone())
    }
}

impl Handler<OpenSocket> for Registry {
    type Result = Result<Addr<StreamActor>, RegistryError>;

    fn handle(&mut self, msg: OpenSocket, _: &mut Self::Context) -> Self::Result {
        let entry = self
            .streams
            .get(&msg.stream_id)
            .ok_or(RegistryError::UnknownStream)?;
        let limit = self.settings.max_sockets;
        if self.sockets >= limit {
            return Err(RegistryError::TooManySockets { limit });
        }
        self.sockets += 1;
        Ok(entry.addr.clone())
    }
}

impl Handler<SocketClosed> for Registry {
    type Result = ();

    fn handle(&mut self, _: SocketClosed, _: &mut Self::Context) {
        self.sockets = self.sockets.saturating_sub(1);
    }
}

impl Handler<StreamStopped> for Registry {
    type Result = ();

    fn handle(&mut self, msg: StreamStopped, _: &mut Self::Context) {
        let Some(entry) = self.streams.remove(&msg.id) else {
            return;
        };
        if let Some(owner) = entry.senders.first() {
            if let Some(open) = self.streams_per_user.get_mut(owner) {
                *open -= 1;
                if *open == 0 {
                    self.streams_per_user.remove(owner);
                }
            }
        }
    }
}
