//! The local stores: JSON-lines journals in the data directory.
//!
//! - `users.jsonl`: users and claim tokens (hashed), every change synced
//!   before the token actor answers;
//! - `streams.jsonl`: each stream's creation (synced before its ID is handed
//!   out), each time it goes live or idle, and its end;
//! - `log/streams/`: the recordings (see [`super::recording`]).
//!
//! Each store keeps the live records in memory as well, so that it can
//! compact its journal (rewrite it with only what is live) on its own.
//! Start-up on a full or read-only disk still works: the journals are read,
//! compaction is skipped, and writes fail with `storage full` or `storage
//! read-only` until the disk is usable again.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::disk::{Disk, READ_THREADS, WRITE_THREADS};
use super::journal::{epoch_ms, Journal};
use super::recording::{read_chunk, recording_path, recording_size, LocalRecording};
use super::{
    done, Chunk, ClaimRecord, Cursor, EndedRecording, RecordingStore, StoreError, StoreFuture,
    StreamChange, StreamRecord, StreamStore, UserChange, UserRecord, UserState, UserStore,
};
use crate::ids::{StreamId, UserId};
use crate::secrets::TokenHash;

/// The users' journal inside the data directory.
pub const USERS_FILE: &str = "users.jsonl";
/// The streams' journal inside the data directory.
pub const STREAMS_FILE: &str = "streams.jsonl";
/// The recordings' folder inside the data directory.
pub const RECORDINGS_DIR: &str = "log/streams";
/// A journal is compacted once this many records were appended since it was
/// last rewritten and they outnumber its live records twice over.
const COMPACT_AFTER_APPENDS: usize = 1024;

/// Whether a journal with `live` records is due for compaction.
fn due(journal: &Journal, live: usize) -> bool {
    journal.appended() > COMPACT_AFTER_APPENDS && journal.appended() > 2 * live
}

/// Opens the journal at `path` compacted to `records`, or as it is when it
/// cannot be rewritten (a full or read-only disk): start-up must not fail
/// for want of space.
fn open_compacted<T: Serialize>(path: &Path, records: &[T]) -> Journal {
    Journal::rewrite(path, records).unwrap_or_else(|e| {
        log::warn!(
            "{}: cannot compact ({e}); going on with it as it is",
            path.display()
        );
        Journal::reopen(path)
    })
}

/// Rewrites `journal` with `records`, keeping the old one if that fails.
fn compact<T: Serialize>(journal: &mut Journal, records: &[T]) {
    if let Err(e) = journal.compact(records) {
        log::warn!("{}: compaction failed: {e}", journal.path().display());
    }
}

/// What the writability probe writes: a few bytes, so that it needs a block
/// (or page) of its own.
const PROBE_BYTES: &[u8] = b"probe\n";

/// Whether `journal` would take an append now.
///
/// The journal is made ready for it (opened, if a start on a read-only disk
/// left it closed), which shows a read-only disk. A full disk does not show
/// there, and an append may still fit in its file's last block: so a small
/// file next to it is written and removed again, which needs a block of its
/// own. The file systems the server runs on (ext4, xfs, tmpfs) claim that
/// block at `write`, so no sync is needed and the probe costs little.
fn check_writable(journal: &mut Journal) -> Result<(), StoreError> {
    let probe = journal.path().with_extension("probe");
    let failed = |e: io::Error| {
        log::debug!("{}: not writable: {e}", probe.display());
        StoreError::from(e)
    };
    journal.prepare().map_err(failed)?;
    let written = File::create(&probe).and_then(|mut file| file.write_all(PROBE_BYTES));
    let removed = match fs::remove_file(&probe) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    written.and(removed).map_err(failed)
}

/// Logs a failed write and turns it into what the client is told.
fn write_failed(journal: &Journal, e: io::Error) -> StoreError {
    log::error!("{}: write failed: {e}", journal.path().display());
    StoreError::from(e)
}

/// One line of `users.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum UserLine {
    /// A user was created or changed: the whole user.
    User(UserRecord),
    /// A claim token was issued.
    Claim {
        claim_hash: TokenHash,
        user_id: UserId,
        expires_ms: u64,
    },
    /// A claim token was redeemed.
    Claimed { claim_hash: TokenHash },
}

