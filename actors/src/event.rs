//! Checks a sender's frame and turns it into an event to relay.
//!
//! The check runs on the sender's session, so a stream actor only ever sees
//! well-formed events. Each event is encoded once, compactly and on one line,
//! and that text is what every viewer receives and what the recording keeps.

use bytestring::ByteString;
use serde::Serialize;
use serde_json::{Map, Value};

/// Which of the three events a frame carries, with what the stream needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A move; the latest one is replayed to new viewers.
    Move,
    /// An orientation; the latest one is replayed to new viewers.
    Orientation,
    /// A reset; its flag drives the reset loop guard.
    Reset {
        /// `data.trackingOrientation` of the reset.
        tracking_orientation: bool,
    },
}

/// A checked event, ready to relay.
#[derive(Debug, Clone)]
pub struct Event {
    /// The kind of event.
    pub kind: EventKind,
    /// `{"event": …, "data": …}` encoded once; viewers share these bytes.
    pub text: ByteString,
}

/// Why a frame was refused: the message of the error frame the sender gets.
pub type Refusal = String;

/// The error frame a sender gets for a refused frame:
/// `{"event":"error","data":{"message":…}}`.
pub fn error_frame(message: &str) -> ByteString {
    let frame = serde_json::json!({"event": "error", "data": {"message": message}});
    ByteString::from(frame.to_string())
}

/// Parses and checks one text frame from a sender.
pub fn parse_event(frame: &str) -> Result<Event, Refusal> {
    check_message(parse_object(frame)?)
}

/// The frame a socket gets for an accepted event: its text with the
/// event's offset added as a last top-level field,
/// `{"event":…,"data":…,"offset":42}`. One copy per event, shared by
/// every socket.
pub fn with_offset(text: &str, offset: u64) -> ByteString {
    let body = text.strip_suffix('}').unwrap_or(text);
    let mut frame = String::with_capacity(text.len() + 32);
    frame.push_str(body);
    frame.push_str(",\"offset\":");
    frame.push_str(&offset.to_string());
    frame.push('}');
    ByteString::from(frame)
}

/// One line of a recording for an accepted event, newline included:
/// `{"offset":42,"receivedAt":1764547200000,"event":…,"data":…}`, which is
/// also the line `GET /v0/streams/{id}/recording` answers with.
pub fn recorded_line(text: &str, offset: u64, received_ms: u64) -> String {
    let body = text.strip_prefix('{').unwrap_or(text);
    format!("{{\"offset\":{offset},\"receivedAt\":{received_ms},{body}\n")
}

/// A recording's line read back.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// Its offset; `None` in a line recorded before offsets existed, whose
    /// offset is its position in the recording.
    pub offset: Option<u64>,
    /// When it was received, in ms since the Unix epoch; `None` in a line
    /// recorded before that was kept.
    pub received_ms: Option<u64>,
    /// The event, encoded as a sender's is.
    pub event: Event,
}

/// Parses one recording line, either kind: with `offset` and `receivedAt`,
/// or (recorded before offsets existed) a bare `{"event":…,"data":…}`.
pub fn parse_recorded(line: &str) -> Result<RecordedEvent, Refusal> {
    let mut message = parse_object(line)?;
    let number = |value: Option<Value>| value.and_then(|v| v.as_u64());
    let offset = number(message.remove("offset"));
    let received_ms = number(message.remove("receivedAt"));
    Ok(RecordedEvent {
        offset,
        received_ms,
        event: check_message(message)?,
    })
}

