//! A stream's recording on disk: `{id}.log`, one accepted event per line,
//! and beside it `{id}.snapshot`, the stream's replay as of a point in it.
//!
//! A line is `{"offset":n,"receivedAt":ms,"event":…,"data":…}`. Lines
//! recorded before offsets existed are a bare `{"event":…,"data":…}`; their
//! offset is their position in the file, and they are read as that.
//!
//! Appends go to the page cache with one write(2) per batch, no fsync, on
//! the [`Disk`] threads: that survives the process being killed and keeps
//! the stream's own thread free of the disk. The recording is synced when
//! the stream ends or the server stops. A write that fails is cut off again,
//! so the file stays whole lines and a later event is never glued to a torn
//! one. The snapshot is rewritten now and then; a restored stream reads it
//! and only the lines after it, not the whole recording. A torn last line
//! (from a crash in the middle of a write) is cut when the recording is
//! opened.
//!
//! A full or read-only disk does not cost a restored stream its replay: the
//! recording is read all the same, and appends fail (the stream goes on
//! unrecorded) until the disk takes writes again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use super::disk::Disk;
use super::{done, Chunk, Cursor, Kept, Opened, Recorded, RecordingStore, StoreError, StoreFuture};
use crate::event::{parse_recorded, recorded_line, with_offset};
use crate::ids::StreamId;
use crate::replay::{Replay, Snapshot};

/// The snapshot format whose replay frames and recording lines carry offsets.
const CHECKPOINT_VERSION: u32 = 2;
/// A binary search for an offset reads lines from where it narrowed down to
/// once this few bytes are left.
const SCAN_SPAN: u64 = 64 * 1024;

/// The snapshot file's content: the replay, and how much of the recording
/// it covers.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// [`CHECKPOINT_VERSION`]; missing in snapshots from before offsets.
    #[serde(default)]
    version: u32,
    /// Bytes of the recording the replay accounts for.
    bytes: u64,
    /// The replay as of those bytes.
    replay: Snapshot,
    /// Which offsets the recording holds without a hole, as of those bytes.
    #[serde(default)]
    kept: Kept,
}

/// One stream's recording and snapshot files.
pub struct LocalRecording {
    /// The stream, for log lines.
    id: StreamId,
    /// `{id}.log`.
    path: PathBuf,
    /// `{id}.snapshot`.
    snapshot_path: PathBuf,
    /// Open for appending once [`RecordingStore::open`] ran, unless the
    /// disk was read-only then.
    file: Option<Arc<File>>,
    /// [`RecordingStore::open`] ran: while `file` is `None`, each append
    /// tries to open the file.
    opened: bool,
    /// The length of the recording's whole lines, as of the last append
    /// that finished: where the next line goes, and what a failed write is
    /// cut back to. Set on the stream's thread when the append's future
    /// resolves, so a snapshot never covers bytes of events not yet relayed.
    len: Arc<AtomicU64>,
    /// Set while appends fail, so a full disk is logged once, not per event.
    failing: Arc<AtomicBool>,
    /// The threads that write.
    disk: Disk,
    /// The threads that read.
    reads: Disk,
}

impl LocalRecording {
    /// The recording of stream `id` in the folder `dir`, written on `disk`
    /// and read on `reads`; nothing is opened yet.
    pub fn new(dir: &Path, id: &StreamId, disk: Disk, reads: Disk) -> LocalRecording {
        LocalRecording {
            id: id.clone(),
            path: recording_path(dir, id),
            snapshot_path: dir.join(format!("{id}.snapshot")),
            file: None,
            opened: false,
            len: Arc::new(AtomicU64::new(0)),
            failing: Arc::new(AtomicBool::new(false)),
            disk,
            reads,
        }
    }

