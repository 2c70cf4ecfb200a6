//! The deployment files: the systemd unit verifies, its sandbox rates 1.5 or
//! better and its ceilings fit a full server; the Caddyfile validates, and a
//! real Caddy in front of the real server carries a stream end to end.
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
