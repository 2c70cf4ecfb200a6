//! Streams that follow a recording other nodes append to as well (cluster
//! mode): each node's stream actor relays what any node records, in offset
//! order and once; a gap in the feed is read back from the recording before
//! the next event goes out; an append another node got in first, or one
//! made while NATS is away, is refused to its sender and never relayed.
//!
//! Two "nodes" here are two stream actors for one stream, each on a
//! connection of its own to one real `nats-server`; the gap tests use a
//! recording whose feed the test controls.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use twizzle_actors::event::{recorded_line, Event};
use twizzle_actors::ids::StreamId;
use twizzle_actors::replay::Snapshot;
use twizzle_actors::store::nats::recording::NatsRecording;
use twizzle_actors::store::nats::Nats;
use twizzle_actors::store::{
    done, Chunk, Cursor, Feed, Followed, Kept, Opened, Recorded, RecordingStore, StoreFuture,
};
use twizzle_actors::stream::{Leave, Outbound, StreamActor, StreamSetup};
use twizzle_actors::testkit::NatsServer;

use crate::support::*;

/// A node's connection to the test's NATS.
async fn node(server: &NatsServer) -> Nats {
    Nats::connect(&server.url())
        .await
        .expect("connects to the test server")
}

/// A stream actor for stream `id` whose recording is in `nats`.
fn shared_stream(nats: &Nats, id: &StreamId) -> Addr<StreamActor> {
    shared_stream_with(nats, id, twizzle_actors::stream::StreamLimits::NONE)
}

/// [`shared_stream`], held to `limits`.
fn shared_stream_with(
    nats: &Nats,
    id: &StreamId,
    limits: twizzle_actors::stream::StreamLimits,
) -> Addr<StreamActor> {
    StreamActor::new(StreamSetup {
        id: id.clone(),
        recording: Box::new(NatsRecording::new(nats.clone(), id)),
        limits,
        ..setup()
    })
    .start()
}

/// The next frames `peer` gets until it has `count` events, each as its
/// text without the offset, keyed by offset; panics on a duplicate offset
/// or one out of order.
async fn events_until(peer: &mut Peer, count: usize, what: &str) -> BTreeMap<u64, String> {
    let mut got = BTreeMap::new();
    let mut last = 0;
    while got.len() < count {
        let frame = peer.next_frame(what).await;
        let (text, offset) = without_offset(&frame);
        let offset = offset.unwrap_or_else(|| panic!("{what}: no offset in {frame}"));
        assert!(offset > last, "{what}: offset {offset} after {last}");
        last = offset;
        got.insert(offset, text);
    }
    got
}

/// Asserts that `got` holds offsets `from..` without a hole and returns
/// the texts in order.
fn consecutive(got: &BTreeMap<u64, String>, from: u64, what: &str) -> Vec<String> {
    let offsets: Vec<u64> = got.keys().copied().collect();
    let expected: Vec<u64> = (from..from + got.len() as u64).collect();
    assert_eq!(offsets, expected, "{what}");
    got.values().cloned().collect()
}

fn texts(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.text.to_string()).collect()
}

