//! The seam between the actors and durable state.
//!
//! Each kind of state the broker keeps has a trait here, and the actors hold
//! a boxed one, never a file:
//!
//! - [`UserStore`]: the token actor's users and claim tokens;
//! - [`StreamStore`]: the registry's open streams, and where each stream's
//!   recording lives;
//! - [`RecordingStore`]: one stream's recording and its [`Snapshot`].
//!
//! Calls that must be durable before the actor answers return a
//! [`StoreFuture`], which the actor awaits before it changes its own state,
//! so a store that is networked fits as well as the local files. Failures
//! are [`StoreError`]s, which say what the client is told (`storage full`,
//! `storage read-only`, `storage unavailable`), not which system call failed.
//!
//! Implementations: [`local`] (JSON-lines files in the data directory, the
//! default), [`nats`] (NATS JetStream, for cluster mode) and [`memory`]
//! (keeps nothing past the process; for tests).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::ids::{DevName, StreamId, UserId};
use crate::replay::{Replay, Snapshot};
use crate::secrets::TokenHash;

pub mod disk;
pub mod journal;
pub mod local;
pub mod memory;
pub mod nats;
pub mod recording;

/// What a store call resolves to. Not `Send`: it runs on the actor that made it.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>>>>;

/// A store call's answer that is known at once.
pub fn done<T: 'static>(result: Result<T, StoreError>) -> StoreFuture<T> {
    Box::pin(std::future::ready(result))
}

/// Why durable state could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The disk (or quota) is full; reads still work.
    Full,
    /// The storage is read-only; reads still work.
    ReadOnly,
    /// The storage cannot be reached now (a networked store); try again later.
    Unavailable(String),
    /// Another node wrote first what this write expected to follow (a
    /// shared recording's next event); read on and try again.
    Conflict(String),
    /// Anything else; the details are for the log.
    Failed(String),
}

impl StoreError {
    /// The message a client is shown for it.
    pub fn public_message(&self) -> &'static str {
        match self {
            StoreError::Full => "storage full",
            StoreError::ReadOnly => "storage read-only",
            StoreError::Unavailable(_) | StoreError::Conflict(_) => "storage unavailable",
            StoreError::Failed(_) => "internal error",
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full => f.write_str("storage full"),
            StoreError::ReadOnly => f.write_str("storage read-only"),
            StoreError::Unavailable(why) => write!(f, "storage unavailable: {why}"),
            StoreError::Conflict(why) => write!(f, "written elsewhere first: {why}"),
            StoreError::Failed(why) => write!(f, "storage failed: {why}"),
        }
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> StoreError {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::Full,
            io::ErrorKind::ReadOnlyFilesystem => StoreError::ReadOnly,
            _ => StoreError::Failed(e.to_string()),
        }
    }
}

/// What a user signed in with: the one thing that finds them again at
/// their next sign-in.
///
/// Kept flattened into the user's record under a key of its own per kind
/// (`wca_account`, `dev_name`), so that the records written before
/// development users existed, which all have `wca_account`, load as they
/// are, and a WCA user's record is written as it always was. The kinds
/// cannot collide: a development user is never found by a WCA account
/// number, nor a WCA user by a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Identity {
    /// A WCA account.
    Wca {
        /// The WCA account number, which never changes.
        wca_account: u64,
    },
    /// A development user, signed in by name alone (`GET /v0/auth/dev`).
    Dev {
        /// The name they signed in with.
        dev_name: DevName,
    },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Wca { wca_account } => write!(f, "WCA account {wca_account}"),
            Identity::Dev { dev_name } => write!(f, "development name {:?}", dev_name.as_str()),
        }
    }
}

/// A user as the token actor keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's ID.
    pub id: UserId,
    /// What they sign in with.
    #[serde(flatten)]
    pub identity: Identity,
    /// The WCA ID, if the account has one (a development user has none).
    pub wca_id: Option<String>,
    /// The WCA name, or a development user's name.
    pub name: String,
    /// Hashes of the user's valid access tokens, oldest first.
    pub token_hashes: Vec<TokenHash>,
    /// The newest access token, sealed; returned again on the next sign-in.
    pub sealed_token: Option<String>,
}

