//! Stream records in JetStream KV, and where each stream's recording is
//! (see [`super`] for the keys).
//!
//! Each stream has one record, created only where absent and changed by
//! compare-and-set (a change that finds the record changed elsewhere is
//! applied again to what it finds). The store keeps the records in memory
//! too, for what the registry asks without waiting (the senders of an
//! ended stream) and for the sweep. Its writes are made one after the
//! other, in the order the registry made them, as a journal's lines are:
//! each starts when it is asked for and waits for the one before it, so a
//! stream that went live and idle again at once is kept idle, and
//! [`StreamStore::sync`] waits for them all.
//!
//! In cluster mode ([`StreamStore::follow`]) the store follows the bucket
//! with a KV watch and tells the registry of every record any node writes
//! (and keeps them, so that recordings of streams created elsewhere are
//! read and listed here too); the watch starts over, with the whole
//! bucket, after a reconnect and every [`RESYNC_INTERVAL`]. A creation
//! counts its creator's open streams over all nodes by compare-and-set on
//! the key `owner.<userID>`, the streams they created and when; idleness
//! and the idle end are compare-and-sets on the record, so that exactly
//! one node ends a stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix::Recipient;
use async_nats::jetstream::kv::{CreateErrorKind, Entry, Operation, UpdateErrorKind};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::presence::{follow_watch, Presence, CONNECTION_CHECK};
use super::recording::{self, NatsRecording};
use super::{entries, unavailable, Nats, MARKER_TTL};
use crate::ids::{StreamId, UserId};
use crate::store::journal::epoch_ms;
use crate::store::{
    Chunk, ClusterNews, ClusterNode, Cursor, EndedRecording, RecordingStore, SocketCounts,
    StoreError, StoreFuture, StreamChange, StreamRecord, StreamStore,
};

/// What the keys of stream records start with; the bucket has room for
/// other kinds of keys beside them (a user's open streams, for a limit
/// that counts on every node).
const STREAM_PREFIX: &str = "stream.";

/// What the key of a creator's open streams starts with.
const OWNER_PREFIX: &str = "owner.";
/// How often the watch of the records starts over from what is kept, so
/// that a watch that died without a word is replaced within this.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// How long a stream counts against its creator's limit while its record
/// is not written yet (a creation in flight on another node); one whose
/// record never came is no longer counted after it.
const CREATION_GRACE_MS: u64 = 30_000;
/// How often a compare-and-set that lost to another node's is tried again
/// before the request is refused as `storage unavailable`.
const CAS_ATTEMPTS: usize = 8;

/// The key of stream `id`'s record.
fn stream_key(id: &StreamId) -> String {
    format!("{STREAM_PREFIX}{id}")
}

/// The key of the streams `user` created and that may be open.
fn owner_key(user: &UserId) -> String {
    format!("{OWNER_PREFIX}{user}")
}

/// The streams a user created, as counted against their limit: every one
/// that may be open, and some that ended since (dropped from the list
/// when the limit is reached and they are found ended).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct OwnerDoc {
    /// The streams, oldest first.
    streams: Vec<Owned>,
}

/// One stream in an [`OwnerDoc`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Owned {
    /// Its ID.
    id: StreamId,
    /// When its slot was taken, in ms since the Unix epoch.
    at_ms: u64,
}

/// A stream's record as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StreamDoc {
    /// Users allowed to send; the creator first.
    senders: Vec<UserId>,
    /// When it was created, in ms since the Unix epoch.
    created_ms: u64,
    /// Since when no sender is connected; `None` while one is.
    idle_since_ms: Option<u64>,
    /// When it ended; `None` while it is open.
    ended_ms: Option<u64>,
}

impl StreamDoc {
    /// The record of stream `id`, as the registry knows records.
    fn record(&self, id: &StreamId) -> StreamRecord {
        StreamRecord {
            id: id.clone(),
            senders: self.senders.clone(),
            created_ms: self.created_ms,
            idle_since_ms: self.idle_since_ms,
        }
    }

