//! The watch page in a real headless Chromium: the list keeps itself
//! current, a stream's moves and status show live, a server restart costs
//! the page no move and repeats none, and an ended stream replays. Each
//! test drives one browser session (`helpers/browser.rs`) against a real
//! server; every wait looks at the page until it shows what is expected,
//! within a bound.
//!
//! This machine has no way to cubing.js's CDN, so the page shows its plain
//! view here; everything the tests read is in that view and in the 3D one
//! alike.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// A move event whose `latestMove` is `latest_move`, as a sender sends it.
fn move_with(latest_move: Value, n: u64) -> Value {
    json!({"event": "move", "data": {"latestMove": latest_move, "timeStamp": n, "binaryState": format!("state-{n}")}})
}

/// The script that reads the link to stream `id` in the list: its text, or null.
fn listed(id: &str) -> String {
    format!(
        "const a = document.querySelector('#streams a[href=\"/watch/{id}\"]'); \
         return a ? a.closest('li').textContent : null;"
    )
}

/// The list page shows a stream created after it loaded within seconds,
/// as a link to its page, with the sender's name as text (markup in a
/// name stays text), and whether a sender is connected.
#[actix_web::test]
async fn the_list_shows_a_new_stream() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    let (_, first) = app
        .sender_with_stream(1, Some("2020LIST01"), "First Lister")
        .await;
    browser.goto(&app.url("/watch/")).await;
    let shown = browser
        .wait_for("the first stream listed", &listed(&first), Value::is_string)
        .await;
    assert!(
        shown
            .as_str()
            .unwrap()
            .contains("First Lister (2020LIST01)"),
        "{shown}"
    );

    let name = r#"<img src=x id=injected> & "Co""#;
    let (token, second) = app.sender_with_stream(2, None, name).await;
    let shown = browser
        .wait_for("the new stream listed", &listed(&second), Value::is_string)
        .await;
    assert!(
        shown
            .as_str()
            .unwrap()
            .contains(&format!("{name} (unverified)")),
        "{shown}"
    );
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#injected, #streams img').length;")
            .await,
        0,
        "a name is shown as text, never as markup"
    );
    assert!(
        shown.as_str().unwrap().contains("idle"),
        "no sender yet: {shown}"
    );
    let _sender = app.connect(&second, Some(&token)).await;
    browser
        .wait_for("the stream listed as live", &listed(&second), |seen| {
            seen.as_str().is_some_and(|text| text.contains("live"))
        })
        .await;
    browser.screenshot("watch-list").await;
    browser.close().await;
}

/// The stream page shows `idle` until a sender connects, then `live`;
/// `#moves` grows with each move in either shape a sender sends (cubing.js's
/// move object or its notation as a string); the sender's name and the
/// viewers are shown. A screenshot is left for a person to look at.
#[actix_web::test]
async fn a_stream_shows_its_moves_live() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    let (token, id) = app
        .sender_with_stream(3, Some("2019LIVE01"), "Live Solver")
        .await;
    browser.goto(&app.url(&format!("/watch/{id}"))).await;
    browser.wait_text("status", "idle").await;
    browser
        .wait_text("senders", "Live Solver (2019LIVE01)")
        .await;
    browser
        .wait_text("viewers", "1 viewer (this page included)")
        .await;

    let mut sender = app.connect(&id, Some(&token)).await;
    browser.wait_text("status", "live").await;
    let moves = [
        (
            json!({"type": "blockMove", "family": "R", "amount": 1}),
            "R",
        ),
        (
            json!({"type": "blockMove", "family": "U", "amount": -1}),
            "U'",
        ),
        (json!({"family": "R", "amount": 2}), "R2"),
        (json!({"family": "R", "amount": 1, "innerLayer": 2}), "2R"),
        (
            json!({"family": "r", "amount": -2, "innerLayer": 3, "outerLayer": 2}),
            "2-3r2'",
        ),
        (json!("F'"), "F'"),
        (json!("D2"), "D2"),
        (json!({"family": "x"}), "x"),
    ];
    let mut expected = Vec::new();
    for (n, (latest_move, notation)) in moves.into_iter().enumerate() {
        sender.send_json(&move_with(latest_move, n as u64)).await;
        expected.push(notation);
        browser.wait_text("moves", &expected.join(" ")).await;
    }
    sender.send_json(&orientation_event(1.0)).await;
    browser
        .wait_text(
            "orientation",
            "quaternion x 0.000, y 0.000, z 0.000, w 1.000",
        )
        .await;
    browser.wait_text("last-move", "x").await;
    browser.wait_text("move-count", "8 moves").await;
    browser.wait_text("status", "live").await;
    let path = browser.screenshot("watch-stream").await;
    eprintln!("the stream page: {}", path.display());
    browser.close().await;
}

