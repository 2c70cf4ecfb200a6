//! Races around a socket's admission: connections reset in the middle of
//! their handshake, and upgrades that race a SIGTERM.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::rt::task::spawn_blocking;

use crate::helpers::*;

/// Where [`upgrade_then_reset`] cuts its connection.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Halfway through the request's head.
    MidRequest,
    /// This long after the whole request, without reading the answer: the
    /// server is somewhere between reading the request and answering it
    /// (admitting the socket, looking up its user, upgrading).
    AfterRequest(Duration),
    /// After the first byte of the answer.
    FirstAnswerByte,
    /// Right after the answer's head: the 101, or a refusal.
    AfterAnswer,
}

/// Every cut, in the order the attempts take them.
const CUTS: [Cut; 8] = [
    Cut::MidRequest,
    Cut::AfterRequest(Duration::ZERO),
    Cut::AfterRequest(Duration::from_micros(50)),
    Cut::AfterRequest(Duration::from_micros(200)),
    Cut::AfterRequest(Duration::from_micros(500)),
    Cut::AfterRequest(Duration::from_millis(2)),
    Cut::FirstAnswerByte,
    Cut::AfterAnswer,
];

/// Sends an upgrade request for `path` and resets the connection at `cut`;
/// the answer's status if `cut` waited for it. Panics name no path (it may
/// hold a token).
fn upgrade_then_reset(port: u16, path: &str, cut: Cut) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the server");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = upgrade_request(path);
    let request = request.as_bytes();
    let sent = match cut {
        Cut::MidRequest => &request[..request.len() / 2],
        Cut::AfterRequest(_) | Cut::FirstAnswerByte | Cut::AfterAnswer => request,
    };
    stream.write_all(sent).expect("send the upgrade request");
    let status = match cut {
        Cut::MidRequest => None,
        Cut::AfterRequest(delay) => {
            // Pacing, not synchronisation: where the reset lands varies.
            std::thread::sleep(delay);
            None
        }
        Cut::FirstAnswerByte => {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).expect("an answer");
            None
        }
        Cut::AfterAnswer => {
            let head = read_head(&mut stream).expect("an answer");
            Some(status_of(&head).expect("a status line"))
        }
    };
    reset(stream);
    status
}

/// Opens a socket as soon as the server has a free slot for it (it frees a
/// slot a moment after a client goes); fails the test if none frees up
/// within the wait bound.
async fn connect_when_free(app: &TestApp, id: &str, what: &str) -> WsClient {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(socket) = app.try_connect(id, None).await {
            return socket;
        }
        assert!(Instant::now() < deadline, "no free slot for {what}");
        actix::clock::sleep(Duration::from_millis(20)).await; // polling the server's count
    }
}

/// Upgrades, with and without a sender's token, whose connections are reset
/// at every point of the handshake (halfway through the request, at
/// several moments while the server admits and upgrades, after the first
/// byte of the answer, right after the 101) leak no slot and leave no
/// sender behind: afterwards every slot of the socket limit opens again
/// (and one more socket is refused), and once the one real sender leaves,
/// the stream counts down and ends.
#[actix_web::test]
async fn a_reset_mid_handshake_never_leaks_a_slot() {
    const SLOTS: usize = 5;
    const ATTEMPTS: usize = 96;
    let app = spawn_app_with(|s| {
        s.limits.max_sockets = SLOTS;
        s.stream_idle_timeout = Duration::from_secs(2);
    })
    .await;
    let (token, id) = app.sender_with_stream(51, None, "Reset Midway").await;
    // Holds the stream open while the attempts run, however long they take.
    let mut sender = app.connect(&id, Some(&token)).await;

    let port = app.port;
    let viewer_path = format!("/v0/streams/{id}/socket");
    let sender_path = format!("{viewer_path}?twizzleAccessToken={token}");
    let answers = spawn_blocking(move || {
        let mut answers = BTreeMap::<u16, usize>::new();
        for n in 0..ATTEMPTS {
            let path = if (n / CUTS.len()).is_multiple_of(2) {
                &viewer_path
            } else {
                &sender_path
            };
            if let Some(status) = upgrade_then_reset(port, path, CUTS[n % CUTS.len()]) {
                *answers.entry(status).or_default() += 1;
            }
        }
        answers
    })
    .await
    .unwrap();
    println!("statuses read before a reset: {answers:?}");
    assert!(
        answers.get(&101).is_some_and(|&n| n > 0),
        "some resets came right after a 101: {answers:?}"
    );
    assert!(
        answers.keys().all(|&status| status == 101 || status == 503),
        "an upgrade is admitted or, while slots are still being freed, refused: {answers:?}"
    );

    let mut viewers = Vec::new();
    for n in 1..SLOTS {
        viewers.push(connect_when_free(&app, &id, &format!("viewer {n}")).await);
    }
    let path = format!("/v0/streams/{id}/socket");
    let (status, _) = spawn_blocking(move || raw_upgrade(port, &path))
        .await
        .unwrap();
    assert_eq!(
        status, 503,
        "the limit's slots are all taken by real sockets"
    );

    sender.send(awc::ws::Message::Close(None)).await;
    for (n, viewer) in viewers.iter_mut().enumerate() {
        assert_eq!(
            viewer.next_close().await,
            (1000, "stream ended".to_owned()),
            "viewer {}: no reset sender keeps the stream open",
            n + 1
        );
    }
}