#[actix::test]
async fn viewers_on_another_node_get_every_event_in_order_once_as_the_sender_moves() {
    let Some(server) = NatsServer::start("follow-move") else {
        return;
    };
    let (a_nats, b_nats) = (node(&server).await, node(&server).await);
    let id = StreamId::random();
    let a = shared_stream(&a_nats, &id);
    let b = shared_stream(&b_nats, &id);
    let mut on_a = Peer::join(&a, None).await;
    let mut on_b = Peer::join(&b, None).await;

    let sender = Peer::join(&a, Some(OWNER)).await;
    assert!(sender.sender);
    let first: Vec<Event> = (1..=60).map(mv).collect();
    for event in &first {
        sender.publish(&a, event).await;
    }
    let got_a = events_until(&mut on_a, 60, "the viewer on A").await;
    let got_b = events_until(&mut on_b, 60, "the viewer on B").await;
    assert_eq!(consecutive(&got_a, 1, "A's offsets"), texts(&first));
    assert_eq!(consecutive(&got_b, 1, "B's offsets"), texts(&first));

    // The sender goes over to B (its node went away, say) and goes on.
    a.send(Leave { socket: sender.id }).await.unwrap();
    let moved = Peer::join(&b, Some(OWNER)).await;
    let second: Vec<Event> = (61..=120).map(mv).collect();
    for event in &second {
        moved.publish(&b, event).await;
    }
    let got_a = events_until(&mut on_a, 60, "the viewer on A, from B").await;
    let got_b = events_until(&mut on_b, 60, "the viewer on B, from B").await;
    assert_eq!(consecutive(&got_a, 61, "A's offsets"), texts(&second));
    assert_eq!(consecutive(&got_b, 61, "B's offsets"), texts(&second));

    // A late viewer on A has the replay of what B recorded, and a resuming
    // one the events after its offset, read from the recording.
    let mut late = Peer::join(&a, None).await;
    assert_eq!(late.expect(&mv(120), "the late viewer's replay").await, 120);
    let mut resumed = Peer::resume(&a, 100).await;
    let got = events_until(&mut resumed, 20, "the viewer resuming at 100").await;
    assert_eq!(
        consecutive(&got, 101, "resumed offsets"),
        texts(&second[40..])
    );
    on_a.expect_nothing_yet("A's viewer after the last event");
    on_b.expect_nothing_yet("B's viewer after the last event");
}

#[actix::test]
async fn senders_on_two_nodes_at_once_never_share_an_offset_and_both_get_in() {
    let Some(server) = NatsServer::start("follow-race") else {
        return;
    };
    let (a_nats, b_nats) = (node(&server).await, node(&server).await);
    let id = StreamId::random();
    let a = shared_stream(&a_nats, &id);
    let b = shared_stream(&b_nats, &id);
    let mut on_a = Peer::join(&a, None).await;
    let mut on_b = Peer::join(&b, None).await;
    let mut from_a = Peer::join(&a, Some(OWNER)).await;
    let mut from_b = Peer::join(&b, Some(OWNER)).await;

    const EACH: u64 = 40;
    for n in 1..=EACH {
        from_a.publish(&a, &mv(n)).await;
        from_b.publish(&b, &mv(5000 + n)).await;
    }
    // Every event is relayed or refused to its sender, never both: count
    // the refusals each sender hears, and the other node's events it is
    // relayed as any socket is.
    let mut refused = 0;
    let mut relayed_to_senders = 0;
    for (peer, what) in [(&mut from_a, "sender on A"), (&mut from_b, "sender on B")] {
        while let Some(got) = peer.inbox.try_next() {
            match got {
                Outbound::Event(text) if text.contains(r#""event":"error""#) => {
                    assert!(text.contains("storage unavailable"), "{what}: {text}");
                    refused += 1;
                }
                Outbound::Event(_) => relayed_to_senders += 1,
                other => panic!("{what}: {other:?}"),
            }
        }
    }
    // More refusals may still be on their way; the viewers show how many
    // went through, and each event is one or the other.
    let total = 2 * EACH as usize;
    let got_a = events_until(&mut on_a, 1, "the first event on A").await;
    let mut got_a = got_a;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        for (peer, _) in [(&mut from_a, "a"), (&mut from_b, "b")] {
            while let Some(got) = peer.inbox.try_next() {
                if let Outbound::Event(text) = got {
                    if text.contains(r#""event":"error""#) {
                        refused += 1;
                    } else {
                        relayed_to_senders += 1;
                    }
                }
            }
        }
        if got_a.len() + refused >= total {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} relayed and {refused} refused of {total}",
            got_a.len()
        );
        let more = events_until(&mut on_a, 1, "more events on A").await;
        got_a.extend(more);
    }
    assert_eq!(
        got_a.len() + refused,
        total,
        "each event relayed or refused"
    );
    let in_order = consecutive(&got_a, 1, "A's offsets");
    let got_b = events_until(&mut on_b, got_a.len(), "the viewer on B").await;
    assert_eq!(consecutive(&got_b, 1, "B's offsets"), in_order, "one order");
    // Each of B's events raced one of A's for the same offset and lost
    // (A's append went first), then went in after it: both nodes' events
    // are there, and each sender socket was relayed the other's.
    let from_b_in = in_order.iter().filter(|t| t.contains("\"state50")).count();
    assert!(from_b_in > 0 && from_b_in < in_order.len(), "{in_order:?}");
    assert!(relayed_to_senders > 0);

    // The recording holds that order too.
    let reader = NatsRecording::new(node(&server).await, &id);
    let chunk = reader.read(0, Cursor::default(), 1000).await.unwrap();
    let recorded: Vec<String> = chunk.events.iter().map(|e| e.text.to_string()).collect();
    assert_eq!(recorded, in_order);
    let offsets: Vec<u64> = chunk.events.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, (1..=in_order.len() as u64).collect::<Vec<_>>());
}

