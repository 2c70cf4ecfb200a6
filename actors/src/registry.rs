//! The registry: the directory of open streams, and socket admission.
//!
//! HTTP handlers ask it for a new stream, the list, or a ticket to connect a
//! socket to a stream ([`Admission`]). Each stream actor tells it when it
//! goes idle or live and when it stops; the registry keeps all of that in
//! its [`StreamStore`], so the streams come back after a restart with their
//! countdowns where they were. When the registry stops, it ends every
//! stream: none outlives it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;

use crate::admission::{Admission, SocketClosed};
use crate::close;
use crate::gate::client_key;
use crate::ids::{StreamId, UserId};
use crate::store::journal::epoch_ms;
use crate::store::{StoreError, StoreFuture, StreamChange, StreamRecord, StreamStore};
use crate::stream::{EndStream, SocketId, StreamActor, StreamLimits, StreamNotice, StreamSetup};

/// How the registry runs its streams.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// How long a stream lives without a connected sender.
    pub idle_timeout: Duration,
    /// Open streams one user may have created.
    pub max_streams_per_user: usize,
    /// Open sockets over all streams.
    pub max_sockets: usize,
    /// Sender sockets one stream takes at once.
    pub max_sender_sockets_per_stream: usize,
    /// Open sockets from one client address.
    pub max_sockets_per_client: usize,
    /// What each stream holds its senders and recording to.
    pub stream_limits: StreamLimits,
    /// How long the recordings of ended streams are kept; zero keeps none
    /// past the stream's end.
    pub recording_retention: Duration,
}

/// How often the recordings of ended streams are swept for ones past their
/// retention (and once at start-up).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// A stream as listed: its ID and permitted senders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream's ID.
    pub id: StreamId,
    /// Users allowed to send; the creator first.
    pub senders: Vec<UserId>,
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
    /// The stream has this many sender sockets already.
    TooManySenderSockets {
        /// The limit in force.
        limit: usize,
    },
    /// The client address has this many sockets open already.
    TooManyClientSockets {
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
    /// The stream could not be kept; it was not created.
    Storage(StoreError),
}

/// Creates a stream whose only sender is `owner`.
#[derive(Message)]
#[rtype(result = "Result<StreamSummary, RegistryError>")]
pub struct CreateStream {
    /// The creator.
    pub owner: UserId,
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
    pub id: StreamId,
}

/// Admits one more socket to a stream, within the limit on open sockets.
/// The ticket it answers with holds the slot until it is dropped.
#[derive(Message)]
#[rtype(result = "Result<Admission, RegistryError>")]
pub struct OpenSocket {
    /// The stream the socket is for.
    pub stream_id: StreamId,
    /// The signed-in user of the socket, if any: a sender if the stream
    /// lets them send.
    pub user_id: Option<UserId>,
    /// The client address the socket comes from.
    pub client: IpAddr,
}

/// How many sockets hold a ticket now.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountSockets;

/// Closes every socket with 1001 `server restarting` and stops every stream
/// actor, keeping the streams themselves (they come back on the next start).
/// Answers once every stream actor has closed its sockets and stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// One open stream.
struct Entry {
    /// Its actor.
    addr: Addr<StreamActor>,
    /// Users allowed to send; the creator first.
    senders: Vec<UserId>,
    /// Creation order, for a stable listing.
    seq: u64,
    /// Sender sockets admitted and not yet closed.
    sender_sockets: usize,
}

/// Creates, lists and finds streams; admits sockets.
pub struct Registry {
    /// Open streams by ID.
    streams: HashMap<StreamId, Entry>,
    /// Open streams by creator, for the per-user limit.
    streams_per_user: HashMap<UserId, usize>,
    /// Tickets handed out and not yet dropped.
    sockets: usize,
    /// Tickets handed out and not yet dropped, by client address (see
    /// [`client_key`]); an address with none is not kept.
    sockets_per_client: HashMap<IpAddr, usize>,
    /// The number the next socket gets.
    next_socket: SocketId,
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
    /// Where the streams are kept across restarts.
    store: Box<dyn StreamStore + Send>,
}

impl Registry {
    /// A registry keeping its streams in `store`, starting their actors on
    /// `arbiters` in turn (or on its own thread if none). The streams the
    /// store holds come back when the actor starts, less those whose
    /// countdown ran out while the server was down.
    pub fn new(
        settings: RegistrySettings,
        store: Box<dyn StreamStore + Send>,
        arbiters: Vec<ArbiterHandle>,
    ) -> Registry {
        Registry {
            streams: HashMap::new(),
            streams_per_user: HashMap::new(),
            sockets: 0,
            sockets_per_client: HashMap::new(),
            next_socket: 0,
            next_seq: 0,
            settings,
            arbiters,
            next_arbiter: 0,
            shutting_down: false,
            store,
        }
    }

