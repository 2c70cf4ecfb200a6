//! A test's end of a WebSocket, on awc's client: what it sends, and what it
//! saw next within the wait bound.

use actix_codec::Framed;
use awc::ws::{CloseReason, Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;

use super::WAIT;

/// A test's end of a WebSocket.
pub struct WsClient {
    framed: Framed<BoxedSocket, Codec>,
    /// The offset of the last event frame [`WsClient::next_json`] read.
    pub last_offset: Option<u64>,
}

/// What a socket saw next.
#[derive(Debug)]
pub enum Seen {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary,
    /// A close frame, with its reason if it had one.
    Close(Option<CloseReason>),
    /// A pong, with its payload.
    Pong(Vec<u8>),
    /// The connection ended, or failed, without a close frame.
    Ended,
}

impl WsClient {
    /// A client on a socket opened elsewhere (with headers of a test's own).
    pub fn from_framed(framed: Framed<BoxedSocket, Codec>) -> WsClient {
        WsClient {
            framed,
            last_offset: None,
        }
    }

    /// Opens a socket to `url` (`ws://…`); the refusal if the upgrade was refused.
    pub async fn connect(url: String) -> Result<WsClient, awc::error::WsClientError> {
        let (_, framed) = awc::Client::new()
            .ws(url)
            .max_frame_size(1 << 24)
            .connect()
            .await?;
        Ok(WsClient {
            framed,
            last_offset: None,
        })
    }

    /// Opens a socket to `url` offering `protocols`; the answer's headers
    /// and the socket, or the refusal if the upgrade was refused.
    pub async fn connect_offering(
        url: String,
        protocols: &[&str],
    ) -> Result<(awc::http::header::HeaderMap, WsClient), awc::error::WsClientError> {
        let (response, framed) = awc::Client::new()
            .ws(url)
            .protocols(protocols)
            .max_frame_size(1 << 24)
            .connect()
            .await?;
        Ok((
            response.headers().clone(),
            WsClient {
                framed,
                last_offset: None,
            },
        ))
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.framed
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send a frame");
    }

    /// Sends `value` as a text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends any frame.
    pub async fn send(&mut self, message: Message) {
        self.framed.send(message).await.expect("send a frame");
    }

    /// The next data or close frame (pings are answered, pongs skipped), within the wait bound.
    pub async fn next(&mut self) -> Seen {
        loop {
            let frame = actix::clock::timeout(WAIT, self.framed.next())
                .await
                .expect("a frame within the wait bound");
            match frame {
                Some(Ok(Frame::Text(bytes))) => {
                    return Seen::Text(String::from_utf8(bytes.to_vec()).unwrap())
                }
                Some(Ok(Frame::Binary(_))) => return Seen::Binary,
                Some(Ok(Frame::Close(reason))) => return Seen::Close(reason),
                Some(Ok(Frame::Ping(payload))) => {
                    let _ = self.framed.send(Message::Pong(payload)).await;
                }
                Some(Ok(Frame::Pong(payload))) => return Seen::Pong(payload.to_vec()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Seen::Ended,
            }
        }
    }

    /// The next frame, which must be a JSON text frame, as the existing
    /// client reads it: an event frame's `offset` is checked (each event
    /// has one) and taken off, into [`WsClient::last_offset`].
    pub async fn next_json(&mut self) -> Value {
        let mut frame = self.next_frame().await;
        let is_event = matches!(
            frame["event"].as_str(),
            Some("move" | "orientation" | "reset")
        );
        if is_event {
            let offset = frame
                .as_object_mut()
                .and_then(|f| f.remove("offset"))
                .and_then(|o| o.as_u64())
                .unwrap_or_else(|| panic!("an event frame without an offset: {frame}"));
            self.last_offset = Some(offset);
        }
        frame
    }

    /// The next frame, which must be a JSON text frame, whole.
    pub async fn next_frame(&mut self) -> Value {
        match self.next().await {
            Seen::Text(text) => serde_json::from_str(&text).expect("a JSON frame"),
            other => panic!("expected a text frame, saw {other:?}"),
        }
    }

    /// The next frame, which must be a close frame; its code and reason.
    pub async fn next_close(&mut self) -> (u16, String) {
        match self.next().await {
            Seen::Close(Some(reason)) => (
                u16::from(reason.code),
                reason.description.unwrap_or_default(),
            ),
            other => panic!("expected a close frame, saw {other:?}"),
        }
    }
}
