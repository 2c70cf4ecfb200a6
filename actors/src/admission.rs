//! A socket's admission to a stream, as a value: the ticket the registry
//! hands out for one socket, held by that socket's session.
//!
//! Dropping the ticket gives the socket's slot back to the registry and
//! takes the socket out of its stream, however the session ends: closed
//! normally, dropped in the middle of the handshake, or dropped while its
//! `Join` was still on its way. So no slot leaks, and no phantom sender
//! keeps a stream from ever timing out.

use std::net::IpAddr;
use std::sync::Arc;

use actix::prelude::*;

use crate::ids::{StreamId, UserId};
use crate::stream::{Disconnect, Join, Leave, Outbox, SocketId, StreamActor};

/// A socket admitted by the registry has gone; its slot is free.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SocketClosed {
    /// The stream it was admitted to.
    pub stream_id: StreamId,
    /// Whether it was admitted as a sender (and so held a sender slot).
    pub sender: bool,
    /// The client address it was counted under.
    pub client: IpAddr,
}

/// One admitted socket: its stream and its number there. Not `Clone`: one
/// ticket, one slot.
pub struct Admission {
    /// The stream the socket was admitted to.
    stream: Addr<StreamActor>,
    /// The socket's number, which the stream knows it by.
    socket: SocketId,
    /// The socket's signed-in user, if any.
    user_id: Option<UserId>,
    /// What the registry counted the socket under (stream, sender slot,
    /// client address), and so what it is told when the ticket is dropped.
    slot: SocketClosed,
    /// Told when the ticket is dropped.
    registry: Recipient<SocketClosed>,
}

impl Admission {
    /// A ticket for `socket` of `stream`; made by the registry only.
    pub(crate) fn new(
        stream: Addr<StreamActor>,
        socket: SocketId,
        user_id: Option<UserId>,
        slot: SocketClosed,
        registry: Recipient<SocketClosed>,
    ) -> Admission {
        Admission {
            stream,
            socket,
            user_id,
            slot,
            registry,
        }
    }

    /// The stream's actor, to join and publish to.
    pub fn stream(&self) -> &Addr<StreamActor> {
        &self.stream
    }

    /// The stream's ID.
    pub fn stream_id(&self) -> &StreamId {
        &self.slot.stream_id
    }

    /// The socket's number in its stream.
    pub fn socket(&self) -> SocketId {
        self.socket
    }

    /// The socket's signed-in user, if any.
    pub fn user_id(&self) -> Option<&UserId> {
        self.user_id.as_ref()
    }

    /// Whether the socket was admitted as one of the stream's senders.
    pub fn sender(&self) -> bool {
        self.slot.sender
    }

    /// The `Join` that takes this socket into its stream; a viewer that
    /// resumes gives the offset of the last event it has as `since`.
    pub fn join(
        &self,
        outbox: Outbox,
        disconnect: Option<Arc<dyn Disconnect>>,
        since: Option<u64>,
    ) -> Join {
        Join {
            socket: self.socket,
            outbox,
            user_id: self.user_id.clone(),
            disconnect,
            since,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        // The session's pending `Join` request goes with the session: it was
        // either queued at the stream already, and this `Leave` queues
        // behind it, or it is dropped unsent and the `Leave` is a no-op.
        self.stream.do_send(Leave {
            socket: self.socket,
        });
        self.registry.do_send(self.slot.clone());
    }
}
