//! What the readiness check asks of the actors.
//!
//! The check is ready when every actor answers in time and the state can be
//! written. The token actor and the registry answer [`CheckWritable`] for
//! their own stores; the stream actors are too many to ask one by one, so
//! each of their threads runs a [`Pulse`] that answers [`Ping`]: a thread
//! that a stream keeps busy answers late.

use actix::prelude::*;

use crate::store::StoreError;

/// Whether the actor's store takes writes now, answered on the actor's own
/// thread: an answer in time also shows the actor is not stuck.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<(), StoreError>")]
pub struct CheckWritable;

/// Answered at once by a [`Pulse`].
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Ping;

/// An actor that only answers [`Ping`]; started on a thread whose other
/// actors cannot all be asked, so that its answer shows the thread turns.
#[derive(Debug, Default)]
pub struct Pulse;

impl Actor for Pulse {
    type Context = Context<Self>;
}

impl Handler<Ping> for Pulse {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}