#[actix::test]
async fn while_nats_is_away_a_senders_events_are_refused_and_nothing_is_relayed() {
    let Some(mut server) = NatsServer::start("follow-down") else {
        return;
    };
    let (a_nats, b_nats) = (node(&server).await, node(&server).await);
    let id = StreamId::random();
    let a = shared_stream(&a_nats, &id);
    let b = shared_stream(&b_nats, &id);
    let mut on_a = Peer::join(&a, None).await;
    let mut on_b = Peer::join(&b, None).await;
    let mut sender = Peer::join(&a, Some(OWNER)).await;
    sender.publish(&a, &mv(1)).await;
    assert_eq!(on_a.expect(&mv(1), "before NATS goes").await, 1);
    assert_eq!(on_b.expect(&mv(1), "before NATS goes, on B").await, 1);

    server.stop();
    sender.publish(&a, &mv(2)).await;
    let refusal = sender.next_frame("the refusal").await;
    let refusal: serde_json::Value = serde_json::from_str(&refusal).unwrap();
    assert_eq!(
        refusal,
        serde_json::json!({"event": "error", "data": {"message": "storage unavailable"}})
    );
    on_a.expect_nothing_yet("A's viewer while NATS is away");

    server.restart();
    // Once both connections are back, the next event goes through to both
    // nodes, at the offset after the last one relayed.
    for nats in [&a_nats, &b_nats] {
        let deadline = std::time::Instant::now() + WAIT * 2;
        while nats.check().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "NATS did not come back"
            );
            actix::clock::sleep(Duration::from_millis(50)).await;
        }
    }
    sender.publish(&a, &mv(3)).await;
    assert_eq!(on_a.expect(&mv(3), "after NATS is back").await, 2);
    assert_eq!(on_b.expect(&mv(3), "after NATS is back, on B").await, 2);
    sender.expect_nothing_yet("the sender, once NATS is back");
}

/// A recording that other "nodes" append to: the test appends events to
/// it, and gives its follower only those it chooses through the feed.
#[derive(Clone, Default)]
struct Scripted {
    recorded: Arc<Mutex<Vec<Recorded>>>,
    feed: Arc<Mutex<Option<Feed>>>,
}

impl Scripted {
    /// The recording, and a post through which the test feeds it.
    fn new() -> (Scripted, Post<Followed>) {
        let (post, inbox) = channel::<Followed>();
        let feed: Feed = Box::pin(futures_util::stream::unfold(inbox, |mut inbox| async {
            let next = inbox.recv().await;
            Some((next, inbox))
        }));
        let scripted = Scripted {
            recorded: Arc::default(),
            feed: Arc::new(Mutex::new(Some(feed))),
        };
        (scripted, post)
    }