/// What became of one upgrade attempt racing a SIGTERM.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// 101, then a close frame with this code and reason.
    Closed(u16, String),
    /// 101, then the connection ended without a close frame.
    CutAfterUpgrade,
    /// 101, then nothing within the bound.
    SilentAfterUpgrade,
    /// An answer other than 101.
    Status(u16),
    /// The connection was refused, reset or ended before an answer: the
    /// listener is gone, or the server closed the connection as it stopped.
    Gone,
    /// No answer within the bound, or an error of another kind.
    Stuck(io::ErrorKind),
}

impl Outcome {
    /// Whether a client may hear this while the server stops: come back
    /// later, in one way or another. Anything else is wrong, and hearing
    /// that the stream is gone (404, or 1000 `stream ended`) worst of all.
    fn fine(&self) -> bool {
        match self {
            Outcome::Closed(code, reason) => *code == 1001 && reason == "server restarting",
            Outcome::Status(status) => *status == 503,
            Outcome::Gone => true,
            Outcome::CutAfterUpgrade | Outcome::SilentAfterUpgrade | Outcome::Stuck(_) => false,
        }
    }

    fn of_error(e: &io::Error) -> Outcome {
        match e.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Outcome::Gone,
            kind => Outcome::Stuck(kind),
        }
    }
}

/// When an attempt's request went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sent {
    /// On a new connection, before the signal.
    Before,
    /// On a new connection, after the signal.
    After,
    /// On a connection held open from before the race, after the signal.
    Held,
}

/// Streams the upgrades go to, each in turn. Each stream's end is a step
/// of the drain; with several, some have stopped while the rest are still
/// being ended, and upgrades to those that stopped still reach the server.
/// One user creates them all: within the default limit of ten per user.
const STREAMS: usize = 8;
/// Threads firing upgrades on connections they open as they go.
const FRESH_THREADS: usize = 8;
/// Attempts each of those makes.
const FRESH_PER_THREAD: usize = 200;
/// Connections a fresh thread opens and sends its request on before it
/// reads their answers, so that many requests are in the server at once.
const BATCH: usize = 8;
/// Connections opened (and used once, so that the server surely accepted
/// them) before the race, whose upgrade requests go out only once the
/// signal has: they reach the server while it drains, which the fresh
/// threads' cannot, since the server stops accepting connections first.
const HELD: usize = 400;
/// Held connections whose requests go out at a time...
const HELD_GROUP: usize = 8;
/// ...and the time between groups, which spreads them over the drain: it
/// takes only milliseconds, since the server closes idle connections as
/// soon as its sockets are closed.
const HELD_PACE: Duration = Duration::from_micros(500);
/// The signal goes once this many fresh attempts have started...
const SIGNAL_AFTER: usize = FRESH_THREADS * FRESH_PER_THREAD * 2 / 5;
/// ...or this long after they began, whichever comes first: well within
/// the server's keep-alive timeout (5 s), which would close the held
/// connections.
const SIGNAL_BY: Duration = Duration::from_secs(2);
/// How long the whole race may take, however loaded the machine.
const RACE_BOUND: Duration = Duration::from_secs(30);

/// What the firing threads and the signalling one share.
struct Race {
    /// `127.0.0.1:<port>`.
    addr: SocketAddr,
    /// The upgrade requests, a viewer's and a sender's for each stream.
    requests: Vec<String>,
    /// Fresh attempts started so far.
    started: AtomicUsize,
    /// Set once SIGTERM has been sent.
    signalled: AtomicBool,
    /// No attempt starts after this.
    deadline: Instant,
}

