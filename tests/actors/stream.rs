//! The stream actor: joining, relaying, replay, the reset loop guard, the
//! idle countdown, slow and gone sockets, and the recording.

use std::time::Duration;

use actix::{Actor, Addr};

use twizzle_actors::close;
use twizzle_actors::stream::{
    Leave, Outbound, StreamActor, StreamLimits, StreamNotice, StreamSetup, StreamStatus,
};

use crate::support::*;

const CLOSE_NORMAL: u16 = close::STREAM_ENDED.code;
const STREAM_ENDED: &str = close::STREAM_ENDED.reason;
const CLOSE_POLICY: u16 = close::TOO_SLOW.code;
const TOO_SLOW: &str = close::TOO_SLOW.reason;

/// A stream setup recording into `dir`, and the recording's path there.
fn recorded_in(dir: &std::path::Path) -> (StreamSetup, std::path::PathBuf) {
    let mut config = setup();
    config.recording = Box::new(local_recording(dir, &config.id));
    let path = dir.join(format!("{}.log", config.id));
    (config, path)
}

/// A countdown short enough to run out during a test.
const IDLE: Duration = Duration::from_millis(300);

fn start() -> Addr<StreamActor> {
    StreamActor::new(setup()).start()
}

/// A user in `senders` joins as a sender; anyone else (signed in or not) as a
/// viewer; every socket gets its own ID.
#[actix::test]
async fn join_tells_senders_from_viewers() {
    let stream = start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let stranger = Peer::join(&stream, Some(STRANGER)).await;
    let anonymous = Peer::join(&stream, None).await;
    assert!(sender.sender);
    assert!(!stranger.sender);
    assert!(!anonymous.sender);
    assert_ne!(sender.id, stranger.id);
    assert_ne!(stranger.id, anonymous.id);
    assert_ne!(sender.id, anonymous.id);
    assert_eq!(
        status(&stream).await,
        StreamStatus {
            sockets: 3,
            senders: 1,
            counting_down: false,
        }
    );
}

/// A sender's events reach every other socket (viewers and the user's other
/// sender sockets) in the order they were published, and never the socket
/// that published them.
#[actix::test]
async fn events_reach_every_other_socket_in_order_without_echo() {
    let stream = start();
    let mut first = Peer::join(&stream, Some(OWNER)).await;
    let mut second = Peer::join(&stream, Some(OWNER)).await;
    let mut anonymous = Peer::join(&stream, None).await;
    let mut stranger = Peer::join(&stream, Some(STRANGER)).await;
    assert!(first.sender && second.sender);

    let (e1, e2, e3, e4, e5) = (mv(1), orientation(2), mv(3), reset(true, 4), mv(5));
    first.publish(&stream, &e1).await;
    first.publish(&stream, &e2).await;
    second.publish(&stream, &e3).await;
    first.publish(&stream, &e4).await;
    second.publish(&stream, &e5).await;

    let all = [&e1, &e2, &e3, &e4, &e5];
    anonymous.expect_all(&all, "anonymous viewer").await;
    stranger.expect_all(&all, "signed-in viewer").await;
    // Each stream-to-socket queue is FIFO, so an echo of e1 would have come
    // before e3, an echo of e4 before e5, and one of e3 before e4.
    first
        .expect_all(&[&e3, &e5], "first sender, which published e1, e2, e4")
        .await;
    second
        .expect_all(&[&e1, &e2, &e4], "second sender, which published e3, e5")
        .await;
}