    /// The snapshot kept beside the recording, if there is a readable one.
    fn read_checkpoint(&self) -> Option<Checkpoint> {
        let text = match fs::read(&self.snapshot_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warn!("{}: unreadable ({e})", self.snapshot_path.display());
                return None;
            }
        };
        serde_json::from_slice(&text)
            .map_err(|e| log::warn!("{}: unreadable ({e})", self.snapshot_path.display()))
            .ok()
    }

    /// Opens the file and rebuilds the replay: from the snapshot and the
    /// lines after it, or (a recording kept before snapshots with offsets
    /// existed) from every line once, after which a snapshot is written.
    fn restore(&mut self) -> io::Result<Opened> {
        let (mut file, writable) = match open_for_append(&self.path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::ReadOnlyFilesystem => {
                log::warn!(
                    "stream {}: recording read-only until the disk takes writes",
                    self.id
                );
                self.opened = true;
                match File::open(&self.path) {
                    Ok(file) => (file, false),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::default()),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let end = file.seek(SeekFrom::End(0))?;
        let checkpoint = self.read_checkpoint();
        let older = checkpoint
            .as_ref()
            .filter(|c| c.version < CHECKPOINT_VERSION)
            .map(|c| c.replay.accepted);
        let trusted = checkpoint.filter(|c| c.version >= CHECKPOINT_VERSION && c.bytes <= end);
        let had_checkpoint = trusted.is_some();
        let mut opened = match trusted {
            Some(c) => Opened {
                replay: Replay::from_snapshot(c.replay),
                kept: c.kept,
                bytes: c.bytes,
            },
            None => Opened::default(),
        };
        let whole = scan(&mut file, &mut opened)?;
        if let Some(accepted) = older {
            // A snapshot from before offsets may count events past the
            // recording's end (its quota stopped it): offsets go on from
            // there, so none is given twice.
            opened.replay.skip_to(accepted);
        }
        if whole < end && writable {
            log::warn!(
                "stream {}: cutting a torn last line off its recording",
                self.id
            );
            file.set_len(whole)?;
        }
        // On a read-only disk a torn last line stays until the first
        // append, which cuts the file back to `len` when it opens it.
        self.file = writable.then(|| Arc::new(file));
        self.opened = true;
        self.len.store(whole, Ordering::Relaxed);
        opened.bytes = whole;
        if !had_checkpoint && whole > 0 {
            let text = self.checkpoint_text(&opened.replay.snapshot(), opened.kept);
            if let Err(e) = text.and_then(|text| write_snapshot(&self.snapshot_path, &text)) {
                // The replay is whole without it; the next start reads
                // the whole recording again.
                log::warn!("stream {}: cannot write its snapshot: {e}", self.id);
            }
        }
        Ok(opened)
    }

    fn checkpoint_text(&self, snapshot: &Snapshot, kept: Kept) -> io::Result<Vec<u8>> {
        let checkpoint = Checkpoint {
            version: CHECKPOINT_VERSION,
            bytes: self.len.load(Ordering::Relaxed),
            replay: snapshot.clone(),
            kept,
        };
        Ok(serde_json::to_vec(&checkpoint)?)
    }

    /// The open file, opening it again if the disk was read-only at start
    /// and may take writes by now.
    fn writable_file(&mut self) -> Result<Arc<File>, StoreError> {
        if self.file.is_none() && self.opened {
            let len = self.len.load(Ordering::Relaxed);
            match open_for_append(&self.path).and_then(|file| {
                file.set_len(len)?;
                Ok(file)
            }) {
                Ok(file) => self.file = Some(Arc::new(file)),
                Err(e) => {
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        log::error!("stream {}: recording failed: {e}", self.id);
                    }
                    return Err(StoreError::from(e));
                }
            }
        }
        self.file
            .clone()
            .ok_or_else(|| StoreError::Failed("the recording is not open".to_owned()))
    }
}

/// How many events and bytes the recording of `id` in `dir` holds: from
/// its snapshot if that covers the whole file (an ended stream's does),
/// else by counting its lines. `None` if there is no recording.
pub fn recording_size(dir: &Path, id: &StreamId) -> io::Result<Option<(u64, u64)>> {
    let path = recording_path(dir, id);
    let bytes = match fs::metadata(&path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let snapshot = fs::read(dir.join(format!("{id}.snapshot")))
        .ok()
        .and_then(|text| serde_json::from_slice::<Checkpoint>(&text).ok())
        .filter(|c| c.version >= CHECKPOINT_VERSION && c.bytes == bytes);
    if let Some(checkpoint) = snapshot {
        return Ok(Some((checkpoint.kept.events, bytes)));
    }
    let mut lines = 0;
    let mut reader = BufReader::new(File::open(&path)?);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        if line.ends_with(b"\n") {
            lines += 1;
        }
        line.clear();
    }
    Ok(Some((lines, bytes)))
}

