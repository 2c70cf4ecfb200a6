//! The actors of the twizzle stream broker and the messages they take.
//!
//! The broker is a set of actors; the HTTP server in the `twizzle-api-server`
//! crate only translates requests into their messages.
//!
//! # Layout
//!
//! - [`ids`]: the identifier and token formats (`user_…`, `twizzle_stream_…`,
//!   `twizzle_access_token_…`, `claim_token_…`) and the public user info.
//! - [`event`]: checks a sender's WebSocket frame and turns it into an
//!   [`event::Event`] whose text is encoded once and shared by every viewer.
//! - [`stream`]: one [`stream::StreamActor`] per stream; it owns the stream's
//!   sockets, the last reset/orientation/move, the idle countdown and the
//!   stream's recording on disk.
//! - [`registry`]: the [`registry::Registry`] creates, lists and finds
//!   streams, counts sockets, and learns when a stream ends.
//! - [`tokens`]: the [`tokens::TokenActor`] owns users, access tokens and
//!   claim tokens, and keeps them on disk.
//! - [`journal`]: the append-only JSON-lines file the token actor and the
//!   registry store their records in.
//! - [`secrets`]: token hashes and the sealing of access tokens at rest.
//! - [`rate`]: the [`rate::TokenBucket`] that paces one client's events.

pub mod event;
pub mod ids;
pub mod journal;
pub mod rate;
pub mod registry;
pub mod secrets;
pub mod stream;
pub mod tokens;
