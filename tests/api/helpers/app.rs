//! The server under test: its settings, starting it on port 0, and the
//! HTTP calls and sign-in steps a test makes against it. A `TestApp` on a
//! cluster sends each request and opens each socket on the next node in
//! turn; [`TestApp::on`] picks one node.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use twizzle_actors::store::Stores;
use twizzle_api_server::config::{Secret, Settings};
use twizzle_api_server::startup::Application;
use twizzle_api_server::testkit::{FakeWca, TempDir, WcaAccount};

use super::cluster::{Cluster, Ports};
use super::ws::WsClient;
use super::WAIT;

/// The settings a test server runs with: port 0, its own data dir, the fake WCA.
pub fn test_settings(data_dir: &Path, wca_origin: &str) -> Settings {
    let mut settings = Settings::local();
    settings.bind = "127.0.0.1:0".to_owned();
    settings.data_dir = data_dir.to_owned();
    settings.wca.origin = wca_origin.to_owned();
    settings.wca.client_secret = Some(Secret::new("test-client-secret"));
    settings.client_app_url = "http://localhost:1234/stream/".to_owned();
    // Every test client is 127.0.0.1: the per-client limits are lifted, as
    // for any test suite, except where a test sets them to try them.
    settings.limits.max_sockets_per_client = 1_000_000;
    settings.limits.handshakes_per_client_per_sec = 1e9;
    settings.limits.handshake_burst = 1e9;
    settings.limits.requests_per_client_per_sec = 1e9;
    settings.limits.request_burst = 1e9;
    // Many servers run side by side: each serves its metrics on a port of its own.
    settings.metrics_bind = Some("127.0.0.1:0".to_owned());
    settings
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The port the server listens on.
    pub port: u16,
    /// The fake WCA the server signs in through.
    pub wca: FakeWca,
    /// An HTTP client that follows no redirects (the claim token is in one).
    pub client: awc::Client,
    /// Stops the server; `None` for a server in another process.
    pub handle: Option<twizzle_api_server::startup::AppHandle>,
    /// The server's data directory, shared with a restarted server.
    pub dir: Arc<TempDir>,
    /// Numbers the codes of [`TestApp::code_for`].
    next_code: Cell<u64>,
    /// Where the server serves `GET /metrics`, if it is known.
    pub metrics_port: Option<u16>,
    /// On a cluster, each node's port while it is up; `None` for one server.
    ports: Option<Ports>,
    /// Counts the requests sent, to send each to the next node.
    requests: Cell<usize>,
    /// Counts the sockets opened, to open each on the next node.
    sockets: Cell<usize>,
    /// The cluster this app alone runs on, stopped with it.
    _cluster: Option<Box<Cluster>>,
}

/// Starts a server with the test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server with the test settings but no WCA client secret, on
/// loopback: one with the development sign-in.
pub async fn spawn_dev_app() -> TestApp {
    spawn_app_with(|s| s.wca.client_secret = None).await
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
    let metrics_port = app.metrics_port();
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        handle: Some(handle),
        metrics_port,
        ..TestApp::attach(dir, wca, port)
    }
}