/// `{id}.log` in `dir`.
pub fn recording_path(dir: &Path, id: &StreamId) -> PathBuf {
    dir.join(format!("{id}.log"))
}

/// Writes a snapshot beside its recording, replacing the old one whole.
fn write_snapshot(path: &Path, text: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("snapshot.tmp");
    let written = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Opens (or creates) the recording at `path` for reading and appending.
fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
}

/// Applies every whole line of `file` from `opened.bytes` on whose offset
/// is past the replay's to `opened`; returns the length up to the end of
/// the last whole line.
fn scan(file: &mut File, opened: &mut Opened) -> io::Result<u64> {
    let from = opened.bytes;
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::new(file);
    let mut whole = from;
    let mut line = String::new();
    // A line without an offset is at its position; one is only ever
    // followed by others like it or by lines with offsets.
    let mut position = opened.replay.accepted();
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 || !line.ends_with('\n') {
            return Ok(whole);
        }
        whole += read as u64;
        let Ok(recorded) = parse_recorded(line.trim_end()) else {
            // A line from before events were checked, which the server
            // then relayed: it still takes its position.
            position += 1;
            opened.replay.skip_to(position);
            continue;
        };
        let offset = recorded.offset.unwrap_or(position + 1);
        position = offset;
        opened.apply(offset, &recorded.event);
    }
}

/// Reads up to `max` events after offset `after` from the recording at
/// `path`, from `cursor` on (the default cursor: from wherever `after` is).
/// `None` if there is no such recording.
pub fn read_chunk(
    path: &Path,
    after: u64,
    cursor: Cursor,
    max: usize,
) -> io::Result<Option<Chunk>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let cursor = match cursor.byte {
        Some(_) => cursor,
        None => seek_offset(&mut file, after)?,
    };
    let start = cursor.byte.unwrap_or(0);
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::new(file);
    let mut byte = start;
    let mut position = cursor.position;
    let mut events = Vec::new();
    let mut line = String::new();
    let done = loop {
        if events.len() >= max {
            break false;
        }
        line.clear();
        let read = reader.read_line(&mut line)?;
        // A line being appended right now is not whole yet: the next read
        // gets it.
        if read == 0 || !line.ends_with('\n') {
            break true;
        }
        byte += read as u64;
        let Ok(recorded) = parse_recorded(line.trim_end()) else {
            position += 1;
            continue;
        };
        let offset = recorded.offset.unwrap_or(position + 1);
        position = offset;
        if offset <= after {
            continue;
        }
        events.push(Recorded {
            offset,
            received_ms: recorded.received_ms,
            text: recorded.event.text,
            sender: None,
        });
    };
    Ok(Some(Chunk {
        events,
        next: Cursor {
            byte: Some(byte),
            position,
        },
        done,
    }))
}

/// Where to start reading for the events after `after`: a binary search
/// over the lines' offsets, or the start of a recording whose first line
/// has none (from before offsets), which is read from the start.
fn seek_offset(file: &mut File, after: u64) -> io::Result<Cursor> {
    let len = file.seek(SeekFrom::End(0))?;
    let from_start = Cursor {
        byte: Some(0),
        position: 0,
    };
    match line_at(file, 0)? {
        Some((_, Some(_))) => {}
        _ => return Ok(from_start),
    }
    // `lo` is always the start of a line whose offset is at most `after`
    // (or the file's start); the events wanted are all after it.
    let (mut lo, mut hi) = (0, len);
    while hi - lo > SCAN_SPAN {
        let mid = lo + (hi - lo) / 2;
        match line_at(file, mid)? {
            Some((start, Some(offset))) if offset <= after && start < hi => lo = start,
            _ => hi = mid,
        }
    }
    Ok(Cursor {
        byte: Some(lo),
        position: 0,
    })
}

