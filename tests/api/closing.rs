//! The end of a socket: after the close handshake the server ends the TCP
//! connection itself, at once (RFC 6455 §7.1.1), whichever side began it.
//! A browser fires `onclose` only when the connection is gone.

use std::time::{Duration, Instant};

use twizzle_api_server::session::CLOSE_GRACE;

use crate::helpers::*;

/// How soon after the close handshake the connection must end: far below
/// the half second to a second that waiting for the client took, with
/// room for a loaded machine.
const PROMPT: Duration = Duration::from_millis(200);

/// A close frame's payload: `code`, then `reason`.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// A viewer socket on a fresh stream, on plain TCP.
async fn raw_viewer(app: &TestApp) -> RawSocket {
    let (_, id) = app.sender_with_stream(300, None, "Closer").await;
    let port = app.port;
    actix_web::rt::task::spawn_blocking(move || RawSocket::open(port, &id, 1 << 16))
        .await
        .unwrap()
}

/// The next frame that is not a ping.
fn next_non_ping(socket: &mut RawSocket) -> (u8, Vec<u8>) {
    loop {
        let frame = socket.next_frame();
        if frame.0 != 0x9 {
            return frame;
        }
    }
}

/// A viewer's data frame, which the server refuses by closing the socket.
const VIEWER_DATA: &[u8] = br#"{"event":"reset","data":{"trackingOrientation":true}}"#;

/// Runs `exchange` on a viewer socket of `app`, off the async runtime since
/// the socket blocks, then reads the connection to its end. `exchange`
/// returns the instant to time from; the answer is how long after it the
/// connection ended.
async fn time_to_end(
    app: &TestApp,
    exchange: impl FnOnce(&mut RawSocket) -> Instant + Send + 'static,
) -> Duration {
    let mut socket = raw_viewer(app).await;
    actix_web::rt::task::spawn_blocking(move || {
        let since = exchange(&mut socket);
        let rest = socket.read_to_end();
        assert!(rest.is_empty(), "nothing after the close frame: {rest:?}");
        since.elapsed()
    })
    .await
    .unwrap()
}

/// Sends `data` in a text frame the server refuses, and returns the payload
/// of the close frame it answers with.
fn refused(socket: &mut RawSocket, data: &[u8]) -> Vec<u8> {
    socket.send_frame(0x1, data);
    let (opcode, payload) = next_non_ping(socket);
    assert_eq!(opcode, 0x8, "the server closed the socket");
    payload
}

/// Checks that the server's close `payload` carries `code`, answers it with
/// the same code, and returns the instant of the answer.
fn answer_close(socket: &mut RawSocket, payload: &[u8], code: u16) -> Instant {
    assert_eq!(payload[..2], code.to_be_bytes(), "with {code}");
    let answered = Instant::now();
    socket.send_frame(0x8, &payload[..2]);
    answered
}

/// Fails unless the connection ended within [`PROMPT`] `after` the close
/// handshake.
fn assert_prompt(took: Duration, after: &str) {
    assert!(took < PROMPT, "the connection ended {took:?} after {after}");
}

/// The client closes: the server answers with its close frame and ends the
/// connection, without waiting for the client to end it.
#[actix_web::test]
async fn a_close_from_the_client_ends_the_connection_at_once() {
    let app = spawn_app().await;
    let took = time_to_end(&app, |socket| {
        let started = Instant::now();
        socket.send_frame(0x8, &close_payload(1000, "bye"));
        let (opcode, payload) = next_non_ping(socket);
        assert_eq!(opcode, 0x8, "the server answered with a close frame");
        assert_eq!(payload[..2], 1000u16.to_be_bytes(), "and echoed the code");
        started
    })
    .await;
    eprintln!("client-initiated close: the connection ended {took:?} after the close");
    assert_prompt(took, "the client's close");
}

/// The server closes (a viewer sent data: 1008): once the client answers
/// the close, the server ends the connection at once.
#[actix_web::test]
async fn a_close_from_the_server_ends_the_connection_once_answered() {
    let app = spawn_app().await;
    let took = time_to_end(&app, |socket| {
        let payload = refused(socket, VIEWER_DATA);
        answer_close(socket, &payload, 1008)
    })
    .await;
    eprintln!("server-initiated close: the connection ended {took:?} after the answer");
    assert_prompt(took, "the client answered the close");
}

/// A client that never answers the server's close is let go after the
/// grace period, not before (the server waited for it) and not much later.
#[actix_web::test]
async fn a_close_the_client_never_answers_ends_after_the_grace() {
    let app = spawn_app().await;
    let took = time_to_end(&app, |socket| {
        refused(socket, VIEWER_DATA);
        Instant::now()
    })
    .await;
    eprintln!("unanswered close: the connection ended {took:?} after the close frame");
    // The grace runs from before the frame was read, so allow for that.
    assert!(
        took + PROMPT > CLOSE_GRACE,
        "the connection ended {took:?} after an unanswered close: the server did not wait for the answer"
    );
    assert!(
        took < CLOSE_GRACE + Duration::from_secs(1),
        "the connection ended {took:?} after an unanswered close"
    );
}

/// A frame over the size limit (1009): the server reads past it to the
/// client's answer, then ends the connection at once and cleanly (unread
/// bytes would have made the kernel reset it).
#[actix_web::test]
async fn a_close_for_an_oversized_frame_ends_cleanly_once_answered() {
    let app = spawn_app_with(|s| s.limits.max_frame_bytes = 1024).await;
    let took = time_to_end(&app, |socket| {
        let payload = refused(socket, &vec![b'x'; 1 << 20]);
        answer_close(socket, &payload, 1009)
    })
    .await;
    eprintln!("oversized frame: the connection ended {took:?} after the answer");
    assert_prompt(took, "the client answered the close");
}