/// A `Publish` from a viewer's socket, from a socket that left, or from a
/// socket the stream never had is ignored: not relayed, not remembered.
#[actix::test]
async fn publish_from_a_viewer_or_unknown_socket_is_ignored() {
    let stream = start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let left = Peer::join(&stream, Some(OWNER)).await;
    let viewer = Peer::join(&stream, Some(STRANGER)).await;
    let mut other = Peer::join(&stream, None).await;
    within("a leave", stream.send(Leave { socket: left.id }))
        .await
        .unwrap();

    viewer.publish(&stream, &orientation(1)).await;
    viewer.publish(&stream, &reset(false, 2)).await;
    left.publish(&stream, &mv(3)).await;
    publish(&stream, 9_999, &mv(4)).await;
    let live = mv(5);
    sender.publish(&stream, &live).await;
    other
        .expect(&live, "the sender's move, and nothing ignored before it")
        .await;

    // Nothing ignored was remembered: a late viewer is replayed the move only.
    let mut late = Peer::join(&stream, None).await;
    let marker = orientation(6);
    sender.publish(&stream, &marker).await;
    late.expect_all(&[&live, &marker], "late viewer").await;
}

/// A viewer joining later gets the last reset, then the last orientation,
/// then the last move (whatever order they were published in), before any
/// live event.
#[actix::test]
async fn late_viewer_is_replayed_last_reset_orientation_move() {
    let stream = start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let (m1, r1, o1, m2) = (mv(1), reset(true, 2), orientation(3), mv(4));
    for event in [&m1, &r1, &o1, &m2] {
        sender.publish(&stream, event).await;
    }
    let mut viewer = Peer::join(&stream, None).await;
    let live = mv(5);
    sender.publish(&stream, &live).await;
    viewer
        .expect_all(&[&r1, &o1, &m2, &live], "replay, then live")
        .await;

    // The replay follows the state: newer orientation and reset, same order.
    let (o2, r2) = (orientation(6), reset(false, 7));
    sender.publish(&stream, &o2).await;
    sender.publish(&stream, &r2).await;
    let mut later = Peer::join(&stream, Some(STRANGER)).await;
    let live2 = orientation(8);
    sender.publish(&stream, &live2).await;
    later
        .expect_all(&[&r2, &o2, &live, &live2], "second replay, then live")
        .await;
}

/// A sender's socket joining a stream with state gets no replay.
#[actix::test]
async fn joining_sender_gets_no_replay() {
    let stream = start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    for event in [reset(true, 1), orientation(2), mv(3)] {
        sender.publish(&stream, &event).await;
    }
    let mut second = Peer::join(&stream, Some(OWNER)).await;
    assert!(second.sender);
    let live = mv(4);
    sender.publish(&stream, &live).await;
    second
        .expect(&live, "the live move, with no replay before it")
        .await;
}

/// A viewer of a stream with no events gets nothing before the first live
/// event; a stream with only some kinds replays only those.
#[actix::test]
async fn replay_holds_only_what_happened() {
    let stream = start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut first = Peer::join(&stream, None).await;
    let o1 = orientation(1);
    sender.publish(&stream, &o1).await;
    first
        .expect(&o1, "the live orientation, with no replay before it")
        .await;

    let mut second = Peer::join(&stream, None).await;
    let m2 = mv(2);
    sender.publish(&stream, &m2).await;
    second
        .expect_all(&[&o1, &m2], "only an orientation to replay")
        .await;
}

/// The reset loop guard: a reset with the same `trackingOrientation` as an
/// immediately preceding accepted reset is dropped, however often it comes,
/// and is not remembered for replay.
#[actix::test]
async fn repeated_reset_is_dropped() {
    let stream = start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut viewer = Peer::join(&stream, None).await;
    let r1 = reset(true, 1);
    sender.publish(&stream, &r1).await;
    sender.publish(&stream, &reset(true, 2)).await;
    sender.publish(&stream, &reset(true, 3)).await;
    let marker = mv(4);
    sender.publish(&stream, &marker).await;
    viewer
        .expect_all(&[&r1, &marker], "the first reset only, then the move")
        .await;

    let mut late = Peer::join(&stream, None).await;
    let live = mv(5);
    sender.publish(&stream, &live).await;
    late.expect_all(&[&r1, &marker, &live], "replay holds the first reset once")
        .await;
}

/// A reset with the other `trackingOrientation` passes the guard.
#[actix::test]
async fn reset_with_the_other_flag_is_relayed() {
    let stream = start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut viewer = Peer::join(&stream, None).await;
    let (r1, r2, r3) = (reset(true, 1), reset(false, 2), reset(true, 3));
    for event in [&r1, &r2, &r3] {
        sender.publish(&stream, event).await;
    }
    viewer.expect_all(&[&r1, &r2, &r3], "every reset").await;
}