impl UserLine {
    fn of(change: &UserChange) -> UserLine {
        match change {
            UserChange::PutUser(user) => UserLine::User(user.clone()),
            UserChange::PutClaim(claim) => UserLine::Claim {
                claim_hash: claim.hash.clone(),
                user_id: claim.user_id.clone(),
                expires_ms: claim.expires_ms,
            },
            UserChange::RemoveClaim(hash) => UserLine::Claimed {
                claim_hash: hash.clone(),
            },
        }
    }
}

/// Users and claim tokens in `users.jsonl`.
pub struct LocalUsers {
    /// Every change, synced before it is acknowledged.
    journal: Journal,
    /// What the journal holds that is live, for compaction.
    live: LiveUsers,
}

/// The live users and claims of a journal.
#[derive(Default)]
struct LiveUsers {
    users: HashMap<UserId, UserRecord>,
    claims: HashMap<TokenHash, ClaimRecord>,
}

impl LocalUsers {
    /// Reads the users and unexpired claims kept in `data_dir`, compacting
    /// the journal on the way if the disk lets it.
    pub fn open(data_dir: &Path) -> io::Result<LocalUsers> {
        if let Err(e) = std::fs::create_dir_all(data_dir) {
            log::warn!("cannot create {}: {e}", data_dir.display());
        }
        let path = data_dir.join(USERS_FILE);
        let mut live = LiveUsers::default();
        for line in Journal::read::<UserLine>(&path)? {
            live.remember(line);
        }
        live.drop_expired();
        log::info!(
            "{}: {} users, {} unexpired claim tokens",
            path.display(),
            live.users.len(),
            live.claims.len()
        );
        Ok(LocalUsers {
            journal: open_compacted(&path, &live.lines()),
            live,
        })
    }
}

impl LiveUsers {
    fn len(&self) -> usize {
        self.users.len() + self.claims.len()
    }

    fn remember(&mut self, line: UserLine) {
        match line {
            UserLine::User(user) => {
                self.users.insert(user.id.clone(), user);
            }
            UserLine::Claim {
                claim_hash,
                user_id,
                expires_ms,
            } => {
                let claim = ClaimRecord {
                    hash: claim_hash.clone(),
                    user_id,
                    expires_ms,
                };
                self.claims.insert(claim_hash, claim);
            }
            UserLine::Claimed { claim_hash } => {
                self.claims.remove(&claim_hash);
            }
        }
    }

    fn drop_expired(&mut self) {
        let now = epoch_ms(SystemTime::now());
        let users = &self.users;
        self.claims
            .retain(|_, claim| claim.expires_ms > now && users.contains_key(&claim.user_id));
    }

    fn lines(&self) -> Vec<UserLine> {
        let users = self.users.values().cloned().map(UserLine::User);
        let claims = self
            .claims
            .values()
            .map(|claim| UserLine::of(&UserChange::PutClaim(claim.clone())));
        users.chain(claims).collect()
    }
}

impl UserStore for LocalUsers {
    fn load(&mut self) -> StoreFuture<UserState> {
        done(Ok(UserState {
            users: self.live.users.values().cloned().collect(),
            claims: self.live.claims.values().cloned().collect(),
        }))
    }

    fn apply(&mut self, changes: Vec<UserChange>) -> StoreFuture<()> {
        let lines: Vec<UserLine> = changes.iter().map(UserLine::of).collect();
        // A synchronous write and fsync on purpose: nothing may be handed
        // out before it is on disk. The token actor has a thread of its
        // own, so this stalls sign-ins only, never a stream.
        if let Err(e) = self.journal.append_all(&lines) {
            return done(Err(write_failed(&self.journal, e)));
        }
        for line in lines {
            self.live.remember(line);
        }
        if due(&self.journal, self.live.len()) {
            self.live.drop_expired();
            compact(&mut self.journal, &self.live.lines());
        }
        done(Ok(()))
    }

    fn check_writable(&mut self) -> StoreFuture<()> {
        done(check_writable(&mut self.journal))
    }
}

