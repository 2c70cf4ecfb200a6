//! A stream's recording in JetStream: one message per event on the
//! stream's subject of [`super::EVENTS_STREAM`], and its snapshot in
//! [`super::SNAPSHOTS_BUCKET`].
//!
//! A message's payload is the event's recording line without its newline.
//! Each is published with the JetStream sequence of the subject's last
//! message as the expected one, and its offset is one more than that
//! message's: JetStream refuses a line from a writer that has not seen the
//! subject's last message, so two nodes appending to one stream can never
//! give two events one offset, or put them out of order. (No message ID:
//! JetStream checks those before the expected sequence, and would take a
//! second node's event at an offset already taken for a duplicate of the
//! first.) A [`Cursor`]'s `byte` is a JetStream sequence here: where
//! the next read starts. A read from an offset finds its first event by a
//! binary search over the subject's messages (direct gets), then reads on
//! through an ephemeral consumer.
//!
//! The recording is followed too ([`RecordingStore::follow`]): a core NATS
//! subscription to what JetStream republishes of it once stored
//! ([`feed_subject`]), made before the open reads, so that every node's
//! stream hears of what any node appended, and of nothing JetStream
//! refused.
//!
//! The snapshot says up to which sequence it covers the recording; a
//! restored stream reads the snapshot and the messages after it. Clearing
//! keeps a snapshot covering everything, then purges the subject; offsets
//! go on from the snapshot's.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::Subscriber;
use bytes::Bytes;
use futures_util::{future, stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::{unavailable, Nats, Read, Scan};
use crate::event::parse_recorded;
use crate::ids::{StreamId, UserId};
use crate::replay::{Replay, Snapshot};
use crate::store::{
    done, Chunk, Cursor, Feed, Followed, Kept, Opened, Recorded, RecordingStore, StoreError,
    StoreFuture,
};

/// The snapshot format.
const CHECKPOINT_VERSION: u32 = 1;
/// The header that names the sender of an appended event, for the rate
/// limit the other nodes count it against.
pub(crate) const SENDER_HEADER: &str = "Twizzle-Sender";
/// Messages one step of a restore reads.
const RESTORE_BATCH: usize = 1024;

/// The subject of stream `id`'s recording.
pub fn subject(id: &StreamId) -> String {
    format!("twizzle.events.{id}")
}

/// What a follower of stream `id` subscribes to: what JetStream stored of
/// its recording, republished (see [`super::FEED_SUBJECTS`]), and its
/// events past the quota, which are not recorded, sent there directly.
pub fn feed_subject(id: &StreamId) -> String {
    format!("twizzle.feed.{id}")
}

/// The snapshot as kept: the replay, and how much of the recording it covers.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    /// [`CHECKPOINT_VERSION`].
    version: u32,
    /// The JetStream sequence of the last message it covers; 0 for none.
    seq: u64,
    /// Bytes of recording lines up to there (newlines counted).
    bytes: u64,
    /// The replay as of there.
    replay: Snapshot,
    /// Which offsets the recording holds, as of there.
    kept: Kept,
}

/// Where the recording's end is, as of the last append that finished.
#[derive(Debug, Default)]
struct End {
    /// The sequence of the subject's last message; 0 for none.
    seq: u64,
    /// Bytes of recording lines on the subject (newlines counted).
    bytes: u64,
    /// Set while appends fail, so a NATS that went away is logged once.
    failing: bool,
    /// Where the recording stood after each of this node's latest appends,
    /// oldest first, and as of the open: a snapshot of a replay names the
    /// latest of them that its events cover, never an append still on its
    /// way to the stream (or another node's, which is read again and
    /// skipped on a restore).
    marks: VecDeque<Mark>,
}

/// Where the recording stood once the event at an offset was in it.
#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    /// The event's offset.
    offset: u64,
    /// The sequence of its message.
    seq: u64,
    /// Bytes of the subject's lines up to it.
    bytes: u64,
}

