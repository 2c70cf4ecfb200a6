//! Plays planned solves onto the sender's socket in real time: each turn as
//! a move event with the cube's state after it, the hands' orientation 25
//! times a second while the cube is held, and a reset before each solve.
//! It answers the server's pings and reports its error frames meanwhile.

use std::future::Future;
use std::pin::{pin, Pin};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use awc::ws::{CloseCode, CloseReason, Frame, Message};
use futures_util::future::{select, Either};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use twizzle_api_server::testkit::cube::Cube;

use crate::api::{DemoError, Socket};
use crate::cli::Options;
use crate::hands::Hands;
use crate::script::{plan, Action, Solve};

/// How often the orientation is sent while the cube is held: 25 times a
/// second, as a smart cube with a gyroscope reports it. Real time, whatever
/// `--speed`, so that a fast run still stays within the server's rate limit.
const ORIENTATION_INTERVAL: Duration = Duration::from_millis(40);
/// Seconds before the first solve, at a human pace: time to open the watch page.
const LEAD_IN: f64 = 3.0;
/// How long a clean stop waits for the server to answer its close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How a run of solves ended, when it ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every solve asked for was streamed.
    Finished(u64),
    /// A signal stopped it (its name), after this many whole solves.
    Stopped(&'static str, u64),
}

