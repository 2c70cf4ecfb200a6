//! Drives the broker's actors directly, without HTTP: stand-in sockets are
//! tiny actors that post what a stream sends them to an inbox the test
//! awaits, and every wait is bounded.
//!
//! # Layout
//!
//! - `support.rs`: the bounded wait, the test channel, stand-in sockets,
//!   event builders, stream and registry helpers, temporary directories.
//! - `stream.rs`: the stream actor.
//! - `resume.rs`: viewers resuming with `since`, gaps, and a stalled recording.
//! - `registry.rs`: the registry.
//! - `admission.rs`: socket tickets, their slots and their pending joins.
//! - `tokens.rs`: the token actor.
//! - `cluster.rs`: streams that follow a recording other nodes append to.

mod support;

mod admission;
mod cluster;
mod registry;
mod resume;
mod stream;
mod tokens;
