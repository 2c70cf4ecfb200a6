//! Recordings: the NDJSON download, the list, deletion by a sender, and
//! recordings kept from before offsets existed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// A sender streams `n` moves on a new stream and a viewer sees them all
/// (so they are recorded); the sender's token, the stream and the sockets.
async fn stream_moves(app: &TestApp, n: u64) -> (String, String, WsClient, WsClient) {
    let (token, id) = app.sender_with_stream(1, Some("2010ANAA01"), "Ana").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    for k in 1..=n {
        sender.send_json(&move_event(k)).await;
    }
    for k in 1..=n {
        assert_eq!(viewer.next_json().await, move_event(k));
    }
    (token, id, sender, viewer)
}

/// Polls `check` until it holds, within the wait bound.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
}

/// The download is one line per recorded event, in order, with its offset
/// and receive time; `since` skips what the client has; a bad `since` and
/// an unknown stream are refused.
async fn a_recording_downloads_as_ndjson_from_any_offset(nodes: Nodes) {
    let app = nodes
        .spawn(|s| {
            s.limits.sender_events_per_sec = 1e9;
            s.limits.sender_event_burst = 1e9;
        })
        .await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // More than one chunk of the download.
    let (_, id, _sender, _viewer) = stream_moves(&app, 1_200).await;

    let (status, kind, lines) = app.get_ndjson(&format!("/v0/streams/{id}/recording")).await;
    assert_eq!((status, kind.as_str()), (200, "application/x-ndjson"));
    assert_eq!(lines.len(), 1_200);
    for (line, k) in lines.iter().zip(1u64..) {
        assert_eq!(line["offset"], k);
        assert!(
            line["receivedAt"].as_u64().is_some_and(|at| at >= before),
            "{line}"
        );
        assert_eq!(sent_part(line), move_event(k));
    }
    let keys: Vec<&str> = lines[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");

    let (_, _, tail) = app
        .get_ndjson(&format!("/v0/streams/{id}/recording?since=1195"))
        .await;
    let offsets: Vec<_> = tail.iter().map(|l| l["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [1196, 1197, 1198, 1199, 1200]);
    let (_, _, none) = app
        .get_ndjson(&format!("/v0/streams/{id}/recording?since=5000"))
        .await;
    assert!(none.is_empty());

    let bad = app
        .get(&format!("/v0/streams/{id}/recording?since=x"))
        .await;
    assert_eq!(bad.status, 400);
    let unknown = app
        .get("/v0/streams/twizzle_stream_0000000000000000/recording")
        .await;
    assert_eq!(
        (unknown.status, &unknown.body),
        (404, &json!({"error": "stream ID is unknown"}))
    );
}

/// The list shows every kept recording newest first: an open stream's
/// with `endedAt` null, an ended one's with its end; an ended stream's
/// recording still downloads.
async fn the_list_shows_open_and_ended_recordings(nodes: Nodes) {
    let app = nodes
        .spawn(|s| s.stream_idle_timeout = Duration::from_millis(300))
        .await;
    let (token, first, sender, viewer) = stream_moves(&app, 3).await;
    drop((sender, viewer));
    let second = app.create_stream(&token).await;
    // Its sender keeps it open.
    let _second_sender = app.connect(&second, Some(&token)).await;

    // The first stream ends once its sender is gone for the idle timeout.
    eventually("the first stream to end", || async {
        app.get(&format!("/v0/streams/{first}")).await.status == 404
    })
    .await;
    let listed = app.get("/v0/recordings").await;
    assert_eq!(listed.status, 200);
    let recordings = listed.body["recordings"].as_array().unwrap().clone();
    let ids: Vec<&str> = recordings
        .iter()
        .map(|r| r["streamID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
    let ended = &recordings[1];
    assert_eq!(ended["events"], 3);
    assert!(ended["bytes"].as_u64().unwrap() > 0);
    assert!(ended["endedAt"].as_u64().unwrap() >= ended["createdAt"].as_u64().unwrap());
    assert_eq!(ended["senders"][0]["name"], "Ana (2010ANAA01)");
    assert_eq!(recordings[0]["endedAt"], Value::Null);
    assert_eq!(recordings[0]["events"], 0);

    let (status, _, lines) = app
        .get_ndjson(&format!("/v0/streams/{first}/recording"))
        .await;
    assert_eq!((status, lines.len()), (200, 3));
}

/// Only a sender deletes a recording. An open stream goes on: its replay
/// stays for late viewers and it records again from its next event. An
/// ended stream's recording goes from the list and the download.
async fn a_sender_deletes_a_recording_and_the_stream_goes_on(nodes: Nodes) {
    let app = nodes
        .spawn(|s| s.stream_idle_timeout = Duration::from_millis(300))
        .await;
    let (token, id, mut sender, mut viewer) = stream_moves(&app, 5).await;
    let (other, _) = app.sign_in(2, None, "Bo").await;
    let path = format!("/v0/streams/{id}/recording");

    assert_eq!(app.delete_as(&path, None).await.status, 401);
    let refused = app.delete_as(&path, Some(&other)).await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.body["error"],
        "only a sender of this stream may do that"
    );
    let unknown = app
        .delete_as(
            "/v0/streams/twizzle_stream_0000000000000000/recording",
            Some(&token),
        )
        .await;
    assert_eq!(unknown.status, 404);

    assert_eq!(app.delete_as(&path, Some(&token)).await.status, 204);
    assert!(
        app.get_ndjson(&path).await.2.is_empty(),
        "nothing recorded now"
    );
    let mut late = app.connect(&id, None).await;
    assert_eq!(late.next_json().await, move_event(5), "the replay stays");
    assert_eq!(late.last_offset, Some(5));
    sender.send_json(&move_event(6)).await;
    assert_eq!(viewer.next_json().await, move_event(6));
    assert_eq!(viewer.last_offset, Some(6), "offsets go on");
    let (_, _, lines) = app.get_ndjson(&path).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["offset"], 6);

    // A viewer resuming from before the deletion hears of the gap.
    let mut resumed = app.try_resume(&id, "2").await.expect("the socket opens");
    assert_eq!(
        resumed.next_frame().await,
        json!({"event": "gap", "data": {"from": 3, "to": 6}})
    );

    drop((sender, viewer, late, resumed));
    eventually("the stream to end", || async {
        app.get(&format!("/v0/streams/{id}")).await.status == 404
    })
    .await;
    assert_eq!(app.delete_as(&path, Some(&other)).await.status, 403);
    assert_eq!(app.delete_as(&path, Some(&token)).await.status, 204);
    assert_eq!(app.get(&path).await.status, 404);
    let listed = app.get("/v0/recordings").await.body;
    assert_eq!(listed, json!({"recordings": []}));
    assert!(!app
        .dir
        .path()
        .join(format!("log/streams/{id}.log"))
        .exists());
}

/// A recording from before offsets (bare `{"event","data"}` lines, no
/// snapshot, not in the streams' journal) is listed with no senders and
/// downloads with each line's position as its offset.
#[actix_web::test]
async fn a_recording_from_before_offsets_stays_readable() {
    let dir = Arc::new(TempDir::new("api"));
    let folder = dir.path().join("log/streams");
    std::fs::create_dir_all(&folder).unwrap();
    let id = "twizzle_stream_00000000000000c1";
    let old: String = (1..=3)
        .map(|k| format!("{}\n", move_event(k)))
        .collect::<String>()
        + "{\"event\":\"reset\",\"data\":{\"trackingOrientation\":true}}\n";
    std::fs::write(folder.join(format!("{id}.log")), old).unwrap();
    let app = spawn_app_in(dir, FakeWca::start(), |_| {}).await;

    let listed = app.get("/v0/recordings").await.body;
    let recording = &listed["recordings"][0];
    assert_eq!(recording["streamID"], id);
    assert_eq!(recording["senders"], json!([]));
    assert_eq!(recording["events"], 4);
    assert!(recording["endedAt"].as_u64().is_some());

    let (status, _, lines) = app
        .get_ndjson(&format!("/v0/streams/{id}/recording?since=1"))
        .await;
    assert_eq!(status, 200);
    let offsets: Vec<_> = lines
        .iter()
        .map(|l| l["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3, 4]);
    assert_eq!(lines[0]["receivedAt"], Value::Null);
    assert_eq!(sent_part(&lines[0]), move_event(2));
    assert_eq!(sent_part(&lines[2]), reset_event(true));
}

/// With a retention of zero, an ended stream's recording goes at its end:
/// it leaves the list and the download answers 404.
async fn with_no_retention_an_ended_recording_goes_at_once(nodes: Nodes) {
    let app = nodes
        .spawn(|s| {
            s.stream_idle_timeout = Duration::from_millis(300);
            s.limits.recording_retention = Duration::ZERO;
        })
        .await;
    let (_, id, sender, viewer) = stream_moves(&app, 3).await;
    let path = format!("/v0/streams/{id}/recording");
    assert_eq!(app.get_ndjson(&path).await.2.len(), 3, "kept while open");
    drop((sender, viewer));
    eventually("the recording to go with its stream", || async {
        app.get(&path).await.status == 404
    })
    .await;
    // Every node: one that has not heard of the end yet (its watch of the
    // records is milliseconds behind) still lists the stream as open.
    eventually("no node to list it", || async {
        let none = json!({"recordings": []});
        // Two requests: on two nodes, one each.
        app.get("/v0/recordings").await.body == none && app.get("/v0/recordings").await.body == none
    })
    .await;
    assert!(!app
        .dir
        .path()
        .join(format!("log/streams/{id}.log"))
        .exists());
}

on_one_and_two_nodes! {
    a_recording_downloads_as_ndjson_from_any_offset,
    the_list_shows_open_and_ended_recordings,
    a_sender_deletes_a_recording_and_the_stream_goes_on,
    with_no_retention_an_ended_recording_goes_at_once,
}