/// A reset after another kind of event passes the guard, even with the same
/// flag as the reset before that event.
#[actix::test]
async fn reset_after_another_event_is_relayed() {
    let stream = start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut viewer = Peer::join(&stream, None).await;
    let (r1, m2, r3, o4, r5) = (
        reset(true, 1),
        mv(2),
        reset(true, 3),
        orientation(4),
        reset(true, 5),
    );
    for event in [&r1, &m2, &r3, &o4, &r5] {
        sender.publish(&stream, event).await;
    }
    viewer
        .expect_all(&[&r1, &m2, &r3, &o4, &r5], "every event")
        .await;
}

/// With no sender, the stream's countdown runs out after the idle timeout:
/// it tells the registry `Expired` and takes no new socket; the registry's
/// `EndStream` then closes every socket with 1000 "stream ended", and the
/// registry hears `Stopped`.
#[actix::test]
async fn idle_stream_ends_and_closes_every_socket() {
    let (registry, mut notices) = probe::<StreamNotice>();
    let mut config = setup();
    let id = config.id.clone();
    config.idle_timeout = IDLE;
    config.registry = Some(registry.recipient());
    let stream = StreamActor::new(config).start();
    let mut anonymous = Peer::join(&stream, None).await;
    let mut stranger = Peer::join(&stream, Some(STRANGER)).await;
    assert!(status(&stream).await.counting_down);

    assert_eq!(
        notices.next("Expired").await,
        StreamNotice::Expired { id: id.clone() }
    );
    let (late, _inbox, _probe) = socket_probe();
    assert!(
        join_with(&stream, late, Some(OWNER)).await.is_err(),
        "a join after the countdown ran out must fail"
    );
    assert!(
        anonymous.inbox.try_next().is_none(),
        "the registry ends it, not the stream"
    );

    // What the registry does on `Expired`.
    end_stream(&stream, CLOSE_NORMAL, STREAM_ENDED).await;
    anonymous
        .expect_close(CLOSE_NORMAL, STREAM_ENDED, "anonymous viewer")
        .await;
    stranger
        .expect_close(CLOSE_NORMAL, STREAM_ENDED, "signed-in viewer")
        .await;
    assert_eq!(
        notices.next("Stopped").await,
        StreamNotice::Stopped { id: id.clone() }
    );
}

/// Without a registry, a stream whose countdown runs out ends itself.
#[actix::test]
async fn without_a_registry_the_stream_ends_itself() {
    let mut config = setup();
    config.idle_timeout = IDLE;
    let stream = StreamActor::new(config).start();
    let mut viewer = Peer::join(&stream, None).await;
    viewer
        .expect_close(CLOSE_NORMAL, STREAM_ENDED, "the viewer")
        .await;
    stopped(&stream).await;
}

