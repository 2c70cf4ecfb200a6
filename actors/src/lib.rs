//! The actors of the twizzle stream broker and the messages they take.
//!
//! The broker is a set of actors; the HTTP server in the `twizzle-api-server`
//! crate only translates requests into their messages. A move event goes
//! socket → session (in the server crate) → [`stream`] → every other socket.
//!
//! # Layout
//!
//! The actors, one per file:
//!
//! - [`stream`]: one [`stream::StreamActor`] per stream; it owns the stream's
//!   sockets, fans each event out, runs the idle countdown, and hands
//!   accepted events to the stream's recording.
//! - [`registry`]: the [`registry::Registry`], the directory of open
//!   streams: creates, lists and finds them, admits sockets, and learns
//!   when a stream goes live, idle, or ends.
//! - [`tokens`]: the [`tokens::TokenActor`] owns users, access tokens and
//!   claim tokens.
//! - [`gate`]: the [`gate::Gate`] keeps each client address's handshake and
//!   request budgets.
//! - [`health`]: what the readiness check asks them, and the
//!   [`health::Pulse`] that answers for a stream thread.
//!
//! The values they are made of:
//!
//! - [`ids`]: stream and user IDs and the two kinds of token as types,
//!   checked once where they enter; tokens print only their last four
//!   characters.
//! - [`event`]: checks a sender's WebSocket frame and turns it into an
//!   [`event::Event`] whose text is encoded once and shared by every viewer.
//! - [`replay`]: the [`replay::Replay`] a stream keeps for late viewers (last
//!   reset, orientation and move) and the reset loop guard.
//! - [`admission`]: the [`admission::Admission`] ticket of one socket, whose
//!   drop frees its slot and takes it out of its stream.
//! - [`close`]: every close code and reason a socket can get.
//! - [`metrics`]: the metric families an operator scrapes.
//! - [`rate`]: the [`rate::TokenBucket`] that paces one client's events.
//! - [`secrets`]: token hashes and the sealing of access tokens at rest.
//!
//! And the state they keep:
//!
//! - [`store`]: the seam between the actors and durable state (users and
//!   claims, open streams, recordings and their snapshots), with the local
//!   JSON-lines files as its default implementation.
//!
//! And for tests: [`testkit`], a temporary directory and a small tmpfs.

#![warn(missing_docs)]

pub mod admission;
pub mod close;
pub mod event;
pub mod gate;
pub mod health;
pub mod ids;
pub mod metrics;
pub mod outbox;
pub mod rate;
pub mod registry;
pub mod replay;
pub mod secrets;
pub mod store;
pub mod stream;
pub mod testkit;
pub mod tokens;