/// Starts a server with the test settings on `stores` instead of its data
/// directory's, whose handlers wait `deadline` for an actor.
pub async fn spawn_app_on(stores: Stores, deadline: Duration) -> TestApp {
    let dir = Arc::new(TempDir::new("api"));
    let wca = FakeWca::start();
    let settings = test_settings(dir.path(), wca.origin());
    let app = Application::build_with(settings, stores, deadline)
        .await
        .expect("the app builds");
    let port = app.port();
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        handle: Some(handle),
        ..TestApp::attach(dir, wca, port)
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
            next_code: Cell::new(0),
            metrics_port: None,
            ports: None,
            requests: Cell::new(0),
            // The first socket opens on another node than the first
            // request's: a stream created on one node is used on the next.
            sockets: Cell::new(1),
            _cluster: None,
        }
    }

    /// A `TestApp` for the nodes of a cluster whose ports are `ports`
    /// (shared with the cluster, which marks a node that is down): each
    /// request and socket goes to the next node that is up.
    pub fn across(dir: Arc<TempDir>, wca: FakeWca, ports: Ports) -> TestApp {
        let first = ports.lock().unwrap().iter().flatten().copied().next();
        let app = TestApp::attach(dir, wca, first.expect("a node that is up"));
        TestApp {
            ports: Some(ports),
            ..app
        }
    }

    /// This app, owning `cluster`: the nodes stop when the app is dropped.
    pub fn owning(self, cluster: Cluster) -> TestApp {
        TestApp {
            _cluster: Some(Box::new(cluster)),
            ..self
        }
    }

    /// The port of the next node in turn after those `counter` has counted
    /// (of the nodes up now); the one server's port if this is not a cluster.
    fn next_port(&self, counter: &Cell<usize>) -> u16 {
        let Some(ports) = &self.ports else {
            return self.port;
        };
        let up: Vec<u16> = ports.lock().unwrap().iter().flatten().copied().collect();
        assert!(!up.is_empty(), "no node of the cluster is up");
        let n = counter.get();
        counter.set(n + 1);
        up[n % up.len()]
    }

    /// The port the next socket opens on: the one server's, or on a
    /// cluster the next node's in turn. For a test that opens a socket of
    /// its own making.
    pub fn socket_port(&self) -> u16 {
        self.next_port(&self.sockets)
    }

    /// The port the next request goes to, as [`TestApp::socket_port`].
    pub fn request_port(&self) -> u16 {
        self.next_port(&self.requests)
    }

    /// The same calls, all on node `node` of a cluster (its number in the
    /// cluster; a node that is down panics). On one server, node 0 is it.
    pub fn on(&self, node: usize) -> OnNode<'_> {
        let port = match &self.ports {
            None if node == 0 => self.port,
            None => panic!("one server has no node {node}"),
            Some(ports) => {
                ports.lock().unwrap()[node].unwrap_or_else(|| panic!("node {node} is down"))
            }
        };
        OnNode { app: self, port }
    }
}

/// A [`TestApp`]'s calls on one node of its cluster.
pub struct OnNode<'a> {
    /// The app: its client and fake WCA.
    app: &'a TestApp,
    /// The node's port.
    pub port: u16,
}

impl OnNode<'_> {
    /// The URL of `path` on this node.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `GET path`, answered.
    pub async fn get(&self, path: &str) -> Answer {
        answer(self.app.client.get(self.url(path)), "GET").await
    }

    /// `POST path` with no body and `token` in a Bearer header, answered.
    pub async fn post_as(&self, path: &str, token: &str) -> Answer {
        answer(
            self.app.client.post(self.url(path)).bearer_auth(token),
            "POST",
        )
        .await
    }

    /// Creates a stream on this node; returns its ID.
    pub async fn create_stream(&self, token: &str) -> String {
        let answer = self.post_as("/v0/streams", token).await;
        assert_eq!(answer.status, 200, "create answered {}", answer.body);
        answer.body["streamID"]
            .as_str()
            .expect("a stream ID")
            .to_owned()
    }

    /// Opens a socket on a stream on this node, with or without a token.
    pub async fn connect(&self, stream_id: &str, token: Option<&str>) -> WsClient {
        self.try_connect(stream_id, token)
            .await
            .expect("the socket opens")
    }

    /// Opens a socket on a stream on this node; the refusal if it was refused.
    pub async fn try_connect(
        &self,
        stream_id: &str,
        token: Option<&str>,
    ) -> Result<WsClient, awc::error::WsClientError> {
        WsClient::connect(socket_url(self.port, stream_id, token, None)).await
    }

    /// Opens a viewer's socket on this node that resumes with `?since={since}`.
    pub async fn try_resume(
        &self,
        stream_id: &str,
        since: &str,
    ) -> Result<WsClient, awc::error::WsClientError> {
        WsClient::connect(socket_url(self.port, stream_id, None, Some(since))).await
    }
}

/// The URL of a stream's socket on `port`, with a token and `since` if given.
fn socket_url(port: u16, stream_id: &str, token: Option<&str>, since: Option<&str>) -> String {
    let mut url = format!("ws://127.0.0.1:{port}/v0/streams/{stream_id}/socket");
    let query: Vec<String> = token
        .map(|token| format!("twizzleAccessToken={token}"))
        .into_iter()
        .chain(since.map(|since| format!("since={since}")))
        .collect();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    url
}

/// A status and a parsed JSON body.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: awc::http::header::HeaderMap,
    /// The body as JSON; a JSON string if it is not JSON, null if empty.
    pub body: Value,
}

