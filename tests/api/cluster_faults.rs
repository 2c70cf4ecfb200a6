//! A cluster's faults, every event counted at every viewer: three nodes
//! relaying one sender's events; the sender's node killed with -9 mid-stream;
//! NATS stopped mid-stream and started again on the same port and store;
//! both at once.
//!
//! Each viewer checks every event it gets against what was sent: the same
//! payload, in the order sent, at strictly consecutive offsets, once (a
//! duplicate or a stale event shows as the wrong event at its offset). A
//! test ends each phase with a marker event that must come next, so that
//! nothing can hide behind the last one checked.
//!
//! These need `nats-server`; where it is missing they skip, saying so.

use std::time::Instant;

use serde_json::{json, Value};

use crate::helpers::*;

/// The error frame a sender's event gets while NATS is unreachable.
fn storage_unavailable() -> Value {
    json!({"event": "error", "data": {"message": "storage unavailable"}})
}

/// Moves numbered `from..to`, each with a payload of its own.
fn moves(from: u64, to: u64) -> Vec<Value> {
    (from..to).map(move_event).collect()
}

/// A viewer's socket, the node it is on, and the offset it must get next.
struct Watcher {
    /// The socket.
    socket: WsClient,
    /// Where it is, for the failure messages.
    name: String,
    /// The offset of the next event it must get.
    next: u64,
}

impl Watcher {
    /// A viewer opened on `node` of a stream that has no events yet: it
    /// gets every event from the first on.
    async fn open(app: &TestApp, node: usize, id: &str) -> Watcher {
        Watcher {
            socket: app.on(node).connect(id, None).await,
            name: format!("the viewer on node {node}"),
            next: 1,
        }
    }

    /// A viewer opened on `node` with `?since={since}`: it gets every event
    /// after that offset.
    async fn resume(app: &TestApp, node: usize, id: &str, since: u64) -> Watcher {
        let socket = app
            .on(node)
            .try_resume(id, &since.to_string())
            .await
            .expect("the resumed socket opens");
        Watcher {
            socket,
            name: format!("the viewer on node {node} since {since}"),
            next: since + 1,
        }
    }

    /// The next event: it must be at the next offset.
    async fn next_event(&mut self) -> Value {
        let event = self.socket.next_json().await;
        assert_eq!(
            self.socket.last_offset,
            Some(self.next),
            "{}: offsets strictly consecutive, got {event}",
            self.name
        );
        self.next += 1;
        event
    }

    /// The next events must be `events`: each once, in order, at
    /// consecutive offsets.
    async fn gets(&mut self, events: &[Value]) {
        for event in events {
            let offset = self.next;
            let got = self.next_event().await;
            assert_eq!(&got, event, "{}: the event at offset {offset}", self.name);
        }
    }

    /// Every event before `marker` (which must come, and is taken), each at
    /// its consecutive offset.
    async fn until(&mut self, marker: &Value) -> Vec<Value> {
        let mut before = Vec::new();
        loop {
            let got = self.next_event().await;
            if &got == marker {
                return before;
            }
            before.push(got);
        }
    }
}

/// Sends `events` on `sender`, one frame each.
async fn send_all(sender: &mut WsClient, events: &[Value]) {
    for event in events {
        sender.send_json(event).await;
    }
}

/// Polls node `node`'s readiness check until it answers `status`, within a
/// bound (NATS and a node may take some seconds to notice each other).
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

/// The stream's recording, downloaded from whichever node is next: each
/// line's event as sent, checked for its consecutive offset.
async fn recorded(app: &TestApp, id: &str) -> Vec<Value> {
    let (status, _, lines) = app.get_ndjson(&format!("/v0/streams/{id}/recording")).await;
    assert_eq!(status, 200, "{lines:?}");
    for (line, offset) in lines.iter().zip(1u64..) {
        assert_eq!(line["offset"], offset, "{line}");
    }
    lines.iter().map(sent_part).collect()
}

/// Signs a sender in (the callback and the claim on different nodes) and
/// creates its stream on node `node`: the token and the stream's ID.
async fn sender_on(app: &TestApp, node: usize) -> (String, String) {
    let (token, _) = app.sign_in(70, Some("2020CLUS01"), "Cluster").await;
    let id = app.on(node).create_stream(&token).await;
    (token, id)
}