/// One line of `streams.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum StreamLine {
    /// A stream was created (idle from then until a sender connects).
    Stream {
        id: StreamId,
        senders: Vec<UserId>,
        created_ms: u64,
    },
    /// A sender connected to a stream that had none.
    Live { id: StreamId },
    /// The last sender left a stream.
    Idle { id: StreamId, since_ms: u64 },
    /// A stream ended; its recording is kept until it is forgotten.
    End {
        id: StreamId,
        /// When, in ms since the Unix epoch; missing in lines from before
        /// recordings were listed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ended_ms: Option<u64>,
    },
    /// An ended stream's recording was deleted.
    Forget { id: StreamId },
}

/// Open streams in `streams.jsonl`, and their recordings in `log/streams/`.
pub struct LocalStreams {
    /// Every change; creations synced before they are acknowledged.
    journal: Journal,
    /// What the journal holds that is live, for loading and compaction.
    live: LiveStreams,
    /// Where the recordings are.
    recordings: PathBuf,
    /// The threads that write recordings.
    disk: Disk,
    /// The threads that read them.
    reads: Disk,
}

/// The open streams of a journal, and the ended ones whose recordings are kept.
#[derive(Default)]
struct LiveStreams {
    /// The open streams by ID.
    open: HashMap<StreamId, StreamRecord>,
    /// Their creation order, for a stable listing after a restart.
    order: Vec<StreamId>,
    /// Ended streams whose recordings are kept.
    ended: HashMap<StreamId, EndedStream>,
}

impl LocalStreams {
    /// Reads the streams open in `data_dir`, compacting the journal on the
    /// way if the disk lets it.
    pub fn open(data_dir: &Path) -> io::Result<LocalStreams> {
        let recordings = data_dir.join(RECORDINGS_DIR);
        if let Err(e) = std::fs::create_dir_all(&recordings) {
            log::warn!("cannot create {}: {e}", recordings.display());
        }
        let path = data_dir.join(STREAMS_FILE);
        let mut live = LiveStreams::default();
        for line in Journal::read::<StreamLine>(&path)? {
            live.remember(line);
        }
        live.match_recordings(&recordings);
        Ok(LocalStreams {
            journal: open_compacted(&path, &live.lines()),
            live,
            recordings,
            disk: Disk::new(WRITE_THREADS),
            reads: Disk::new(READ_THREADS),
        })
    }
}

impl LiveStreams {
    /// Makes the ended streams those whose recordings are in `dir`: an
    /// entry whose file is gone goes, and a recording of a stream that is
    /// neither open nor known ended (kept from before ended streams were
    /// journaled) is listed with no senders, as of its file's last write.
    fn match_recordings(&mut self, dir: &Path) {
        self.ended.retain(|id, _| recording_path(dir, id).is_file());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = recording_of(&path) else {
                continue;
            };
            if self.open.contains_key(&id) || self.ended.contains_key(&id) {
                continue;
            }
            let written = entry
                .metadata()
                .and_then(|meta| meta.modified())
                .map_or(0, epoch_ms);
            self.ended.insert(
                id,
                EndedStream {
                    senders: Vec::new(),
                    created_ms: written,
                    ended_ms: written,
                },
            );
        }
    }

    fn remember(&mut self, line: StreamLine) {
        match line {
            StreamLine::Stream {
                id,
                senders,
                created_ms,
            } => {
                self.order.retain(|open| *open != id);
                self.order.push(id.clone());
                let record = StreamRecord {
                    id: id.clone(),
                    senders,
                    created_ms,
                    idle_since_ms: Some(created_ms),
                };
                self.open.insert(id, record);
            }
            StreamLine::Live { id } => {
                if let Some(record) = self.open.get_mut(&id) {
                    record.idle_since_ms = None;
                }
            }
            StreamLine::Idle { id, since_ms } => {
                if let Some(record) = self.open.get_mut(&id) {
                    record.idle_since_ms = Some(since_ms);
                }
            }
            StreamLine::End { id, ended_ms } => {
                if let Some(record) = self.open.remove(&id) {
                    self.order.retain(|open| *open != id);
                    let ended = EndedStream {
                        senders: record.senders,
                        created_ms: record.created_ms,
                        ended_ms: ended_ms.unwrap_or(record.created_ms),
                    };
                    self.ended.insert(id, ended);
                }
            }
            StreamLine::Forget { id } => {
                self.ended.remove(&id);
            }
        }
    }

    fn records(&self) -> Vec<StreamRecord> {
        self.order
            .iter()
            .filter_map(|id| self.open.get(id).cloned())
            .collect()
    }

    fn lines(&self) -> Vec<StreamLine> {
        self.records()
            .into_iter()
            .flat_map(|record| {
                let state = match record.idle_since_ms {
                    Some(since_ms) => StreamLine::Idle {
                        id: record.id.clone(),
                        since_ms,
                    },
                    None => StreamLine::Live {
                        id: record.id.clone(),
                    },
                };
                let created = StreamLine::Stream {
                    id: record.id,
                    senders: record.senders,
                    created_ms: record.created_ms,
                };
                [created, state]
            })
            .chain(self.ended.iter().flat_map(|(id, ended)| {
                let created = StreamLine::Stream {
                    id: id.clone(),
                    senders: ended.senders.clone(),
                    created_ms: ended.created_ms,
                };
                let end = StreamLine::End {
                    id: id.clone(),
                    ended_ms: Some(ended.ended_ms),
                };
                [created, end]
            }))
            .collect()
    }

    /// How many lines a compacted journal holds.
    fn len(&self) -> usize {
        2 * (self.open.len() + self.ended.len())
    }
}

