//! The demo sender, `twizzle-demo`, as a child process against the server
//! binary on loopback: what a viewer of its stream receives, and how it ends.
//!
//! The server runs as a process of its own too: these tests wait for the
//! demo's output and exit on the test's thread, which an in-process server
//! needs free.

use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use twizzle_api_server::testkit::cube::{Cube, Move};

use crate::helpers::*;

/// The longest a whole demo run in these tests may take.
const RUN_BOUND: Duration = Duration::from_secs(60);

/// The server binary on port 0, without a WCA client secret if `dev` (so
/// with the development sign-in), else with one; and its `TestApp`.
fn start_server(dev: bool) -> (KillOnDrop, TestApp) {
    let dir = Arc::new(TempDir::new("api"));
    let wca = FakeWca::start();
    let (server, port, _logs) = start_binary_with(dir.path(), wca.origin(), |command| {
        if dev {
            command.env_remove("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET");
        }
    });
    (server, TestApp::attach(dir, wca, port))
}

/// The demo against `server` with `args`: the process and its output lines.
fn start_demo(
    server: &str,
    args: &[&str],
) -> (KillOnDrop, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_twizzle-demo"));
    command.arg("--server").arg(server).args(args);
    spawn_reading(&mut command)
}

/// The stream ID from the watch page line the demo prints, within the wait
/// bound; the lines before it.
fn watched_stream(stdout: &mpsc::Receiver<String>) -> (String, Vec<String>) {
    let mut seen = Vec::new();
    loop {
        let line = stdout
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no watch page line; the demo printed {seen:?}"));
        if let Some((_, id)) = line.split_once("/watch/") {
            return (id.trim().to_owned(), seen);
        }
        seen.push(line);
    }
}

/// Every line left in `lines` until its process closes it, within the wait bound.
fn rest(lines: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        out.push(line);
    }
    out
}

/// Fails unless `q` is a quaternion of four numbers of length 1 (within
/// the client's rounding to four decimals).
fn assert_unit_quaternion(q: &Value) {
    let parts: Vec<f64> = ["x", "y", "z", "w"]
        .iter()
        .map(|k| {
            q[k].as_f64()
                .unwrap_or_else(|| panic!("{k} of {q} is a number"))
        })
        .collect();
    let norm = parts.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "not a unit quaternion: {q}");
}

/// What a viewer saw of one demo run.
#[derive(Default)]
struct Seen {
    resets: usize,
    orientations: usize,
    moves: usize,
    /// Moves checked against a cube followed from a reset on.
    checked: usize,
    /// Solves followed whole, from a reset to a solved cube.
    solves_followed: usize,
}

/// A viewer's check of every event of a demo stream: each is a reset,
/// orientation or move of the shapes the client sends, time stamps do not
/// go back, and from a reset on, each move applied to a solved cube gives
/// the `binaryState` sent with it. The first reset a viewer gets may be the
/// replay of one sent before it connected, followed by the replay of a
/// later move: so the cube is followed from the first reset after a move.
/// Returns once `solves` solves were followed to a solved cube.
async fn follow(viewer: &mut WsClient, solves: usize) -> Seen {
    let deadline = Instant::now() + RUN_BOUND;
    let mut seen = Seen::default();
    let mut cube: Option<Cube> = None;
    let mut last_stamp = 0;
    while seen.solves_followed < solves {
        assert!(Instant::now() < deadline, "the demo took too long");
        let frame = viewer.next_json().await;
        let data = &frame["data"];
        match frame["event"].as_str() {
            Some("reset") => {
                assert_eq!(data["trackingOrientation"], true, "{frame}");
                seen.resets += 1;
                if seen.moves > 0 {
                    cube = Some(Cube::solved());
                }
            }
            Some("orientation") => {
                assert_unit_quaternion(&data["quaternion"]);
                let stamp = data["timeStamp"].as_u64().expect("a whole time stamp");
                assert!(stamp >= last_stamp, "time went back: {frame}");
                last_stamp = stamp;
                seen.orientations += 1;
            }
            Some("move") => {
                let m = Move::from_json(&data["latestMove"])
                    .unwrap_or_else(|| panic!("a face turn in {frame}"));
                assert!(m.amount == 1 || m.amount == -1, "a quarter turn: {frame}");
                let stamp = data["timeStamp"].as_u64().expect("a whole time stamp");
                assert!(stamp >= last_stamp, "time went back: {frame}");
                last_stamp = stamp;
                let state = data["binaryState"].as_str().expect("a binaryState");
                assert_eq!(state.split(' ').count(), 11, "11 bytes: {state}");
                seen.moves += 1;
                if let Some(cube) = &mut cube {
                    cube.apply(m);
                    assert_eq!(state, cube.binary_state(), "after {m} in {frame}");
                    seen.checked += 1;
                    if cube.is_solved() && seen.checked > 1 {
                        seen.solves_followed += 1;
                    }
                }
            }
            _ => panic!("not an event a client sends: {frame}"),
        }
    }
    seen
}

