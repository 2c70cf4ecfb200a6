//! Races around a socket's admission: connections reset in the middle of
//! their handshake.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
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
    let (token, _) = app.sign_in(51, None, "Reset Midway").await;
    let id = app.create_stream(&token).await;
    // Holds the stream open while the attempts run, however long they take.
    let mut sender = app.connect(&id, Some(&token)).await;

    let port = app.port;
    let viewer_path = format!("/v0/streams/{id}/socket");
    let sender_path = format!("{viewer_path}?twizzleAccessToken={token}");
    let answers = spawn_blocking(move || {
        let mut answers = BTreeMap::<u16, usize>::new();
        for n in 0..ATTEMPTS {
            let path = if (n / CUTS.len()) % 2 == 0 {
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
