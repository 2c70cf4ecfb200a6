//! Viewers that resume after an offset: every event after it from the
//! recording, then live, with no gap and no duplicate; a `gap` frame where
//! history is gone; and a recording that stalls holding up nobody else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};

use twizzle_actors::replay::Snapshot;
use twizzle_actors::store::{Chunk, Cursor, Kept, Opened, RecordingStore, StoreError, StoreFuture};
use twizzle_actors::stream::{
    ClearRecording, StreamActor, StreamLimits, StreamSetup, MAX_UNRECORDED, STORAGE_BUSY,
};

use crate::support::*;

/// A stream recording into `dir`.
fn recorded_stream(dir: &TempDir) -> Addr<StreamActor> {
    let mut config = setup();
    config.recording = Box::new(local_recording(dir.path(), &config.id));
    StreamActor::new(config).start()
}

/// Publishes moves `from..=to` and waits until `witness` got them all, so
/// they are recorded.
async fn send_moves(
    stream: &Addr<StreamActor>,
    sender: &Peer,
    witness: &mut Peer,
    from: u64,
    to: u64,
) {
    for n in from..=to {
        sender.publish(stream, &mv(n)).await;
    }
    for n in from..=to {
        assert_eq!(witness.expect(&mv(n), "the witness").await, n);
    }
}

/// Asserts that `peer` gets moves `from..=to` next, each at its offset.
async fn expect_moves(peer: &mut Peer, from: u64, to: u64, what: &str) {
    for n in from..=to {
        let offset = peer.expect(&mv(n), &format!("{what}: move {n}")).await;
        assert_eq!(offset, n, "{what}");
    }
}

/// A viewer resuming gets every event after its offset, read from the
/// recording in several chunks, and then live ones; no replay first.
#[actix::test]
async fn a_resuming_viewer_gets_every_event_after_its_offset_then_live() {
    let dir = TempDir::new("resume-from-recording");
    let stream = recorded_stream(&dir);
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut witness = Peer::join(&stream, None).await;
    send_moves(&stream, &sender, &mut witness, 1, 700).await;

    let mut resumed = Peer::resume(&stream, 100).await;
    expect_moves(&mut resumed, 101, 700, "from the recording").await;
    sender.publish(&stream, &mv(701)).await;
    expect_moves(&mut resumed, 701, 701, "live").await;

    let mut current = Peer::resume(&stream, 701).await;
    let mut ahead = Peer::resume(&stream, 5_000).await;
    sender.publish(&stream, &mv(702)).await;
    expect_moves(&mut current, 702, 702, "at the latest offset: live only").await;
    expect_moves(&mut ahead, 702, 702, "past the latest offset: live only").await;
}

/// Live events that come while a viewer catches up wait for it, and come
/// after the recorded ones, each once.
#[actix::test]
async fn live_events_during_a_catch_up_come_after_it_once() {
    let dir = TempDir::new("resume-while-live");
    let stream = recorded_stream(&dir);
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut witness = Peer::join(&stream, None).await;
    send_moves(&stream, &sender, &mut witness, 1, 2_000).await;

    let mut resumed = Peer::resume(&stream, 0).await;
    for n in 2_001..=2_300 {
        sender.publish(&stream, &mv(n)).await;
    }
    expect_moves(&mut resumed, 1, 2_300, "recorded then live").await;
    sender.publish(&stream, &mv(2_301)).await;
    expect_moves(&mut resumed, 2_301, 2_301, "live").await;
}

