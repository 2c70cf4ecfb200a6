//! The JetStream stores against a real `nats-server`: the same behaviours
//! the local store's tests check, and what only a networked store has (a
//! second writer refused, NATS going away and coming back).

use std::time::{Duration, Instant, SystemTime};

use super::recording::NatsRecording;
use super::streams::NatsStreams;
use super::users::NatsUsers;
use super::*;
use crate::event::{parse_event, recorded_line};
use crate::ids::{DevName, StreamId, UserId};
use crate::replay::Replay;
use crate::secrets::TokenHash;
use crate::store::disk::Disk;
use crate::store::journal::epoch_ms;
use crate::store::recording::LocalRecording;
use crate::store::{
    ClaimRecord, Cursor, Identity, Kept, RecordingStore, StreamChange, StreamRecord, StreamStore,
    UserChange, UserRecord, UserStore,
};
use crate::testkit::{NatsServer, TempDir};

/// How long a test waits for what NATS does in its own time.
const WAIT: Duration = Duration::from_secs(15);

async fn connect(server: &NatsServer) -> Nats {
    Nats::connect(&server.url())
        .await
        .expect("connects to the test server")
}

fn user(identity: Identity, name: &str) -> UserRecord {
    UserRecord {
        id: UserId::random(),
        identity,
        wca_id: None,
        name: name.to_owned(),
        token_hashes: vec![TokenHash::of(&format!("token of {name}"))],
        sealed_token: None,
    }
}

fn dev(name: &str) -> Identity {
    Identity::Dev {
        dev_name: DevName::parse(name).unwrap(),
    }
}

fn claim(user: &UserRecord, ttl: Duration) -> ClaimRecord {
    ClaimRecord {
        hash: TokenHash::of(&format!("claim {}", UserId::random())),
        user_id: user.id.clone(),
        expires_ms: epoch_ms(SystemTime::now()) + ttl.as_millis() as u64,
    }
}

fn sorted(mut users: Vec<UserRecord>) -> Vec<UserRecord> {
    users.sort_by(|a, b| a.name.cmp(&b.name));
    users
}

#[actix::test]
async fn users_and_claims_round_trip_through_a_new_connection() {
    let Some(server) = NatsServer::start("users") else {
        return;
    };
    let mut users = NatsUsers::new(connect(&server).await);
    assert!(users.load().await.unwrap().users.is_empty());
    let ana = user(Identity::Wca { wca_account: 42 }, "Ana");
    let zoe = user(dev("Zoë Ünal"), "Zoë Ünal");
    let ana_claim = claim(&ana, Duration::from_secs(600));
    users
        .apply(vec![
            UserChange::PutUser(ana.clone()),
            UserChange::PutClaim(ana_claim.clone()),
        ])
        .await
        .unwrap();
    users
        .apply(vec![UserChange::PutUser(zoe.clone())])
        .await
        .unwrap();
    // A change to a user is kept over the earlier version.
    let mut renamed = ana.clone();
    renamed.name = "Ana B".to_owned();
    renamed.token_hashes.push(TokenHash::of("second token"));
    users
        .apply(vec![UserChange::PutUser(renamed.clone())])
        .await
        .unwrap();

    let mut again = NatsUsers::new(connect(&server).await);
    let state = again.load().await.unwrap();
    assert_eq!(sorted(state.users), vec![renamed.clone(), zoe.clone()]);
    assert_eq!(state.claims, vec![ana_claim.clone()]);

    // Redeemed on the new connection: gone for everyone, and it cannot be
    // redeemed twice.
    again
        .apply(vec![UserChange::RemoveClaim(ana_claim.hash.clone())])
        .await
        .unwrap();
    let mut third = NatsUsers::new(connect(&server).await);
    assert!(third.load().await.unwrap().claims.is_empty());
    assert_eq!(
        users
            .apply(vec![UserChange::RemoveClaim(ana_claim.hash.clone())])
            .await,
        Err(StoreError::Failed(
            "the claim token was redeemed elsewhere".to_owned()
        ))
    );
}

#[actix::test]
async fn a_sign_in_cannot_create_a_user_twice_nor_overwrite_a_change_unseen() {
    let Some(server) = NatsServer::start("users-cas") else {
        return;
    };
    let mut one = NatsUsers::new(connect(&server).await);
    let mut two = NatsUsers::new(connect(&server).await);
    one.load().await.unwrap();
    two.load().await.unwrap();
    let ana = user(Identity::Wca { wca_account: 7 }, "Ana");
    one.apply(vec![UserChange::PutUser(ana.clone())])
        .await
        .unwrap();
    // Another node signing the same WCA account in as a new user is refused.
    let twin = user(Identity::Wca { wca_account: 7 }, "Ana");
    let refused = two.apply(vec![UserChange::PutUser(twin)]).await;
    assert!(
        matches!(&refused, Err(StoreError::Failed(why)) if why.contains("WCA account 7")),
        "{refused:?}"
    );
    // So is a development name taken already, and the same user again is fine.
    let bo = user(dev("Bo"), "Bo");
    one.apply(vec![UserChange::PutUser(bo.clone())])
        .await
        .unwrap();
    let refused = two
        .apply(vec![UserChange::PutUser(user(dev("Bo"), "Bo"))])
        .await;
    assert!(matches!(refused, Err(StoreError::Failed(_))), "{refused:?}");
    // A node that has not seen the latest change to a user cannot write over it.
    let mut two_fresh = NatsUsers::new(connect(&server).await);
    two_fresh.load().await.unwrap();
    let mut newer = ana.clone();
    newer.name = "Ana (newer)".to_owned();
    one.apply(vec![UserChange::PutUser(newer.clone())])
        .await
        .unwrap();
    let mut stale = ana.clone();
    stale.name = "Ana (stale)".to_owned();
    let refused = two_fresh.apply(vec![UserChange::PutUser(stale)]).await;
    assert!(
        matches!(&refused, Err(StoreError::Failed(why)) if why.contains("changed elsewhere")),
        "{refused:?}"
    );
    let mut reader = NatsUsers::new(connect(&server).await);
    let names: Vec<String> = sorted(reader.load().await.unwrap().users)
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["Ana (newer)", "Bo"]);
}

