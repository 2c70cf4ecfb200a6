//! The registry: the directory of open streams, and socket admission.
//!
//! HTTP handlers ask it for a new stream, the list, or a ticket to connect a
//! socket to a stream ([`Admission`]). Each stream actor tells it when it
//! goes idle or live and when it stops; the registry keeps all of that in
//! its [`StreamStore`], so the streams come back after a restart with their
//! countdowns where they were. When the registry stops, it ends every
//! stream: none outlives it.
//!
//! The list of open streams is asked for far more often than it changes,
//! so the registry keeps it encoded, as `GET /v0/streams` answers it, and
//! encodes it again only after it changed (a stream created or ended, a
//! sender's public info changed), when it is next asked for: many changes
//! at once (every stream stopping at shutdown) cost one encoding, not one
//! each. For that it keeps each sender's public
//! info with the stream: a new stream's creator comes with
//! [`CreateStream`]; the senders of streams restored at start are looked
//! up once from the token actor, which also tells the registry of every
//! later change to a user's info (see [`Registry::with_users`]). The store
//! keeps only user IDs, so that no name goes stale on disk.
//!
//! In cluster mode (a store that other nodes share, see
//! [`StreamStore::follow`]) every node runs an actor for every open stream
//! of the cluster: the registry launches the streams other nodes create as
//! their records come in (and reads a record it has not heard of yet
//! before it answers that a stream is unknown), and ends its actor when a
//! record is ended. It keeps a presence lease listing its sockets per
//! stream, and counts every node's sockets from theirs: the viewers and
//! `live` listed, the sender sockets of a stream. Streams do not end by
//! their own countdown then: every [`CLUSTER_CHECK`] the registry marks
//! idle the streams no node has a sender on, and ends those idle for the
//! timeout, each by compare-and-set on the record, so that exactly one
//! node ends a stream and says so.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytestring::ByteString;
use serde::Serialize;

use crate::admission::{Admission, SocketClosed};
use crate::close;
use crate::gate::client_key;
use crate::health::CheckWritable;
use crate::ids::{PublicUserInfo, StreamId, UserId};
use crate::metrics::Metrics;
use crate::store::journal::epoch_ms;
use crate::store::{
    Chunk, ClusterNews, ClusterNode, Cursor, EndedRecording, SocketCounts, StoreError, StoreFuture,
    StreamChange, StreamRecord, StreamStore,
};
use crate::stream::{
    ClearRecording, EndStream, GetRecordingSize, SocketId, StreamActor, StreamLimits, StreamNotice,
    StreamSetup,
};
use crate::tokens::{LookupUsers, TokenActor, UserUpdated, WatchUsers};

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
    /// Where the registry and its streams count what they do.
    pub metrics: Arc<Metrics>,
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
    /// When it was created, in ms since the Unix epoch.
    pub created_ms: u64,
}

/// How long a node's presence lease lasts unrefreshed, unless set
/// otherwise ([`Registry::with_node_lease`]): a node killed with -9 has
/// no sockets after this.
pub const NODE_LEASE: Duration = Duration::from_secs(30);

/// How often, in cluster mode, the registry marks idle the streams no
/// node has a sender on and ends those idle for the timeout.
pub const CLUSTER_CHECK: Duration = Duration::from_secs(1);

/// How long, in cluster mode, this node's counts may change before its
/// lease is written again: many sockets coming and going cost one write.
pub const PRESENCE_DEBOUNCE: Duration = Duration::from_millis(100);

/// How long, in cluster mode, a stream looked up and not found is not
/// looked up again: requests for an unknown stream cost NATS one read a
/// second each, however many come. A stream created since is found at
/// once all the same: its ID was unknown before its creation.
pub const MISS_CACHE: Duration = Duration::from_secs(1);

/// Stream IDs, at most, remembered as not found (see [`MISS_CACHE`]).
pub const MAX_MISSES: usize = 4096;

/// The countdown a stream runs in cluster mode: none that ends it, since
/// the registry decides over every node's senders.
const NO_COUNTDOWN: Duration = Duration::from_secs(100 * 365 * 86_400);

/// How stale the viewer counts in the encoded list may be: the list is
/// encoded again for a count that changed at most this often, so sockets
/// coming and going do not cost an encoding each.
pub const LISTED_COUNTS_STALE: Duration = Duration::from_millis(250);

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
    /// The user may not do that to this stream: they are not its sender.
    NotASender,
    /// The stream could not be kept; it was not created.
    Storage(StoreError),
}

/// Creates a stream whose only sender is `owner`.
#[derive(Message)]
#[rtype(result = "Result<StreamSummary, RegistryError>")]
pub struct CreateStream {
    /// The creator, as the list of streams shows them.
    pub owner: PublicUserInfo,
}

/// Lists the open streams, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<StreamSummary>")]
pub struct ListStreams;

/// The open streams, oldest first, as the body of `GET /v0/streams`:
/// `{"streams":[StreamInfo,…]}`, a `StreamInfo` being
/// `{"streamID","senders":[public user info,…],"viewers","live","createdAt"}`.
/// Encoded once after each change; answering it copies nothing.
#[derive(Message)]
#[rtype(result = "ByteString")]
pub struct StreamListBody;

/// One open stream's `StreamInfo`, encoded as in the list; `None` if no
/// open stream has that ID.
#[derive(Message)]
#[rtype(result = "Option<ByteString>")]
pub struct StreamInfoBody {
    /// The stream's ID.
    pub id: StreamId,
}

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

/// Every kept recording, newest first, as the body of `GET /v0/recordings`:
/// `{"recordings":[{"streamID","senders","createdAt","endedAt","events","bytes"},…]}`,
/// `endedAt` null for a stream still open.
#[derive(Message)]
#[rtype(result = "Result<ByteString, RegistryError>")]
pub struct RecordingsBody;

