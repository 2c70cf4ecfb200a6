//! Actors that do not answer in time: a store that hangs the thread of the
//! token actor, of the registry, or of a stream, as a disk that stops
//! answering would. What needs the stuck actor answers 503 `server busy`
//! once the deadline has passed, the readiness check names it, everything
//! else goes on, and it all works again once the store does.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;
use twizzle_actors::ids::{StreamId, UserId};
use twizzle_actors::replay::Snapshot;
use twizzle_actors::store::memory::{MemoryStreams, MemoryUsers, NoRecording};
use twizzle_actors::store::{
    Chunk, Cursor, EndedRecording, Kept, Opened, RecordingStore, StoreFuture, Stores, StreamChange,
    StreamRecord, StreamStore, UserChange, UserState, UserStore,
};

use crate::helpers::*;

/// The deadline of these tests' servers: short, so that a test sees it pass
/// in well under a second, and long enough for an actor that is not stuck.
const DEADLINE: Duration = Duration::from_millis(500);

/// A store call never waits at a shut gate longer than this, so that a
/// test that fails with its gate shut leaves no thread stuck for long.
const STUCK_AT_MOST: Duration = Duration::from_secs(20);

/// Where a store's calls wait, blocking the thread they run on, while it is
/// shut: a disk that hangs.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<GateState>, Condvar)>);

#[derive(Default)]
struct GateState {
    shut: bool,
    /// Calls waiting at the gate now.
    waiting: usize,
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        self.0
             .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Shuts the gate until the returned guard is dropped.
    fn shut(&self) -> Shut {
        self.state().shut = true;
        Shut(self.clone())
    }

    /// Waits while the gate is shut.
    fn pass(&self) {
        let mut state = self.state();
        state.waiting += 1;
        let (mut state, _) = self
            .0
             .1
            .wait_timeout_while(state, STUCK_AT_MOST, |state| state.shut)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.waiting -= 1;
    }

    /// Returns once a call waits at the gate, within the wait bound.
    async fn stuck(&self) {
        let deadline = std::time::Instant::now() + WAIT;
        while self.state().waiting == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no call reached the gate within {WAIT:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(5)).await; // polling a flag
        }
    }
}

/// Keeps its gate shut; opens it when dropped, however the test ends.
struct Shut(Gate);

impl Drop for Shut {
    fn drop(&mut self) {
        self.0.state().shut = false;
        self.0 .0 .1.notify_all();
    }
}

/// Users in memory whose changes wait at `gate`.
struct GatedUsers {
    gate: Gate,
    inner: MemoryUsers,
}

impl UserStore for GatedUsers {
    fn load(&mut self) -> StoreFuture<UserState> {
        self.inner.load()
    }

    fn apply(&mut self, changes: Vec<UserChange>) -> StoreFuture<()> {
        self.gate.pass();
        self.inner.apply(changes)
    }

    fn check_writable(&mut self) -> StoreFuture<()> {
        self.inner.check_writable()
    }
}

/// Streams in memory whose changes wait at `streams`, and whose recordings
/// wait at `recordings` for each event.
struct GatedStreams {
    streams: Gate,
    recordings: Gate,
    inner: MemoryStreams,
}

impl StreamStore for GatedStreams {
    fn load(&mut self) -> StoreFuture<Vec<StreamRecord>> {
        self.inner.load()
    }

    fn record(&mut self, change: StreamChange) -> StoreFuture<()> {
        self.streams.pass();
        self.inner.record(change)
    }

    fn sync(&mut self) -> StoreFuture<()> {
        self.inner.sync()
    }

    fn check_writable(&mut self) -> StoreFuture<()> {
        self.inner.check_writable()
    }

    fn sweep_recordings(&mut self, keep: Duration) -> StoreFuture<usize> {
        self.inner.sweep_recordings(keep)
    }

    fn recording(&mut self, _: &StreamId) -> Box<dyn RecordingStore + Send> {
        Box::new(GatedRecording {
            gate: self.recordings.clone(),
            inner: NoRecording,
        })
    }

