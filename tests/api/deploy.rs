//! The deployment files: the systemd unit verifies, its sandbox rates 1.5 or
//! better and its ceilings fit a full server; the Caddyfile validates, and a
//! real Caddy in front of the real server carries a stream end to end, adds
//! the security headers, forwards the real client address and keeps sockets
//! open across a reload.
//!
//! These need `systemd-analyze` and Caddy 2.7 or newer (`.ci/run` installs
//! them). Where one is missing, a developer's run says so and skips; under
//! CI (`CI` set) a missing tool fails the test instead, so nothing is
//! skipped silently.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The oldest Caddy the shipped Caddyfile runs on: `stream_close_delay`
/// came in 2.7.
const CADDY_AT_LEAST: (u32, u32) = (2, 7);

/// Whether `tool` can be run (asked for its version) and, for Caddy, is
/// recent enough; if not, panics under CI and returns false otherwise.
pub(crate) fn have(tool: &str) -> bool {
    // Caddy has a `version` subcommand and no `--version` flag.
    let ask = if tool == "caddy" {
        "version"
    } else {
        "--version"
    };
    let version = Command::new(tool)
        .arg(ask)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    let missing = match &version {
        None => Some(format!("{tool} is not installed")),
        Some(said) if tool == "caddy" => {
            // "v2.11.7 h1:…" from Caddy's own builds, "2.6.2" from Debian's.
            let number = said.split_whitespace().next().unwrap_or("");
            let mut parts = number.trim_start_matches('v').split('.');
            let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
            match (next(), next()) {
                (Some(major), Some(minor)) if (major, minor) >= CADDY_AT_LEAST => None,
                _ => Some(format!(
                    "caddy {number} is older than {}.{} (the Caddyfile's stream_close_delay)",
                    CADDY_AT_LEAST.0, CADDY_AT_LEAST.1
                )),
            }
        }
        Some(_) => None,
    };
    let Some(why) = missing else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{why}, and CI must run this test"
    );
    eprintln!("SKIPPED: {why} (`bash .ci/run` installs what the tests need)");
    false
}

/// The shipped unit, with ExecStart pointing at the binary just built (both
/// `verify` and `security` look for the command), written into `dir`.
fn unit_for_built_binary(dir: &TempDir) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(Path::new(ROOT).join("systemd/twizzle-api-server.service"))
        .unwrap();
    let path = dir.path().join("twizzle-api-server.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/twizzle-api-server",
            env!("CARGO_BIN_EXE_twizzle-api-server"),
        ),
    )
    .unwrap();
    path
}

/// `systemd-analyze verify` accepts the unit (with ExecStart pointing at the
/// binary just built, since verify checks that the command exists).
#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze") {
        return;
    }
    let unit = std::fs::read_to_string(Path::new(ROOT).join("systemd/twizzle-api-server.service"))
        .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/twizzle-api-server --prod"));
    for setting in [
        "Restart=always",
        "RestartSec=1",
        "DynamicUser=yes",
        "StateDirectory=twizzle-api-server",
        "LoadCredential=wca-client-secret:",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=",
        "StartLimitIntervalSec=0",
        "MemoryHigh=",
        "MemoryMax=",
        "TasksMax=",
        "TWIZZLE_METRICS_BIND=127.0.0.1:9337",
        "EnvironmentFile=-/etc/twizzle-api-server/environment",
    ] {
        assert!(unit.contains(setting), "the unit lacks {setting}");
    }
    // With a start limit, systemd gives up restarting after a crash loop.
    // It belongs in [Unit]: verify below warns of it anywhere else.
    let unit_section = unit.split("[Service]").next().unwrap();
    assert!(unit_section.contains("\nStartLimitIntervalSec=0\n"));
    let dir = TempDir::new("api");
    let path = unit_for_built_binary(&dir);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

/// The value of `Name=` in the unit, with systemd's K, M and G suffixes
/// (powers of 1024) turned into a number.
fn unit_amount(unit: &str, name: &str) -> u64 {
    let value = unit
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("the unit lacks {name}="))
        .trim();
    let (digits, scale) = match value.char_indices().last() {
        Some((at, 'K')) => (&value[..at], 1 << 10),
        Some((at, 'M')) => (&value[..at], 1 << 20),
        Some((at, 'G')) => (&value[..at], 1 << 30),
        _ => (value, 1),
    };
    digits.parse::<u64>().expect("a whole number") * scale
}