/// A connected sender stops the countdown; it restarts only when the last
/// sender leaves; a sender joining again stops it again; and once it runs
/// out the stream ends.
#[actix::test]
async fn senders_hold_the_countdown() {
    let (registry, mut notices) = probe::<StreamNotice>();
    let mut config = setup();
    let id = config.id.clone();
    config.idle_timeout = IDLE;
    config.registry = Some(registry.recipient());
    let stream = StreamActor::new(config).start();
    let first = Peer::join(&stream, Some(OWNER)).await;
    let second = Peer::join(&stream, Some(OWNER)).await;
    let mut viewer = Peer::join(&stream, None).await;
    assert_eq!(
        status(&stream).await,
        StreamStatus {
            sockets: 3,
            senders: 2,
            counting_down: false,
        }
    );

    // Use a stream started after ours, with twice the timeout, as the clock:
    // when it has ended, our countdown would have run out if it were running.
    let mut clock_setup = setup();
    clock_setup.idle_timeout = IDLE * 2;
    let clock = StreamActor::new(clock_setup).start();
    let mut tick = Peer::join(&clock, None).await;
    tick.expect_close(CLOSE_NORMAL, STREAM_ENDED, "the clock stream")
        .await;
    let marker = mv(1);
    second.publish(&stream, &marker).await;
    viewer
        .expect(&marker, "a live move: the stream did not end")
        .await;

    // One sender leaving (twice, as a careless session might) keeps the other.
    for _ in 0..2 {
        within("a leave", stream.send(Leave { socket: first.id }))
            .await
            .unwrap();
    }
    assert_eq!(
        status(&stream).await,
        StreamStatus {
            sockets: 2,
            senders: 1,
            counting_down: false,
        }
    );
    // A viewer leaving does not touch the countdown either.
    let passer_by = Peer::join(&stream, None).await;
    within(
        "a leave",
        stream.send(Leave {
            socket: passer_by.id,
        }),
    )
    .await
    .unwrap();
    assert!(!status(&stream).await.counting_down);

    within("a leave", stream.send(Leave { socket: second.id }))
        .await
        .unwrap();
    let now = status(&stream).await;
    assert_eq!((now.senders, now.counting_down), (0, true));

    let third = Peer::join(&stream, Some(OWNER)).await;
    assert!(!status(&stream).await.counting_down);
    within("a leave", stream.send(Leave { socket: third.id }))
        .await
        .unwrap();
    assert!(status(&stream).await.counting_down);

    // The registry heard each change of the countdown, then its end.
    let mut heard = Vec::new();
    loop {
        let notice = notices.next("notices").await;
        let done = matches!(notice, StreamNotice::Expired { .. });
        heard.push(match notice {
            StreamNotice::Live { .. } => "live",
            StreamNotice::Idle { .. } => "idle",
            StreamNotice::Expired { .. } => "expired",
            StreamNotice::Stopped { .. } => "stopped",
        });
        if done {
            break;
        }
    }
    assert_eq!(heard, ["live", "idle", "live", "idle", "expired"]);
    let (late, _inbox, _probe) = socket_probe();
    assert!(join_with(&stream, late, Some(OWNER)).await.is_err());
    end_stream(&stream, CLOSE_NORMAL, STREAM_ENDED).await;
    viewer
        .expect_close(CLOSE_NORMAL, STREAM_ENDED, "the viewer")
        .await;
    assert_eq!(notices.next("Stopped").await, StreamNotice::Stopped { id });
}

/// `EndStream` closes every socket, senders too, with the given code and
/// reason, and the registry hears `Stopped`.
#[actix::test]
async fn end_stream_closes_every_socket_with_its_code() {
    let (registry, mut notices) = probe::<StreamNotice>();
    let mut config = setup();
    let id = config.id.clone();
    config.registry = Some(registry.recipient());
    let stream = StreamActor::new(config).start();
    let mut sender = Peer::join(&stream, Some(OWNER)).await;
    assert_eq!(
        notices.next("Live").await,
        StreamNotice::Live { id: id.clone() }
    );
    let mut viewer = Peer::join(&stream, None).await;
    end_stream(&stream, 1001, "server restarting").await;
    sender
        .expect_close(1001, "server restarting", "the sender")
        .await;
    viewer
        .expect_close(1001, "server restarting", "the viewer")
        .await;
    assert_eq!(notices.next("Stopped").await, StreamNotice::Stopped { id });
}