/// Reads part of a stream's recording, open or ended: up to `max` events
/// after offset `after`, from `cursor` on. `UnknownStream` if no recording
/// of that stream is kept.
#[derive(Message)]
#[rtype(result = "Result<Chunk, RegistryError>")]
pub struct ReadRecording {
    /// The stream.
    pub id: StreamId,
    /// The offset the events read are after.
    pub after: u64,
    /// Where the last read ended; the default for the first.
    pub cursor: Cursor,
    /// Events to read at most.
    pub max: usize,
}

/// Deletes a stream's recording, on behalf of `user`, who must be one of
/// its senders. An open stream goes on, and records again from its next
/// event.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub struct DeleteRecording {
    /// The stream.
    pub id: StreamId,
    /// Who asks.
    pub user: UserId,
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
    /// Users allowed to send, as the list shows them; the creator first.
    senders: Vec<PublicUserInfo>,
    /// Creation order, for a stable listing.
    seq: u64,
    /// Sender sockets admitted and not yet closed.
    sender_sockets: usize,
    /// Viewer sockets admitted and not yet closed.
    viewer_sockets: usize,
    /// When it was created, in ms since the Unix epoch.
    created_ms: u64,
    /// Since when its record says no node has had a sender (cluster mode).
    idle_since_ms: Option<u64>,
    /// Set while this node's attempt to end it is in flight (cluster mode).
    ending: bool,
    /// Sender sockets whose cluster-wide slot is being taken (cluster mode).
    pending_senders: usize,
}

impl Entry {
    fn sender_ids(&self) -> Vec<UserId> {
        self.senders
            .iter()
            .map(|sender| sender.twizzle_user_id.clone())
            .collect()
    }
}

/// One stream of the encoded list: the fields the list always had, and
/// the viewer count, whether a sender is connected, and its creation time.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(rename = "streamID")]
    stream_id: &'a StreamId,
    senders: &'a [PublicUserInfo],
    viewers: usize,
    live: bool,
    #[serde(rename = "createdAt")]
    created_at: u64,
}

impl<'a> Listed<'a> {
    /// `entry` with, beside its own sockets, `remote` on other nodes.
    fn of(id: &'a StreamId, entry: &'a Entry, remote: SocketCounts) -> Listed<'a> {
        Listed {
            stream_id: id,
            senders: &entry.senders,
            viewers: entry.viewer_sockets + remote.viewers,
            live: entry.sender_sockets + remote.senders > 0,
            created_at: entry.created_ms,
        }
    }
}

/// Another node, as of its last lease.
struct Peer {
    /// Its sockets, per stream that has any.
    streams: HashMap<StreamId, SocketCounts>,
    /// When its lease was written.
    written: Instant,
}

/// What the registry knows of the other nodes (cluster mode).
struct Cluster {
    /// The other nodes whose leases are live, by node ID.
    peers: HashMap<String, Peer>,
    /// Their sockets per stream, summed.
    remote: HashMap<StreamId, SocketCounts>,
    /// Stream IDs looked up and not found, and when (see [`MISS_CACHE`]).
    misses: HashMap<StreamId, Instant>,
    /// Set once every lease kept when this node started has been told: no
    /// stream is marked idle or ended before.
    presence_loaded: bool,
    /// Set while a write of this node's lease is due.
    lease_due: bool,
}

impl Cluster {
    /// Sums the peers' sockets per stream again.
    fn recount(&mut self) {
        self.remote.clear();
        for peer in self.peers.values() {
            for (id, counts) in &peer.streams {
                let sum = self.remote.entry(id.clone()).or_default();
                sum.senders += counts.senders;
                sum.viewers += counts.viewers;
            }
        }
    }

    /// Whether stream `id` was looked up and not found within [`MISS_CACHE`].
    fn missed(&self, id: &StreamId) -> bool {
        self.misses
            .get(id)
            .is_some_and(|at| at.elapsed() < MISS_CACHE)
    }

    /// Remembers that stream `id` was not found, within [`MAX_MISSES`].
    fn miss(&mut self, id: StreamId) {
        if self.misses.len() >= MAX_MISSES {
            self.misses.retain(|_, at| at.elapsed() < MISS_CACHE);
            if self.misses.len() >= MAX_MISSES {
                self.misses.clear();
            }
        }
        self.misses.insert(id, Instant::now());
    }
}

