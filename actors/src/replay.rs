//! What a stream remembers for viewers who join late: the last reset, the
//! last orientation and the last move, and the reset loop guard.
//!
//! A plain value with no I/O: the stream actor asks it whether an event is
//! accepted and what to replay; the store keeps its [`Snapshot`] so that a
//! restored stream has it back without reading its recording.

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::event::{with_offset, Event, EventKind};

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
    /// Decides whether `kind` is accepted, without keeping the event: the
    /// reset loop guard drops a reset repeating the one before. Returns the
    /// offset of an accepted event (one more than the last).
    pub fn admit(&mut self, kind: EventKind) -> Option<u64> {
        if let EventKind::Reset {
            tracking_orientation,
        } = kind
        {
            if self.guard == Some(tracking_orientation) {
                return None;
            }
        }
        self.note(kind, self.accepted + 1);
        Some(self.accepted)
    }

    /// Keeps `frame`, the accepted event of `kind` at `offset`, as the
    /// latest of its kind, the guard moving on as [`Replay::admit`] would.
    pub fn remember(&mut self, kind: EventKind, offset: u64, frame: ByteString) {
        self.note(kind, offset);
        let slot = match kind {
            EventKind::Reset { .. } => &mut self.reset,
            EventKind::Orientation => &mut self.orientation,
            EventKind::Move => &mut self.last_move,
        };
        *slot = Some(frame);
    }

    /// [`Replay::admit`] then [`Replay::remember`] with the event's frame:
    /// returns the frame of an accepted event.
    pub fn accept(&mut self, event: &Event) -> Option<ByteString> {
        let offset = self.admit(event.kind)?;
        let frame = with_offset(&event.text, offset);
        self.remember(event.kind, offset, frame.clone());
        Some(frame)
    }

    /// Moves the offsets on to `accepted` if they are behind it, so that
    /// the next event gets `accepted + 1`.
    pub fn skip_to(&mut self, accepted: u64) {
        self.accepted = self.accepted.max(accepted);
    }

    fn note(&mut self, kind: EventKind, offset: u64) {
        self.guard = match kind {
            EventKind::Reset {
                tracking_orientation,
            } => Some(tracking_orientation),
            EventKind::Orientation | EventKind::Move => None,
        };
        self.accepted = self.accepted.max(offset);
    }

    /// What a new viewer gets before live events: the last reset, then the
    /// last orientation, then the last move, each if there is one.
    pub fn frames(&self) -> impl Iterator<Item = &ByteString> {
        [&self.reset, &self.orientation, &self.last_move]
            .into_iter()
            .flatten()
    }

    /// The replay's frames of events after offset `after` up to `until`,
    /// in replay order.
    pub fn frames_between(&self, after: u64, until: u64) -> impl Iterator<Item = &ByteString> {
        self.frames().filter(move |frame| {
            offset_of(frame).is_some_and(|offset| offset > after && offset <= until)
        })
    }

    /// Events accepted since the stream was created: the offset of the
    /// last one.
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

/// The offset at the end of a frame made by [`with_offset`].
fn offset_of(frame: &str) -> Option<u64> {
    let digits = frame.strip_suffix('}')?.rsplit_once(":")?.1;
    digits.parse().ok()
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

    /// The frame of `event` at `offset`, as the replay keeps it.
    fn at(event: Event, offset: u64) -> ByteString {
        with_offset(&event.text, offset)
    }

    #[test]
    fn replays_the_last_reset_orientation_and_move_in_that_order() {
        let mut replay = Replay::default();
        for event in [mv(1), orientation(1), mv(2), reset(true), orientation(2)] {
            assert!(replay.accept(&event).is_some());
        }
        assert_eq!(
            frames(&replay),
            [at(reset(true), 4), at(orientation(2), 5), at(mv(2), 3)]
        );
        assert_eq!(replay.accepted(), 5);
    }

    #[test]
    fn a_reset_repeating_the_one_before_is_dropped_and_gets_no_offset() {
        let mut replay = Replay::default();
        assert_eq!(replay.accept(&reset(true)), Some(at(reset(true), 1)));
        assert!(replay.accept(&reset(true)).is_none(), "the loop's repeat");
        assert!(replay.accept(&reset(false)).is_some(), "a different flag");
        assert!(replay.accept(&reset(false)).is_none());
        assert_eq!(replay.accept(&mv(1)), Some(at(mv(1), 3)));
        assert!(
            replay.accept(&reset(false)).is_some(),
            "not right after a reset"
        );
        assert_eq!(replay.accepted(), 4);
        assert_eq!(frames(&replay), [at(reset(false), 4), at(mv(1), 3)]);
    }

    /// The stream decides with `admit` when an event arrives and keeps it
    /// with `remember` once it is recorded: both agree with `accept`.
    #[test]
    fn admitting_then_remembering_is_accepting() {
        let events = [reset(true), reset(true), mv(1), reset(false), reset(false)];
        let mut whole = Replay::default();
        let mut head = Replay::default();
        let mut kept = Replay::default();
        for event in events {
            let frame = whole.accept(&event);
            let offset = head.admit(event.kind);
            assert_eq!(offset.map(|o| at(event.clone(), o)), frame);
            if let Some(offset) = offset {
                kept.remember(event.kind, offset, at(event, offset));
            }
        }
        assert_eq!(kept, whole);
        assert_eq!(head.accepted(), 3);
        assert!(head.admit(reset(false).kind).is_none());
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
        assert!(back.accept(&reset(true)).is_none(), "the guard survives");
        assert_eq!(
            Replay::from_snapshot(serde_json::from_str("{}").unwrap()),
            Replay::default()
        );
    }
}
