//! Drives the broker's actors directly, without HTTP: stand-in sockets are
//! tiny actors that post what a stream sends them to an inbox the test
//! awaits, and every wait is bounded.
//!
//! # Layout
//!
//! - `actors/support.rs`: the bounded wait, the test channel, stand-in
//!   sockets, event builders, stream helpers and temporary directories.
//! - `actors/stream.rs`: the stream actor.
//! - `actors/registry.rs`: the registry.
//! - `actors/tokens.rs`: the token actor.

#[path = "actors/support.rs"]
mod support;

#[path = "actors/registry.rs"]
mod registry;
#[path = "actors/stream.rs"]
mod stream;
#[path = "actors/tokens.rs"]
mod tokens;