/// Creates, lists and finds streams; admits sockets.
pub struct Registry {
    /// Open streams by ID.
    streams: HashMap<StreamId, Entry>,
    /// Open streams' IDs by creation number: the order they are listed in.
    order: BTreeMap<u64, StreamId>,
    /// [`StreamListBody`]'s answer and when it was encoded; `None` from a
    /// change until it is next asked for.
    listing: Option<(ByteString, Instant)>,
    /// Set when a count in the list changed since it was encoded.
    counts_changed: bool,
    /// Users' public info for restored streams, and news of its changes.
    users: Option<Addr<TokenActor>>,
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
    /// This node's random ID, the key of its presence lease.
    node_id: String,
    /// How long a presence lease lasts unrefreshed.
    node_lease: Duration,
    /// The other nodes, in cluster mode; `None` for a single node.
    cluster: Option<Cluster>,
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
            order: BTreeMap::new(),
            listing: None,
            counts_changed: false,
            users: None,
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
            node_id: format!("node_{:016x}", rand::random::<u64>()),
            node_lease: NODE_LEASE,
            cluster: None,
        }
    }

    /// Counts another node's sockets as gone once its lease has not been
    /// refreshed for `lease` (cluster mode; [`NODE_LEASE`] otherwise).
    pub fn with_node_lease(mut self, lease: Duration) -> Registry {
        self.node_lease = lease;
        self
    }

    /// This node's ID, the key of its presence lease in cluster mode.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The other nodes' sockets on stream `id`, as of their leases.
    fn remote(&self, id: &StreamId) -> SocketCounts {
        self.cluster
            .as_ref()
            .and_then(|cluster| cluster.remote.get(id).copied())
            .unwrap_or_default()
    }

    /// Shows the senders of streams restored at start as `users` knows
    /// them (once, when the registry starts), and keeps every stream's
    /// senders current as `users` tells of changes. Without it, restored
    /// streams show their senders as unknown users.
    pub fn with_users(mut self, users: Addr<TokenActor>) -> Registry {
        self.users = Some(users);
        self
    }

    fn summary(id: &StreamId, entry: &Entry) -> StreamSummary {
        StreamSummary {
            id: id.clone(),
            senders: entry.sender_ids(),
            created_ms: entry.created_ms,
        }
    }

    /// The encoded list, encoded now if it changed since it was last asked
    /// for (a count, if it changed more than [`LISTED_COUNTS_STALE`] ago).
    fn listing(&mut self) -> ByteString {
        let stale = self.counts_changed
            && self
                .listing
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() >= LISTED_COUNTS_STALE);
        if stale {
            self.listing = None;
        }
        if let Some((body, _)) = &self.listing {
            return body.clone();
        }
        let remote = self.cluster.as_ref().map(|cluster| &cluster.remote);
        let body = encode_listing(&self.order, &self.streams, remote);
        self.listing = Some((body.clone(), Instant::now()));
        self.counts_changed = false;
        body
    }

    /// Replaces each sender's public info by the one in `infos` for the
    /// same user; re-encodes the list if that changed anything.
    fn update_senders(&mut self, infos: Vec<PublicUserInfo>) {
        let infos: HashMap<UserId, PublicUserInfo> = infos
            .into_iter()
            .map(|info| (info.twizzle_user_id.clone(), info))
            .collect();
        let mut changed = false;
        for sender in self.streams.values_mut().flat_map(|e| e.senders.iter_mut()) {
            if let Some(info) = infos.get(&sender.twizzle_user_id) {
                if sender != info {
                    *sender = info.clone();
                    changed = true;
                }
            }
        }
        if changed {
            self.listing = None;
        }
    }

    /// Looks the senders of every open stream up from the token actor, if
    /// there is one, and shows them as it answers.
    fn look_up_senders(&mut self) -> ResponseActFuture<Self, ()> {
        let user_ids: Vec<UserId> = self.streams.values().flat_map(Entry::sender_ids).collect();
        self.look_up(user_ids)
    }

    /// Looks `user_ids` up from the token actor, if there is one, and
    /// shows the senders among them as it answers.
    fn look_up(&mut self, mut user_ids: Vec<UserId>) -> ResponseActFuture<Self, ()> {
        user_ids.sort_unstable();
        user_ids.dedup();
        let lookup = match &self.users {
            Some(users) if !user_ids.is_empty() => Some(users.send(LookupUsers { user_ids })),
            _ => None,
        };
        Box::pin(
            async move {
                match lookup {
                    Some(lookup) => lookup.await.map(Some),
                    None => Ok(None),
                }
            }
            .into_actor(self)
            .map(|looked_up, registry, _| match looked_up {
                Ok(Some(infos)) => registry.update_senders(infos),
                Ok(None) => {}
                Err(e) => log::error!("cannot look up the senders of the open streams: {e}"),
            }),
        )
    }

    /// Starts a stream actor, idle since `idle_since_ms` (`None`: a sender
    /// is connected somewhere), and adds it to the open streams.
    fn launch(
        &mut self,
        id: StreamId,
        senders: Vec<PublicUserInfo>,
        created_ms: u64,
        idle_since_ms: Option<u64>,
        ctx: &mut Context<Self>,
    ) -> StreamSummary {
        let idle_since =
            idle_since_ms.map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
        if let Some(owner) = senders.first() {
            *self
                .streams_per_user
                .entry(owner.twizzle_user_id.clone())
                .or_default() += 1;
        }
        let setup = StreamSetup {
            id: id.clone(),
            senders: senders
                .iter()
                .map(|sender| sender.twizzle_user_id.clone())
                .collect(),
            idle_timeout: if self.cluster.is_some() {
                NO_COUNTDOWN
            } else {
                self.settings.idle_timeout
            },
            recording: self.store.recording(&id),
            limits: self.settings.stream_limits,
            metrics: Arc::clone(&self.settings.metrics),
            registry: Some(ctx.address().recipient()),
            idle_since: Some(idle_since),
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
            viewer_sockets: 0,
            created_ms,
            idle_since_ms,
            ending: false,
            pending_senders: 0,
        };
        self.next_seq += 1;
        let summary = Self::summary(&id, &entry);
        self.order.insert(entry.seq, id.clone());
        self.streams.insert(id, entry);
        self.listing = None;
        self.settings.metrics.streams.set(self.streams.len() as i64);
        summary
    }

    /// Brings back the streams the store kept, oldest first. One that had a
    /// sender when the server stopped counts as idle from now (its sender
    /// was cut off by the restart); one whose countdown ran out meanwhile ends.
    /// Their senders are unknown users until [`Registry::look_up_senders`].
    fn restore(&mut self, records: Vec<StreamRecord>, ctx: &mut Context<Self>) {
        if self.cluster.is_some() {
            // Other nodes may have senders on them: the cluster check
            // decides. Their senders are looked up after, all at once.
            for record in records {
                let senders = record.senders.iter().map(PublicUserInfo::unknown).collect();
                self.launch(
                    record.id,
                    senders,
                    record.created_ms,
                    record.idle_since_ms,
                    ctx,
                );
            }
            return;
        }
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
            let senders = record.senders.iter().map(PublicUserInfo::unknown).collect();
            self.launch(
                record.id,
                senders,
                record.created_ms,
                Some(idle_since_ms),
                ctx,
            );
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

    /// Launches a stream whose record another node wrote, or this one
    /// before a restart (cluster mode), and looks its senders up.
    fn adopt(&mut self, record: StreamRecord, ctx: &mut Context<Self>) {
        if self.streams.contains_key(&record.id) || self.shutting_down {
            return;
        }
        // Its senders first, so that it is never shown with unknown ones
        // here; a request for it meanwhile reads it from the store.
        let lookup = self.users.as_ref().map(|users| {
            users.send(LookupUsers {
                user_ids: record.senders.clone(),
            })
        });
        let looked_up = async move {
            match lookup {
                Some(lookup) => lookup.await.ok(),
                None => None,
            }
        };
        ctx.spawn(looked_up.into_actor(self).map(move |infos, registry, ctx| {
            let launched = registry.launch_adopted(record, ctx);
            match infos {
                Some(infos) => registry.update_senders(infos),
                // Looked up again, as a stream found on a request is.
                None => {
                    if let Some(lookup) = launched {
                        ctx.spawn(lookup);
                    }
                }
            }
        }));
    }

    /// Launches a stream made on another node; resolves once its senders
    /// are looked up. `None` if it runs here already.
    fn launch_adopted(
        &mut self,
        record: StreamRecord,
        ctx: &mut Context<Self>,
    ) -> Option<ResponseActFuture<Self, ()>> {
        if self.streams.contains_key(&record.id) || self.shutting_down {
            return None;
        }
        let senders = record.senders.iter().map(PublicUserInfo::unknown).collect();
        log::debug!("stream {} taken in from the shared store", record.id);
        self.launch(
            record.id,
            senders,
            record.created_ms,
            record.idle_since_ms,
            ctx,
        );
        Some(self.look_up(record.senders))
    }

    /// Forgets a stream: frees its creator's slot and, if `record_end` and
    /// the server is not shutting down (then it comes back on the next
    /// start), records its end.
    fn forget(&mut self, id: StreamId, record_end: bool, ctx: &mut Context<Self>) -> Option<Entry> {
        let entry = self.streams.remove(&id)?;
        self.order.remove(&entry.seq);
        self.listing = None;
        self.settings.metrics.streams.set(self.streams.len() as i64);
        if let Some(owner) = entry.senders.first() {
            let owner = &owner.twizzle_user_id;
            if let Some(open) = self.streams_per_user.get_mut(owner) {
                *open -= 1;
                if *open == 0 {
                    self.streams_per_user.remove(owner);
                }
            }
        }
        if entry.sender_sockets + entry.viewer_sockets > 0 {
            self.lease_changed(ctx);
        }
        if record_end && !self.shutting_down {
            self.keep(StreamChange::Ended(id), ctx);
        }
        Some(entry)
    }

    /// Has this node's lease written again soon, with its counts as they
    /// are then (cluster mode).
    fn lease_changed(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        if cluster.lease_due {
            return;
        }
        cluster.lease_due = true;
        ctx.run_later(PRESENCE_DEBOUNCE, |registry, _| {
            if let Some(cluster) = &mut registry.cluster {
                cluster.lease_due = false;
            }
            let sockets = registry
                .streams
                .iter()
                .filter(|(_, e)| e.sender_sockets + e.viewer_sockets > 0)
                .map(|(id, e)| {
                    let counts = SocketCounts {
                        senders: e.sender_sockets,
                        viewers: e.viewer_sockets,
                    };
                    (id.clone(), counts)
                })
                .collect();
            registry.store.publish_presence(sockets);
        });
    }

    /// Cluster mode, every [`CLUSTER_CHECK`]: drops the leases past their
    /// time, then, once the leases kept at start have come in, marks idle
    /// each stream no node has a sender on, keeps live each one this node
    /// has a sender on, and ends each one idle for the timeout.
    fn check_cluster(&mut self, ctx: &mut Context<Self>) {
        let lease = self.node_lease;
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let before = cluster.peers.len();
        cluster
            .peers
            .retain(|_, peer| peer.written.elapsed() < lease);
        if cluster.peers.len() != before {
            cluster.recount();
            self.counts_changed = true;
        }
        if self.shutting_down || !cluster.presence_loaded {
            return;
        }
        let now_ms = epoch_ms(SystemTime::now());
        let timeout_ms = u64::try_from(self.settings.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut live = Vec::new();
        let mut idle = Vec::new();
        let mut due = Vec::new();
        for (id, entry) in &mut self.streams {
            if entry.ending {
                continue;
            }
            if entry.sender_sockets > 0 {
                if entry.idle_since_ms.take().is_some() {
                    live.push(id.clone());
                }
                continue;
            }
            if cluster.remote.get(id).is_some_and(|r| r.senders > 0) {
                continue;
            }
            match entry.idle_since_ms {
                None => {
                    entry.idle_since_ms = Some(now_ms);
                    idle.push(id.clone());
                }
                Some(since) if since.saturating_add(timeout_ms) <= now_ms => {
                    entry.ending = true;
                    due.push(id.clone());
                }
                Some(_) => {}
            }
        }
        for id in live {
            self.keep(StreamChange::Live(id), ctx);
        }
        for id in idle {
            let marked = self.store.mark_idle(&id, now_ms);
            ctx.spawn(
                async move {
                    let _ = marked.await;
                }
                .into_actor(self),
            );
        }
        for id in due {
            let ended = self.store.end_idle(&id, self.settings.idle_timeout);
            ctx.spawn(ended.into_actor(self).map(move |ended, registry, ctx| {
                match ended {
                    Ok(true) => {
                        log::info!(
                            "stream {id} ended: no sender on any node for {:?}",
                            registry.settings.idle_timeout
                        );
                        registry.close_ended(id, ctx);
                    }
                    // Live again, or ended by another node: its record says which.
                    Ok(false) | Err(_) => {
                        if let Some(entry) = registry.streams.get_mut(&id) {
                            entry.ending = false;
                        }
                    }
                }
            }));
        }
    }

    /// Cluster mode: the last sender on this node left stream `id` at
    /// `since`; marks it idle from then if no other node has one.
    fn idle_here(&mut self, id: StreamId, since: SystemTime, ctx: &mut Context<Self>) {
        let remote = self.remote(&id);
        let ready = self.cluster.as_ref().is_some_and(|c| c.presence_loaded);
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        if !ready || remote.senders > 0 || entry.sender_sockets > 0 || entry.ending {
            return;
        }
        if entry.idle_since_ms.is_none() {
            let since_ms = epoch_ms(since);
            entry.idle_since_ms = Some(since_ms);
            let marked = self.store.mark_idle(&id, since_ms);
            ctx.spawn(
                async move {
                    let _ = marked.await;
                }
                .into_actor(self),
            );
        }
    }

    /// Forgets a stream whose record is ended, without writing it again,
    /// and closes its sockets with 1000 `stream ended`.
    fn close_ended(&mut self, id: StreamId, ctx: &mut Context<Self>) -> bool {
        match self.forget(id, false, ctx) {
            Some(entry) => {
                entry.addr.do_send(EndStream {
                    close: close::STREAM_ENDED,
                });
                true
            }
            None => false,
        }
    }

    /// Reads stream `id`'s record where this node has not heard of it yet
    /// (cluster mode), launching it if it is open; `None` if there is
    /// nothing to read: a single node, or a miss within [`MISS_CACHE`].
    fn find_elsewhere(&mut self, id: &StreamId) -> Option<ResponseActFuture<Self, ()>> {
        if self.shutting_down || self.cluster.as_ref()?.missed(id) {
            return None;
        }
        let found = self.store.find(id)?;
        let id = id.clone();
        // Answered once its senders are looked up too: the stream found is
        // shown with their names, as on the node that made it.
        Some(Box::pin(found.into_actor(self).then(
            move |found, registry, ctx| -> ResponseActFuture<Self, ()> {
                match found {
                    Ok(Some(record)) => {
                        if let Some(lookup) = registry.launch_adopted(record, ctx) {
                            return lookup;
                        }
                    }
                    Ok(None) => {
                        if let Some(cluster) = &mut registry.cluster {
                            cluster.miss(id);
                        }
                    }
                    Err(e) => log::debug!("stream {id}: cannot look it up: {e}"),
                }
                Box::pin(fut::ready(()))
            },
        )))
    }

    /// Stream `id`'s `StreamInfo`, encoded as in the list.
    fn info_body(&self, id: &StreamId) -> Option<ByteString> {
        let entry = self.streams.get(id)?;
        let info = serde_json::to_value(Listed::of(id, entry, self.remote(id))).ok()?;
        Some(ByteString::from(info.to_string()))
    }
}

/// The body of `GET /v0/streams` for the streams in `order`. Through a
/// `serde_json::Value`, as the list was always encoded, so that its bytes
/// (the order of keys included) stay what clients got before.
fn encode_listing(
    order: &BTreeMap<u64, StreamId>,
    streams: &HashMap<StreamId, Entry>,
    remote: Option<&HashMap<StreamId, SocketCounts>>,
) -> ByteString {
    let listed: Vec<Listed<'_>> = order
        .values()
        .filter_map(|id| {
            let counts = remote.and_then(|r| r.get(id).copied()).unwrap_or_default();
            Some(Listed::of(id, streams.get(id)?, counts))
        })
        .collect();
    ByteString::from(serde_json::json!({ "streams": listed }).to_string())
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(users) = &self.users {
            // Before the lookup below, which the token actor answers after
            // this: no change to a user after the lookup goes untold.
            users.do_send(WatchUsers {
                watcher: ctx.address().recipient(),
            });
        }
        let shared = self.store.follow(ClusterNode {
            node: self.node_id.clone(),
            lease: self.node_lease,
            news: ctx.address().recipient(),
        });
        if shared {
            log::info!(
                "node {}: streams and presence shared with every node on the store",
                self.node_id
            );
            self.cluster = Some(Cluster {
                peers: HashMap::new(),
                remote: HashMap::new(),
                misses: HashMap::new(),
                presence_loaded: false,
                lease_due: false,
            });
            ctx.run_interval(CLUSTER_CHECK, Self::check_cluster);
        }
        // `wait`: no request is answered before the kept streams are back
        // and their senders looked up.
        let loaded: StoreFuture<Vec<StreamRecord>> = self.store.load();
        ctx.wait(loaded.into_actor(self).then(|loaded, registry, ctx| {
            match loaded {
                Ok(records) => registry.restore(records, ctx),
                Err(e) => log::error!("cannot read the open streams back: {e}"),
            }
            registry.sweep(ctx);
            registry.look_up_senders()
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
        // In cluster mode the store counts the creator's streams on every
        // node, exactly; here they may trail behind.
        if self.cluster.is_none()
            && self
                .streams_per_user
                .get(&msg.owner.twizzle_user_id)
                .copied()
                .unwrap_or(0)
                >= limit
        {
            self.settings.metrics.limit_hit("streams_per_user");
            return refused(RegistryError::TooManyStreams { limit });
        }
        let created_ms = epoch_ms(SystemTime::now());
        let record = StreamRecord {
            id: StreamId::random(),
            senders: vec![msg.owner.twizzle_user_id.clone()],
            created_ms,
            idle_since_ms: Some(created_ms),
        };
        // Kept before the answer: a stream handed out survives a crash.
        let kept = self.store.create(record.clone(), limit);
        let asked = Instant::now();
        AtomicResponse::new(Box::pin(kept.into_actor(self).map(
            move |kept, registry, ctx| {
                registry.settings.metrics.state_synced(asked.elapsed());
                if !kept.map_err(RegistryError::Storage)? {
                    registry.settings.metrics.limit_hit("streams_per_user");
                    return Err(RegistryError::TooManyStreams { limit });
                }
                let summary = registry.launch(
                    record.id,
                    vec![msg.owner],
                    record.created_ms,
                    Some(record.created_ms),
                    ctx,
                );
                log::info!("stream {} created by {}", summary.id, summary.senders[0]);
                Ok(summary)
            },
        )))
    }
}

impl Handler<ListStreams> for Registry {
    type Result = MessageResult<ListStreams>;

    fn handle(&mut self, _: ListStreams, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.order
                .values()
                .filter_map(|id| Some(Self::summary(id, self.streams.get(id)?)))
                .collect(),
        )
    }
}

impl Handler<StreamListBody> for Registry {
    type Result = MessageResult<StreamListBody>;

    fn handle(&mut self, _: StreamListBody, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.listing())
    }
}

impl Handler<StreamInfoBody> for Registry {
    type Result = ResponseActFuture<Self, Option<ByteString>>;

    fn handle(&mut self, msg: StreamInfoBody, _: &mut Self::Context) -> Self::Result {
        if self.streams.contains_key(&msg.id) {
            return Box::pin(fut::ready(self.info_body(&msg.id)));
        }
        match self.find_elsewhere(&msg.id) {
            Some(found) => Box::pin(found.map(move |(), registry, _| registry.info_body(&msg.id))),
            None => Box::pin(fut::ready(None)),
        }
    }
}

impl Handler<UserUpdated> for Registry {
    type Result = ();

    fn handle(&mut self, msg: UserUpdated, _: &mut Self::Context) {
        // A change told while its user's stream is being created is applied
        // before that stream exists, which then shows the info its creator
        // authenticated with until the next change: a sign-in racing a
        // creation, rare and harmless.
        self.update_senders(vec![msg.info]);
    }
}

impl Handler<CheckWritable> for Registry {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: CheckWritable, _: &mut Self::Context) -> Self::Result {
        self.store.check_writable()
    }
}