/// The start and offset of the first whole line that starts at or after
/// byte `at`.
fn line_at(file: &mut File, at: u64) -> io::Result<Option<(u64, Option<u64>)>> {
    let mut start = at;
    if at > 0 {
        // The line `at - 1` is in is skipped, unless it ends right there.
        file.seek(SeekFrom::Start(at - 1))?;
        let mut reader = BufReader::new(&mut *file);
        let mut skipped = Vec::new();
        let read = reader.read_until(b'\n', &mut skipped)?;
        if read == 0 || !skipped.ends_with(b"\n") {
            return Ok(None);
        }
        start = at - 1 + read as u64;
    }
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::new(file).take(16 * 1024);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Ok(None);
    }
    Ok(Some((
        start,
        parse_recorded(line.trim_end()).ok().and_then(|r| r.offset),
    )))
}

impl RecordingStore for LocalRecording {
    fn open(&mut self) -> StoreFuture<Opened> {
        done(self.restore().map_err(|e| {
            log::error!("stream {}: cannot open its recording: {e}", self.id);
            StoreError::from(e)
        }))
    }

    fn recorded_bytes(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    fn append(&mut self, lines: Vec<u8>) -> StoreFuture<()> {
        let file = match self.writable_file() {
            Ok(file) => file,
            Err(e) => return done(Err(e)),
        };
        let at = self.len.load(Ordering::Relaxed);
        let cut = self.failing.load(Ordering::Relaxed);
        let added = lines.len() as u64;
        let written = self.disk.run(move || {
            if cut {
                // The last failed write may not have been cut back.
                file.set_len(at)?;
            }
            // One write(2), so a killed process leaves whole lines.
            (&*file).write_all(&lines).inspect_err(|_| {
                // Cut back what part of the batch made it, so the next
                // line starts on a line of its own.
                let _ = file.set_len(at);
            })
        });
        let (len, failing, id) = (self.len.clone(), self.failing.clone(), self.id.clone());
        Box::pin(async move {
            let failed = match written.await {
                Ok(Ok(())) => {
                    len.store(at + added, Ordering::Relaxed);
                    if failing.swap(false, Ordering::Relaxed) {
                        log::info!("stream {id}: recording again");
                    }
                    return Ok(());
                }
                Ok(Err(e)) => StoreError::from(e),
                Err(e) => e,
            };
            if !failing.swap(true, Ordering::Relaxed) {
                log::error!("stream {id}: recording failed: {failed}");
            }
            Err(failed)
        })
    }

    fn checkpoint(&mut self, snapshot: &Snapshot, kept: Kept) -> StoreFuture<()> {
        let text = match self.checkpoint_text(snapshot, kept) {
            Ok(text) => text,
            Err(e) => return done(Err(StoreError::from(e))),
        };
        let path = self.snapshot_path.clone();
        let written = self.disk.run(move || write_snapshot(&path, &text));
        let id = self.id.clone();
        Box::pin(async move {
            written.await?.map_err(|e| {
                log::warn!("stream {id}: cannot write its snapshot: {e}");
                StoreError::from(e)
            })
        })
    }

    fn clear(&mut self, snapshot: &Snapshot, kept: Kept) -> StoreFuture<()> {
        let file = match self.writable_file() {
            Ok(file) => file,
            Err(e) => return done(Err(e)),
        };
        let checkpoint = Checkpoint {
            version: CHECKPOINT_VERSION,
            bytes: 0,
            replay: snapshot.clone(),
            kept,
        };
        let text = match serde_json::to_vec(&checkpoint) {
            Ok(text) => text,
            Err(e) => return done(Err(StoreError::Failed(e.to_string()))),
        };
        let path = self.snapshot_path.clone();
        // The snapshot first: a crash between the two leaves a snapshot that
        // covers no bytes, and lines it already counts, which are skipped.
        let cleared = self
            .disk
            .run(move || write_snapshot(&path, &text).and_then(|()| file.set_len(0)));
        let len = self.len.clone();
        Box::pin(async move {
            cleared.await??;
            len.store(0, Ordering::Relaxed);
            Ok(())
        })
    }

    fn sync(&mut self) -> StoreFuture<()> {
        let Some(file) = self.file.clone() else {
            return done(Ok(()));
        };
        let synced = self.disk.run(move || file.sync_data());
        let id = self.id.clone();
        Box::pin(async move {
            synced.await?.map_err(|e| {
                log::warn!("stream {id}: syncing the recording failed: {e}");
                StoreError::from(e)
            })
        })
    }

    fn read(&self, after: u64, cursor: Cursor, max: usize) -> StoreFuture<Chunk> {
        let path = self.path.clone();
        let read = self
            .reads
            .run(move || read_chunk(&path, after, cursor, max));
        Box::pin(async move {
            Ok(read.await??.unwrap_or(Chunk {
                events: Vec::new(),
                next: cursor,
                done: true,
            }))
        })
    }
}

/// The line `GET /v0/streams/{id}/recording` answers for a recorded
/// event, newline included: its recording line, with `"receivedAt":null`
/// for an event recorded before that was kept.
pub fn line_of(recorded: &Recorded) -> String {
    match recorded.received_ms {
        Some(ms) => recorded_line(&recorded.text, recorded.offset, ms),
        None => {
            let body = recorded.text.strip_prefix('{').unwrap_or(&recorded.text);
            format!(
                "{{\"offset\":{},\"receivedAt\":null,{body}\n",
                recorded.offset
            )
        }
    }
}

/// The frame a socket gets for a recorded event.
pub fn frame_of(recorded: &Recorded) -> ByteString {
    with_offset(&recorded.text, recorded.offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse_event, recorded_line};
    use crate::testkit::{TempDir, Tmpfs};

    fn mv(n: u32) -> String {
        format!(
            r#"{{"event":"move","data":{{"latestMove":"R","timeStamp":{n},"binaryState":"s"}}}}"#
        )
    }

    fn reset(tracking: bool) -> String {
        format!(r#"{{"event":"reset","data":{{"trackingOrientation":{tracking}}}}}"#)
    }

    /// A frame as the broker encodes it (keys in order).
    fn text(frame: &str) -> String {
        parse_event(frame).unwrap().text.to_string()
    }

    /// The recording line of `frame` at `offset`.
    fn line(frame: &str, offset: u64) -> String {
        recorded_line(&text(frame), offset, 1_000 + offset)
    }

    fn recording(dir: &Path, id: &StreamId) -> LocalRecording {
        LocalRecording::new(dir, id, Disk::new(1), Disk::new(1))
    }

    async fn open(recording: &mut LocalRecording) -> Opened {
        recording.open().await.expect("the recording opens")
    }

    fn frames(replay: &Replay) -> Vec<String> {
        replay.frames().map(|f| f.to_string()).collect()
    }

    fn lines(path: &Path) -> Vec<String> {
        let text = fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        text.lines().map(|l| format!("{l}\n")).collect()
    }

    #[actix::test]
    async fn appends_whole_lines_and_a_new_recording_replays_nothing() {
        let dir = TempDir::new("recording-append");
        let id = StreamId::random();
        let mut recording = recording(dir.path(), &id);
        assert_eq!(open(&mut recording).await, Opened::default());
        let batch = line(&mv(1), 1) + &line(&reset(true), 2);
        recording.append(batch.into_bytes()).await.unwrap();
        recording
            .append(line(&mv(2), 3).into_bytes())
            .await
            .unwrap();
        recording.sync().await.unwrap();
        let log = recording_path(dir.path(), &id);
        assert_eq!(
            lines(&log),
            [line(&mv(1), 1), line(&reset(true), 2), line(&mv(2), 3)]
        );
        assert_eq!(
            recording.recorded_bytes(),
            fs::metadata(&log).unwrap().len()
        );
    }

    #[actix::test]
    async fn an_old_recording_is_read_once_at_its_positions_then_from_its_snapshot() {
        let dir = TempDir::new("recording-legacy");
        let id = StreamId::random();
        let log = recording_path(dir.path(), &id);
        fs::write(
            &log,
            format!("{}\n{}\n{{\"event\":\"mo", mv(1), reset(false)),
        )
        .unwrap();

        let mut recording = recording(dir.path(), &id);
        let opened = open(&mut recording).await;
        assert_eq!(
            frames(&opened.replay),
            [
                with_offset(&text(&reset(false)), 2).to_string(),
                with_offset(&text(&mv(1)), 1).to_string()
            ]
        );
        assert_eq!(opened.replay.accepted(), 2);
        assert_eq!(
            opened.kept,
            Kept {
                from: 1,
                to: 2,
                events: 2
            }
        );
        assert_eq!(
            lines(&log),
            [format!("{}\n", mv(1)), format!("{}\n", reset(false))],
            "the torn line is cut"
        );
        assert!(
            dir.path().join(format!("{id}.snapshot")).is_file(),
            "a snapshot is kept, so the next start need not read it all"
        );
        // New lines after old ones carry offsets that go on from them.
        recording
            .append(line(&mv(3), 3).into_bytes())
            .await
            .unwrap();
        drop(recording);
        let again = open(&mut self::recording(dir.path(), &id)).await;
        assert_eq!(again.replay.accepted(), 3);
        assert_eq!(
            again.kept,
            Kept {
                from: 1,
                to: 3,
                events: 3
            }
        );

        let chunk = read_chunk(&log, 1, Cursor::default(), 10).unwrap().unwrap();
        let offsets: Vec<_> = chunk.events.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, [2, 3]);
        assert_eq!(chunk.events[0].received_ms, None);
        assert_eq!(chunk.events[1].received_ms, Some(1_003));
        assert!(chunk.done);
    }

    /// What comes back is the snapshot plus the lines after the point it
    /// covers: the lines before it are not read again. (Here they say
    /// something else than the snapshot, which no real recording does, to
    /// tell the two apart.)
    #[actix::test]
    async fn a_restore_reads_the_snapshot_and_only_the_lines_after_it() {
        let dir = TempDir::new("recording-snapshot");
        let id = StreamId::random();
        let mut recording = recording(dir.path(), &id);
        open(&mut recording).await;
        recording
            .append(line(&mv(1), 1).into_bytes())
            .await
            .unwrap();
        let mut kept = Replay::default();
        kept.accept(&parse_event(&mv(9)).unwrap());
        recording
            .checkpoint(
                &kept.snapshot(),
                Kept {
                    from: 1,
                    to: 1,
                    events: 1,
                },
            )
            .await
            .unwrap();
        recording
            .append(line(&reset(true), 2).into_bytes())
            .await
            .unwrap();
        drop(recording);

        let opened = open(&mut self::recording(dir.path(), &id)).await;
        assert_eq!(
            frames(&opened.replay),
            [
                with_offset(&text(&reset(true)), 2).to_string(),
                with_offset(&text(&mv(9)), 1).to_string()
            ]
        );
        assert_eq!(
            opened.replay.accepted(),
            2,
            "the snapshot's one, and one after it"
        );
        assert!(opened
            .replay
            .clone()
            .accept(&parse_event(&reset(true)).unwrap())
            .is_none());
    }

    #[actix::test]
    async fn a_snapshot_past_the_end_of_its_recording_is_not_trusted() {
        let dir = TempDir::new("recording-short");
        let id = StreamId::random();
        let mut recording = recording(dir.path(), &id);
        open(&mut recording).await;
        let both = line(&mv(1), 1) + &line(&mv(2), 2);
        recording.append(both.into_bytes()).await.unwrap();
        recording
            .checkpoint(&Replay::default().snapshot(), Kept::default())
            .await
            .unwrap();
        drop(recording);
        // The recording lost its tail (restored from an older backup, say).
        fs::write(recording_path(dir.path(), &id), line(&mv(1), 1)).unwrap();

        let opened = open(&mut self::recording(dir.path(), &id)).await;
        assert_eq!(
            frames(&opened.replay),
            [with_offset(&text(&mv(1)), 1).to_string()]
        );
    }

    /// A cleared recording keeps counting: a restart after it gives no
    /// offset twice, and reads find nothing from before it.
    #[actix::test]
    async fn a_cleared_recording_goes_on_at_the_next_offset() {
        let dir = TempDir::new("recording-clear");
        let id = StreamId::random();
        let mut recording = recording(dir.path(), &id);
        open(&mut recording).await;
        let mut replay = Replay::default();
        let mut batch = String::new();
        for n in 1..=3 {
            replay.accept(&parse_event(&mv(n)).unwrap());
            batch += &line(&mv(n), n.into());
        }
        recording.append(batch.into_bytes()).await.unwrap();
        recording
            .clear(&replay.snapshot(), Kept::from_next(4))
            .await
            .unwrap();
        assert_eq!(recording.recorded_bytes(), 0);
        recording
            .append(line(&mv(4), 4).into_bytes())
            .await
            .unwrap();
        drop(recording);

        let opened = open(&mut self::recording(dir.path(), &id)).await;
        assert_eq!(opened.replay.accepted(), 4);
        assert_eq!(
            opened.kept,
            Kept {
                from: 4,
                to: 4,
                events: 1
            }
        );
        assert!(!opened.kept.covers(2, 4));
        assert!(opened.kept.covers(3, 4));
        let log = recording_path(dir.path(), &id);
        let chunk = read_chunk(&log, 0, Cursor::default(), 10).unwrap().unwrap();
        assert_eq!(chunk.events.len(), 1);
        assert_eq!(chunk.events[0].offset, 4);
    }

    /// A read finds its place in a long recording without reading it all,
    /// goes on from its cursor, and stops before a line still being written.
    #[test]
    fn reads_go_from_any_offset_in_chunks_and_skip_a_torn_tail() {
        let dir = TempDir::new("recording-read");
        let id = StreamId::random();
        let log = recording_path(dir.path(), &id);
        let mut text = String::new();
        for n in 1..=5_000u32 {
            text += &line(&mv(n), n.into());
        }
        text += "{\"offset\":5001,\"recei";
        fs::write(&log, &text).unwrap();

        for after in [0, 1, 2_499, 4_998, 4_999, 5_000, 7_000] {
            let chunk = read_chunk(&log, after, Cursor::default(), 1)
                .unwrap()
                .unwrap();
            let want: Vec<u64> = (after + 1..=5_000).take(1).collect();
            let got: Vec<u64> = chunk.events.iter().map(|e| e.offset).collect();
            assert_eq!(got, want, "after {after}");
        }
        let mut cursor = Cursor::default();
        let mut seen = Vec::new();
        loop {
            let chunk = read_chunk(&log, 4_000, cursor, 300).unwrap().unwrap();
            seen.extend(chunk.events.iter().map(|e| e.offset));
            cursor = chunk.next;
            if chunk.done {
                break;
            }
        }
        assert_eq!(seen, (4_001..=5_000).collect::<Vec<_>>());
        assert!(
            read_chunk(&dir.path().join("none.log"), 0, Cursor::default(), 1)
                .unwrap()
                .is_none()
        );
    }

    #[actix::test]
    async fn a_full_disk_stops_appends_without_tearing_a_line() {
        let Some(tmpfs) = Tmpfs::mount("recording-full", "256k") else {
            return;
        };
        let id = StreamId::random();
        let log = recording_path(tmpfs.path(), &id);
        let mut recording = recording(tmpfs.path(), &id);
        open(&mut recording).await;
        let filler = tmpfs.fill();
        let long = mv(7).replace("\"s\"", &format!("\"{}\"", "s".repeat(3000)));
        let mut kept = 0u64;
        let mut failed = None;
        for _ in 0..200 {
            match recording.append(line(&long, kept + 1).into_bytes()).await {
                Ok(()) => kept += 1,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        assert_eq!(failed, Some(StoreError::Full));
        assert_eq!(
            recording.append(line(&long, kept + 1).into_bytes()).await,
            Err(StoreError::Full)
        );
        assert_eq!(
            lines(&log).len() as u64,
            kept,
            "only whole lines are in the file"
        );

        fs::remove_file(filler).unwrap();
        recording
            .append(line(&mv(8), kept + 1).into_bytes())
            .await
            .unwrap();
        let after = lines(&log);
        assert_eq!(after.len() as u64, kept + 1);
        assert_eq!(after.last(), Some(&line(&mv(8), kept + 1)));
    }
}