/// A socket that stops reading fills its bounded mailbox and is dropped (and
/// told so with 1008 once it reads again), while the sender's other viewer
/// gets every event.
#[actix::test]
async fn full_socket_is_dropped_and_others_get_everything() {
    const CAPACITY: usize = 4;
    const EVENTS: u64 = 40;
    let stream = start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut honest = Peer::join(&stream, None).await;
    let (stuck, mut stuck_inbox, release) = stuck_socket(CAPACITY);
    join_with(&stream, stuck, None)
        .await
        .expect("the stream is running");
    assert_eq!(status(&stream).await.sockets, 3);

    let events: Vec<_> = (1..=EVENTS).map(mv).collect();
    for (n, event) in events.iter().enumerate() {
        sender.publish(&stream, event).await;
        honest
            .expect(event, &format!("honest viewer, move {n}"))
            .await;
    }
    assert_eq!(
        status(&stream).await,
        StreamStatus {
            sockets: 2,
            senders: 1,
            counting_down: false,
        },
        "the stuck socket is dropped, the others stay"
    );

    // Once it reads again, the stuck socket finds the events that fit its
    // mailbox, in order, and then the close.
    release.push(());
    let mut queued = 0;
    loop {
        match stuck_inbox.next("the stuck socket's queue").await {
            Outbound::Event(text) => {
                let (text, _) = without_offset(&text);
                assert_eq!(text, *events[queued].text, "stuck socket, event {queued}");
                queued += 1;
            }
            Outbound::Batch(batch) => panic!("a batch for a socket that did not resume: {batch:?}"),
            Outbound::Close(got) => {
                assert_eq!((got.code, got.reason), (CLOSE_POLICY, TOO_SLOW));
                break;
            }
        }
    }
    assert!(
        (CAPACITY..=CAPACITY + 1).contains(&queued),
        "{queued} events were queued for a mailbox of {CAPACITY}"
    );
}

/// A socket whose session is gone is removed at the next event, and the
/// others carry on.
#[actix::test]
async fn gone_socket_is_removed() {
    let stream = start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut viewer = Peer::join(&stream, None).await;
    join_with(&stream, gone_socket(), None)
        .await
        .expect("the stream is running");
    assert_eq!(status(&stream).await.sockets, 3);
    let (m1, m2) = (mv(1), mv(2));
    sender.publish(&stream, &m1).await;
    assert_eq!(status(&stream).await.sockets, 2);
    sender.publish(&stream, &m2).await;
    viewer.expect_all(&[&m1, &m2], "the viewer").await;
}

/// Every accepted event is appended to the recording as one JSON line, in
/// order; dropped resets and ignored publishes are not; an existing
/// recording is appended to, not replaced.
#[actix::test]
async fn recording_appends_accepted_events_as_json_lines() {
    let dir = TempDir::new("recording");
    let (config, path) = recorded_in(dir.path());
    let earlier = r#"{"event":"move","data":{"from":"an earlier run"}}"#;
    std::fs::write(&path, format!("{earlier}\n")).unwrap();
    let stream = StreamActor::new(config).start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut viewer = Peer::join(&stream, None).await;

    let (m1, r1, o1, r3, m2) = (
        mv(1),
        reset(true, 1),
        orientation(1),
        reset(false, 3),
        mv(2),
    );
    sender.publish(&stream, &m1).await;
    sender.publish(&stream, &r1).await;
    sender.publish(&stream, &reset(true, 2)).await;
    sender.publish(&stream, &o1).await;
    viewer.publish(&stream, &mv(99)).await;
    sender.publish(&stream, &r3).await;
    sender.publish(&stream, &m2).await;
    // An event is relayed once it is recorded: once the viewer has them
    // all, they are in the file.
    let mut offsets = Vec::new();
    for event in [&m1, &r1, &o1, &r3, &m2] {
        offsets.push(viewer.expect(event, "the viewer").await);
    }
    assert_eq!(
        offsets,
        [2, 3, 4, 5, 6],
        "offsets go on after the earlier line"
    );

    let events = recorded_events(&path);
    assert_eq!(events[0], (1, earlier.to_owned()));
    let expected: Vec<(u64, String)> = [&m1, &r1, &o1, &r3, &m2]
        .iter()
        .zip(2..)
        .map(|(event, offset)| (offset, event.text.to_string()))
        .collect();
    assert_eq!(events[1..], expected[..]);
    for line in std::fs::read_to_string(&path).unwrap().lines().skip(1) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(value["offset"].is_u64(), "{line}");
        assert!(value["receivedAt"].is_u64(), "{line}");
        assert!(value["event"].is_string(), "{line}");
        assert!(value["data"].is_object(), "{line}");
    }
}

