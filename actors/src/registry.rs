//! The registry: creates, lists and finds streams, and counts sockets.
//!
//! HTTP handlers ask it for a new stream, the list, or a stream to connect a
//! socket to. Each stream actor tells it when it goes idle or live and when
//! it stops; the registry keeps all of that in its journal (`streams.jsonl`),
//! so the streams come back after a restart with their countdowns where they
//! were. When the registry stops, it ends every stream: none outlives it.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ids;
use crate::journal::{epoch_ms, Journal};
use crate::stream::{
    EndStream, StreamActor, StreamNotice, StreamSetup, CLOSE_NORMAL, STREAM_ENDED,
};

/// The registry's journal inside the data directory.
pub const STREAMS_FILE: &str = "streams.jsonl";
/// The journal is compacted once this many records were appended and they
/// outnumber the open streams' records twice over.
const COMPACT_AFTER_APPENDS: usize = 1024;
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
    /// The server is shutting down and takes no new sockets or streams.
    ShuttingDown,
    /// The journal could not be written; the stream was not created.
    Storage(String),
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

/// Closes every socket with 1001 `server restarting` and stops every stream
/// actor, keeping the streams themselves (they come back on the next start).
/// Answers once every stream actor has closed its sockets and stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// One open stream.
struct Entry {
    addr: Addr<StreamActor>,
    senders: Vec<String>,
    /// Creation order, for a stable listing.
    seq: u64,
    /// When it was created, in ms since the epoch (kept in the journal).
    created_ms: u64,
    /// Since when no sender is connected, in ms since the epoch; `None` while one is.
    idle_since_ms: Option<u64>,
}

/// One line of the registry's journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Record {
    /// A stream was created (idle from then until a sender connects).
    Stream {
        id: String,
        senders: Vec<String>,
        created_ms: u64,
    },
    /// A sender connected to a stream that had none.
    Live { id: String },
    /// The last sender left a stream.
    Idle { id: String, since_ms: u64 },
    /// A stream ended.
    End { id: String },
}

/// A stream read back from the journal, to start again.
struct Restored {
    id: String,
    senders: Vec<String>,
    created_ms: u64,
    idle_since_ms: u64,
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
    /// Set by [`Shutdown`]: streams that stop now are suspended, not ended.
    shutting_down: bool,
    /// Where streams are kept across restarts; `None` without a data directory.
    journal: Option<Journal>,
    /// Streams read back at start-up, started once the actor runs.
    restored: Vec<Restored>,
}

impl Registry {
    /// A registry that starts its streams on `arbiters` in turn (or its own thread if none).
    ///
    /// With a data directory, it reads back the streams that were open when
    /// the server last stopped (dropping those whose countdown ran out while
    /// it was down) and compacts its journal; they start with the actor. It
    /// creates the recordings' folder up front, so a bad data directory stops
    /// the server at start-up rather than failing streams one by one.
    pub fn new(settings: RegistrySettings, arbiters: Vec<ArbiterHandle>) -> io::Result<Registry> {
        let mut restored = Vec::new();
        let mut journal = None;
        if let Some(dir) = &settings.data_dir {
            std::fs::create_dir_all(dir.join(RECORDINGS_DIR))?;
            let path = dir.join(STREAMS_FILE);
            restored = restore(Journal::read(&path)?, settings.idle_timeout);
            let records: Vec<Record> = restored
                .iter()
                .flat_map(|r| {
                    [
                        Record::Stream {
                            id: r.id.clone(),
                            senders: r.senders.clone(),
                            created_ms: r.created_ms,
                        },
                        Record::Idle {
                            id: r.id.clone(),
                            since_ms: r.idle_since_ms,
                        },
                    ]
                })
                .collect();
            journal = Some(Journal::rewrite(&path, &records)?);
            if !restored.is_empty() {
                log::info!("restoring {} open streams", restored.len());
            }
        }
        Ok(Registry {
            streams: HashMap::new(),
            streams_per_user: HashMap::new(),
            sockets: 0,
            next_seq: 0,
            settings,
            arbiters,
            next_arbiter: 0,
            shutting_down: false,
            journal,
            restored,
        })
    }

