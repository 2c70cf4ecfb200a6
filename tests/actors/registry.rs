//! The registry: creating, listing and finding streams, the per-user and
//! socket limits, recordings in the data directory, and streams that end.

use std::time::Duration;

use actix::prelude::*;
use twizzle_actors::close::{SERVER_RESTARTING, STREAM_ENDED};
use twizzle_actors::ids::{PublicUserInfo, StreamId};
use twizzle_actors::registry::{
    CreateStream, FindStream, ListStreams, Registry, RegistryError, RegistrySettings,
    StreamListBody, StreamSummary,
};
use twizzle_actors::store::local::RECORDINGS_DIR;
use twizzle_actors::store::{memory::MemoryStreams, Stores, StreamStore};
use twizzle_actors::stream::{StreamActor, StreamLimits};
use twizzle_actors::tokens::{RedeemClaim, SignIn, TokenActor, UserUpdated, WcaProfile};

use crate::support::*;

const CLOSE_NORMAL: u16 = STREAM_ENDED.code;
const CLOSE_GOING_AWAY: u16 = SERVER_RESTARTING.code;

/// Generous limits, no countdown in sight.
fn settings() -> RegistrySettings {
    RegistrySettings {
        idle_timeout: NEVER,
        max_streams_per_user: 10,
        max_sockets: 100,
        max_sender_sockets_per_stream: 4,
        max_sockets_per_client: 1000,
        stream_limits: StreamLimits::NONE,
        metrics: twizzle_actors::metrics::Metrics::new(),
        recording_retention: Duration::from_secs(30 * 86_400),
    }
}

/// A registry that keeps nothing past the test.
fn start(settings: RegistrySettings) -> Addr<Registry> {
    Registry::new(settings, Box::new(MemoryStreams), Vec::new()).start()
}

/// The local stream store in `dir`.
fn local_store(dir: &TempDir) -> Box<dyn StreamStore + Send> {
    Stores::local(dir.path())
        .expect("a readable data directory")
        .streams
}

/// A registry keeping its streams in `dir`.
fn start_in(dir: &TempDir, settings: RegistrySettings) -> Addr<Registry> {
    Registry::new(settings, local_store(dir), Vec::new()).start()
}

/// `id` as the stream ID it is.
fn stream_id(id: &str) -> StreamId {
    StreamId::parse(id).unwrap_or_else(|| panic!("{id} is not a stream ID"))
}

async fn list(registry: &Addr<Registry>) -> Vec<StreamSummary> {
    within("ListStreams", registry.send(ListStreams))
        .await
        .expect("the registry is running")
}

async fn find(registry: &Addr<Registry>, id: &StreamId) -> Option<Addr<StreamActor>> {
    let find = registry.send(FindStream { id: id.clone() });
    within("FindStream", find)
        .await
        .expect("the registry is running")
}

/// A new stream has a `twizzle_stream_` + 16 hex ID, its creator as its only
/// sender, and a running stream actor behind it that takes the creator as a
/// sender.
#[actix::test]
async fn create_stream_gives_an_id_and_the_owner_as_sender() {
    let registry = start(settings());
    let created = create(&registry, OWNER).await.unwrap();
    let text = created.id.as_str();
    assert!(text.starts_with("twizzle_stream_"), "{}", created.id);
    assert_eq!(text.len(), "twizzle_stream_".len() + 16);
    assert_eq!(StreamId::parse(text).as_ref(), Some(&created.id));
    assert_eq!(created.senders, vec![user(OWNER)]);

    let stream = find(&registry, &created.id).await.expect("the new stream");
    assert!(Peer::join(&stream, Some(OWNER)).await.sender);
    assert!(!Peer::join(&stream, Some(STRANGER)).await.sender);
    let other = create(&registry, OWNER).await.unwrap();
    assert_ne!(other.id, created.id);
}

/// `ListStreams` lists the open streams in creation order; `FindStream`
/// finds each by ID and nothing for an unknown ID.
#[actix::test]
async fn streams_are_listed_in_creation_order_and_found_by_id() {
    let registry = start(settings());
    assert!(list(&registry).await.is_empty());
    let mut created = Vec::new();
    for owner in [OWNER, STRANGER, OWNER, "user_00000000000000cc", STRANGER] {
        created.push(create(&registry, owner).await.unwrap());
    }
    assert_eq!(list(&registry).await, created);
    for summary in &created {
        let stream = find(&registry, &summary.id)
            .await
            .unwrap_or_else(|| panic!("{} is found", summary.id));
        assert_eq!(status(&stream).await.sockets, 0);
    }
    assert!(
        find(&registry, &stream_id("twizzle_stream_0000000000000000"))
            .await
            .is_none()
    );
    assert!(StreamId::parse("").is_none());
}