/// A recording that cannot be opened costs the recording only: the stream
/// relays as usual.
#[actix::test]
async fn stream_without_a_writable_recording_still_relays() {
    let dir = TempDir::new("no-recording");
    let (config, _) = recorded_in(&dir.path().join("missing"));
    let stream = StreamActor::new(config).start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut viewer = Peer::join(&stream, None).await;
    let m1 = mv(1);
    sender.publish(&stream, &m1).await;
    viewer.expect(&m1, "the viewer").await;
}

/// A stream started on an existing recording (a restart) rebuilds its last
/// reset, orientation and move from it for new viewers, keeps the reset
/// guard's memory, and cuts a torn last line off so that the recording
/// stays whole JSON lines with new events after it.
#[actix::test]
async fn restart_rebuilds_the_replay_from_the_recording() {
    let dir = TempDir::new("stream-restore");
    let (config, path) = recorded_in(dir.path());
    let recorded = [
        reset(true, 1),
        orientation(2),
        mv(3),
        orientation(4),
        mv(5),
        reset(false, 6),
    ];
    let mut text: String = recorded.iter().map(|e| format!("{}\n", e.text)).collect();
    text.push_str("{\"event\":\"move\",\"da");
    std::fs::write(&path, text).unwrap();

    let stream = StreamActor::new(config).start();
    let mut viewer = Peer::join(&stream, None).await;
    viewer
        .expect_all(
            &[&recorded[5], &recorded[3], &recorded[4]],
            "the replay rebuilt from the recording",
        )
        .await;

    // The guard remembers the last recorded reset: the same one again is dropped.
    let sender = Peer::join(&stream, Some(OWNER)).await;
    sender.publish(&stream, &reset(false, 7)).await;
    sender.publish(&stream, &mv(8)).await;
    let offset = viewer
        .expect(&mv(8), "the repeated reset was dropped")
        .await;
    assert_eq!(offset, 7, "offsets go on from the recording's");

    let events = recorded_events(&path);
    assert_eq!(
        events.len(),
        recorded.len() + 1,
        "the torn line is gone, the new move appended"
    );
    assert_eq!(events.last().unwrap(), &(7, mv(8).text.to_string()));
}

/// Past its quota a recording stops growing, whole lines only; viewers
/// still get every event, and the replay still comes back on a restart
/// without an end (a `kill -9`), from the snapshot kept after each event.
#[actix::test]
async fn a_recording_stops_at_its_quota_and_the_replay_survives() {
    let dir = TempDir::new("recording-quota");
    let (mut config, path) = recorded_in(dir.path());
    config.limits = StreamLimits {
        max_recording_bytes: 1000,
        ..StreamLimits::NONE
    };
    let id = config.id.clone();
    let stream = StreamActor::new(config).start();
    let sender = Peer::join(&stream, Some(OWNER)).await;
    let mut viewer = Peer::join(&stream, None).await;
    let events: Vec<_> = (1..=30).map(mv).collect();
    for event in &events {
        sender.publish(&stream, event).await;
    }
    let all: Vec<_> = events.iter().collect();
    viewer
        .expect_all(&all, "every event, recorded or not")
        .await;

    let bytes = std::fs::metadata(&path).unwrap().len();
    assert!(bytes <= 1000, "{bytes} bytes recorded");
    let kept = recorded_events(&path);
    assert!(
        !kept.is_empty() && kept.len() < events.len(),
        "{} kept",
        kept.len()
    );
    assert_eq!(
        kept,
        events[..kept.len()]
            .iter()
            .zip(1..)
            .map(|(e, offset)| (offset, e.text.to_string()))
            .collect::<Vec<_>>()
    );

    let again = StreamActor::new(StreamSetup {
        id: id.clone(),
        recording: Box::new(local_recording(dir.path(), &id)),
        ..setup()
    })
    .start();
    let mut late = Peer::join(&again, None).await;
    let offset = late.expect(&mv(30), "the last move, past the quota").await;
    assert_eq!(offset, 30, "offsets survive past the quota");
}