    fn summary(id: &str, entry: &Entry) -> StreamSummary {
        StreamSummary {
            id: id.to_owned(),
            senders: entry.senders.clone(),
        }
    }

    /// Starts a stream actor and adds it to the open streams.
    fn launch(&mut self, restored: Restored, ctx: &mut Context<Self>) -> StreamSummary {
        let Restored {
            id,
            senders,
            created_ms,
            idle_since_ms,
        } = restored;
        if let Some(owner) = senders.first() {
            *self.streams_per_user.entry(owner.clone()).or_default() += 1;
        }
        let setup = StreamSetup {
            id: id.clone(),
            senders: senders.clone(),
            idle_timeout: self.settings.idle_timeout,
            recording: self
                .settings
                .data_dir
                .as_ref()
                .map(|dir| dir.join(RECORDINGS_DIR).join(format!("{id}.log"))),
            registry: Some(ctx.address().recipient()),
            idle_since: Some(UNIX_EPOCH + Duration::from_millis(idle_since_ms)),
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
            senders,
            seq: self.next_seq,
            created_ms,
            idle_since_ms: Some(idle_since_ms),
        };
        self.next_seq += 1;
        let summary = Self::summary(&id, &entry);
        self.streams.insert(id, entry);
        summary
    }

    /// Appends a record that may be lost with the machine's power but not
    /// with the process (liveness and ends: the next start can do without).
    fn note(&mut self, record: &Record) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        if let Err(e) = journal.append_unsynced(record) {
            log::error!("{}: write failed: {e}", journal.path().display());
        }
        self.maybe_compact();
    }

    fn maybe_compact(&mut self) {
        let Some(journal) = self.journal.as_ref() else {
            return;
        };
        if journal.appended() <= COMPACT_AFTER_APPENDS
            || journal.appended() <= 2 * self.streams.len()
        {
            return;
        }
        let mut entries: Vec<_> = self.streams.iter().collect();
        entries.sort_by_key(|(_, entry)| entry.seq);
        let records: Vec<Record> = entries
            .into_iter()
            .flat_map(|(id, entry)| {
                let stream = Record::Stream {
                    id: id.clone(),
                    senders: entry.senders.clone(),
                    created_ms: entry.created_ms,
                };
                let state = match entry.idle_since_ms {
                    Some(since_ms) => Record::Idle {
                        id: id.clone(),
                        since_ms,
                    },
                    None => Record::Live { id: id.clone() },
                };
                [stream, state]
            })
            .collect();
        match Journal::rewrite(journal.path(), &records) {
            Ok(journal) => self.journal = Some(journal),
            Err(e) => log::warn!("{}: compaction failed: {e}", journal.path().display()),
        }
    }
}

