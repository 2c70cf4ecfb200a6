//! Several nodes on one NATS behave as one server for streams: the real
//! binary twice (or more) with `TWIZZLE_NATS_URL`, each with its own
//! port, a real `nats-server` per test. A stream created on one node is
//! listed, found and joined on another; counts, the per-user limit and
//! the idle end are the cluster's, and a node killed with -9 loses its
//! senders within its lease.
//!
//! Users are signed in on a node started before the others, which then
//! load them at start. Events are not relayed between nodes here.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use twizzle_actors::testkit::NatsServer;

use crate::helpers::*;

/// One node: the binary on `nats` with `env` set, and a client for it.
struct Node {
    /// The process, killed when dropped.
    child: KillOnDrop,
    /// Its log lines as they come.
    logs: Receiver<String>,
    /// A client for its API.
    app: TestApp,
}

/// Starts a node on `nats`, with the environment `env` on top of the test settings.
fn start_node(label: &str, nats: &NatsServer, env: &[(&str, &str)]) -> Node {
    let dir = Arc::new(TempDir::new(label));
    let wca = FakeWca::start();
    let (child, port, logs) = start_binary_with(dir.path(), wca.origin(), |command| {
        command.env("TWIZZLE_NATS_URL", nats.url());
        for (name, value) in env {
            command.env(name, value);
        }
    });
    Node {
        child,
        logs,
        app: TestApp::attach(dir, wca, port),
    }
}

/// Asks `app` for stream `id`'s `StreamInfo` until `done` holds, within a
/// bound; returns it. `None` while it answers 404.
async fn info_until(
    app: &TestApp,
    id: &str,
    done: impl Fn(Option<&Value>) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + WAIT * 4;
    loop {
        let answer = app.get(&format!("/v0/streams/{id}")).await;
        let info = (answer.status == 200).then_some(answer.body);
        if done(info.as_ref()) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "stream {id} on port {} still {info:?}",
            app.port
        );
        actix::clock::sleep(Duration::from_millis(50)).await; // polling the API
    }
}

/// Whether `info` shows `viewers` viewers and `live`.
fn counts(info: Option<&Value>, viewers: u64, live: bool) -> bool {
    info.is_some_and(|info| info["viewers"] == viewers && info["live"] == live)
}

/// Lines that `logs` has now, and any that come within a short bound.
fn lines_now(logs: &Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = logs.recv_timeout(Duration::from_millis(300)) {
        lines.push(line);
    }
    lines
}