/// A sender on node 0, viewers on nodes 0, 1 and 2: each gets every event,
/// in order, once; the sender gets none back, but a second sender's on
/// node 2; a late viewer on node 1 gets the replay with its offsets;
/// `?since=N` on node 2 gets the rest, then live events; the recording
/// downloads whole from any node.
#[actix_web::test]
async fn three_nodes_relay_every_event_in_order_once() {
    let wca = FakeWca::start();
    let Some(cluster) = Cluster::start(3, &wca, |_| {}) else {
        return;
    };
    let app = cluster.app(wca);
    let (token, id) = sender_on(&app, 0).await;
    let mut sender = app.on(0).connect(&id, Some(&token)).await;
    let mut watchers = Vec::new();
    for node in 0..3 {
        watchers.push(Watcher::open(&app, node, &id).await);
    }
    let mut sent = vec![reset_event(false), orientation_event(0.25)];
    sent.extend(moves(1, 61));
    sent.push(orientation_event(0.75));
    sent.extend(moves(61, 81));
    send_all(&mut sender, &sent).await;
    for watcher in &mut watchers {
        watcher.gets(&sent).await;
    }

    // No echo: the first frame the sender sees is another sender's event.
    let mut second = app.on(2).connect(&id, Some(&token)).await;
    second.send_json(&reset_event(true)).await;
    assert_eq!(sender.next_json().await, reset_event(true));
    assert_eq!(sender.last_offset, Some(sent.len() as u64 + 1));
    sent.push(reset_event(true));
    for watcher in &mut watchers {
        watcher.gets(&sent[sent.len() - 1..]).await;
    }

    // A late viewer on another node than the sender's: the last reset,
    // orientation and move, at the offsets they were relayed with.
    let mut late = app.on(1).connect(&id, None).await;
    let last = sent.len() as u64;
    for (event, offset) in [
        (reset_event(true), last),
        (orientation_event(0.75), 63),
        (move_event(80), last - 1),
    ] {
        assert_eq!(late.next_json().await, event);
        assert_eq!(late.last_offset, Some(offset));
    }

    // Resuming on node 2 from offset 70: the rest, then live events.
    let mut resumed = Watcher::resume(&app, 2, &id, 70).await;
    resumed.gets(&sent[70..]).await;
    let live = moves(100, 110);
    send_all(&mut sender, &live).await;
    sent.extend(live.iter().cloned());
    resumed.gets(&live).await;
    for watcher in &mut watchers {
        watcher.gets(&live).await;
    }
    let mut late = Watcher {
        socket: late,
        name: "the late viewer on node 1".to_owned(),
        next: last + 1,
    };
    late.gets(&live).await;

    for _ in 0..3 {
        assert_eq!(recorded(&app, &id).await, sent);
    }
}

/// The sender's node killed with -9 mid-stream: the viewers on the other
/// nodes keep their sockets and agree on what it had stored of the events
/// in flight (a prefix of them, nothing else); the sender reconnects to
/// another node (as a sender, so without `since`, which senders ignore)
/// and goes on at the next offset. Every event a viewer got, and every
/// event sent after the reconnection, arrives once, in order, at every
/// viewer, the killed node's included once it is back.
#[actix_web::test]
async fn a_killed_senders_node_loses_nothing_acknowledged() {
    let wca = FakeWca::start();
    let Some(mut cluster) = Cluster::start(3, &wca, |_| {}) else {
        return;
    };
    let app = cluster.app(wca);
    let (token, id) = sender_on(&app, 0).await;
    let mut sender = app.on(0).connect(&id, Some(&token)).await;
    let mut viewers = [
        Watcher::open(&app, 1, &id).await,
        Watcher::open(&app, 2, &id).await,
    ];
    // Acknowledged: every viewer has them.
    let mut sent = moves(1, 31);
    send_all(&mut sender, &sent).await;
    for viewer in &mut viewers {
        viewer.gets(&sent).await;
    }
    // In flight when the node dies: some, all or none of them are stored.
    let in_flight = moves(31, 51);
    send_all(&mut sender, &in_flight).await;
    cluster.kill(0);
    assert!(
        matches!(sender.next().await, Seen::Ended | Seen::Close(_)),
        "the killed node's socket ends"
    );

    let mut sender = app.on(1).connect(&id, Some(&token)).await;
    let after = moves(100, 121);
    send_all(&mut sender, &after).await;
    let mut kept = None;
    for viewer in &mut viewers {
        let before = viewer.until(&after[0]).await;
        assert_eq!(
            before,
            in_flight[..before.len()],
            "{}: what it had of the events in flight is a prefix of them",
            viewer.name
        );
        assert_eq!(
            *kept.get_or_insert(before.len()),
            before.len(),
            "the viewers agree"
        );
        viewer.gets(&after[1..]).await;
    }
    sent.extend(in_flight[..kept.unwrap()].iter().cloned());
    sent.extend(after);
    assert_eq!(recorded(&app, &id).await, sent);

    // The killed node comes back: it has the stream, every event, and live ones.
    cluster.restart(0);
    readiness_until(&app, 0, 200).await;
    let mut back = Watcher::resume(&app, 0, &id, 0).await;
    let mut resumed = Watcher::resume(&app, 0, &id, 30).await;
    back.gets(&sent[..30]).await;
    let last = moves(200, 205);
    send_all(&mut sender, &last).await;
    sent.extend(last.iter().cloned());
    back.gets(&sent[30..]).await;
    resumed.gets(&sent[30..]).await;
    for viewer in &mut viewers {
        viewer.gets(&last).await;
    }
    assert_eq!(recorded(&app, &id).await, sent);
}