#[actix::test]
async fn claim_tokens_leave_jetstream_when_they_expire() {
    let Some(server) = NatsServer::start("claims-ttl") else {
        return;
    };
    let nats = connect(&server).await;
    let mut users = NatsUsers::new(nats.clone());
    let ana = user(Identity::Wca { wca_account: 1 }, "Ana");
    let short = claim(&ana, Duration::from_secs(1));
    let long = claim(&ana, Duration::from_secs(600));
    users
        .apply(vec![
            UserChange::PutUser(ana),
            UserChange::PutClaim(short.clone()),
            UserChange::PutClaim(long.clone()),
        ])
        .await
        .unwrap();
    assert!(nats
        .claims
        .get(short.hash.as_str())
        .await
        .unwrap()
        .is_some());
    let deadline = Instant::now() + WAIT;
    while nats
        .claims
        .get(short.hash.as_str())
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the claim token was still kept {WAIT:?} after it expired"
        );
        actix::clock::sleep(Duration::from_millis(100)).await; // polling for JetStream's expiry
    }
    let state = NatsUsers::new(connect(&server).await).load().await.unwrap();
    assert_eq!(state.claims, vec![long]);
}

fn record(owner: &UserId) -> StreamRecord {
    let now = epoch_ms(SystemTime::now());
    StreamRecord {
        id: StreamId::random(),
        senders: vec![owner.clone()],
        created_ms: now,
        idle_since_ms: Some(now),
    }
}