/// A user may have `max_streams_per_user` open streams; one more is refused
/// with the limit, and other users are not affected.
#[actix::test]
async fn per_user_stream_limit_is_enforced() {
    let registry = start(RegistrySettings {
        max_streams_per_user: 2,
        ..settings()
    });
    create(&registry, OWNER).await.unwrap();
    create(&registry, OWNER).await.unwrap();
    assert_eq!(
        create(&registry, OWNER).await,
        Err(RegistryError::TooManyStreams { limit: 2 })
    );
    create(&registry, STRANGER).await.unwrap();
    assert_eq!(list(&registry).await.len(), 3);
}

/// `OpenSocket` admits up to `max_sockets` sockets over all streams and
/// refuses the next with the limit; each ticket dropped frees a slot; an
/// unknown stream is refused as such.
#[actix::test]
async fn socket_limit_is_enforced_and_freed() {
    let registry = start(RegistrySettings {
        max_sockets: 2,
        ..settings()
    });
    let a = create(&registry, OWNER).await.unwrap();
    let b = create(&registry, STRANGER).await.unwrap();
    assert_eq!(
        open_socket(&registry, &stream_id("twizzle_stream_0000000000000000"))
            .await
            .map(|_| ()),
        Err(RegistryError::UnknownStream)
    );
    let first = open_socket(&registry, &a.id).await.unwrap();
    assert!(Peer::join(first.stream(), Some(OWNER)).await.sender);
    let second = open_socket(&registry, &b.id).await.unwrap();
    assert_eq!(
        open_socket(&registry, &a.id).await.map(|_| ()),
        Err(RegistryError::TooManySockets { limit: 2 })
    );
    assert_eq!(
        open_socket(&registry, &b.id).await.map(|_| ()),
        Err(RegistryError::TooManySockets { limit: 2 })
    );
    drop(second);
    let third = open_socket(&registry, &b.id).await.unwrap();
    assert_eq!(
        open_socket(&registry, &a.id).await.map(|_| ()),
        Err(RegistryError::TooManySockets { limit: 2 })
    );
    drop((first, third));
    let _fourth = open_socket(&registry, &a.id).await.unwrap();
    let _fifth = open_socket(&registry, &a.id).await.unwrap();
}

/// A stream that ends (its idle countdown ran out) leaves the list, is no
/// longer found or opened, and frees its owner's per-user slot; a stream
/// with a sender connected stays.
#[actix::test]
async fn ended_stream_leaves_the_list_and_frees_its_owners_slot() {
    let registry = start(RegistrySettings {
        idle_timeout: Duration::from_millis(300),
        max_streams_per_user: 1,
        ..settings()
    });
    let idle = create(&registry, OWNER).await.unwrap();
    let kept = create(&registry, STRANGER).await.unwrap();
    let kept_ticket = open_socket(&registry, &kept.id).await.unwrap();
    let kept_sender = Peer::join(kept_ticket.stream(), Some(STRANGER)).await;
    assert!(kept_sender.sender);
    assert_eq!(
        create(&registry, OWNER).await,
        Err(RegistryError::TooManyStreams { limit: 1 })
    );

    let idle_ticket = open_socket(&registry, &idle.id).await.unwrap();
    let idle_stream = idle_ticket.stream().clone();
    let mut viewer = Peer::join(&idle_stream, None).await;
    viewer
        .expect_close(
            CLOSE_NORMAL,
            STREAM_ENDED.reason,
            "the idle stream's viewer",
        )
        .await;
    // The stream tells the registry from `stopped`, before its mailbox goes;
    // anything sent to the registry after that is handled after the news.
    stopped(&idle_stream).await;

    assert_eq!(list(&registry).await, vec![kept.clone()]);
    assert!(find(&registry, &idle.id).await.is_none());
    assert_eq!(
        open_socket(&registry, &idle.id).await.map(|_| ()),
        Err(RegistryError::UnknownStream)
    );
    let again = create(&registry, OWNER).await.unwrap();
    assert_eq!(list(&registry).await, vec![kept, again]);
}