    fn summary(id: &StreamId, entry: &Entry) -> StreamSummary {
        StreamSummary {
            id: id.clone(),
            senders: entry.senders.clone(),
        }
    }

    /// Starts a stream actor, idle since `idle_since_ms`, and adds it to the open streams.
    fn launch(
        &mut self,
        id: StreamId,
        senders: Vec<UserId>,
        idle_since_ms: u64,
        ctx: &mut Context<Self>,
    ) -> StreamSummary {
        if let Some(owner) = senders.first() {
            *self.streams_per_user.entry(owner.clone()).or_default() += 1;
        }
        let setup = StreamSetup {
            id: id.clone(),
            senders: senders.clone(),
            idle_timeout: self.settings.idle_timeout,
            recording: self.store.recording(&id),
            limits: self.settings.stream_limits,
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
            sender_sockets: 0,
        };
        self.next_seq += 1;
        let summary = Self::summary(&id, &entry);
        self.streams.insert(id, entry);
        summary
    }

    /// Brings back the streams the store kept, oldest first. One that had a
    /// sender when the server stopped counts as idle from now (its sender
    /// was cut off by the restart); one whose countdown ran out meanwhile ends.
    fn restore(&mut self, records: Vec<StreamRecord>, ctx: &mut Context<Self>) {
        let now = epoch_ms(SystemTime::now());
        let timeout_ms = u64::try_from(self.settings.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut restored = 0;
        for record in records {
            let idle_since_ms = record.idle_since_ms.unwrap_or(now);
            if idle_since_ms.saturating_add(timeout_ms) <= now {
                log::info!("stream {} ended while the server was down", record.id);
                self.keep(StreamChange::Ended(record.id), ctx);
                continue;
            }
            if record.idle_since_ms.is_none() {
                let change = StreamChange::Idle {
                    id: record.id.clone(),
                    since_ms: now,
                };
                self.keep(change, ctx);
            }
            self.launch(record.id, record.senders, idle_since_ms, ctx);
            restored += 1;
        }
        if restored > 0 {
            log::info!("restored {restored} open streams");
        }
    }

    /// Deletes the recordings of ended streams past their retention; the
    /// store logs what it deletes and what fails.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let swept = self
            .store
            .sweep_recordings(self.settings.recording_retention);
        ctx.spawn(
            async move {
                let _ = swept.await;
            }
            .into_actor(self),
        );
    }

    /// Records a change that the next start can do without if it is lost;
    /// the store logs a failure.
    fn keep(&mut self, change: StreamChange, ctx: &mut Context<Self>) {
        let kept = self.store.record(change);
        ctx.spawn(
            async move {
                let _ = kept.await;
            }
            .into_actor(self),
        );
    }

    /// Forgets a stream: frees its creator's slot and, unless the server is
    /// shutting down (then it comes back on the next start), records its end.
    fn forget(&mut self, id: StreamId, ctx: &mut Context<Self>) -> Option<Entry> {
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
            self.keep(StreamChange::Ended(id), ctx);
        }
        Some(entry)
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // `wait`: no request is answered before the kept streams are back.
        let loaded: StoreFuture<Vec<StreamRecord>> = self.store.load();
        ctx.wait(loaded.into_actor(self).map(|loaded, registry, ctx| {
            match loaded {
                Ok(records) => registry.restore(records, ctx),
                Err(e) => log::error!("cannot read the open streams back: {e}"),
            }
            registry.sweep(ctx);
        }));
        ctx.run_interval(SWEEP_INTERVAL, Self::sweep);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for entry in self.streams.values() {
            entry.addr.do_send(EndStream {
                close: close::SERVER_RESTARTING,
            });
        }
    }
}

impl Handler<CreateStream> for Registry {
    type Result = AtomicResponse<Self, Result<StreamSummary, RegistryError>>;

