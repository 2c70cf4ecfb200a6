//! A stream's recording on disk: `{id}.log`, one accepted event per line,
//! and beside it `{id}.snapshot`, the stream's replay as of a point in it.
//!
//! Appends go to the page cache with one write(2) each, no fsync: that
//! survives the process being killed and keeps the stream's thread free;
//! the recording is synced when the stream ends or the server stops. A
//! write that fails is cut off again, so the file stays whole lines and a
//! later event is never glued to a torn one. The snapshot is rewritten now
//! and then; a restored stream reads it and only the lines after it, not
//! the whole recording. A torn last line (from a crash in the middle of a
//! write) is cut when the recording is opened.
//!
//! A full or read-only disk does not cost a restored stream its replay: the
//! recording is read all the same, and appends fail (the stream goes on
//! unrecorded) until the disk takes writes again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{done, RecordingStore, StoreError, StoreFuture};
use crate::event::parse_event;
use crate::ids::StreamId;
use crate::replay::{Replay, Snapshot};

/// The snapshot file's content: the replay, and how much of the recording
/// it covers.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// Bytes of the recording the replay accounts for.
    bytes: u64,
    /// The replay as of those bytes.
    replay: Snapshot,
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
    file: Option<File>,
    /// [`RecordingStore::open`] ran: while `file` is `None`, each append
    /// tries to open the file.
    opened: bool,
    /// The length of the recording's whole lines: where the next line goes,
    /// and what a failed write is cut back to.
    len: u64,
    /// Set while appends fail, so a full disk is logged once, not per event.
    failing: bool,
}

impl LocalRecording {
    /// The recording of stream `id` in the folder `dir`; nothing is opened yet.
    pub fn new(dir: &Path, id: &StreamId) -> LocalRecording {
        LocalRecording {
            id: id.clone(),
            path: dir.join(format!("{id}.log")),
            snapshot_path: dir.join(format!("{id}.snapshot")),
            file: None,
            opened: false,
            len: 0,
            failing: false,
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
    /// lines after it, or (a recording kept before snapshots existed) from
    /// every line once, after which a snapshot is written.
    fn restore(&mut self) -> io::Result<Replay> {
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
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replay::default()),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let end = file.seek(SeekFrom::End(0))?;
        let checkpoint = self.read_checkpoint().filter(|c| c.bytes <= end);
        let had_checkpoint = checkpoint.is_some();
        let (mut replay, from) = match checkpoint {
            Some(c) => (Replay::from_snapshot(c.replay), c.bytes),
            None => (Replay::default(), 0),
        };
        let whole = scan(&mut file, from, &mut replay)?;
        if whole < end && writable {
            log::warn!(
                "stream {}: cutting a torn last line off its recording",
                self.id
            );
            file.set_len(whole)?;
        }
        // On a read-only disk a torn last line stays until the first
        // append, which cuts the file back to `len` when it opens it.
        self.file = writable.then_some(file);
        self.opened = true;
        self.len = whole;
        if !had_checkpoint && whole > 0 {
            if let Err(e) = self.write_checkpoint(&replay.snapshot()) {
                // The replay is whole without it; the next start reads
                // the whole recording again.
                log::warn!("stream {}: cannot write its snapshot: {e}", self.id);
            }
        }
        Ok(replay)
    }

    fn write_checkpoint(&self, snapshot: &Snapshot) -> io::Result<()> {
        let checkpoint = Checkpoint {
            bytes: self.len,
            replay: snapshot.clone(),
        };
        let text = serde_json::to_vec(&checkpoint)?;
        let tmp = self.snapshot_path.with_extension("snapshot.tmp");
        let written = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &self.snapshot_path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

/// Opens (or creates) the recording at `path` for reading and appending.
fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
}

/// Applies every whole line of `file` from byte `from` to `replay`; returns
/// the length up to the end of the last whole line.
fn scan(file: &mut File, from: u64, replay: &mut Replay) -> io::Result<u64> {
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::new(file);
    let mut whole = from;
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 || !line.ends_with('\n') {
            return Ok(whole);
        }
        whole += read as u64;
        if let Ok(event) = parse_event(line.trim_end()) {
            replay.accept(&event);
        }
    }
}

impl RecordingStore for LocalRecording {
    fn open(&mut self) -> StoreFuture<Replay> {
        done(self.restore().map_err(|e| {
            log::error!("stream {}: cannot open its recording: {e}", self.id);
            StoreError::from(e)
        }))
    }

