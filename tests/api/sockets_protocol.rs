//! The `twizzle.v0` subprotocol: a browser, which cannot set headers on a
//! WebSocket, passes its token as a second protocol,
//! `new WebSocket(url, ["twizzle.v0", token])`, and the server answers
//! `twizzle.v0` whenever it was offered, never the token.

use awc::error::WsClientError;
use awc::http::header::{HeaderMap, SEC_WEBSOCKET_PROTOCOL};

use crate::helpers::*;

/// The socket URL of `stream_id`, with no token in it (on a cluster, on
/// the next node in turn).
fn socket_url(app: &TestApp, stream_id: &str) -> String {
    format!(
        "ws://127.0.0.1:{}/v0/streams/{stream_id}/socket",
        app.socket_port()
    )
}

/// Opens a socket offering `protocols`; the answer's headers and the socket.
async fn connect_offering(
    app: &TestApp,
    stream_id: &str,
    protocols: &[&str],
) -> Result<(HeaderMap, WsClient), WsClientError> {
    WsClient::connect_offering(socket_url(app, stream_id), protocols).await
}

/// Every `Sec-WebSocket-Protocol` value of an answer.
fn answered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The status of a refused upgrade.
fn refusal_status(answer: Result<(HeaderMap, WsClient), WsClientError>) -> u16 {
    match answer {
        Err(WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
        Err(other) => panic!("refused otherwise: {other:?}"),
        Ok(_) => panic!("the socket opened"),
    }
}

/// A signed-in sender with a fresh stream: its token and the stream's ID.
async fn stream_with_sender(app: &TestApp) -> (String, String) {
    app.sender_with_stream(500, Some("2020PROT01"), "Protocol")
        .await
}

/// A sender whose token comes as a subprotocol sends; its viewers get the
/// events; the answer names exactly `twizzle.v0`.
async fn a_sender_may_pass_its_token_as_a_subprotocol(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let (headers, mut sender) = connect_offering(&app, &id, &["twizzle.v0", &token])
        .await
        .expect("the sender's socket opens");
    assert_eq!(answered_protocols(&headers), ["twizzle.v0"]);
    let mut viewer = app.connect(&id, None).await;
    for n in 0..3 {
        sender.send_json(&move_event(n)).await;
    }
    for n in 0..3 {
        assert_eq!(viewer.next_json().await, move_event(n));
    }
    // The token may come first, too.
    let (headers, mut second) = connect_offering(&app, &id, &[&token, "twizzle.v0"])
        .await
        .expect("the second sender's socket opens");
    assert_eq!(answered_protocols(&headers), ["twizzle.v0"]);
    second.send_json(&orientation_event(0.5)).await;
    assert_eq!(viewer.next_json().await, orientation_event(0.5));
}

/// `twizzle.v0` alone is a viewer: answered, given the replay, and closed
/// with 1008 if it sends.
async fn the_protocol_without_a_token_is_a_viewer(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut witness = app.connect(&id, None).await;
    sender.send_json(&move_event(1)).await;
    assert_eq!(witness.next_json().await, move_event(1));
    let (headers, mut viewer) = connect_offering(&app, &id, &["twizzle.v0"])
        .await
        .expect("the viewer's socket opens");
    assert_eq!(answered_protocols(&headers), ["twizzle.v0"]);
    assert_eq!(viewer.next_json().await, move_event(1), "the replay");
    sender.send_json(&move_event(2)).await;
    assert_eq!(viewer.next_json().await, move_event(2));
    viewer.send_json(&move_event(3)).await;
    assert_eq!(
        viewer.next_close().await,
        (1008, "not permitted to send".to_owned())
    );
}

/// A malformed or unknown token in the subprotocol is refused with 401, as
/// in the query.
async fn a_bad_token_in_the_subprotocol_is_refused(nodes: Nodes) {
    let app = nodes.app().await;
    let (_, id) = stream_with_sender(&app).await;
    let unknown = format!("twizzle_access_token_{:032x}", rand::random::<u128>());
    for bad in ["twizzle_access_token_not-hex", unknown.as_str()] {
        let answer = connect_offering(&app, &id, &["twizzle.v0", bad]).await;
        assert_eq!(refusal_status(answer), 401);
    }
}

/// Other protocols are not this API's: offered alone, they get no answer,
/// and a token among them is not read (the socket is a viewer).
async fn other_protocols_get_no_answer(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let (headers, _chat) = connect_offering(&app, &id, &["chat"])
        .await
        .expect("the socket opens");
    assert_eq!(answered_protocols(&headers), Vec::<String>::new());
    let (headers, mut stray) = connect_offering(&app, &id, &["chat", &token])
        .await
        .expect("the socket opens");
    assert_eq!(answered_protocols(&headers), Vec::<String>::new());
    stray.send_json(&move_event(1)).await;
    assert_eq!(stray.next_close().await.0, 1008, "it was a viewer");
}

/// With tokens in several places, the query parameter wins, then the
/// `Authorization` header, then the subprotocol; the answer still names
/// `twizzle.v0`.
async fn the_query_token_wins_over_the_subprotocol(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let (other, _) = app.sign_in(501, None, "Bystander").await;
    let mut viewer = app.connect(&id, None).await;
    // The sender's token in the query, a bystander's in the subprotocol: a sender.
    let url = format!("{}?twizzleAccessToken={token}", socket_url(&app, &id));
    let (headers, mut sender) = WsClient::connect_offering(url, &["twizzle.v0", &other])
        .await
        .expect("the socket opens");
    assert_eq!(answered_protocols(&headers), ["twizzle.v0"]);
    sender.send_json(&move_event(1)).await;
    assert_eq!(viewer.next_json().await, move_event(1));
    // The other way round: a viewer.
    let url = format!("{}?twizzleAccessToken={other}", socket_url(&app, &id));
    let (_, mut bystander) = WsClient::connect_offering(url, &["twizzle.v0", &token])
        .await
        .expect("the socket opens");
    assert_eq!(
        bystander.next_json().await,
        move_event(1),
        "a viewer's replay"
    );
    bystander.send_json(&move_event(2)).await;
    assert_eq!(bystander.next_close().await.0, 1008, "it was a viewer");
}

/// A client may split its offer over several header lines; the token and
/// `twizzle.v0` are found on any of them, and the answer is one line.
async fn an_offer_split_over_header_lines_is_read_whole(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, id) = stream_with_sender(&app).await;
    let mut viewer = app.connect(&id, None).await;
    let port = app.socket_port();
    let sender_id = id.clone();
    let (head, mut sender) = actix_web::rt::task::spawn_blocking(move || {
        let headers = format!(
            "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: {token}, twizzle.v0\r\n"
        );
        RawSocket::open_with(port, &sender_id, 1 << 16, &headers)
    })
    .await
    .unwrap();
    let answered: Vec<&str> = head
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("sec-websocket-protocol:")
        })
        .collect();
    assert_eq!(answered.len(), 1, "{head}");
    assert!(answered[0].ends_with(": twizzle.v0"), "{head}");
    // The socket comes back to stay open until the event is through.
    let _sender = actix_web::rt::task::spawn_blocking(move || {
        sender.send_frame(0x1, move_event(1).to_string().as_bytes());
        sender
    })
    .await
    .unwrap();
    assert_eq!(viewer.next_json().await, move_event(1), "it was a sender");
}

on_one_and_two_nodes! {
    a_sender_may_pass_its_token_as_a_subprotocol,
    the_protocol_without_a_token_is_a_viewer,
    a_bad_token_in_the_subprotocol_is_refused,
    other_protocols_get_no_answer,
    the_query_token_wins_over_the_subprotocol,
    an_offer_split_over_header_lines_is_read_whole,
}