    fn handle(&mut self, msg: CreateStream, _: &mut Self::Context) -> Self::Result {
        let refused = |e| AtomicResponse::new(Box::pin(fut::ready(Err(e))));
        if self.shutting_down {
            return refused(RegistryError::ShuttingDown);
        }
        let limit = self.settings.max_streams_per_user;
        if self.streams_per_user.get(&msg.owner).copied().unwrap_or(0) >= limit {
            return refused(RegistryError::TooManyStreams { limit });
        }
        let created_ms = epoch_ms(SystemTime::now());
        let record = StreamRecord {
            id: StreamId::random(),
            senders: vec![msg.owner],
            created_ms,
            idle_since_ms: Some(created_ms),
        };
        // Kept before the answer: a stream handed out survives a crash.
        let kept = self.store.record(StreamChange::Created(record.clone()));
        AtomicResponse::new(Box::pin(kept.into_actor(self).map(
            move |kept, registry, ctx| {
                kept.map_err(RegistryError::Storage)?;
                let summary = registry.launch(record.id, record.senders, record.created_ms, ctx);
                log::info!("stream {} created by {}", summary.id, summary.senders[0]);
                Ok(summary)
            },
        )))
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
    type Result = Result<Admission, RegistryError>;

    fn handle(&mut self, msg: OpenSocket, ctx: &mut Self::Context) -> Self::Result {
        // Checked first: a socket refused while the server stops must hear
        // that it will be back, not that its stream is unknown.
        if self.shutting_down {
            return Err(RegistryError::ShuttingDown);
        }
        let entry = self
            .streams
            .get_mut(&msg.stream_id)
            .ok_or(RegistryError::UnknownStream)?;
        let limit = self.settings.max_sockets;
        if self.sockets >= limit {
            return Err(RegistryError::TooManySockets { limit });
        }
        let client = client_key(msg.client);
        let from_client = self.sockets_per_client.get(&client).copied().unwrap_or(0);
        let limit = self.settings.max_sockets_per_client;
        if from_client >= limit {
            return Err(RegistryError::TooManyClientSockets { limit });
        }
        let sender = msg
            .user_id
            .as_ref()
            .is_some_and(|user| entry.senders.contains(user));
        if sender {
            let limit = self.settings.max_sender_sockets_per_stream;
            if entry.sender_sockets >= limit {
                return Err(RegistryError::TooManySenderSockets { limit });
            }
            entry.sender_sockets += 1;
        }
        self.sockets += 1;
        *self.sockets_per_client.entry(client).or_default() += 1;
        let socket = self.next_socket;
        self.next_socket += 1;
        Ok(Admission::new(
            entry.addr.clone(),
            msg.stream_id,
            socket,
            msg.user_id,
            sender,
            client,
            ctx.address().recipient(),
        ))
    }
}

impl Handler<CountSockets> for Registry {
    type Result = usize;

    fn handle(&mut self, _: CountSockets, _: &mut Self::Context) -> usize {
        self.sockets
    }
}

impl Handler<SocketClosed> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SocketClosed, _: &mut Self::Context) {
        self.sockets = self.sockets.saturating_sub(1);
        if let Some(open) = self.sockets_per_client.get_mut(&msg.client) {
            *open -= 1;
            if *open == 0 {
                self.sockets_per_client.remove(&msg.client);
            }
        }
        if msg.sender {
            if let Some(entry) = self.streams.get_mut(&msg.stream_id) {
                entry.sender_sockets = entry.sender_sockets.saturating_sub(1);
            }
        }
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
                    close: close::SERVER_RESTARTING,
                })
            })
            .collect();
        let synced = self.store.sync();
        Box::pin(async move {
            for end in ends {
                let _ = end.await;
            }
            let _ = synced.await;
        })
    }
}

impl Handler<StreamNotice> for Registry {
    type Result = ();

    fn handle(&mut self, msg: StreamNotice, ctx: &mut Self::Context) {
        match msg {
            StreamNotice::Live { id } => {
                if self.streams.contains_key(&id) {
                    self.keep(StreamChange::Live(id), ctx);
                }
            }
            StreamNotice::Idle { id, since } => {
                if self.streams.contains_key(&id) {
                    let since_ms = epoch_ms(since);
                    self.keep(StreamChange::Idle { id, since_ms }, ctx);
                }
            }
            StreamNotice::Expired { id } => {
                // Forgotten first, so that once a socket hears `stream ended`
                // the stream is neither listed nor found.
                if let Some(entry) = self.forget(id, ctx) {
                    entry.addr.do_send(EndStream {
                        close: close::STREAM_ENDED,
                    });
                }
            }
            StreamNotice::Stopped { id } => {
                self.forget(id, ctx);
                // A recording kept for no time past its stream's end goes
                // now, not at the next sweep; one suspended by a shutdown
                // is not ended.
                if self.settings.recording_retention.is_zero() && !self.shutting_down {
                    self.sweep(ctx);
                }
            }
        }
    }
}
