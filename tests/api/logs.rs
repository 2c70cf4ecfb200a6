//! No secret reaches the log, not even at `RUST_LOG=trace`: neither an
//! access token nor a claim token, nor the OAuth code, nor the WCA client
//! secret, whichever way it travelled (query string, `Authorization`
//! header, the token request's form, a WebSocket URL, a WebSocket
//! subprotocol).

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;

/// 128 random bits as 32 lowercase hex digits, the random part of a token.
fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A whole flow against the binary at trace level: a sign-in (callback and
/// claim), a stream created with the token in the query and once in an
/// `Authorization: Bearer` header, a bad token, a sender and a viewer, a
/// sender with its token as a subprotocol and a bad token there, and a stop
/// by SIGTERM. Not one line of its output holds a secret in full.
#[actix_web::test]
async fn no_secret_reaches_the_log_at_trace_level() {
    let dir = Arc::new(TempDir::new("logs"));
    let client_secret = random_hex();
    let wca = FakeWca::builder()
        .client_secret(&client_secret)
        .try_start()
        .expect("start the fake WCA");
    let (mut child, port, logs) = start_binary_with(dir.path(), wca.origin(), |command| {
        command
            .env("RUST_LOG", "trace")
            .env("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET", &client_secret);
    });
    let app = TestApp::attach(Arc::clone(&dir), wca, port);

    let code_secret = random_hex();
    let code = format!("code-{code_secret}");
    app.wca.add_code(
        &code,
        WcaAccount {
            id: 77,
            wca_id: Some("2077LOGS01".to_owned()),
            name: "Log Reader".to_owned(),
        },
    );
    let claim = app.callback(&code).await;
    assert_eq!(
        app.wca
            .token_forms()
            .last()
            .map(|f| f.get("client_secret") == Some(&client_secret)),
        Some(true),
        "the client secret went to the WCA"
    );
    let (token, _) = app
        .try_claim(&claim)
        .await
        .unwrap_or_else(|a| panic!("claim answered {}", a.status));

    let id = app.create_stream(&token).await;
    let by_header = app.post_as("/v0/streams", &token).await;
    assert_eq!(by_header.status, 200, "a Bearer header works");
    let bad_token = format!("twizzle_access_token_{}", random_hex());
    let refused = app
        .post(&format!("/v0/streams?twizzleAccessToken={bad_token}"))
        .await;
    assert_eq!(refused.status, 401, "a bad token is refused");

    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    let events = [reset_event(false), orientation_event(0.25), move_event(1)];
    for event in &events {
        sender.send_json(event).await;
    }
    for event in &events {
        assert_eq!(&viewer.next_json().await, event);
    }
    let socket_url = format!("ws://127.0.0.1:{port}/v0/streams/{id}/socket");
    let (_, mut by_protocol) =
        WsClient::connect_offering(socket_url.clone(), &["twizzle.v0", &token])
            .await
            .expect("a sender's token works as a subprotocol");
    by_protocol.send_json(&move_event(2)).await;
    assert_eq!(viewer.next_json().await, move_event(2));
    by_protocol.send(awc::ws::Message::Close(None)).await;
    assert!(matches!(by_protocol.next().await, Seen::Close(_)));
    let bad_protocol_token = format!("twizzle_access_token_{}", random_hex());
    assert!(
        WsClient::connect_offering(socket_url, &["twizzle.v0", &bad_protocol_token])
            .await
            .is_err(),
        "a bad token in a subprotocol is refused"
    );

    child.signal("TERM");
    let status = child
        .wait_within(Duration::from_secs(2))
        .expect("exit within 2 seconds of SIGTERM");
    assert!(status.success(), "exit status {status}");
    let lines = rest_of(&logs);

    assert!(
        lines.iter().any(|l| l.contains("TRACE")),
        "the log is at trace level"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("POST /v0/claim?claimToken=…")),
        "requests are logged, their secrets cut short"
    );
    let secrets = [
        ("the access token", hex_of(&token, "twizzle_access_token_")),
        ("the claim token", hex_of(&claim, "claim_token_")),
        (
            "the bad access token",
            hex_of(&bad_token, "twizzle_access_token_"),
        ),
        (
            "the bad access token in a subprotocol",
            hex_of(&bad_protocol_token, "twizzle_access_token_"),
        ),
        ("the OAuth code", code_secret.as_str()),
        ("the WCA client secret", client_secret.as_str()),
    ];
    for (what, secret) in secrets {
        let leaks = lines.iter().filter(|l| l.contains(secret)).count();
        assert_eq!(leaks, 0, "{what} appeared in full in {leaks} log lines");
    }
}

/// The random part of `token`, which starts with `prefix`.
fn hex_of<'a>(token: &'a str, prefix: &str) -> &'a str {
    let hex = token.strip_prefix(prefix).expect("a token of its kind");
    assert_eq!(hex.len(), 32, "a token's random part is 32 hex digits");
    hex
}