/// Two fast solves: a viewer gets resets, orientations and moves of the
/// client's shapes, whose states follow from the moves, ending solved; the
/// demo prints the watch page and exits 0.
#[actix_web::test]
async fn the_demo_streams_solves_a_viewer_can_follow() {
    let (_server, app) = start_server(true);
    let (mut demo, stdout, stderr) = start_demo(
        &app.address,
        &[
            "--solves",
            "2",
            "--speed",
            "20",
            "--seed",
            "11",
            "--name",
            "Test Demo",
        ],
    );
    let (stream_id, before) = watched_stream(&stdout);
    assert!(
        before
            .iter()
            .any(|line| line.contains("Test Demo (unverified)")),
        "{before:?}"
    );
    let listed = app.get("/v0/streams").await.body;
    assert_eq!(listed["streams"][0]["streamID"], stream_id.as_str());
    assert_eq!(
        listed["streams"][0]["senders"][0]["name"],
        "Test Demo (unverified)"
    );
    let mut viewer = app.connect(&stream_id, None).await;
    let seen = follow(&mut viewer, 1).await;
    assert!(seen.resets >= 1);
    assert!(
        seen.checked >= 20,
        "a whole solve checked: {}",
        seen.checked
    );
    assert!(
        seen.orientations >= 10,
        "orientation while the cube is held: {}",
        seen.orientations
    );

    let status = demo.wait_within(RUN_BOUND).expect("the demo ends");
    let out = rest(&stdout);
    let err = rest(&stderr);
    assert!(status.success(), "{status}: {out:?} {err:?}");
    assert!(
        out.iter().any(|line| line.contains("done: 2 solves")),
        "{out:?}"
    );
    assert!(err.is_empty(), "nothing went wrong: {err:?}");
}

/// SIGINT stops a looping demo cleanly, while it streams: it says so and
/// exits 0; its stream stays listed, to end after the idle timeout.
#[actix_web::test]
async fn ctrl_c_stops_the_demo_cleanly() {
    let (_server, app) = start_server(true);
    let (mut demo, stdout, _stderr) = start_demo(&app.address, &["--loop", "--speed", "20"]);
    let (stream_id, _) = watched_stream(&stdout);
    let mut viewer = app.connect(&stream_id, None).await;
    // Wait for a live event, so the demo is streaming when stopped.
    viewer.next_json().await;
    demo.signal("INT");
    let status = demo.wait_within(WAIT).expect("the demo stops at once");
    assert!(status.success(), "{status}");
    let out = rest(&stdout);
    assert!(
        out.iter().any(|line| line.contains("SIGINT received")),
        "{out:?}"
    );
    let listed = app.get("/v0/streams").await.body;
    assert_eq!(listed["streams"][0]["streamID"], stream_id.as_str());
}

/// A server without the development sign-in, or none at all: the demo
/// exits 1 saying so.
#[actix_web::test]
async fn the_demo_says_why_it_cannot_start() {
    // The test settings carry a WCA client secret: no development sign-in.
    let (_server, app) = start_server(false);
    let (mut demo, _stdout, stderr) = start_demo(&app.address, &["--solves", "1"]);
    let status = demo.wait_within(WAIT).expect("the demo gives up at once");
    assert_eq!(status.code(), Some(1));
    let err = rest(&stderr).join("\n");
    assert!(err.contains("no development sign-in"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (mut demo, _stdout, stderr) = start_demo(&nobody, &["--solves", "1"]);
    let status = demo.wait_within(WAIT).expect("the demo gives up at once");
    assert_eq!(status.code(), Some(1));
    let err = rest(&stderr).join("\n");
    assert!(err.contains("cannot reach the server"), "{err}");

    let (mut demo, _stdout, stderr) = start_demo(&nobody, &["--speed", "fast"]);
    let status = demo.wait_within(WAIT).expect("the demo refuses at once");
    assert_eq!(status.code(), Some(2));
    assert!(rest(&stderr).join("\n").contains("--speed"));
}

/// A server restart does not end the demo: it says the connection dropped,
/// connects again to the same stream, and its next events reach a viewer
/// of the restarted server.
#[actix_web::test]
async fn the_demo_connects_again_after_a_restart() {
    let dir = Arc::new(TempDir::new("api"));
    let wca = FakeWca::start();
    // The demo connects again to where it came from: the same port.
    let bind = format!("127.0.0.1:{}", free_port());
    let dev_on_port = |command: &mut Command| {
        command.env_remove("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET");
        command.args(["--bind", &bind]);
    };
    let (server, port, _logs) = start_binary_with(dir.path(), wca.origin(), dev_on_port);
    let address = format!("http://127.0.0.1:{port}");
    let (mut demo, stdout, _stderr) = start_demo(&address, &["--loop", "--speed", "20"]);
    let (stream_id, _) = watched_stream(&stdout);
    let app = TestApp::attach(dir.clone(), wca, port);
    let mut viewer = app.connect(&stream_id, None).await;
    viewer.next_json().await;

    server.signal("TERM");
    assert_eq!(viewer.next_close().await.0, 1001);
    drop(server);
    let TestApp { wca, .. } = app;
    let (_server, port_again, _logs) = start_binary_with(dir.path(), wca.origin(), dev_on_port);
    assert_eq!(port_again, port);
    let app = TestApp::attach(dir.clone(), wca, port);

    let deadline = Instant::now() + RUN_BOUND;
    let mut said = Vec::new();
    while !said
        .iter()
        .any(|line: &String| line.contains("connected again"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match stdout.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => panic!("the demo did not connect again: {said:?}"),
        }
    }
    assert!(
        said.iter().any(|line| line.contains("connecting again")),
        "{said:?}"
    );
    let mut viewer = app.connect(&stream_id, None).await;
    let before = viewer.next_json().await;
    // The replay may come first; a live event after it shows the demo sends.
    let live = viewer.next_json().await;
    assert!(
        ["move", "orientation", "reset"].contains(&live["event"].as_str().unwrap_or("")),
        "{before} then {live}"
    );
    assert_eq!(
        app.get(&format!("/v0/streams/{stream_id}")).await.body["live"],
        true
    );
    demo.signal("INT");
    assert!(demo.wait_within(WAIT).expect("the demo stops").success());
}
