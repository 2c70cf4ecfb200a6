//! The API server behind twizzle.net/stream.
//!
//! A cuber signs in with their WCA account, creates a stream and sends the
//! moves of a smart cube over a WebSocket; anyone can watch live. The actors
//! that do the work live in the `twizzle-actors` crate; this crate is the
//! HTTP and WebSocket edge around them.
//!
//! # Layout
//!
//! - [`client`]: the client address of a request, behind trusted proxies.
//! - [`config`]: the settings, from flags and `TWIZZLE_…` variables.
//! - [`startup`]: [`startup::Application`] starts the actors, binds, serves.
//! - [`routes`]: the HTTP handlers; they only pass messages to actors.
//! - [`session`]: the WebSocket session actor, one per socket.
//! - [`watch`]: the watch page, HTML, CSS and JavaScript inside the binary.
//! - [`connection`]: socket options, and cutting a connection whose client
//!   stopped reading.
//! - [`inflow`]: keeps a socket's incoming bytes from running far ahead of
//!   its session.
//! - [`wca`]: the WCA OAuth client used by the sign-in callback.
//! - [`error`]: the one error type of the HTTP layer and its responses.
//! - [`time`]: JavaScript-style date strings for the liveness check.
//! - [`testkit`]: fixtures the tests, the benchmark and the demo sender
//!   share: a temporary directory, a fake WCA, a 3x3x3 cube.

#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod connection;
pub mod error;
pub mod inflow;
pub mod routes;
pub mod session;
pub mod startup;
pub mod testkit;
pub mod time;
pub mod watch;
pub mod wca;
pub mod ws_context;