#[actix_web::test]
async fn a_stream_created_on_one_node_is_listed_joined_and_counted_on_another() {
    let Some(nats) = NatsServer::start("cluster-join") else {
        return;
    };
    let a = start_node("cluster-join-a", &nats, &[]);
    let b = start_node("cluster-join-b", &nats, &[]);
    let (token, _) = a.app.sign_in(51, Some("2020JOIN01"), "Joiner").await;
    let id = a.app.create_stream(&token).await;
    // Found on the other node at once, for the same client.
    let answer = b.app.get(&format!("/v0/streams/{id}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["streamID"], id.as_str());
    let listed = b.app.get("/v0/streams").await.body;
    let ids: Vec<&Value> = listed["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["streamID"])
        .collect();
    assert_eq!(ids, [id.as_str()], "{listed}");
    // An unknown stream is still unknown there.
    let unknown = b
        .app
        .get("/v0/streams/twizzle_stream_0123456789abcdef")
        .await;
    assert_eq!(unknown.status, 404);

    // A viewer on B and the sender on A: both nodes count both.
    let _viewer_b = b.app.connect(&id, None).await;
    let sender = a.app.connect(&id, Some(&token)).await;
    info_until(&a.app, &id, |i| counts(i, 1, true)).await;
    info_until(&b.app, &id, |i| counts(i, 1, true)).await;
    let viewer_a = a.app.connect(&id, None).await;
    info_until(&b.app, &id, |i| counts(i, 2, true)).await;
    info_until(&a.app, &id, |i| counts(i, 2, true)).await;
    drop(viewer_a);
    info_until(&b.app, &id, |i| counts(i, 1, true)).await;
    drop(sender);
    info_until(&b.app, &id, |i| counts(i, 1, false)).await;
    let listed = b.app.get("/v0/streams").await.body;
    assert_eq!(listed["streams"][0]["viewers"], 1, "{listed}");
}

#[actix_web::test]
async fn the_per_user_limit_counts_streams_on_every_node_even_created_at_once() {
    let Some(nats) = NatsServer::start("cluster-limit") else {
        return;
    };
    let limit = [("TWIZZLE_MAX_STREAMS_PER_USER", "2")];
    let a = start_node("cluster-limit-a", &nats, &limit);
    let (token, _) = a.app.sign_in(52, None, "Limited").await;
    // Started after the sign-in, so that it knows the user.
    let b = start_node("cluster-limit-b", &nats, &limit);
    a.app.create_stream(&token).await;
    let (on_a, on_b) = futures_util::future::join(
        a.app.post_as("/v0/streams", &token),
        b.app.post_as("/v0/streams", &token),
    )
    .await;
    let mut statuses = [on_a.status, on_b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429], "{} {}", on_a.body, on_b.body);
    for node in [&a, &b] {
        let refused = node.app.post_as("/v0/streams", &token).await;
        assert_eq!(refused.status, 429, "{}", refused.body);
    }
}

#[actix_web::test]
async fn a_stream_whose_sender_moved_nodes_lives_on_then_ends_once_everywhere() {
    let Some(nats) = NatsServer::start("cluster-idle") else {
        return;
    };
    let idle = Duration::from_secs(2);
    let env = [
        ("TWIZZLE_STREAM_IDLE_TIMEOUT_SECS", "2"),
        ("TWIZZLE_NODE_LEASE_SECS", "3"),
    ];
    let a = start_node("cluster-idle-a", &nats, &env);
    let (token, _) = a.app.sign_in(53, None, "Mover").await;
    let b = start_node("cluster-idle-b", &nats, &env);
    let id = a.app.create_stream(&token).await;
    let mut viewer_a = a.app.connect(&id, None).await;
    let mut viewer_b = b.app.connect(&id, None).await;
    let sender = a.app.connect(&id, Some(&token)).await;
    info_until(&b.app, &id, |i| counts(i, 2, true)).await;
    // The sender moves from A to B.
    drop(sender);
    let sender = b.app.connect(&id, Some(&token)).await;
    info_until(&a.app, &id, |i| counts(i, 2, true)).await;
    // Past the idle timeout, A (whose own sender left) ends nothing.
    for viewer in [&mut viewer_a, &mut viewer_b] {
        let quiet = actix::clock::timeout(idle + CLUSTER_TICK, viewer.next()).await;
        assert!(quiet.is_err(), "the stream went on: {quiet:?}");
    }
    info_until(&a.app, &id, |i| counts(i, 2, true)).await;

    drop(sender);
    let left = Instant::now();
    info_until(&a.app, &id, |i| i.is_none()).await;
    info_until(&b.app, &id, |i| i.is_none()).await;
    assert!(left.elapsed() >= idle, "ended after {:?}", left.elapsed());
    for viewer in [&mut viewer_a, &mut viewer_b] {
        assert_eq!(viewer.next_close().await, (1000, "stream ended".to_owned()));
    }
    let ended = format!("stream {id} ended");
    let said: usize = [&a, &b]
        .iter()
        .map(|node| {
            lines_now(&node.logs)
                .iter()
                .filter(|line| line.contains(&ended))
                .count()
        })
        .sum();
    assert_eq!(said, 1, "exactly one node ends it");
    let listed = b.app.get("/v0/streams").await.body;
    assert_eq!(listed["streams"], serde_json::json!([]));
}

/// How often the nodes check their streams' idleness, as the registry does.
const CLUSTER_TICK: Duration = twizzle_actors::registry::CLUSTER_CHECK;

#[actix_web::test]
async fn a_node_killed_with_its_streams_last_sender_loses_it_within_its_lease() {
    let Some(nats) = NatsServer::start("cluster-kill") else {
        return;
    };
    let (idle, lease) = (Duration::from_secs(1), Duration::from_secs(2));
    let env = [
        ("TWIZZLE_STREAM_IDLE_TIMEOUT_SECS", "1"),
        ("TWIZZLE_NODE_LEASE_SECS", "2"),
    ];
    let a = start_node("cluster-kill-a", &nats, &env);
    let (token, _) = a.app.sign_in(54, None, "Killed").await;
    let mut b = start_node("cluster-kill-b", &nats, &env);
    let id = a.app.create_stream(&token).await;
    let mut viewer = a.app.connect(&id, None).await;
    let _sender = b.app.connect(&id, Some(&token)).await;
    info_until(&a.app, &id, |i| counts(i, 1, true)).await;

    b.child.kill().expect("SIGKILL");
    b.child.wait().unwrap();
    let killed = Instant::now();
    info_until(&a.app, &id, |i| counts(i, 1, false)).await;
    let gone = killed.elapsed();
    assert!(gone >= lease / 2, "the sender counted gone after {gone:?}");
    info_until(&a.app, &id, |i| i.is_none()).await;
    assert!(
        killed.elapsed() >= gone + idle / 2,
        "ended after {:?}",
        killed.elapsed()
    );
    assert_eq!(viewer.next_close().await, (1000, "stream ended".to_owned()));
}
