//! A cluster under test: one `nats-server` with JetStream and N real
//! binaries in cluster mode on it, each on a free port and a data directory
//! of its own, all with the same settings; and what a fault test does to
//! it mid-test: kill a node with -9 and start it again, stop NATS and start
//! it again on the same port and store.

use std::process::Command;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use twizzle_actors::testkit::NatsServer;
use twizzle_api_server::config::Settings;

use super::app::{test_settings, TestApp};
use super::binary::{start_binary_with, KillOnDrop};
use super::{FakeWca, TempDir};

/// Each node's port while it is up, `None` while it is down, by node
/// number; the cluster writes it, its [`TestApp`]s read it.
pub type Ports = Arc<Mutex<Vec<Option<u16>>>>;

/// One node: the binary while it runs, its data directory, its log.
struct Node {
    /// The process; `None` once it has been killed.
    child: Option<KillOnDrop>,
    /// Its data directory, kept across restarts (cluster mode writes
    /// nothing there; a test may check that).
    dir: Arc<TempDir>,
    /// Its log lines as they come, for [`Cluster::logs`].
    logs: Receiver<String>,
    /// Every line read from `logs` so far, across restarts.
    seen: Vec<String>,
}

/// One NATS and the nodes on it.
pub struct Cluster {
    /// The nodes, by number (first, so that they are killed before NATS).
    nodes: Vec<Node>,
    /// The NATS every node keeps its state in; a test stops and restarts it.
    pub nats: NatsServer,
    /// Where the nodes sign in (the fake WCA's origin, or a test's own).
    wca_origin: String,
    /// The environment every node starts with: the test's settings.
    env: Vec<(&'static str, Option<String>)>,
    /// Each node's port while it is up, shared with the apps on the cluster.
    ports: Ports,
}

impl Cluster {
    /// Starts NATS and `n` nodes on it (side by side, not one after the
    /// other) with the test settings changed by `tweak`, signing in through
    /// `wca`; `None` where `nats-server` is not installed (the caller skips).
    ///
    /// # Panics
    ///
    /// If NATS or a node does not start within the wait bound.
    pub fn start(n: usize, wca: &FakeWca, tweak: impl FnOnce(&mut Settings)) -> Option<Cluster> {
        let nats = NatsServer::start("cluster")?;
        let scratch = TempDir::new("cluster-settings");
        let mut settings = test_settings(scratch.path(), wca.origin());
        tweak(&mut settings);
        settings.nats_url = Some(nats.url());
        let env = settings_env(&settings);
        let wca_origin = settings.wca.origin.clone();
        let dirs: Vec<Arc<TempDir>> = (0..n)
            .map(|k| Arc::new(TempDir::new(&format!("cluster-node{k}"))))
            .collect();
        let started: Vec<(KillOnDrop, u16, Receiver<String>)> = std::thread::scope(|scope| {
            let (origin, env) = (&wca_origin, &env);
            let starting: Vec<_> = dirs
                .iter()
                .map(|dir| scope.spawn(move || start_node(dir, origin, env)))
                .collect();
            starting
                .into_iter()
                .map(|thread| thread.join().expect("a node started"))
                .collect()
        });
        let mut ports = Vec::new();
        let mut nodes = Vec::new();
        for ((child, port, logs), dir) in started.into_iter().zip(dirs) {
            ports.push(Some(port));
            nodes.push(Node {
                child: Some(child),
                dir,
                logs,
                seen: Vec::new(),
            });
        }
        Some(Cluster {
            nats,
            wca_origin,
            env,
            nodes,
            ports: Arc::new(Mutex::new(ports)),
        })
    }

    /// A [`TestApp`] on this cluster whose requests and sockets go to each
    /// node that is up in turn (and to one node with [`TestApp::on`]),
    /// signing in through `wca`, the fake the cluster was started with.
    pub fn app(&self, wca: FakeWca) -> TestApp {
        TestApp::across(self.nodes[0].dir.clone(), wca, self.ports.clone())
    }

    /// Node `node`'s port; panics if it is down.
    pub fn port(&self, node: usize) -> u16 {
        self.ports.lock().unwrap()[node].unwrap_or_else(|| panic!("node {node} is down"))
    }

    /// Kills node `node` with SIGKILL, as a crash does, and waits for it to
    /// exit; its apps' requests and sockets go to the other nodes from now.
    pub fn kill(&mut self, node: usize) {
        let mut child = self.nodes[node]
            .child
            .take()
            .unwrap_or_else(|| panic!("node {node} is already down"));
        self.ports.lock().unwrap()[node] = None;
        child.kill().expect("SIGKILL");
        child.wait().expect("the killed node is reaped");
        self.drain(node);
    }

    /// Starts node `node` again after [`Cluster::kill`], on its data
    /// directory and a fresh port, with the settings it had; returns the port.
    pub fn restart(&mut self, node: usize) -> u16 {
        assert!(self.nodes[node].child.is_none(), "node {node} is still up");
        self.drain(node);
        let (child, port, logs) = start_node(&self.nodes[node].dir, &self.wca_origin, &self.env);
        let restarted = &mut self.nodes[node];
        restarted.child = Some(child);
        restarted.logs = logs;
        self.ports.lock().unwrap()[node] = Some(port);
        port
    }

