//! Every way the server closes a WebSocket: the code and reason the client
//! sees, in one list (the WebSocket twin of the HTTP layer's error type).
//!
//! A client tells from these what to do next: `1000 stream ended` means the
//! stream is gone for good; `1001 server restarting` means come back in a
//! moment, to the same stream. So a socket refused while the server stops
//! must hear the second, never the first.

/// A close code and reason, as sent in the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Close {
    /// The WebSocket close code (RFC 6455 §7.4).
    pub code: u16,
    /// The close reason: short, for people reading logs and consoles.
    pub reason: &'static str,
}

impl Close {
    /// Its name in metrics: the reason in snake case.
    pub fn label(&self) -> &'static str {
        match self.reason {
            "stream ended" => "stream_ended",
            "server restarting" => "server_restarting",
            "no answer to pings" => "silent",
            "protocol error" => "protocol_error",
            "not permitted to send" => "not_permitted",
            "too many unsent events" => "too_slow",
            "frame too large" => "too_big",
            _ => "other",
        }
    }
}

const fn close(code: u16, reason: &'static str) -> Close {
    Close { code, reason }
}

/// The stream ended (its idle countdown ran out): it will not come back.
pub const STREAM_ENDED: Close = close(1000, "stream ended");

/// The server is stopping (a deploy or restart): the stream comes back.
pub const SERVER_RESTARTING: Close = close(1001, "server restarting");

/// The client answered no ping for three heartbeat intervals.
pub const SILENT: Close = close(1001, "no answer to pings");

/// A frame that breaks the WebSocket protocol; the log has the details.
pub const PROTOCOL_ERROR: Close = close(1002, "protocol error");

/// A viewer sent a data frame.
pub const NOT_PERMITTED: Close = close(1008, "not permitted to send");

/// The socket's queue of unsent events filled up: its client stopped reading.
pub const TOO_SLOW: Close = close(1008, "too many unsent events");

/// A frame over the size limit.
pub const TOO_BIG: Close = close(1009, "frame too large");

/// Every close the server sends, for tests and documentation.
pub const ALL: [Close; 7] = [
    STREAM_ENDED,
    SERVER_RESTARTING,
    SILENT,
    PROTOCOL_ERROR,
    NOT_PERMITTED,
    TOO_SLOW,
    TOO_BIG,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_is_told_apart_by_its_code_and_reason() {
        for (n, a) in ALL.iter().enumerate() {
            assert!((1000..=1011).contains(&a.code), "{a:?}");
            // A close reason must fit a control frame with its code.
            assert!(a.reason.len() <= 123, "{a:?}");
            assert_ne!(a.label(), "other", "{a:?} has a metrics label");
            for b in &ALL[n + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