    fn ended_recordings(&mut self) -> StoreFuture<Vec<EndedRecording>> {
        self.inner.ended_recordings()
    }

    fn ended_senders(&mut self, id: &StreamId) -> Option<Vec<UserId>> {
        self.inner.ended_senders(id)
    }

    fn delete_recording(&mut self, id: &StreamId) -> StoreFuture<()> {
        self.inner.delete_recording(id)
    }

    fn read_recording(
        &mut self,
        id: &StreamId,
        after: u64,
        cursor: Cursor,
        max: usize,
    ) -> StoreFuture<Option<Chunk>> {
        self.inner.read_recording(id, after, cursor, max)
    }
}

/// A recording that keeps nothing, whose appends wait at `gate`.
struct GatedRecording {
    gate: Gate,
    inner: NoRecording,
}

impl RecordingStore for GatedRecording {
    fn open(&mut self) -> StoreFuture<Opened> {
        self.inner.open()
    }

    fn recorded_bytes(&self) -> u64 {
        self.inner.recorded_bytes()
    }

    /// Waits on the calling thread: a store that blocks its caller, as a
    /// broken implementation might.
    fn append(&mut self, lines: Vec<u8>) -> StoreFuture<()> {
        self.gate.pass();
        self.inner.append(lines)
    }

    fn checkpoint(&mut self, snapshot: &Snapshot, kept: Kept) -> StoreFuture<()> {
        self.inner.checkpoint(snapshot, kept)
    }

    fn clear(&mut self, snapshot: &Snapshot, kept: Kept) -> StoreFuture<()> {
        self.inner.clear(snapshot, kept)
    }

    fn sync(&mut self) -> StoreFuture<()> {
        self.inner.sync()
    }

    fn read(&self, after: u64, cursor: Cursor, max: usize) -> StoreFuture<Chunk> {
        self.inner.read(after, cursor, max)
    }
}

/// The gates of a server's stores.
#[derive(Default)]
struct Gates {
    users: Gate,
    streams: Gate,
    recordings: Gate,
}

/// A server on stores behind `gates`, with the short deadline.
async fn spawn_gated(gates: &Gates) -> TestApp {
    let stores = Stores {
        users: Box::new(GatedUsers {
            gate: gates.users.clone(),
            inner: MemoryUsers,
        }),
        streams: Box::new(GatedStreams {
            streams: gates.streams.clone(),
            recordings: gates.recordings.clone(),
            inner: MemoryStreams,
        }),
        engine: None,
    };
    spawn_app_on(stores, DEADLINE).await
}

/// `answer` is the 503 of an actor past its deadline.
fn assert_busy(answer: &Answer, what: &str) {
    assert_eq!(
        (answer.status, &answer.body),
        (503, &json!({"error": "server busy"})),
        "{what}"
    );
}

/// The readiness check answers 503 with `reason`.
async fn assert_not_ready(app: &TestApp, reason: &str) {
    let answer = app.get("/v0/infra/readiness_check").await;
    assert_eq!(
        (answer.status, answer.body),
        (503, json!({"ready": false, "reason": reason}))
    );
}

/// The readiness check answers 200 within the wait bound: the stuck actor
/// has caught up with what queued behind it.
async fn ready_again(app: &TestApp) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let answer = app.get("/v0/infra/readiness_check").await;
        if answer.status == 200 {
            assert_eq!(answer.body, json!({"ready": true}));
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready again within {WAIT:?}: {}",
            answer.body
        );
    }
}