    /// Applies a change other than a creation.
    fn apply(&mut self, change: &StreamChange, now_ms: u64) {
        match change {
            StreamChange::Created(_) => {}
            StreamChange::Live(_) => self.idle_since_ms = None,
            StreamChange::Idle { since_ms, .. } => self.idle_since_ms = Some(*since_ms),
            StreamChange::Ended(_) => {
                self.ended_ms.get_or_insert(now_ms);
            }
        }
    }
}

/// What the store knows of the streams.
#[derive(Debug, Default)]
struct Known {
    /// Every stream's record, open or ended, as last written or read.
    docs: HashMap<StreamId, StreamDoc>,
    /// Each record's revision, as last written or read.
    revisions: HashMap<StreamId, u64>,
}

/// Open streams and their recordings in [`super::STREAMS_BUCKET`],
/// [`super::SNAPSHOTS_BUCKET`] and [`super::EVENTS_STREAM`].
pub struct NatsStreams {
    /// The connection and buckets.
    nats: Nats,
    /// The records, shared with the writes in flight.
    known: Arc<Mutex<Known>>,
    /// Resolves once the last write asked for is done: the next one waits
    /// for it.
    tail: Option<oneshot::Receiver<()>>,
    /// This node's presence lease, once [`StreamStore::follow`] started it.
    presence: Option<Presence>,
}

fn lock(known: &Mutex<Known>) -> std::sync::MutexGuard<'_, Known> {
    known
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NatsStreams {
    /// The streams kept in `nats`.
    pub fn new(nats: Nats) -> NatsStreams {
        NatsStreams {
            nats,
            known: Arc::new(Mutex::new(Known::default())),
            tail: None,
            presence: None,
        }
    }

    /// Runs `write` after every write asked for before it, and has the
    /// next one wait for it. It runs whether or not its future is awaited,
    /// as a journal's line is written when it is handed over: on this
    /// thread, which must be an actor's.
    fn in_turn<T: 'static>(
        &mut self,
        write: impl std::future::Future<Output = Result<T, StoreError>> + 'static,
    ) -> StoreFuture<T> {
        let (done, next) = oneshot::channel();
        let before = self.tail.replace(next);
        let (answer, answered) = oneshot::channel();
        actix::spawn(async move {
            if let Some(before) = before {
                // Dropped unfinished counts as finished.
                let _ = before.await;
            }
            let result = write.await;
            let _ = done.send(());
            let _ = answer.send(result);
        });
        Box::pin(async move {
            answered
                .await
                .unwrap_or_else(|_| Err(StoreError::Failed("the write was dropped".to_owned())))
        })
    }
}

/// A new stream's record, as kept.
fn new_doc(record: StreamRecord) -> (StreamId, StreamDoc) {
    let doc = StreamDoc {
        senders: record.senders,
        created_ms: record.created_ms,
        idle_since_ms: record.idle_since_ms,
        ended_ms: None,
    };
    (record.id, doc)
}

/// Creates stream `id`'s record, where none is.
async fn create_record(
    nats: &Nats,
    known: &Mutex<Known>,
    id: &StreamId,
    doc: StreamDoc,
) -> Result<(), StoreError> {
    nats.connected()?;
    let value = serde_json::to_vec(&doc).map_err(|e| StoreError::Failed(e.to_string()))?;
    let revision = nats
        .streams
        .create(stream_key(id), value.into())
        .await
        .map_err(|e| match e.kind() {
            CreateErrorKind::AlreadyExists => {
                StoreError::Failed(format!("stream {id} exists already"))
            }
            _ => unavailable("cannot write a stream", e),
        })?;
    learn(known, id, &doc, revision);
    Ok(())
}

/// Takes `doc` at `revision` as stream `id`'s record, unless a later
/// revision is known. Whether it is news: not older than the revision
/// known (a watch that lags behind this node's own writes), nor an ended
/// record whose revision was known already (a watch started over).
fn learn(known: &Mutex<Known>, id: &StreamId, doc: &StreamDoc, revision: u64) -> bool {
    let mut known = lock(known);
    match known.revisions.get(id) {
        Some(newer) if *newer > revision => return false,
        Some(same) if *same == revision => {
            return known.docs.get(id).is_none_or(|d| d.ended_ms.is_none());
        }
        _ => {}
    }
    known.docs.insert(id.clone(), doc.clone());
    known.revisions.insert(id.clone(), revision);
    true
}