/// A connection with its request sent, or why it is not.
type Request = io::Result<TcpStream>;

impl Race {
    fn signalled(&self) -> bool {
        self.signalled.load(Ordering::SeqCst)
    }

    fn connect(&self) -> Request {
        TcpStream::connect_timeout(&self.addr, WAIT)
    }

    /// A connection the server has accepted and answered a liveness check
    /// on, kept alive for an upgrade request later.
    fn held(&self) -> TcpStream {
        let mut stream = self.connect().expect("a held connection opens");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream
            .write_all(b"GET /v0/infra/liveness_check HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let head = read_head(&mut stream).expect("an answer to the liveness check");
        assert_eq!(status_of(&head), Some(200), "the liveness check");
        let mut body = vec![0u8; content_length(&head)];
        stream.read_exact(&mut body).expect("the liveness body");
        stream
    }

    /// Sends attempt `n`'s request: each stream's viewer's and sender's in turn.
    fn send(&self, stream: Request, n: usize) -> Request {
        let mut stream = stream?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.write_all(self.requests[n % self.requests.len()].as_bytes())?;
        Ok(stream)
    }
}

/// One thread's outcomes so far, each with when its request went out; and
/// its upgraded sockets, whose ends are yet to come.
#[derive(Default)]
struct Tally {
    outcomes: Vec<(Outcome, Sent)>,
    upgraded: Vec<(RawSocket, Sent)>,
}

impl Tally {
    /// Reads the answer to a request sent (or not).
    fn answer(&mut self, request: Request, sent: Sent) {
        let outcome = match request.and_then(|mut stream| Ok((read_head(&mut stream)?, stream))) {
            Ok((head, stream)) => match status_of(&head) {
                Some(101) => {
                    self.upgraded.push((RawSocket::upgraded(stream), sent));
                    return;
                }
                Some(status) => Outcome::Status(status),
                None => Outcome::Stuck(io::ErrorKind::InvalidData),
            },
            Err(e) => Outcome::of_error(&e),
        };
        self.outcomes.push((outcome, sent));
    }

