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