/// Where the events after `since` are gone (the recording was deleted),
/// the viewer gets a `gap` frame naming them, then the replay, then live.
#[actix::test]
async fn a_deleted_recording_gives_a_gap_then_the_replay() {
    let dir = TempDir::new("resume-gap");
    let stream = recorded_stream(&dir);
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut witness = Peer::join(&stream, None).await;
    let (r, o) = (reset(true, 1), orientation(2));
    sender.publish(&stream, &r).await;
    sender.publish(&stream, &o).await;
    witness.expect_all(&[&r, &o], "the witness").await;
    send_moves(&stream, &sender, &mut witness, 3, 10).await;
    within("the recording to be deleted", stream.send(ClearRecording))
        .await
        .unwrap()
        .unwrap();
    send_moves(&stream, &sender, &mut witness, 11, 12).await;

    let mut resumed = Peer::resume(&stream, 1).await;
    let gap = resumed.next_frame("the gap").await;
    assert_eq!(gap, r#"{"event":"gap","data":{"from":2,"to":12}}"#);
    assert_eq!(resumed.expect(&o, "the replayed orientation").await, 2);
    expect_moves(&mut resumed, 12, 12, "the replayed move").await;
    sender.publish(&stream, &mv(13)).await;
    expect_moves(&mut resumed, 13, 13, "live").await;

    // After the deletion, what was recorded since is kept whole.
    let mut recent = Peer::resume(&stream, 10).await;
    expect_moves(&mut recent, 11, 13, "recorded since the deletion").await;
}

/// Past the quota nothing is recorded: a viewer resuming from before it
/// gets a gap and the replay; one resuming from the last event, live only.
#[actix::test]
async fn resuming_past_the_quota_gives_a_gap() {
    let dir = TempDir::new("resume-quota");
    let mut config = setup();
    config.recording = Box::new(local_recording(dir.path(), &config.id));
    config.limits = StreamLimits {
        max_recording_bytes: 2_000,
        ..StreamLimits::NONE
    };
    let stream = StreamActor::new(config).start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut witness = Peer::join(&stream, None).await;
    send_moves(&stream, &sender, &mut witness, 1, 40).await;

    let mut resumed = Peer::resume(&stream, 1).await;
    let gap = resumed.next_frame("the gap").await;
    assert_eq!(gap, r#"{"event":"gap","data":{"from":2,"to":40}}"#);
    expect_moves(&mut resumed, 40, 40, "the replayed move").await;
}

/// A recording whose writes hang until released, as on a stalled disk; it
/// waits without holding up the thread that called it.
struct StalledRecording {
    open: Arc<AtomicBool>,
    appends: Arc<std::sync::atomic::AtomicUsize>,
}

impl StalledRecording {
    fn wait(&self) -> StoreFuture<()> {
        let open = Arc::clone(&self.open);
        Box::pin(async move {
            // Answered from elsewhere, as a disk thread's answer is: never
            // at once, so the stream's thread runs others in between.
            loop {
                actix::clock::sleep(Duration::from_millis(1)).await;
                if open.load(Ordering::SeqCst) {
                    return Ok(());
                }
            }
        })
    }
}

impl RecordingStore for StalledRecording {
    fn open(&mut self) -> StoreFuture<Opened> {
        Box::pin(std::future::ready(Ok(Opened::default())))
    }

    fn recorded_bytes(&self) -> u64 {
        0
    }

    fn append(&mut self, _: Vec<u8>) -> StoreFuture<()> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.wait()
    }

    fn checkpoint(&mut self, _: &Snapshot, _: Kept) -> StoreFuture<()> {
        self.wait()
    }

    fn clear(&mut self, _: &Snapshot, _: Kept) -> StoreFuture<()> {
        self.wait()
    }

    fn sync(&mut self) -> StoreFuture<()> {
        self.wait()
    }

    fn read(&self, _: u64, cursor: Cursor, _: usize) -> StoreFuture<Chunk> {
        Box::pin(std::future::ready(Ok::<_, StoreError>(Chunk {
            events: Vec::new(),
            next: cursor,
            done: true,
        })))
    }
}

/// A stream whose recording stalls relays nothing it could not record, but
/// still takes sockets and answers; another stream on the same thread goes
/// on at full speed. Once the disk answers, every event goes out in order.
/// Past [`MAX_UNRECORDED`] waiting events, senders are told
/// `storage busy` rather than memory growing.
#[actix::test]
async fn a_stalled_recording_holds_up_only_its_own_stream() {
    let open = Arc::new(AtomicBool::new(false));
    let appends = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stalled = StreamActor::new(StreamSetup {
        recording: Box::new(StalledRecording {
            open: Arc::clone(&open),
            appends: Arc::clone(&appends),
        }),
        ..setup()
    })
    .start();
    let dir = TempDir::new("resume-other-stream");
    let healthy = recorded_stream(&dir);

    let mut stalled_sender = Peer::join(&stalled, Some(OWNER)).await;
    let mut stalled_viewer = Peer::join(&stalled, None).await;
    let healthy_sender = Peer::join(&healthy, Some(OWNER)).await;
    let mut healthy_viewer = Peer::join(&healthy, None).await;

    stalled_sender.publish(&stalled, &mv(1)).await;
    send_moves(&healthy, &healthy_sender, &mut healthy_viewer, 1, 200).await;
    let mut late = Peer::join(&stalled, None).await;
    assert_eq!(
        status(&stalled).await.sockets,
        3,
        "the stalled stream answers"
    );
    stalled_viewer.expect_nothing_yet("nothing relayed before it is recorded");

    let total = MAX_UNRECORDED as u64 + 50;
    for n in 2..=total {
        stalled_sender.publish(&stalled, &mv(n)).await;
    }
    // One write is in flight with the first event; the rest wait, up to the bound.
    let accepted = 1 + MAX_UNRECORDED as u64;
    let refused = total - accepted;
    for _ in 0..refused {
        let frame = stalled_sender.next_frame("storage busy").await;
        assert!(frame.contains(STORAGE_BUSY), "{frame}");
    }
    assert_eq!(appends.load(Ordering::SeqCst), 1, "one write at a time");

    open.store(true, Ordering::SeqCst);
    expect_moves(&mut stalled_viewer, 1, accepted, "after the stall").await;
    expect_moves(&mut late, 1, accepted, "a viewer that joined meanwhile").await;
    stalled_sender.publish(&stalled, &mv(total + 1)).await;
    let offset = stalled_viewer.expect(&mv(total + 1), "live again").await;
    assert_eq!(offset, accepted + 1, "refused events got no offset");
}