/// With a data directory, the registry makes `log/streams` up front and each
/// stream records to `log/streams/{id}.log`.
#[actix::test]
async fn streams_record_into_the_data_directory() {
    let dir = TempDir::new("registry-recording");
    let registry = start_in(&dir, settings());
    assert!(dir.path().join(RECORDINGS_DIR).is_dir());
    let created = create(&registry, OWNER).await.unwrap();
    let ticket = open_socket(&registry, &created.id).await.unwrap();
    let stream = ticket.stream();
    let sender = Peer::join(stream, Some(OWNER)).await;
    let mut viewer = Peer::join(stream, None).await;
    let (r1, m2) = (reset(false, 1), mv(2));
    sender.publish(stream, &r1).await;
    sender.publish(stream, &m2).await;
    // Relayed once recorded.
    viewer.expect_all(&[&r1, &m2], "the viewer").await;
    let path = dir
        .path()
        .join(RECORDINGS_DIR)
        .join(format!("{}.log", created.id));
    assert_eq!(
        recorded_events(&path),
        [(1, r1.text.to_string()), (2, m2.text.to_string())]
    );
}

/// Streams started on other arbiters relay, end and report to the registry
/// just as on its own thread.
#[actix::test]
async fn streams_on_other_arbiters_work_and_report_their_end() {
    let arbiter = Arbiter::new();
    let registry =
        Registry::new(settings(), Box::new(MemoryStreams), vec![arbiter.handle()]).start();
    let created = create(&registry, OWNER).await.unwrap();
    let ticket = open_socket(&registry, &created.id).await.unwrap();
    let stream = ticket.stream().clone();
    let mut sender = Peer::join(&stream, Some(OWNER)).await;
    let mut viewer = Peer::join(&stream, None).await;
    let m1 = mv(1);
    sender.publish(&stream, &m1).await;
    viewer.expect(&m1, "the viewer").await;

    end_stream(&stream, 1001, "server restarting").await;
    sender
        .expect_close(1001, "server restarting", "the sender")
        .await;
    viewer
        .expect_close(1001, "server restarting", "the viewer")
        .await;
    stopped(&stream).await;
    assert!(list(&registry).await.is_empty());
    assert!(find(&registry, &created.id).await.is_none());
    arbiter.stop();
}

/// When the registry stops (its thread shuts down with the server), every
/// stream ends and its sockets are closed with 1001 "server restarting".
#[actix::test]
async fn stopping_registry_ends_every_stream() {
    let registry_thread = Arbiter::new();
    // The streams run on the test's own thread, which outlives the registry's.
    let registry = Registry::new(
        settings(),
        Box::new(MemoryStreams),
        vec![Arbiter::current()],
    );
    let registry = Registry::start_in_arbiter(&registry_thread.handle(), move |_| registry);
    let a = create(&registry, OWNER).await.unwrap();
    let b = create(&registry, STRANGER).await.unwrap();
    let a_ticket = open_socket(&registry, &a.id).await.unwrap();
    let b_ticket = open_socket(&registry, &b.id).await.unwrap();
    let (a_stream, b_stream) = (a_ticket.stream().clone(), b_ticket.stream().clone());
    let mut a_sender = Peer::join(&a_stream, Some(OWNER)).await;
    let mut a_viewer = Peer::join(&a_stream, None).await;
    let mut b_viewer = Peer::join(&b_stream, None).await;

    registry_thread.stop();
    for (peer, what) in [
        (&mut a_sender, "first stream's sender"),
        (&mut a_viewer, "first stream's viewer"),
        (&mut b_viewer, "second stream's viewer"),
    ] {
        peer.expect_close(CLOSE_GOING_AWAY, SERVER_RESTARTING.reason, what)
            .await;
    }
    stopped(&a_stream).await;
    stopped(&b_stream).await;
}

/// Milliseconds since the epoch, as the registry's journal keeps time.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn with_timeout(idle_timeout: Duration) -> RegistrySettings {
    RegistrySettings {
        idle_timeout,
        ..settings()
    }
}

/// A registry on a data directory keeps its streams in its journal: a new
/// registry on the same directory lists them again, with the same senders,
/// and a stream that ended stays ended.
#[actix::test]
async fn streams_come_back_on_the_same_data_directory() {
    let dir = TempDir::new("registry-restore");
    let before = start_in(&dir, with_timeout(NEVER));
    let kept = create(&before, OWNER).await.unwrap();
    let ended = create(&before, STRANGER).await.unwrap();
    let stream = find(&before, &ended.id).await.unwrap();
    end_stream(&stream, CLOSE_NORMAL, STREAM_ENDED.reason).await;
    stopped(&stream).await;
    // The registry handled the stream's stop before it answers this.
    assert_eq!(list(&before).await, vec![kept.clone()]);

    let after = start_in(&dir, with_timeout(NEVER));
    assert_eq!(list(&after).await, vec![kept.clone()]);
    let stream = find(&after, &kept.id)
        .await
        .expect("the kept stream is back");
    assert!(status(&stream).await.counting_down);
    // Its creator's slot under the per-user limit is taken again.
    let limited = start_in(
        &dir,
        RegistrySettings {
            max_streams_per_user: 1,
            ..settings()
        },
    );
    assert_eq!(
        create(&limited, OWNER).await,
        Err(RegistryError::TooManyStreams { limit: 1 })
    );
}