/// Marks kept at most: a snapshot is kept every second, so this covers
/// every append between two of them at any rate a stream may send.
const MARKS: usize = 4096;

impl End {
    /// The event at `offset` went in as message `seq`.
    fn appended(&mut self, offset: Option<u64>, seq: u64, bytes: u64) {
        self.seq = seq;
        self.bytes += bytes;
        if let Some(offset) = offset {
            if self.marks.len() >= MARKS {
                self.marks.pop_front();
            }
            self.marks.push_back(Mark {
                offset,
                seq,
                bytes: self.bytes,
            });
        }
    }

    /// The latest mark a replay that has every event up to `accepted`
    /// covers.
    fn covered_by(&self, accepted: u64) -> Mark {
        self.marks
            .iter()
            .rev()
            .find(|mark| mark.offset <= accepted)
            .copied()
            .unwrap_or_default()
    }
}

/// One stream's recording in JetStream.
pub struct NatsRecording {
    /// The connection and stream.
    nats: Nats,
    /// The stream, for log lines and message IDs.
    id: StreamId,
    /// Its subject.
    subject: String,
    /// Its end; appends in flight move it when they finish.
    end: Arc<Mutex<End>>,
    /// The subscription to its subject, made before the open reads the
    /// recording so that nothing appended meanwhile is missed, until
    /// [`RecordingStore::follow`] takes it.
    live: Arc<Mutex<Option<Subscriber>>>,
}

fn lock(end: &Mutex<End>) -> std::sync::MutexGuard<'_, End> {
    end.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The offset a recording line starts with: `{"offset":n,…`, as
/// [`crate::event::recorded_line`] writes it; else read from the whole line.
fn offset_of(line: &[u8]) -> Option<u64> {
    let prefixed = line.strip_prefix(b"{\"offset\":").and_then(|rest| {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
    });
    prefixed.or_else(|| parse_recorded(std::str::from_utf8(line).ok()?).ok()?.offset)
}

impl NatsRecording {
    /// The recording of stream `id` in `nats`; nothing is read yet.
    pub fn new(nats: Nats, id: &StreamId) -> NatsRecording {
        NatsRecording {
            nats,
            id: id.clone(),
            subject: subject(id),
            end: Arc::new(Mutex::new(End::default())),
            live: Arc::new(Mutex::new(None)),
        }
    }

    /// The snapshot's text for `snapshot`: it covers the recording up to
    /// the latest append its events include.
    fn checkpoint_value(&self, snapshot: &Snapshot, kept: Kept, bytes: Option<u64>) -> Vec<u8> {
        let mark = lock(&self.end).covered_by(snapshot.accepted);
        let checkpoint = Checkpoint {
            version: CHECKPOINT_VERSION,
            seq: mark.seq,
            bytes: bytes.unwrap_or(mark.bytes),
            replay: snapshot.clone(),
            kept,
        };
        serde_json::to_vec(&checkpoint).unwrap_or_default()
    }
}

impl NatsRecording {
    /// Appends `lines`, each published as `sender`'s if one is given.
    fn append_as(&mut self, lines: Vec<u8>, sender: Option<UserId>) -> StoreFuture<()> {
        let nats = self.nats.clone();
        let (id, subject, end) = (self.id.clone(), self.subject.clone(), self.end.clone());
        Box::pin(async move {
            let written: Result<(), StoreError> = async {
                nats.connected()?;
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let after = lock(&end).seq;
                    let offset = offset_of(line);
                    let seq =
                        publish(&nats, &id, &subject, line, offset, after, sender.as_ref()).await?;
                    lock(&end).appended(offset, seq, line.len() as u64 + 1);
                }
                Ok(())
            }
            .await;
            let mut end = lock(&end);
            match &written {
                Ok(()) if end.failing => {
                    end.failing = false;
                    log::info!("stream {id}: recording again");
                }
                // Another node's append first is not a failure of NATS.
                Err(StoreError::Conflict(why)) => log::debug!("stream {id}: {why}"),
                Err(e) if !end.failing => {
                    end.failing = true;
                    log::error!("stream {id}: recording failed: {e}");
                }
                _ => {}
            }
            written
        })
    }
}

