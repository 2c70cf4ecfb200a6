//! The WebSocket protocol end to end: relay, replay, the reset guard, bad
//! frames, and the end of a stream.

use std::time::Duration;

use awc::ws::Message;
use serde_json::Value;

use crate::helpers::*;

/// A signed-in sender with a fresh stream.
async fn stream_with_sender(app: &TestApp) -> (String, String) {
    app.sender_with_stream(100, Some("2020SEND01"), "Sender")
        .await
}

/// Events go to every viewer in order, and to the sender's other sockets, but never back.
async fn events_are_relayed_in_order_without_echo(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut second_sender = app.connect(&id, Some(&token)).await;
    let mut viewers = vec![app.connect(&id, None).await, app.connect(&id, None).await];
    // A signed-in user who is not a sender of this stream is a viewer too.
    let (other, _) = app.sign_in(101, None, "Watcher").await;
    viewers.push(app.connect(&id, Some(&other)).await);

    for n in 0..20 {
        sender.send_json(&move_event(n)).await;
    }
    for viewer in &mut viewers {
        for n in 0..20 {
            assert_eq!(viewer.next_json().await, move_event(n));
        }
    }
    for n in 0..20 {
        assert_eq!(second_sender.next_json().await, move_event(n));
    }
    // The first frame the first sender sees is the second sender's event:
    // none of its own twenty came back before it.
    second_sender.send_json(&orientation_event(0.5)).await;
    assert_eq!(sender.next_json().await, orientation_event(0.5));
}

/// A viewer who joins late gets the last reset, orientation and move, in that order, then live events.
async fn late_viewers_get_the_replay_first(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut witness = app.connect(&id, None).await;
    for event in [
        move_event(1),
        reset_event(true),
        orientation_event(0.1),
        move_event(2),
        orientation_event(0.2),
    ] {
        sender.send_json(&event).await;
    }
    for _ in 0..5 {
        witness.next_json().await;
    }
    let mut late = app.connect(&id, None).await;
    // Replayed events carry the offsets they were relayed with.
    assert_eq!(late.next_json().await, reset_event(true));
    assert_eq!(late.last_offset, Some(2));
    assert_eq!(late.next_json().await, orientation_event(0.2));
    assert_eq!(late.last_offset, Some(5));
    assert_eq!(late.next_json().await, move_event(2));
    assert_eq!(late.last_offset, Some(4));
    sender.send_json(&move_event(3)).await;
    assert_eq!(late.next_json().await, move_event(3));
    assert_eq!(late.last_offset, Some(6));

    // A sender that connects gets no replay: the first thing it sees is live.
    let mut late_sender = app.connect(&id, Some(&token)).await;
    sender.send_json(&move_event(4)).await;
    assert_eq!(late_sender.next_json().await, move_event(4));
}

/// A reset with the same flag as an immediately preceding reset is dropped.
async fn repeated_resets_are_dropped(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    for event in [
        reset_event(true),
        reset_event(true),
        reset_event(false),
        move_event(1),
        reset_event(false),
    ] {
        sender.send_json(&event).await;
    }
    assert_eq!(viewer.next_json().await, reset_event(true));
    assert_eq!(viewer.next_json().await, reset_event(false));
    assert_eq!(viewer.next_json().await, move_event(1));
    assert_eq!(viewer.next_json().await, reset_event(false));
}

/// A viewer that sends anything is closed with 1008; the stream goes on.
async fn viewers_may_not_send(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut rude = app.connect(&id, None).await;
    let mut polite = app.connect(&id, None).await;
    rude.send_json(&move_event(1)).await;
    assert_eq!(
        rude.next_close().await,
        (1008, "not permitted to send".to_owned())
    );
    sender.send_json(&move_event(2)).await;
    assert_eq!(polite.next_json().await, move_event(2));
}