impl Handler<FindStream> for Registry {
    type Result = ResponseActFuture<Self, Option<Addr<StreamActor>>>;

    fn handle(&mut self, msg: FindStream, _: &mut Self::Context) -> Self::Result {
        let find = |registry: &Registry| registry.streams.get(&msg.id).map(|e| e.addr.clone());
        if let Some(addr) = find(self) {
            return Box::pin(fut::ready(Some(addr)));
        }
        match self.find_elsewhere(&msg.id) {
            Some(found) => {
                Box::pin(found.map(move |(), registry, _| {
                    registry.streams.get(&msg.id).map(|e| e.addr.clone())
                }))
            }
            None => Box::pin(fut::ready(None)),
        }
    }
}

impl Handler<OpenSocket> for Registry {
    type Result = ResponseActFuture<Self, Result<Admission, RegistryError>>;

    fn handle(&mut self, msg: OpenSocket, ctx: &mut Self::Context) -> Self::Result {
        if self.shutting_down || self.streams.contains_key(&msg.stream_id) {
            return self.admit_across(msg, ctx);
        }
        match self.find_elsewhere(&msg.stream_id) {
            Some(found) => {
                Box::pin(found.then(move |(), registry, ctx| registry.admit_across(msg, ctx)))
            }
            None => Box::pin(fut::ready(Err(RegistryError::UnknownStream))),
        }
    }
}

