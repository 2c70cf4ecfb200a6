//! One way to start the real server for a test: on port 0, in a fresh data
//! directory, signed in through a fake WCA on loopback.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{CloseReason, Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use twizzle_api_server::config::{Secret, Settings};
use twizzle_api_server::startup::Application;
pub use twizzle_api_server::testkit::{FakeWca, TempDir, WcaAccount};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// The settings a test server runs with: port 0, its own data dir, the fake WCA.
pub fn test_settings(data_dir: &Path, wca_origin: &str) -> Settings {
    let mut settings = Settings::local();
    settings.bind = "127.0.0.1:0".to_owned();
    settings.data_dir = data_dir.to_owned();
    settings.wca.origin = wca_origin.to_owned();
    settings.wca.client_secret = Some(Secret::new("test-client-secret"));
    settings.client_app_url = "http://localhost:1234/stream/".to_owned();
    settings
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub wca: FakeWca,
    pub client: awc::Client,
    pub handle: Option<twizzle_api_server::startup::AppHandle>,
    pub dir: Arc<TempDir>,
    next_code: std::cell::Cell<u64>,
}

/// Starts a server with the test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server with the test settings, changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_in(Arc::new(TempDir::new("api")), FakeWca::start(), tweak).await
}

/// Starts a server on an existing data directory and fake WCA (for restarts).
pub async fn spawn_app_in(
    dir: Arc<TempDir>,
    wca: FakeWca,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = test_settings(dir.path(), wca.origin());
    tweak(&mut settings);
    let app = Application::build(settings).await.expect("the app builds");
    let port = app.port();
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        wca,
        client: awc::Client::builder()
            .disable_redirects()
            .timeout(WAIT)
            .finish(),
        handle: Some(handle),
        dir,
        next_code: std::cell::Cell::new(0),
    }
}

impl TestApp {
    /// A `TestApp` for a server that runs elsewhere (another process) on `port`.
    pub fn attach(dir: Arc<TempDir>, wca: FakeWca, port: u16) -> TestApp {
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            wca,
            client: awc::Client::builder()
                .disable_redirects()
                .timeout(WAIT)
                .finish(),
            handle: None,
            dir,
            next_code: std::cell::Cell::new(0),
        }
    }
}

/// A status and a parsed JSON body.
pub struct Answer {
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> Answer {
        answer(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("GET answered"),
        )
        .await
    }

    pub async fn post(&self, path: &str) -> Answer {
        answer(
            self.client
                .post(self.url(path))
                .send()
                .await
                .expect("POST answered"),
        )
        .await
    }

    /// A fresh OAuth code that signs `account` in.
    pub fn code_for(&self, account: WcaAccount) -> String {
        let n = self.next_code.get() + 1;
        self.next_code.set(n);
        let code = format!("code-{}-{n}", account.id);
        self.wca.add_code(&code, account);
        code
    }

    /// The claim token from the sign-in redirect for `code`.
    pub async fn callback(&self, code: &str) -> String {
        let answer = self
            .get(&format!("/v0/auth/wca/oauth_callback?code={code}"))
            .await;
        assert_eq!(answer.status, 302, "callback answered {}", answer.body);
        let location = answer
            .headers
            .get("location")
            .expect("a Location")
            .to_str()
            .unwrap()
            .to_owned();
        let claim = location
            .split("claimToken=")
            .nth(1)
            .expect("claimToken in the redirect");
        claim.split(['&', '#']).next().unwrap().to_owned()
    }

    /// Signs in as a user with this WCA account number; returns the access token and user info.
    pub async fn sign_in(
        &self,
        account_id: u64,
        wca_id: Option<&str>,
        name: &str,
    ) -> (String, Value) {
        let code = self.code_for(WcaAccount {
            id: account_id,
            wca_id: wca_id.map(str::to_owned),
            name: name.to_owned(),
        });
        let claim = self.callback(&code).await;
        let answer = self.post(&format!("/v0/claim?claimToken={claim}")).await;
        assert_eq!(answer.status, 200, "claim answered {}", answer.body);
        let token = answer.body["twizzleAccessToken"]
            .as_str()
            .expect("an access token")
            .to_owned();
        (token, answer.body["userInfo"].clone())
    }

    /// Creates a stream; returns its ID.
    pub async fn create_stream(&self, token: &str) -> String {
        let answer = self
            .post(&format!("/v0/streams?twizzleAccessToken={token}"))
            .await;
        assert_eq!(answer.status, 200, "create answered {}", answer.body);
        answer.body["streamID"]
            .as_str()
            .expect("a stream ID")
            .to_owned()
    }

    /// Opens a socket on a stream, with or without a token.
    pub async fn connect(&self, stream_id: &str, token: Option<&str>) -> WsClient {
        self.try_connect(stream_id, token)
            .await
            .expect("the socket opens")
    }

    pub async fn try_connect(
        &self,
        stream_id: &str,
        token: Option<&str>,
    ) -> Result<WsClient, awc::error::WsClientError> {
        let mut url = format!("ws://127.0.0.1:{}/v0/streams/{stream_id}/socket", self.port);
        if let Some(token) = token {
            url.push_str(&format!("?twizzleAccessToken={token}"));
        }
        let (_, framed) = awc::Client::new()
            .ws(url)
            .max_frame_size(1 << 24)
            .connect()
            .await?;
        Ok(WsClient { framed })
    }
}

async fn answer(
    mut res: awc::ClientResponse<
        impl futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>
            + Unpin,
    >,
) -> Answer {
    let bytes = res.body().await.expect("a body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body,
    }
}

