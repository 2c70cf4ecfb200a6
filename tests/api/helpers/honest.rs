//! The honest pair: a sender and a viewer on a stream of their own, from a
//! client address of their own when a test poses as clients through the
//! trusted proxy, that a limit's test keeps talking while it refuses the
//! offender. Nothing the offender does may cost the pair an event or
//! reorder one.

use awc::http::header::HeaderMap;
use serde_json::Value;

use super::app::TestApp;
use super::events::move_event;
use super::ws::WsClient;
use super::{WcaAccount, WAIT};

/// The WCA account the honest user signs in with; tests number theirs lower.
const HONEST_ACCOUNT: u64 = 900;

/// An honest sender and viewer on a stream of their own.
pub struct HonestPair {
    sender: WsClient,
    viewer: WsClient,
    /// The stream's ID.
    pub stream_id: String,
    /// The next event's number.
    next: u64,
}

impl HonestPair {
    /// Signs the honest user in, creates its stream and opens its sender
    /// and viewer, all as the client the server sees the test as (the
    /// trusted proxy itself, 127.0.0.1).
    pub async fn start(app: &TestApp) -> HonestPair {
        HonestPair::start_from(app, None).await
    }

    /// [`HonestPair::start`], every request and socket sent through the
    /// trusted proxy on behalf of `client` (its `X-Forwarded-For`), so the
    /// pair spends that address's budgets and no other.
    pub async fn start_from(app: &TestApp, client: Option<&str>) -> HonestPair {
        let code = app.code_for(WcaAccount {
            id: HONEST_ACCOUNT,
            wca_id: Some("2000HONE01".to_owned()),
            name: "Honest".to_owned(),
        });
        let (status, headers, _) = request(
            app,
            "GET",
            &format!("/v0/auth/wca/oauth_callback?code={code}"),
            client,
        )
        .await;
        assert_eq!(status, 302, "the honest sign-in was refused");
        let location = headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("a Location");
        let claim = location
            .split("claimToken=")
            .nth(1)
            .and_then(|rest| rest.split(['&', '#']).next())
            .expect("claimToken in the redirect")
            .to_owned();
        let (status, _, body) = request(
            app,
            "POST",
            &format!("/v0/claim?claimToken={claim}"),
            client,
        )
        .await;
        assert_eq!(status, 200, "the honest claim was refused: {body}");
        let token = body["twizzleAccessToken"]
            .as_str()
            .expect("an access token")
            .to_owned();
        let (status, _, body) = request(
            app,
            "POST",
            &format!("/v0/streams?twizzleAccessToken={token}"),
            client,
        )
        .await;
        assert_eq!(status, 200, "the honest stream was refused: {body}");
        let stream_id = body["streamID"].as_str().expect("a stream ID").to_owned();
        let path = format!("/v0/streams/{stream_id}/socket");
        let sender = socket(app, &format!("{path}?twizzleAccessToken={token}"), client).await;
        let viewer = socket(app, &path, client).await;
        HonestPair {
            sender,
            viewer,
            stream_id,
            next: 0,
        }
    }

    /// Sends `n` events and checks that the viewer gets each, in order.
    /// Events are compared by their `event` and `data`: the server may add
    /// fields of its own to a frame.
    pub async fn still_fine(&mut self, n: u64) {
        for _ in 0..n {
            self.sender.send_json(&move_event(self.next)).await;
            self.next += 1;
        }
        for k in self.next - n..self.next {
            let sent = move_event(k);
            let got = self.viewer.next_json().await;
            assert_eq!(
                (&got["event"], &got["data"]),
                (&sent["event"], &sent["data"]),
                "the honest stream lost or reordered an event: expected event {k}"
            );
        }
    }

    /// Every event the honest pair sent so far.
    pub fn sent(&self) -> u64 {
        self.next
    }
}

/// A request with no body, as `client` through the trusted proxy if given:
/// its status, headers and JSON body (null if there is none).
async fn request(
    app: &TestApp,
    method: &str,
    path: &str,
    client: Option<&str>,
) -> (u16, HeaderMap, Value) {
    let url = app.url(path);
    let mut request = match method {
        "GET" => app.client.get(url),
        _ => app.client.post(url),
    };
    if let Some(client) = client {
        request = request.insert_header(("X-Forwarded-For", client));
    }
    let mut answer = actix::clock::timeout(WAIT, request.send())
        .await
        .expect("an answer within the wait bound")
        .expect("an answer");
    let body = answer.json::<Value>().await.unwrap_or(Value::Null);
    (answer.status().as_u16(), answer.headers().clone(), body)
}

/// A socket to `path`, as `client` through the trusted proxy if given.
async fn socket(app: &TestApp, path: &str, client: Option<&str>) -> WsClient {
    let url = format!("ws://127.0.0.1:{}{path}", app.socket_port());
    let mut request = awc::Client::new().ws(url).max_frame_size(1 << 24);
    if let Some(client) = client {
        request = request.header("X-Forwarded-For", client);
    }
    let (_, framed) = request.connect().await.expect("the honest socket opens");
    WsClient::from_framed(framed)
}
