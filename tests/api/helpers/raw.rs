//! Sockets on plain blocking TCP, for what awc will not do: a client that
//! stops reading or answering, one that resets its connection in the middle
//! of the handshake, frames and headers of its own making, the moment the
//! server ends a connection, and the body of a refused upgrade.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use super::WAIT;

/// The WebSocket upgrade request for `path` (which may carry a query).
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads an answer's head, up to and including the blank line, byte by byte
/// so that nothing after it is consumed. An end of the connection before
/// the blank line is an `UnexpectedEof` error.
pub fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    Ok(head)
}

/// The status code of an answer's head, if it has one.
pub fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let code = line.split(|&b| b == b' ').nth(1)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Closes `stream` with a reset (RST) rather than an orderly FIN, as a
/// client that crashes or loses its network does: a linger of zero makes
/// the close drop whatever is unsent and abort the connection.
pub fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` that outlives the call.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "setsockopt SO_LINGER");
    drop(stream);
}

/// A WebSocket client on a plain blocking socket that does nothing by itself:
/// it answers no ping and reads only when told, to play a client that stops
/// reading or stops answering.
pub struct RawSocket {
    stream: std::net::TcpStream,
}

impl RawSocket {
    /// Opens a socket to `stream_id` as a viewer, with a receive buffer of
    /// `receive_buffer` bytes, and completes the handshake.
    pub fn open(port: u16, stream_id: &str, receive_buffer: i32) -> RawSocket {
        RawSocket::open_with(port, stream_id, receive_buffer, "").1
    }

    /// Opens a socket to `stream_id` with `headers` (whole lines, each
    /// ending in CRLF) added to the upgrade request; the answer's head and
    /// the socket.
    pub fn open_with(
        port: u16,
        stream_id: &str,
        receive_buffer: i32,
        headers: &str,
    ) -> (String, RawSocket) {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // SAFETY: a valid socket and a c_int that outlives the call.
        let set = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&receive_buffer as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "setsockopt SO_RCVBUF");
        // As browsers do: a short frame after a long one goes out at once,
        // rather than after the server's delayed acknowledgement.
        stream.set_nodelay(true).unwrap();
        write!(
            stream,
            "GET /v0/streams/{stream_id}/socket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        )
        .unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("the handshake answer");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("an ASCII head");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        (head, RawSocket { stream })
    }

    /// Reads (and discards) until the server closes the connection, with no
    /// more than `quiet` between reads; the frames' opcodes seen, in order.
    /// Panics if the connection is still open but silent for `quiet`.
    pub fn drain_until_closed(&mut self, quiet: std::time::Duration) -> Vec<u8> {
        self.stream.set_read_timeout(Some(quiet)).unwrap();
        let mut all = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "the server kept the connection open ({e}) after {} bytes",
                    all.len()
                ),
            }
        }
        opcodes(&all)
    }
}

impl RawSocket {
    /// Reads the next `count` text frames (answering nothing), each within the wait bound.
    pub fn read_texts(&mut self, count: usize) -> Vec<String> {
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut texts = Vec::with_capacity(count);
        while texts.len() < count {
            let (opcode, payload) = self.read_frame().expect("a frame within the wait bound");
            match opcode {
                0x1 => texts.push(String::from_utf8(payload).unwrap()),
                0x9 => {}
                op => panic!("unexpected frame with opcode {op}"),
            }
        }
        texts
    }
}

impl RawSocket {
    /// Wraps a connection whose upgrade was just answered 101 (its head read
    /// with [`read_head`]).
    pub fn upgraded(stream: TcpStream) -> RawSocket {
        RawSocket { stream }
    }

    /// Reads frames, skipping any but a close, until a close frame: its code
    /// and reason. `Ok(None)` if the connection ends first, cleanly or by a
    /// reset; an error if it stays silent for `quiet`.
    pub fn next_close(&mut self, quiet: std::time::Duration) -> io::Result<Option<(u16, String)>> {
        self.stream.set_read_timeout(Some(quiet))?;
        loop {
            let (opcode, payload) = match self.read_frame() {
                Ok(frame) => frame,
                Err(e) if ended(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            if opcode == 0x8 {
                let code = match payload.get(..2) {
                    Some(code) => u16::from_be_bytes([code[0], code[1]]),
                    None => 1005, // no status code in the frame (RFC 6455 §7.4.1)
                };
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                return Ok(Some((code, reason.into_owned())));
            }
        }
    }

    /// Sends one frame with `opcode` and `payload`, masked as a client must.
    pub fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        use std::io::Write;
        let mask: [u8; 4] = rand::random();
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=65_535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.stream.write_all(&frame).expect("send a frame");
    }

    /// The next frame's opcode and payload, within the wait bound.
    pub fn next_frame(&mut self) -> (u8, Vec<u8>) {
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        self.read_frame().expect("a frame within the wait bound")
    }

    /// Reads one frame from the server (unmasked, as a server sends them):
    /// its opcode and payload, or the error of the first read that failed.
    fn read_frame(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut header = [0u8; 2];
        self.stream.read_exact(&mut header)?;
        let len = match header[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                self.stream.read_exact(&mut n)?;
                usize::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                self.stream.read_exact(&mut n)?;
                u64::from_be_bytes(n) as usize
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload)?;
        Ok((header[0] & 0x0f, payload))
    }

    /// Reads until the server ends the connection cleanly (a reset fails),
    /// within the wait bound; the bytes that came before the end.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        use std::io::Read;
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) => panic!("the connection did not end cleanly: {e}"),
            }
        }
    }
}

/// Whether a read failed because the peer closed or reset the connection.
fn ended(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// The opcodes of the server-to-client (unmasked) frames in `bytes`.
fn opcodes(bytes: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 if at + 4 <= bytes.len() => (
                usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                4,
            ),
            127 if at + 10 <= bytes.len() => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[at + 2..at + 10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            n if n < 126 => (usize::from(n), 2),
            _ => break,
        };
        seen.push(opcode);
        at += header + len;
    }
    seen
}

/// Sends a WebSocket upgrade request on a plain socket; the status and the
/// body of a refusal (awc hides the body of a refused upgrade).
pub fn raw_upgrade(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(upgrade_request(path).as_bytes()).unwrap();
    let head = read_head(&mut stream).expect("an answer within the wait bound");
    let status = status_of(&head).expect("a status line");
    let mut body = vec![0u8; content_length(&head)];
    stream
        .read_exact(&mut body)
        .expect("the whole body within the wait bound");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The `Content-Length` of an answer's head; 0 if it has none.
pub fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().expect("a numeric Content-Length"))
        })
        .unwrap_or(0)
}