/// The ceilings hold what the comment beside them computes: the default
/// socket limit at 17.7 KiB a socket (13.84 KiB in the process, 3.9 KiB of
/// kernel memory, both measured) over a 10 MB baseline, and 2 x cores + 5
/// threads for up to 64 cores.
#[test]
fn systemd_unit_ceilings_fit_a_full_server() {
    let unit = std::fs::read_to_string(Path::new(ROOT).join("systemd/twizzle-api-server.service"))
        .unwrap();
    let sockets = twizzle_api_server::config::Settings::local()
        .limits
        .max_sockets as u64;
    let full = sockets * 177 * 1024 / 10 + 10_000_000;
    let high = unit_amount(&unit, "MemoryHigh");
    let max = unit_amount(&unit, "MemoryMax");
    assert!(
        high >= full * 3 / 2,
        "MemoryHigh={high} leaves under half again over the {full} bytes of a full server"
    );
    assert!(
        max > high,
        "MemoryMax={max} must be above MemoryHigh={high}"
    );
    let tasks = unit_amount(&unit, "TasksMax");
    assert!(tasks >= 2 * 64 + 5, "TasksMax={tasks} is short of 64 cores");
}

/// `systemd-analyze security` rates the unit's sandbox 1.5 or better (0 is
/// fully locked down, 10 not at all).
#[test]
fn systemd_unit_exposure_is_at_most_1_5() {
    if !have("systemd-analyze") {
        return;
    }
    let dir = TempDir::new("api");
    let path = unit_for_built_binary(&dir);
    // --offline reads the file instead of asking a running systemd.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security: {}{said}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "→ Overall exposure level for twizzle-api-server.service: 1.1 OK 🙂"
    let score: f64 = said
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once("Overall exposure level for ")?;
            rest.split_once(": ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no overall exposure level in: {said}"));
    assert!(score <= 1.5, "exposure {score} is over 1.5:\n{said}");
}

/// `caddy validate` accepts the shipped Caddyfile, which proxies
/// api.twizzle.net to 127.0.0.1:3337, without a warning.
#[test]
fn caddyfile_validates() {
    if !have("caddy") {
        return;
    }
    let path = Path::new(ROOT).join("Caddyfile");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("api.twizzle.net") && text.contains("reverse_proxy 127.0.0.1:3337"));
    let out = Command::new("caddy")
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", TempDir::new("api").path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !said.contains(r#""level":"warn""#),
        "caddy validate: {said}"
    );
}

/// A Caddy process running the shipped site block in front of a server,
/// stopped when dropped.
struct Caddy {
    child: Child,
    /// The loopback port it listens on.
    port: u16,
    /// The loopback port of its admin endpoint (for reloads).
    admin: u16,
    /// Its configuration, home and log.
    dir: TempDir,
}