impl TestApp {
    /// The URL of `path` on this server (on a cluster, on the next node in turn).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.request_port())
    }

    /// `GET path`, answered.
    pub async fn get(&self, path: &str) -> Answer {
        answer(self.client.get(self.url(path)), "GET").await
    }

    /// `GET /v0/streams` once it lists stream `id`: at once on one node; a
    /// node of a cluster lists a stream made on another once its watch of
    /// the stream records has told it, within milliseconds (a request for
    /// the stream itself reads the records and finds it at once).
    pub async fn list_with(&self, id: &str) -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let listed = self.get("/v0/streams").await.body;
            let found = listed["streams"]
                .as_array()
                .is_some_and(|streams| streams.iter().any(|s| s["streamID"] == id));
            if found {
                return listed;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "stream {id} not listed within {WAIT:?}: {listed}"
            );
            actix::clock::sleep(std::time::Duration::from_millis(20)).await; // polling for the watch
        }
    }

    /// `POST path` with no body, answered.
    pub async fn post(&self, path: &str) -> Answer {
        answer(self.client.post(self.url(path)), "POST").await
    }

    /// `POST path` with no body and `token` in a Bearer header, answered.
    pub async fn post_as(&self, path: &str, token: &str) -> Answer {
        answer(self.client.post(self.url(path)).bearer_auth(token), "POST").await
    }

    /// `DELETE path`, with `token` in a Bearer header if there is one, answered.
    pub async fn delete_as(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.client.delete(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request, "DELETE").await
    }

    /// `GET path` of an NDJSON body: the status, the content type, and
    /// each line parsed.
    pub async fn get_ndjson(&self, path: &str) -> (u16, String, Vec<Value>) {
        let mut res = self
            .client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
        let kind = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = res.body().limit(1 << 26).await.expect("a body");
        let text = String::from_utf8(body.to_vec()).unwrap();
        let lines = if res.status().is_success() {
            super::events::json_lines(&text)
        } else {
            vec![serde_json::from_str(&text).unwrap_or(Value::String(text))]
        };
        (res.status().as_u16(), kind, lines)
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
        match self.try_callback(code).await {
            Ok(claim) => claim,
            Err(answer) => panic!("callback answered {} {}", answer.status, answer.body),
        }
    }

    /// The claim token from the sign-in redirect for `code`, or the answer
    /// if it was not a redirect.
    pub async fn try_callback(&self, code: &str) -> Result<String, Answer> {
        let answer = self
            .get(&format!("/v0/auth/wca/oauth_callback?code={code}"))
            .await;
        if answer.status != 302 {
            return Err(answer);
        }
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
        Ok(claim.split(['&', '#']).next().unwrap().to_owned())
    }

    /// Redeems `claim`: the access token and user info, or the answer if it
    /// was not a 200.
    pub async fn try_claim(&self, claim: &str) -> Result<(String, Value), Answer> {
        let answer = self.post(&format!("/v0/claim?claimToken={claim}")).await;
        if answer.status != 200 {
            return Err(answer);
        }
        let token = answer.body["twizzleAccessToken"]
            .as_str()
            .expect("an access token")
            .to_owned();
        Ok((token, answer.body["userInfo"].clone()))
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
        match self.try_claim(&claim).await {
            Ok(claimed) => claimed,
            Err(answer) => panic!("claim answered {} {}", answer.status, answer.body),
        }
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

    /// Signs in as a user (as [`TestApp::sign_in`]) who creates a stream;
    /// returns the access token and the stream's ID.
    pub async fn sender_with_stream(
        &self,
        account_id: u64,
        wca_id: Option<&str>,
        name: &str,
    ) -> (String, String) {
        let (token, _) = self.sign_in(account_id, wca_id, name).await;
        let id = self.create_stream(&token).await;
        (token, id)
    }

    /// Opens a socket on a stream, with or without a token.
    pub async fn connect(&self, stream_id: &str, token: Option<&str>) -> WsClient {
        self.try_connect(stream_id, token)
            .await
            .expect("the socket opens")
    }

    /// Opens a socket on a stream, with or without a token; the refusal if it was refused.
    pub async fn try_connect(
        &self,
        stream_id: &str,
        token: Option<&str>,
    ) -> Result<WsClient, awc::error::WsClientError> {
        WsClient::connect(socket_url(self.socket_port(), stream_id, token, None)).await
    }

    /// Opens a viewer's socket that resumes with `?since={since}`; the
    /// refusal if it was refused.
    pub async fn try_resume(
        &self,
        stream_id: &str,
        since: &str,
    ) -> Result<WsClient, awc::error::WsClientError> {
        WsClient::connect(socket_url(self.socket_port(), stream_id, None, Some(since))).await
    }
}

/// Sends `request` (a `method` request) and reads its answer.
async fn answer(request: awc::ClientRequest, method: &str) -> Answer {
    let mut res = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} answered: {e:?}"));
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