/// An unredeemed claim token (kept as its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The claim token's hash.
    pub hash: TokenHash,
    /// Whose access token it is redeemed for.
    pub user_id: UserId,
    /// When it stops working, in ms since the Unix epoch.
    pub expires_ms: u64,
}

/// One change to the users and claims; a call applies several in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    /// A user was created or changed: the whole user.
    PutUser(UserRecord),
    /// A claim token was issued.
    PutClaim(ClaimRecord),
    /// A claim token was redeemed (or expired).
    RemoveClaim(TokenHash),
}

/// Everything a [`UserStore`] holds.
#[derive(Debug, Default)]
pub struct UserState {
    /// Every user.
    pub users: Vec<UserRecord>,
    /// Every unredeemed claim, expired ones possibly included.
    pub claims: Vec<ClaimRecord>,
}

/// A change to the users and claims that a [`UserStore`] shared by several
/// nodes tells the token actor of: made by another node, or found to be
/// newer than what the actor was last given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserNews {
    /// A user as kept now: newer than, or the same as, any version of them
    /// the store handed over before.
    User(UserRecord),
    /// An unredeemed claim token.
    Claim(ClaimRecord),
    /// A claim token that was redeemed or expired.
    ClaimGone(TokenHash),
}

/// What a shared [`UserStore`] tells of changes made elsewhere, in the
/// order they were made. Polled on the token actor's thread, like a
/// [`StoreFuture`].
pub type UserFeed = Pin<Box<dyn futures_util::Stream<Item = UserNews>>>;

/// What became of the changes given to [`UserStore::try_apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// All of them are kept.
    Kept,
    /// The first `kept` are kept; the next one was not, because what it was
    /// made from changed elsewhere meanwhile (another node's sign-in or
    /// redemption). The caller takes `news` in and makes that change again
    /// from it, or gives up (a claim token redeemed elsewhere).
    Stale {
        /// How many of the changes, in order, are kept.
        kept: usize,
        /// What is kept now in place of what the change was made from.
        news: UserNews,
        /// What happened, for the log.
        why: String,
    },
}

/// The token actor's users and claim tokens.
///
/// A store shared by several nodes (see [`UserStore::shared`]) also tells
/// of the changes other nodes make ([`UserStore::follow`]), and answers for
/// what the actor has not been told of yet (the `find_` calls): a token
/// handed out by one node works on the next at once. Every user record it
/// hands over, whichever way, is at least as new as the last one it handed
/// over, so the actor can take each in as it comes. The others answer
/// "nothing more than what was loaded".
pub trait UserStore {
    /// Everything kept, for the token actor's start.
    fn load(&mut self) -> StoreFuture<UserState>;

    /// Makes `changes` durable, all or none, before the future resolves.
    fn apply(&mut self, changes: Vec<UserChange>) -> StoreFuture<()>;

    /// Whether other nodes change what this store holds.
    fn shared(&self) -> bool {
        false
    }

    /// As [`UserStore::apply`], except that a change refused because what
    /// it was made from changed elsewhere is told as [`Applied::Stale`]
    /// rather than as an error.
    fn try_apply(&mut self, changes: Vec<UserChange>) -> StoreFuture<Applied> {
        let applied = self.apply(changes);
        Box::pin(async move { applied.await.map(|()| Applied::Kept) })
    }

    /// The changes made elsewhere from the end of [`UserStore::load`] on,
    /// for as long as it is polled; `None` for a store nobody else writes.
    fn follow(&mut self) -> Option<UserFeed> {
        None
    }

    /// The user as kept now, if newer than what the store handed over.
    fn find_user(&mut self, _id: &UserId) -> StoreFuture<Option<UserRecord>> {
        done(Ok(None))
    }

    /// The user whose access token has this hash, if the store has one
    /// newer than what it handed over.
    fn find_token(&mut self, _hash: &TokenHash) -> StoreFuture<Option<UserRecord>> {
        done(Ok(None))
    }