/// On restore, a countdown resumes where it was rather than starting over;
/// a stream whose countdown ran out while the server was down is not
/// restored; one that had a sender connected gets a full countdown from now.
#[actix::test]
async fn countdowns_resume_and_expired_streams_stay_ended() {
    let dir = TempDir::new("registry-countdowns");
    let now = now_ms();
    let resumed = "twizzle_stream_00000000000000a1";
    let expired = "twizzle_stream_00000000000000a2";
    let live = "twizzle_stream_00000000000000a3";
    let ended = "twizzle_stream_00000000000000a4";
    let journal = [
        serde_json::json!({"t": "stream", "id": resumed, "senders": [OWNER], "created_ms": now - 60_000}),
        serde_json::json!({"t": "idle", "id": resumed, "since_ms": now - 9_500}),
        serde_json::json!({"t": "stream", "id": expired, "senders": [OWNER], "created_ms": now - 60_000}),
        serde_json::json!({"t": "idle", "id": expired, "since_ms": now - 10_500}),
        serde_json::json!({"t": "stream", "id": live, "senders": [STRANGER], "created_ms": now - 60_000}),
        serde_json::json!({"t": "live", "id": live}),
        serde_json::json!({"t": "stream", "id": ended, "senders": [OWNER], "created_ms": now - 60_000}),
        serde_json::json!({"t": "end", "id": ended}),
    ];
    let text: String = journal.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.path().join("streams.jsonl"), text + "{\"t\":\"stre").unwrap();

    // A ten-second timeout: `resumed` has half a second left, `live` ten.
    let registry = start_in(&dir, with_timeout(Duration::from_secs(10)));
    let ids: Vec<StreamId> = list(&registry).await.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![stream_id(resumed), stream_id(live)]);

    let resumed_stream = find(&registry, &stream_id(resumed)).await.unwrap();
    let live_stream = find(&registry, &stream_id(live)).await.unwrap();
    let mut viewer = Peer::join(&resumed_stream, None).await;
    let mut other = Peer::join(&live_stream, None).await;
    // Within the wait bound (5 s), far less than a fresh ten-second countdown.
    viewer
        .expect_close(
            CLOSE_NORMAL,
            STREAM_ENDED.reason,
            "the resumed countdown ends the stream",
        )
        .await;
    assert!(status(&live_stream).await.counting_down);
    assert!(
        other.inbox.try_next().is_none(),
        "the live stream is still open"
    );
    stopped(&resumed_stream).await;
    let ids: Vec<StreamId> = list(&registry).await.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![stream_id(live)]);
}

/// `Shutdown` closes every socket with 1001 `server restarting` and refuses
/// new streams and sockets, but the streams are not ended: a registry
/// started afterwards on the same directory has them all.
#[actix::test]
async fn shutdown_closes_sockets_but_keeps_streams() {
    let dir = TempDir::new("registry-shutdown");
    let before = start_in(&dir, with_timeout(NEVER));
    let first = create(&before, OWNER).await.unwrap();
    let second = create(&before, STRANGER).await.unwrap();
    let mut sockets = Vec::new();
    for summary in [&first, &second] {
        let stream = find(&before, &summary.id).await.unwrap();
        sockets.push(Peer::join(&stream, Some(OWNER)).await);
        sockets.push(Peer::join(&stream, None).await);
    }
    within("Shutdown", before.send(twizzle_actors::registry::Shutdown))
        .await
        .unwrap();
    for socket in &mut sockets {
        socket
            .expect_close(CLOSE_GOING_AWAY, SERVER_RESTARTING.reason, "shutdown")
            .await;
    }
    assert_eq!(
        create(&before, OWNER).await,
        Err(RegistryError::ShuttingDown)
    );
    assert_eq!(
        open_socket(&before, &first.id).await.map(|_| ()),
        Err(RegistryError::ShuttingDown)
    );

    let after = start_in(&dir, with_timeout(NEVER));
    assert_eq!(list(&after).await, vec![first, second]);
}

