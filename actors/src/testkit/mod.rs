//! Fixtures for tests of the broker's durable state: a temporary directory
//! that removes itself, and a small tmpfs to fill or make read-only.
//!
//! The broker never uses them. They are public so that this crate's unit
//! tests, the server's integration tests and its benchmark share one of each.

mod temp_dir;
mod tmpfs;

pub use temp_dir::TempDir;
pub use tmpfs::Tmpfs;