#[actix::test]
async fn streams_come_back_open_idle_or_live_and_ended_ones_are_listed() {
    let Some(server) = NatsServer::start("streams") else {
        return;
    };
    let owner = UserId::random();
    let mut streams = NatsStreams::new(connect(&server).await);
    assert!(streams.load().await.unwrap().is_empty());
    let (a, b, c) = (record(&owner), record(&owner), record(&owner));
    for r in [&a, &b, &c] {
        streams
            .record(StreamChange::Created(r.clone()))
            .await
            .unwrap();
    }
    // Trailing changes, not awaited one by one: kept in the order made.
    let live = streams.record(StreamChange::Live(a.id.clone()));
    let idle = streams.record(StreamChange::Idle {
        id: a.id.clone(),
        since_ms: 1234,
    });
    let live_b = streams.record(StreamChange::Live(b.id.clone()));
    let ended = streams.record(StreamChange::Ended(c.id.clone()));
    streams.sync().await.unwrap();
    for write in [live, idle, live_b, ended] {
        write.await.unwrap();
    }
    assert_eq!(streams.ended_senders(&c.id), Some(vec![owner.clone()]));
    assert_eq!(streams.ended_senders(&a.id), None);

    let mut again = NatsStreams::new(connect(&server).await);
    let loaded = again.load().await.unwrap();
    let expect_a = StreamRecord {
        idle_since_ms: Some(1234),
        ..a.clone()
    };
    let expect_b = StreamRecord {
        idle_since_ms: None,
        ..b.clone()
    };
    let mut expected = vec![expect_a, expect_b];
    expected.sort_by(|x, y| (x.created_ms, &x.id).cmp(&(y.created_ms, &y.id)));
    assert_eq!(loaded, expected);
    assert_eq!(again.ended_senders(&c.id), Some(vec![owner.clone()]));
    let listed = again.ended_recordings().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, c.id);
    assert_eq!(listed[0].senders, vec![owner.clone()]);

    // A second creation of the same ID is refused.
    assert!(matches!(
        again.record(StreamChange::Created(a.clone())).await,
        Err(StoreError::Failed(_))
    ));
    // The sweep deletes what ended longer ago than it keeps, and only that.
    assert_eq!(
        again
            .sweep_recordings(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(again.sweep_recordings(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(again.ended_senders(&c.id), None);
    let mut third = NatsStreams::new(connect(&server).await);
    assert_eq!(third.load().await.unwrap().len(), 2);
    assert!(third.ended_recordings().await.unwrap().is_empty());
}

fn mv(n: u64) -> String {
    format!(r#"{{"event":"move","data":{{"latestMove":"R","timeStamp":{n},"binaryState":"s"}}}}"#)
}

fn reset(tracking: bool) -> String {
    format!(r#"{{"event":"reset","data":{{"trackingOrientation":{tracking}}}}}"#)
}

/// The events `frames`, accepted into `replay` and as recording lines.
fn accept(replay: &mut Replay, frames: &[String]) -> Vec<u8> {
    let mut lines = String::new();
    for frame in frames {
        let event = parse_event(frame).unwrap();
        replay.accept(&event).expect("accepted");
        lines += &recorded_line(&event.text, replay.accepted(), 1_000 + replay.accepted());
    }
    lines.into_bytes()
}

/// What a stream would do to both stores: append, checkpoint, append,
/// clear, append.
async fn record_a_session(recording: &mut dyn RecordingStore) -> Replay {
    assert_eq!(recording.open().await.unwrap(), Default::default());
    let mut replay = Replay::default();
    let mut kept = Kept::default();
    let lines = accept(&mut replay, &[mv(1), reset(true), mv(2)]);
    recording.append(lines).await.unwrap();
    (1..=3).for_each(|o| kept.extend(o));
    recording
        .checkpoint(&replay.snapshot(), kept)
        .await
        .unwrap();
    let lines = accept(&mut replay, &[mv(3), reset(false)]);
    recording.append(lines).await.unwrap();
    (4..=5).for_each(|o| kept.extend(o));
    recording
        .checkpoint(&replay.snapshot(), kept)
        .await
        .unwrap();
    let lines = accept(&mut replay, &[mv(4)]);
    recording.append(lines).await.unwrap();
    recording.sync().await.unwrap();
    replay
}

#[actix::test]
async fn a_recording_restores_to_what_the_local_store_restores() {
    let Some(server) = NatsServer::start("recording") else {
        return;
    };
    let dir = TempDir::new("nats-vs-local");
    let id = StreamId::random();
    let nats = connect(&server).await;
    let mut local = LocalRecording::new(dir.path(), &id, Disk::new(1), Disk::new(1));
    let mut remote = NatsRecording::new(nats.clone(), &id);
    let replay = record_a_session(&mut local).await;
    assert_eq!(record_a_session(&mut remote).await, replay);
    assert_eq!(remote.recorded_bytes(), local.recorded_bytes());

    let from_local = LocalRecording::new(dir.path(), &id, Disk::new(1), Disk::new(1))
        .open()
        .await
        .unwrap();
    let from_nats = NatsRecording::new(connect(&server).await, &id)
        .open()
        .await
        .unwrap();
    assert_eq!(from_nats, from_local);
    assert_eq!(from_nats.replay.accepted(), 6);
    assert_eq!(
        from_nats.kept,
        Kept {
            from: 1,
            to: 6,
            events: 6
        }
    );
}

#[actix::test]
async fn reads_go_from_any_offset_in_chunks() {
    let Some(server) = NatsServer::start("recording-read") else {
        return;
    };
    let nats = connect(&server).await;
    let id = StreamId::random();
    let other = StreamId::random();
    let mut recording = NatsRecording::new(nats.clone(), &id);
    let mut noise = NatsRecording::new(nats.clone(), &other);
    recording.open().await.unwrap();
    noise.open().await.unwrap();
    let mut replay = Replay::default();
    let mut noise_replay = Replay::default();
    // Interleaved with another stream's, so the subject's sequences have holes.
    for n in 0..30u64 {
        let frames: Vec<String> = (0..10).map(|i| mv(n * 10 + i + 1)).collect();
        recording
            .append(accept(&mut replay, &frames))
            .await
            .unwrap();
        noise
            .append(accept(&mut noise_replay, &frames[..(n % 3) as usize]))
            .await
            .unwrap();
    }
    for after in [0, 1, 150, 298, 299, 300, 7_000] {
        let chunk = recording.read(after, Cursor::default(), 2).await.unwrap();
        let want: Vec<u64> = (after + 1..=300).take(2).collect();
        let got: Vec<u64> = chunk.events.iter().map(|e| e.offset).collect();
        assert_eq!(got, want, "after {after}");
    }
    let mut cursor = Cursor::default();
    let mut seen = Vec::new();
    loop {
        let chunk = recording.read(200, cursor, 37).await.unwrap();
        seen.extend(chunk.events.iter().map(|e| e.offset));
        cursor = chunk.next;
        if chunk.done {
            break;
        }
    }
    assert_eq!(seen, (201..=300).collect::<Vec<_>>());
    let first = recording.read(0, Cursor::default(), 1).await.unwrap();
    assert_eq!(first.events[0].received_ms, Some(1_001));
    assert_eq!(first.events[0].text, parse_event(&mv(1)).unwrap().text);
    // Through the streams' store, as a download reads it.
    let mut streams = NatsStreams::new(nats.clone());
    streams.load().await.unwrap();
    assert_eq!(
        streams
            .read_recording(&id, 0, Cursor::default(), 10)
            .await
            .unwrap(),
        None,
        "a stream this store does not know has no recording to read"
    );
}

#[actix::test]
async fn a_cleared_recording_goes_on_at_the_next_offset() {
    let Some(server) = NatsServer::start("recording-clear") else {
        return;
    };
    let nats = connect(&server).await;
    let id = StreamId::random();
    let mut recording = NatsRecording::new(nats.clone(), &id);
    recording.open().await.unwrap();
    let mut replay = Replay::default();
    recording
        .append(accept(&mut replay, &[mv(1), mv(2), mv(3)]))
        .await
        .unwrap();
    recording
        .clear(&replay.snapshot(), Kept::from_next(4))
        .await
        .unwrap();
    assert_eq!(recording.recorded_bytes(), 0);
    recording
        .append(accept(&mut replay, &[mv(4)]))
        .await
        .unwrap();
    let opened = NatsRecording::new(connect(&server).await, &id)
        .open()
        .await
        .unwrap();
    assert_eq!(opened.replay.accepted(), 4);
    assert_eq!(
        opened.kept,
        Kept {
            from: 4,
            to: 4,
            events: 1
        }
    );
    let chunk = recording.read(0, Cursor::default(), 10).await.unwrap();
    let offsets: Vec<u64> = chunk.events.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [4]);
}

#[actix::test]
async fn a_second_writer_of_a_recording_is_refused() {
    let Some(server) = NatsServer::start("recording-writers") else {
        return;
    };
    let id = StreamId::random();
    let mut first = NatsRecording::new(connect(&server).await, &id);
    let mut second = NatsRecording::new(connect(&server).await, &id);
    first.open().await.unwrap();
    second.open().await.unwrap();
    let (mut a, mut b) = (Replay::default(), Replay::default());
    first.append(accept(&mut a, &[mv(1)])).await.unwrap();
    let refused = second.append(accept(&mut b, &[mv(1)])).await;
    let first_there = |refused: &Result<(), StoreError>| matches!(refused, Err(StoreError::Conflict(why)) if why.contains("appended to its recording first"));
    assert!(first_there(&refused), "{refused:?}");
    first.append(accept(&mut a, &[mv(2)])).await.unwrap();
    // Offset 2 is taken too; the second writer's 3, after it, goes in once
    // it has read that far (its own sequence of the end is out of date).
    let refused = second.append(accept(&mut b, &[mv(2)])).await;
    assert!(first_there(&refused), "{refused:?}");
    second.append(accept(&mut b, &[mv(3)])).await.unwrap();
    let chunk = first.read(0, Cursor::default(), 10).await.unwrap();
    let offsets: Vec<u64> = chunk.events.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [1, 2, 3], "one event per offset, in order");
    assert!(
        chunk.events[0].text.contains("\"timeStamp\":1}"),
        "the first writer's first"
    );
    assert!(
        chunk.events[2].text.contains("\"timeStamp\":3}"),
        "the second writer's"
    );
}

#[actix::test]
async fn nats_going_away_is_unavailable_until_it_is_back() {
    let Some(mut server) = NatsServer::start("away") else {
        return;
    };
    let nats = connect(&server).await;
    let mut users = NatsUsers::new(nats.clone());
    let mut streams = NatsStreams::new(nats.clone());
    users.load().await.unwrap();
    streams.load().await.unwrap();
    assert_eq!(users.check_writable().await, Ok(()));
    server.stop();
    let deadline = Instant::now() + WAIT;
    loop {
        match streams.check_writable().await {
            Err(StoreError::Unavailable(_)) => break,
            other => assert!(
                Instant::now() < deadline,
                "still {other:?} after NATS stopped"
            ),
        }
        actix::clock::sleep(Duration::from_millis(50)).await; // polling for the client to notice
    }
    let asked = Instant::now();
    let owner = UserId::random();
    let refused = streams.record(StreamChange::Created(record(&owner))).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    let refused = users
        .apply(vec![UserChange::PutUser(user(dev("Cy"), "Cy"))])
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "refused at once, not after a timeout"
    );

    server.restart();
    let deadline = Instant::now() + WAIT;
    while streams.check_writable().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "not writable {WAIT:?} after NATS came back"
        );
        actix::clock::sleep(Duration::from_millis(50)).await; // polling for the reconnect
    }
    streams
        .record(StreamChange::Created(record(&owner)))
        .await
        .unwrap();
    assert_eq!(users.check_writable().await, Ok(()));
}