/// What a wait ended with.
enum Waited {
    /// The time waited for came.
    Due,
    /// A stop signal came first.
    Stopped(&'static str),
}

/// Milliseconds since the epoch, as a whole number: the `timeStamp` of an event.
fn time_stamp() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn send(socket: &mut Socket, event: Value) -> Result<(), DemoError> {
    socket
        .send(Message::Text(event.to_string().into()))
        .await
        .map_err(|e| DemoError::Dropped(e.to_string()))
}

/// Waits until `deadline`, answering pings and reporting the server's
/// error frames; a close from the server, or the connection's end, is an
/// error. A stop signal ends the wait early.
async fn wait_until<S: Future<Output = &'static str>>(
    socket: &mut Socket,
    deadline: Instant,
    mut stop: Pin<&mut S>,
) -> Result<Waited, DemoError> {
    loop {
        let frame = {
            let timer = pin!(actix_web::rt::time::sleep_until(deadline.into()));
            let next = socket.next();
            match select(select(next, timer), stop.as_mut()).await {
                Either::Right((name, _)) => return Ok(Waited::Stopped(name)),
                Either::Left((Either::Right(_), _)) => return Ok(Waited::Due),
                Either::Left((Either::Left((frame, _)), _)) => frame,
            }
        };
        match frame {
            Some(Ok(Frame::Text(text))) => report(&text),
            Some(Ok(Frame::Ping(payload))) => {
                socket
                    .send(Message::Pong(payload))
                    .await
                    .map_err(|e| DemoError::Dropped(e.to_string()))?;
            }
            Some(Ok(Frame::Close(reason))) => {
                // 1001: the server is restarting, and the stream with it.
                let restarting = reason.as_ref().is_some_and(|r| u16::from(r.code) == 1001);
                let why = match reason {
                    Some(CloseReason { code, description }) => format!(
                        "the server closed it with {} {}",
                        u16::from(code),
                        description.unwrap_or_default()
                    ),
                    None => "the server closed it".to_owned(),
                };
                return Err(if restarting {
                    DemoError::Dropped(why)
                } else {
                    DemoError::SocketClosed(why)
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(DemoError::Dropped(e.to_string())),
            None => return Err(DemoError::Dropped("the connection was lost".to_owned())),
        }
    }
}

/// Reports a frame the server sent the sender: an error frame (an event it
/// refused, e.g. over the rate limit) or anything else it did not expect.
fn report(text: &[u8]) {
    let value: Option<Value> = serde_json::from_slice(text).ok();
    match value.as_ref().and_then(|v| v["data"]["message"].as_str()) {
        Some(message) if value.as_ref().is_some_and(|v| v["event"] == "error") => {
            eprintln!("twizzle-demo: the server refused an event: {message}");
        }
        _ => eprintln!(
            "twizzle-demo: the server sent {}",
            String::from_utf8_lossy(text)
        ),
    }
}

/// Sends a close frame and waits a little for the server's answer.
pub async fn close(socket: &mut Socket) {
    let reason = CloseReason {
        code: CloseCode::Normal,
        description: Some("demo stopped".to_owned()),
    };
    if socket.send(Message::Close(Some(reason))).await.is_err() {
        return;
    }
    let answered = async {
        while let Some(Ok(frame)) = socket.next().await {
            if matches!(frame, Frame::Close(_)) {
                break;
            }
        }
    };
    let _ = actix_web::rt::time::timeout(CLOSE_WAIT, answered).await;
}

/// Streams solves until `options.solves` are done or `stop` fires.
pub async fn solves<S: Future<Output = &'static str>>(
    socket: &mut Socket,
    options: &Options,
    rng: &mut impl Rng,
    done: &mut u64,
    mut stop: Pin<&mut S>,
) -> Result<Outcome, DemoError> {
    let lead_in = Instant::now() + Duration::from_secs_f64(LEAD_IN / options.speed);
    if let Waited::Stopped(name) = wait_until(socket, lead_in, stop.as_mut()).await? {
        return Ok(Outcome::Stopped(name, *done));
    }
    loop {
        let solve = plan(rng);
        let hands = Hands::new(rng, solve.inspection);
        if let Waited::Stopped(name) =
            play(socket, &solve, &hands, options, *done + 1, stop.as_mut()).await?
        {
            return Ok(Outcome::Stopped(name, *done));
        }
        *done += 1;
        if options.solves == Some(*done) {
            return Ok(Outcome::Finished(*done));
        }
    }
}

/// Plays one solve, from its reset to the end of the rest after it.
async fn play<S: Future<Output = &'static str>>(
    socket: &mut Socket,
    solve: &Solve,
    hands: &Hands,
    options: &Options,
    number: u64,
    mut stop: Pin<&mut S>,
) -> Result<Waited, DemoError> {
    let start = Instant::now();
    let real = |at: f64| start + Duration::from_secs_f64(at / options.speed);
    let mut cube = Cube::solved();
    let mut next = 0;
    let mut next_orientation = start;
    loop {
        let now = Instant::now();
        while let Some(timed) = solve
            .timeline
            .get(next)
            .filter(|timed| real(timed.at) <= now)
        {
            match &timed.action {
                Action::Reset => {
                    cube = Cube::solved();
                    send(
                        socket,
                        json!({"event": "reset", "data": {"trackingOrientation": true}}),
                    )
                    .await?;
                }
                Action::Turn(m) => {
                    cube.apply(*m);
                    let data = json!({
                        "latestMove": m.to_json(),
                        "timeStamp": time_stamp(),
                        "binaryState": cube.binary_state(),
                    });
                    send(socket, json!({"event": "move", "data": data})).await?;
                }
                Action::Say(line) => println!("solve {number}: {line}"),
            }
            next += 1;
        }
        let t = now.duration_since(start).as_secs_f64() * options.speed;
        let held = t <= solve.held_until;
        if held && next_orientation <= now {
            let q = hands.at(t).rounded();
            let data = json!({
                "quaternion": {"x": q.x, "y": q.y, "z": q.z, "w": q.w},
                "timeStamp": time_stamp(),
            });
            send(socket, json!({"event": "orientation", "data": data})).await?;
            // No catching up in a burst after a stall: the next one is due
            // an interval from now at the earliest.
            next_orientation =
                (next_orientation + ORIENTATION_INTERVAL).max(now + ORIENTATION_INTERVAL / 2);
        }
        if next == solve.timeline.len() && t >= solve.ends_at {
            return Ok(Waited::Due);
        }
        let mut due = real(solve.ends_at);
        if let Some(timed) = solve.timeline.get(next) {
            due = due.min(real(timed.at));
        }
        if held {
            due = due.min(next_orientation);
        }
        if let Waited::Stopped(name) = wait_until(socket, due, stop.as_mut()).await? {
            return Ok(Waited::Stopped(name));
        }
    }
}
