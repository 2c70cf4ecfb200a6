//! One node in cluster mode: the real binary with `TWIZZLE_NATS_URL`, its
//! state in a real `nats-server`'s JetStream (one per test, on its own
//! port and store). It survives `kill -9` with nothing in its data
//! directory, and while NATS is away it says so (readiness 503, `storage
//! unavailable`) and comes back by itself.
//!
//! These need `nats-server` (`.ci/run` installs it); where it is missing a
//! developer's run says so and skips, and under CI that fails the test.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use twizzle_actors::testkit::NatsServer;

use crate::helpers::*;

/// The binary on `nats`, with the data directory `dir` (which it must not use).
fn start_on_nats(
    dir: &TempDir,
    wca: &FakeWca,
    nats: &NatsServer,
    dev: bool,
) -> (KillOnDrop, u16, std::sync::mpsc::Receiver<String>) {
    start_binary_with(dir.path(), wca.origin(), |command| {
        command.env("TWIZZLE_NATS_URL", nats.url());
        if dev {
            // No WCA secret: the development sign-in is on.
            command.env_remove("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET");
        }
    })
}

/// The stream's recording as downloaded: each line parsed.
async fn download(app: &TestApp, id: &str, since: Option<u64>) -> Vec<Value> {
    let path = match since {
        Some(since) => format!("/v0/streams/{id}/recording?since={since}"),
        None => format!("/v0/streams/{id}/recording"),
    };
    let (status, kind, lines) = app.get_ndjson(&path).await;
    assert_eq!(status, 200, "{lines:?}");
    assert_eq!(kind, "application/x-ndjson");
    lines
}