    /// The unredeemed, unexpired claim token of this hash, if kept.
    fn find_claim(&mut self, _hash: &TokenHash) -> StoreFuture<Option<ClaimRecord>> {
        done(Ok(None))
    }

    /// Whether a change made now would be kept: `Ok`, or what would refuse
    /// it (`Full`, `ReadOnly`, `Unavailable`). For the readiness check, so
    /// cheap enough to run every few seconds, and it keeps nothing.
    fn check_writable(&mut self) -> StoreFuture<()>;
}

/// An open stream as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    /// The stream's ID.
    pub id: StreamId,
    /// Users allowed to send; the creator first.
    pub senders: Vec<UserId>,
    /// When it was created, in ms since the Unix epoch.
    pub created_ms: u64,
    /// Since when no sender is connected, in ms since the epoch; `None` while one is.
    pub idle_since_ms: Option<u64>,
}

/// An ended stream whose recording is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedRecording {
    /// The stream's ID.
    pub id: StreamId,
    /// Its senders; none for a recording kept from before they were.
    pub senders: Vec<UserId>,
    /// When the stream was created, in ms since the Unix epoch.
    pub created_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// Events recorded.
    pub events: u64,
    /// Bytes recorded.
    pub bytes: u64,
}

/// One change to the open streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChange {
    /// A stream was created; durable before the future resolves.
    Created(StreamRecord),
    /// A sender connected to a stream that had none.
    Live(StreamId),
    /// The last sender left at `since_ms`.
    Idle {
        /// The stream.
        id: StreamId,
        /// When, in ms since the Unix epoch.
        since_ms: u64,
    },
    /// The stream ended.
    Ended(StreamId),
}

/// One node's sockets on one stream, as its presence lease lists them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketCounts {
    /// Sender sockets.
    pub senders: usize,
    /// Viewer sockets.
    pub viewers: usize,
}

/// What a store shared by several nodes tells a registry of the others
/// (cluster mode); a store no other node shares never sends it.
#[derive(actix::Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum ClusterNews {
    /// A stream's record as some node (this one included) wrote it.
    Stream {
        /// The record.
        record: StreamRecord,
        /// Whether it is ended.
        ended: bool,
    },
    /// Another node's lease: its sockets, per stream that has any.
    Presence {
        /// The node's ID.
        node: String,
        /// Its sockets, per stream.
        streams: Vec<(StreamId, SocketCounts)>,
        /// How long ago the lease was written.
        age: std::time::Duration,
    },
    /// A node withdrew its lease: it stopped cleanly.
    NodeGone {
        /// The node's ID.
        node: String,
    },
    /// Every lease kept when the node began to follow them has been told.
    PresenceLoaded,
}

/// A node that joins the others sharing its store (see [`StreamStore::follow`]).
pub struct ClusterNode {
    /// Its random ID, the key of its lease.
    pub node: String,
    /// How long its lease, and every other node's, lasts unrefreshed.
    pub lease: std::time::Duration,
    /// Where the other nodes' streams and leases are told.
    pub news: actix::Recipient<ClusterNews>,
}

/// The registry's open streams, and where their recordings live.
///
/// The methods with defaults are for stores that several nodes share
/// (cluster mode); the defaults are a single node's, whose registry alone
/// decides.
pub trait StreamStore {
    /// The streams open when the server last stopped, oldest first.
    fn load(&mut self) -> StoreFuture<Vec<StreamRecord>>;

    /// Keeps `change`. A creation is durable when the future resolves; the
    /// others may trail behind (a restart can do without them) until
    /// [`StreamStore::sync`].
    fn record(&mut self, change: StreamChange) -> StoreFuture<()>;

    /// Resolves once every change recorded so far is durable.
    fn sync(&mut self) -> StoreFuture<()>;

    /// Deletes the recordings of streams that are no longer open and were
    /// last written more than `keep` ago; resolves to how many went.
    fn sweep_recordings(&mut self, keep: std::time::Duration) -> StoreFuture<usize>;
    /// Whether a change recorded now would be kept, as
    /// [`UserStore::check_writable`].
    fn check_writable(&mut self) -> StoreFuture<()>;

