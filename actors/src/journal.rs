//! An append-only file of JSON lines, synced to disk on every append.
//!
//! Read once at start-up, then rewritten whole (compacted) and appended to. A
//! process killed in the middle of an append leaves at most one torn last
//! line, which the next read skips with a warning.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// An open journal file, positioned for appending.
#[derive(Debug)]
pub struct Journal {
    /// Where the journal lives, for log lines and compaction.
    path: PathBuf,
    /// Opened for appending; every append is followed by `sync_data`.
    file: File,
    /// Records appended since the last rewrite, to decide when to compact.
    appended: usize,
}

impl Journal {
    /// Every record in the file at `path`, oldest first; none if it does not exist.
    ///
    /// A line that does not parse (a torn write from a crash, or damage) is
    /// skipped with a warning: losing one record beats refusing to start.
    pub fn read<T: DeserializeOwned>(path: &Path) -> io::Result<Vec<T>> {
        let text = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        for (number, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice(line) {
                Ok(record) => records.push(record),
                Err(e) => log::warn!(
                    "{}: skipping line {} that does not parse ({e})",
                    path.display(),
                    number + 1
                ),
            }
        }
        Ok(records)
    }

    /// Replaces the file at `path` with `records` atomically, and opens it for appending.
    ///
    /// The new content is written to a temporary file, synced, and renamed
    /// over the old one, so a crash leaves either the old or the new file.
    pub fn rewrite<T: Serialize>(path: &Path, records: &[T]) -> io::Result<Journal> {
        let tmp = path.with_extension("tmp");
        let mut out = Vec::new();
        for record in records {
            serde_json::to_writer(&mut out, record)?;
            out.push(b'\n');
        }
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&out)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Journal {
            path: path.to_owned(),
            file,
            appended: 0,
        })
    }

    /// Appends `record` as one line and waits until it is on disk.
    pub fn append<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        self.write_line(record)?;
        self.file.sync_data()
    }

    /// Appends `record` as one line without waiting for the disk.
    ///
    /// The line is in the kernel when this returns, so it survives the
    /// process being killed, though not the machine losing power.
    pub fn append_unsynced<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        self.write_line(record)
    }

    fn write_line<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        // One write(2) per record, so a killed process leaves whole lines.
        self.file.write_all(&line)?;
        self.appended += 1;
        Ok(())
    }

    /// Waits until everything appended is on disk.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Records appended since the file was last rewritten.
    pub fn appended(&self) -> usize {
        self.appended
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `at` in milliseconds since the Unix epoch: how journals keep time, so that
/// it holds across restarts.
pub fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