    /// Node `node`'s data directory, the same across its restarts.
    pub fn data_dir(&self, node: usize) -> &std::path::Path {
        self.nodes[node].dir.path()
    }

    /// Every log line node `node` has written so far, across its restarts.
    pub fn logs(&mut self, node: usize) -> &[String] {
        self.drain(node);
        &self.nodes[node].seen
    }

    /// Moves what node `node` has logged since into what was seen.
    fn drain(&mut self, node: usize) {
        let node = &mut self.nodes[node];
        node.seen.extend(node.logs.try_iter());
    }
}

/// Starts one node on `dir` with `env`, signing in through `wca_origin`.
fn start_node(
    dir: &TempDir,
    wca_origin: &str,
    env: &[(&'static str, Option<String>)],
) -> (KillOnDrop, u16, Receiver<String>) {
    start_binary_with(dir.path(), wca_origin, |command: &mut Command| {
        for (var, value) in env {
            match value {
                Some(value) => command.env(var, value),
                None => command.env_remove(var),
            };
        }
    })
}

/// The environment that starts the binary with `settings` (but its listen
/// address, data directory and WCA origin, which are flags): a variable
/// per setting, or one removed where the setting is off.
///
/// # Panics
///
/// On a setting the command line cannot express: a retention that is not
/// whole days.
pub fn settings_env(settings: &Settings) -> Vec<(&'static str, Option<String>)> {
    let secs = |d: Duration| {
        // The command line takes no zero duration; the shortest it takes
        // is as good as none (a claim token that expires at once).
        Some(d.max(Duration::from_nanos(1)).as_secs_f64().to_string())
    };
    let text = |value: &dyn ToString| Some(value.to_string());
    let limits = &settings.limits;
    let retention = limits.recording_retention.as_secs();
    assert_eq!(retention % 86_400, 0, "a retention of whole days");
    let trusted: Vec<String> = settings
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    vec![
        (
            "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET",
            settings
                .wca
                .client_secret
                .as_ref()
                .map(|secret| secret.expose().to_owned()),
        ),
        ("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET_FILE", None),
        ("CREDENTIALS_DIRECTORY", None),
        ("TWIZZLE_WCA_CLIENT_ID", text(&settings.wca.client_id)),
        (
            "TWIZZLE_OAUTH_REDIRECT_URI",
            text(&settings.wca.redirect_uri),
        ),
        ("TWIZZLE_CLIENT_APP_URL", text(&settings.client_app_url)),
        (
            "TWIZZLE_STREAM_IDLE_TIMEOUT_SECS",
            secs(settings.stream_idle_timeout),
        ),
        (
            "TWIZZLE_CLAIM_TOKEN_TTL_SECS",
            secs(settings.claim_token_ttl),
        ),
        ("TWIZZLE_HEARTBEAT_SECS", secs(settings.heartbeat)),
        ("TWIZZLE_PROD", settings.prod.then(|| "1".to_owned())),
        ("TWIZZLE_MAX_FRAME_BYTES", text(&limits.max_frame_bytes)),
        (
            "TWIZZLE_SENDER_EVENTS_PER_SEC",
            text(&limits.sender_events_per_sec),
        ),
        (
            "TWIZZLE_SENDER_EVENT_BURST",
            text(&limits.sender_event_burst),
        ),
        ("TWIZZLE_MAX_QUEUED_EVENTS", text(&limits.max_queued_events)),
        (
            "TWIZZLE_MAX_STREAMS_PER_USER",
            text(&limits.max_streams_per_user),
        ),
        ("TWIZZLE_MAX_SOCKETS", text(&limits.max_sockets)),
        (
            "TWIZZLE_MAX_SENDER_SOCKETS_PER_STREAM",
            text(&limits.max_sender_sockets_per_stream),
        ),
        (
            "TWIZZLE_MAX_RECORDING_BYTES",
            text(&limits.max_recording_bytes),
        ),
        (
            "TWIZZLE_RECORDING_RETENTION_DAYS",
            text(&(retention / 86_400)),
        ),
        (
            "TWIZZLE_MAX_SOCKETS_PER_CLIENT",
            text(&limits.max_sockets_per_client),
        ),
        (
            "TWIZZLE_HANDSHAKES_PER_CLIENT_PER_SEC",
            text(&limits.handshakes_per_client_per_sec),
        ),
        ("TWIZZLE_HANDSHAKE_BURST", text(&limits.handshake_burst)),
        (
            "TWIZZLE_REQUESTS_PER_CLIENT_PER_SEC",
            text(&limits.requests_per_client_per_sec),
        ),
        ("TWIZZLE_REQUEST_BURST", text(&limits.request_burst)),
        ("TWIZZLE_TRUSTED_PROXIES", Some(trusted.join(","))),
        (
            "TWIZZLE_METRICS_BIND",
            Some(
                settings
                    .metrics_bind
                    .clone()
                    .unwrap_or_else(|| "off".to_owned()),
            ),
        ),
        ("TWIZZLE_NATS_URL", settings.nats_url.clone()),
    ]
}
