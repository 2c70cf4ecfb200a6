//! The real binary with its data directory on a small tmpfs: a disk that
//! fills up during sign-ins, a start on a full disk and one on a read-only
//! disk. What was handed out keeps working, what needs a write answers 503
//! with what is wrong, and writes work again once the disk does.
//!
//! Mounting needs root. Where it is not allowed the tests say why and pass,
//! except on CI (`CI` set), where a skipped test would hide a regression.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use twizzle_api_server::testkit::Tmpfs;

use crate::helpers::*;

/// How much the filler grows by between two sign-ins: the 2 MiB disk fills
/// up after a few dozen of them.
const CHUNK: usize = 60 * 1024;
/// A tmpfs hands out whole pages, so a journal's last page has room left
/// after the disk is full: this many writes in a row may still succeed
/// before one needs a page of its own.
const SLACK_WRITES: usize = 80;

/// The size of the tmpfs the tests run the server's data directory on.
const DISK_SIZE: &str = "2m";

/// The server's data directory on the tmpfs.
fn data_dir(disk: &Tmpfs) -> PathBuf {
    disk.path().join("data")
}

/// A file that takes up the disk's free space, and gives it back.
struct Filler {
    path: PathBuf,
    file: Option<File>,
    /// The last write ran out of space.
    full: bool,
}

impl Filler {
    fn new(disk: &Tmpfs) -> Filler {
        Filler {
            path: disk.path().join("filler"),
            file: None,
            full: false,
        }
    }

    /// Writes `bytes` more; true once the disk is full.
    fn grow(&mut self, bytes: usize) -> bool {
        let path = &self.path;
        let file = self.file.get_or_insert_with(|| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap()
        });
        match file.write_all(&vec![0xAA; bytes]) {
            Ok(()) => self.full = false,
            Err(e) if e.kind() == io::ErrorKind::StorageFull => self.full = true,
            Err(e) => panic!("the filler: {e}"),
        }
        self.full
    }

    /// Takes up every free page.
    fn fill(&mut self) {
        for _ in 0..1000 {
            if self.grow(CHUNK) {
                return;
            }
        }
        panic!("the disk did not fill up");
    }

    /// Deletes the filler, freeing what it took.
    fn free(&mut self) {
        self.file = None;
        std::fs::remove_file(&self.path).unwrap();
        self.full = false;
    }
}

/// The binary on the tmpfs, attached; as many streams per user as the
/// tests create.
fn start(disk: &Tmpfs, wca: FakeWca) -> (KillOnDrop, TestApp, mpsc::Receiver<String>) {
    let (child, port, logs) = start_binary_with(&data_dir(disk), wca.origin(), |command| {
        command.env("TWIZZLE_MAX_STREAMS_PER_USER", "1000");
    });
    (
        child,
        // The data directory is the tmpfs's; this one only has to outlive the app.
        TestApp::attach(Arc::new(TempDir::new("disk-app")), wca, port),
        logs,
    )
}

