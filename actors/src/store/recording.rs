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