    /// The recording of stream `id`, not yet opened. `Send`, since the
    /// stream it is for runs on another thread.
    fn recording(&mut self, id: &StreamId) -> Box<dyn RecordingStore + Send>;

    /// The ended streams whose recordings are kept, with their sizes.
    fn ended_recordings(&mut self) -> StoreFuture<Vec<EndedRecording>>;

    /// The senders of ended stream `id`, if its recording is kept.
    fn ended_senders(&mut self, id: &StreamId) -> Option<Vec<UserId>>;

    /// Deletes the recording of ended stream `id`.
    fn delete_recording(&mut self, id: &StreamId) -> StoreFuture<()>;

    /// Reads up to `max` events after offset `after` of stream `id`'s
    /// recording, open or ended, from `cursor` on; `None` if none is kept.
    fn read_recording(
        &mut self,
        id: &StreamId,
        after: u64,
        cursor: Cursor,
        max: usize,
    ) -> StoreFuture<Option<Chunk>>;

    /// Starts telling `node.news` of every stream record any node writes
    /// and of every other node's lease, from what is kept now on and again
    /// after a reconnect; `false` (and nothing told) for a store no other
    /// node shares: the registry then runs as a single node.
    fn follow(&mut self, node: ClusterNode) -> bool {
        let _ = node;
        false
    }

    /// Reads stream `id`'s record, which another node may have just
    /// created; resolves to it if it is open. `None` for a store no other
    /// node writes: what the registry knows is all there is.
    fn find(&mut self, id: &StreamId) -> Option<StoreFuture<Option<StreamRecord>>> {
        let _ = id;
        None
    }

    /// Creates a stream, durable when the future resolves, unless its
    /// creator has `max_per_user` open streams already over all nodes
    /// sharing the store: then nothing is kept and it resolves to `false`.
    /// A single node's store leaves the limit to its registry.
    fn create(&mut self, record: StreamRecord, max_per_user: usize) -> StoreFuture<bool> {
        let _ = max_per_user;
        let kept = self.record(StreamChange::Created(record));
        Box::pin(async move { kept.await.map(|()| true) })
    }

    /// Keeps open stream `id` idle since `since_ms`, unless a node kept it
    /// idle (or ended) already: a compare-and-set on its record.
    fn mark_idle(&mut self, id: &StreamId, since_ms: u64) -> StoreFuture<()> {
        self.record(StreamChange::Idle {
            id: id.clone(),
            since_ms,
        })
    }

    /// Ends stream `id` if its record says it has been idle for `timeout`
    /// or more, by compare-and-set: resolves to whether this call ended it
    /// (`false` if it was live, not idle long enough, or ended already).
    fn end_idle(&mut self, id: &StreamId, timeout: std::time::Duration) -> StoreFuture<bool> {
        let _ = timeout;
        let ended = self.record(StreamChange::Ended(id.clone()));
        Box::pin(async move { ended.await.map(|()| true) })
    }

    /// Makes `sockets` this node's lease, written soon and refreshed until
    /// [`StreamStore::withdraw_presence`]. Nothing for a single node.
    fn publish_presence(&mut self, sockets: Vec<(StreamId, SocketCounts)>) {
        let _ = sockets;
    }

    /// Deletes this node's lease, for a clean stop; resolves once it is
    /// gone (or could not be deleted, which leaves it to expire).
    fn withdraw_presence(&mut self) -> StoreFuture<()> {
        done(Ok(()))
    }

    /// Cluster mode: takes one of stream `id`'s `max` sender-socket slots
    /// for node `node`, which then has `mine + 1` sender sockets on it;
    /// the slots of nodes not in `live` are free (their leases ran out).
    /// Resolves to `false` if every slot is taken. A single node counts
    /// its own sockets, so this is always `true` there.
    fn take_sender_slot(
        &mut self,
        id: &StreamId,
        node: &str,
        mine: usize,
        live: Vec<String>,
        max: usize,
    ) -> StoreFuture<bool> {
        let _ = (id, node, mine, live, max);
        done(Ok(true))
    }