/// The last message on `subject`, if any.
async fn last_on(nats: &Nats, subject: &str) -> Result<Option<(u64, Option<u64>)>, StoreError> {
    match nats.events.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some((message.sequence, offset_of(&message.payload)))),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(unavailable("cannot read a recording", e)),
    }
}

/// Reads the snapshot and the messages after it back into what the stream
/// had; returns it with the recording's end.
async fn restore(nats: &Nats, id: &StreamId, subject: &str) -> Result<(Opened, End), StoreError> {
    nats.connected()?;
    let kept = nats
        .snapshots
        .get(id.as_str())
        .await
        .map_err(|e| unavailable("cannot read a snapshot", e))?;
    let checkpoint = kept.and_then(|value| {
        serde_json::from_slice::<Checkpoint>(&value)
            .map_err(|e| log::warn!("stream {id}: unreadable snapshot ({e}); reading it all"))
            .ok()
    });
    let last_seq = nats
        .events
        .get_info()
        .await
        .map_err(|e| unavailable("cannot read the recordings' stream", e))?
        .state
        .last_sequence;
    // A snapshot past the stream's end (a stream recreated under it)
    // covers messages that are not there: not trusted.
    let checkpoint = checkpoint.filter(|c| {
        let trusted = c.version == CHECKPOINT_VERSION && c.seq <= last_seq;
        if !trusted {
            log::warn!("stream {id}: snapshot past the recording's end; reading it all");
        }
        trusted
    });
    let (mut opened, from, mut bytes) = match checkpoint {
        Some(c) => (
            Opened {
                replay: Replay::from_snapshot(c.replay),
                kept: c.kept,
                bytes: 0,
            },
            c.seq + 1,
            c.bytes,
        ),
        None => (Opened::default(), 1, 0),
    };
    let mut scan = Scan::start(
        &nats.events,
        subject.to_owned(),
        DeliverPolicy::ByStartSequence {
            start_sequence: from,
        },
    )
    .await?;
    let mut seq = None;
    let read: Result<(), StoreError> = async {
        while !scan.done() {
            let batch = scan.next(RESTORE_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for message in batch {
                seq = Some(message.seq);
                bytes += message.payload.len() as u64 + 1;
                apply(&mut opened, &message);
            }
        }
        Ok(())
    }
    .await;
    scan.finish().await;
    read?;
    let seq = match seq {
        Some(seq) => seq,
        // Nothing after the snapshot: the end is the subject's last
        // message, from before it or none (a cleared recording).
        None => last_on(nats, subject).await?.map_or(0, |(seq, _)| seq),
    };
    opened.bytes = bytes;
    let mut end = End {
        seq,
        bytes,
        ..End::default()
    };
    end.marks.push_back(Mark {
        offset: opened.replay.accepted(),
        seq,
        bytes,
    });
    Ok((opened, end))
}

/// Applies one recorded event to a replay being restored.
fn apply(opened: &mut Opened, message: &Read) {
    let Some(recorded) = std::str::from_utf8(&message.payload)
        .ok()
        .and_then(|text| parse_recorded(text).ok())
    else {
        log::warn!("NATS: message {} is not a recording line", message.seq);
        return;
    };
    let Some(offset) = recorded.offset else {
        return;
    };
    opened.apply(offset, &recorded.event);
}

/// Publishes `line` (offset `offset`) after the message at `after`;
/// resolves to its sequence. A refusal for the expected sequence is looked
/// into: if the subject's last message is an earlier event of this stream
/// (one whose acknowledgement was lost), the line goes after it; if it is
/// this event or a later one, someone else is writing the recording.
async fn publish(
    nats: &Nats,
    id: &StreamId,
    subject: &str,
    line: &[u8],
    offset: Option<u64>,
    after: u64,
    sender: Option<&UserId>,
) -> Result<u64, StoreError> {
    let mut after = after;
    for _ in 0..2 {
        let mut message = PublishMessage::build()
            .payload(bytes::Bytes::copy_from_slice(line))
            .expected_last_subject_sequence(after);
        if let Some(sender) = sender {
            message = message.header(SENDER_HEADER, sender.as_str());
        }
        let asked = Instant::now();
        let acked = match nats.js.send_publish(subject.to_owned(), message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        nats.engine
            .publish_seconds
            .observe(asked.elapsed().as_secs_f64());
        match acked {
            Ok(ack) => return Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // The subject moved on without this writer hearing of it:
                // its own earlier append whose acknowledgement was lost, or
                // another node's that it has not read yet. The line goes
                // after the last message only if that is the event just
                // before it.
                match last_on(nats, subject).await? {
                    Some((seq, Some(last))) if offset == Some(last + 1) => after = seq,
                    // Emptied (a deletion) since.
                    None => after = 0,
                    // The stream reads on from the recording, and tries
                    // again after what it finds.
                    _ => {
                        return Err(StoreError::Conflict(format!(
                            "stream {id}: another node appended to its recording first"
                        )))
                    }
                }
            }
            Err(e) => return Err(unavailable("cannot append to a recording", e)),
        }
    }
    Err(StoreError::Failed(format!(
        "stream {id}: its recording keeps moving under it"
    )))
}

impl RecordingStore for NatsRecording {
    fn open(&mut self) -> StoreFuture<Opened> {
        let nats = self.nats.clone();
        let (id, subject, end) = (self.id.clone(), self.subject.clone(), self.end.clone());
        let live = self.live.clone();
        Box::pin(async move {
            // Before the read: an event appended while it reads comes on
            // the feed too, and is skipped there if the read had it.
            match nats.client.subscribe(feed_subject(&id)).await {
                Ok(subscriber) => {
                    *live.lock().unwrap_or_else(|p| p.into_inner()) = Some(subscriber)
                }
                Err(e) => log::warn!("stream {id}: cannot follow its recording yet: {e}"),
            }
            let (opened, restored) = restore(&nats, &id, &subject)
                .await
                .inspect_err(|e| log::error!("stream {id}: cannot open its recording: {e}"))?;
            *lock(&end) = restored;
            Ok(opened)
        })
    }

    fn recorded_bytes(&self) -> u64 {
        lock(&self.end).bytes
    }

    fn append(&mut self, lines: Vec<u8>) -> StoreFuture<()> {
        self.append_as(lines, None)
    }

    fn append_sent(&mut self, lines: Vec<u8>, sender: &UserId) -> StoreFuture<()> {
        self.append_as(lines, Some(sender.clone()))
    }

    fn checkpoint(&mut self, snapshot: &Snapshot, kept: Kept) -> StoreFuture<()> {
        let value = self.checkpoint_value(snapshot, kept, None);
        let nats = self.nats.clone();
        let id = self.id.clone();
        Box::pin(async move {
            nats.connected()?;
            nats.snapshots
                .put(id.as_str(), value.into())
                .await
                .map(|_| ())
                .map_err(|e| {
                    log::warn!("stream {id}: cannot write its snapshot: {e}");
                    unavailable("cannot write a snapshot", e)
                })
        })
    }

    fn clear(&mut self, snapshot: &Snapshot, kept: Kept) -> StoreFuture<()> {
        // The snapshot first, covering every message there is: a failure
        // before the purge leaves messages it already counts, which a
        // restore skips.
        let value = self.checkpoint_value(snapshot, kept, Some(0));
        let accepted = snapshot.accepted;
        let nats = self.nats.clone();
        let (id, subject, end) = (self.id.clone(), self.subject.clone(), self.end.clone());
        Box::pin(async move {
            nats.connected()?;
            nats.snapshots
                .put(id.as_str(), value.into())
                .await
                .map_err(|e| unavailable("cannot write a snapshot", e))?;
            nats.events
                .purge()
                .filter(subject)
                .await
                .map_err(|e| unavailable("cannot delete a recording", e))?;
            let mut end = lock(&end);
            end.seq = 0;
            end.bytes = 0;
            end.marks.clear();
            end.marks.push_back(Mark {
                offset: accepted,
                ..Mark::default()
            });
            Ok(())
        })
    }

    fn sync(&mut self) -> StoreFuture<()> {
        // Each append resolved once JetStream acknowledged it: it has it.
        done(Ok(()))
    }

    fn read(&self, after: u64, cursor: Cursor, max: usize) -> StoreFuture<Chunk> {
        let nats = self.nats.clone();
        let subject = self.subject.clone();
        Box::pin(async move { read_chunk(&nats, &subject, after, cursor, max).await })
    }

    fn follow(&mut self) -> Option<Feed> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (nats, id) = (self.nats.clone(), self.id.clone());
        // Core NATS delivery of what JetStream stored and republished: no
        // acknowledgements and no redelivery, so it can miss messages (a
        // reconnect, a slow consumer); the follower finds those by their
        // offsets and reads them from the recording.
        let subscribed = async move {
            match live {
                Some(subscriber) => Some(subscriber),
                None => nats
                    .client
                    .subscribe(feed_subject(&id))
                    .await
                    .inspect_err(|e| log::error!("stream {id}: cannot follow its recording: {e}"))
                    .ok(),
            }
        };
        let events = stream::once(subscribed)
            .filter_map(future::ready)
            .flatten()
            .filter_map(|message| future::ready(followed(&message)));
        let mut reconnected = self.nats.reconnected.clone();
        reconnected.borrow_and_update();
        let checks = stream::unfold(reconnected, |mut reconnected| async move {
            reconnected.changed().await.ok()?;
            Some((Followed::Check, reconnected))
        });
        Some(Box::pin(stream::select(events, checks)))
    }

    fn pass_on(&mut self, lines: Vec<u8>) -> StoreFuture<()> {
        let nats = self.nats.clone();
        let subject = feed_subject(&self.id);
        Box::pin(async move {
            nats.connected()?;
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                nats.client
                    .publish(subject.clone(), Bytes::copy_from_slice(line))
                    .await
                    .map_err(|e| unavailable("cannot relay an event", e))?;
            }
            nats.client
                .flush()
                .await
                .map_err(|e| unavailable("cannot relay an event", e))
        })
    }
}

