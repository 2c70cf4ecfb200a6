//! What a stream remembers for viewers who join late: the last reset, the
//! last orientation and the last move, and the reset loop guard.
//!
//! A plain value with no I/O: the stream actor asks it whether an event is
//! accepted and what to replay; the store keeps its [`Snapshot`] so that a
//! restored stream has it back without reading its recording.

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind};

/// The latest state of a stream, as new viewers get it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Last accepted reset, replayed first.
    reset: Option<ByteString>,
    /// Last accepted orientation, replayed second.
    orientation: Option<ByteString>,
    /// Last accepted move, replayed third.
    last_move: Option<ByteString>,
    /// `trackingOrientation` of the last accepted event, if that was a
    /// reset: a reset repeating it is the client looping, and is dropped.
    guard: Option<bool>,
    /// Events accepted since the stream was created.
    accepted: u64,
}

/// A [`Replay`] as the store keeps it: small, whatever the stream's length.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last reset's frame text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
    /// The last orientation's frame text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<String>,
    /// The last move's frame text.
    #[serde(default, rename = "move", skip_serializing_if = "Option::is_none")]
    pub last_move: Option<String>,
    /// The reset loop guard: the flag of the last event if it was a reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<bool>,
    /// Events accepted since the stream was created.
    #[serde(default)]
    pub accepted: u64,
}

impl Replay {
    /// Takes `event` as the latest of its kind, unless the reset loop guard
    /// drops it; returns whether it was accepted (to relay and record).
    pub fn accept(&mut self, event: &Event) -> bool {
        let slot = match event.kind {
            EventKind::Reset {
                tracking_orientation,
            } => {
                if self.guard == Some(tracking_orientation) {
                    return false;
                }
                self.guard = Some(tracking_orientation);
                &mut self.reset
            }
            EventKind::Orientation => {
                self.guard = None;
                &mut self.orientation
            }
            EventKind::Move => {
                self.guard = None;
                &mut self.last_move
            }
        };
        *slot = Some(event.text.clone());
        self.accepted += 1;
        true
    }

    /// What a new viewer gets before live events: the last reset, then the
    /// last orientation, then the last move, each if there is one.
    pub fn frames(&self) -> impl Iterator<Item = &ByteString> {
        [&self.reset, &self.orientation, &self.last_move]
            .into_iter()
            .flatten()
    }

    /// Events accepted since the stream was created.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// The value to keep.
    pub fn snapshot(&self) -> Snapshot {
        let text = |slot: &Option<ByteString>| slot.as_ref().map(|t| t.to_string());
        Snapshot {
            reset: text(&self.reset),
            orientation: text(&self.orientation),
            last_move: text(&self.last_move),
            guard: self.guard,
            accepted: self.accepted,
        }
    }

    /// The replay a snapshot was taken of.
    pub fn from_snapshot(snapshot: Snapshot) -> Replay {
        Replay {
            reset: snapshot.reset.map(ByteString::from),
            orientation: snapshot.orientation.map(ByteString::from),
            last_move: snapshot.last_move.map(ByteString::from),
            guard: snapshot.guard,
            accepted: snapshot.accepted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_event;

    fn ev(frame: &str) -> Event {
        parse_event(frame).unwrap()
    }

    fn mv(n: u32) -> Event {
        ev(&format!(
            r#"{{"event":"move","data":{{"latestMove":"R","timeStamp":{n},"binaryState":"s"}}}}"#
        ))
    }

    fn orientation(n: u32) -> Event {
        ev(&format!(
            r#"{{"event":"orientation","data":{{"quaternion":{{"x":0,"y":0,"z":0,"w":1}},"timeStamp":{n}}}}}"#
        ))
    }

    fn reset(tracking: bool) -> Event {
        ev(&format!(
            r#"{{"event":"reset","data":{{"trackingOrientation":{tracking}}}}}"#
        ))
    }

    fn frames(replay: &Replay) -> Vec<ByteString> {
        replay.frames().cloned().collect()
    }

    #[test]
    fn an_empty_stream_replays_nothing() {
        assert!(frames(&Replay::default()).is_empty());
    }

    #[test]
    fn replays_the_last_reset_orientation_and_move_in_that_order() {
        let mut replay = Replay::default();
        for event in [mv(1), orientation(1), mv(2), reset(true), orientation(2)] {
            assert!(replay.accept(&event));
        }
        assert_eq!(
            frames(&replay),
            [reset(true).text, orientation(2).text, mv(2).text]
        );
        assert_eq!(replay.accepted(), 5);
    }

    #[test]
    fn a_reset_repeating_the_one_before_is_dropped() {
        let mut replay = Replay::default();
        assert!(replay.accept(&reset(true)));
        assert!(!replay.accept(&reset(true)), "the loop's repeat");
        assert!(replay.accept(&reset(false)), "a different flag");
        assert!(!replay.accept(&reset(false)));
        assert!(replay.accept(&mv(1)));
        assert!(replay.accept(&reset(false)), "not right after a reset");
        assert_eq!(replay.accepted(), 4);
        assert_eq!(frames(&replay), [reset(false).text, mv(1).text]);
    }

    #[test]
    fn a_snapshot_brings_back_the_replay_and_the_guard() {
        let mut replay = Replay::default();
        for event in [orientation(1), mv(1), reset(true)] {
            replay.accept(&event);
        }
        let kept = serde_json::to_string(&replay.snapshot()).unwrap();
        let mut back = Replay::from_snapshot(serde_json::from_str(&kept).unwrap());
        assert_eq!(back, replay);
        assert!(!back.accept(&reset(true)), "the guard survives");
        assert_eq!(
            Replay::from_snapshot(serde_json::from_str("{}").unwrap()),
            Replay::default()
        );
    }
}
