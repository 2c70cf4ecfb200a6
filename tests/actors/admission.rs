//! Socket tickets: a dropped [`Admission`] gives its slot back and takes its
//! socket out of the stream, even when its `Join` was never answered.
//!
//! [`Admission`]: twizzle_actors::admission::Admission

use std::future::Future;
use std::sync::mpsc;
use std::task::{Context as TaskContext, Waker};
use std::time::Duration;

use actix::prelude::*;
use twizzle_actors::close::STREAM_ENDED;
use twizzle_actors::registry::{Registry, RegistryError, RegistrySettings};
use twizzle_actors::store::memory::MemoryStreams;
use twizzle_actors::stream::StreamLimits;

use crate::support::*;

fn settings(idle_timeout: Duration, max_sockets: usize) -> RegistrySettings {
    RegistrySettings {
        idle_timeout,
        max_streams_per_user: 10,
        max_sockets,
        max_sender_sockets_per_stream: 4,
        max_sockets_per_client: 1000,
        stream_limits: StreamLimits::NONE,
        metrics: twizzle_actors::metrics::Metrics::new(),
        recording_retention: Duration::from_secs(86_400),
    }
}

/// Stops every actor on `arbiter` from running until the returned sender is
/// dropped or sent to; returns once the thread is held.
async fn hold(arbiter: &Arbiter) -> mpsc::Sender<()> {
    let (held, mut holding) = channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let spawned = arbiter.spawn(async move {
        held.push(());
        // Blocking on purpose: the whole thread, and so every actor on it,
        // stands still, while their mailboxes fill from other threads.
        // Bounded, so a failing test cannot leave the thread stuck.
        let _ = released.recv_timeout(WAIT);
    });
    assert!(spawned, "the arbiter is running");
    holding.next("the arbiter to be held").await;
    release
}

/// A session dropped while its sender's `Join` waits in the stream's
/// mailbox (the stream's thread is busy) leaves no phantom sender: once the
/// stream runs again it has no sender, its countdown runs, and it really
/// ends; the slots are free at once.
///
/// `send` queues the `Join` itself, before its request is first polled.
/// One request is dropped with its ticket, as a session's is, so the stream
/// never answers it; the other is kept, so the stream does take that socket
/// in, and only the `Leave` its ticket queued behind the `Join` takes it out.
#[actix::test]
async fn a_session_dropped_with_its_join_pending_leaves_no_phantom_sender() {
    let streams = Arbiter::new();
    let registry = Registry::new(
        settings(Duration::from_millis(1500), 10),
        Box::new(MemoryStreams),
        vec![streams.handle()],
    )
    .start();
    let created = create(&registry, OWNER).await.unwrap();
    let viewer_ticket = open_socket(&registry, &created.id).await.unwrap();
    let stream = viewer_ticket.stream().clone();
    let mut viewer = Peer::join(&stream, None).await;
    assert!(status(&stream).await.counting_down, "a new stream is idle");

    let release = hold(&streams).await;
    let mut cx = TaskContext::from_waker(Waker::noop());
    let (outbox, _outbox_inbox, _probe) = socket_probe();
    let mut pending = Vec::new();
    for _ in 0..2 {
        let ticket = open_socket_as(&registry, &created.id, Some(OWNER))
            .await
            .unwrap();
        let join = ticket.join(outbox.clone(), None, None);
        let mut joining = Box::pin(ticket.stream().send(join));
        assert!(
            joining.as_mut().poll(&mut cx).is_pending(),
            "the stream's thread is held, so nothing answers the join"
        );
        pending.push((ticket, joining));
    }
    assert_eq!(count_sockets(&registry).await, 3);
    let (dropped_ticket, dropped_join) = pending.remove(0);
    let (kept_ticket, kept_join) = pending.remove(0);
    drop((dropped_join, dropped_ticket));
    drop(kept_ticket);
    assert_eq!(
        count_sockets(&registry).await,
        1,
        "the dropped tickets' slots are free before the stream runs again"
    );
    release.send(()).expect("the arbiter is still held");

    let joined = within("the kept join's answer", kept_join)
        .await
        .expect("the stream is running")
        .expect("the stream took the socket");
    assert!(joined.sender, "the kept join was a sender's");
    let now = status(&stream).await;
    assert_eq!(now.senders, 0, "no phantom sender: {now:?}");
    assert_eq!(now.sockets, 1, "only the viewer is joined: {now:?}");
    assert!(now.counting_down, "the countdown runs: {now:?}");
    viewer
        .expect_close(
            STREAM_ENDED.code,
            STREAM_ENDED.reason,
            "the viewer of a stream whose would-be senders went",
        )
        .await;
    stopped(&stream).await;
    drop(viewer_ticket);
    assert_eq!(count_sockets(&registry).await, 0);
    streams.stop();
}

/// With `max_sockets = N`, N tickets are handed out and the next is refused
/// with the limit; each ticket dropped, joined or not, frees one slot;
/// `CountSockets` follows every step.
#[actix::test]
async fn dropped_tickets_free_their_slots() {
    const N: usize = 3;
    let registry = Registry::new(settings(NEVER, N), Box::new(MemoryStreams), Vec::new()).start();
    let a = create(&registry, OWNER).await.unwrap();
    let b = create(&registry, STRANGER).await.unwrap();
    assert_eq!(count_sockets(&registry).await, 0);

    let mut tickets = Vec::new();
    let mut peers = Vec::new();
    for n in 0..N {
        let id = if n % 2 == 0 { &a.id } else { &b.id };
        let ticket = open_socket(&registry, id).await.unwrap();
        if n == 0 {
            peers.push(Peer::join(ticket.stream(), Some(OWNER)).await);
        }
        tickets.push(ticket);
        assert_eq!(count_sockets(&registry).await, n + 1);
    }
    for id in [&a.id, &b.id] {
        assert_eq!(
            open_socket(&registry, id).await.map(|_| ()),
            Err(RegistryError::TooManySockets { limit: N })
        );
    }
    assert_eq!(count_sockets(&registry).await, N, "a refusal takes no slot");

    // The joined sender's ticket goes first, then one never joined.
    for dropped in 1..=2 {
        drop(tickets.remove(0));
        assert_eq!(count_sockets(&registry).await, N - 1);
        let again = open_socket(&registry, &b.id).await.unwrap();
        assert_eq!(count_sockets(&registry).await, N);
        assert_eq!(
            open_socket(&registry, &a.id).await.map(|_| ()),
            Err(RegistryError::TooManySockets { limit: N }),
            "after {dropped} dropped and taken again"
        );
        tickets.push(again);
    }

    tickets.clear();
    assert_eq!(count_sockets(&registry).await, 0);
    let _last = open_socket(&registry, &a.id).await.unwrap();
    assert_eq!(count_sockets(&registry).await, 1);
}
