//! An append-only file of JSON lines, synced to disk on every append.
//!
//! Read once at start-up, then rewritten whole (compacted) and appended to. A
//! process killed in the middle of an append leaves at most one torn last
//! line, which the next read skips with a warning. An append that fails (a
//! full disk, an I/O error) is cut back off the file, so the next record
//! starts on a line of its own instead of being glued to a torn one and lost
//! with it.
//!
//! Start-up rewrites the file; when that fails (a full or read-only disk),
//! [`Journal::reopen`] appends to the file as it is, and keeps trying to open
//! it while it cannot, so that the server starts and recovers on its own.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A journal file opened for appending, or to be opened by the next append.
#[derive(Debug)]
pub struct Journal {
    /// Where the journal lives, for log lines and compaction.
    path: PathBuf,
    /// Opened for appending; every append is followed by `sync_data`.
    /// `None` while the file cannot be opened for writing (a read-only
    /// disk); every append tries again.
    file: Option<File>,
    /// The length of the file's whole records: what a failed append is cut
    /// back to.
    len: u64,
    /// A failed append could not be cut back, so the file may end past `len`
    /// in a torn record; the next append cuts it first.
    torn: bool,
    /// The rename of the last compaction may not be on disk yet, and with it
    /// everything appended since; a synced append syncs the directory too.
    dir_unsynced: bool,
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
        let (file, len) = replace(path, records)?;
        sync_dir(path)?;
        Ok(Journal {
            path: path.to_owned(),
            file: Some(file),
            len,
            torn: false,
            dir_unsynced: false,
            appended: 0,
        })
    }

    /// The journal at `path` as it is, for appending: what start-up falls
    /// back on when [`Journal::rewrite`] failed.
    ///
    /// A torn last line (one without a newline) is cut off, as appending to
    /// it would lose the next record too. If the file cannot be opened for
    /// writing, every append tries again and fails with that attempt's
    /// error, until the disk takes writes again.
    pub fn reopen(path: &Path) -> Journal {
        let mut journal = Journal {
            path: path.to_owned(),
            file: None,
            len: 0,
            torn: false,
            dir_unsynced: true,
            appended: 0,
        };
        match open_existing(path) {
            Ok(opened) => {
                let file = journal.adopt(opened);
                journal.file = Some(file);
            }
            Err(e) => log::warn!(
                "{}: cannot open for appending ({e}); trying again on each append",
                path.display()
            ),
        }
        journal
    }

    /// Takes on what is known of `opened`, and returns its file to append to.
    fn adopt(&mut self, opened: Opened) -> File {
        self.len = opened.len;
        self.torn = opened.torn;
        // Its records were never compacted away, so they count towards the
        // next compaction.
        self.appended += opened.lines;
        // It may have just been created.
        self.dir_unsynced = true;
        opened.file
    }

    /// Replaces the journal's content with `records` atomically, as
    /// [`Journal::rewrite`] does, and appends to the new file from then on.
    ///
    /// If it fails before the new file takes the journal's name, the old
    /// file stays as it was and is still appended to, and the temporary
    /// file is removed. If only the directory's sync fails, the new file is
    /// in use and the next [`Journal::append`] syncs the directory again.
    pub fn compact<T: Serialize>(&mut self, records: &[T]) -> io::Result<()> {
        let (file, len) = replace(&self.path, records)?;
        self.file = Some(file);
        self.len = len;
        self.torn = false;
        self.appended = 0;
        self.dir_unsynced = true;
        sync_dir(&self.path)?;
        self.dir_unsynced = false;
        Ok(())
    }

    /// Appends `record` as one line and waits until it is on disk.
    ///
    /// On an error nothing of the record is left in the file (or, if cutting
    /// it back failed too, it is cut before the next append, which fails if
    /// it still cannot be).
    pub fn append<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        self.put(&line(record)?, 1, true)
    }

    /// Appends `records`, one line each, in one write, and waits until they
    /// are on disk: all of them are kept, or (on an error) none.
    pub fn append_all<T: Serialize>(&mut self, records: &[T]) -> io::Result<()> {
        let mut lines = Vec::new();
        for record in records {
            lines.extend_from_slice(&line(record)?);
        }
        self.put(&lines, records.len(), true)
    }

    /// Appends `record` as one line without waiting for the disk.
    ///
    /// The line is in the kernel when this returns, so it survives the
    /// process being killed, though not the machine losing power. A failed
    /// write is cut back as in [`Journal::append`].
    pub fn append_unsynced<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        self.put(&line(record)?, 1, false)
    }

    /// Makes the file ready for the next append: opens it if it could not
    /// be opened before (a start on a read-only disk), and cuts a torn
    /// record off its end. Fails as that append would; says nothing of free
    /// space, which only a write shows.
    pub fn prepare(&mut self) -> io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let opened = open_existing(&self.path)?;
                let file = self.adopt(opened);
                self.file.insert(file)
            }
        };
        if self.torn {
            // Appending after a torn record would glue the two into one line
            // that no read can parse, losing a record that was answered Ok.
            file.set_len(self.len)?;
            self.torn = false;
        }
        Ok(())
    }

    /// Writes `line` (`records` whole lines) at the end, synced if asked.
    fn put(&mut self, line: &[u8], records: usize, synced: bool) -> io::Result<()> {
        self.prepare()?;
        let Some(file) = &mut self.file else {
            return Err(io::Error::other("the journal is not open"));
        };
        // One write(2) per record, so a killed process leaves whole lines.
        let mut result = file.write_all(line);
        if synced && result.is_ok() {
            result = file.sync_data();
        }
        if synced && result.is_ok() && self.dir_unsynced {
            result = sync_dir(&self.path);
            self.dir_unsynced = result.is_err();
        }
        match result {
            Ok(()) => {
                self.len += line.len() as u64;
                self.appended += records;
                Ok(())
            }
            Err(e) => {
                // A short write, or one whose sync failed, may leave part of
                // the record in the file, or all of it without the promise
                // that it is on disk: either way it must go.
                if let Err(cut) = file.set_len(self.len) {
                    log::error!(
                        "{}: cannot cut a failed append back off ({cut}); retrying before the next one",
                        self.path.display()
                    );
                    self.torn = true;
                }
                Err(e)
            }
        }
    }

    /// Waits until everything appended is on disk.
    pub fn sync(&self) -> io::Result<()> {
        let Some(file) = &self.file else {
            // Nothing could be appended, so nothing waits for the disk.
            return Ok(());
        };
        file.sync_data()?;
        if self.dir_unsynced {
            sync_dir(&self.path)?;
        }
        Ok(())
    }

    /// Whether appends get as far as the disk: the file is open and ends in
    /// whole records. False after a start-up on a read-only disk until an
    /// append manages to open the file; a full disk does not show here.
    pub fn writable(&self) -> bool {
        self.file.is_some() && !self.torn
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

/// The journal's file opened for appending as it is, by [`open_existing`].
struct Opened {
    file: File,
    /// The length of its whole records.
    len: u64,
    /// It ends in a torn line that could not be cut off.
    torn: bool,
    /// How many lines it holds.
    lines: usize,
}

/// Opens (or creates) the file at `path` for appending, cutting off a torn
/// last line if it can.
///
/// A file whose end cannot be read is not appended to: a torn line there
/// would swallow the next record.
fn open_existing(path: &Path) -> io::Result<Opened> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let mut opened_len = 0;
    let mut len = 0;
    let mut lines = 0;
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(last) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            len = opened_len + last as u64 + 1;
            lines += chunk[..n].iter().filter(|&&b| b == b'\n').count();
        }
        opened_len += n as u64;
    }
    let mut torn = false;
    if len < opened_len {
        match file.set_len(len) {
            Ok(()) => log::warn!(
                "{}: cut off a torn last line of {} bytes",
                path.display(),
                opened_len - len
            ),
            Err(e) => {
                log::warn!(
                    "{}: cannot cut off a torn last line ({e}); trying again on the next append",
                    path.display()
                );
                torn = true;
            }
        }
    }
    Ok(Opened {
        file,
        len,
        torn,
        lines,
    })
}