/// The streams a journal leaves open, oldest first, less those whose idle
/// countdown ran out by now. A stream that had a sender when the server
/// stopped counts as idle from now: its sender was cut off by the restart.
fn restore(records: Vec<Record>, idle_timeout: Duration) -> Vec<Restored> {
    let now = epoch_ms(SystemTime::now());
    let mut open: Vec<Restored> = Vec::new();
    let mut live: HashMap<String, bool> = HashMap::new();
    for record in records {
        match record {
            Record::Stream {
                id,
                senders,
                created_ms,
            } => {
                if !ids::is_stream_id(&id) {
                    log::warn!("journal names a malformed stream ID; skipping it");
                    continue;
                }
                open.retain(|r| r.id != id);
                live.insert(id.clone(), false);
                open.push(Restored {
                    id,
                    senders,
                    created_ms,
                    idle_since_ms: created_ms,
                });
            }
            Record::Live { id } => {
                live.insert(id, true);
            }
            Record::Idle { id, since_ms } => {
                live.insert(id.clone(), false);
                if let Some(r) = open.iter_mut().find(|r| r.id == id) {
                    r.idle_since_ms = since_ms;
                }
            }
            Record::End { id } => open.retain(|r| r.id != id),
        }
    }
    let timeout_ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
    open.retain_mut(|r| {
        if live.get(&r.id).copied().unwrap_or(false) {
            r.idle_since_ms = now;
        }
        let alive = r.idle_since_ms.saturating_add(timeout_ms) > now;
        if !alive {
            log::info!("stream {} ended while the server was down", r.id);
        }
        alive
    });
    open
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for restored in std::mem::take(&mut self.restored) {
            self.launch(restored, ctx);
        }
    }

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
        if self.shutting_down {
            return Err(RegistryError::ShuttingDown);
        }
        let limit = self.settings.max_streams_per_user;
        if self.streams_per_user.get(&msg.owner).copied().unwrap_or(0) >= limit {
            return Err(RegistryError::TooManyStreams { limit });
        }
        let id = ids::new_stream_id();
        let created_ms = epoch_ms(SystemTime::now());
        if let Some(journal) = self.journal.as_mut() {
            // Synced before the answer: a stream handed out survives a crash.
            // A short write on the registry's own thread; streams run elsewhere.
            let record = Record::Stream {
                id: id.clone(),
                senders: vec![msg.owner.clone()],
                created_ms,
            };
            journal.append(&record).map_err(|e| {
                log::error!("{}: write failed: {e}", journal.path().display());
                RegistryError::Storage(e.to_string())
            })?;
        }
        let summary = self.launch(
            Restored {
                id,
                senders: vec![msg.owner.clone()],
                created_ms,
                idle_since_ms: created_ms,
            },
            ctx,
        );
        log::info!("stream {} created by {}", summary.id, msg.owner);
        self.maybe_compact();
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
        if self.shutting_down {
            return Err(RegistryError::ShuttingDown);
        }
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

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        log::info!("closing the sockets of {} streams", self.streams.len());
        // Stream actors never wait on the registry, so waiting on them here
        // cannot deadlock.
        let ends: Vec<_> = self
            .streams
            .values()
            .map(|entry| {
                entry.addr.send(EndStream {
                    code: CLOSE_GOING_AWAY,
                    reason: SERVER_RESTARTING,
                })
            })
            .collect();
        if let Some(journal) = &self.journal {
            if let Err(e) = journal.sync() {
                log::warn!("{}: sync failed: {e}", journal.path().display());
            }
        }
        Box::pin(async move {
            for end in ends {
                let _ = end.await;
            }
        })
    }
}

impl Handler<SocketClosed> for Registry {
    type Result = ();

    fn handle(&mut self, _: SocketClosed, _: &mut Self::Context) {
        self.sockets = self.sockets.saturating_sub(1);
    }
}

impl Registry {
    /// Forgets a stream: frees its creator's slot and, unless the server is
    /// shutting down (then it comes back on the next start), journals its end.
    fn forget(&mut self, id: String) -> Option<Entry> {
        let entry = self.streams.remove(&id)?;
        if let Some(owner) = entry.senders.first() {
            if let Some(open) = self.streams_per_user.get_mut(owner) {
                *open -= 1;
                if *open == 0 {
                    self.streams_per_user.remove(owner);
                }
            }
        }
        if !self.shutting_down {
            self.note(&Record::End { id });
        }
        Some(entry)
    }
}

impl Handler<StreamNotice> for Registry {
    type Result = ();

    fn handle(&mut self, msg: StreamNotice, _: &mut Self::Context) {
        match msg {
            StreamNotice::Live { id } => {
                let Some(entry) = self.streams.get_mut(&id) else {
                    return;
                };
                entry.idle_since_ms = None;
                self.note(&Record::Live { id });
            }
            StreamNotice::Idle { id, since } => {
                let Some(entry) = self.streams.get_mut(&id) else {
                    return;
                };
                let since_ms = epoch_ms(since);
                entry.idle_since_ms = Some(since_ms);
                self.note(&Record::Idle { id, since_ms });
            }
            StreamNotice::Expired { id } => {
                // Forgotten first, so that once a socket hears `stream ended`
                // the stream is neither listed nor found.
                if let Some(entry) = self.forget(id) {
                    entry.addr.do_send(EndStream {
                        code: CLOSE_NORMAL,
                        reason: STREAM_ENDED,
                    });
                }
            }
            StreamNotice::Stopped { id } => {
                self.forget(id);
            }
        }
    }
}