#[test]
fn urls_are_logged_without_their_password() {
    assert_eq!(
        redacted_url("nats://user:secret@10.0.0.1:4222"),
        "nats://10.0.0.1:4222"
    );
    assert_eq!(redacted_url("127.0.0.1:4222"), "127.0.0.1:4222");
    assert_eq!(
        redacted_url("tls://a@b@host:1"),
        "tls://host:1",
        "the password may hold an @"
    );
}

#[test]
fn server_versions_compare_by_major_and_minor() {
    assert_eq!(version("2.15.1"), Some((2, 15)));
    assert_eq!(version("v2.9.10"), Some((2, 9)));
    assert!(version("2.9.10").unwrap() < MIN_SERVER);
    assert!(version("2.11.0").unwrap() >= MIN_SERVER);
    assert_eq!(version("nonsense"), None);
}

// Cluster mode: records and limits shared by nodes on one NATS, each
// node's store on a connection of its own.

#[actix::test]
async fn two_nodes_creating_at_once_take_a_users_last_slot_once() {
    let Some(server) = NatsServer::start("cluster-limit") else {
        return;
    };
    let mut a = NatsStreams::new(connect(&server).await);
    let mut b = NatsStreams::new(connect(&server).await);
    let owner = UserId::random();
    let first = record(&owner);
    assert!(a.create(first.clone(), 2).await.unwrap());
    let (on_a, on_b) =
        futures_util::future::join(a.create(record(&owner), 2), b.create(record(&owner), 2)).await;
    let created = [on_a.unwrap(), on_b.unwrap()];
    assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
    assert!(!b.create(record(&owner), 2).await.unwrap(), "at the limit");
    // Another user is not counted with them.
    assert!(b.create(record(&UserId::random()), 2).await.unwrap());
    // An ended stream frees its slot, on whichever node.
    assert!(a.end_idle(&first.id, Duration::ZERO).await.unwrap());
    assert!(b.create(record(&owner), 2).await.unwrap());
    assert!(!a.create(record(&owner), 2).await.unwrap());
}