/// A test's end of a WebSocket.
pub struct WsClient {
    framed: Framed<BoxedSocket, Codec>,
}

/// What a socket saw next.
#[derive(Debug)]
pub enum Seen {
    Text(String),
    Binary,
    Close(Option<CloseReason>),
    Pong(Vec<u8>),
    Ended,
}

impl WsClient {
    pub async fn send_text(&mut self, text: &str) {
        self.framed
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send a frame");
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send(&mut self, message: Message) {
        self.framed.send(message).await.expect("send a frame");
    }

    /// The next data or close frame (pings are answered, pongs skipped), within the wait bound.
    pub async fn next(&mut self) -> Seen {
        loop {
            let frame = actix::clock::timeout(WAIT, self.framed.next())
                .await
                .expect("a frame within the wait bound");
            match frame {
                Some(Ok(Frame::Text(bytes))) => {
                    return Seen::Text(String::from_utf8(bytes.to_vec()).unwrap())
                }
                Some(Ok(Frame::Binary(_))) => return Seen::Binary,
                Some(Ok(Frame::Close(reason))) => return Seen::Close(reason),
                Some(Ok(Frame::Ping(payload))) => {
                    let _ = self.framed.send(Message::Pong(payload)).await;
                }
                Some(Ok(Frame::Pong(payload))) => return Seen::Pong(payload.to_vec()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Seen::Ended,
            }
        }
    }

    /// The next frame, which must be a JSON text frame.
    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            Seen::Text(text) => serde_json::from_str(&text).expect("a JSON frame"),
            other => panic!("expected a text frame, saw {other:?}"),
        }
    }

    /// The next frame, which must be a close frame; its code and reason.
    pub async fn next_close(&mut self) -> (u16, String) {
        match self.next().await {
            Seen::Close(Some(reason)) => (
                u16::from(reason.code),
                reason.description.unwrap_or_default(),
            ),
            other => panic!("expected a close frame, saw {other:?}"),
        }
    }
}

/// A move event as the client sends it.
pub fn move_event(n: u64) -> Value {
    json!({"event": "move", "data": {"latestMove": {"family": "R", "amount": 1, "n": n}, "timeStamp": n, "binaryState": format!("state-{n}")}})
}

/// An orientation event as the client sends it.
pub fn orientation_event(w: f64) -> Value {
    json!({"event": "orientation", "data": {"quaternion": {"x": 0.0, "y": 0.0, "z": 0.0, "w": w}, "timeStamp": 1}})
}

/// A reset event as the client sends it.
pub fn reset_event(tracking: bool) -> Value {
    json!({"event": "reset", "data": {"trackingOrientation": tracking}})
}

/// A WebSocket client on a plain blocking socket that does nothing by itself:
/// it answers no ping and reads only when told, to play a client that stops
/// reading or stops answering.
pub struct RawSocket {
    stream: std::net::TcpStream,
}

impl RawSocket {
    /// Opens a socket to `stream_id` as a viewer, with a receive buffer of
    /// `receive_buffer` bytes, and completes the handshake.
    pub fn open(port: u16, stream_id: &str, receive_buffer: i32) -> RawSocket {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // SAFETY: a valid socket and a c_int that outlives the call.
        let set = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&receive_buffer as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "setsockopt SO_RCVBUF");
        write!(
            stream,
            "GET /v0/streams/{stream_id}/socket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("the handshake answer");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        RawSocket { stream }
    }

    /// Reads (and discards) until the server closes the connection, with no
    /// more than `quiet` between reads; the frames' opcodes seen, in order.
    /// Panics if the connection is still open but silent for `quiet`.
    pub fn drain_until_closed(&mut self, quiet: std::time::Duration) -> Vec<u8> {
        use std::io::Read;
        self.stream.set_read_timeout(Some(quiet)).unwrap();
        let mut all = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "the server kept the connection open ({e}) after {} bytes",
                    all.len()
                ),
            }
        }
        opcodes(&all)
    }
}

impl RawSocket {
    /// Reads the next `count` text frames (answering nothing), each within the wait bound.
    pub fn read_texts(&mut self, count: usize) -> Vec<String> {
        use std::io::Read;
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut texts = Vec::with_capacity(count);
        let mut header = [0u8; 2];
        while texts.len() < count {
            self.stream
                .read_exact(&mut header)
                .expect("a frame within the wait bound");
            let len = match header[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.stream.read_exact(&mut n).unwrap();
                    usize::from(u16::from_be_bytes(n))
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.stream.read_exact(&mut n).unwrap();
                    u64::from_be_bytes(n) as usize
                }
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).unwrap();
            match header[0] & 0x0f {
                0x1 => texts.push(String::from_utf8(payload).unwrap()),
                0x9 => {}
                op => panic!("unexpected frame with opcode {op}"),
            }
        }
        texts
    }
}

/// The opcodes of the server-to-client (unmasked) frames in `bytes`.
fn opcodes(bytes: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 if at + 4 <= bytes.len() => (
                usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                4,
            ),
            127 if at + 10 <= bytes.len() => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[at + 2..at + 10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            n if n < 126 => (usize::from(n), 2),
            _ => break,
        };
        seen.push(opcode);
        at += header + len;
    }
    seen
}

/// Sends a WebSocket upgrade request on a plain socket; the status and the
/// body of a refusal (awc hides the body of a refused upgrade).
pub fn raw_upgrade(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut buf)
            .expect("an answer within the wait bound");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length || n == 0 {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body[..length.min(body.len())].to_owned());
            }
        }
        assert!(n > 0, "the connection closed mid-answer");
    }
}
