//! The server's HTTP API as the demo uses it: the development sign-in, the
//! claim, a new stream, and the sender's socket.

use std::fmt;
use std::time::Duration;

use actix_codec::Framed;
use awc::ws::Codec;
use awc::BoxedSocket;
use serde_json::Value;
use twizzle_api_server::testkit::query_value;

/// How long one request to the server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The subprotocol that carries the access token, so it stays out of the URL.
const SUBPROTOCOL: &str = "twizzle.v0";

/// A sender's socket on its stream.
pub type Socket = Framed<BoxedSocket, Codec>;

/// Why the demo could not get going, or stopped.
#[derive(Debug)]
pub enum DemoError {
    /// The server did not answer at all.
    Unreachable {
        /// The server's origin.
        server: String,
        /// What the connection said.
        why: String,
    },
    /// The server has no development sign-in (404).
    NoDevSignIn {
        /// The server's origin.
        server: String,
    },
    /// The server answered a step with something other than success.
    Refused {
        /// The step, e.g. `creating a stream`.
        step: &'static str,
        /// Its status, if it answered HTTP.
        status: Option<u16>,
        /// Its error message, or what was wrong with its answer.
        message: String,
    },
    /// The stream's socket closed or failed while streaming.
    SocketClosed(String),
    /// The connection was lost, or the server is restarting: worth
    /// connecting again.
    Dropped(String),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Unreachable { server, why } => write!(
                f,
                "cannot reach the server at {server} ({why}); is it running? (cargo run --release)"
            ),
            DemoError::NoDevSignIn { server } => write!(
                f,
                "the server at {server} has no development sign-in (GET /v0/auth/dev answered 404): \
                 it is on only without a WCA client secret, without --prod, and when the server \
                 listens on a loopback address"
            ),
            DemoError::Refused {
                step,
                status: Some(status),
                message,
            } => write!(f, "{step}: the server answered {status}: {message}"),
            DemoError::Refused {
                step,
                status: None,
                message,
            } => write!(f, "{step}: {message}"),
            DemoError::SocketClosed(why) => write!(f, "the stream's socket closed: {why}"),
            DemoError::Dropped(why) => write!(f, "the stream's connection dropped: {why}"),
        }
    }
}

/// Who the demo signed in as.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The access token; shown nowhere.
    pub token: String,
    /// The public user info (`twizzleUserID`, `wcaID`, `name`).
    pub user: Value,
}

/// The server's API, at one origin.
pub struct Api {
    /// `http://host:port`, without a trailing slash.
    server: String,
    /// Follows no redirects: the claim token is in the sign-in's.
    client: awc::Client,
}

/// The `error` of a JSON error body, or the body as text.
fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

/// The `claimToken` in a redirect's `Location`.
fn claim_token_in(location: &str) -> Option<&str> {
    let query = location.split_once('?')?.1.split('#').next()?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("claimToken="))
        .filter(|token| !token.is_empty())
}

impl Api {
    /// The API of the server at `server`.
    pub fn new(server: &str) -> Api {
        Api {
            server: server.to_owned(),
            client: awc::Client::builder()
                .disable_redirects()
                .timeout(REQUEST_TIMEOUT)
                .finish(),
        }
    }

    fn unreachable(&self, why: impl fmt::Display) -> DemoError {
        DemoError::Unreachable {
            server: self.server.clone(),
            why: why.to_string(),
        }
    }

