//! What survives a restart: users, access tokens, unexpired claim tokens,
//! and open streams with their latest events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// A token handed out before a clean stop still works after a start on the same data directory.
#[actix_web::test]
async fn tokens_survive_a_restart() {
    let app = spawn_app().await;
    let (token, info) = app.sign_in(11, Some("2011REST01"), "Re Start").await;
    let code = app.code_for(WcaAccount {
        id: 12,
        wca_id: None,
        name: "Pending".to_owned(),
    });
    let pending_claim = app.callback(&code).await;
    app.handle
        .as_ref()
        .expect("an in-process server")
        .shutdown()
        .await;
    let TestApp { dir, wca, .. } = app;

    let app = spawn_app_in(Arc::clone(&dir), wca, |_| {}).await;
    let res = app.post_as("/v0/streams", &token).await;
    assert_eq!(res.status, 200, "the token still works");
    let answer = app
        .post(&format!("/v0/claim?claimToken={pending_claim}"))
        .await;
    assert_eq!(answer.status, 200, "an unredeemed claim token still works");
    assert_eq!(answer.body["userInfo"]["name"], "Pending (unverified)");
    let (again, info_again) = app.sign_in(11, Some("2011REST01"), "Re Start").await;
    assert!(again == token, "the same account keeps its token");
    assert_eq!(info_again, info);
}

/// The real binary on SIGTERM: every socket is closed with 1001 `server
/// restarting`, it exits 0 within two seconds even with a couple of thousand
/// sockets open, and on the next start the stream is back: same ID and
/// senders, the same replay for a new viewer, and the sender can go on.
#[actix_web::test]
async fn sigterm_closes_sockets_and_the_stream_comes_back() {
    let dir = Arc::new(TempDir::new("api"));
    let wca = FakeWca::start();
    let (mut child, port, logs) = start_binary(dir.path(), wca.origin());
    let app = TestApp::attach(dir.clone(), wca, port);
    let (token, info) = app.sign_in(31, Some("2031TERM01"), "Sig Term").await;
    let id = app.create_stream(&token).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewers = Vec::new();
    for _ in 0..2000 {
        viewers.push(app.connect(&id, None).await);
    }
    let events = [
        reset_event(true),
        orientation_event(0.5),
        move_event(1),
        move_event(2),
    ];
    for event in &events {
        sender.send_json(event).await;
    }
    for viewer in viewers.iter_mut().step_by(97) {
        for event in &events {
            assert_eq!(&viewer.next_json().await, event);
        }
    }

    let signalled = Instant::now();
    child.signal("TERM");
    let status = child
        .wait_within(Duration::from_secs(2))
        .expect("exit within 2 seconds of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert_eq!(
        sender.next_close().await,
        (1001, "server restarting".to_owned())
    );
    for viewer in viewers.iter_mut().step_by(7) {
        loop {
            match viewer.next().await {
                Seen::Text(_) => continue, // events not yet read
                Seen::Close(Some(reason)) => {
                    assert_eq!(u16::from(reason.code), 1001);
                    assert_eq!(reason.description.as_deref(), Some("server restarting"));
                    break;
                }
                other => panic!("expected a close frame, saw {other:?}"),
            }
        }
    }
    drop(viewers);
    assert_no_token_in(&logs.try_iter().collect::<Vec<_>>(), &token);

    let TestApp { wca, .. } = app;
    let (_child, port, _logs) = start_binary(dir.path(), wca.origin());
    let app = TestApp::attach(dir.clone(), wca, port);
    check_stream_is_back(&app, &token, &info, &id, &events[..]).await;
    let recording = recording_lines(&dir, &id);
    assert!(
        recording.iter().all(|l| l.is_ok()),
        "a clean stop leaves whole lines"
    );
}

