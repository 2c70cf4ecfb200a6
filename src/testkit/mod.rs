//! Fixtures the tests and the benchmark share: a temporary directory that
//! removes itself, a small tmpfs (both from the actors crate), and a fake
//! WCA on loopback.
//!
//! The server never uses them. They are part of the library so that the
//! integration tests and `twizzle-bench` (a binary of this crate, which cannot
//! reach code under `tests/`) sign in through the same fake and clean up the
//! same way.

mod fake_wca;

pub use fake_wca::{FakeWca, FakeWcaBuilder, WcaAccount};
pub use twizzle_actors::testkit::{TempDir, Tmpfs};
