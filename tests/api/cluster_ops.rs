//! Cluster mode's deployment files: the Caddyfile's load-balancing
//! alternative validates, and a real Caddy running it in front of two real
//! nodes on one `nats-server` spreads requests over both, leaves out a node
//! whose readiness fails (cut off from NATS) while a stream goes on through
//! the other, and takes the node back once it is ready again; the systemd
//! unit takes a host's settings from its environment file, as the shipped
//! example writes them.
//!
//! These need Caddy 2.7 or newer, `nats-server` and `systemd-analyze` as
//! the deployment tests do (`.ci/run` installs them): a developer's run
//! skips without them, saying so, and CI fails instead.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use twizzle_actors::testkit::NatsServer;
use twizzle_api_server::config::{Command as Parsed, Settings};

use crate::deploy::have;
use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The upstreams the shipped cluster alternative names, replaced by the
/// test's nodes.
const SHIPPED_UPSTREAMS: &str = "10.0.0.11:3337 10.0.0.12:3337 10.0.0.13:3337";

/// How long Caddy may take to notice a node's readiness change: its
/// health checks run every 2 s with a 2 s timeout, and a loaded test
/// machine adds to that.
const HEALTH_WAIT: Duration = Duration::from_secs(20);

/// The Caddyfile's cluster alternative, uncommented: the lines between
/// `# cluster: begin` and `# cluster: end`, each without its `# `.
fn cluster_block(shipped: &str) -> String {
    let begin = shipped
        .find("# cluster: begin\n")
        .expect("the Caddyfile has a cluster alternative");
    let block: Vec<&str> = shipped[begin..]
        .lines()
        .skip(1)
        .take_while(|line| line.trim() != "# cluster: end")
        .collect();
    assert!(
        shipped[begin..].contains("# cluster: end"),
        "the cluster alternative ends"
    );
    block
        .iter()
        .map(|line| {
            let text = line.trim_start_matches('\t');
            let text = text
                .strip_prefix("# ")
                .or_else(|| text.strip_prefix('#'))
                .unwrap_or_else(|| panic!("an uncommented line in the alternative: {line:?}"));
            format!("\t{text}\n")
        })
        .collect()
}

/// The shipped Caddyfile's site block with its `reverse_proxy` replaced by
/// the cluster alternative, serving `site` and proxying to `upstreams`.
fn cluster_caddyfile(site: &str, upstreams: &str) -> String {
    let shipped = std::fs::read_to_string(Path::new(ROOT).join("Caddyfile")).unwrap();
    let block = cluster_block(&shipped);
    assert!(block.contains(SHIPPED_UPSTREAMS), "{block}");
    let single = shipped
        .find("\treverse_proxy 127.0.0.1:3337 {\n")
        .expect("the single-node reverse_proxy");
    let single_end = single
        + shipped[single..]
            .find("\n\t}\n")
            .expect("the single-node block ends")
        + "\n\t}\n".len();
    let mut config = shipped.clone();
    config.replace_range(
        single..single_end,
        &block.replace(SHIPPED_UPSTREAMS, upstreams),
    );
    config.replace("api.twizzle.net", site)
}

