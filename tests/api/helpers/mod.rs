//! One way to start the real server for a test: on port 0, in a fresh data
//! directory, signed in through a fake WCA on loopback; and the clients a
//! test talks to it with.
//!
//! - `app.rs`: the settings, starting the server, its HTTP calls, sign-in.
//! - `binary.rs`: the real binary as a child process, and its log lines.
//! - `cluster.rs`: NATS and N binaries on it in cluster mode; killing and
//!   restarting a node, stopping and restarting NATS.
//! - `nodes.rs`: one server or a two-node cluster, for a test that runs both ways.
//! - `browser.rs`: a headless Chromium over WebDriver, for the watch page.
//! - `ws.rs`: awc's WebSocket client, with a bounded wait for each frame.
//! - `raw.rs`: sockets on plain TCP that misbehave on purpose.
//! - `events.rs`: the events a test sends.
//! - `honest.rs`: the honest pair a limit's test keeps talking meanwhile.

mod app;
mod binary;
mod browser;
mod cluster;
mod events;
mod honest;
mod nodes;
mod raw;
mod ws;

use std::time::Duration;

pub use app::{
    spawn_app, spawn_app_in, spawn_app_on, spawn_app_with, spawn_dev_app, Answer, TestApp,
};
pub use binary::{
    assert_no_token_in, rest_of, spawn_reading, start_binary, start_binary_with, KillOnDrop,
};
pub use browser::{free_port, Browser};
pub use cluster::Cluster;
pub use events::{
    move_event, orientation_event, recording_lines, reset_event, sent_part, without_counts,
};
pub use honest::HonestPair;
pub(crate) use nodes::on_one_and_two_nodes;
pub use nodes::Nodes;
pub use raw::{
    content_length, raw_upgrade, read_head, reset, status_of, upgrade_request, RawSocket,
};
pub use twizzle_api_server::testkit::{FakeWca, TempDir, WcaAccount};
pub use ws::{Seen, WsClient};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);
