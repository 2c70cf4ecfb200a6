//! Stores that keep nothing past the process: for tests of the actors that
//! need no files, and a server run without a data directory.

use super::{
    done, Chunk, Cursor, EndedRecording, Kept, Opened, RecordingStore, StoreFuture, StreamChange,
    StreamRecord, StreamStore, UserChange, UserState, UserStore,
};
use crate::ids::{StreamId, UserId};
use crate::replay::Snapshot;

/// Users and claims in memory only: the token actor's own maps are all there is.
#[derive(Debug, Default)]
pub struct MemoryUsers;

impl UserStore for MemoryUsers {
    fn load(&mut self) -> StoreFuture<UserState> {
        done(Ok(UserState::default()))
    }

    fn apply(&mut self, _: Vec<UserChange>) -> StoreFuture<()> {
        done(Ok(()))
    }

    fn check_writable(&mut self) -> StoreFuture<()> {
        done(Ok(()))
    }
}

/// Streams in memory only: none come back after a restart, none are recorded.
#[derive(Debug, Default)]
pub struct MemoryStreams;

impl StreamStore for MemoryStreams {
    fn load(&mut self) -> StoreFuture<Vec<StreamRecord>> {
        done(Ok(Vec::new()))
    }

    fn record(&mut self, _: StreamChange) -> StoreFuture<()> {
        done(Ok(()))
    }

    fn sync(&mut self) -> StoreFuture<()> {
        done(Ok(()))
    }

    fn sweep_recordings(&mut self, _: std::time::Duration) -> StoreFuture<usize> {
        done(Ok(0))
    }

    fn check_writable(&mut self) -> StoreFuture<()> {
        done(Ok(()))
    }

    fn recording(&mut self, _: &StreamId) -> Box<dyn RecordingStore + Send> {
        Box::new(NoRecording)
    }

    fn ended_recordings(&mut self) -> StoreFuture<Vec<EndedRecording>> {
        done(Ok(Vec::new()))
    }

    fn ended_senders(&mut self, _: &StreamId) -> Option<Vec<UserId>> {
        None
    }

    fn delete_recording(&mut self, _: &StreamId) -> StoreFuture<()> {
        done(Ok(()))
    }

    fn read_recording(
        &mut self,
        _: &StreamId,
        _: u64,
        _: Cursor,
        _: usize,
    ) -> StoreFuture<Option<Chunk>> {
        done(Ok(None))
    }
}

/// A recording that keeps nothing.
#[derive(Debug, Default)]
pub struct NoRecording;

impl RecordingStore for NoRecording {
    fn open(&mut self) -> StoreFuture<Opened> {
        done(Ok(Opened::default()))
    }

    fn recorded_bytes(&self) -> u64 {
        0
    }

    fn append(&mut self, _: Vec<u8>) -> StoreFuture<()> {
        done(Ok(()))
    }

    fn checkpoint(&mut self, _: &Snapshot, _: Kept) -> StoreFuture<()> {
        done(Ok(()))
    }

    fn clear(&mut self, _: &Snapshot, _: Kept) -> StoreFuture<()> {
        done(Ok(()))
    }

    fn sync(&mut self) -> StoreFuture<()> {
        done(Ok(()))
    }

    fn read(&self, _: u64, cursor: Cursor, _: usize) -> StoreFuture<Chunk> {
        done(Ok(Chunk {
            events: Vec::new(),
            next: cursor,
            done: true,
        }))
    }
}