/// The real binary restarts (SIGTERM, then started again on the same data
/// directory and port): the page says `reconnecting`, then `live` again
/// once the sender is back, and `#moves` has every move sent before and
/// after the restart exactly once, in order.
#[actix_web::test]
async fn a_restart_loses_no_move_and_repeats_none() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let dir = Arc::new(TempDir::new("api"));
    let wca = FakeWca::start();
    // The page reconnects to where it came from: the same port after the restart.
    let bind = format!("127.0.0.1:{}", free_port());
    let on_port = |command: &mut std::process::Command| {
        command.args(["--bind", &bind]);
    };
    let (child, port, _logs) = start_binary_with(dir.path(), wca.origin(), on_port);
    let app = TestApp::attach(dir.clone(), wca, port);
    let (token, id) = app.sender_with_stream(4, None, "Re Starter").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    sender.send_json(&reset_event(false)).await;
    for (n, notation) in ["R", "U'", "F2"].into_iter().enumerate() {
        sender
            .send_json(&move_with(json!(notation), n as u64))
            .await;
    }
    browser.goto(&app.url(&format!("/watch/{id}"))).await;
    browser.wait_text("status", "live").await;
    // A late viewer is replayed the last move only: that is where it starts.
    browser.wait_text("moves", "F2").await;
    sender.send_json(&move_with(json!("L"), 3)).await;
    browser.wait_text("moves", "F2 L").await;

    child.signal("TERM");
    assert_eq!(
        sender.next_close().await,
        (1001, "server restarting".to_owned())
    );
    browser.wait_text("status", "reconnecting").await;
    drop(child);

    let TestApp { wca, .. } = app;
    let (_child, port_again, _logs) = start_binary_with(dir.path(), wca.origin(), on_port);
    assert_eq!(port_again, port);
    let app = TestApp::attach(dir.clone(), wca, port);
    let mut sender = app.connect(&id, Some(&token)).await;
    for (n, notation) in ["2R", "B'", "D2"].into_iter().enumerate() {
        sender
            .send_json(&move_with(json!(notation), 10 + n as u64))
            .await;
    }
    browser.wait_text("status", "live").await;
    browser.wait_text("moves", "F2 L 2R B' D2").await;
    browser.wait_text("move-count", "5 moves").await;
    browser.close().await;
}

/// A stream whose sender left ends after the idle timeout: the page open on
/// it says `ended` and offers the recording, which plays at its recorded
/// pace (a pause in the recording is a pause in the replay) with `replay`
/// in `#status`, pauses and goes on; a page opened after the end replays
/// at once, naming the sender, and the list names the recording.
#[actix_web::test]
async fn an_ended_stream_replays_its_recording() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app_with(|s| s.stream_idle_timeout = Duration::from_secs(1)).await;
    let (token, id) = app.sender_with_stream(5, None, "Re Player").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    browser.goto(&app.url(&format!("/watch/{id}"))).await;
    browser.wait_text("status", "live").await;
    sender.send_json(&reset_event(false)).await;
    sender.send_json(&move_with(json!("R"), 1)).await;
    sender.send_json(&move_with(json!("U"), 2)).await;
    browser.wait_text("moves", "R U").await;
    // The recording's pace, which the replay must keep: a pause here.
    actix::clock::sleep(Duration::from_millis(1500)).await;
    sender.send_json(&move_with(json!("F"), 3)).await;
    sender.send_json(&move_with(json!("L'"), 4)).await;
    browser.wait_text("moves", "R U F L'").await;
    drop(sender);

    browser.wait_text("status", "ended").await;
    browser
        .wait_for(
            "the recording offered",
            "return document.getElementById('replay').hidden ? null : document.getElementById('replay-play').textContent;",
            |seen| seen == "Play the recording",
        )
        .await;
    browser.click("replay-play").await;
    browser.wait_text("status", "replay").await;
    // The replay stops where the recording paused.
    browser.wait_text("moves", "R U").await;
    browser.click("replay-pause").await;
    browser
        .wait_text("status-detail", "The replay is paused.")
        .await;
    assert_eq!(browser.text("status").await, "replay");
    browser.click("replay-play").await;
    browser.wait_text("moves", "R U F L'").await;
    browser
        .wait_text("status-detail", "The replay has finished.")
        .await;

    browser.goto(&app.url(&format!("/watch/{id}"))).await;
    browser.wait_text("status", "replay").await;
    browser.wait_text("moves", "R U F L'").await;
    browser.wait_text("replay-position", "event 5 of 5").await;
    browser.wait_text("senders", "Re Player (unverified)").await;
    browser.screenshot("watch-replay").await;

    // The list names the recording, ended, as a link to that page.
    browser.goto(&app.url("/watch/")).await;
    let script = format!(
        "const a = document.querySelector('#recordings a[href=\"/watch/{id}\"]'); \
         return a ? a.closest('li').textContent : null;"
    );
    browser
        .wait_for("the recording listed", &script, |seen| {
            seen.as_str().is_some_and(|text| {
                text.contains("Re Player (unverified)")
                    && text.contains("ended")
                    && text.contains("5 events")
            })
        })
        .await;
    browser.close().await;
}