/// Stops the binary with SIGTERM; it must exit 0 within two seconds.
fn stop(child: &mut KillOnDrop) {
    child.signal("TERM");
    let status = child
        .wait_within(Duration::from_secs(2))
        .expect("exit within 2 seconds of SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// Starts the binary again on `disk`, with the fake WCA of `app` (whose
/// users it signed in), once the last run has ended.
fn restart(disk: &Tmpfs, app: TestApp) -> (KillOnDrop, TestApp, mpsc::Receiver<String>) {
    let TestApp { wca, .. } = app;
    start(disk, wca)
}

/// Kills the binary with SIGKILL, so that nothing gets written on the way
/// out; checks that both journals hold only whole lines, and restarts.
fn kill_and_restart(
    child: &mut KillOnDrop,
    disk: &Tmpfs,
    app: TestApp,
) -> (KillOnDrop, TestApp, mpsc::Receiver<String>) {
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    assert_whole_lines(disk, "users.jsonl");
    assert_whole_lines(disk, "streams.jsonl");
    restart(disk, app)
}

/// Signs in a new user numbered `n` (callback, then claim): the access
/// token, or the refusal and, if only the claim was refused, the claim token.
async fn sign_in_new(app: &TestApp, n: u64) -> Result<String, (Answer, Option<String>)> {
    // Names of one width: each sign-in writes lines of the same length, so
    // that one refused for want of room is not followed by a shorter one
    // that fits.
    let code = app.code_for(WcaAccount {
        id: 10_000 + n,
        wca_id: None,
        name: format!("Disk {n:05}"),
    });
    let claim = app.try_callback(&code).await.map_err(|a| (a, None))?;
    match app.try_claim(&claim).await {
        Ok((token, _)) => Ok(token),
        Err(answer) => Err((answer, Some(claim))),
    }
}

/// `answer` is a 503 with `{"error": message}`.
fn assert_storage(answer: &Answer, message: &str) {
    assert_eq!(
        (answer.status, &answer.body),
        (503, &json!({ "error": message })),
        "a write the disk cannot take"
    );
}

/// Every line of the journal `name` in the data directory is whole JSON:
/// nothing torn, nothing glued to another line. Returns how many there are.
fn assert_whole_lines(disk: &Tmpfs, name: &str) -> usize {
    let text = std::fs::read_to_string(data_dir(disk).join(name)).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{name} ends in a torn line"
    );
    let lines: Vec<&str> = text.lines().collect();
    for (number, line) in lines.iter().enumerate() {
        // The line itself is not shown: it holds token hashes.
        assert!(
            serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
            "{name} line {} is not one JSON object",
            number + 1
        );
    }
    lines.len()
}

/// `POST /v0/streams` with `token`, answered.
async fn create_with(app: &TestApp, token: &str) -> Answer {
    app.post(&format!("/v0/streams?twizzleAccessToken={token}"))
        .await
}

/// A stream of `token`'s with a reset, an orientation and a move accepted
/// (a viewer saw them); returns its ID and the events.
async fn stream_with_events(app: &TestApp, token: &str) -> (String, [Value; 3]) {
    let id = app.create_stream(token).await;
    let events = [reset_event(true), orientation_event(0.5), move_event(7)];
    let mut sender = app.connect(&id, Some(token)).await;
    let mut viewer = app.connect(&id, None).await;
    for event in &events {
        sender.send_json(event).await;
    }
    for event in &events {
        assert_eq!(&viewer.next_json().await, event);
    }
    (id, events)
}

/// `token`, a sender of stream `id`, sends `event` and its other sender
/// socket receives it: the stream accepted it.
async fn send_accepted(app: &TestApp, id: &str, token: &str, event: &Value) {
    let mut sender = app.connect(id, Some(token)).await;
    let mut other = app.connect(id, Some(token)).await;
    sender.send_json(event).await;
    assert_eq!(&other.next_json().await, event);
}

/// A new viewer of stream `id` is replayed `events` first.
async fn assert_replay(app: &TestApp, id: &str, events: &[Value]) {
    let mut viewer = app.connect(id, None).await;
    for event in events {
        assert_eq!(&viewer.next_json().await, event, "the replay");
    }
}

/// What a test writes while the disk still has room, to read it back once
/// the disk is full or read-only.
struct Kept {
    /// The sender's access token.
    token: String,
    /// The sender as the stream lists it.
    info: Value,
    /// Another user's access token.
    other: String,
    /// The sender's stream.
    id: String,
    /// The events the stream accepted.
    events: [Value; 3],
}

/// Signs in a sender (`wca_id`, `name`) and another user, and has the
/// sender record a stream with events.
async fn keep(app: &TestApp, wca_id: &str, name: &str) -> Kept {
    let (token, info) = app.sign_in(1, Some(wca_id), name).await;
    let (other, _) = app.sign_in(2, None, "Other").await;
    let (id, events) = stream_with_events(app, &token).await;
    Kept {
        token,
        info,
        other,
        id,
        events,
    }
}

/// A new viewer of `kept`'s stream is replayed its reset and orientation,
/// then the move sent once the disk was fine again: the recording went on.
async fn assert_recording_went_on(app: &TestApp, kept: &Kept) {
    let [reset, orientation, _] = &kept.events;
    assert_replay(
        app,
        &kept.id,
        &[reset.clone(), orientation.clone(), move_event(100)],
    )
    .await;
}

/// What `kept` holds still reads, none of it needing a write: the stream
/// is listed with its sender, a new viewer is replayed its events, the
/// sender still sends, and both users' tokens authenticate on its socket.
async fn check_reads_work(app: &TestApp, kept: &Kept) {
    let Kept {
        token,
        info: sender_info,
        other,
        id,
        events,
    } = kept;
    let others = [token.clone(), other.clone()];
    let live = app.get("/v0/infra/liveness_check").await;
    assert_eq!(live.status, 200, "the liveness check answers");
    let listed = app.get("/v0/streams").await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        without_counts(&listed.body["streams"]),
        json!([{"streamID": id, "senders": [sender_info]}])
    );
    assert_replay(app, id, events).await;
    let mut viewer = app.connect(id, None).await;
    for _ in events {
        viewer.next_json().await;
    }
    let mut sender = app.connect(id, Some(token)).await;
    sender.send_json(&move_event(99)).await;
    assert_eq!(viewer.next_json().await, move_event(99), "a sender's event");
    for (n, other) in others.iter().enumerate() {
        assert!(
            app.try_connect(id, Some(other)).await.is_ok(),
            "token {n} authenticates"
        );
    }
    let unknown = "twizzle_access_token_00000000000000000000000000000000";
    assert!(
        app.try_connect(id, Some(unknown)).await.is_err(),
        "an unknown token is refused, so tokens are checked"
    );
}