    /// Signs in as the development user `name` and claims their token.
    pub async fn sign_in(&self, name: &str) -> Result<SignedIn, DemoError> {
        const STEP: &str = "signing in";
        let url = format!("{}/v0/auth/dev?name={}", self.server, query_value(name));
        let mut answer = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = answer.status().as_u16();
        match status {
            302 => {}
            404 => {
                return Err(DemoError::NoDevSignIn {
                    server: self.server.clone(),
                })
            }
            _ => {
                let body = answer.body().await.unwrap_or_default();
                return Err(DemoError::Refused {
                    step: STEP,
                    status: Some(status),
                    message: message_of(&body),
                });
            }
        }
        let claim = answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .and_then(claim_token_in)
            .ok_or(DemoError::Refused {
                step: STEP,
                status: None,
                message: "the sign-in's redirect carries no claimToken".to_owned(),
            })?
            .to_owned();
        let body = self
            .post(
                &format!("/v0/claim?claimToken={claim}"),
                None,
                "claiming the sign-in",
            )
            .await?;
        match (body["twizzleAccessToken"].as_str(), body.get("userInfo")) {
            (Some(token), Some(user)) => Ok(SignedIn {
                token: token.to_owned(),
                user: user.clone(),
            }),
            _ => Err(DemoError::Refused {
                step: "claiming the sign-in",
                status: None,
                message: "the answer has no twizzleAccessToken and userInfo".to_owned(),
            }),
        }
    }

    /// Creates a stream for the user of `token`; its ID.
    pub async fn create_stream(&self, token: &str) -> Result<String, DemoError> {
        const STEP: &str = "creating a stream";
        let body = self.post("/v0/streams", Some(token), STEP).await?;
        body["streamID"]
            .as_str()
            .map(str::to_owned)
            .ok_or(DemoError::Refused {
                step: STEP,
                status: None,
                message: "the answer has no streamID".to_owned(),
            })
    }

    /// `POST path`, with `token` as a Bearer token if given: the JSON body
    /// of a 200.
    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        step: &'static str,
    ) -> Result<Value, DemoError> {
        let mut request = self.client.post(format!("{}{path}", self.server));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let mut answer = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = answer.status().as_u16();
        let body = answer.body().await.map_err(|e| DemoError::Refused {
            step,
            status: Some(status),
            message: format!("the answer could not be read: {e}"),
        })?;
        if status != 200 {
            return Err(DemoError::Refused {
                step,
                status: Some(status),
                message: message_of(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| DemoError::Refused {
            step,
            status: Some(status),
            message: format!("the answer is not JSON: {e}"),
        })
    }

    /// Opens the sender's socket on `stream_id`, the token offered as a
    /// subprotocol beside `twizzle.v0` rather than put in the URL.
    pub async fn connect(&self, stream_id: &str, token: &str) -> Result<Socket, DemoError> {
        let origin = match self.server.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", self.server.trim_start_matches("http://")),
        };
        let url = format!("{origin}/v0/streams/{stream_id}/socket");
        let (_, socket) = awc::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .finish()
            .ws(url)
            .protocols([SUBPROTOCOL, token])
            .connect()
            .await
            .map_err(|e| match e {
                awc::error::WsClientError::InvalidResponseStatus(status) => DemoError::Refused {
                    step: "opening the stream's socket",
                    status: Some(status.as_u16()),
                    message: "not upgraded".to_owned(),
                },
                awc::error::WsClientError::SendRequest(e) => self.unreachable(e),
                other => DemoError::Refused {
                    step: "opening the stream's socket",
                    status: None,
                    message: other.to_string(),
                },
            })?;
        Ok(socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_token_is_read_from_the_redirect() {
        for (location, claim) in [
            (
                "http://localhost:1234/?claimToken=claim_token_ab",
                Some("claim_token_ab"),
            ),
            ("https://x/stream/?a=1&claimToken=c1#top", Some("c1")),
            ("https://x/stream/?claimToken=", None),
            ("https://x/stream/", None),
            ("https://x/?notclaimToken=c", None),
        ] {
            assert_eq!(claim_token_in(location), claim, "{location}");
        }
    }

    #[test]
    fn names_are_encoded_for_the_query() {
        assert_eq!(query_value("Demo Cuber"), "Demo%20Cuber");
        assert_eq!(query_value("Zoë&x=1"), "Zo%C3%AB%26x%3D1");
    }

    #[test]
    fn error_bodies_are_read_for_their_message() {
        assert_eq!(
            message_of(br#"{"error":"stream ID is unknown"}"#),
            "stream ID is unknown"
        );
        assert_eq!(message_of(b"plain\n"), "plain");
    }
}