/// Writes `records` to a temporary file next to `path`, syncs it and renames
/// it over `path`; returns the temporary file's own handle, opened for
/// appending before the rename, and its length.
///
/// Opening the new file by its path after the rename could fail (no file
/// descriptors left, say) and leave the journal appending to the old file,
/// which no longer has a name. On an error before the rename, the temporary
/// file is removed and `path` is untouched.
fn replace<T: Serialize>(path: &Path, records: &[T]) -> io::Result<(File, u64)> {
    let mut out = Vec::new();
    for record in records {
        serde_json::to_writer(&mut out, record)?;
        out.push(b'\n');
    }
    let tmp = path.with_extension("tmp");
    // One left by a crash in the middle of a compaction; `create_new`
    // below would refuse to reuse it.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&tmp)?;
    let result = file
        .write_all(&out)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        drop(file);
        if let Err(e) = fs::remove_file(&tmp) {
            log::warn!("{}: cannot remove ({e})", tmp.display());
        }
        return Err(e);
    }
    Ok((file, out.len() as u64))
}

/// Syncs the directory holding `path`, so that a rename or a new file in it
/// is on disk.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        // A bare file name's parent is "", which cannot be opened.
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// `record` as one line of JSON, newline included.
fn line<T: Serialize>(record: &T) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    Ok(line)
}

