//! The events a test sends, as the client app sends them.

use serde_json::{json, Value};

/// A move event as the client sends it.
pub fn move_event(n: u64) -> Value {
    json!({"event": "move", "data": {"latestMove": {"family": "R", "amount": 1, "n": n}, "timeStamp": n, "binaryState": format!("state-{n}")}})
}

/// An orientation event as the client sends it.
pub fn orientation_event(w: f64) -> Value {
    json!({"event": "orientation", "data": {"quaternion": {"x": 0.0, "y": 0.0, "z": 0.0, "w": w}, "timeStamp": 1}})
}

/// A reset event as the client sends it.
pub fn reset_event(tracking: bool) -> Value {
    json!({"event": "reset", "data": {"trackingOrientation": tracking}})
}

/// An event as its sender sent it: a frame or recording line without the
/// `offset` and `receivedAt` the server adds.
pub fn sent_part(frame: &Value) -> Value {
    let mut event = frame.clone();
    if let Some(fields) = event.as_object_mut() {
        fields.remove("offset");
        fields.remove("receivedAt");
    }
    event
}

/// Every line of the recording at `path`, parsed.
pub fn recording_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    json_lines(&text)
}

/// Each line of `text`, which must be whole JSON lines, parsed.
pub fn json_lines(text: &str) -> Vec<Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "whole lines: {text:?}"
    );
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

/// A `StreamInfo`, or an array of them, without the fields that change
/// with time and traffic (`viewers`, `live`, `createdAt`), each checked
/// for its type first.
pub fn without_counts(info: &Value) -> Value {
    if let Value::Array(infos) = info {
        return Value::Array(infos.iter().map(without_counts).collect());
    }
    let mut info = info.clone();
    let fields = info.as_object_mut().expect("a StreamInfo object");
    let viewers = fields.remove("viewers");
    let live = fields.remove("live");
    let created = fields.remove("createdAt");
    assert!(
        viewers.as_ref().is_some_and(Value::is_u64),
        "viewers: {viewers:?}"
    );
    assert!(
        live.as_ref().is_some_and(Value::is_boolean),
        "live: {live:?}"
    );
    assert!(
        created.as_ref().is_some_and(Value::is_u64),
        "createdAt: {created:?}"
    );
    info
}