#[actix::test]
async fn exactly_one_node_ends_an_idle_stream_and_a_live_one_is_not_ended() {
    let Some(server) = NatsServer::start("cluster-end") else {
        return;
    };
    let mut a = NatsStreams::new(connect(&server).await);
    let mut b = NatsStreams::new(connect(&server).await);
    let mut stream = record(&UserId::random());
    stream.idle_since_ms = None;
    assert!(a.create(stream.clone(), 10).await.unwrap());
    // Found from the other node at once, open and live.
    let found = b.find(&stream.id).expect("a shared store").await.unwrap();
    assert_eq!(found, Some(stream.clone()));
    assert!(
        !b.end_idle(&stream.id, Duration::ZERO).await.unwrap(),
        "live"
    );
    // The first node to mark it idle sets since when; a later mark keeps it.
    b.mark_idle(&stream.id, 1_000).await.unwrap();
    a.mark_idle(&stream.id, 2_000).await.unwrap();
    let found = a.find(&stream.id).unwrap().await.unwrap().unwrap();
    assert_eq!(found.idle_since_ms, Some(1_000));
    assert!(!a
        .end_idle(&stream.id, Duration::from_secs(3600 * 24 * 365 * 100))
        .await
        .unwrap());
    let (x, y) = futures_util::future::join(
        a.end_idle(&stream.id, Duration::ZERO),
        b.end_idle(&stream.id, Duration::ZERO),
    )
    .await;
    let ended = [x.unwrap(), y.unwrap()];
    assert_eq!(ended.iter().filter(|e| **e).count(), 1, "{ended:?}");
    assert_eq!(b.find(&stream.id).unwrap().await.unwrap(), None, "ended");
    assert!(!a.end_idle(&stream.id, Duration::ZERO).await.unwrap());
}

/// Tells a test what a store's cluster feed says.
struct Listener(tokio::sync::mpsc::UnboundedSender<crate::store::ClusterNews>);

impl actix::Actor for Listener {
    type Context = actix::Context<Self>;
}

impl actix::Handler<crate::store::ClusterNews> for Listener {
    type Result = ();

    fn handle(&mut self, msg: crate::store::ClusterNews, _: &mut Self::Context) {
        let _ = self.0.send(msg);
    }
}

/// The next piece of news that `pick` takes, within [`WAIT`].
async fn news_until<T>(
    news: &mut tokio::sync::mpsc::UnboundedReceiver<crate::store::ClusterNews>,
    mut pick: impl FnMut(crate::store::ClusterNews) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = actix::clock::timeout(left, news.recv())
            .await
            .unwrap_or_else(|_| panic!("no such news within {WAIT:?}"))
            .expect("the listener runs");
        if let Some(found) = pick(item) {
            return found;
        }
    }
}

#[actix::test]
async fn nodes_hear_of_each_others_streams_and_leases_and_a_clean_stop_withdraws_one() {
    use crate::store::{ClusterNews, ClusterNode, SocketCounts};
    use actix::Actor;
    let Some(server) = NatsServer::start("cluster-follow") else {
        return;
    };
    let lease = Duration::from_secs(3);
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let listener = Listener(tx).start();
    let mut a = NatsStreams::new(connect(&server).await);
    let mut b = NatsStreams::new(connect(&server).await);
    let (quiet, _unheard) = tokio::sync::mpsc::unbounded_channel();
    assert!(a.follow(ClusterNode {
        node: "node_a".to_owned(),
        lease,
        news: Listener(quiet).start().recipient(),
    }));
    assert!(b.follow(ClusterNode {
        node: "node_b".to_owned(),
        lease,
        news: listener.recipient(),
    }));
    news_until(&mut heard, |n| {
        (n == ClusterNews::PresenceLoaded).then_some(())
    })
    .await;
    let stream = record(&UserId::random());
    assert!(a.create(stream.clone(), 10).await.unwrap());
    let told = news_until(&mut heard, |n| match n {
        ClusterNews::Stream { record, ended } if record.id == stream.id => Some(ended),
        _ => None,
    })
    .await;
    assert!(!told, "open");
    let counts = SocketCounts {
        senders: 1,
        viewers: 2,
    };
    a.publish_presence(vec![(stream.id.clone(), counts)]);
    news_until(&mut heard, |n| match n {
        ClusterNews::Presence { node, streams, age } if node == "node_a" => {
            assert!(age < lease);
            (streams == vec![(stream.id.clone(), counts)]).then_some(())
        }
        _ => None,
    })
    .await;
    // Its own lease is not told to a node.
    while let Ok(news) = heard.try_recv() {
        assert!(
            !matches!(&news, ClusterNews::Presence { node, .. } if node == "node_b"),
            "{news:?}"
        );
    }
    assert!(a.end_idle(&stream.id, Duration::ZERO).await.unwrap());
    news_until(&mut heard, |n| match n {
        ClusterNews::Stream { record, ended } if record.id == stream.id => ended.then_some(()),
        _ => None,
    })
    .await;
    a.withdraw_presence().await.unwrap();
    news_until(&mut heard, |n| match n {
        ClusterNews::NodeGone { node } => (node == "node_a").then_some(()),
        _ => None,
    })
    .await;
}

/// Users cluster-wide: token actors (or stores) on one NATS, each as one
/// node's, see each other's users, tokens and claims at once.
mod cluster_users {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use actix::prelude::*;
    use futures_util::future::join;
    use tokio::sync::mpsc;

    use super::*;
    use crate::ids::{AccessToken, ClaimToken};
    use crate::store::{Applied, StoreFuture, UserFeed, UserNews, UserState};
    use crate::tokens::{
        Authenticate, AuthenticatedUser, Claimed, DevSignIn, RedeemClaim, SignIn, TokenActor,
        TokenError, UserUpdated, WatchUsers, WcaProfile,
    };

    const CLAIM_TTL: Duration = Duration::from_secs(600);

