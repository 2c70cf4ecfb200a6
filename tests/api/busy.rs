//! Actors that do not answer in time: a store that hangs the thread of the
//! token actor or of the registry, as a disk that stops answering would.
//! What needs the stuck actor answers 503 `server busy` once the deadline
//! has passed, everything else goes on, and it all works again once the
//! store does.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;
use twizzle_actors::ids::StreamId;
use twizzle_actors::store::memory::{MemoryStreams, MemoryUsers};
use twizzle_actors::store::{
    RecordingStore, StoreFuture, Stores, StreamChange, StreamRecord, StreamStore, UserChange,
    UserState, UserStore,
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
        let state = self.state();
        let _open = self
            .0
             .1
            .wait_timeout_while(state, STUCK_AT_MOST, |state| state.shut);
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

/// Streams in memory whose changes wait at `gate`.
struct GatedStreams {
    gate: Gate,
    inner: MemoryStreams,
}

impl StreamStore for GatedStreams {
    fn load(&mut self) -> StoreFuture<Vec<StreamRecord>> {
        self.inner.load()
    }

    fn record(&mut self, change: StreamChange) -> StoreFuture<()> {
        self.gate.pass();
        self.inner.record(change)
    }

    fn sync(&mut self) -> StoreFuture<()> {
        self.inner.sync()
    }

    fn check_writable(&mut self) -> StoreFuture<()> {
        self.inner.check_writable()
    }

    fn recording(&mut self, id: &StreamId) -> Box<dyn RecordingStore + Send> {
        self.inner.recording(id)
    }
}

/// The gates of a server's stores.
#[derive(Default)]
struct Gates {
    users: Gate,
    streams: Gate,
}

/// A server on stores behind `gates`, with the short deadline.
async fn spawn_gated(gates: &Gates) -> TestApp {
    let stores = Stores {
        users: Box::new(GatedUsers {
            gate: gates.users.clone(),
            inner: MemoryUsers,
        }),
        streams: Box::new(GatedStreams {
            gate: gates.streams.clone(),
            inner: MemoryStreams,
        }),
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

/// A token actor stuck on its store: the sign-in that got it stuck and the
/// requests queued behind it (authenticating a token) answer `server busy`
/// after the deadline; the list, the liveness check and the streams go on.
/// Once the store answers, all is well.
#[actix_web::test]
async fn a_stuck_token_actor_answers_server_busy() {
    let gates = Gates::default();
    let app = spawn_gated(&gates).await;
    let (token, _) = app.sign_in(1, None, "Stuck").await;
    let id = app.create_stream(&token).await;

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

    drop(shut);
    let mut sender = app.connect(&id, Some(&token)).await;
    sender.send_json(&move_event(1)).await;
    assert_eq!(viewer.next_json().await, move_event(1));
    app.create_stream(&token).await;
}

/// A registry stuck on its store: the creation that got it stuck, the list
/// and socket admissions answer `server busy` after the deadline; sign-in
/// goes on. Once the store answers, the creation that was past its
/// deadline has taken effect after all.
#[actix_web::test]
async fn a_stuck_registry_answers_server_busy() {
    let gates = Gates::default();
    let app = spawn_gated(&gates).await;
    let (token, _) = app.sign_in(1, None, "Stuck").await;
    let first = app.create_stream(&token).await;

    let shut = gates.streams.shut();
    let answer = app
        .post(&format!("/v0/streams?twizzleAccessToken={token}"))
        .await;
    assert_busy(&answer, "the creation the registry is stuck on");
    assert_busy(&app.get("/v0/streams").await, "the list");
    let socket = app.get(&format!("/v0/streams/{first}/socket")).await;
    assert_busy(&socket, "a socket's admission");
    app.sign_in(2, None, "Other").await;

    drop(shut);
    let listed = app.get("/v0/streams").await;
    assert_eq!(listed.status, 200);
    let streams = listed.body["streams"].as_array().unwrap();
    assert_eq!(
        streams.len(),
        2,
        "the late creation took effect: {streams:?}"
    );
    assert_eq!(streams[0]["streamID"], first.as_str());
    app.connect(&first, None).await;
}