    fn recorded_bytes(&self) -> u64 {
        self.len
    }

    fn append(&mut self, text: &str) -> Result<(), StoreError> {
        if self.file.is_none() && self.opened {
            // Opened on a read-only disk: it may take writes by now.
            match open_for_append(&self.path).and_then(|file| {
                file.set_len(self.len)?;
                Ok(file)
            }) {
                Ok(file) => self.file = Some(file),
                Err(e) => {
                    if !std::mem::replace(&mut self.failing, true) {
                        log::error!("stream {}: recording failed: {e}", self.id);
                    }
                    return Err(StoreError::from(e));
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Err(StoreError::Failed("the recording is not open".to_owned()));
        };
        if self.failing {
            // The last failed write may not have been cut back.
            let _ = file.set_len(self.len);
        }
        let mut line = Vec::with_capacity(text.len() + 1);
        line.extend_from_slice(text.as_bytes());
        line.push(b'\n');
        // One write(2), so a killed process leaves whole lines.
        match file.write_all(&line) {
            Ok(()) => {
                self.len += line.len() as u64;
                if std::mem::take(&mut self.failing) {
                    log::info!("stream {}: recording again", self.id);
                }
                Ok(())
            }
            Err(e) => {
                // Cut back what part of the line made it, so the next line
                // starts on a line of its own.
                let _ = file.set_len(self.len);
                if !std::mem::replace(&mut self.failing, true) {
                    log::error!("stream {}: recording failed: {e}", self.id);
                }
                Err(StoreError::from(e))
            }
        }
    }

    fn checkpoint(&mut self, snapshot: &Snapshot) -> StoreFuture<()> {
        done(self.write_checkpoint(snapshot).map_err(|e| {
            log::warn!("stream {}: cannot write its snapshot: {e}", self.id);
            StoreError::from(e)
        }))
    }

    fn sync(&mut self) -> StoreFuture<()> {
        let Some(file) = &self.file else {
            return done(Ok(()));
        };
        done(file.sync_data().map_err(|e| {
            log::warn!("stream {}: syncing the recording failed: {e}", self.id);
            StoreError::from(e)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{TempDir, Tmpfs};

    fn mv(n: u32) -> String {
        format!(
            r#"{{"event":"move","data":{{"latestMove":"R","timeStamp":{n},"binaryState":"s"}}}}"#
        )
    }

    fn reset(tracking: bool) -> String {
        format!(r#"{{"event":"reset","data":{{"trackingOrientation":{tracking}}}}}"#)
    }

    fn open(recording: &mut LocalRecording) -> Replay {
        futures_now(recording.open()).expect("the recording opens")
    }

    /// The local store's futures are ready at once.
    fn futures_now<T>(future: StoreFuture<T>) -> Result<T, StoreError> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut future = future;
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => panic!("a local store call was not ready"),
        }
    }

    /// A frame as the broker encodes it (keys in order).
    fn text(frame: String) -> String {
        crate::event::parse_event(&frame).unwrap().text.to_string()
    }

    fn frames(replay: &Replay) -> Vec<String> {
        replay.frames().map(|f| f.to_string()).collect()
    }

    fn lines(path: &Path) -> Vec<String> {
        let text = fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn appends_whole_lines_and_a_new_recording_replays_nothing() {
        let dir = TempDir::new("recording-append");
        let id = StreamId::random();
        let mut recording = LocalRecording::new(dir.path(), &id);
        assert_eq!(open(&mut recording), Replay::default());
        recording.append(&mv(1)).unwrap();
        recording.append(&reset(true)).unwrap();
        futures_now(recording.sync()).unwrap();
        assert_eq!(
            lines(&dir.path().join(format!("{id}.log"))),
            [mv(1), reset(true)]
        );
    }

    #[test]
    fn an_old_recording_is_read_once_then_from_its_snapshot() {
        let dir = TempDir::new("recording-legacy");
        let id = StreamId::random();
        let log = dir.path().join(format!("{id}.log"));
        fs::write(
            &log,
            format!("{}\n{}\n{{\"event\":\"mo", mv(1), reset(false)),
        )
        .unwrap();

        let mut recording = LocalRecording::new(dir.path(), &id);
        let replay = open(&mut recording);
        assert_eq!(frames(&replay), [text(reset(false)), text(mv(1))]);
        assert_eq!(replay.accepted(), 2);
        assert_eq!(lines(&log), [mv(1), reset(false)], "the torn line is cut");
        assert!(
            dir.path().join(format!("{id}.snapshot")).is_file(),
            "a snapshot is kept, so the next start need not read it all"
        );
    }

    /// What comes back is the snapshot plus the lines after the point it
    /// covers: the lines before it are not read again. (Here they say
    /// something else than the snapshot, which no real recording does, to
    /// tell the two apart.)
    #[test]
    fn a_restore_reads_the_snapshot_and_only_the_lines_after_it() {
        let dir = TempDir::new("recording-snapshot");
        let id = StreamId::random();
        let mut recording = LocalRecording::new(dir.path(), &id);
        open(&mut recording);
        recording.append(&mv(1)).unwrap();
        let mut kept = Replay::default();
        kept.accept(&crate::event::parse_event(&mv(9)).unwrap());
        futures_now(recording.checkpoint(&kept.snapshot())).unwrap();
        recording.append(&reset(true)).unwrap();
        drop(recording);

        let mut again = LocalRecording::new(dir.path(), &id);
        let replay = open(&mut again);
        assert_eq!(frames(&replay), [text(reset(true)), text(mv(9))]);
        assert_eq!(replay.accepted(), 2, "the snapshot's one, and one after it");
        assert!(!replay
            .clone()
            .accept(&crate::event::parse_event(&reset(true)).unwrap()));
    }

    #[test]
    fn a_snapshot_past_the_end_of_its_recording_is_not_trusted() {
        let dir = TempDir::new("recording-short");
        let id = StreamId::random();
        let mut recording = LocalRecording::new(dir.path(), &id);
        open(&mut recording);
        recording.append(&mv(1)).unwrap();
        recording.append(&mv(2)).unwrap();
        futures_now(recording.checkpoint(&Replay::default().snapshot())).unwrap();
        drop(recording);
        // The recording lost its tail (restored from an older backup, say).
        fs::write(dir.path().join(format!("{id}.log")), format!("{}\n", mv(1))).unwrap();

        let replay = open(&mut LocalRecording::new(dir.path(), &id));
        assert_eq!(frames(&replay), [text(mv(1))]);
    }

    #[test]
    fn a_full_disk_stops_appends_without_tearing_a_line() {
        let Some(tmpfs) = Tmpfs::mount("recording-full", "256k") else {
            return;
        };
        let id = StreamId::random();
        let log = tmpfs.path().join(format!("{id}.log"));
        let mut recording = LocalRecording::new(tmpfs.path(), &id);
        open(&mut recording);
        let filler = tmpfs.fill();
        let long = mv(7).replace("\"s\"", &format!("\"{}\"", "s".repeat(3000)));
        let mut kept = 0;
        let failed = (0..200).find_map(|_| match recording.append(&long) {
            Ok(()) => {
                kept += 1;
                None
            }
            Err(e) => Some(e),
        });
        assert_eq!(failed, Some(StoreError::Full));
        assert_eq!(recording.append(&long), Err(StoreError::Full));
        assert_eq!(lines(&log).len(), kept, "only whole lines are in the file");

        fs::remove_file(filler).unwrap();
        recording.append(&mv(8)).unwrap();
        let after = lines(&log);
        assert_eq!(after.len(), kept + 1);
        assert_eq!(after.last(), Some(&mv(8)));
    }
}