/// NATS stopped mid-stream, then started again on the same port and store:
/// every socket stays open; the sender's events meanwhile each get the
/// error frame `storage unavailable` and reach nobody; every node is
/// unready while NATS is down and ready once it is back; then the same
/// sender socket's events reach every node's viewers at the next offsets,
/// with nothing stale before them.
#[actix_web::test]
async fn nats_stopped_mid_stream_refuses_then_flows_again() {
    let wca = FakeWca::start();
    let Some(mut cluster) = Cluster::start(2, &wca, |_| {}) else {
        return;
    };
    let app = cluster.app(wca);
    let (token, id) = sender_on(&app, 0).await;
    let mut sender = app.on(0).connect(&id, Some(&token)).await;
    let mut viewers = [
        Watcher::open(&app, 0, &id).await,
        Watcher::open(&app, 1, &id).await,
    ];
    let mut sent = moves(1, 21);
    send_all(&mut sender, &sent).await;
    for viewer in &mut viewers {
        viewer.gets(&sent).await;
    }

    cluster.nats.stop();
    for node in 0..2 {
        assert_eq!(
            readiness_until(&app, node, 503).await,
            json!({"ready": false, "reason": "storage unavailable"})
        );
    }
    let refused = moves(21, 26);
    send_all(&mut sender, &refused).await;
    for _ in &refused {
        assert_eq!(sender.next_frame().await, storage_unavailable());
    }

    cluster.nats.restart();
    for node in 0..2 {
        assert_eq!(
            readiness_until(&app, node, 200).await,
            json!({"ready": true})
        );
    }
    let after = moves(100, 121);
    send_all(&mut sender, &after).await;
    for viewer in &mut viewers {
        // The next event after the first twenty is the first sent after
        // the restart, at the next offset: none of the refused ones.
        viewer.gets(&after).await;
    }
    sent.extend(after);
    let mut late = Watcher::resume(&app, 1, &id, 10).await;
    late.gets(&sent[10..]).await;
    assert_eq!(recorded(&app, &id).await, sent);
}

/// NATS stopped and the sender's node killed while it is down, then NATS
/// back: nothing any viewer got is lost, the events sent while NATS was
/// down were refused to the sender and reach nobody, and the sender,
/// reconnected to a surviving node, goes on at the next offset for every
/// viewer, the killed node's included once it is back.
#[actix_web::test]
async fn nats_restart_and_a_killed_node_at_once_lose_nothing_acknowledged() {
    let wca = FakeWca::start();
    let Some(mut cluster) = Cluster::start(3, &wca, |_| {}) else {
        return;
    };
    let app = cluster.app(wca);
    let (token, id) = sender_on(&app, 0).await;
    let mut sender = app.on(0).connect(&id, Some(&token)).await;
    let mut viewers = [
        Watcher::open(&app, 1, &id).await,
        Watcher::open(&app, 2, &id).await,
    ];
    let mut sent = moves(1, 26);
    send_all(&mut sender, &sent).await;
    for viewer in &mut viewers {
        viewer.gets(&sent).await;
    }

    cluster.nats.stop();
    readiness_until(&app, 0, 503).await;
    let refused = moves(26, 29);
    send_all(&mut sender, &refused).await;
    for _ in &refused {
        assert_eq!(sender.next_frame().await, storage_unavailable());
    }
    cluster.kill(0);
    cluster.nats.restart();
    for node in 1..3 {
        readiness_until(&app, node, 200).await;
    }

    let mut sender = app.on(2).connect(&id, Some(&token)).await;
    let after = moves(100, 121);
    send_all(&mut sender, &after).await;
    for viewer in &mut viewers {
        viewer.gets(&after).await;
    }
    sent.extend(after);
    assert_eq!(recorded(&app, &id).await, sent);

    cluster.restart(0);
    readiness_until(&app, 0, 200).await;
    let mut back = Watcher::resume(&app, 0, &id, 0).await;
    back.gets(&sent).await;
    let last = moves(200, 203);
    send_all(&mut sender, &last).await;
    back.gets(&last).await;
    for viewer in &mut viewers {
        viewer.gets(&last).await;
    }
}
