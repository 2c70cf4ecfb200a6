//! The deployment files: the systemd unit verifies, the Caddyfile validates,
//! and a real Caddy in front of the real server carries a stream end to end.
//!
//! These need `systemd-analyze` and `caddy` (`.ci/run` installs them). Where
//! one is missing, a developer's run says so and skips; under CI (`CI` set)
//! a missing tool fails the test instead, so nothing is skipped silently.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Whether `tool` can be run (asked for its version); if not, panics under
/// CI and returns false otherwise.
fn have(tool: &str) -> bool {
    // Caddy has a `version` subcommand and no `--version` flag.
    let ask = if tool == "caddy" {
        "version"
    } else {
        "--version"
    };
    let found = Command::new(tool)
        .arg(ask)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed, and CI must run this test"
        );
        eprintln!("SKIPPED: {tool} is not installed (apt-get install {tool})");
    }
    found
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
    ] {
        assert!(unit.contains(setting), "the unit lacks {setting}");
    }
    let dir = TempDir::new("api");
    let path = dir.path().join("twizzle-api-server.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/twizzle-api-server",
            env!("CARGO_BIN_EXE_twizzle-api-server"),
        ),
    )
    .unwrap();
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

/// `caddy validate` accepts the shipped Caddyfile, which proxies api.twizzle.net to 127.0.0.1:3337.
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
    assert!(
        out.status.success(),
        "caddy validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Caddy process, stopped when dropped.
struct Caddy(Child);

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sender and a viewer talk through a real Caddy (the shipped site block's
/// `reverse_proxy`, on a loopback port instead of api.twizzle.net).
#[actix_web::test]
async fn a_stream_flows_through_caddy() {
    if !have("caddy") {
        return;
    }
    let app = spawn_app().await;
    let (token, _) = app.sign_in(1, Some("2024CADY01"), "Cad Dy").await;
    let id = app.create_stream(&token).await;

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let caddy_port = free.local_addr().unwrap().port();
    drop(free);
    let dir = TempDir::new("api");
    let shipped = std::fs::read_to_string(Path::new(ROOT).join("Caddyfile")).unwrap();
    // Loopback only, no admin endpoint, no certificates: the shipped site
    // block is what is under test.
    let config = "{\n\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}\n".to_owned()
        + &shipped
            .replace("api.twizzle.net", &format!("http://127.0.0.1:{caddy_port}"))
            .replace("127.0.0.1:3337", &format!("127.0.0.1:{}", app.port));
    let config_path = dir.path().join("Caddyfile");
    std::fs::write(&config_path, config).unwrap();
    let _caddy = Caddy(
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&config_path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("caddy starts"),
    );
    let through = TestApp::attach(app.dir.clone(), FakeWca::start(), caddy_port);
    let deadline = Instant::now() + WAIT;
    loop {
        match through.client.get(through.url("/v0/streams")).send().await {
            Ok(res) if res.status().is_success() => break,
            _ if Instant::now() < deadline => actix::clock::sleep(Duration::from_millis(50)).await, // polling for Caddy to listen
            other => panic!(
                "Caddy did not proxy within {WAIT:?}: {:?}",
                other.map(|r| r.status())
            ),
        }
    }
    let listed = through.get("/v0/streams").await;
    assert_eq!(listed.body["streams"][0]["streamID"], id.as_str());

    let mut sender = through.connect(&id, Some(&token)).await;
    let mut viewer = through.connect(&id, None).await;
    sender.send_json(&reset_event(true)).await;
    for n in 0..50 {
        sender.send_json(&move_event(n)).await;
    }
    assert_eq!(viewer.next_json().await, reset_event(true));
    for n in 0..50 {
        assert_eq!(viewer.next_json().await, move_event(n));
    }
    let mut late = through.connect(&id, None).await;
    assert_eq!(late.next_json().await, reset_event(true));
    assert_eq!(late.next_json().await, move_event(49));
}