impl LocalStreams {
    /// Forgets an ended stream whose recording went; a failure to note it
    /// is logged, and the next start finds the file gone all the same.
    fn forget(&mut self, id: StreamId) {
        if self.live.ended.remove(&id).is_none() {
            return;
        }
        if let Err(e) = self.journal.append_unsynced(&StreamLine::Forget { id }) {
            write_failed(&self.journal, e);
        }
    }
}

/// An ended stream whose recording is kept.
#[derive(Debug, Clone)]
struct EndedStream {
    /// Its senders.
    senders: Vec<UserId>,
    /// When it was created, in ms since the Unix epoch.
    created_ms: u64,
    /// When it ended.
    ended_ms: u64,
}

impl StreamStore for LocalStreams {
    fn load(&mut self) -> StoreFuture<Vec<StreamRecord>> {
        done(Ok(self.live.records()))
    }

    fn record(&mut self, change: StreamChange) -> StoreFuture<()> {
        let (line, synced) = match change {
            StreamChange::Created(record) => (
                StreamLine::Stream {
                    id: record.id,
                    senders: record.senders,
                    created_ms: record.created_ms,
                },
                true,
            ),
            StreamChange::Live(id) => (StreamLine::Live { id }, false),
            StreamChange::Idle { id, since_ms } => (StreamLine::Idle { id, since_ms }, false),
            StreamChange::Ended(id) => (
                StreamLine::End {
                    id,
                    ended_ms: Some(epoch_ms(SystemTime::now())),
                },
                false,
            ),
        };
        // A creation is synced before the stream's ID is handed out: a short
        // write on the registry's own thread; streams run elsewhere. The
        // rest reach the kernel at once, which survives the process being
        // killed, and the disk at the next sync.
        let written = if synced {
            self.journal.append(&line)
        } else {
            self.journal.append_unsynced(&line)
        };
        if let Err(e) = written {
            return done(Err(write_failed(&self.journal, e)));
        }
        self.live.remember(line);
        if due(&self.journal, self.live.len()) {
            compact(&mut self.journal, &self.live.lines());
        }
        done(Ok(()))
    }

    fn sync(&mut self) -> StoreFuture<()> {
        done(
            self.journal
                .sync()
                .map_err(|e| write_failed(&self.journal, e)),
        )
    }

    fn sweep_recordings(&mut self, keep: Duration) -> StoreFuture<usize> {
        let deleted = match sweep(&self.recordings, keep, &self.live.open) {
            Ok(deleted) => deleted,
            Err(e) => {
                log::warn!("{}: sweep failed: {e}", self.recordings.display());
                return done(Err(StoreError::from(e)));
            }
        };
        let count = deleted.len();
        for id in deleted {
            self.forget(id);
        }
        done(Ok(count))
    }