    /// A node's token actor on `server`, with a connection of its own.
    async fn node(server: &NatsServer) -> Addr<TokenActor> {
        let users = NatsUsers::new(connect(server).await);
        TokenActor::new(Box::new(users), CLAIM_TTL).start()
    }

    /// The users in NATS, without the feed: what another node changes is
    /// seen only by asking (the lookups), and lookups are counted.
    struct Unfollowed {
        inner: NatsUsers,
        token_lookups: Arc<AtomicUsize>,
    }

    impl UserStore for Unfollowed {
        fn load(&mut self) -> StoreFuture<UserState> {
            self.inner.load()
        }
        fn apply(&mut self, changes: Vec<UserChange>) -> StoreFuture<()> {
            self.inner.apply(changes)
        }
        fn check_writable(&mut self) -> StoreFuture<()> {
            self.inner.check_writable()
        }
        fn shared(&self) -> bool {
            true
        }
        fn try_apply(&mut self, changes: Vec<UserChange>) -> StoreFuture<Applied> {
            self.inner.try_apply(changes)
        }
        fn follow(&mut self) -> Option<UserFeed> {
            None
        }
        fn find_user(&mut self, id: &UserId) -> StoreFuture<Option<UserRecord>> {
            self.inner.find_user(id)
        }
        fn find_token(&mut self, hash: &TokenHash) -> StoreFuture<Option<UserRecord>> {
            self.token_lookups.fetch_add(1, Ordering::Relaxed);
            self.inner.find_token(hash)
        }
        fn find_claim(&mut self, hash: &TokenHash) -> StoreFuture<Option<ClaimRecord>> {
            self.inner.find_claim(hash)
        }
    }

    /// A node that never hears of other nodes' changes but by asking; and
    /// how many access-token lookups it made.
    async fn deaf_node(server: &NatsServer) -> (Addr<TokenActor>, Arc<AtomicUsize>) {
        let token_lookups = Arc::new(AtomicUsize::new(0));
        let users = Unfollowed {
            inner: NatsUsers::new(connect(server).await),
            token_lookups: Arc::clone(&token_lookups),
        };
        let actor = TokenActor::new(Box::new(users), CLAIM_TTL).start();
        (actor, token_lookups)
    }

    async fn dev_sign_in(node: &Addr<TokenActor>, name: &str) -> ClaimToken {
        node.send(DevSignIn {
            name: DevName::parse(name).unwrap(),
        })
        .await
        .unwrap()
        .expect("signed in")
    }

    fn profile(account: u64, name: &str) -> WcaProfile {
        WcaProfile {
            account_id: account,
            wca_id: Some("2020CLUS01".to_owned()),
            name: name.to_owned(),
        }
    }

    async fn sign_in(node: &Addr<TokenActor>, account: u64, name: &str) -> ClaimToken {
        node.send(SignIn {
            profile: profile(account, name),
        })
        .await
        .unwrap()
        .expect("signed in")
    }

    async fn redeem(node: &Addr<TokenActor>, claim: &ClaimToken) -> Result<Claimed, TokenError> {
        node.send(RedeemClaim {
            claim_token: claim.clone(),
        })
        .await
        .unwrap()
    }

    async fn authenticate(
        node: &Addr<TokenActor>,
        token: &AccessToken,
    ) -> Result<AuthenticatedUser, TokenError> {
        node.send(Authenticate {
            access_token: token.clone(),
        })
        .await
        .unwrap()
    }

    /// Hands every [`UserUpdated`] it is told over to the test.
    struct Told(mpsc::UnboundedSender<UserUpdated>);

    impl Actor for Told {
        type Context = Context<Self>;
    }

    impl Handler<UserUpdated> for Told {
        type Result = ();

        fn handle(&mut self, msg: UserUpdated, _: &mut Self::Context) {
            let _ = self.0.send(msg);
        }
    }

    async fn watch(node: &Addr<TokenActor>) -> mpsc::UnboundedReceiver<UserUpdated> {
        let (tx, rx) = mpsc::unbounded_channel();
        let told = Told(tx).start();
        node.send(WatchUsers {
            watcher: told.recipient(),
        })
        .await
        .unwrap();
        rx
    }