/// Stream `id`'s record as kept now, and its revision; `None` if it has none.
async fn read_record(nats: &Nats, id: &StreamId) -> Result<Option<(StreamDoc, u64)>, StoreError> {
    let entry = nats
        .streams
        .entry(stream_key(id))
        .await
        .map_err(|e| unavailable("cannot read a stream", e))?;
    let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
        return Ok(None);
    };
    let doc = serde_json::from_slice(&entry.value)
        .map_err(|e| StoreError::Failed(format!("stream {id}: unreadable record: {e}")))?;
    Ok(Some((doc, entry.revision)))
}

/// Takes a slot for stream `id` among `owner`'s open streams, if fewer
/// than `max` are open over all nodes: a compare-and-set on their key, so
/// that two creations at once on two nodes cannot both take the last one.
/// The streams listed are looked up only at the limit, to drop those that
/// ended.
async fn take_slot(
    nats: &Nats,
    owner: &UserId,
    id: &StreamId,
    max: usize,
) -> Result<bool, StoreError> {
    let key = owner_key(owner);
    for _ in 0..CAS_ATTEMPTS {
        let entry = nats
            .streams
            .entry(key.as_str())
            .await
            .map_err(|e| unavailable("cannot count a user's streams", e))?;
        let (mut doc, revision) = match entry {
            Some(entry) => (
                serde_json::from_slice::<OwnerDoc>(&entry.value).unwrap_or_default(),
                Some(entry.revision),
            ),
            None => (OwnerDoc::default(), None),
        };
        let now_ms = epoch_ms(SystemTime::now());
        if doc.streams.len() >= max {
            let mut open = Vec::new();
            for owned in doc.streams {
                let counts = match read_record(nats, &owned.id).await? {
                    Some((record, _)) => record.ended_ms.is_none(),
                    None => owned.at_ms.saturating_add(CREATION_GRACE_MS) > now_ms,
                };
                if counts {
                    open.push(owned);
                }
            }
            doc.streams = open;
            if doc.streams.len() >= max {
                return Ok(false);
            }
        }
        doc.streams.push(Owned {
            id: id.clone(),
            at_ms: now_ms,
        });
        let value: bytes::Bytes = serde_json::to_vec(&doc)
            .map_err(|e| StoreError::Failed(e.to_string()))?
            .into();
        // A write that lost to another node's reads the key again.
        match revision {
            Some(revision) => match nats.streams.update(key.as_str(), value, revision).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(unavailable("cannot count a user's streams", e)),
            },
            None => match nats.streams.create(key.as_str(), value).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable("cannot count a user's streams", e)),
            },
        }
    }
    Err(StoreError::Unavailable(
        "a user's streams keep changing elsewhere".to_owned(),
    ))
}

/// Keeps open stream `id` idle since `since_ms` unless it is idle or
/// ended already; a record changed meanwhile is left to the next check.
async fn mark_idle(
    nats: &Nats,
    known: &Mutex<Known>,
    id: &StreamId,
    since_ms: u64,
) -> Result<(), StoreError> {
    nats.connected()?;
    let Some((mut doc, revision)) = read_record(nats, id).await? else {
        return Ok(());
    };
    if doc.ended_ms.is_some() || doc.idle_since_ms.is_some() {
        learn(known, id, &doc, revision);
        return Ok(());
    }
    doc.idle_since_ms = Some(since_ms);
    let value = serde_json::to_vec(&doc).map_err(|e| StoreError::Failed(e.to_string()))?;
    match nats
        .streams
        .update(stream_key(id), value.into(), revision)
        .await
    {
        Ok(revision) => {
            learn(known, id, &doc, revision);
            Ok(())
        }
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(()),
        Err(e) => Err(unavailable("cannot write a stream", e)),
    }
}