    /// Another node appended `event` at `offset`; returns what the feed
    /// would give for it.
    fn record(&self, offset: u64, event: &Event) -> Followed {
        let recorded = Recorded {
            offset,
            received_ms: Some(offset),
            text: event.text.clone(),
            sender: None,
        };
        self.recorded.lock().unwrap().push(recorded.clone());
        Followed::Event {
            bytes: recorded_line(&event.text, offset, offset).len() as u64,
            kind: event.kind,
            recorded,
        }
    }
}

impl RecordingStore for Scripted {
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
    fn read(&self, after: u64, _: Cursor, max: usize) -> StoreFuture<Chunk> {
        let recorded = self.recorded.lock().unwrap();
        let events: Vec<Recorded> = recorded
            .iter()
            .filter(|e| e.offset > after)
            .take(max)
            .cloned()
            .collect();
        let done_reading = recorded.iter().filter(|e| e.offset > after).count() <= max;
        done(Ok(Chunk {
            events,
            next: Cursor::default(),
            done: done_reading,
        }))
    }
    fn follow(&mut self) -> Option<Feed> {
        self.feed.lock().unwrap().take()
    }
}

fn scripted_stream(recording: &Scripted) -> Addr<StreamActor> {
    StreamActor::new(StreamSetup {
        recording: Box::new(recording.clone()),
        ..setup()
    })
    .start()
}

#[actix::test]
async fn a_gap_in_the_feed_is_read_back_before_the_next_event_goes_out() {
    let (recording, feed) = Scripted::new();
    let stream = scripted_stream(&recording);
    let mut viewer = Peer::join(&stream, None).await;
    let events: Vec<Event> = (1..=6).map(mv).collect();
    feed.push(recording.record(1, &events[0]));
    assert_eq!(viewer.expect(&events[0], "the first event").await, 1);
    // 2, 3 and 4 are recorded, but the feed loses them.
    for (n, event) in events.iter().enumerate().take(4).skip(1) {
        let _ = recording.record(n as u64 + 1, event);
    }
    feed.push(recording.record(5, &events[4]));
    for (n, event) in events.iter().enumerate().take(5).skip(1) {
        assert_eq!(
            viewer.expect(event, "the events in order").await,
            n as u64 + 1
        );
    }
    // What the feed gives again after a read is not relayed twice.
    feed.push(recording.record(6, &events[5]));
    feed.push(Followed::Event {
        recorded: Recorded {
            offset: 4,
            received_ms: None,
            text: events[3].text.clone(),
            sender: None,
        },
        kind: events[3].kind,
        bytes: 1,
    });
    assert_eq!(viewer.expect(&events[5], "the sixth").await, 6);
    let mut late = Peer::join(&stream, None).await;
    assert_eq!(late.expect(&events[5], "a late viewer's replay").await, 6);
    viewer.expect_nothing_yet("after the sixth");
}

#[actix::test]
async fn events_lost_off_the_end_of_the_feed_come_with_the_next_check() {
    let (recording, feed) = Scripted::new();
    let stream = scripted_stream(&recording);
    let mut viewer = Peer::join(&stream, None).await;
    let events: Vec<Event> = (1..=3).map(mv).collect();
    feed.push(recording.record(1, &events[0]));
    assert_eq!(viewer.expect(&events[0], "the first event").await, 1);
    // The feed's connection drops the last two, and says it came back.
    let _ = recording.record(2, &events[1]);
    let _ = recording.record(3, &events[2]);
    feed.push(Followed::Check);
    assert_eq!(viewer.expect(&events[1], "the second").await, 2);
    assert_eq!(viewer.expect(&events[2], "the third").await, 3);
    // And without a word from the feed, the interval finds them too.
    let more = mv(4);
    let _ = recording.record(4, &more);
    let found = actix::clock::timeout(
        twizzle_actors::stream::FOLLOW_CHECK_INTERVAL * 2 + Duration::from_secs(1),
        viewer.expect(&more, "the fourth, from the interval"),
    )
    .await
    .expect("the interval reads on from the recording");
    assert_eq!(found, 4);
}