    /// Waits for the update that shows `name`, skipping others.
    async fn told_of(rx: &mut mpsc::UnboundedReceiver<UserUpdated>, name: &str) -> UserUpdated {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let update = actix::clock::timeout(left, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("not told of {name:?} within {WAIT:?}"))
                .expect("the watcher is there");
            if update.info.name == name {
                return update;
            }
        }
    }

    #[actix::test]
    async fn a_sign_in_on_one_node_is_claimed_on_another_and_works_on_a_third() {
        let Some(server) = NatsServer::start("cluster-claim") else {
            return;
        };
        let (a, b, c) = (
            node(&server).await,
            node(&server).await,
            node(&server).await,
        );
        let claim = dev_sign_in(&a, "Ana").await;
        let claimed = redeem(&b, &claim).await.expect("claimed on another node");
        assert_eq!(claimed.user.name, "Ana (unverified)");
        for node in [&c, &a, &b] {
            let user = authenticate(node, &claimed.access_token).await.unwrap();
            assert_eq!(user.info, claimed.user);
        }
        // Once redeemed, on any node, never again.
        for node in [&a, &b, &c] {
            assert_eq!(
                redeem(node, &claim).await,
                Err(TokenError::InvalidClaimToken)
            );
        }
    }

    /// No window: a node that has not heard of the new user, claim or
    /// token yet finds each in NATS before it refuses it.
    #[actix::test]
    async fn what_a_node_has_not_heard_of_yet_is_looked_up_before_it_is_refused() {
        let Some(server) = NatsServer::start("cluster-lookup") else {
            return;
        };
        let a = node(&server).await;
        let (b, lookups) = deaf_node(&server).await;
        let (c, _) = deaf_node(&server).await;
        let claim = dev_sign_in(&a, "Bo").await;
        let claimed = redeem(&b, &claim).await.expect("claimed where unheard of");
        let user = authenticate(&c, &claimed.access_token).await.unwrap();
        assert_eq!(user.info, claimed.user);
        // A token made up is refused, and asked for once however often it comes.
        let made_up = AccessToken::random();
        let before = lookups.load(Ordering::Relaxed);
        for _ in 0..20 {
            assert_eq!(
                authenticate(&b, &made_up).await,
                Err(TokenError::InvalidAccessToken)
            );
        }
        assert_eq!(
            lookups.load(Ordering::Relaxed),
            before + 1,
            "one lookup for a token sent 20 times"
        );
        // A token known there is answered without asking.
        authenticate(&b, &claimed.access_token).await.unwrap();
        assert_eq!(lookups.load(Ordering::Relaxed), before + 1);
        // A node that signs in a user another node made, unheard of, finds
        // them rather than failing: one user, both tokens good everywhere.
        let again = dev_sign_in(&c, "Bo").await;
        let claimed_again = redeem(&c, &again).await.unwrap();
        assert_eq!(claimed_again.user, claimed.user);
        for node in [&a, &b, &c] {
            for token in [&claimed.access_token, &claimed_again.access_token] {
                assert_eq!(authenticate(node, token).await.unwrap().info, claimed.user);
            }
        }
    }

    #[actix::test]
    async fn one_account_signing_in_on_two_nodes_at_once_is_one_user() {
        let Some(server) = NatsServer::start("cluster-race") else {
            return;
        };
        let (a, b) = (node(&server).await, node(&server).await);
        for account in 100..106 {
            let (on_a, on_b) = join(sign_in(&a, account, "Cy"), sign_in(&b, account, "Cy")).await;
            // Each redeemed on the other node, at once too.
            let (from_a, from_b) = join(redeem(&b, &on_a), redeem(&a, &on_b)).await;
            let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
            assert_eq!(from_a.user, from_b.user, "one user for account {account}");
            for node in [&a, &b] {
                for token in [&from_a.access_token, &from_b.access_token] {
                    assert_eq!(authenticate(node, token).await.unwrap().info, from_a.user);
                }
            }
        }
        // The same for development names, on deaf nodes (nothing but NATS
        // to go by).
        let (c, _) = deaf_node(&server).await;
        let (d, _) = deaf_node(&server).await;
        for n in 0..6 {
            let name = format!("Dee {n}");
            let (on_c, on_d) = join(dev_sign_in(&c, &name), dev_sign_in(&d, &name)).await;
            let (from_c, from_d) = join(redeem(&d, &on_c), redeem(&c, &on_d)).await;
            let (from_c, from_d) = (from_c.unwrap(), from_d.unwrap());
            assert_eq!(from_c.user, from_d.user, "one user for {name}");
            for node in [&c, &d, &a] {
                for token in [&from_c.access_token, &from_d.access_token] {
                    assert_eq!(authenticate(node, token).await.unwrap().info, from_c.user);
                }
            }
        }
        let users = NatsUsers::new(connect(&server).await).load().await.unwrap();
        assert_eq!(users.users.len(), 12, "{:?}", users.users);
    }

    #[actix::test]
    async fn a_claim_redeemed_on_two_nodes_at_once_works_once() {
        let Some(server) = NatsServer::start("cluster-claim-race") else {
            return;
        };
        let (a, b) = (node(&server).await, node(&server).await);
        let (c, _) = deaf_node(&server).await;
        for n in 0..6 {
            let claim = dev_sign_in(&a, &format!("Eve {n}")).await;
            // One node that heard of it, one that must look it up.
            let (on_b, on_c) = join(redeem(&b, &claim), redeem(&c, &claim)).await;
            let won: Vec<_> = [&on_b, &on_c].into_iter().filter(|r| r.is_ok()).collect();
            assert_eq!(won.len(), 1, "{on_b:?} {on_c:?}");
            for lost in [&on_b, &on_c].into_iter().filter(|r| r.is_err()) {
                assert_eq!(lost, &Err(TokenError::InvalidClaimToken));
            }
        }
    }

    /// A name refreshed at a sign-in on another node is told to this
    /// node's watchers, as a local one is, and so is a user new here.
    #[actix::test]
    async fn users_changed_on_another_node_are_told_to_the_watchers() {
        let Some(server) = NatsServer::start("cluster-updated") else {
            return;
        };
        let (a, b) = (node(&server).await, node(&server).await);
        let mut told = watch(&b).await;
        let claim = sign_in(&a, 7, "Fay").await;
        let first = told_of(&mut told, "Fay (2020CLUS01)").await;
        sign_in(&a, 7, "Fay Renamed").await;
        let renamed = told_of(&mut told, "Fay Renamed (2020CLUS01)").await;
        assert_eq!(renamed.info.twizzle_user_id, first.info.twizzle_user_id);
        let claimed = redeem(&b, &claim).await.unwrap();
        assert_eq!(claimed.user, renamed.info);
    }

    /// The feed goes on after NATS restarts: a change made after it is back
    /// reaches a node that was following before.
    #[actix::test]
    async fn the_feed_goes_on_after_nats_restarts() {
        let Some(mut server) = NatsServer::start("cluster-restart") else {
            return;
        };
        let (a, b) = (node(&server).await, node(&server).await);
        let mut told = watch(&b).await;
        sign_in(&a, 8, "Gus").await;
        told_of(&mut told, "Gus (2020CLUS01)").await;
        server.stop();
        server.restart();
        let deadline = Instant::now() + WAIT;
        let claim = loop {
            match a
                .send(SignIn {
                    profile: profile(8, "Gus Again"),
                })
                .await
                .unwrap()
            {
                Ok(claim) => break claim,
                Err(e) => assert!(Instant::now() < deadline, "NATS not back: {e:?}"),
            }
            actix::clock::sleep(Duration::from_millis(50)).await; // polling for the reconnect
        };
        told_of(&mut told, "Gus Again (2020CLUS01)").await;
        redeem(&b, &claim).await.unwrap();
    }

    /// The store itself: a second node's new user for an account taken is
    /// told as stale, with the user kept, rather than failing.
    #[actix::test]
    async fn a_twin_user_is_told_as_stale_with_the_user_kept() {
        let Some(server) = NatsServer::start("cluster-stale") else {
            return;
        };
        let mut one = NatsUsers::new(connect(&server).await);
        let mut two = NatsUsers::new(connect(&server).await);
        one.load().await.unwrap();
        two.load().await.unwrap();
        let ana = user(Identity::Wca { wca_account: 9 }, "Ana");
        one.apply(vec![UserChange::PutUser(ana.clone())])
            .await
            .unwrap();
        let twin = user(Identity::Wca { wca_account: 9 }, "Ana");
        let twin_claim = claim(&twin, CLAIM_TTL);
        let applied = two
            .try_apply(vec![
                UserChange::PutUser(twin),
                UserChange::PutClaim(twin_claim),
            ])
            .await
            .unwrap();
        let Applied::Stale { kept, news, .. } = applied else {
            panic!("{applied:?}");
        };
        assert_eq!((kept, news), (0, UserNews::User(ana.clone())));
        // Made again on the user kept, it goes through; and the claim is
        // redeemed once, by whichever node comes first.
        let mut renamed = ana.clone();
        renamed.name = "Ana Two".to_owned();
        let ana_claim = claim(&ana, CLAIM_TTL);
        two.apply(vec![
            UserChange::PutUser(renamed.clone()),
            UserChange::PutClaim(ana_claim.clone()),
        ])
        .await
        .unwrap();
        assert_eq!(
            one.find_user(&ana.id).await.unwrap(),
            Some(renamed),
            "the other node finds the change"
        );
        assert_eq!(
            one.find_claim(&ana_claim.hash).await.unwrap(),
            Some(ana_claim.clone())
        );
        one.apply(vec![UserChange::RemoveClaim(ana_claim.hash.clone())])
            .await
            .unwrap();
        let again = two
            .try_apply(vec![UserChange::RemoveClaim(ana_claim.hash.clone())])
            .await
            .unwrap();
        assert!(
            matches!(&again, Applied::Stale { news: UserNews::ClaimGone(hash), .. } if *hash == ana_claim.hash),
            "{again:?}"
        );
        assert_eq!(one.find_claim(&ana_claim.hash).await.unwrap(), None);
        // A token is found by its hash, and one made up is not.
        let token = ana.token_hashes[0].clone();
        let mut three = NatsUsers::new(connect(&server).await);
        assert_eq!(
            three.find_token(&token).await.unwrap().map(|u| u.id),
            Some(ana.id.clone())
        );
        assert_eq!(
            three.find_token(&TokenHash::of("made up")).await.unwrap(),
            None
        );
    }
}

