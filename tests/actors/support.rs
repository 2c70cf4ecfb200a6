//! What the actor tests share: a bounded wait, an inbox a test can await,
//! stand-in sockets, event builders, stream and registry helpers and
//! temporary directories.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use actix::prelude::*;
use twizzle_actors::admission::Admission;
use twizzle_actors::close::Close;
use twizzle_actors::event::{parse_event, Event};
use twizzle_actors::ids::{StreamId, UserId};
use twizzle_actors::outbox::{self, Outbox};
use twizzle_actors::registry::{
    CountSockets, CreateStream, OpenSocket, Registry, RegistryError, StreamSummary,
};
use twizzle_actors::store::memory::NoRecording;
use twizzle_actors::stream::{
    EndStream, GetStatus, Join, Joined, Outbound, Publish, SocketId, StreamActor, StreamLimits,
    StreamSetup, StreamStatus,
};
pub use twizzle_api_server::testkit::TempDir;

/// The longest any test waits for anything; a wait that runs out fails the test.
pub const WAIT: Duration = Duration::from_secs(5);

/// A permitted sender of the streams these tests start.
pub const OWNER: &str = "user_00000000000000aa";
/// A signed-in user who is not a sender of those streams.
pub const STRANGER: &str = "user_00000000000000bb";
/// `id` as the user ID it is; panics if it is not one.
pub fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap_or_else(|| panic!("{id} is not a user ID"))
}

/// A socket number no other socket of these tests has, as the registry
/// would hand out.
pub fn next_socket() -> SocketId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 32);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// An idle timeout no test lives to see.
pub const NEVER: Duration = Duration::from_secs(3600);

/// Awaits `future`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match actix::clock::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The state an [`Inbox`] and its [`Post`]s share.
struct Queue<T> {
    /// Delivered and not yet received, oldest first.
    items: VecDeque<T>,
    /// The task waiting in [`Inbox::recv`], if any.
    waker: Option<Waker>,
}

fn lock<T>(queue: &Mutex<Queue<T>>) -> MutexGuard<'_, Queue<T>> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sending end of an unbounded test channel; works across arbiters.
///
/// (The tests have neither tokio nor futures-channel as a direct dependency,
/// and a channel is a dozen lines.)
pub struct Post<T> {
    queue: Arc<Mutex<Queue<T>>>,
}

impl<T> Clone for Post<T> {
    fn clone(&self) -> Self {
        Post {
            queue: Arc::clone(&self.queue),
        }
    }
}