/// Bad frames from a sender get an error frame each; the socket stays open and good events still flow.
async fn bad_sender_frames_get_error_frames(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    let bad = [
        "not json",
        "[]",
        r#"{"event":"chat","data":{"text":"hi"}}"#,
        r#"{"event":"move","data":{"latestMove":"R"}}"#,
        r#"{"event":"orientation","data":{"quaternion":{"x":1},"timeStamp":1}}"#,
        r#"{"event":"reset","data":{"trackingOrientation":"maybe"}}"#,
    ];
    for frame in bad {
        sender.send_text(frame).await;
        let answer = sender.next_json().await;
        assert_eq!(answer["event"], "error", "for {frame}");
        assert!(
            answer["data"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "for {frame}"
        );
    }
    sender.send(Message::Binary(vec![1u8, 2, 3].into())).await;
    let answer = sender.next_json().await;
    assert!(answer["data"]["message"]
        .as_str()
        .unwrap()
        .contains("binary"));

    sender.send_json(&move_event(7)).await;
    assert_eq!(
        viewer.next_json().await,
        move_event(7),
        "only the good event reached the viewer"
    );
}

/// A frame over the size limit closes that socket with 1009.
async fn oversized_frames_close_the_socket(nodes: Nodes) {
    let app = nodes.spawn(|s| s.limits.max_frame_bytes = 1024).await;
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    let mut big = move_event(1);
    big["data"]["binaryState"] = Value::String("x".repeat(4096));
    sender.send_json(&big).await;
    assert_eq!(sender.next_close().await.0, 1009);
    honest.still_fine(20).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    sender.send_json(&move_event(2)).await;
    assert_eq!(viewer.next_json().await, move_event(2));
}

/// A sender over its rate gets `rate limit exceeded` error frames instead of relays.
async fn senders_are_rate_limited(nodes: Nodes) {
    let app = nodes
        .spawn(|s| {
            s.limits.sender_events_per_sec = 0.001;
            s.limits.sender_event_burst = 3.0;
        })
        .await;
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    for n in 0..5 {
        sender.send_json(&move_event(n)).await;
    }
    for _ in 0..2 {
        let answer = sender.next_json().await;
        assert_eq!(answer["data"]["message"], "rate limit exceeded");
    }
    for n in 0..3 {
        assert_eq!(viewer.next_json().await, move_event(n));
    }
    // The honest sender's budget is its own: a burst of 3 here too.
    honest.still_fine(3).await;
}

/// With no sender for the idle timeout, the stream ends: sockets closed with
/// 1000 `stream ended`, gone from the list, its socket URL 404.
async fn idle_streams_end(nodes: Nodes) {
    let app = nodes
        .spawn(|s| s.stream_idle_timeout = Duration::from_millis(700))
        .await;
    let (token, id) = stream_with_sender(&app).await;
    let mut viewer = app.connect(&id, None).await;
    assert_eq!(viewer.next_close().await, (1000, "stream ended".to_owned()));
    let listed = app.get("/v0/streams").await.body;
    assert_eq!(listed["streams"], serde_json::json!([]));
    assert_eq!(
        app.get(&format!("/v0/streams/{id}/socket")).await.status,
        404
    );
    // Its slot under the per-user limit is free again, and a new stream works.
    let again = app.create_stream(&token).await;
    assert_ne!(again, id);
}

/// A connected sender holds the stream open past the idle timeout; when it leaves, the countdown starts.
async fn a_connected_sender_keeps_the_stream(nodes: Nodes) {
    let app = nodes
        .spawn(|s| s.stream_idle_timeout = Duration::from_millis(700))
        .await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    // Events keep flowing for longer than the idle timeout.
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        sender.send_json(&move_event(n)).await;
        assert_eq!(viewer.next_json().await, move_event(n));
        n += 1;
        actix::clock::sleep(Duration::from_millis(50)).await; // pacing, not synchronisation
    }
    sender.send(Message::Close(None)).await;
    assert_eq!(viewer.next_close().await, (1000, "stream ended".to_owned()));
}

/// Every accepted event is appended to the stream's recording as one JSON line.
#[actix_web::test]
async fn accepted_events_are_recorded() {
    let app = spawn_app().await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    let events = [
        reset_event(false),
        reset_event(false),
        move_event(1),
        orientation_event(1.0),
    ];
    for event in &events {
        sender.send_json(event).await;
    }
    sender.send_text("garbage").await;
    for _ in 0..3 {
        viewer.next_json().await;
    }
    let path = app.dir.path().join("log/streams").join(format!("{id}.log"));
    let lines = recording_lines(&path);
    assert_eq!(
        lines.iter().map(sent_part).collect::<Vec<_>>(),
        vec![reset_event(false), move_event(1), orientation_event(1.0)]
    );
    let offsets: Vec<_> = lines.iter().map(|l| l["offset"].as_u64()).collect();
    assert_eq!(offsets, [Some(1), Some(2), Some(3)]);
    assert!(lines.iter().all(|l| l["receivedAt"].as_u64().is_some()));
}

/// A viewer whose connection dropped resumes with `?since=` the offset of
/// the last event it got: it gets what was sent meanwhile, once and in
/// order, then live events, and no replay.
async fn a_viewer_resumes_after_a_dropped_connection(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    for n in 1..=5 {
        sender.send_json(&move_event(n)).await;
    }
    for n in 1..=5 {
        assert_eq!(viewer.next_json().await, move_event(n));
    }
    let last = viewer.last_offset.expect("offsets");
    drop(viewer);
    for n in 6..=10 {
        sender.send_json(&move_event(n)).await;
    }
    // A witness that got them all, so they are recorded.
    let mut witness = app.try_resume(&id, "0").await.expect("the socket opens");
    for n in 1..=10 {
        assert_eq!(witness.next_json().await, move_event(n));
    }
    let mut viewer = app
        .try_resume(&id, &last.to_string())
        .await
        .expect("the socket opens");
    for n in 6..=10 {
        assert_eq!(viewer.next_json().await, move_event(n));
        assert_eq!(viewer.last_offset, Some(n));
    }
    sender.send_json(&move_event(11)).await;
    assert_eq!(viewer.next_json().await, move_event(11));
    assert_eq!(viewer.last_offset, Some(11));
}

/// `since` that is not a non-negative integer is refused with 400.
async fn a_bad_since_is_refused(nodes: Nodes) {
    let app = nodes.app().await;
    let (_, id) = stream_with_sender(&app).await;
    for bad in ["-1", "abc", "", "1.5", "%201", "99999999999999999999999"] {
        let res = app
            .get(&format!("/v0/streams/{id}/socket?since={bad}"))
            .await;
        assert_eq!(res.status, 400, "since={bad}");
        assert_eq!(
            res.body["error"], "since must be a non-negative integer",
            "since={bad}"
        );
    }
    assert!(app.try_resume(&id, "0").await.is_ok());
}

on_one_and_two_nodes! {
    events_are_relayed_in_order_without_echo,
    late_viewers_get_the_replay_first,
    repeated_resets_are_dropped,
    viewers_may_not_send,
    bad_sender_frames_get_error_frames,
    oversized_frames_close_the_socket,
    senders_are_rate_limited,
    idle_streams_end,
    a_connected_sender_keeps_the_stream,
    a_viewer_resumes_after_a_dropped_connection,
    a_bad_since_is_refused,
}