/// `at` in milliseconds since the Unix epoch: how journals keep time, so that
/// it holds across restarts.
pub fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testkit::{TempDir, Tmpfs};

    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        n: usize,
        /// Makes records long enough that a full disk tears one mid-write.
        pad: String,
    }

    fn rec(n: usize) -> Rec {
        Rec {
            n,
            pad: "x".repeat(100 + n % 37),
        }
    }

    /// Every record in the file at `path`, which must be whole lines that
    /// all parse.
    fn lines(path: &Path) -> Vec<Rec> {
        let text = fs::read(path).unwrap();
        if text.is_empty() {
            return Vec::new();
        }
        assert_eq!(text.last(), Some(&b'\n'), "the file ends in a torn line");
        text[..text.len() - 1]
            .split(|&b| b == b'\n')
            .map(|line| {
                serde_json::from_slice(line).unwrap_or_else(|e| {
                    panic!(
                        "line {:?} does not parse: {e}",
                        String::from_utf8_lossy(line)
                    )
                })
            })
            .collect()
    }

    fn put(journal: &mut Journal, record: &Rec, synced: bool) -> io::Result<()> {
        if synced {
            journal.append(record)
        } else {
            journal.append_unsynced(record)
        }
    }

    #[test]
    fn reads_back_what_was_written_and_appended() {
        let dir = TempDir::new("journal-plain");
        let path = dir.path().join("j.jsonl");
        assert_eq!(Journal::read::<Rec>(&path).unwrap(), []);
        let mut journal = Journal::rewrite(&path, &[rec(0), rec(1)]).unwrap();
        journal.append(&rec(2)).unwrap();
        journal.append_unsynced(&rec(3)).unwrap();
        journal.sync().unwrap();
        assert_eq!(journal.appended(), 2);
        assert_eq!(journal.path(), path);
        let want: Vec<_> = (0..4).map(rec).collect();
        assert_eq!(lines(&path), want);
        assert_eq!(Journal::read::<Rec>(&path).unwrap(), want);
    }

    #[test]
    fn read_skips_lines_that_do_not_parse() {
        let dir = TempDir::new("journal-torn");
        let path = dir.path().join("j.jsonl");
        fs::write(&path, "{\"n\":0,\"pad\":\"\"}\n{\"n\":1,\"pa{\"n\":2,\"pad\":\"\"}\n\n{\"n\":3,\"pad\":\"\"}\n{\"n\":4")
            .unwrap();
        let ns: Vec<_> = Journal::read::<Rec>(&path)
            .unwrap()
            .into_iter()
            .map(|r| r.n)
            .collect();
        assert_eq!(ns, [0, 3]);
    }

    #[test]
    fn a_failed_cut_is_retried_before_the_next_append() {
        let dir = TempDir::new("journal-cut");
        let path = dir.path().join("j.jsonl");
        let mut journal = Journal::rewrite(&path, &[rec(0)]).unwrap();
        // A read-only handle stands in for a disk on which every write and
        // every truncation fails.
        let good = journal.file.replace(File::open(&path).unwrap());
        assert!(journal.append(&rec(1)).is_err());
        // As if the failed write had left a torn record behind.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"n\":1,\"p")
            .unwrap();
        assert!(journal.append_unsynced(&rec(2)).is_err());
        assert!(fs::read(&path).unwrap().ends_with(b"{\"n\":1,\"p"));
        journal.file = good;
        journal.append(&rec(3)).unwrap();
        assert_eq!(lines(&path), [rec(0), rec(3)]);
        assert_eq!(journal.appended(), 1);
    }

    /// Appends until the disk is full, then checks that no failed append
    /// left anything behind and that appends work once there is room.
    fn appends_survive_a_full_disk(synced: bool) {
        let Some(tmpfs) = Tmpfs::mount("full", "256k") else {
            return;
        };
        let path = tmpfs.path().join("j.jsonl");
        let mut journal = Journal::rewrite(&path, &[rec(0)]).unwrap();
        let mut kept = vec![rec(0)];
        let filler = tmpfs.fill();
        let mut n = 1;
        let e = loop {
            assert!(n < 10_000, "the disk never filled");
            match put(&mut journal, &rec(n), synced) {
                Ok(()) => kept.push(rec(n)),
                Err(e) => break e,
            }
            n += 1;
        };
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        assert_eq!(lines(&path), kept);
        n += 1;
        assert!(put(&mut journal, &rec(n), synced).is_err());
        assert_eq!(lines(&path), kept);
        fs::remove_file(filler).unwrap();
        for n in n + 1..n + 4 {
            put(&mut journal, &rec(n), synced).unwrap();
            kept.push(rec(n));
        }
        assert_eq!(lines(&path), kept);
        assert_eq!(Journal::read::<Rec>(&path).unwrap(), kept);
        drop(journal);
    }

    #[test]
    fn synced_appends_survive_a_full_disk() {
        appends_survive_a_full_disk(true);
    }

    #[test]
    fn unsynced_appends_survive_a_full_disk() {
        appends_survive_a_full_disk(false);
    }

    #[test]
    fn compaction_replaces_the_file_and_appends_go_to_the_new_one() {
        let dir = TempDir::new("journal-compact");
        let path = dir.path().join("j.jsonl");
        let tmp = path.with_extension("tmp");
        let mut journal = Journal::rewrite(&path, &[rec(0), rec(1)]).unwrap();
        journal.append(&rec(2)).unwrap();
        // Left by a crash in the middle of an earlier compaction.
        fs::write(&tmp, "stale").unwrap();
        journal.compact(&[rec(1), rec(2)]).unwrap();
        assert_eq!(journal.appended(), 0);
        assert!(!tmp.exists());
        journal.append(&rec(3)).unwrap();
        journal.append_unsynced(&rec(4)).unwrap();
        assert_eq!(lines(&path), [rec(1), rec(2), rec(3), rec(4)]);
    }

    #[test]
    fn a_failed_compaction_keeps_the_old_file_in_use() {
        let dir = TempDir::new("journal-compact-fails");
        let path = dir.path().join("j.jsonl");
        let tmp = path.with_extension("tmp");
        let mut journal = Journal::rewrite(&path, &[rec(0)]).unwrap();
        journal.append(&rec(1)).unwrap();
        // Something that is not ours stands where the temporary file goes.
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join("keep"), "").unwrap();
        assert!(journal.compact(&[rec(1)]).is_err());
        assert!(tmp.join("keep").exists());
        assert_eq!(journal.appended(), 1);
        journal.append(&rec(2)).unwrap();
        assert_eq!(lines(&path), [rec(0), rec(1), rec(2)]);
    }

    #[test]
    fn compaction_on_a_full_disk_fails_and_works_once_there_is_room() {
        let Some(tmpfs) = Tmpfs::mount("compact-full", "256k") else {
            return;
        };
        let path = tmpfs.path().join("j.jsonl");
        let tmp = path.with_extension("tmp");
        let mut old: Vec<_> = (0..3).map(rec).collect();
        let mut journal = Journal::rewrite(&path, &old).unwrap();
        let filler = tmpfs.fill();
        // More than the page the old file may still have room in.
        let mut new: Vec<_> = (100..200).map(rec).collect();
        let e = journal.compact(&new).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        assert!(!tmp.exists());
        assert_eq!(lines(&path), old);
        fs::remove_file(filler).unwrap();
        journal.append(&rec(3)).unwrap();
        old.push(rec(3));
        assert_eq!(lines(&path), old);
        journal.compact(&new).unwrap();
        assert!(!tmp.exists());
        journal.append(&rec(200)).unwrap();
        journal.append_unsynced(&rec(201)).unwrap();
        new.extend([rec(200), rec(201)]);
        assert_eq!(lines(&path), new);
        assert_eq!(Journal::read::<Rec>(&path).unwrap(), new);
        drop(journal);
    }

    /// Two whole records and a torn third, as a crash in an older version
    /// (or a cut that failed) leaves them.
    fn write_torn(path: &Path) {
        let mut text = line(&rec(0)).unwrap();
        text.extend(line(&rec(1)).unwrap());
        text.extend(b"{\"n\":2,\"pa");
        fs::write(path, text).unwrap();
    }

    #[test]
    fn reopen_cuts_a_torn_last_line() {
        let dir = TempDir::new("journal-reopen");
        let path = dir.path().join("j.jsonl");
        write_torn(&path);
        let mut journal = Journal::reopen(&path);
        assert!(journal.writable());
        assert_eq!(lines(&path), [rec(0), rec(1)]);
        assert_eq!(journal.appended(), 2);
        journal.append(&rec(3)).unwrap();
        journal.append_unsynced(&rec(4)).unwrap();
        journal.sync().unwrap();
        assert_eq!(lines(&path), [rec(0), rec(1), rec(3), rec(4)]);
    }

    #[test]
    fn reopen_creates_a_missing_file() {
        let dir = TempDir::new("journal-reopen-missing");
        let path = dir.path().join("j.jsonl");
        let mut journal = Journal::reopen(&path);
        assert!(journal.writable());
        assert_eq!(journal.appended(), 0);
        journal.append(&rec(0)).unwrap();
        assert_eq!(lines(&path), [rec(0)]);
    }

    #[test]
    fn reopen_on_a_read_only_disk_appends_once_it_is_writable() {
        let Some(tmpfs) = Tmpfs::mount("read-only", "256k") else {
            return;
        };
        let path = tmpfs.path().join("j.jsonl");
        write_torn(&path);
        let before = fs::read(&path).unwrap();
        tmpfs.remount("ro");
        let mut journal = Journal::reopen(&path);
        assert!(!journal.writable());
        journal.sync().unwrap();
        let e = journal.append(&rec(3)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ReadOnlyFilesystem, "{e}");
        let e = journal.append_unsynced(&rec(3)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ReadOnlyFilesystem, "{e}");
        assert_eq!(fs::read(&path).unwrap(), before);
        tmpfs.remount("rw");
        journal.append(&rec(3)).unwrap();
        assert!(journal.writable());
        journal.append_unsynced(&rec(4)).unwrap();
        assert_eq!(lines(&path), [rec(0), rec(1), rec(3), rec(4)]);
        // The torn line was never compacted away either.
        assert_eq!(journal.appended(), 4);
        drop(journal);
    }

    #[test]
    fn compaction_recovers_a_journal_that_could_not_be_opened() {
        let Some(tmpfs) = Tmpfs::mount("read-only-compact", "256k") else {
            return;
        };
        let path = tmpfs.path().join("j.jsonl");
        write_torn(&path);
        tmpfs.remount("ro");
        let mut journal = Journal::reopen(&path);
        let e = journal.compact(&[rec(1)]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ReadOnlyFilesystem, "{e}");
        tmpfs.remount("rw");
        journal.compact(&[rec(1)]).unwrap();
        assert!(journal.writable());
        journal.append(&rec(5)).unwrap();
        assert_eq!(lines(&path), [rec(1), rec(5)]);
        drop(journal);
    }
}