impl Caddy {
    /// Starts Caddy with the shipped Caddyfile's site block on a free
    /// loopback port instead of api.twizzle.net, proxying to `upstream`, and
    /// waits (bounded) until it accepts connections.
    fn start(upstream: u16) -> Caddy {
        let (port, admin) = (free_port(), free_port());
        let dir = TempDir::new("api");
        let shipped = std::fs::read_to_string(Path::new(ROOT).join("Caddyfile")).unwrap();
        // Loopback only, no certificates: the shipped site block is what is
        // under test.
        let config = format!(
            "{{\n\tadmin 127.0.0.1:{admin}\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}}\n"
        ) + &shipped
            .replace("api.twizzle.net", &format!("http://127.0.0.1:{port}"))
            .replace("127.0.0.1:3337", &format!("127.0.0.1:{upstream}"));
        let config_path = dir.path().join("Caddyfile");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&config_path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("caddy starts");
        let mut caddy = Caddy {
            child,
            port,
            admin,
            dir,
        };
        // A plain connect, so that waiting costs no request of any client's
        // budget at the server.
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = caddy.child.try_wait() {
                panic!("caddy exited ({status}): {}", caddy.log());
            }
            assert!(
                Instant::now() < deadline,
                "Caddy did not listen within {WAIT:?}: {}",
                caddy.log()
            );
            std::thread::sleep(Duration::from_millis(20)); // polling for Caddy to listen
        }
        caddy
    }

    /// Reloads the same configuration, as `systemctl reload caddy` does
    /// after an edit (forced: Caddy skips a reload that changes nothing).
    fn reload(&self) {
        let out = Command::new("caddy")
            .args(["reload", "--force", "--adapter", "caddyfile", "--config"])
            .arg(self.dir.path().join("Caddyfile"))
            .arg("--address")
            .arg(format!("127.0.0.1:{}", self.admin))
            .env("HOME", self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "caddy reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What Caddy has logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }

    /// A client of the server through this Caddy.
    fn client_of(&self, app: &TestApp) -> TestApp {
        TestApp::attach(app.dir.clone(), FakeWca::start(), self.port)
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with a signed-in sender's stream, and a Caddy in front of it.
struct Proxied {
    /// A client through Caddy.
    through: TestApp,
    /// The running Caddy.
    caddy: Caddy,
    /// The sender's access token.
    token: String,
    /// The sender's stream.
    id: String,
    /// The server behind Caddy: held only so that it runs as long as the
    /// test.
    _app: TestApp,
}

/// Starts a server, signs a sender in, creates its stream and puts a Caddy
/// in front; `None` (having said why) if Caddy is missing or too old.
async fn proxied() -> Option<Proxied> {
    if !have("caddy") {
        return None;
    }
    let app = spawn_app().await;
    let (token, id) = app
        .sender_with_stream(1, Some("2024CADY01"), "Cad Dy")
        .await;
    let caddy = Caddy::start(app.port);
    let through = caddy.client_of(&app);
    Some(Proxied {
        through,
        caddy,
        token,
        id,
        _app: app,
    })
}

/// A sender and a viewer talk through a real Caddy (the shipped site block's
/// `reverse_proxy`, on a loopback port instead of api.twizzle.net).
#[actix_web::test]
async fn a_stream_flows_through_caddy() {
    let Some(p) = proxied().await else {
        return;
    };
    let listed = p.through.get("/v0/streams").await;
    assert_eq!(listed.status, 200, "{}", p.caddy.log());
    assert_eq!(listed.body["streams"][0]["streamID"], p.id.as_str());

    let mut sender = p.through.connect(&p.id, Some(&p.token)).await;
    let mut viewer = p.through.connect(&p.id, None).await;
    sender.send_json(&reset_event(true)).await;
    for n in 0..50 {
        sender.send_json(&move_event(n)).await;
    }
    assert_eq!(viewer.next_json().await, reset_event(true));
    for n in 0..50 {
        assert_eq!(viewer.next_json().await, move_event(n));
    }
    let mut late = p.through.connect(&p.id, None).await;
    assert_eq!(late.next_json().await, reset_event(true));
    assert_eq!(late.next_json().await, move_event(49));
}

/// A reload of Caddy's configuration leaves the proxied WebSockets open
/// (`stream_close_delay`): a viewer still hears the sender afterwards.
#[actix_web::test]
async fn sockets_outlive_a_caddy_reload() {
    let Some(p) = proxied().await else {
        return;
    };
    let mut sender = p.through.connect(&p.id, Some(&p.token)).await;
    let mut viewer = p.through.connect(&p.id, None).await;
    sender.send_json(&reset_event(true)).await;
    assert_eq!(viewer.next_json().await, reset_event(true));

    p.caddy.reload();
    sender.send_json(&move_event(1)).await;
    assert_eq!(viewer.next_json().await, move_event(1));
    // The new configuration serves too.
    let mut late = p.through.connect(&p.id, None).await;
    assert_eq!(late.next_json().await, reset_event(true));
}

/// Every value of header `name` in `answer`.
fn values<'a>(answer: &'a Answer, name: &str) -> Vec<&'a str> {
    answer
        .headers
        .get_all(name)
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// Sends `request` and reads its status and headers.
async fn answer_of(request: awc::ClientRequest) -> Answer {
    let mut res = request.send().await.expect("an answer through Caddy");
    let _ = res.body().await;
    Answer {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: serde_json::Value::Null,
    }
}

/// Through Caddy every answer, success, error or CORS preflight, carries the
/// security headers and no `Server`, and the broker's CORS answers come
/// through unchanged: one `Access-Control-Allow-Origin: *`, and the
/// preflight's methods and headers.
#[actix_web::test]
async fn caddy_adds_security_headers_and_keeps_cors() {
    if !have("caddy") {
        return;
    }
    let app = spawn_app().await;
    let caddy = Caddy::start(app.port);
    let through = caddy.client_of(&app);
    let origin = ("Origin", "https://twizzle.net");

    let get = |path: &str| answer_of(through.client.get(through.url(path)).insert_header(origin));
    let listed = get("/v0/streams").await;
    let missing = get("/v0/nothing").await;
    let preflight = answer_of(
        through
            .client
            .request(awc::http::Method::OPTIONS, through.url("/v0/streams"))
            .insert_header(origin)
            .insert_header(("Access-Control-Request-Method", "POST"))
            .insert_header(("Access-Control-Request-Headers", "authorization")),
    )
    .await;
    assert_eq!(
        (listed.status, missing.status, preflight.status),
        (200, 404, 204)
    );
    for answer in [&listed, &missing, &preflight] {
        assert_eq!(values(answer, "access-control-allow-origin"), ["*"]);
        assert_eq!(
            values(answer, "strict-transport-security"),
            ["max-age=31536000"]
        );
        assert_eq!(values(answer, "x-content-type-options"), ["nosniff"]);
        assert_eq!(values(answer, "referrer-policy"), ["no-referrer"]);
        assert_eq!(
            values(answer, "content-security-policy"),
            ["default-src 'none'; frame-ancestors 'none'"]
        );
        assert!(
            values(answer, "server").is_empty(),
            "a Server header: {:?}",
            answer.headers
        );
    }
    assert!(values(&preflight, "access-control-allow-methods")[0].contains("POST"));
    assert!(values(&preflight, "access-control-allow-headers")[0].contains("Authorization"));
}

/// Through Caddy the watch page keeps the broker's own policy, the one that
/// lets it run its scripts and load cubing.js, as the one policy it has
/// (two would both apply, and Caddy's would block the page); it gets the
/// same security headers as every answer.
#[actix_web::test]
async fn caddy_keeps_the_watch_pages_policy() {
    if !have("caddy") {
        return;
    }
    let app = spawn_app().await;
    let caddy = Caddy::start(app.port);
    let through = caddy.client_of(&app);
    for path in ["/watch/", "/watch/stream.js"] {
        let answer = answer_of(through.client.get(through.url(path))).await;
        assert_eq!(answer.status, 200, "{}", caddy.log());
        assert_eq!(
            values(&answer, "content-security-policy"),
            [twizzle_api_server::watch::CONTENT_SECURITY_POLICY]
        );
        assert_eq!(values(&answer, "x-content-type-options"), ["nosniff"]);
        assert_eq!(values(&answer, "referrer-policy"), ["no-referrer"]);
        assert_eq!(
            values(&answer, "strict-transport-security"),
            ["max-age=31536000"]
        );
        assert!(values(&answer, "server").is_empty());
    }
}

/// The server counts a client behind Caddy by the address Caddy forwards,
/// never by one the client forges: with a budget of three requests, a
/// client that sends a new `X-Forwarded-For` each time through Caddy still
/// runs out after three, as the single client 127.0.0.1. The same forged
/// hop sent straight from 127.0.0.1 (a trusted proxy) does count as another
/// client: had Caddy passed it on, each request would have had a budget of
/// its own.
#[actix_web::test]
async fn caddy_forwards_the_real_client_address() {
    if !have("caddy") {
        return;
    }
    let app = spawn_app_with(|s| {
        s.limits.request_burst = 3.0;
        // No refill within the test.
        s.limits.requests_per_client_per_sec = 1e-3;
    })
    .await;
    let caddy = Caddy::start(app.port);
    let through = caddy.client_of(&app);
    let forged = [
        vec!["198.51.100.1"],
        vec!["198.51.100.2, 203.0.113.2"],
        vec!["198.51.100.3", "203.0.113.3"],
        vec!["198.51.100.4"],
    ];
    let mut statuses = Vec::new();
    for hops in &forged {
        let mut request = through.client.get(through.url("/v0/streams"));
        for hop in hops {
            request = request.append_header(("X-Forwarded-For", *hop));
        }
        statuses.push(answer_of(request).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429], "{}", caddy.log());
    // Caddy's client, 127.0.0.1, is the one whose budget is spent.
    assert_eq!(app.get("/v0/streams").await.status, 429);
    let direct = answer_of(
        app.client
            .get(app.url("/v0/streams"))
            .insert_header(("X-Forwarded-For", "198.51.100.1")),
    )
    .await;
    assert_eq!(direct.status, 200);
}