#[actix_web::test]
async fn a_node_on_nats_keeps_users_streams_and_recordings_across_kill_9() {
    let Some(nats) = NatsServer::start("api-kill") else {
        return;
    };
    let dir = Arc::new(TempDir::new("api-nats"));
    let wca = FakeWca::start();
    let (mut child, port, logs) = start_on_nats(&dir, &wca, &nats, false);
    let app = TestApp::attach(dir.clone(), wca, port);
    let (token, info) = app.sign_in(31, Some("2015NATS01"), "Nat").await;
    let id = app.create_stream(&token).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    let mut sent = vec![reset_event(false), orientation_event(0.5)];
    sent.extend((1..=20).map(move_event));
    for event in &sent {
        sender.send_json(event).await;
    }
    for (n, event) in sent.iter().enumerate() {
        assert_eq!(&viewer.next_json().await, event);
        assert_eq!(viewer.last_offset, Some(n as u64 + 1));
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let first_logs: Vec<String> = logs.try_iter().collect();

    let TestApp { wca, .. } = app;
    let (_child, port, logs) = start_on_nats(&dir, &wca, &nats, false);
    let app = TestApp::attach(dir.clone(), wca, port);
    // The stream is back, with its sender, and the token works.
    let listed = app.get("/v0/streams").await.body;
    assert_eq!(
        without_counts(&listed["streams"]),
        json!([{"streamID": id, "senders": [info]}])
    );
    let answer = app.get(&format!("/v0/streams/{id}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // A new viewer gets the replay with its offsets.
    let mut late = app.connect(&id, None).await;
    for (event, offset) in [(&sent[0], 1), (&sent[1], 2), (&sent[21], 22)] {
        assert_eq!(&late.next_json().await, event);
        assert_eq!(late.last_offset, Some(offset));
    }
    // A viewer that had the first 10 events resumes after them.
    let mut resumed = app.try_resume(&id, "10").await.expect("the socket opens");
    for (n, event) in sent.iter().enumerate().skip(10) {
        assert_eq!(&resumed.next_json().await, event);
        assert_eq!(resumed.last_offset, Some(n as u64 + 1));
    }
    // The sender goes on where it was.
    let mut sender = app.connect(&id, Some(&token)).await;
    sender.send_json(&move_event(21)).await;
    for socket in [&mut late, &mut resumed] {
        assert_eq!(socket.next_json().await, move_event(21));
        assert_eq!(socket.last_offset, Some(23));
    }
    sent.push(move_event(21));
    // The recording downloads whole, and from an offset.
    let lines = download(&app, &id, None).await;
    assert_eq!(lines.len(), sent.len());
    for (n, (line, event)) in lines.iter().zip(&sent).enumerate() {
        assert_eq!(line["offset"], n as u64 + 1);
        assert!(line["receivedAt"].is_u64(), "{line}");
        assert_eq!(&sent_part(line), event);
    }
    let tail = download(&app, &id, Some(20)).await;
    let offsets: Vec<u64> = tail.iter().map(|l| l["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [21, 22, 23]);
    // Signing in again finds the same user (by the WCA account) and token.
    let (again, again_info) = app.sign_in(31, Some("2015NATS01"), "Nat").await;
    assert_eq!(again_info, info);
    assert_eq!(again, token);
    let res = app.post_as("/v0/streams", &token).await;
    assert_eq!(res.status, 200, "the token still works: {}", res.body);

    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(kept.is_empty(), "nothing in the data directory: {kept:?}");
    let all_logs: Vec<String> = first_logs.into_iter().chain(logs.try_iter()).collect();
    assert_no_token_in(&all_logs, &token);
}

/// Polls the readiness check until it answers `status`, within a bound;
/// returns its body.
async fn readiness_until(app: &TestApp, status: u16) -> Value {
    let deadline = Instant::now() + WAIT * 3;
    loop {
        let answer = app.get("/v0/infra/readiness_check").await;
        if answer.status == status {
            return answer.body;
        }
        assert!(
            Instant::now() < deadline,
            "readiness still {} {}",
            answer.status,
            answer.body
        );
        actix::clock::sleep(std::time::Duration::from_millis(50)).await; // polling the check
    }
}

#[actix_web::test]
async fn while_nats_is_away_the_node_is_unready_and_answers_storage_unavailable() {
    let Some(mut nats) = NatsServer::start("api-away") else {
        return;
    };
    let dir = Arc::new(TempDir::new("api-nats-away"));
    let wca = FakeWca::start();
    let (_child, port, _logs) = start_on_nats(&dir, &wca, &nats, true);
    let app = TestApp::attach(dir.clone(), wca, port);
    let answer = app.get("/v0/auth/dev?name=Away").await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    let location = answer.headers.get("location").unwrap().to_str().unwrap();
    let claim = location.split("claimToken=").nth(1).unwrap().to_owned();
    let (token, _) = app.try_claim(&claim).await.ok().expect("the claim redeems");
    assert_eq!(readiness_until(&app, 200).await, json!({"ready": true}));
    let id = app.create_stream(&token).await;

    nats.stop();
    assert_eq!(
        readiness_until(&app, 503).await,
        json!({"ready": false, "reason": "storage unavailable"})
    );
    let asked = Instant::now();
    let refused = app.post_as("/v0/streams", &token).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body, json!({"error": "storage unavailable"}));
    let refused = app.get("/v0/auth/dev?name=Other").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body, json!({"error": "storage unavailable"}));
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(2),
        "refused at once, not after the actors' deadline"
    );
    // What needs no write still works: the open stream is listed and takes sockets.
    let listed = app.get("/v0/streams").await.body;
    assert_eq!(listed["streams"][0]["streamID"], id.as_str());
    let _viewer = app.connect(&id, None).await;

    nats.restart();
    readiness_until(&app, 200).await;
    let answer = app.post_as("/v0/streams", &token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// An ended stream's recording on NATS: listed with its size, downloaded,
/// still there for the next node on the same NATS, and deleted by its
/// sender, after which it is neither listed nor downloaded.
#[actix_web::test]
async fn ended_recordings_on_nats_are_listed_kept_and_deleted() {
    let Some(nats) = NatsServer::start("api-ended") else {
        return;
    };
    let dir = Arc::new(TempDir::new("api-nats-ended"));
    let quick = |s: &mut twizzle_api_server::config::Settings| {
        s.nats_url = Some(nats.url());
        s.stream_idle_timeout = std::time::Duration::from_millis(300);
    };
    let app = spawn_app_in(dir.clone(), FakeWca::start(), quick).await;
    let (token, info) = app.sign_in(41, None, "Ended").await;
    let id = app.create_stream(&token).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    for n in 1..=3 {
        sender.send_json(&move_event(n)).await;
    }
    for n in 1..=3 {
        assert_eq!(viewer.next_json().await, move_event(n));
    }
    drop(sender);
    assert_eq!(viewer.next_close().await, (1000, "stream ended".to_owned()));
    let listed = app.get("/v0/recordings").await.body;
    let recordings = listed["recordings"].as_array().unwrap();
    assert_eq!(recordings.len(), 1, "{listed}");
    let ended = &recordings[0];
    assert_eq!(ended["streamID"], id.as_str());
    assert_eq!(ended["senders"], json!([info]));
    assert_eq!(ended["events"], 3);
    let lines = download(&app, &id, None).await;
    let bytes: usize = lines.iter().map(|l| l.to_string().len() + 1).sum();
    assert_eq!(ended["bytes"], bytes as u64, "each line and its newline");
    assert!(ended["endedAt"].as_u64().unwrap() >= ended["createdAt"].as_u64().unwrap());
    app.handle.as_ref().unwrap().shutdown().await;

    // The next node on the same NATS has it too, and its sender deletes it.
    let TestApp { wca, .. } = app;
    let app = spawn_app_in(dir.clone(), wca, quick).await;
    let listed = app.get("/v0/recordings").await.body;
    assert_eq!(listed["recordings"][0]["streamID"], id.as_str());
    assert_eq!(download(&app, &id, Some(2)).await.len(), 1);
    let path = format!("/v0/streams/{id}/recording");
    let (other, _) = app.sign_in(42, None, "Other").await;
    assert_eq!(app.delete_as(&path, Some(&other)).await.status, 403);
    assert_eq!(app.delete_as(&path, Some(&token)).await.status, 204);
    assert_eq!(
        app.get("/v0/recordings").await.body,
        json!({"recordings": []})
    );
    let (status, _, _) = app.get_ndjson(&path).await;
    assert_eq!(status, 404);
}
