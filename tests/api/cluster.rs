//! Cluster mode, end to end: the harness of a cluster under test, and the
//! existing suite run once more on two nodes.
//!
//! Each test listed below is written over [`Nodes`] and runs twice:
//! `NAME::on_one_node` on one server in this process, as before, and
//! `NAME::on_two_nodes` on two real binaries on one NATS, each request
//! and each socket on the other node than the last (the first socket on
//! the other node than the first request), so that a user signs in on one
//! node and claims on the other, a stream is created on one and sent to
//! on the other, and a sender and its viewers sit on different nodes.
//!
//! Run on two nodes:
//! - `sockets`: relay without echo, the replay, the reset guard, a viewer
//!   that sends, bad frames, an oversized frame, the sender's rate limit,
//!   the idle end and a sender holding the stream, resuming with `since`,
//!   a bad `since`.
//! - `sockets_protocol`: every test (the token as a subprotocol).
//! - `sign_in`, `dev_sign_in`: the callback, the claim and their failures;
//!   the development sign-in's users and names.
//! - `http`: creating and listing streams, the list's bytes, the per-user
//!   stream limit, the socket endpoint's errors, a stream's viewers and
//!   `live`.
//! - `recordings`: the download from any offset, the list of open and
//!   ended recordings, deletion by a sender, a retention of zero.
//! - `limits`: sender sockets per stream, one rate budget for a sender's
//!   sockets on a stream.
//!
//! Not run on two nodes, because they are about one process and a second
//! node adds nothing to them or cannot take part:
//! - about one process's disk: `sockets::accepted_events_are_recorded`,
//!   `recordings::a_recording_from_before_offsets_stays_readable`,
//!   `limits::a_recording_stops_at_its_quota` (they read or write the
//!   recording's file), `http::readiness_check_is_ready` (its probe file),
//!   `disk`, `restart` (a restart on the same data directory; a node's
//!   restart on NATS is in `nats` and `cluster_faults`);
//! - about signals, systemd, Caddy and the deployment: `deploy`, `logs`,
//!   `races` (SIGTERM), `dev_sign_in::the_binary_says_when_it_is_on`,
//!   `dev_sign_in::absent_unless_no_secret_no_prod_and_loopback` and
//!   `development_users_survive_a_restart` (one process's settings and
//!   restart), `demo`, `browser`, `watch` (pages served by whichever node);
//! - about memory or one node's own connections and budgets: `limits`'
//!   stuck and flooding clients, its frame-size, socket-count (per node by
//!   SPEC) and bad-input tests, `clients` (per-client limits are each
//!   node's), `closing` (the close handshake is between a socket and its
//!   own node), `busy` (in-process stores held on purpose), `metrics`
//!   (each node's own counters), `http`'s welcome, liveness, preflight,
//!   unknown-path and query-string tests (no state of the cluster in them).
//!
//! The faults of a cluster (a node killed, NATS stopped) are in
//! `cluster_faults`.

use std::time::Instant;

use serde_json::{json, Value};

use crate::helpers::*;

/// Polls node `node`'s readiness check until it answers `status`, within a
/// bound; returns its body.
async fn readiness_until(app: &TestApp, node: usize, status: u16) -> Value {
    let deadline = Instant::now() + WAIT * 3;
    loop {
        let answer = app.on(node).get("/v0/infra/readiness_check").await;
        if answer.status == status {
            return answer.body;
        }
        assert!(
            Instant::now() < deadline,
            "node {node}: readiness still {} {}",
            answer.status,
            answer.body
        );
        actix::clock::sleep(std::time::Duration::from_millis(50)).await; // polling the check
    }
}

/// The harness itself: an app on the cluster sends its requests to each
/// node in turn and skips a node that is down; a killed node comes back on
/// a port of its own and takes requests again; NATS stopped makes every
/// node unready and its restart ready again; and no node writes to its
/// data directory.
#[actix_web::test]
async fn the_harness_alternates_kills_restarts_and_stops_nats() {
    let wca = FakeWca::start();
    let Some(mut cluster) = Cluster::start(2, &wca, |_| {}) else {
        return;
    };
    let app = cluster.app(wca);
    let (first, second) = (cluster.port(0), cluster.port(1));
    assert_ne!(first, second);
    let turns: Vec<u16> = (0..4).map(|_| app.request_port()).collect();
    assert_eq!(turns, [first, second, first, second]);
    let sockets: Vec<u16> = (0..2).map(|_| app.socket_port()).collect();
    assert_eq!(sockets, [second, first], "sockets start on the other node");
    for node in 0..2 {
        assert_eq!(
            readiness_until(&app, node, 200).await,
            json!({"ready": true})
        );
    }

    cluster.kill(1);
    let turns: Vec<u16> = (0..3).map(|_| app.request_port()).collect();
    assert_eq!(turns, [first, first, first], "only the node that is up");
    assert_eq!(app.get("/v0/streams").await.status, 200);
    let again = cluster.restart(1);
    assert_eq!(cluster.port(1), again);
    let turns: Vec<u16> = (0..2).map(|_| app.request_port()).collect();
    assert!(
        turns.contains(&again) && turns.contains(&first),
        "{turns:?}"
    );
    readiness_until(&app, 1, 200).await;

    cluster.nats.stop();
    for node in 0..2 {
        assert_eq!(
            readiness_until(&app, node, 503).await,
            json!({"ready": false, "reason": "storage unavailable"})
        );
    }
    cluster.nats.restart();
    for node in 0..2 {
        readiness_until(&app, node, 200).await;
    }

    for node in 0..2 {
        let kept: Vec<_> = std::fs::read_dir(cluster.data_dir(node))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert!(
            kept.is_empty(),
            "node {node} wrote to its data dir: {kept:?}"
        );
        assert!(
            cluster
                .logs(node)
                .iter()
                .any(|l| l.contains("listening on")),
            "node {node}'s log is kept"
        );
    }
}