/// Ends stream `id` if its record has been idle for `timeout_ms`: whether
/// this call ended it. A record changed meanwhile (a sender came, another
/// node ended it) is not ended here.
async fn end_idle(
    nats: &Nats,
    known: &Mutex<Known>,
    id: &StreamId,
    timeout_ms: u64,
) -> Result<bool, StoreError> {
    nats.connected()?;
    let Some((mut doc, revision)) = read_record(nats, id).await? else {
        return Ok(false);
    };
    let now_ms = epoch_ms(SystemTime::now());
    let due = doc
        .idle_since_ms
        .is_some_and(|since| since.saturating_add(timeout_ms) <= now_ms);
    if doc.ended_ms.is_some() || !due {
        learn(known, id, &doc, revision);
        return Ok(false);
    }
    doc.ended_ms = Some(now_ms);
    let value = serde_json::to_vec(&doc).map_err(|e| StoreError::Failed(e.to_string()))?;
    match nats
        .streams
        .update(stream_key(id), value.into(), revision)
        .await
    {
        Ok(revision) => {
            learn(known, id, &doc, revision);
            Ok(true)
        }
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
        Err(e) => Err(unavailable("cannot end a stream", e)),
    }
}

/// Tells `news` of every stream record as any node writes it, until
/// `news`'s actor stops; see [`follow_watch`] for when it starts over.
async fn follow_records(nats: Nats, known: Arc<Mutex<Known>>, news: Recipient<ClusterNews>) {
    let filter = format!("{STREAM_PREFIX}>");
    while news.connected() {
        let watch = match nats.streams.watch_with_history(filter.as_str()).await {
            Ok(watch) => watch,
            Err(e) => {
                log::debug!("NATS: cannot watch the streams yet: {e}");
                actix::clock::sleep(CONNECTION_CHECK).await;
                continue;
            }
        };
        follow_watch(&nats, watch, &news, |entry| told(&known, &news, entry)).await;
    }
}

/// Takes a watched record in and tells `news` of it if it is news (see
/// [`learn`]): starting a watch over does not tell of every ended stream
/// again, nor does a watch behind this node's writes bring a stream back.
fn told(known: &Mutex<Known>, news: &Recipient<ClusterNews>, entry: Entry) {
    let Some(id) = entry
        .key
        .strip_prefix(STREAM_PREFIX)
        .and_then(StreamId::parse)
    else {
        return;
    };
    match entry.operation {
        Operation::Put => {
            let Ok(doc) = serde_json::from_slice::<StreamDoc>(&entry.value) else {
                log::warn!("NATS: {} is not a stream; skipped", entry.key);
                return;
            };
            if !learn(known, &id, &doc, entry.revision) {
                return;
            }
            news.do_send(ClusterNews::Stream {
                record: doc.record(&id),
                ended: doc.ended_ms.is_some(),
            });
        }
        Operation::Delete | Operation::Purge => {
            let mut known = lock(known);
            if known
                .revisions
                .get(&id)
                .is_none_or(|revision| *revision <= entry.revision)
            {
                known.docs.remove(&id);
                known.revisions.remove(&id);
            }
        }
    }
}

/// The key of the sender-socket slots of stream `id`, by node.
fn slots_key(id: &StreamId) -> String {
    format!("senders.{id}")
}