    fn ended_recordings(&mut self) -> StoreFuture<Vec<EndedRecording>> {
        let dir = self.recordings.clone();
        let ended: Vec<(StreamId, EndedStream)> = self
            .live
            .ended
            .iter()
            .map(|(id, ended)| (id.clone(), ended.clone()))
            .collect();
        let sized = self.reads.run(move || {
            let mut kept = Vec::new();
            for (id, ended) in ended {
                match recording_size(&dir, &id) {
                    Ok(Some((events, bytes))) => kept.push(EndedRecording {
                        id,
                        senders: ended.senders,
                        created_ms: ended.created_ms,
                        ended_ms: ended.ended_ms,
                        events,
                        bytes,
                    }),
                    Ok(None) => {}
                    Err(e) => log::warn!("stream {id}: cannot size its recording: {e}"),
                }
            }
            kept
        });
        Box::pin(sized)
    }

    fn ended_senders(&mut self, id: &StreamId) -> Option<Vec<UserId>> {
        self.live.ended.get(id).map(|ended| ended.senders.clone())
    }

    fn delete_recording(&mut self, id: &StreamId) -> StoreFuture<()> {
        let path = recording_path(&self.recordings, id);
        if let Err(e) = remove_recording(&path) {
            log::warn!("stream {id}: cannot delete its recording: {e}");
            return done(Err(StoreError::from(e)));
        }
        log::info!("stream {id}: recording deleted");
        self.forget(id.clone());
        done(Ok(()))
    }

    fn check_writable(&mut self) -> StoreFuture<()> {
        done(check_writable(&mut self.journal))
    }

    fn recording(&mut self, id: &StreamId) -> Box<dyn RecordingStore + Send> {
        Box::new(LocalRecording::new(
            &self.recordings,
            id,
            self.disk.clone(),
            self.reads.clone(),
        ))
    }

    fn read_recording(
        &mut self,
        id: &StreamId,
        after: u64,
        cursor: Cursor,
        max: usize,
    ) -> StoreFuture<Option<Chunk>> {
        let path = recording_path(&self.recordings, id);
        let read = self
            .reads
            .run(move || read_chunk(&path, after, cursor, max));
        Box::pin(async move { Ok(read.await??) })
    }
}

/// Deletes from `dir` each recording (and its snapshot) of a stream not in
/// `open` whose file was last written more than `keep` ago. A recording's
/// last write is its stream's end, or near it (the end syncs it).
fn sweep(
    dir: &Path,
    keep: Duration,
    open: &HashMap<StreamId, StreamRecord>,
) -> io::Result<Vec<StreamId>> {
    let now = SystemTime::now();
    let mut deleted = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(id) = recording_of(&path) else {
            continue;
        };
        if open.contains_key(&id) {
            continue;
        }
        let written = std::fs::metadata(&path)?.modified()?;
        if now.duration_since(written).unwrap_or_default() < keep {
            continue;
        }
        remove_recording(&path)?;
        log::info!("stream {id}: recording deleted after the retention period");
        deleted.push(id);
    }
    Ok(deleted)
}

/// The stream whose recording is at `path`, if it is one (`{id}.log`).
fn recording_of(path: &Path) -> Option<StreamId> {
    path.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_suffix(".log"))
        .and_then(StreamId::parse)
}