/// The real binary killed with SIGKILL in the middle of a burst of events:
/// on the next start the token works, the stream is back with its senders,
/// a new viewer is replayed the last recorded events, and the recording is
/// whole JSON lines but for at most a torn last one.
#[actix_web::test]
async fn kill_9_mid_traffic_loses_nothing_before_it() {
    let dir = Arc::new(TempDir::new("api"));
    let wca = FakeWca::start();
    let (mut child, port, logs) = start_binary(dir.path(), wca.origin());
    let app = TestApp::attach(dir.clone(), wca, port);
    let (token, info) = app.sign_in(21, None, "Killed").await;
    let id = app.create_stream(&token).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    sender.send_json(&reset_event(false)).await;
    sender.send_json(&orientation_event(0.25)).await;
    for n in 0..200 {
        sender.send_json(&move_event(n)).await;
    }
    // Everything so far has been relayed, so it has been accepted.
    for _ in 0..202 {
        viewer.next_json().await;
    }
    // More traffic in flight when the process dies.
    for n in 200..400 {
        sender.send_json(&move_event(n)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let first_logs: Vec<String> = logs.try_iter().collect();

    let lines = recording_lines(&dir, &id);
    let whole = lines.len() - usize::from(lines.last().is_some_and(|l| l.is_err()));
    assert!(
        lines[..whole].iter().all(|l| l.is_ok()),
        "only the last line may be torn"
    );
    assert!(
        whole >= 202,
        "events relayed before the kill are recorded: {whole} lines"
    );
    let last_move = lines[..whole]
        .iter()
        .rev()
        .find_map(|l| l.as_ref().ok().filter(|v| v["event"] == "move"))
        .cloned()
        .unwrap();

    let TestApp { wca, .. } = app;
    let (_child, port, logs) = start_binary(dir.path(), wca.origin());
    let app = TestApp::attach(dir.clone(), wca, port);
    let replay = [reset_event(false), orientation_event(0.25), last_move];
    check_stream_is_back(&app, &token, &info, &id, &replay).await;
    assert!(
        recording_lines(&dir, &id).iter().all(|l| l.is_ok()),
        "the restart cut the torn line off"
    );

    // A viewer that had the first 202 events resumes after them: it gets
    // every recorded event after those, once, in order, then live ones.
    let mut resumed = app.try_resume(&id, "202").await.expect("the socket opens");
    let after: Vec<serde_json::Value> = recording_lines(&dir, &id)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|line| line["offset"].as_u64().is_some_and(|offset| offset > 202))
        .collect();
    assert!(
        !after.is_empty(),
        "events after the first 202 were recorded"
    );
    for line in &after {
        assert_eq!(resumed.next_json().await, sent_part(line));
        assert_eq!(resumed.last_offset, line["offset"].as_u64());
    }
    let mut sender = app.connect(&id, Some(&token)).await;
    sender.send_json(&move_event(10_000)).await;
    assert_eq!(resumed.next_json().await, move_event(10_000));
    let last = after.last().and_then(|line| line["offset"].as_u64());
    assert_eq!(resumed.last_offset, last.map(|offset| offset + 1));

    let all_logs: Vec<String> = first_logs.into_iter().chain(logs.try_iter()).collect();
    assert!(!all_logs.is_empty(), "the server logged");
    assert_no_token_in(&all_logs, &token);
}

/// After a restart: the token works, the stream is listed with the same
/// senders, a new viewer gets `replay`, and the sender's new events flow.
async fn check_stream_is_back(
    app: &TestApp,
    token: &str,
    info: &serde_json::Value,
    id: &str,
    replay: &[serde_json::Value],
) {
    let listed = app.get("/v0/streams").await.body;
    assert_eq!(
        without_counts(&listed["streams"]),
        serde_json::json!([{"streamID": id, "senders": [info]}])
    );
    let mut viewer = app.connect(id, None).await;
    let (resets, rest): (Vec<_>, Vec<_>) = replay.iter().partition(|e| e["event"] == "reset");
    let orientations: Vec<_> = rest
        .iter()
        .filter(|e| e["event"] == "orientation")
        .collect();
    let moves: Vec<_> = rest.iter().filter(|e| e["event"] == "move").collect();
    for expected in [
        resets.last(),
        orientations.last().copied(),
        moves.last().copied(),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(viewer.next_json().await, sent_part(expected));
    }
    let mut sender = app.connect(id, Some(token)).await;
    sender.send_json(&move_event(9999)).await;
    assert_eq!(viewer.next_json().await, move_event(9999));
    let res = app.post_as("/v0/streams", token).await;
    assert_eq!(res.status, 200, "the token still works");
}

/// Each line of a stream's recording, parsed.
fn recording_lines(dir: &TempDir, id: &str) -> Vec<Result<serde_json::Value, serde_json::Error>> {
    let text =
        std::fs::read_to_string(dir.path().join("log/streams").join(format!("{id}.log"))).unwrap();
    text.split_inclusive('\n')
        .map(serde_json::from_str)
        .collect()
}