/// Sets node `node`'s sender sockets on stream `id` to `count`, by
/// compare-and-set on the key of every node's; with `check`, only if the
/// live nodes' (`check.0`, and this one) come to at most `check.1` then.
/// Resolves to whether it was set.
async fn sender_slots(
    nats: &Nats,
    id: &StreamId,
    node: &str,
    count: usize,
    check: Option<(&[String], usize)>,
) -> Result<bool, StoreError> {
    let key = slots_key(id);
    const WHAT: &str = "cannot count a stream's sender sockets";
    for _ in 0..CAS_ATTEMPTS {
        let entry = nats
            .streams
            .entry(key.as_str())
            .await
            .map_err(|e| unavailable(WHAT, e))?;
        let (mut slots, revision) = match entry {
            Some(entry) => (
                serde_json::from_slice::<HashMap<String, usize>>(&entry.value).unwrap_or_default(),
                Some(entry.revision),
            ),
            None => (HashMap::new(), None),
        };
        if let Some((live, _)) = check {
            // Nodes whose leases ran out hold no slots.
            slots.retain(|n, _| n == node || live.iter().any(|l| l == n));
        }
        if count == 0 {
            slots.remove(node);
        } else {
            slots.insert(node.to_owned(), count);
        }
        if let Some((_, max)) = check {
            if slots.values().sum::<usize>() > max {
                return Ok(false);
            }
        }
        let value: bytes::Bytes = serde_json::to_vec(&slots)
            .map_err(|e| StoreError::Failed(e.to_string()))?
            .into();
        let written = match revision {
            Some(revision) => match nats.streams.update(key.as_str(), value, revision).await {
                Ok(_) => true,
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => false,
                Err(e) => return Err(unavailable(WHAT, e)),
            },
            None => match nats.streams.create(key.as_str(), value).await {
                Ok(_) => true,
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => false,
                Err(e) => return Err(unavailable(WHAT, e)),
            },
        };
        if written {
            return Ok(true);
        }
    }
    Err(StoreError::Unavailable(
        "a stream's sender sockets keep changing elsewhere".to_owned(),
    ))
}