fn parse_object(frame: &str) -> Result<Map<String, Value>, Refusal> {
    let value: Value =
        serde_json::from_str(frame).map_err(|e| format!("frame is not valid JSON: {e}"))?;
    let Value::Object(message) = value else {
        return Err(r#"expected a JSON object {"event": ..., "data": ...}"#.to_owned());
    };
    Ok(message)
}

fn check_message(mut message: Map<String, Value>) -> Result<Event, Refusal> {
    let name = match message.get("event") {
        Some(Value::String(name)) => name.clone(),
        Some(other) => {
            return Err(format!(
                r#"unknown event {other}: expected "move", "orientation" or "reset""#
            ))
        }
        None => {
            return Err(
                r#"the "event" field is missing: expected "move", "orientation" or "reset""#
                    .to_owned(),
            )
        }
    };
    let data = match message.remove("data") {
        Some(Value::Object(data)) => data,
        _ => {
            return match name.as_str() {
                "move" | "orientation" | "reset" => {
                    Err(format!(r#"{name}: "data" must be an object"#))
                }
                _ => Err(unknown_event(&name)),
            }
        }
    };
    let kind = match name.as_str() {
        "move" => check_move(&data)?,
        "orientation" => check_orientation(&data)?,
        "reset" => check_reset(&data)?,
        _ => return Err(unknown_event(&name)),
    };
    let text = serde_json::to_string(&Encoded {
        event: &name,
        data: &data,
    })
    .map_err(|e| format!("event cannot be encoded: {e}"))?;
    Ok(Event {
        kind,
        text: ByteString::from(text),
    })
}

/// The shape every relayed event is encoded in.
#[derive(Serialize)]
struct Encoded<'a> {
    event: &'a str,
    data: &'a Map<String, Value>,
}

fn unknown_event(name: &str) -> Refusal {
    let shown = serde_json::to_string(name).unwrap_or_default();
    format!(r#"unknown event {shown}: expected "move", "orientation" or "reset""#)
}

fn is_number(value: Option<&Value>) -> bool {
    value.is_some_and(Value::is_number)
}

fn check_move(data: &Map<String, Value>) -> Result<EventKind, Refusal> {
    if !data.contains_key("latestMove") {
        return Err("move: data.latestMove is missing".to_owned());
    }
    if !is_number(data.get("timeStamp")) {
        return Err("move: data.timeStamp must be a number".to_owned());
    }
    match data.get("binaryState") {
        Some(Value::String(_)) => {}
        Some(_) => return Err("move: data.binaryState must be a string".to_owned()),
        None if data.contains_key("state") => {}
        None => {
            return Err("move: data.binaryState must be a string (or send data.state)".to_owned())
        }
    }
    Ok(EventKind::Move)
}

fn check_orientation(data: &Map<String, Value>) -> Result<EventKind, Refusal> {
    let quaternion_ok = match data.get("quaternion") {
        Some(Value::Object(q)) => ["x", "y", "z", "w"]
            .iter()
            .all(|axis| is_number(q.get(*axis))),
        _ => false,
    };
    if !quaternion_ok {
        return Err(
            r#"orientation: data.quaternion must be {"x", "y", "z", "w"} numbers"#.to_owned(),
        );
    }
    if !is_number(data.get("timeStamp")) {
        return Err("orientation: data.timeStamp must be a number".to_owned());
    }
    Ok(EventKind::Orientation)
}

fn check_reset(data: &Map<String, Value>) -> Result<EventKind, Refusal> {
    match data.get("trackingOrientation") {
        Some(Value::Bool(tracking_orientation)) => Ok(EventKind::Reset {
            tracking_orientation: *tracking_orientation,
        }),
        _ => Err("reset: data.trackingOrientation must be a boolean".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(frame: &str) -> String {
        parse_event(frame).expect_err(frame)
    }

    #[test]
    fn accepts_the_three_events_and_encodes_them_on_one_line() {
        let mv = parse_event("{\n \"event\": \"move\", \"data\": {\"latestMove\": {\"family\": \"R\", \"amount\": 1}, \"timeStamp\": 12.5, \"binaryState\": \"AAB\"}}").unwrap();
        assert_eq!(mv.kind, EventKind::Move);
        assert!(!mv.text.contains('\n'));
        let back: Value = serde_json::from_str(&mv.text).unwrap();
        assert_eq!(back["data"]["latestMove"]["family"], "R");
        assert_eq!(back["event"], "move");

        let old = parse_event(
            r#"{"event":"move","data":{"latestMove":"R","timeStamp":1,"state":{"a":1}}}"#,
        )
        .unwrap();
        assert_eq!(old.kind, EventKind::Move);

        let o = parse_event(r#"{"event":"orientation","data":{"quaternion":{"x":0,"y":0.5,"z":0,"w":1},"timeStamp":3}}"#).unwrap();
        assert_eq!(o.kind, EventKind::Orientation);

        let r = parse_event(r#"{"event":"reset","data":{"trackingOrientation":true}}"#).unwrap();
        assert_eq!(
            r.kind,
            EventKind::Reset {
                tracking_orientation: true
            }
        );
    }

    #[test]
    fn drops_fields_beside_event_and_data() {
        let r =
            parse_event(r#"{"event":"reset","data":{"trackingOrientation":false},"junk":[1,2,3]}"#)
                .unwrap();
        assert_eq!(
            &*r.text,
            r#"{"event":"reset","data":{"trackingOrientation":false}}"#
        );
    }

    #[test]
    fn an_offset_goes_last_in_the_frame_and_first_in_the_recording() {
        let r = parse_event(r#"{"event":"reset","data":{"trackingOrientation":true}}"#).unwrap();
        let frame = with_offset(&r.text, 42);
        assert_eq!(
            &*frame,
            r#"{"event":"reset","data":{"trackingOrientation":true},"offset":42}"#
        );
        let line = recorded_line(&r.text, 42, 1_764_547_200_000);
        assert_eq!(
            line,
            "{\"offset\":42,\"receivedAt\":1764547200000,\"event\":\"reset\",\"data\":{\"trackingOrientation\":true}}\n"
        );
        let back = parse_recorded(line.trim_end()).unwrap();
        assert_eq!(
            (back.offset, back.received_ms),
            (Some(42), Some(1_764_547_200_000))
        );
        assert_eq!(back.event.text, r.text);
        let old = parse_recorded(&r.text).unwrap();
        assert_eq!((old.offset, old.received_ms), (None, None));
        assert_eq!(old.event.text, r.text);
        assert!(parse_recorded(r#"{"offset":1,"event":"chat","data":{}}"#).is_err());
    }

    #[test]
    fn refuses_what_is_not_an_event() {
        assert!(refusal("{").starts_with("frame is not valid JSON"));
        assert!(refusal("[1]").starts_with("expected a JSON object"));
        assert!(refusal(r#"{"data":{}}"#).contains("missing"));
        assert!(refusal(r#"{"event":"chat","data":{}}"#).starts_with("unknown event \"chat\""));
        assert!(refusal(r#"{"event":7,"data":{}}"#).starts_with("unknown event 7"));
        assert!(refusal(r#"{"event":"move","data":[]}"#).contains("must be an object"));
        assert!(refusal(r#"{"event":"move"}"#).contains("must be an object"));
    }

    #[test]
    fn refuses_events_of_the_wrong_shape() {
        assert!(
            refusal(r#"{"event":"move","data":{"timeStamp":1,"binaryState":""}}"#)
                .contains("latestMove")
        );
        assert!(refusal(
            r#"{"event":"move","data":{"latestMove":1,"timeStamp":"1","binaryState":""}}"#
        )
        .contains("timeStamp"));
        assert!(
            refusal(r#"{"event":"move","data":{"latestMove":1,"timeStamp":1}}"#)
                .contains("binaryState")
        );
        assert!(refusal(
            r#"{"event":"move","data":{"latestMove":1,"timeStamp":1,"binaryState":5}}"#
        )
        .contains("binaryState"));
        assert!(refusal(
            r#"{"event":"orientation","data":{"quaternion":{"x":0,"y":0,"z":0},"timeStamp":1}}"#
        )
        .contains("quaternion"));
        assert!(refusal(r#"{"event":"orientation","data":{"quaternion":{"x":0,"y":0,"z":0,"w":"1"},"timeStamp":1}}"#).contains("quaternion"));
        assert!(refusal(
            r#"{"event":"orientation","data":{"quaternion":{"x":0,"y":0,"z":0,"w":1}}}"#
        )
        .contains("timeStamp"));
        assert!(
            refusal(r#"{"event":"reset","data":{"trackingOrientation":"yes"}}"#)
                .contains("trackingOrientation")
        );
        assert!(refusal(r#"{"event":"reset","data":{}}"#).contains("trackingOrientation"));
    }

    /// A bounded fuzz run: arbitrary bytes, mutated events and random JSON
    /// never panic the parser, and whatever it accepts re-encodes to a
    /// well-formed event that parses again to the same kind and text.
    #[test]
    fn arbitrary_frames_are_answered_without_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7_7177e);
        let seeds = [
            r#"{"event":"move","data":{"latestMove":{"family":"R","amount":1},"timeStamp":1,"binaryState":"AA"}}"#,
            r#"{"event":"orientation","data":{"quaternion":{"x":0,"y":0,"z":0,"w":1},"timeStamp":2}}"#,
            r#"{"event":"reset","data":{"trackingOrientation":true}}"#,
        ];
        let alphabet: &[u8] = br#"{}[]":,.-+0123456789eE truefalsnmoveorientationresetdatalatestMovetimeStampbinaryStatequaternionxyzw\\"#;
        let mut accepted = 0;
        for round in 0..30_000 {
            let frame: String = match round % 3 {
                // Arbitrary characters.
                0 => (0..rng.random_range(0..64))
                    .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
                    .collect(),
                // A valid event with a few bytes changed, dropped or added.
                1 => {
                    let mut bytes = seeds[rng.random_range(0..seeds.len())].as_bytes().to_vec();
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..bytes.len());
                        match rng.random_range(0..3) {
                            0 => bytes[at] = alphabet[rng.random_range(0..alphabet.len())],
                            1 => {
                                bytes.remove(at);
                            }
                            _ => bytes.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                        }
                    }
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                // Random JSON with the right names in it.
                _ => random_json(&mut rng, 0).to_string(),
            };
            if let Ok(event) = parse_event(&frame) {
                accepted += 1;
                let again = parse_event(&event.text).expect("an accepted event re-parses");
                assert_eq!(again.kind, event.kind);
                assert_eq!(again.text, event.text);
                assert!(!event.text.contains('\n'));
            }
        }
        assert!(accepted > 0, "the fuzz run never produced a valid event");
    }

    fn random_json(rng: &mut impl rand::Rng, depth: u32) -> Value {
        let names = [
            "event",
            "data",
            "move",
            "orientation",
            "reset",
            "latestMove",
            "timeStamp",
            "binaryState",
            "state",
            "quaternion",
            "x",
            "y",
            "z",
            "w",
            "trackingOrientation",
        ];
        match rng.random_range(0..if depth > 3 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => serde_json::json!(rng.random_range(-1e6..1e6)),
            3 => Value::String(names[rng.random_range(0..names.len())].to_owned()),
            4 => Value::Array(
                (0..rng.random_range(0..3))
                    .map(|_| random_json(rng, depth + 1))
                    .collect(),
            ),
            _ => {
                let mut map = Map::new();
                if depth == 0 {
                    map.insert(
                        "event".to_owned(),
                        Value::String(
                            ["move", "orientation", "reset"][rng.random_range(0..3)].to_owned(),
                        ),
                    );
                }
                for _ in 0..rng.random_range(0..6) {
                    map.insert(
                        names[rng.random_range(0..names.len())].to_owned(),
                        random_json(rng, depth + 1),
                    );
                }
                Value::Object(map)
            }
        }
    }
}