/// A token actor stuck on its store: the sign-in that got it stuck and the
/// requests queued behind it (authenticating a token) answer `server busy`
/// after the deadline; the list, the liveness check and the streams go on;
/// readiness says `token actor busy`. Once the store answers, all is well.
#[actix_web::test]
async fn a_stuck_token_actor_answers_server_busy() {
    let gates = Gates::default();
    let app = spawn_gated(&gates).await;
    let (token, id) = app.sender_with_stream(1, None, "Stuck").await;
    let mut honest = HonestPair::start(&app).await;
    ready_again(&app).await;

    let shut = gates.users.shut();
    let code = app.code_for(WcaAccount {
        id: 2,
        wca_id: None,
        name: "Second".to_owned(),
    });
    let answer = app.try_callback(&code).await.expect_err("a stuck sign-in");
    assert_busy(&answer, "the sign-in the token actor is stuck on");
    let answer = app
        .post(&format!("/v0/streams?twizzleAccessToken={token}"))
        .await;
    assert_busy(&answer, "a stream creation, which authenticates first");
    assert!(
        app.try_connect(&id, Some(&token)).await.is_err(),
        "a sender socket, which authenticates, is refused"
    );
    let listed = app.get("/v0/streams").await;
    assert_eq!(listed.status, 200, "the list needs only the registry");
    assert_eq!(listed.body["streams"][0]["streamID"], id.as_str());
    assert_eq!(app.get("/v0/infra/liveness_check").await.status, 200);
    let mut viewer = app.connect(&id, None).await;
    assert_not_ready(&app, "token actor busy").await;
    honest.still_fine(20).await;

    drop(shut);
    ready_again(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    sender.send_json(&move_event(1)).await;
    assert_eq!(viewer.next_json().await, move_event(1));
    app.create_stream(&token).await;
}

/// A registry stuck on its store: the creation that got it stuck, the list
/// and socket admissions answer `server busy` after the deadline; sign-in
/// goes on; readiness says `registry busy`. Once the store answers, the
/// creation that was past its deadline has taken effect after all.
#[actix_web::test]
async fn a_stuck_registry_answers_server_busy() {
    let gates = Gates::default();
    let app = spawn_gated(&gates).await;
    let (token, _) = app.sign_in(1, None, "Stuck").await;
    let first = app.create_stream(&token).await;
    let mut honest = HonestPair::start(&app).await;

    let shut = gates.streams.shut();
    let answer = app
        .post(&format!("/v0/streams?twizzleAccessToken={token}"))
        .await;
    assert_busy(&answer, "the creation the registry is stuck on");
    assert_busy(&app.get("/v0/streams").await, "the list");
    let socket = app.get(&format!("/v0/streams/{first}/socket")).await;
    assert_busy(&socket, "a socket's admission");
    app.sign_in(2, None, "Other").await;
    assert_not_ready(&app, "registry busy").await;
    // Events go from session to stream: the registry is not on their way.
    honest.still_fine(20).await;

    drop(shut);
    ready_again(&app).await;
    let listed = app.get("/v0/streams").await;
    assert_eq!(listed.status, 200);
    let streams = listed.body["streams"].as_array().unwrap();
    assert_eq!(
        streams.len(),
        3,
        "the late creation took effect, after the honest stream: {streams:?}"
    );
    assert_eq!(streams[0]["streamID"], first.as_str());
    assert_eq!(streams[1]["streamID"], honest.stream_id.as_str());
    app.connect(&first, None).await;
}

/// A stream whose thread is stuck (its recording hangs an append): the
/// readiness check says `stream thread busy`, while the list, sign-in and
/// stream creation go on; once the recording answers, the event goes out.
#[actix_web::test]
async fn a_stuck_stream_thread_is_not_ready() {
    let gates = Gates::default();
    let app = spawn_gated(&gates).await;
    let (token, id) = app.sender_with_stream(1, None, "Stuck").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    sender.send_json(&move_event(1)).await;
    assert_eq!(viewer.next_json().await, move_event(1));

    let shut = gates.recordings.shut();
    sender.send_json(&move_event(2)).await;
    gates.recordings.stuck().await;
    assert_not_ready(&app, "stream thread busy").await;
    assert_eq!(app.get("/v0/streams").await.status, 200);
    app.sign_in(2, None, "Other").await;

    drop(shut);
    assert_eq!(viewer.next_json().await, move_event(2));
    ready_again(&app).await;
}