    /// Cluster mode: node `node` has `mine` sender sockets on stream `id`
    /// now (one closed, or a slot taken was not used).
    fn set_sender_slots(&mut self, id: &StreamId, node: &str, mine: usize) {
        let _ = (id, node, mine);
    }
}

/// Which offsets a recording holds without a hole: every one from `from`
/// to `to`. Events before `from` may be kept too, behind a hole (a failed
/// write, a deleted recording), or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The first offset of the run.
    pub from: u64,
    /// The last offset of the run; below `from` when nothing is kept.
    pub to: u64,
    /// How many events the recording holds, the run and any before it.
    #[serde(default)]
    pub events: u64,
}

impl Default for Kept {
    fn default() -> Kept {
        Kept {
            from: 1,
            to: 0,
            events: 0,
        }
    }
}

impl Kept {
    /// Nothing kept, and the next event recorded will be `next`.
    pub fn from_next(next: u64) -> Kept {
        Kept {
            from: next,
            to: next.saturating_sub(1),
            events: 0,
        }
    }

    /// The event at `offset` was recorded: the run grows, or a new one
    /// starts there.
    pub fn extend(&mut self, offset: u64) {
        if offset != self.to + 1 {
            self.from = offset;
        }
        self.to = offset;
        self.events += 1;
    }

    /// Whether every event after `after` up to `until` is kept.
    pub fn covers(&self, after: u64, until: u64) -> bool {
        after >= until || (self.from <= after + 1 && until <= self.to)
    }
}

/// What an opened recording holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// The replay as of its last event.
    pub replay: Replay,
    /// The offsets it holds.
    pub kept: Kept,
    /// Its length in bytes.
    pub bytes: u64,
}

impl Opened {
    /// Takes the recorded `event` at `offset` into the replay and the kept
    /// offsets, unless the replay (from a snapshot) already counts it.
    pub fn apply(&mut self, offset: u64, event: &crate::event::Event) {
        if offset <= self.replay.accepted() {
            return;
        }
        self.kept.extend(offset);
        let frame = crate::event::with_offset(&event.text, offset);
        self.replay.remember(event.kind, offset, frame);
    }
}

/// What a recording other nodes write too tells the stream that follows it.
#[derive(Debug, Clone)]
pub enum Followed {
    /// An event recorded, by this node or another, as it was recorded.
    Event {
        /// The event, its offset and when it was received.
        recorded: Recorded,
        /// Its kind, for the replay.
        kind: crate::event::EventKind,
        /// Bytes of its recording line (its newline counted), for the quota.
        bytes: u64,
    },
    /// The feed may have missed events (its connection came back): the
    /// follower compares where it is with the recording.
    Check,
}

/// The events a shared recording is given, as they come: in the order they
/// were recorded, each at most once, but possibly with some missing, which
/// the follower finds by their offsets and reads back from the recording.
pub type Feed = Pin<Box<dyn futures_util::Stream<Item = Followed> + Send>>;

/// One recorded event, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Its offset.
    pub offset: u64,
    /// When it was received, in ms since the Unix epoch; `None` for events
    /// recorded before that was kept.
    pub received_ms: Option<u64>,
    /// The event as senders' events are encoded: `{"event":…,"data":…}`.
    pub text: ByteString,
    /// Who sent it, where the recording keeps that (cluster mode), for the
    /// rate of a sender with sockets on several nodes.
    pub sender: Option<UserId>,
}

/// Where a read of a recording goes on from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Where the next read starts: a byte of the local recording file, a
    /// JetStream sequence in [`nats`]; `None` before the first read, which
    /// finds it.
    pub byte: Option<u64>,
    /// The offset of the line before it, for lines recorded without one.
    pub position: u64,
}

/// Part of a recording, read in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// The events read.
    pub events: Vec<Recorded>,
    /// Where the next read goes on from.
    pub next: Cursor,
    /// Whether the read reached the recording's end (as far as it is
    /// written now).
    pub done: bool,
}