/// Sign-ins go on while the disk fills up: once it is full they answer 503
/// `storage full` (never 500), and once it has room again they work again.
/// After a `kill -9` and a restart every access token ever handed out
/// works, and every line of the users' journal is whole.
#[actix_web::test]
async fn a_disk_filling_up_during_sign_ins_loses_no_token() {
    let Some(disk) = Tmpfs::mount("disk", DISK_SIZE) else {
        return;
    };
    let mut filler = Filler::new(&disk);
    let (mut child, app, first_logs) = start(&disk, FakeWca::start());

    let mut tokens = Vec::new();
    let mut unclaimed = Vec::new();
    let mut refused_in_a_row = 0;
    let mut n = 0;
    while refused_in_a_row < 3 {
        assert!(n < 200, "sign-ins were still taken on a full disk");
        if !filler.full {
            filler.grow(CHUNK);
        }
        match sign_in_new(&app, n).await {
            Ok(token) => {
                tokens.push(token);
                refused_in_a_row = 0;
            }
            Err((answer, claim)) => {
                assert_storage(&answer, "storage full");
                unclaimed.extend(claim);
                refused_in_a_row += 1;
            }
        }
        n += 1;
    }
    assert!(
        filler.full,
        "sign-ins were refused before the disk was full"
    );
    assert!(
        tokens.len() >= 20,
        "signed in while the disk filled up: {}",
        tokens.len()
    );

    filler.free();
    for claim in &unclaimed {
        let (token, _) = app
            .try_claim(claim)
            .await
            .unwrap_or_else(|a| panic!("a claim refused on the full disk: {}", a.status));
        tokens.push(token);
    }
    for m in 0..3 {
        let token = sign_in_new(&app, n + m)
            .await
            .unwrap_or_else(|(a, _)| panic!("sign-in with room again: {} {}", a.status, a.body));
        tokens.push(token);
    }

    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    assert_whole_lines(&disk, "users.jsonl");

    let (_child, app, logs) = restart(&disk, app);
    for (n, token) in tokens.iter().enumerate() {
        let answer = create_with(&app, token).await;
        assert_eq!(
            answer.status,
            200,
            "token {n} of {} works after the restart: {}",
            tokens.len(),
            answer.body
        );
    }
    assert_whole_lines(&disk, "users.jsonl");
    let all_logs: Vec<String> = first_logs.try_iter().chain(logs.try_iter()).collect();
    for token in &tokens {
        assert_no_token_in(&all_logs, token);
    }
}

/// A start on a full disk: the server starts, the stream and its replay
/// are back, tokens authenticate; new sign-ins and streams answer 503
/// `storage full` until the disk has room, then work without a restart.
#[actix_web::test]
async fn a_start_on_a_full_disk_serves_and_recovers() {
    let Some(disk) = Tmpfs::mount("disk", DISK_SIZE) else {
        return;
    };
    let mut filler = Filler::new(&disk);
    let (mut child, app, _logs) = start(&disk, FakeWca::start());
    let kept = keep(&app, "2001FULL01", "Full Disk").await;
    filler.fill();
    stop(&mut child);

    let (mut child, app, _logs) = restart(&disk, app);
    // Whatever the start freed (a compaction that shrank a file) is taken
    // up again.
    filler.fill();
    check_reads_work(&app, &kept).await;

    let mut refused = None;
    for n in 0..SLACK_WRITES as u64 {
        if let Err((answer, _)) = sign_in_new(&app, n).await {
            refused = Some(answer);
            break;
        }
    }
    assert_storage(&refused.expect("a sign-in refused"), "storage full");
    let mut refused = None;
    for _ in 0..SLACK_WRITES {
        let answer = create_with(&app, &kept.other).await;
        if answer.status != 200 {
            refused = Some(answer);
            break;
        }
    }
    assert_storage(&refused.expect("a stream creation refused"), "storage full");

    filler.free();
    let token_after = sign_in_new(&app, 1000)
        .await
        .unwrap_or_else(|(a, _)| panic!("sign-in with room again: {} {}", a.status, a.body));
    assert_eq!(create_with(&app, &kept.other).await.status, 200);
    send_accepted(&app, &kept.id, &kept.token, &move_event(100)).await;

    let (_child, app, _logs) = kill_and_restart(&mut child, &disk, app);
    assert_eq!(create_with(&app, &token_after).await.status, 200);
    // Recording went on once the disk had room.
    assert_recording_went_on(&app, &kept).await;
}

