//! Fixtures for tests of the broker's durable state: a temporary directory
//! that removes itself, a small tmpfs to fill or make read-only, and a real
//! `nats-server` for the JetStream store.
//!
//! The broker never uses them. They are public so that this crate's unit
//! tests, the server's integration tests and its benchmark share one of each.

mod nats_server;
mod temp_dir;
mod tmpfs;

pub use nats_server::{have_nats_server, NatsServer};
pub use temp_dir::TempDir;
pub use tmpfs::Tmpfs;