    /// Waits for the signal, then for how each upgraded socket ends: all
    /// of them by the time the server has exited, soon after the signal,
    /// so one bound from then covers them all.
    fn finish(mut self, race: &Race) -> Vec<(Outcome, Sent)> {
        while !race.signalled() && Instant::now() < race.deadline {
            std::thread::sleep(Duration::from_millis(1)); // polling for the signal
        }
        let heard_by = Instant::now() + WAIT;
        for (mut socket, sent) in self.upgraded {
            let left = heard_by
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let outcome = match socket.next_close(left) {
                Ok(Some((code, reason))) => Outcome::Closed(code, reason),
                Ok(None) => Outcome::CutAfterUpgrade,
                Err(_) => Outcome::SilentAfterUpgrade,
            };
            self.outcomes.push((outcome, sent));
        }
        self.outcomes
    }
}

/// A fresh thread's attempts: a batch of connections opened and their
/// requests sent, then their answers read, over and over.
fn fire_fresh(race: &Race, thread: usize) -> Vec<(Outcome, Sent)> {
    let mut tally = Tally::default();
    let mut made = 0;
    while made < FRESH_PER_THREAD && Instant::now() < race.deadline {
        let batch: Vec<(Request, Sent)> = (0..BATCH.min(FRESH_PER_THREAD - made))
            .map(|k| {
                let sent = if race.signalled() {
                    Sent::After
                } else {
                    Sent::Before
                };
                race.started.fetch_add(1, Ordering::SeqCst);
                (race.send(race.connect(), thread + made + k), sent)
            })
            .collect();
        made += batch.len();
        for (request, sent) in batch {
            tally.answer(request, sent);
        }
    }
    tally.finish(race)
}

/// The held connections' attempts, from the signal on: their requests
/// sent a group at a time by the thread that sent the signal (so that no
/// thread has to wake up to it first), then their answers read.
fn fire_held(race: &Race, held: Vec<TcpStream>) -> Vec<(Outcome, Sent)> {
    let mut requests = Vec::with_capacity(held.len());
    for (n, stream) in held.into_iter().enumerate() {
        if n % HELD_GROUP == 0 && n > 0 {
            // Pacing, not synchronisation: the groups spread over the drain.
            std::thread::sleep(HELD_PACE);
        }
        requests.push(race.send(Ok(stream), n));
    }
    let mut tally = Tally::default();
    for request in requests {
        tally.answer(request, Sent::Held);
    }
    tally.finish(race)
}

/// The real binary, SIGTERMed while thousands of upgrades (viewers and
/// senders) to open streams race in from several threads, some on
/// connections opened before the signal and used after it: no attempt
/// hears that its stream is gone (404, or 1000 `stream ended`). Each is
/// upgraded and then closed with 1001 `server restarting`, refused with
/// 503, or finds the listener gone; and the race really overlapped the
/// drain.
#[actix_web::test]
async fn upgrades_racing_a_sigterm_never_hear_their_stream_is_gone() {
    let dir = Arc::new(TempDir::new("api"));
    let wca = FakeWca::start();
    // Half the upgrades are the senders': far more sender sockets per stream
    // than a stream takes in normal use.
    let (mut child, port, logs) = start_binary_with(dir.path(), wca.origin(), |command| {
        command.env("TWIZZLE_MAX_SENDER_SOCKETS_PER_STREAM", "100000");
    });
    let app = TestApp::attach(dir.clone(), wca, port);
    let (token, _) = app.sign_in(61, None, "Racing Term").await;
    let mut requests = Vec::new();
    for _ in 0..STREAMS {
        let path = format!("/v0/streams/{}/socket", app.create_stream(&token).await);
        requests.push(upgrade_request(&path));
        requests.push(upgrade_request(&format!(
            "{path}?twizzleAccessToken={token}"
        )));
    }
    let race = Arc::new(Race {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        requests,
        started: AtomicUsize::new(0),
        signalled: AtomicBool::new(false),
        deadline: Instant::now() + RACE_BOUND,
    });

    let (outcomes, exit, took, signal_after) = spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..HELD).map(|_| race.held()).collect();
        let began = Instant::now();
        let fresh: Vec<_> = (0..FRESH_THREADS)
            .map(|thread| {
                let race = Arc::clone(&race);
                std::thread::spawn(move || fire_fresh(&race, thread))
            })
            .collect();
        while race.started.load(Ordering::SeqCst) < SIGNAL_AFTER && began.elapsed() < SIGNAL_BY {
            std::thread::sleep(Duration::from_millis(1)); // polling the attempts' progress
        }
        let signal_after = race.started.load(Ordering::SeqCst);
        child.signal("TERM");
        race.signalled.store(true, Ordering::SeqCst);
        let mut outcomes = fire_held(&race, held);
        for thread in fresh {
            outcomes.extend(thread.join().expect("a firing thread"));
        }
        let exit = child.wait_within(WAIT);
        (outcomes, exit, began.elapsed(), signal_after)
    })
    .await
    .unwrap();

    let mut counts = BTreeMap::<(Sent, &Outcome), usize>::new();
    for (outcome, sent) in &outcomes {
        *counts.entry((*sent, outcome)).or_default() += 1;
    }
    println!(
        "{} attempts in {took:?}; SIGTERM once {signal_after} fresh ones had started:",
        outcomes.len()
    );
    for ((sent, outcome), n) in &counts {
        let verdict = if outcome.fine() { "fine" } else { "WRONG" };
        println!("  {n:5}  sent {sent:?}: {outcome:?}  {verdict}");
    }
    let exit = exit.expect("the server exits after SIGTERM");
    assert!(exit.success(), "exit status {exit}");
    assert_eq!(outcomes.len(), FRESH_THREADS * FRESH_PER_THREAD + HELD);
    let wrong = outcomes.iter().filter(|(o, _)| !o.fine()).count();
    assert_eq!(wrong, 0, "attempts that went wrong");

    let count = |pick: &dyn Fn(&Outcome, Sent) -> bool| {
        outcomes.iter().filter(|(o, sent)| pick(o, *sent)).count()
    };
    assert!(
        count(&|o, _| matches!(o, Outcome::Closed(..))) > 0,
        "some upgrades were open when the drain began"
    );
    assert!(
        count(
            &|o, sent| *o == Outcome::Status(503) || (sent != Sent::Before && *o != Outcome::Gone)
        ) > 0,
        "some upgrades reached the server while it was draining"
    );
    assert_no_token_in(&logs.try_iter().collect::<Vec<_>>(), &token);
}
