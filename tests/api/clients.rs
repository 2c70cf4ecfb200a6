//! Limits per client address: sockets, handshakes and API requests. Behind
//! a trusted proxy (127.0.0.1, where the tests run) the client is the last
//! `X-Forwarded-For` hop, so one test poses as many clients, the honest
//! pair among them on an address of its own.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::Value;

use crate::helpers::*;

/// An upgrade to `stream_id`'s socket as `client`: the socket, or the
/// refusal's status, `Retry-After` and JSON body.
async fn upgrade_as(
    app: &TestApp,
    stream_id: &str,
    client: &str,
) -> Result<WsClient, (StatusCode, Option<String>, Value)> {
    let url = app.url(&format!("/v0/streams/{stream_id}/socket"));
    let request = awc::Client::new()
        .ws(url.replacen("http", "ws", 1))
        .header("X-Forwarded-For", client);
    match request.connect().await {
        Ok((_, framed)) => Ok(WsClient::from_framed(framed)),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            // awc keeps no body of a refused upgrade: ask again over plain
            // HTTP, which the server answers the same way.
            let (retry, body) =
                get_as(app, &format!("/v0/streams/{stream_id}/socket"), client).await;
            Err((status, retry, body))
        }
        Err(e) => panic!("the upgrade failed otherwise: {e}"),
    }
}

/// A GET of `path` as `client`: its `Retry-After` and JSON body.
async fn get_as(app: &TestApp, path: &str, client: &str) -> (Option<String>, Value) {
    let mut answer = app
        .client
        .get(app.url(path))
        .insert_header(("X-Forwarded-For", client))
        .send()
        .await
        .expect("an answer");
    let retry = answer
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = answer.json::<Value>().await.unwrap_or(Value::Null);
    (retry, body)
}

/// The honest pair's client address.
const HONEST: &str = "198.18.0.1";

/// The status of a GET of `path` as `client`.
async fn status_as(app: &TestApp, path: &str, client: &str) -> u16 {
    app.client
        .get(app.url(path))
        .insert_header(("X-Forwarded-For", client))
        .send()
        .await
        .expect("an answer")
        .status()
        .as_u16()
}

/// One client address holds at most `max_sockets_per_client` sockets; the
/// next is refused with 429 naming the limit, while another address is not
/// affected, and a socket that closes frees its slot.
#[actix_web::test]
async fn sockets_per_client_are_limited() {
    let app = spawn_app_with(|s| s.limits.max_sockets_per_client = 3).await;
    let mut honest = HonestPair::start_from(&app, Some(HONEST)).await;
    let (token, id) = app.sender_with_stream(1, None, "Host").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(upgrade_as(&app, &id, "192.0.2.1").await.expect("admitted"));
    }
    let Err((status, _, body)) = upgrade_as(&app, &id, "192.0.2.1").await else {
        panic!("a fourth socket from one address was admitted");
    };
    assert_eq!(status, 429);
    assert_eq!(
        body["error"],
        "too many open sockets from this address (at most 3)"
    );
    honest.still_fine(20).await;
    let mut other = upgrade_as(&app, &id, "192.0.2.2")
        .await
        .expect("another client");
    let mut sender = app.connect(&id, Some(&token)).await;
    sender.send_json(&move_event(1)).await;
    assert_eq!(other.next_json().await, move_event(1));

    held.pop()
        .expect("a socket")
        .send(awc::ws::Message::Close(None))
        .await;
    let again = actix::clock::timeout(WAIT, async {
        loop {
            if let Ok(socket) = upgrade_as(&app, &id, "192.0.2.1").await {
                return socket;
            }
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slot frees within the wait bound");
    drop(again);
    honest.still_fine(20).await;
}

/// Handshakes from one address beyond its burst are refused with 429 and a
/// `Retry-After`; another address, and API requests, are not affected.
#[actix_web::test]
async fn handshakes_per_client_are_limited() {
    let app = spawn_app_with(|s| {
        s.limits.handshakes_per_client_per_sec = 0.01;
        s.limits.handshake_burst = 5.0;
    })
    .await;
    let mut honest = HonestPair::start_from(&app, Some(HONEST)).await;
    let (_, id) = app.sender_with_stream(2, None, "Host").await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            upgrade_as(&app, &id, "198.51.100.1")
                .await
                .expect("within the burst"),
        );
    }
    let Err((status, retry, body)) = upgrade_as(&app, &id, "198.51.100.1").await else {
        panic!("a handshake past the burst was let through");
    };
    assert_eq!(status, 429);
    assert_eq!(body["error"], "rate limit exceeded: handshakes per client");
    let retry: u64 = retry.expect("a Retry-After").parse().unwrap();
    assert!((1..=100).contains(&retry), "Retry-After: {retry}");
    honest.still_fine(20).await;
    assert!(upgrade_as(&app, &id, "198.51.100.2").await.is_ok());
    assert_eq!(status_as(&app, "/v0/streams", "198.51.100.1").await, 200);
    honest.still_fine(20).await;
}

/// API requests from one address beyond its burst are refused with 429 and
/// a `Retry-After`; another address goes on, and so do sockets.
#[actix_web::test]
async fn requests_per_client_are_limited() {
    let app = spawn_app_with(|s| {
        s.limits.requests_per_client_per_sec = 0.01;
        s.limits.request_burst = 10.0;
    })
    .await;
    let mut honest = HonestPair::start_from(&app, Some(HONEST)).await;
    let (token, id) = app.sender_with_stream(3, None, "Host").await;
    for _ in 0..10 {
        assert_eq!(status_as(&app, "/v0/streams", "203.0.113.1").await, 200);
    }
    let (retry, body) = get_as(&app, "/v0/streams", "203.0.113.1").await;
    assert_eq!(body["error"], "rate limit exceeded: requests per client");
    assert!(retry.expect("a Retry-After").parse::<u64>().unwrap() >= 1);
    assert_eq!(status_as(&app, "/v0/streams", "203.0.113.1").await, 429);
    honest.still_fine(20).await;
    assert_eq!(status_as(&app, "/v0/streams", HONEST).await, 200);
    assert_eq!(status_as(&app, "/v0/streams", "203.0.113.2").await, 200);
    let mut viewer = upgrade_as(&app, &id, "203.0.113.1")
        .await
        .expect("a socket");
    let mut sender = app.connect(&id, Some(&token)).await;
    sender.send_json(&move_event(7)).await;
    assert_eq!(viewer.next_json().await, move_event(7));
}

/// The request log names the client address, not the proxy's.
#[actix_web::test]
async fn the_request_log_shows_the_client_address() {
    let dir = TempDir::new("clients-log");
    let wca = FakeWca::start();
    let (_child, port, logs) = start_binary(dir.path(), wca.origin());
    let status = awc::Client::new()
        .get(format!("http://127.0.0.1:{port}/v0/streams"))
        .insert_header(("X-Forwarded-For", "192.0.2.77"))
        .send()
        .await
        .expect("an answer")
        .status();
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = logs
            .recv_timeout(left)
            .expect("a request log line naming the client");
        if line.contains("192.0.2.77 GET /v0/streams 200") {
            break;
        }
    }
}
