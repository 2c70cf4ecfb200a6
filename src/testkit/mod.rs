//! Fixtures the tests, the benchmark and the demo sender share: a temporary
//! directory that removes itself, a small tmpfs (both from the actors
//! crate), a fake WCA on loopback, and a 3x3x3 cube that computes the
//! `binaryState` of a move event ([`cube`]).
//!
//! The server never uses them. They are part of the library so that the
//! integration tests and `twizzle-bench` and `twizzle-demo` (binaries of this
//! crate, which cannot reach code under `tests/`) sign in through the same
//! fake, clean up the same way, and agree on what a cube's state is.

pub mod cube;
mod fake_wca;

pub use fake_wca::{FakeWca, FakeWcaBuilder, WcaAccount};
pub use twizzle_actors::testkit::{TempDir, Tmpfs};

/// `text` percent-encoded for a query value: every byte but the unreserved
/// ones (RFC 3986 section 2.3).
pub fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
