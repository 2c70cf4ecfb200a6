//! `fanout`: streams with one paced sender and many viewers each.

use super::relay::Load;
use crate::cli::Options;
use crate::load::Pace;

/// What a fanout run puts on the server, from the options and their defaults.
pub(super) fn load(o: &Options) -> Load {
    Load {
        streams: o.streams.unwrap_or(1),
        per_stream: o.viewers.unwrap_or(500),
        secs: o.secs.unwrap_or(10.0),
        pace: Pace::Rate(o.rate),
    }
}

/// One line saying what the run does.
pub(super) fn describe(o: &Options) -> String {
    let load = load(o);
    format!(
        "fanout: {} stream(s) x 1 sender x {} viewers, {} events/s per sender for {} s",
        load.streams, load.per_stream, o.rate, load.secs
    )
}

/// The server's environment for the run: above 100 events a second, room in
/// the sender rate limit.
pub(super) fn env(o: &Options) -> Vec<(String, String)> {
    if o.rate <= 100.0 {
        return Vec::new();
    }
    // Headroom above the default limit of 200/s so pacing jitter is not refused.
    vec![
        (
            "TWIZZLE_SENDER_EVENTS_PER_SEC".into(),
            format!("{}", (o.rate * 2.0).ceil()),
        ),
        (
            "TWIZZLE_SENDER_EVENT_BURST".into(),
            format!("{}", (o.rate * 4.0).ceil()),
        ),
    ]
}