impl Registry {
    /// Admits a socket; in cluster mode a sender socket first takes one of
    /// the stream's sender-socket slots, counted over every node by
    /// compare-and-set, so that the limit holds exactly however the
    /// sockets are spread.
    fn admit_across(
        &mut self,
        msg: OpenSocket,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Admission, RegistryError>> {
        let live: Option<Vec<String>> = self
            .cluster
            .as_ref()
            .map(|cluster| cluster.peers.keys().cloned().collect());
        let (Some(live), false) = (live, self.shutting_down) else {
            return Box::pin(fut::ready(self.admit(msg, false, ctx)));
        };
        let Some(entry) = self.streams.get_mut(&msg.stream_id) else {
            return Box::pin(fut::ready(Err(RegistryError::UnknownStream)));
        };
        let sender = msg
            .user_id
            .as_ref()
            .is_some_and(|user| entry.senders.iter().any(|s| s.twizzle_user_id == *user));
        if !sender {
            return Box::pin(fut::ready(self.admit(msg, false, ctx)));
        }
        let mine = entry.sender_sockets + entry.pending_senders;
        entry.pending_senders += 1;
        let limit = self.settings.max_sender_sockets_per_stream;
        let taken = self
            .store
            .take_sender_slot(&msg.stream_id, &self.node_id, mine, live, limit);
        Box::pin(taken.into_actor(self).map(move |taken, registry, ctx| {
            let id = msg.stream_id.clone();
            if let Some(entry) = registry.streams.get_mut(&id) {
                entry.pending_senders -= 1;
            }
            match taken {
                Ok(true) => {}
                Ok(false) => {
                    registry
                        .settings
                        .metrics
                        .limit_hit("sender_sockets_per_stream");
                    return Err(RegistryError::TooManySenderSockets { limit });
                }
                Err(e) => return Err(RegistryError::Storage(e)),
            }
            let admitted = registry.admit(msg, true, ctx);
            if admitted.is_err() {
                // The slot taken goes back.
                let mine = registry
                    .streams
                    .get(&id)
                    .map_or(0, |e| e.sender_sockets + e.pending_senders);
                registry
                    .store
                    .set_sender_slots(&id, &registry.node_id, mine);
            }
            admitted
        }))
    }
}

impl Registry {
    /// Admits a socket to a stream this node runs, within the limits.
    /// `slot_taken`: a sender's cluster-wide slot is taken already.
    fn admit(
        &mut self,
        msg: OpenSocket,
        slot_taken: bool,
        ctx: &mut Context<Self>,
    ) -> Result<Admission, RegistryError> {
        // Checked first: a socket refused while the server stops must hear
        // that it will be back, not that its stream is unknown.
        if self.shutting_down {
            return Err(RegistryError::ShuttingDown);
        }
        let remote = self.remote(&msg.stream_id);
        let entry = self
            .streams
            .get_mut(&msg.stream_id)
            .ok_or(RegistryError::UnknownStream)?;
        let limit = self.settings.max_sockets;
        if self.sockets >= limit {
            self.settings.metrics.limit_hit("sockets");
            return Err(RegistryError::TooManySockets { limit });
        }
        let client = client_key(msg.client);
        let from_client = self.sockets_per_client.get(&client).copied().unwrap_or(0);
        let limit = self.settings.max_sockets_per_client;
        if from_client >= limit {
            self.settings.metrics.limit_hit("sockets_per_client");
            return Err(RegistryError::TooManyClientSockets { limit });
        }
        let sender = msg
            .user_id
            .as_ref()
            .is_some_and(|user| entry.senders.iter().any(|s| s.twizzle_user_id == *user));
        if sender {
            let limit = self.settings.max_sender_sockets_per_stream;
            if !slot_taken && entry.sender_sockets + remote.senders >= limit {
                self.settings.metrics.limit_hit("sender_sockets_per_stream");
                return Err(RegistryError::TooManySenderSockets { limit });
            }
            entry.sender_sockets += 1;
        } else {
            entry.viewer_sockets += 1;
        }
        self.counts_changed = true;
        self.sockets += 1;
        *self.sockets_per_client.entry(client).or_default() += 1;
        let socket = self.next_socket;
        self.next_socket += 1;
        let addr = entry.addr.clone();
        let slot = SocketClosed {
            stream_id: msg.stream_id,
            sender,
            client,
        };
        self.lease_changed(ctx);
        Ok(Admission::new(
            addr,
            socket,
            msg.user_id,
            slot,
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

    fn handle(&mut self, msg: SocketClosed, ctx: &mut Self::Context) {
        self.sockets = self.sockets.saturating_sub(1);
        if let Some(open) = self.sockets_per_client.get_mut(&msg.client) {
            *open -= 1;
            if *open == 0 {
                self.sockets_per_client.remove(&msg.client);
            }
        }
        if let Some(entry) = self.streams.get_mut(&msg.stream_id) {
            let count = if msg.sender {
                &mut entry.sender_sockets
            } else {
                &mut entry.viewer_sockets
            };
            *count = count.saturating_sub(1);
            self.counts_changed = true;
            if msg.sender && self.cluster.is_some() {
                let mine = entry.sender_sockets + entry.pending_senders;
                self.store
                    .set_sender_slots(&msg.stream_id, &self.node_id, mine);
            }
            self.lease_changed(ctx);
        }
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseActFuture<Self, ()>;

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
        Box::pin(
            async move {
                for end in ends {
                    let _ = end.await;
                }
                let _ = synced.await;
            }
            .into_actor(self)
            // The lease goes last, so that no other node counts this one's
            // sockets as gone while they are still open.
            .then(|(), registry, _| {
                let withdrawn = registry.store.withdraw_presence();
                async move {
                    let _ = withdrawn.await;
                }
                .into_actor(registry)
            }),
        )
    }
}

impl Handler<StreamNotice> for Registry {
    type Result = ();

    fn handle(&mut self, msg: StreamNotice, ctx: &mut Self::Context) {
        match msg {
            StreamNotice::Live { id } => {
                if let Some(entry) = self.streams.get_mut(&id) {
                    entry.idle_since_ms = None;
                    self.keep(StreamChange::Live(id), ctx);
                }
            }
            // In cluster mode a sender may be on another node: the stream
            // is marked idle only if none is known anywhere (the cluster
            // check marks it later otherwise, once none is).
            StreamNotice::Idle { id, since } if self.cluster.is_some() => {
                self.idle_here(id, since, ctx);
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
                if let Some(entry) = self.forget(id, true, ctx) {
                    entry.addr.do_send(EndStream {
                        close: close::STREAM_ENDED,
                    });
                }
            }
            StreamNotice::Stopped { id } => {
                self.forget(id, true, ctx);
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

impl Handler<ClusterNews> for Registry {
    type Result = ();

    fn handle(&mut self, msg: ClusterNews, ctx: &mut Self::Context) {
        if self.cluster.is_none() {
            return;
        }
        match msg {
            ClusterNews::Stream { record, ended } => {
                if let Some(cluster) = &mut self.cluster {
                    cluster.misses.remove(&record.id);
                }
                if ended {
                    let id = record.id;
                    if self.close_ended(id.clone(), ctx) {
                        log::info!("stream {id}: its end was recorded by another node; closing its sockets here");
                    }
                } else if let Some(entry) = self.streams.get_mut(&record.id) {
                    entry.idle_since_ms = record.idle_since_ms;
                } else {
                    self.adopt(record, ctx);
                }
            }
            ClusterNews::Presence { node, streams, age } => {
                let Some(cluster) = &mut self.cluster else {
                    return;
                };
                if node == self.node_id || age >= self.node_lease {
                    return;
                }
                let now = Instant::now();
                let peer = Peer {
                    streams: streams.into_iter().collect(),
                    written: now.checked_sub(age).unwrap_or(now),
                };
                cluster.peers.insert(node, peer);
                cluster.recount();
                self.counts_changed = true;
            }
            ClusterNews::PresenceLoaded => {
                if let Some(cluster) = &mut self.cluster {
                    cluster.presence_loaded = true;
                }
            }
            ClusterNews::NodeGone { node } => {
                let Some(cluster) = &mut self.cluster else {
                    return;
                };
                if cluster.peers.remove(&node).is_some() {
                    cluster.recount();
                    self.counts_changed = true;
                }
            }
        }
    }
}

/// One kept recording, as `GET /v0/recordings` lists it.
#[derive(Serialize)]
struct ListedRecording {
    #[serde(rename = "streamID")]
    stream_id: StreamId,
    senders: Vec<PublicUserInfo>,
    #[serde(rename = "createdAt")]
    created_at: u64,
    #[serde(rename = "endedAt")]
    ended_at: Option<u64>,
    events: u64,
    bytes: u64,
}

impl Handler<RecordingsBody> for Registry {
    type Result = ResponseActFuture<Self, Result<ByteString, RegistryError>>;

    fn handle(&mut self, _: RecordingsBody, _: &mut Self::Context) -> Self::Result {
        // Open streams from here, their sizes from their actors (asked at
        // once); ended ones from the store, their senders' names from the
        // token actor, so that none goes stale on disk.
        let open: Vec<_> = self
            .streams
            .iter()
            .map(|(id, entry)| {
                (
                    id.clone(),
                    entry.senders.clone(),
                    entry.created_ms,
                    entry.addr.send(GetRecordingSize),
                )
            })
            .collect();
        let ended = self.store.ended_recordings();
        let users = self.users.clone();
        Box::pin(
            async move {
                let mut listed = Vec::new();
                for (id, senders, created_ms, size) in open {
                    // A stream that stopped meanwhile is listed as ended next time.
                    let Ok(size) = size.await else { continue };
                    listed.push(ListedRecording {
                        stream_id: id,
                        senders,
                        created_at: created_ms,
                        ended_at: None,
                        events: size.events,
                        bytes: size.bytes,
                    });
                }
                let ended: Vec<EndedRecording> = ended.await.map_err(RegistryError::Storage)?;
                let mut user_ids: Vec<UserId> =
                    ended.iter().flat_map(|r| r.senders.clone()).collect();
                user_ids.sort_unstable();
                user_ids.dedup();
                let infos: HashMap<UserId, PublicUserInfo> = match users {
                    Some(users) if !user_ids.is_empty() => users
                        .send(LookupUsers { user_ids })
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .map(|info| (info.twizzle_user_id.clone(), info))
                        .collect(),
                    _ => HashMap::new(),
                };
                for recording in ended {
                    let senders = recording
                        .senders
                        .iter()
                        .map(|id| {
                            infos
                                .get(id)
                                .cloned()
                                .unwrap_or_else(|| PublicUserInfo::unknown(id))
                        })
                        .collect();
                    listed.push(ListedRecording {
                        stream_id: recording.id,
                        senders,
                        created_at: recording.created_ms,
                        ended_at: Some(recording.ended_ms),
                        events: recording.events,
                        bytes: recording.bytes,
                    });
                }
                listed.sort_by(|a, b| {
                    (b.created_at, &b.stream_id).cmp(&(a.created_at, &a.stream_id))
                });
                let body = serde_json::json!({ "recordings": listed });
                Ok(ByteString::from(body.to_string()))
            }
            .into_actor(self),
        )
    }
}

impl Handler<ReadRecording> for Registry {
    type Result = ResponseFuture<Result<Chunk, RegistryError>>;

    fn handle(&mut self, msg: ReadRecording, _: &mut Self::Context) -> Self::Result {
        let kept =
            self.streams.contains_key(&msg.id) || self.store.ended_senders(&msg.id).is_some();
        if !kept {
            return Box::pin(std::future::ready(Err(RegistryError::UnknownStream)));
        }
        let read = self
            .store
            .read_recording(&msg.id, msg.after, msg.cursor, msg.max);
        Box::pin(async move {
            match read.await {
                Ok(Some(chunk)) => Ok(chunk),
                // An open stream that has recorded nothing yet.
                Ok(None) => Ok(Chunk {
                    events: Vec::new(),
                    next: msg.cursor,
                    done: true,
                }),
                Err(e) => Err(RegistryError::Storage(e)),
            }
        })
    }
}

impl Handler<DeleteRecording> for Registry {
    type Result = ResponseFuture<Result<(), RegistryError>>;

    fn handle(&mut self, msg: DeleteRecording, _: &mut Self::Context) -> Self::Result {
        let refused = |e| -> Self::Result { Box::pin(std::future::ready(Err(e))) };
        if let Some(entry) = self.streams.get(&msg.id) {
            if !entry.senders.iter().any(|s| s.twizzle_user_id == msg.user) {
                return refused(RegistryError::NotASender);
            }
            let cleared = entry.addr.send(ClearRecording);
            return Box::pin(async move {
                match cleared.await {
                    Ok(cleared) => cleared.map_err(RegistryError::Storage),
                    // It ended meanwhile, and its sockets were closed.
                    Err(_) => Err(RegistryError::UnknownStream),
                }
            });
        }
        match self.store.ended_senders(&msg.id) {
            None => refused(RegistryError::UnknownStream),
            Some(senders) if !senders.contains(&msg.user) => refused(RegistryError::NotASender),
            Some(_) => {
                let deleted = self.store.delete_recording(&msg.id);
                Box::pin(async move { deleted.await.map_err(RegistryError::Storage) })
            }
        }
    }
}
