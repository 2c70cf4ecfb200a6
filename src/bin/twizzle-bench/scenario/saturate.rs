//! `saturate`: the fanout load with the rate limit lifted and the senders
//! sending flat out, optionally no further ahead of their viewers than
//! `--window` events.

use super::relay::Load;
use crate::cli::Options;
use crate::load::Pace;

/// What a saturate run puts on the server, from the options and their defaults.
pub(super) fn load(o: &Options) -> Load {
    Load {
        streams: o.streams.unwrap_or(1),
        per_stream: o.viewers.unwrap_or(200),
        secs: o.secs.unwrap_or(5.0),
        pace: Pace::Flood { window: o.window },
    }
}

/// One line saying what the run does.
pub(super) fn describe(o: &Options) -> String {
    let load = load(o);
    format!(
        "saturate: {} stream(s) x 1 sender (flat out{}, rate limit lifted) x {} viewers for {} s",
        load.streams,
        match o.window {
            0 => String::new(),
            n => format!(", at most {n} events ahead"),
        },
        load.per_stream,
        load.secs
    )
}

/// The server's environment for the run: a rate limit no sender reaches.
pub(super) fn env() -> Vec<(String, String)> {
    vec![
        ("TWIZZLE_SENDER_EVENTS_PER_SEC".into(), "1000000000".into()),
        ("TWIZZLE_SENDER_EVENT_BURST".into(), "1000000000".into()),
    ]
}