/// Waits, within the bound, until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    within(what, async {
        while !done() {
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// With a retention of zero, an ended stream's recording is deleted when the
/// stream ends; a stream still open keeps its own.
#[actix::test]
async fn a_zero_retention_deletes_a_recording_at_its_streams_end() {
    let dir = TempDir::new("registry-retention-zero");
    let registry = start_in(
        &dir,
        RegistrySettings {
            idle_timeout: Duration::from_millis(300),
            recording_retention: Duration::ZERO,
            ..settings()
        },
    );
    let ending = create(&registry, OWNER).await.unwrap();
    let open = create(&registry, STRANGER).await.unwrap();
    let recording = |id: &StreamId| dir.path().join(RECORDINGS_DIR).join(format!("{id}.log"));
    let ticket = open_socket(&registry, &open.id).await.unwrap();
    let sender = Peer::join(ticket.stream(), Some(STRANGER)).await;
    sender.publish(ticket.stream(), &mv(1)).await;
    let ending_stream = find(&registry, &ending.id).await.unwrap();
    let mut viewer = Peer::join(&ending_stream, None).await;
    let owner = Peer::join(&ending_stream, Some(OWNER)).await;
    owner.publish(&ending_stream, &mv(2)).await;
    viewer.expect(&mv(2), "the viewer").await;
    assert!(recording(&ending.id).is_file());
    // The sender leaves: the countdown starts.
    within(
        "a leave",
        ending_stream.send(twizzle_actors::stream::Leave { socket: owner.id }),
    )
    .await
    .unwrap();
    viewer
        .expect_close(CLOSE_NORMAL, STREAM_ENDED.reason, "the stream ends")
        .await;
    eventually("the ended stream's recording to go", || {
        !recording(&ending.id).exists()
    })
    .await;
    assert!(
        recording(&open.id).is_file(),
        "an open stream keeps its recording"
    );
}

/// At start-up the recordings of streams that are no longer open and were
/// last written longer ago than the retention go, with their snapshots;
/// newer ones and those of open streams stay.
#[actix::test]
async fn the_sweep_deletes_only_old_recordings_of_ended_streams() {
    let dir = TempDir::new("registry-retention-sweep");
    let folder = dir.path().join(RECORDINGS_DIR);
    std::fs::create_dir_all(&folder).unwrap();
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3 * 86_400);
    let write = |id: &str, old: bool| {
        let path = folder.join(format!("{id}.log"));
        std::fs::write(&path, format!("{}\n", mv(1).text)).unwrap();
        std::fs::write(path.with_extension("snapshot"), "{}").unwrap();
        if old {
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(long_ago).unwrap();
        }
        path
    };
    let old_ended = write("twizzle_stream_00000000000000b1", true);
    let new_ended = write("twizzle_stream_00000000000000b2", false);
    let open_id = "twizzle_stream_00000000000000b3";
    let old_open = write(open_id, true);
    let journal = serde_json::json!({"t": "stream", "id": open_id, "senders": [OWNER], "created_ms": now_ms()});
    std::fs::write(dir.path().join("streams.jsonl"), format!("{journal}\n")).unwrap();

    let registry = start_in(
        &dir,
        RegistrySettings {
            recording_retention: Duration::from_secs(86_400),
            ..settings()
        },
    );
    // The sweep runs once the restored streams are back, before this answers.
    assert_eq!(list(&registry).await.len(), 1);
    eventually("the old recording to go", || !old_ended.exists()).await;
    assert!(!old_ended.with_extension("snapshot").exists());
    assert!(new_ended.is_file(), "a recent recording stays");
    assert!(old_open.is_file(), "an open stream's recording stays");
}

/// The body of `GET /v0/streams`, as the registry keeps it.
async fn list_body(registry: &Addr<Registry>) -> String {
    within("StreamListBody", registry.send(StreamListBody))
        .await
        .expect("the registry is running")
        .to_string()
}

/// `info` as the list shows a sender, byte for byte.
fn listed_sender(info: &PublicUserInfo) -> String {
    let wca_id = match &info.wca_id {
        Some(id) => format!("\"{id}\""),
        None => "null".to_owned(),
    };
    format!(
        r#"{{"name":"{}","twizzleUserID":"{}","wcaID":{wca_id}}}"#,
        info.name,
        info.twizzle_user_id.as_str()
    )
}