/// A start on a read-only disk: the server starts, the stream and its
/// replay are back, tokens authenticate; writes answer 503 `storage
/// read-only` until the disk is writable again, then work without a restart
/// and survive the next one.
#[actix_web::test]
async fn a_start_on_a_read_only_disk_serves_and_recovers() {
    let Some(disk) = Tmpfs::mount("disk", DISK_SIZE) else {
        return;
    };
    let (mut child, app, _logs) = start(&disk, FakeWca::start());
    let kept = keep(&app, "2001READ01", "Read Only").await;
    // Nothing may be open for writing when the disk turns read-only.
    stop(&mut child);
    disk.remount("ro");

    let (mut child, app, _logs) = restart(&disk, app);
    check_reads_work(&app, &kept).await;
    let (answer, claim) = sign_in_new(&app, 1).await.expect_err("a read-only sign-in");
    assert!(claim.is_none(), "the callback itself is refused");
    assert_storage(&answer, "storage read-only");
    assert_storage(&create_with(&app, &kept.other).await, "storage read-only");

    disk.remount("rw");
    let token_after = sign_in_new(&app, 2)
        .await
        .unwrap_or_else(|(a, _)| panic!("sign-in on a writable disk: {} {}", a.status, a.body));
    let created = create_with(&app, &kept.other).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let second = created.body["streamID"].as_str().unwrap().to_owned();
    send_accepted(&app, &kept.id, &kept.token, &move_event(100)).await;

    let (_child, app, _logs) = kill_and_restart(&mut child, &disk, app);
    assert_eq!(create_with(&app, &token_after).await.status, 200);
    let listed = app.get("/v0/streams").await.body;
    let ids: Vec<&str> = listed["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["streamID"].as_str())
        .collect();
    assert!(
        ids.starts_with(&[kept.id.as_str(), second.as_str()]),
        "both streams are back: {ids:?}"
    );
    // Recording went on once the disk was writable.
    assert_recording_went_on(&app, &kept).await;
}

/// The readiness check answers `answer` (status and body).
async fn assert_readiness(app: &TestApp, status: u16, body: Value) {
    let answer = app.get("/v0/infra/readiness_check").await;
    assert_eq!((answer.status, answer.body), (status, body), "readiness");
}

/// A disk that fills up while the server runs: readiness answers 503
/// `storage full` while it is full (though what is kept still serves) and
/// 200 again once it has room, without a restart.
#[actix_web::test]
async fn readiness_says_storage_full_until_the_disk_has_room() {
    let Some(disk) = Tmpfs::mount("disk", DISK_SIZE) else {
        return;
    };
    let (_child, app, _logs) = start(&disk, FakeWca::start());
    let (token, _) = app.sign_in(1, None, "Ready").await;
    assert_readiness(&app, 200, json!({"ready": true})).await;

    let filler = disk.fill();
    let not_ready = json!({"ready": false, "reason": "storage full"});
    assert_readiness(&app, 503, not_ready.clone()).await;
    assert_eq!(app.get("/v0/infra/liveness_check").await.status, 200);
    assert_eq!(app.get("/v0/streams").await.status, 200);
    assert_readiness(&app, 503, not_ready).await;

    std::fs::remove_file(filler).unwrap();
    assert_readiness(&app, 200, json!({"ready": true})).await;
    assert_eq!(create_with(&app, &token).await.status, 200);
}

/// A start on a read-only disk: readiness answers 503 `storage read-only`
/// until the disk is writable again, then 200 without a restart, and
/// writes work.
#[actix_web::test]
async fn readiness_says_read_only_until_the_disk_is_writable() {
    let Some(disk) = Tmpfs::mount("disk", DISK_SIZE) else {
        return;
    };
    let (mut child, app, _logs) = start(&disk, FakeWca::start());
    let (token, _) = app.sign_in(1, None, "Ready").await;
    // Nothing may be open for writing when the disk turns read-only.
    stop(&mut child);
    disk.remount("ro");

    let (_child, app, _logs) = restart(&disk, app);
    let not_ready = json!({"ready": false, "reason": "storage read-only"});
    assert_readiness(&app, 503, not_ready.clone()).await;
    assert_eq!(app.get("/v0/infra/liveness_check").await.status, 200);
    assert_readiness(&app, 503, not_ready).await;

    disk.remount("rw");
    assert_readiness(&app, 200, json!({"ready": true})).await;
    assert_eq!(create_with(&app, &token).await.status, 200);
    sign_in_new(&app, 2)
        .await
        .unwrap_or_else(|(a, _)| panic!("sign-in on a writable disk: {} {}", a.status, a.body));
}