#[actix::test]
async fn sender_socket_slots_are_counted_over_nodes_exactly() {
    let Some(server) = NatsServer::start("slots") else {
        return;
    };
    let mut a = NatsStreams::new(connect(&server).await);
    let mut b = NatsStreams::new(connect(&server).await);
    let id = StreamId::random();
    let live_a = || vec!["node_a".to_owned()];
    let live_b = || vec!["node_b".to_owned()];
    assert!(a
        .take_sender_slot(&id, "node_a", 0, live_b(), 3)
        .await
        .unwrap());
    assert!(a
        .take_sender_slot(&id, "node_a", 1, live_b(), 3)
        .await
        .unwrap());
    assert!(b
        .take_sender_slot(&id, "node_b", 0, live_a(), 3)
        .await
        .unwrap());
    assert!(
        !b.take_sender_slot(&id, "node_b", 1, live_a(), 3)
            .await
            .unwrap(),
        "three taken over two nodes"
    );
    // One of A's closes: B may take it.
    a.set_sender_slots(&id, "node_a", 1);
    a.sync().await.unwrap();
    assert!(b
        .take_sender_slot(&id, "node_b", 1, live_a(), 3)
        .await
        .unwrap());
    assert!(!a
        .take_sender_slot(&id, "node_a", 1, live_b(), 3)
        .await
        .unwrap());
    // B's lease ran out: its slots are free for A.
    assert!(a
        .take_sender_slot(&id, "node_a", 1, Vec::new(), 3)
        .await
        .unwrap());
    assert!(a
        .take_sender_slot(&id, "node_a", 2, Vec::new(), 3)
        .await
        .unwrap());
    assert!(!a
        .take_sender_slot(&id, "node_a", 3, Vec::new(), 3)
        .await
        .unwrap());
}