/// One stream's recording: every accepted event in order, and a small
/// snapshot of its replay so that a restored stream need not read it all.
///
/// The stream makes one call at a time that writes ([`append`],
/// [`checkpoint`], [`clear`]) and waits for it before the next, so a store
/// need not order them itself.
///
/// [`append`]: RecordingStore::append
/// [`checkpoint`]: RecordingStore::checkpoint
/// [`clear`]: RecordingStore::clear
pub trait RecordingStore {
    /// Opens the recording; resolves to the replay as of its last event.
    fn open(&mut self) -> StoreFuture<Opened>;

    /// Bytes recorded so far, for the per-stream quota.
    fn recorded_bytes(&self) -> u64;

    /// Appends recording lines (see [`crate::event::recorded_line`]), in
    /// order, in one write. Resolves once they are written, which need not
    /// be durable yet (see [`RecordingStore::sync`]); until then, the
    /// stream relays none of those events.
    fn append(&mut self, lines: Vec<u8>) -> StoreFuture<()>;

    /// Keeps `snapshot` as the replay as of the last event appended, and
    /// `kept` as the offsets the recording holds.
    fn checkpoint(&mut self, snapshot: &Snapshot, kept: Kept) -> StoreFuture<()>;

    /// Deletes every event recorded so far, keeping `snapshot` and `kept`
    /// as in [`RecordingStore::checkpoint`]; the recording goes on with the
    /// next event.
    fn clear(&mut self, snapshot: &Snapshot, kept: Kept) -> StoreFuture<()>;

    /// Resolves once everything appended is durable.
    fn sync(&mut self) -> StoreFuture<()>;

    /// Reads up to `max` events after offset `after`, from `cursor` on.
    fn read(&self, after: u64, cursor: Cursor, max: usize) -> StoreFuture<Chunk>;

    /// For a recording that other nodes append to as well (cluster mode):
    /// the feed of every event appended to it, by any node, from the
    /// [`RecordingStore::open`] on. Taken once, after the open; `None` for
    /// a recording only this stream writes, which is the default.
    ///
    /// A stream that follows its recording relays what other nodes record,
    /// and its own appends may be refused because another node appended
    /// first: it then refuses the events it was writing, reads on from the
    /// recording, and takes new events from there.
    fn follow(&mut self) -> Option<Feed> {
        None
    }

    /// [`RecordingStore::append`] of one sender's events, for a followed
    /// recording to tell its followers whose they are.
    fn append_sent(&mut self, lines: Vec<u8>, sender: &UserId) -> StoreFuture<()> {
        let _ = sender;
        self.append(lines)
    }

    /// For a followed recording: hands recording lines of events that are
    /// not recorded (past the quota) to the other nodes' feeds, without
    /// keeping them. Resolves once they are sent.
    fn pass_on(&mut self, lines: Vec<u8>) -> StoreFuture<()> {
        drop(lines);
        done(Ok(()))
    }
}

/// The stores a server runs with.
pub struct Stores {
    /// Users and claim tokens, for the token actor.
    pub users: Box<dyn UserStore + Send>,
    /// Open streams and their recordings, for the registry.
    pub streams: Box<dyn StreamStore + Send>,
    /// What the engine under them counts, for a networked store.
    pub engine: Option<crate::metrics::EngineMetrics>,
}

impl Stores {
    /// The local stores in `data_dir` (see [`local`]); fails only if what is
    /// kept there cannot be read, never for want of space to write.
    pub fn local(data_dir: &std::path::Path) -> io::Result<Stores> {
        Ok(Stores {
            users: Box::new(local::LocalUsers::open(data_dir)?),
            streams: Box::new(local::LocalStreams::open(data_dir)?),
            engine: None,
        })
    }

    /// Stores that keep nothing past the process (see [`memory`]).
    pub fn memory() -> Stores {
        Stores {
            users: Box::new(memory::MemoryUsers),
            streams: Box::new(memory::MemoryStreams),
            engine: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_told_apart_by_what_the_client_hears() {
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(StoreError::from(full), StoreError::Full);
        let ro = io::Error::from(io::ErrorKind::ReadOnlyFilesystem);
        assert_eq!(StoreError::from(ro).public_message(), "storage read-only");
        let other = StoreError::from(io::Error::other("boom"));
        assert_eq!(other.public_message(), "internal error");
        assert!(other.to_string().contains("boom"));
    }
}
