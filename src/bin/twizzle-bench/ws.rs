//! A minimal WebSocket client (RFC 6455), just what the benchmark needs, so
//! that a viewer costs one socket, one read buffer and a few counters.
//!
//! The socket is bound to a chosen loopback source address before it
//! connects (one source address runs out of ephemeral ports near 28,000
//! sockets). The handshake is a plain HTTP/1.1 upgrade; frames from the server
//! are parsed in place in the read buffer, with no allocation per frame.

use std::io;
use std::net::{IpAddr, SocketAddr};

use actix_web::rt::net::{TcpSocket, TcpStream};

/// Opcode of a continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// How long opening a socket may take, connect and upgrade together.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest handshake answer read before giving up on it.
const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;
/// The largest frame a reader grows its buffer for; the server's own limit is 64 KiB.
const MAX_FRAME_BYTES: usize = 1 << 20;

/// Why a socket could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnectError {
    /// The TCP connection failed (e.g. no free port, too many open files, refused).
    Io(String),
    /// The server answered the upgrade with this status instead of 101.
    Status(u16),
    /// The server closed the connection or sent something that is not HTTP.
    Handshake(String),
    /// No answer within [`HANDSHAKE_TIMEOUT`] (e.g. the server is out of file descriptors).
    Timeout,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect: {e}"),
            ConnectError::Status(status) => write!(f, "upgrade answered {status}"),
            ConnectError::Handshake(e) => write!(f, "handshake: {e}"),
            ConnectError::Timeout => write!(f, "no upgrade within {HANDSHAKE_TIMEOUT:?}"),
        }
    }
}

/// A cheap pseudo-random generator (xorshift64*) for mask keys, handshake
/// keys and padding. Not for secrets; the server does not care.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the std hasher's per-process randomness and `salt`.
    pub fn new(salt: u64) -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        Rng(h.finish() | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A mask key for one client frame.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 of `bytes`, with padding, appended to `out`.
pub fn base64_into(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

/// Opens a TCP connection from `source` to `server` and upgrades it to a
/// WebSocket at `path_and_query`, within [`HANDSHAKE_TIMEOUT`]. Returns the
/// stream and any frame bytes that arrived with the handshake answer.
pub async fn connect(
    server: SocketAddr,
    source: IpAddr,
    path_and_query: &str,
    rng: &mut Rng,
) -> Result<(TcpStream, Vec<u8>), ConnectError> {
    let opening = open(server, source, path_and_query, rng);
    actix_web::rt::time::timeout(HANDSHAKE_TIMEOUT, opening)
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn open(
    server: SocketAddr,
    source: IpAddr,
    path_and_query: &str,
    rng: &mut Rng,
) -> Result<(TcpStream, Vec<u8>), ConnectError> {
    let io = |e: io::Error| ConnectError::Io(e.to_string());
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(io)?;
    socket.bind(SocketAddr::new(source, 0)).map_err(io)?;
    let stream = socket.connect(server).await.map_err(io)?;
    // Browsers send each small frame at once; so do we.
    stream.set_nodelay(true).map_err(io)?;

    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    nonce[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    let mut key = String::with_capacity(24);
    base64_into(&mut key, &nonce);
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Origin: http://localhost:1234\r\n\r\n"
    );
    write_all(&stream, request.as_bytes()).await.map_err(io)?;

    let mut answer = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    let header_end = loop {
        if let Some(end) = find(&answer, b"\r\n\r\n") {
            break end + 4;
        }
        if answer.len() > MAX_HANDSHAKE_BYTES {
            return Err(ConnectError::Handshake("answer too long".to_owned()));
        }
        stream.readable().await.map_err(io)?;
        match stream.try_read(&mut chunk) {
            Ok(0) => {
                return Err(ConnectError::Handshake(
                    "connection closed during the handshake".to_owned(),
                ))
            }
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io(e)),
        }
    };
    let status = std::str::from_utf8(&answer[..header_end.min(64)])
        .ok()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ConnectError::Handshake("not an HTTP answer".to_owned()))?;
    if status != 101 {
        return Err(ConnectError::Status(status));
    }
    let leftover = answer.split_off(header_end);
    Ok((stream, leftover))
}

/// Writes all of `bytes`, waiting while the socket's send buffer is full.
pub async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How far a bounded write got.
pub struct Written {
    /// Bytes written.
    pub bytes: usize,
    /// The error that stopped it, if one did.
    pub error: Option<io::Error>,
}

/// Writes `bytes` until all are written or `deadline` passes, whichever is first.
pub async fn write_until(
    stream: &TcpStream,
    bytes: &[u8],
    deadline: std::time::Instant,
) -> Written {
    let mut done = 0;
    while done < bytes.len() {
        match stream.try_write(&bytes[done..]) {
            Ok(0) => {
                return Written {
                    bytes: done,
                    error: Some(io::ErrorKind::WriteZero.into()),
                }
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let timer = actix_web::rt::time::sleep_until(deadline.into());
                let writable = stream.writable();
                match futures_util::future::select(std::pin::pin!(writable), std::pin::pin!(timer))
                    .await
                {
                    futures_util::future::Either::Left((Ok(()), _)) => {}
                    futures_util::future::Either::Left((Err(e), _)) => {
                        return Written {
                            bytes: done,
                            error: Some(e),
                        }
                    }
                    futures_util::future::Either::Right(_) => break,
                }
            }
            Err(e) => {
                return Written {
                    bytes: done,
                    error: Some(e),
                }
            }
        }
    }
    Written {
        bytes: done,
        error: None,
    }
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key),
    );
}