/// `caddy validate` accepts the shipped site block with the cluster
/// alternative in place, without a warning, and `caddy adapt` shows what
/// it asks of Caddy: least connections, retries, active checks on the
/// readiness check and passive checks.
#[test]
fn the_cluster_alternative_validates() {
    if !have("caddy") {
        return;
    }
    let dir = TempDir::new("api-caddy-lb");
    let path = dir.path().join("Caddyfile");
    std::fs::write(
        &path,
        cluster_caddyfile("api.twizzle.net", SHIPPED_UPSTREAMS),
    )
    .unwrap();
    let run = |verb: &str| {
        Command::new("caddy")
            .args([verb, "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .output()
            .unwrap()
    };
    let out = run("validate");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !said.contains(r#""level":"warn""#),
        "caddy validate: {said}"
    );
    let out = run("adapt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let proxy = find_handler(&json, "reverse_proxy").expect("a reverse_proxy handler");
    let dials: Vec<&str> = proxy["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["dial"].as_str().unwrap())
        .collect();
    assert_eq!(dials, SHIPPED_UPSTREAMS.split(' ').collect::<Vec<_>>());
    assert_eq!(
        proxy["load_balancing"]["selection_policy"]["policy"],
        "least_conn"
    );
    assert_eq!(proxy["load_balancing"]["try_duration"], 5_000_000_000u64);
    let active = &proxy["health_checks"]["active"];
    assert_eq!(active["uri"], "/v0/infra/readiness_check");
    assert_eq!(active["expect_status"], 200);
    assert_eq!(active["interval"], 2_000_000_000u64);
    let passive = &proxy["health_checks"]["passive"];
    assert_eq!(passive["max_fails"], 3);
    assert_eq!(passive["fail_duration"], 30_000_000_000u64);
    assert_eq!(proxy["stream_close_delay"], 300_000_000_000u64);
}

/// The first object in `json` whose `handler` is `name`.
fn find_handler<'a>(json: &'a Value, name: &str) -> Option<&'a Value> {
    match json {
        Value::Object(map) if map.get("handler").and_then(Value::as_str) == Some(name) => {
            Some(json)
        }
        Value::Object(map) => map.values().find_map(|v| find_handler(v, name)),
        Value::Array(items) => items.iter().find_map(|v| find_handler(v, name)),
        _ => None,
    }
}

/// A TCP relay from a loopback port to another, which can cut every
/// connection through it and refuse new ones (as a network between a node
/// and NATS that fails) and then carry them again.
struct Relay {
    /// The port it listens on.
    port: u16,
    /// While set, connections are refused (accepted and closed at once).
    cut: Arc<AtomicBool>,
    /// Both ends of every connection through it, to shut them down.
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// Tells the accepting thread to end.
    done: Arc<AtomicBool>,
}

impl Relay {
    /// Relays 127.0.0.1:`port` to 127.0.0.1:`to`.
    fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            cut: Arc::default(),
            open: Arc::default(),
            done: Arc::default(),
        };
        let (cut, open, done) = (
            Arc::clone(&relay.cut),
            Arc::clone(&relay.open),
            Arc::clone(&relay.done),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let mut held = open.lock().unwrap();
                for end in [&client, &server] {
                    held.push(end.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        relay
    }

    /// `nats://127.0.0.1:PORT` through the relay.
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for end in self.open.lock().unwrap().drain(..) {
            let _ = end.shutdown(Shutdown::Both);
        }
    }

    /// Carries new connections again.
    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accepting thread so that it sees `done`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` on a thread of its own until either ends.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// One node: the real binary on NATS, its port, and its log lines.
struct Node {
    /// The process, killed when the test ends.
    _child: KillOnDrop,
    port: u16,
    logs: mpsc::Receiver<String>,
    /// Every line read from `logs` so far.
    seen: Vec<String>,
    /// Its (unused) data directory.
    _dir: TempDir,
}

impl Node {
    fn start(wca: &FakeWca, nats_url: &str) -> Node {
        let dir = TempDir::new("api-node");
        let (child, port, logs) = start_binary_with(dir.path(), wca.origin(), |command| {
            command.env("TWIZZLE_NATS_URL", nats_url);
        });
        Node {
            _child: child,
            port,
            logs,
            seen: Vec::new(),
            _dir: dir,
        }
    }

    /// Asks the node directly for `GET /v0/streams?mark=N` and reads its
    /// log until that request's line: every request it answered before is
    /// in [`Node::seen`] then.
    async fn settle(&mut self, client: &awc::Client, mark: u64) {
        let path = format!("/v0/streams?mark={mark}");
        let res = client
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .send()
            .await
            .expect("the node answers");
        assert_eq!(res.status(), 200);
        let wanted = format!("GET {path} 200");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .logs
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the node did not log {wanted} within {WAIT:?}"));
            let found = line.contains(&wanted);
            self.seen.push(line);
            if found {
                return;
            }
        }
    }

    /// Whether the node logged `GET /v0/streams?probe=N`.
    fn served(&self, probe: u64) -> bool {
        let wanted = format!("GET /v0/streams?probe={probe} 200");
        self.seen.iter().any(|line| line.contains(&wanted))
    }

    /// The node's own readiness answer: status and reason.
    async fn readiness(&self, client: &awc::Client) -> (u16, Value) {
        let mut res = client
            .get(format!(
                "http://127.0.0.1:{}/v0/infra/readiness_check",
                self.port
            ))
            .send()
            .await
            .expect("the node answers");
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        (res.status().as_u16(), body)
    }

    /// Waits (within [`HEALTH_WAIT`]) until the readiness check answers `status`.
    async fn wait_readiness(&self, client: &awc::Client, status: u16) -> Value {
        let deadline = Instant::now() + HEALTH_WAIT;
        loop {
            let (now, body) = self.readiness(client).await;
            if now == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "readiness still {now} {body} after {HEALTH_WAIT:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await; // polling the node's state
        }
    }
}

/// A Caddy running the cluster alternative in front of some nodes.
struct Caddy {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Caddy {
    fn start(nodes: &[&Node]) -> Caddy {
        let port = free_port();
        let dir = TempDir::new("api-caddy-lb");
        let upstreams: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let config = "{\n\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}\n".to_owned()
            + &cluster_caddyfile(&format!("http://127.0.0.1:{port}"), &upstreams.join(" "));
        let path = dir.path().join("Caddyfile");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let mut child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("caddy starts");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "caddy exited ({status}): {}",
                    std::fs::read_to_string(dir.path().join("caddy.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "Caddy did not listen in time");
            std::thread::sleep(Duration::from_millis(20)); // polling for Caddy to listen
        }
        Caddy { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests through Caddy and which node answered each.
struct Probes {
    /// A plain client, for the nodes themselves.
    direct: awc::Client,
    /// Numbers the probes and the marks.
    next: u64,
}

impl Probes {
    /// Sends `n` probes (`GET /v0/streams?probe=N`) through Caddy, each
    /// answered 200, and counts how many each node served.
    async fn send(
        &mut self,
        through: &TestApp,
        caddy: &Caddy,
        nodes: &mut [&mut Node],
        n: usize,
    ) -> Vec<usize> {
        let first = self.next;
        for _ in 0..n {
            self.next += 1;
            let answer = through
                .get(&format!("/v0/streams?probe={}", self.next))
                .await;
            assert_eq!(answer.status, 200, "{}", caddy.log());
        }
        let mut counts = vec![0; nodes.len()];
        for node in nodes.iter_mut() {
            self.next += 1;
            node.settle(&self.direct, self.next).await;
        }
        for probe in first + 1..=first + n as u64 {
            let by: Vec<usize> = (0..nodes.len())
                .filter(|&i| nodes[i].served(probe))
                .collect();
            assert_eq!(by.len(), 1, "probe {probe} was served by nodes {by:?}");
            counts[by[0]] += 1;
        }
        counts
    }

    /// Sends batches of `n` probes until one satisfies `wanted` (within
    /// [`HEALTH_WAIT`]); returns its counts.
    async fn until(
        &mut self,
        through: &TestApp,
        caddy: &Caddy,
        nodes: &mut [&mut Node],
        n: usize,
        wanted: impl Fn(&[usize]) -> bool,
    ) -> Vec<usize> {
        let deadline = Instant::now() + HEALTH_WAIT;
        loop {
            let counts = self.send(through, caddy, nodes, n).await;
            if wanted(&counts) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "after {HEALTH_WAIT:?} the nodes still served {counts:?}: {}",
                caddy.log()
            );
        }
    }
}

/// Two nodes on one NATS behind the cluster alternative: requests reach
/// both; once node B is cut off from NATS its readiness answers 503 and
/// Caddy sends it nothing, while a sign-in, a new stream and its sockets
/// work through Caddy on node A; once B reaches NATS again, it gets
/// requests again.
#[actix_web::test]
async fn caddy_balances_over_ready_nodes_only() {
    if !have("caddy") {
        return;
    }
    let Some(nats) = NatsServer::start("api-caddy-lb") else {
        return;
    };
    let nats_port: u16 = nats.url().rsplit(':').next().unwrap().parse().unwrap();
    let relay = Relay::start(nats_port);
    let wca = FakeWca::start();
    let mut a = Node::start(&wca, &nats.url());
    let mut b = Node::start(&wca, &relay.url());
    let caddy = Caddy::start(&[&a, &b]);
    let through = TestApp::attach(Arc::new(TempDir::new("api")), wca, caddy.port);
    let mut probes = Probes {
        direct: awc::Client::builder().timeout(WAIT).finish(),
        next: 0,
    };

    // Both ready: both get requests.
    probes
        .until(&through, &caddy, &mut [&mut a, &mut b], 20, |c| {
            c.iter().all(|&n| n > 0)
        })
        .await;

    // B loses NATS: it says so, and Caddy leaves it out.
    relay.cut();
    b.wait_readiness(&probes.direct, 503).await;
    // A request that reached B just before may hold its token actor until
    // NATS's request timeout (then the reason is `token actor busy`); once
    // that is over, B says why.
    let deadline = Instant::now() + HEALTH_WAIT;
    loop {
        let (status, body) = b.readiness(&probes.direct).await;
        assert_eq!(status, 503, "{body}");
        if body["reason"] == "storage unavailable" {
            break;
        }
        assert_eq!(body["reason"], "token actor busy");
        assert!(Instant::now() < deadline, "readiness still {body}");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await; // polling the node's state
    }
    // A is unaffected (a check may be slow on a busy machine, so waited on).
    a.wait_readiness(&probes.direct, 200).await;
    probes
        .until(&through, &caddy, &mut [&mut a, &mut b], 20, |c| c[1] == 0)
        .await;
    let counts = probes
        .send(&through, &caddy, &mut [&mut a, &mut b], 40)
        .await;
    assert_eq!(counts, [40, 0], "{}", caddy.log());
    // A stream from sign-in to socket through Caddy, all of it on A.
    let seen_by_b = b.seen.len();
    let (token, id) = through
        .sender_with_stream(71, Some("2024LBAL01"), "Bal Ance")
        .await;
    let mut sender = through.connect(&id, Some(&token)).await;
    let mut viewer = through.connect(&id, None).await;
    sender.send_json(&reset_event(true)).await;
    for n in 0..20 {
        sender.send_json(&move_event(n)).await;
    }
    assert_eq!(viewer.next_json().await, reset_event(true));
    for n in 0..20 {
        assert_eq!(viewer.next_json().await, move_event(n));
    }
    let mark = probes.next + 1;
    probes.next = mark;
    b.settle(&probes.direct, mark).await;
    let b_lines = &b.seen[seen_by_b..];
    assert!(
        b_lines.iter().all(|line| !line.contains("/v0/")
            || line.contains(&format!("mark={mark}"))
            || line.contains("/v0/infra/readiness_check")),
        "node B served a request while not ready: {b_lines:?}"
    );
    assert!(!b_lines.iter().any(|line| line.contains(&id)));

    // B reaches NATS again: ready, and Caddy sends it requests again.
    relay.restore();
    b.wait_readiness(&probes.direct, 200).await;
    probes
        .until(&through, &caddy, &mut [&mut a, &mut b], 20, |c| c[1] > 0)
        .await;
    drop(sender);
    drop(viewer);
}

/// The unit's own settings, then the shipped environment file's with its
/// examples uncommented (as an operator fills it in), make the settings
/// the server runs with: the file's win over the unit's, and every name
/// in it is a setting of the server.
#[test]
fn the_units_environment_file_sets_cluster_mode() {
    let unit = std::fs::read_to_string(Path::new(ROOT).join("systemd/twizzle-api-server.service"))
        .unwrap();
    let example =
        std::fs::read_to_string(Path::new(ROOT).join("systemd/twizzle-api-server.env")).unwrap();
    let path = "/etc/twizzle-api-server/environment";
    assert!(
        unit.contains(&format!("\nEnvironmentFile=-{path}\n")),
        "the unit does not read {path}"
    );
    assert!(example.contains(&format!("systemd/twizzle-api-server.env {path}")));
    let mut env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|line| line.strip_prefix("Environment="))
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect();
    let help = twizzle_api_server::config::usage();
    let mut from_file = 0;
    for line in example.lines() {
        let Some((name, value)) = line.trim_start_matches('#').split_once('=') else {
            continue;
        };
        if !name.starts_with("TWIZZLE_") {
            continue;
        }
        assert!(help.contains(&format!(" {name}\n")), "{name} is no setting");
        from_file += 1;
        env.push((name.to_owned(), value.to_owned()));
    }
    assert!(from_file >= 3, "the example sets too little: {example}");
    // Read last to first: a later line wins, as the file's win in systemd.
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let dir = TempDir::new("api-unit-env");
    let secret = dir.path().join("wca-client-secret");
    std::fs::write(&secret, "unit-env-secret").unwrap();
    // The unit names the credential in systemd's credentials directory
    // (`%d`); here a file of the test's stands in for it.
    let settings = match Settings::parse(["--prod".to_owned()], |name| {
        if name == "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET_FILE" {
            Some(secret.to_string_lossy().into_owned())
        } else {
            lookup(name)
        }
    }) {
        Ok(Parsed::Run(settings)) => *settings,
        Ok(Parsed::Help(_)) => panic!("help, not settings"),
        Err(e) => panic!("the unit's settings do not parse: {e}"),
    };
    assert_eq!(
        settings.nats_url.as_deref(),
        Some("nats://10.0.0.21:4222,nats://10.0.0.22:4222,nats://10.0.0.23:4222")
    );
    assert_eq!(settings.bind, "10.0.0.11:3337");
    assert_eq!(
        settings.trusted_proxies,
        ["10.0.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(settings.metrics_bind.as_deref(), Some("127.0.0.1:9337"));
}
