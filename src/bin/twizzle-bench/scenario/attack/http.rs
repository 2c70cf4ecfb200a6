//! Plain HTTP/1.1 from a chosen loopback source address: one request and
//! its whole answer (status, `Retry-After`, the JSON error), on a fresh
//! connection or one kept alive, so that every refusal can be checked
//! against what SPEC says. A WebSocket upgrade that succeeds hands back the
//! socket.

use std::io;
use std::net::{IpAddr, SocketAddr};

use actix_web::rt::net::{TcpSocket, TcpStream};
use actix_web::rt::time::timeout;

use crate::ws::{self, Rng, HANDSHAKE_TIMEOUT};

/// The longest answer head read before giving up on it.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The longest answer body read; every answer here is a short JSON.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// An answer that was not an upgrade.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status code.
    pub status: u16,
    /// Its `Retry-After` header, if it had one.
    pub retry_after: Option<String>,
    /// The `error` of its JSON body, if it had one.
    pub error: Option<String>,
    /// The connection may carry another request.
    pub keep_alive: bool,
}

/// How one upgrade went.
pub enum Upgrade {
    /// 101: the socket, and any frame bytes that came with the answer.
    Open(TcpStream, Vec<u8>),
    /// Any other answer.
    Refused(Answer),
}

/// A TCP connection from `source` to `server`, without Nagle's delay.
pub async fn connect(server: SocketAddr, source: IpAddr) -> io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A WebSocket upgrade of `path` from `source`, with `extra_headers` (each
/// line ending in CRLF), answered within [`HANDSHAKE_TIMEOUT`].
pub async fn upgrade(
    server: SocketAddr,
    source: IpAddr,
    path: &str,
    extra_headers: &str,
    rng: &mut Rng,
) -> Result<Upgrade, String> {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    nonce[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    let mut key = String::with_capacity(24);
    ws::base64_into(&mut key, &nonce);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Origin: http://localhost:1234\r\n{extra_headers}\r\n"
    );
    let opening = async {
        let stream = connect(server, source)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut buf = Vec::with_capacity(512);
        let head = exchange(&stream, &mut buf, request.as_bytes(), true).await?;
        Ok(match head {
            Exchanged::Upgraded => Upgrade::Open(stream, buf),
            Exchanged::Answer(answer) => Upgrade::Refused(answer),
        })
    };
    timeout(HANDSHAKE_TIMEOUT, opening)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {HANDSHAKE_TIMEOUT:?}")))
}

/// `GET path` with `extra_headers` on a connection kept alive, answered
/// within [`HANDSHAKE_TIMEOUT`].
pub async fn get(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    server: SocketAddr,
    path: &str,
    extra_headers: &str,
) -> Result<Answer, String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {server}\r\n{extra_headers}\r\n");
    let asking = exchange(stream, buf, request.as_bytes(), false);
    match timeout(HANDSHAKE_TIMEOUT, asking).await {
        Ok(Ok(Exchanged::Answer(answer))) => Ok(answer),
        Ok(Ok(Exchanged::Upgraded)) => Err("101 to a plain GET".to_owned()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {HANDSHAKE_TIMEOUT:?}")),
    }
}

/// What one request brought.
enum Exchanged {
    /// 101 to an upgrade; `buf` holds what followed the head.
    Upgraded,
    Answer(Answer),
}

/// Writes `request`, reads the answer's head and, unless it is the 101 of
/// an upgrade, its body (by `Content-Length`). `buf` is left holding what
/// came after the head of a 101.
async fn exchange(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    request: &[u8],
    upgrading: bool,
) -> Result<Exchanged, String> {
    ws::write_all(stream, request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    buf.clear();
    let head_end = loop {
        if let Some(end) = ws::find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err("answer head too long".to_owned());
        }
        read_more(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("not an HTTP answer")?;
    if status == 101 && upgrading {
        buf.drain(..head_end);
        return Ok(Exchanged::Upgraded);
    }
    let mut content_length = 0usize;
    let mut retry_after = None;
    let mut keep_alive = true;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.parse().map_err(|_| "bad Content-Length")?,
            "retry-after" => retry_after = Some(value.to_owned()),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err(format!("a body of {content_length} bytes"));
    }
    while buf.len() < head_end + content_length {
        read_more(stream, buf).await?;
    }
    let body = &buf[head_end..head_end + content_length];
    let error = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    Ok(Exchanged::Answer(Answer {
        status,
        retry_after,
        error,
        keep_alive,
    }))
}

/// Reads what the socket has into `buf`; an error at the end of the stream.
async fn read_more(stream: &TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    loop {
        stream.readable().await.map_err(|e| format!("read: {e}"))?;
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err("the server closed the connection".to_owned()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}