/// A frame header: its length, the payload's length, the opcode and FIN.
struct Header {
    header_len: usize,
    payload_len: usize,
    opcode: u8,
}

/// Parses a server frame's header at the start of `bytes`; `None` while incomplete.
fn parse_header(bytes: &[u8]) -> Result<Option<Header>, io::Error> {
    if bytes.len() < 2 {
        return Ok(None);
    }
    let opcode = bytes[0] & 0x0F;
    if bytes[1] & 0x80 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server masked a frame",
        ));
    }
    let (header_len, payload_len) = match bytes[1] & 0x7F {
        126 if bytes.len() < 4 => return Ok(None),
        126 => (4, usize::from(u16::from_be_bytes([bytes[2], bytes[3]]))),
        127 if bytes.len() < 10 => return Ok(None),
        127 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&bytes[2..10]);
            (10, u64::from_be_bytes(len) as usize)
        }
        n => (2, usize::from(n)),
    };
    if payload_len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a frame over 1 MiB",
        ));
    }
    Ok(Some(Header {
        header_len,
        payload_len,
        opcode,
    }))
}

/// The reading end of a socket: a buffer that frames are parsed from in place.
pub struct FrameReader {
    /// Bytes read and not yet parsed sit at `buf[..filled]`.
    buf: Vec<u8>,
    /// How much of `buf` holds unparsed bytes.
    filled: usize,
}

/// What one read brought.
pub enum ReadOutcome {
    /// Frames were handled (possibly none: a partial frame).
    Frames,
    /// The server closed the TCP connection.
    Eof,
}

impl FrameReader {
    /// A reader with a buffer of `capacity` bytes, starting with `leftover`.
    pub fn new(capacity: usize, leftover: &[u8]) -> FrameReader {
        let mut buf = vec![0; capacity.max(leftover.len()).max(64)];
        buf[..leftover.len()].copy_from_slice(leftover);
        FrameReader {
            buf,
            filled: leftover.len(),
        }
    }

    /// Handles the frames already buffered (e.g. from the handshake), then
    /// waits for the socket to be readable, reads what it has and handles
    /// every complete frame with `on_frame(opcode, payload)`. A frame split
    /// over reads is handled once complete.
    pub async fn read(
        &mut self,
        stream: &TcpStream,
        mut on_frame: impl FnMut(u8, &[u8]),
    ) -> io::Result<ReadOutcome> {
        self.parse(&mut on_frame)?;
        loop {
            if self.filled == self.buf.len() {
                // A frame larger than the buffer: make room for it (bounded by MAX_FRAME_BYTES).
                let grown = (self.buf.len() * 2).min(MAX_FRAME_BYTES + 16);
                if grown == self.buf.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too big"));
                }
                self.buf.resize(grown, 0);
            }
            stream.readable().await?;
            match stream.try_read(&mut self.buf[self.filled..]) {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(n) => {
                    self.filled += n;
                    self.parse(&mut on_frame)?;
                    return Ok(ReadOutcome::Frames);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn parse(&mut self, on_frame: &mut impl FnMut(u8, &[u8])) -> io::Result<()> {
        let mut pos = 0;
        while let Some(header) = parse_header(&self.buf[pos..self.filled])? {
            let end = pos + header.header_len + header.payload_len;
            if end > self.filled {
                break;
            }
            on_frame(header.opcode, &self.buf[pos + header.header_len..end]);
            pos = end;
        }
        if pos > 0 {
            self.buf.copy_within(pos..self.filled, 0);
            self.filled -= pos;
        }
        Ok(())
    }
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The close code of a close frame's payload, if it has one.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        let mut out = String::new();
        base64_into(&mut out, b"any carnal pleas");
        assert_eq!(out, "YW55IGNhcm5hbCBwbGVhcw==");
        out.clear();
        base64_into(&mut out, b"abc");
        assert_eq!(out, "YWJj");
    }

    #[test]
    fn frames_are_parsed_in_place_even_when_split() {
        let mut wire = Vec::new();
        for payload in [&b"hello"[..], &[b'x'; 300][..], b""] {
            wire.push(0x81);
            if payload.len() < 126 {
                wire.push(payload.len() as u8);
            } else {
                wire.push(126);
                wire.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            wire.extend_from_slice(payload);
        }
        let mut reader = FrameReader::new(64, &wire[..3]);
        let mut seen = Vec::new();
        reader
            .parse(&mut |op, p: &[u8]| seen.push((op, p.len())))
            .unwrap();
        assert!(seen.is_empty());
        reader.buf.resize(1024, 0);
        reader.buf[3..wire.len()].copy_from_slice(&wire[3..]);
        reader.filled = wire.len();
        reader
            .parse(&mut |op, p: &[u8]| seen.push((op, p.len())))
            .unwrap();
        assert_eq!(seen, vec![(1, 5), (1, 300), (1, 0)]);
        assert_eq!(reader.filled, 0);
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, b"abc", [1, 2, 3, 4]);
        assert_eq!(
            out,
            vec![0x81, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]
        );
    }
}