/// What the feed tells of a message on a recording's subject.
fn followed(message: &async_nats::Message) -> Option<Followed> {
    let payload = &message.payload;
    let recorded = parse_recorded(std::str::from_utf8(payload).ok()?).ok()?;
    let sender = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(SENDER_HEADER))
        .and_then(|value| UserId::parse(value.as_str()));
    Some(Followed::Event {
        kind: recorded.event.kind,
        recorded: Recorded {
            offset: recorded.offset?,
            received_ms: recorded.received_ms,
            text: recorded.event.text,
            sender,
        },
        bytes: payload.len() as u64 + 1,
    })
}

/// The first message on `subject` whose offset is after `after`: a binary
/// search over the sequences between the subject's first and last
/// messages, each step one direct get. `None` if there is none.
async fn seek(nats: &Nats, subject: &str, after: u64) -> Result<Option<u64>, StoreError> {
    let failed = |e| unavailable("cannot read a recording", e);
    let first = match nats.events.direct_get_first_for_subject(subject).await {
        Ok(message) => message,
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    if offset_of(&first.payload).is_none_or(|o| o > after) {
        return Ok(Some(first.sequence));
    }
    let Some((last, last_offset)) = last_on(nats, subject).await? else {
        return Ok(None);
    };
    if last_offset.is_none_or(|o| o <= after) {
        return Ok(None);
    }
    // `lo` is a message at or before `after`, `hi` one after it, and no
    // message of the subject is in [top, hi): the first after `after` is
    // `hi` once nothing is left between `lo` and `top`.
    let (mut lo, mut hi, mut top) = (first.sequence, last, last);
    while lo + 1 < top {
        let mid = lo + (top - lo) / 2;
        let message = nats
            .events
            .direct_get_next_for_subject(subject, Some(mid))
            .await
            .map_err(failed)?;
        if message.sequence >= top {
            top = mid;
        } else if offset_of(&message.payload).is_some_and(|o| o <= after) {
            lo = message.sequence;
        } else {
            hi = message.sequence;
            top = hi;
        }
    }
    Ok(Some(hi))
}

/// Reads up to `max` events after offset `after` from the recording on
/// `subject`, from `cursor` on.
pub async fn read_chunk(
    nats: &Nats,
    subject: &str,
    after: u64,
    cursor: Cursor,
    max: usize,
) -> Result<Chunk, StoreError> {
    nats.connected()?;
    let nothing = Chunk {
        events: Vec::new(),
        next: cursor,
        done: true,
    };
    let start = match cursor.byte {
        Some(seq) => seq,
        None => match seek(nats, subject, after).await? {
            Some(seq) => seq,
            None => return Ok(nothing),
        },
    };
    let mut scan = Scan::start(
        &nats.events,
        subject.to_owned(),
        DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
    )
    .await?;
    let read = scan.next(max).await;
    let finished = scan.done();
    scan.finish().await;
    let read = read?;
    let Some(last) = read.last() else {
        return Ok(nothing);
    };
    let next = Cursor {
        byte: Some(last.seq + 1),
        position: cursor.position,
    };
    let mut position = cursor.position;
    let events = read
        .iter()
        .filter_map(|message| {
            let recorded = parse_recorded(std::str::from_utf8(&message.payload).ok()?).ok()?;
            let offset = recorded.offset?;
            position = offset;
            Some(Recorded {
                offset,
                received_ms: recorded.received_ms,
                text: recorded.event.text,
                sender: message.sender.as_deref().and_then(UserId::parse),
            })
        })
        .filter(|recorded| recorded.offset > after)
        .collect();
    Ok(Chunk {
        events,
        next: Cursor { position, ..next },
        done: finished,
    })
}

/// How many events and bytes each stream's recording holds, from the
/// snapshots (an ended stream's covers all of it): one read of them all.
pub async fn sizes(
    nats: &Nats,
) -> Result<std::collections::HashMap<StreamId, (u64, u64)>, StoreError> {
    Ok(super::entries(&nats.snapshots, "")
        .await?
        .into_iter()
        .filter_map(|(key, value, _)| {
            let id = StreamId::parse(&key)?;
            let checkpoint: Checkpoint = serde_json::from_slice(&value).ok()?;
            Some((id, (checkpoint.kept.events, checkpoint.bytes)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::recorded_line;

    #[test]
    fn offsets_are_read_from_the_start_of_a_line() {
        let event = r#"{"event":"move","data":{"latestMove":"R","timeStamp":1,"binaryState":"s"}}"#;
        let line = recorded_line(event, 42, 7);
        assert_eq!(offset_of(line.trim_end().as_bytes()), Some(42));
        assert_eq!(offset_of(event.as_bytes()), None);
        let reordered = format!(r#"{{"receivedAt":1,"offset":9,{}"#, &event[1..]);
        assert_eq!(
            offset_of(reordered.as_bytes()),
            Some(9),
            "a line in another order is parsed whole"
        );
    }
}