/// The list body is the one the API always answered, byte for byte, with
/// the fields added since (keys in order): the open streams oldest first,
/// each with its senders' public info; it follows creations, ends and
/// changes to a sender's info.
#[actix::test]
async fn the_list_body_follows_creations_ends_and_renames() {
    let registry = start(settings());
    assert_eq!(list_body(&registry).await, r#"{"streams":[]}"#);
    let ana = PublicUserInfo::new(&user(OWNER), Some("2015ANAA01"), "Ana");
    let bo = PublicUserInfo::new(&user(STRANGER), None, "Bo");
    let mut ids = Vec::new();
    for owner in [&ana, &bo, &ana] {
        let create = registry.send(CreateStream {
            owner: owner.clone(),
        });
        ids.push(within("CreateStream", create).await.unwrap().unwrap());
    }
    let body = |streams: &[(&StreamSummary, &PublicUserInfo)]| {
        let streams: Vec<String> = streams
            .iter()
            .map(|(stream, sender)| {
                format!(
                    r#"{{"createdAt":{},"live":false,"senders":[{}],"streamID":"{}","viewers":0}}"#,
                    stream.created_ms,
                    listed_sender(sender),
                    stream.id.as_str()
                )
            })
            .collect();
        format!(r#"{{"streams":[{}]}}"#, streams.join(","))
    };
    assert_eq!(
        list_body(&registry).await,
        body(&[(&ids[0], &ana), (&ids[1], &bo), (&ids[2], &ana)])
    );

    let stream = find(&registry, &ids[1].id).await.unwrap();
    end_stream(&stream, CLOSE_NORMAL, STREAM_ENDED.reason).await;
    stopped(&stream).await;
    assert_eq!(
        list_body(&registry).await,
        body(&[(&ids[0], &ana), (&ids[2], &ana)])
    );

    let renamed = PublicUserInfo::new(&user(OWNER), None, "Ana Lima");
    registry.do_send(UserUpdated {
        info: renamed.clone(),
    });
    assert_eq!(
        list_body(&registry).await,
        body(&[(&ids[0], &renamed), (&ids[2], &renamed)])
    );
    let senders: Vec<_> = list(&registry)
        .await
        .into_iter()
        .map(|s| s.senders)
        .collect();
    assert_eq!(senders, [vec![user(OWNER)], vec![user(OWNER)]]);
}

/// Signs `name` in on `tokens` as WCA account `account`; their public info.
async fn signed_in(tokens: &Addr<TokenActor>, account: u64, name: &str) -> PublicUserInfo {
    let profile = WcaProfile {
        account_id: account,
        wca_id: None,
        name: name.to_owned(),
    };
    let claim_token = within("SignIn", tokens.send(SignIn { profile }))
        .await
        .unwrap()
        .unwrap();
    within("RedeemClaim", tokens.send(RedeemClaim { claim_token }))
        .await
        .unwrap()
        .unwrap()
        .user
}

/// Streams restored on a registry with a token actor list their senders
/// as the token actor knows them (the store keeps only their IDs), and
/// follow a later change of name.
#[actix::test]
async fn restored_streams_list_their_senders_as_the_token_actor_knows_them() {
    let dir = TempDir::new("registry-restore-senders");
    let users = Stores::local(dir.path()).unwrap().users;
    let tokens = TokenActor::new(users, Duration::from_secs(600)).start();
    let ana = signed_in(&tokens, 1, "Ana").await;
    let bo = signed_in(&tokens, 2, "Bo").await;
    let before = start_in(&dir, with_timeout(NEVER));
    for owner in [&ana, &bo] {
        let create = before.send(CreateStream {
            owner: owner.clone(),
        });
        within("CreateStream", create).await.unwrap().unwrap();
    }
    let listed = list_body(&before).await;

    let after = Registry::new(with_timeout(NEVER), local_store(&dir), Vec::new())
        .with_users(tokens.clone())
        .start();
    assert_eq!(list_body(&after).await, listed);
    assert!(listed.contains(&listed_sender(&ana)), "{listed}");
    assert!(listed.contains(&listed_sender(&bo)), "{listed}");

    let renamed = signed_in(&tokens, 1, "Ana Lima").await;
    assert_eq!(renamed.name, "Ana Lima (unverified)");
    // The token actor told the registry before it answered the sign-in,
    // so the news is ahead of this request in the registry's mailbox.
    assert_eq!(
        list_body(&after).await,
        listed.replace(&listed_sender(&ana), &listed_sender(&renamed))
    );
}
