//! Drives the broker's actors directly, without HTTP: stand-in sockets are
//! tiny actors that post what a stream sends them to an inbox the test
//! awaits, and every wait is bounded.
//!
//! # Layout
//!
//! - `support.rs`: the bounded wait, the test channel, stand-in sockets,
//!   event builders, stream and registry helpers, temporary directories.
//! - `stream.rs`: the stream actor.
//! - `registry.rs`: the registry.
//! - `admission.rs`: socket tickets, their slots and their pending joins.
//! - `tokens.rs`: the token actor.

mod support;

mod admission;
mod registry;
mod stream;
mod tokens;
