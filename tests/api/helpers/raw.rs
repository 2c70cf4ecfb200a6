//! Sockets on plain blocking TCP, for what awc will not do: a client that
//! stops reading or answering, frames and headers of its own making, the
//! moment the server ends a connection, and the body of a refused upgrade.

use super::WAIT;

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
        use std::io::Read;
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
        use std::io::Read;
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut texts = Vec::with_capacity(count);
        let mut header = [0u8; 2];
        while texts.len() < count {
            self.stream
                .read_exact(&mut header)
                .expect("a frame within the wait bound");
            let len = match header[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.stream.read_exact(&mut n).unwrap();
                    usize::from(u16::from_be_bytes(n))
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.stream.read_exact(&mut n).unwrap();
                    u64::from_be_bytes(n) as usize
                }
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).unwrap();
            match header[0] & 0x0f {
                0x1 => texts.push(String::from_utf8(payload).unwrap()),
                0x9 => {}
                op => panic!("unexpected frame with opcode {op}"),
            }
        }
        texts
    }
}

impl RawSocket {
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
        use std::io::Read;
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut header = [0u8; 2];
        self.stream
            .read_exact(&mut header)
            .expect("a frame within the wait bound");
        let len = match header[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                self.stream.read_exact(&mut n).unwrap();
                usize::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                self.stream.read_exact(&mut n).unwrap();
                u64::from_be_bytes(n) as usize
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).unwrap();
        (header[0] & 0x0f, payload)
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
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut buf)
            .expect("an answer within the wait bound");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length || n == 0 {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body[..length.min(body.len())].to_owned());
            }
        }
        assert!(n > 0, "the connection closed mid-answer");
    }
}