/// Writes the change to stream `id`'s record: on the revision known, else
/// (or if the record changed meanwhile) on the one read back.
async fn write_change(
    nats: &Nats,
    known: &Mutex<Known>,
    id: &StreamId,
    change: &StreamChange,
) -> Result<(), StoreError> {
    nats.connected()?;
    let now_ms = epoch_ms(SystemTime::now());
    let (doc, revision) = {
        let known = lock(known);
        (
            known.docs.get(id).cloned(),
            known.revisions.get(id).copied(),
        )
    };
    if let (Some(doc), Some(revision)) = (doc, revision) {
        let value = serde_json::to_vec(&doc).map_err(|e| StoreError::Failed(e.to_string()))?;
        match nats
            .streams
            .update(stream_key(id), value.into(), revision)
            .await
        {
            Ok(revision) => {
                lock(known).revisions.insert(id.clone(), revision);
                return Ok(());
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(unavailable("cannot write a stream", e)),
        }
    }
    let entry = nats
        .streams
        .entry(stream_key(id))
        .await
        .map_err(|e| unavailable("cannot read a stream", e))?;
    let Some(entry) = entry.filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
    else {
        log::warn!("NATS: stream {id} has no record to change");
        return Ok(());
    };
    let mut doc: StreamDoc = serde_json::from_slice(&entry.value)
        .map_err(|e| StoreError::Failed(format!("stream {id}: unreadable record: {e}")))?;
    doc.apply(change, now_ms);
    let value = serde_json::to_vec(&doc).map_err(|e| StoreError::Failed(e.to_string()))?;
    let revision = nats
        .streams
        .update(stream_key(id), value.into(), entry.revision)
        .await
        .map_err(|e| match e.kind() {
            UpdateErrorKind::WrongLastRevision => {
                StoreError::Failed(format!("stream {id} keeps changing elsewhere"))
            }
            _ => unavailable("cannot write a stream", e),
        })?;
    let mut known = lock(known);
    known.docs.insert(id.clone(), doc);
    known.revisions.insert(id.clone(), revision);
    Ok(())
}

/// Deletes stream `id`'s recording, snapshot and record, in that order: a
/// failure part way leaves the record, and the next sweep tries again.
async fn delete_all(nats: &Nats, known: &Mutex<Known>, id: &StreamId) -> Result<(), StoreError> {
    nats.connected()?;
    nats.events
        .purge()
        .filter(recording::subject(id))
        .await
        .map_err(|e| unavailable("cannot delete a recording", e))?;
    nats.snapshots
        .purge_with_ttl(id.as_str(), MARKER_TTL)
        .await
        .map_err(|e| unavailable("cannot delete a snapshot", e))?;
    nats.streams
        .purge_with_ttl(stream_key(id), MARKER_TTL)
        .await
        .map_err(|e| unavailable("cannot delete a stream", e))?;
    let mut known = lock(known);
    known.docs.remove(id);
    known.revisions.remove(id);
    Ok(())
}

impl StreamStore for NatsStreams {
    fn load(&mut self) -> StoreFuture<Vec<StreamRecord>> {
        let nats = self.nats.clone();
        let known = Arc::clone(&self.known);
        Box::pin(async move {
            nats.connected()?;
            let mut open = Vec::new();
            let mut ended = 0;
            for (key, value, revision) in entries(&nats.streams, STREAM_PREFIX).await? {
                let (Some(id), Ok(doc)) = (
                    key.strip_prefix(STREAM_PREFIX).and_then(StreamId::parse),
                    serde_json::from_slice::<StreamDoc>(&value),
                ) else {
                    log::warn!("NATS: {key} is not a stream; skipped");
                    continue;
                };
                if doc.ended_ms.is_none() {
                    open.push(StreamRecord {
                        id: id.clone(),
                        senders: doc.senders.clone(),
                        created_ms: doc.created_ms,
                        idle_since_ms: doc.idle_since_ms,
                    });
                } else {
                    ended += 1;
                }
                let mut known = lock(&known);
                known.docs.insert(id.clone(), doc);
                known.revisions.insert(id, revision);
            }
            open.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            log::info!(
                "NATS: {} open streams, {ended} ended ones with recordings",
                open.len()
            );
            Ok(open)
        })
    }

    fn record(&mut self, change: StreamChange) -> StoreFuture<()> {
        let nats = self.nats.clone();
        let known = Arc::clone(&self.known);
        let now_ms = epoch_ms(SystemTime::now());
        if let StreamChange::Created(record) = change {
            let (id, doc) = new_doc(record);
            return self.in_turn(async move { create_record(&nats, &known, &id, doc).await });
        }
        let id = match &change {
            StreamChange::Created(record) => record.id.clone(),
            StreamChange::Live(id) | StreamChange::Ended(id) | StreamChange::Idle { id, .. } => {
                id.clone()
            }
        };
        // Known at once, as a journal's line would be: the sweep and the
        // senders of ended streams see it before it is written.
        if let Some(doc) = lock(&self.known).docs.get_mut(&id) {
            doc.apply(&change, now_ms);
        }
        self.in_turn(async move {
            let written = write_change(&nats, &known, &id, &change).await;
            if let Err(e) = &written {
                log::warn!("NATS: stream {id}: change not kept: {e}");
            }
            written
        })
    }

    fn sync(&mut self) -> StoreFuture<()> {
        // Every write is acknowledged by JetStream once it has it: waiting
        // for the last one is all a sync needs.
        self.in_turn(async { Ok(()) })
    }

    fn sweep_recordings(&mut self, keep: Duration) -> StoreFuture<usize> {
        let now_ms = epoch_ms(SystemTime::now());
        let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
        let due: Vec<StreamId> = lock(&self.known)
            .docs
            .iter()
            .filter(|(_, doc)| {
                doc.ended_ms
                    .is_some_and(|ended| ended.saturating_add(keep_ms) <= now_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if due.is_empty() {
            return self.in_turn(async { Ok(0) });
        }
        let nats = self.nats.clone();
        let known = Arc::clone(&self.known);
        self.in_turn(async move {
            let mut deleted = 0;
            for id in due {
                match delete_all(&nats, &known, &id).await {
                    Ok(()) => {
                        log::info!("stream {id}: recording deleted after the retention period");
                        deleted += 1;
                    }
                    Err(e) => {
                        log::warn!("stream {id}: sweep failed: {e}");
                        return Err(e);
                    }
                }
            }
            Ok(deleted)
        })
    }

    fn check_writable(&mut self) -> StoreFuture<()> {
        let nats = self.nats.clone();
        Box::pin(async move { nats.check().await })
    }

    fn recording(&mut self, id: &StreamId) -> Box<dyn RecordingStore + Send> {
        Box::new(NatsRecording::new(self.nats.clone(), id))
    }

    fn ended_recordings(&mut self) -> StoreFuture<Vec<EndedRecording>> {
        let ended: Vec<(StreamId, StreamDoc)> = lock(&self.known)
            .docs
            .iter()
            .filter(|(_, doc)| doc.ended_ms.is_some())
            .map(|(id, doc)| (id.clone(), doc.clone()))
            .collect();
        let nats = self.nats.clone();
        let known = Arc::clone(&self.known);
        Box::pin(async move {
            if ended.is_empty() {
                return Ok(Vec::new());
            }
            nats.connected()?;
            // Another node may have deleted some, which this one's watch has
            // not told yet: only those whose records are still there.
            let present: std::collections::HashSet<StreamId> =
                entries(&nats.streams, STREAM_PREFIX)
                    .await?
                    .into_iter()
                    .filter_map(|(key, _, _)| {
                        key.strip_prefix(STREAM_PREFIX).and_then(StreamId::parse)
                    })
                    .collect();
            let (ended, gone): (Vec<_>, Vec<_>) =
                ended.into_iter().partition(|(id, _)| present.contains(id));
            {
                let mut known = lock(&known);
                for (id, _) in gone {
                    known.docs.remove(&id);
                }
            }
            let sizes = recording::sizes(&nats).await?;
            Ok(ended
                .into_iter()
                .map(|(id, doc)| {
                    let (events, bytes) = sizes.get(&id).copied().unwrap_or((0, 0));
                    EndedRecording {
                        id,
                        senders: doc.senders,
                        created_ms: doc.created_ms,
                        ended_ms: doc.ended_ms.unwrap_or(doc.created_ms),
                        events,
                        bytes,
                    }
                })
                .collect())
        })
    }

    fn ended_senders(&mut self, id: &StreamId) -> Option<Vec<UserId>> {
        lock(&self.known)
            .docs
            .get(id)
            .filter(|doc| doc.ended_ms.is_some())
            .map(|doc| doc.senders.clone())
    }

    fn delete_recording(&mut self, id: &StreamId) -> StoreFuture<()> {
        let nats = self.nats.clone();
        let known = Arc::clone(&self.known);
        let id = id.clone();
        self.in_turn(async move {
            delete_all(&nats, &known, &id).await.inspect_err(|e| {
                log::warn!("stream {id}: cannot delete its recording: {e}");
            })?;
            log::info!("stream {id}: recording deleted");
            Ok(())
        })
    }

    fn read_recording(
        &mut self,
        id: &StreamId,
        after: u64,
        cursor: Cursor,
        max: usize,
    ) -> StoreFuture<Option<Chunk>> {
        let ended = match lock(&self.known).docs.get(id) {
            None => return Box::pin(std::future::ready(Ok(None))),
            Some(doc) => doc.ended_ms.is_some(),
        };
        let nats = self.nats.clone();
        let known = Arc::clone(&self.known);
        let (id, subject) = (id.clone(), recording::subject(id));
        Box::pin(async move {
            // An ended stream's recording may have been deleted on another
            // node, which this one's watch has not told yet: its record
            // goes with it.
            if ended && cursor.byte.is_none() && read_record(&nats, &id).await?.is_none() {
                lock(&known).docs.remove(&id);
                return Ok(None);
            }
            recording::read_chunk(&nats, &subject, after, cursor, max)
                .await
                .map(Some)
        })
    }

    fn follow(&mut self, node: ClusterNode) -> bool {
        let ClusterNode { node, lease, news } = node;
        actix::spawn(follow_records(
            self.nats.clone(),
            Arc::clone(&self.known),
            news.clone(),
        ));
        self.presence = Some(Presence::start(self.nats.clone(), node, lease, news));
        true
    }

    fn find(&mut self, id: &StreamId) -> Option<StoreFuture<Option<StreamRecord>>> {
        let nats = self.nats.clone();
        let known = Arc::clone(&self.known);
        let id = id.clone();
        Some(Box::pin(async move {
            nats.connected()?;
            let Some((doc, revision)) = read_record(&nats, &id).await? else {
                return Ok(None);
            };
            learn(&known, &id, &doc, revision);
            Ok(doc.ended_ms.is_none().then(|| doc.record(&id)))
        }))
    }

    fn create(&mut self, record: StreamRecord, max_per_user: usize) -> StoreFuture<bool> {
        let nats = self.nats.clone();
        let known = Arc::clone(&self.known);
        let (id, doc) = new_doc(record);
        self.in_turn(async move {
            nats.connected()?;
            let Some(owner) = doc.senders.first().cloned() else {
                return Err(StoreError::Failed(format!("stream {id} has no creator")));
            };
            if !take_slot(&nats, &owner, &id, max_per_user).await? {
                return Ok(false);
            }
            create_record(&nats, &known, &id, doc).await?;
            Ok(true)
        })
    }

    fn mark_idle(&mut self, id: &StreamId, since_ms: u64) -> StoreFuture<()> {
        let nats = self.nats.clone();
        let known = Arc::clone(&self.known);
        let id = id.clone();
        self.in_turn(async move {
            mark_idle(&nats, &known, &id, since_ms)
                .await
                .inspect_err(|e| log::warn!("NATS: stream {id}: idleness not kept: {e}"))
        })
    }

    fn end_idle(&mut self, id: &StreamId, timeout: Duration) -> StoreFuture<bool> {
        let nats = self.nats.clone();
        let known = Arc::clone(&self.known);
        let id = id.clone();
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.in_turn(async move {
            end_idle(&nats, &known, &id, timeout_ms)
                .await
                .inspect_err(|e| log::warn!("NATS: stream {id}: cannot end it: {e}"))
        })
    }

    fn publish_presence(&mut self, sockets: Vec<(StreamId, SocketCounts)>) {
        if let Some(presence) = &self.presence {
            presence.publish(sockets);
        }
    }

    fn take_sender_slot(
        &mut self,
        id: &StreamId,
        node: &str,
        mine: usize,
        live: Vec<String>,
        max: usize,
    ) -> StoreFuture<bool> {
        let nats = self.nats.clone();
        let (id, node) = (id.clone(), node.to_owned());
        self.in_turn(async move {
            nats.connected()?;
            sender_slots(&nats, &id, &node, mine + 1, Some((&live, max))).await
        })
    }

    fn set_sender_slots(&mut self, id: &StreamId, node: &str, mine: usize) {
        let nats = self.nats.clone();
        let (id, node) = (id.clone(), node.to_owned());
        let written = self.in_turn(async move {
            nats.connected()?;
            sender_slots(&nats, &id, &node, mine, None)
                .await
                .map(|_| ())
        });
        actix::spawn(async move {
            if let Err(e) = written.await {
                // The slot frees itself when this node's lease runs out.
                log::warn!("NATS: a sender slot is not given back yet: {e}");
            }
        });
    }

    fn withdraw_presence(&mut self) -> StoreFuture<()> {
        let withdrawn = self.presence.as_mut().map(Presence::withdraw);
        Box::pin(async move {
            if let Some(withdrawn) = withdrawn {
                withdrawn.await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_to_a_record_and_an_end_is_kept_once() {
        let mut doc = StreamDoc {
            senders: vec![UserId::random()],
            created_ms: 1,
            idle_since_ms: Some(1),
            ended_ms: None,
        };
        let id = StreamId::random();
        doc.apply(&StreamChange::Live(id.clone()), 5);
        assert_eq!(doc.idle_since_ms, None);
        doc.apply(
            &StreamChange::Idle {
                id: id.clone(),
                since_ms: 7,
            },
            8,
        );
        assert_eq!(doc.idle_since_ms, Some(7));
        doc.apply(&StreamChange::Ended(id.clone()), 9);
        doc.apply(&StreamChange::Ended(id), 10);
        assert_eq!(doc.ended_ms, Some(9));
    }
}