impl<T> Post<T> {
    /// Delivers `item` and wakes the receiver.
    pub fn push(&self, item: T) {
        let waker = {
            let mut queue = lock(&self.queue);
            queue.items.push_back(item);
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The receiving end of an unbounded test channel.
pub struct Inbox<T> {
    queue: Arc<Mutex<Queue<T>>>,
}

impl<T> Inbox<T> {
    /// The next item, whenever it comes.
    pub async fn recv(&mut self) -> T {
        poll_fn(|cx| {
            let mut queue = lock(&self.queue);
            match queue.items.pop_front() {
                Some(item) => Poll::Ready(item),
                None => {
                    queue.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The next item, within [`WAIT`].
    pub async fn next(&mut self, what: &str) -> T {
        within(what, self.recv()).await
    }

    /// The next item if one has come already.
    pub fn try_next(&mut self) -> Option<T> {
        lock(&self.queue).items.pop_front()
    }
}

/// A new unbounded test channel.
pub fn channel<T>() -> (Post<T>, Inbox<T>) {
    let queue = Arc::new(Mutex::new(Queue {
        items: VecDeque::new(),
        waker: None,
    }));
    (
        Post {
            queue: Arc::clone(&queue),
        },
        Inbox { queue },
    )
}

/// An actor that posts every `M` it gets to an inbox: a stand-in for a
/// WebSocket session (`M = Outbound`) or for the registry (`M = StreamNotice`).
pub struct Probe<M> {
    post: Post<M>,
}

impl<M: Unpin + 'static> Actor for Probe<M> {
    type Context = Context<Self>;
}

impl<M> Handler<M> for Probe<M>
where
    M: Message<Result = ()> + Unpin + 'static,
{
    type Result = ();

    fn handle(&mut self, msg: M, _: &mut Self::Context) {
        self.post.push(msg);
    }
}

/// A started probe and the inbox it posts to.
pub fn probe<M>() -> (Addr<Probe<M>>, Inbox<M>)
where
    M: Message<Result = ()> + Send + Unpin + 'static,
{
    let (post, inbox) = channel();
    // A session's mailbox holds a few hundred events: a stream relays the
    // events of one write at once, before the probe (on the same thread
    // here) has had a turn.
    let addr = Probe::create(|ctx| {
        ctx.set_mailbox_capacity(PROBE_CAPACITY);
        Probe { post }
    });
    (addr, inbox)
}

/// How many messages a probe's mailbox holds.
pub const PROBE_CAPACITY: usize = 512;

impl StreamHandler<Outbound> for Probe<Outbound> {
    fn handle(&mut self, msg: Outbound, _: &mut Self::Context) {
        self.post.push(msg);
    }
}

/// A stand-in socket: the outbox a stream sends it, the inbox it posts
/// all of that to, and its actor. Its queue holds a few hundred events: a
/// stream relays the events of one write at once, before the probe (on
/// the same thread here) has had a turn.
pub fn socket_probe() -> (Outbox, Inbox<Outbound>, Addr<Probe<Outbound>>) {
    let (post, inbox) = channel();
    let (outbox, outgoing) = outbox::channel(PROBE_CAPACITY);
    let addr = Probe::create(|ctx| {
        ctx.add_stream(outgoing);
        Probe { post }
    });
    (outbox, inbox, addr)
}

/// A stand-in socket that reads nothing until released, with a queue of
/// `capacity`: a client that stopped reading.
///
/// The actor `ctx.wait`s on the release from its first poll, and actix
/// polls none of an actor's streams while a `wait` future is pending, so
/// every event stays queued and counts against the capacity.
pub fn stuck_socket(capacity: usize) -> (Outbox, Inbox<Outbound>, Post<()>) {
    let (post, inbox) = channel();
    let (release, mut released) = channel::<()>();
    let (outbox, outgoing) = outbox::channel(capacity);
    Probe::create(move |ctx| {
        ctx.wait(actix::fut::wrap_future(async move {
            released.recv().await;
        }));
        ctx.add_stream(outgoing);
        Probe { post }
    });
    (outbox, inbox, release)
}

/// The outbox of a socket whose session is gone.
pub fn gone_socket() -> Outbox {
    let (outbox, outgoing) = outbox::channel(PROBE_CAPACITY);
    drop(outgoing);
    outbox
}

/// A test socket joined to a stream.
pub struct Peer {
    /// The socket's ID in the stream.
    pub id: SocketId,
    /// Whether the stream took it for a sender.
    pub sender: bool,
    /// Everything the stream sent it.
    pub inbox: Inbox<Outbound>,
    /// Frames of a batch not yet looked at.
    batched: std::collections::VecDeque<String>,
    /// Keeps the stand-in socket's address alive for the test.
    _addr: Addr<Probe<Outbound>>,
}

impl Peer {
    /// Joins a new stand-in socket to `stream` as `user`; panics if the stream ended.
    pub async fn join(stream: &Addr<StreamActor>, user: Option<&str>) -> Peer {
        Peer::join_since(stream, user, None).await
    }

    /// Joins a new stand-in viewer to `stream` that resumes after offset `since`.
    pub async fn resume(stream: &Addr<StreamActor>, since: u64) -> Peer {
        Peer::join_since(stream, None, Some(since)).await
    }

    async fn join_since(
        stream: &Addr<StreamActor>,
        user: Option<&str>,
        since: Option<u64>,
    ) -> Peer {
        let (outbox, inbox, addr) = socket_probe();
        let joined = join_with_since(stream, outbox, user, since)
            .await
            .expect("the stream has not ended");
        Peer {
            id: joined.socket,
            sender: joined.sender,
            inbox,
            batched: Default::default(),
            _addr: addr,
        }
    }

    /// Asserts that nothing came to this socket by now.
    pub fn expect_nothing_yet(&mut self, what: &str) {
        assert!(self.batched.is_empty(), "{what}: got {:?}", self.batched);
        if let Some(got) = self.inbox.try_next() {
            panic!("{what}: got {got:?}");
        }
    }

    /// Publishes `event` as coming from this socket; returns once the stream handled it.
    pub async fn publish(&self, stream: &Addr<StreamActor>, event: &Event) {
        publish(stream, self.id, event).await;
    }

    /// Asserts that the next thing this socket gets is `event`, with an
    /// offset; returns the offset.
    pub async fn expect(&mut self, event: &Event, what: &str) -> u64 {
        let got = self.next_frame(what).await;
        let (text, offset) = without_offset(&got);
        assert_eq!(text, *event.text, "{what}");
        offset.unwrap_or_else(|| panic!("{what}: no offset in {got}"))
    }

    /// The next frame this socket gets: an event on its own or the first of
    /// a batch (the rest come next).
    pub async fn next_frame(&mut self, what: &str) -> String {
        if let Some(text) = self.batched.pop_front() {
            return text;
        }
        loop {
            match self.inbox.next(what).await {
                Outbound::Event(text) => return text.to_string(),
                Outbound::Batch(texts) => {
                    self.batched
                        .extend(texts.iter().map(|text| text.to_string()));
                    if let Some(text) = self.batched.pop_front() {
                        return text;
                    }
                }
                Outbound::Close(close) => panic!("{what}: closed with {close:?}"),
            }
        }
    }

    /// Asserts that the next things this socket gets are `events`, in order.
    pub async fn expect_all(&mut self, events: &[&Event], what: &str) {
        for (n, event) in events.iter().enumerate() {
            self.expect(event, &format!("{what} (event {n})")).await;
        }
    }

    /// Asserts that the next thing this socket gets is a close with `code` and `reason`.
    pub async fn expect_close(&mut self, code: u16, reason: &str, what: &str) {
        match self.inbox.next(what).await {
            Outbound::Close(got) => assert_eq!((got.code, got.reason), (code, reason), "{what}"),
            other => panic!("{what}: expected a close, got {other:?}"),
        }
    }
}

/// Sends a `Join` within [`WAIT`]; `Err` if the stream refused or is gone.
pub async fn join_with(
    stream: &Addr<StreamActor>,
    outbox: Outbox,
    user: Option<&str>,
) -> Result<Joined, String> {
    join_with_since(stream, outbox, user, None).await
}

/// [`join_with`], resuming after `since`.
pub async fn join_with_since(
    stream: &Addr<StreamActor>,
    outbox: Outbox,
    user: Option<&str>,
    since: Option<u64>,
) -> Result<Joined, String> {
    let join = stream.send(Join {
        socket: next_socket(),
        outbox,
        user_id: user.map(self::user),
        disconnect: None,
        since,
    });
    match within("the stream to answer a join", join).await {
        Ok(Ok(joined)) => Ok(joined),
        Ok(Err(ended)) => Err(format!("{ended:?}")),
        Err(mailbox) => Err(format!("{mailbox}")),
    }
}

/// Publishes `event` from `socket`; returns once the stream handled it.
pub async fn publish(stream: &Addr<StreamActor>, socket: SocketId, event: &Event) {
    let publish = stream.send(Publish {
        received: std::time::Instant::now(),
        socket,
        event: event.clone(),
    });
    within("the stream to take a publish", publish)
        .await
        .expect("the stream is running");
}

/// The stream's status; a round trip through its mailbox, so it also orders
/// after everything sent to the stream before.
pub async fn status(stream: &Addr<StreamActor>) -> StreamStatus {
    within("the stream's status", stream.send(GetStatus))
        .await
        .expect("the stream is running")
}

/// Ends `stream` with `code` and `reason`, as the registry does; returns
/// once the stream has handled it.
pub async fn end_stream(stream: &Addr<StreamActor>, code: u16, reason: &'static str) {
    within(
        "EndStream",
        stream.send(EndStream {
            close: Close { code, reason },
        }),
    )
    .await
    .expect("the stream is running");
}

/// Returns once the stream actor has stopped (and so has told its registry).
pub async fn stopped(stream: &Addr<StreamActor>) {
    within("the stream to stop", async {
        // Each round trip lets the stream run; the request fails once the
        // actor is gone, which is after its `stopped` ran.
        while stream.send(GetStatus).await.is_ok() {}
    })
    .await;
}

/// Creates a stream owned by `owner`, within [`WAIT`].
pub async fn create(
    registry: &Addr<Registry>,
    owner: &str,
) -> Result<StreamSummary, RegistryError> {
    let owner = twizzle_actors::ids::PublicUserInfo::new(&user(owner), None, owner);
    let create = registry.send(CreateStream { owner });
    within("CreateStream", create)
        .await
        .expect("the registry is running")
}

/// Asks `registry` for a ticket to `stream_id`, as an anonymous socket.
pub async fn open_socket(
    registry: &Addr<Registry>,
    stream_id: &StreamId,
) -> Result<Admission, RegistryError> {
    open_socket_as(registry, stream_id, None).await
}

/// Asks `registry` for a ticket to `stream_id` for a socket of `user`.
pub async fn open_socket_as(
    registry: &Addr<Registry>,
    stream_id: &StreamId,
    user: Option<&str>,
) -> Result<Admission, RegistryError> {
    let open = registry.send(OpenSocket {
        stream_id: stream_id.clone(),
        user_id: user.map(self::user),
        client: std::net::IpAddr::from([127, 0, 0, 1]),
    });
    within("OpenSocket", open)
        .await
        .expect("the registry is running")
}

/// How many tickets the registry has out; a round trip through its
/// mailbox, so it counts every ticket dropped before the call.
pub async fn count_sockets(registry: &Addr<Registry>) -> usize {
    within("CountSockets", registry.send(CountSockets))
        .await
        .expect("the registry is running")
}

/// A stream setup with a fresh ID, [`OWNER`] as its sender, no countdown in
/// sight, no recording and no registry; tests change what they need.
pub fn setup() -> StreamSetup {
    StreamSetup {
        id: StreamId::random(),
        senders: vec![user(OWNER)],
        idle_timeout: NEVER,
        recording: Box::new(NoRecording),
        limits: StreamLimits::NONE,
        metrics: twizzle_actors::metrics::Metrics::new(),
        registry: None,
        idle_since: None,
    }
}

/// Parses `frame` into an event, as a session does.
pub fn event(frame: &str) -> Event {
    parse_event(frame).unwrap_or_else(|refusal| panic!("{frame}: {refusal}"))
}

/// A move told apart from others by `n`.
pub fn mv(n: u64) -> Event {
    event(&format!(
        r#"{{"event":"move","data":{{"latestMove":{{"family":"R","amount":1}},"timeStamp":{n},"binaryState":"state{n}"}}}}"#
    ))
}

/// An orientation told apart from others by `n`.
pub fn orientation(n: u64) -> Event {
    event(&format!(
        r#"{{"event":"orientation","data":{{"quaternion":{{"x":0,"y":0,"z":0,"w":1}},"timeStamp":{n}}}}}"#
    ))
}

/// A reset with this `trackingOrientation`, told apart from others by `n`
/// (an extra field of `data`, which the broker relays as is).
pub fn reset(tracking_orientation: bool, n: u64) -> Event {
    event(&format!(
        r#"{{"event":"reset","data":{{"trackingOrientation":{tracking_orientation},"n":{n}}}}}"#
    ))
}

/// A frame's event text without its `offset`, and the offset: a frame
/// ends with `,"offset":N}`.
pub fn without_offset(frame: &str) -> (String, Option<u64>) {
    let Some((text, tail)) = frame.rsplit_once(",\"offset\":") else {
        return (frame.to_owned(), None);
    };
    match tail.strip_suffix('}').and_then(|n| n.parse().ok()) {
        Some(offset) => (format!("{text}}}"), Some(offset)),
        None => (frame.to_owned(), None),
    }
}

/// The events of a recording file, as their senders' events are encoded,
/// each with its offset (its position, for lines recorded without one).
pub fn recorded_events(path: &std::path::Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    let mut position = 0;
    text.lines()
        .map(|line| {
            // A line recorded before offsets existed may not be an event
            // as checked now; it still has its position.
            match twizzle_actors::event::parse_recorded(line) {
                Ok(recorded) => {
                    position = recorded.offset.unwrap_or(position + 1);
                    (position, recorded.event.text.to_string())
                }
                Err(_) => {
                    position += 1;
                    (position, line.to_owned())
                }
            }
        })
        .collect()
}

/// The recording `LocalRecording` in `dir` for stream `id`, on threads of its own.
pub fn local_recording(
    dir: &std::path::Path,
    id: &twizzle_actors::ids::StreamId,
) -> twizzle_actors::store::recording::LocalRecording {
    use twizzle_actors::store::disk::Disk;
    twizzle_actors::store::recording::LocalRecording::new(dir, id, Disk::new(1), Disk::new(1))
}