/// Deletes a recording and its snapshot.
fn remove_recording(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    match std::fs::remove_file(path.with_extension("snapshot")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Identity;
    use crate::testkit::{TempDir, Tmpfs};

    /// What a local store's future resolves to: at once, as they do.
    fn now<T>(mut future: StoreFuture<T>) -> Result<T, StoreError> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => panic!("a local store's call waits"),
        }
    }

    /// A user line as the journal held it before development users
    /// existed; the hash is of no token in particular.
    const OLD_USER_LINE: &str = r#"{"t":"user","id":"user_00000000000000aa","wca_account":42,"wca_id":"2015ABCD01","name":"Ana","token_hashes":["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],"sealed_token":null}"#;

    #[test]
    fn user_lines_from_before_development_users_load_and_are_written_alike() {
        let line: UserLine = serde_json::from_str(OLD_USER_LINE).unwrap();
        let UserLine::User(user) = &line else {
            panic!("a user line, read as {line:?}");
        };
        assert_eq!(user.identity, Identity::Wca { wca_account: 42 });
        assert_eq!(user.name, "Ana");
        assert_eq!(user.token_hashes.len(), 1);
        let written: serde_json::Value = serde_json::to_value(&line).unwrap();
        let old: serde_json::Value = serde_json::from_str(OLD_USER_LINE).unwrap();
        assert_eq!(written, old, "a WCA user is written as before");
    }

    #[test]
    fn development_users_round_trip_apart_from_wca_accounts() {
        let dev = UserRecord {
            id: UserId::random(),
            identity: Identity::Dev {
                dev_name: crate::ids::DevName::parse("42").unwrap(),
            },
            wca_id: None,
            name: "42".to_owned(),
            token_hashes: Vec::new(),
            sealed_token: None,
        };
        let text = serde_json::to_string(&UserLine::User(dev.clone())).unwrap();
        assert!(text.contains(r#""dev_name":"42""#), "{text}");
        assert!(!text.contains("wca_account"), "{text}");
        match serde_json::from_str(&text).unwrap() {
            UserLine::User(back) => assert_eq!(back, dev),
            other => panic!("a user line, read as {other:?}"),
        }
        // A line with a name that is not one, or with neither kind, is not a user.
        for bad in [
            r#"{"t":"user","id":"user_00000000000000aa","dev_name":"a\u0007","wca_id":null,"name":"a","token_hashes":[],"sealed_token":null}"#,
            r#"{"t":"user","id":"user_00000000000000aa","wca_id":null,"name":"a","token_hashes":[],"sealed_token":null}"#,
        ] {
            assert!(serde_json::from_str::<UserLine>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn development_users_survive_a_reopen() {
        let dir = TempDir::new("local-dev-users");
        let name = crate::ids::DevName::parse("Zoë Ünal").unwrap();
        let dev = UserRecord {
            id: UserId::random(),
            identity: Identity::Dev { dev_name: name },
            wca_id: None,
            name: "Zoë Ünal".to_owned(),
            token_hashes: Vec::new(),
            sealed_token: None,
        };
        fs::write(dir.path().join(USERS_FILE), format!("{OLD_USER_LINE}\n")).unwrap();
        let mut users = LocalUsers::open(dir.path()).unwrap();
        now(users.apply(vec![UserChange::PutUser(dev.clone())])).unwrap();
        drop(users);
        let mut users = LocalUsers::open(dir.path()).unwrap();
        let mut loaded = now(users.load()).unwrap().users;
        loaded.sort_by_key(|user| user.name.clone());
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].identity, Identity::Wca { wca_account: 42 });
        assert_eq!(loaded[1], dev);
    }

    #[test]
    fn a_writable_directory_checks_out_and_keeps_no_probe() {
        let dir = TempDir::new("local-check");
        let mut users = LocalUsers::open(dir.path()).unwrap();
        let mut streams = LocalStreams::open(dir.path()).unwrap();
        assert_eq!(now(users.check_writable()), Ok(()));
        assert_eq!(now(streams.check_writable()), Ok(()));
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["log", STREAMS_FILE, USERS_FILE]);
    }

    #[test]
    fn a_full_disk_checks_as_full_until_it_has_room() {
        let Some(tmpfs) = Tmpfs::mount("local-check-full", "256k") else {
            return;
        };
        let mut streams = LocalStreams::open(tmpfs.path()).unwrap();
        let filler = tmpfs.fill();
        assert_eq!(now(streams.check_writable()), Err(StoreError::Full));
        assert!(!tmpfs.path().join("streams.probe").exists());
        fs::remove_file(filler).unwrap();
        assert_eq!(now(streams.check_writable()), Ok(()));
    }

    #[test]
    fn a_start_on_a_read_only_disk_checks_as_read_only_until_it_is_writable() {
        let Some(tmpfs) = Tmpfs::mount("local-check-ro", "256k") else {
            return;
        };
        drop(LocalStreams::open(tmpfs.path()).unwrap());
        tmpfs.remount("ro");
        let mut streams = LocalStreams::open(tmpfs.path()).unwrap();
        assert_eq!(now(streams.check_writable()), Err(StoreError::ReadOnly));
        tmpfs.remount("rw");
        assert_eq!(now(streams.check_writable()), Ok(()));
        drop(streams);
    }
}