#[actix::test]
async fn events_past_the_quota_still_reach_the_other_nodes() {
    let Some(server) = NatsServer::start("follow-quota") else {
        return;
    };
    let (a_nats, b_nats) = (node(&server).await, node(&server).await);
    let id = StreamId::random();
    let limits = twizzle_actors::stream::StreamLimits {
        // Room for about three recording lines.
        max_recording_bytes: 500,
        ..twizzle_actors::stream::StreamLimits::NONE
    };
    let a = shared_stream_with(&a_nats, &id, limits);
    let b = shared_stream_with(&b_nats, &id, limits);
    let mut on_b = Peer::join(&b, None).await;
    let sender = Peer::join(&a, Some(OWNER)).await;
    let events: Vec<Event> = (1..=12).map(mv).collect();
    for event in &events {
        sender.publish(&a, event).await;
    }
    let got = events_until(&mut on_b, 12, "the viewer on B").await;
    assert_eq!(consecutive(&got, 1, "B's offsets"), texts(&events));
    let reader = NatsRecording::new(node(&server).await, &id);
    let recorded = reader.read(0, Cursor::default(), 100).await.unwrap();
    assert!(
        (1..12).contains(&recorded.events.len()),
        "only the first events are recorded: {}",
        recorded.events.len()
    );
}

#[actix::test]
async fn a_gap_the_recording_cannot_fill_is_told_to_viewers() {
    let (recording, feed) = Scripted::new();
    let stream = scripted_stream(&recording);
    let mut viewer = Peer::join(&stream, None).await;
    feed.push(recording.record(1, &mv(1)));
    assert_eq!(viewer.expect(&mv(1), "the first event").await, 1);
    // 2 and 3 are nowhere (past a quota, lost by the feed); 4 comes.
    let fourth = Followed::Event {
        recorded: Recorded {
            offset: 4,
            received_ms: None,
            text: mv(4).text.clone(),
            sender: None,
        },
        kind: mv(4).kind,
        bytes: 1,
    };
    feed.push(fourth);
    assert_eq!(
        viewer.next_frame("the gap").await,
        r#"{"event":"gap","data":{"from":2,"to":3}}"#
    );
    assert_eq!(viewer.expect(&mv(4), "the fourth").await, 4);
}

#[actix::test]
async fn a_senders_rate_counts_what_they_sent_on_every_node() {
    let Some(server) = NatsServer::start("follow-rate") else {
        return;
    };
    let (a_nats, b_nats) = (node(&server).await, node(&server).await);
    let id = StreamId::random();
    let limits = twizzle_actors::stream::StreamLimits {
        events_per_sec: 1.0,
        event_burst: 10.0,
        ..twizzle_actors::stream::StreamLimits::NONE
    };
    let a = shared_stream_with(&a_nats, &id, limits);
    let b = shared_stream_with(&b_nats, &id, limits);
    let mut on_b = Peer::join(&b, None).await;
    let on_a = Peer::join(&a, Some(OWNER)).await;
    let mut also_on_b = Peer::join(&b, Some(OWNER)).await;
    // The whole burst on A, which B hears of.
    for n in 1..=10 {
        on_a.publish(&a, &mv(n)).await;
    }
    events_until(&mut on_b, 10, "A's burst, on B").await;
    // The same sender on B has nothing left of it.
    for n in 11..=20 {
        also_on_b.publish(&b, &mv(n)).await;
    }
    // It was relayed A's ten, then hears of at least eight refusals (one
    // second of refill at most went by), and nothing of B's was relayed.
    let mut refused = 0;
    let mut relayed = 0;
    while refused < 8 {
        let frame = also_on_b.next_frame("B's refusals").await;
        if frame.contains("rate limit exceeded") {
            refused += 1;
        } else {
            relayed += 1;
        }
    }
    assert_eq!(
        relayed, 10,
        "A's burst, relayed to the sender's socket on B"
    );
    on_b.expect_nothing_yet("the viewer on B after the refusals");
}
