//! Every limit and every kind of bad input, each answered as SPEC says, and
//! each leaving an honest sender and viewer on the same server untouched.

use std::time::Duration;

use awc::ws::Message;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use twizzle_api_server::config::Settings;

use crate::helpers::*;

/// A viewer that stops reading is dropped once its queue of unsent events is
/// full, while the sender's other viewer gets every event, in order.
#[actix_web::test]
async fn a_client_that_stops_reading_is_dropped() {
    // Room for exactly the five sockets below: a sixth is admitted only
    // once the server has really let go of one.
    let app = spawn_app_with(|s| {
        s.limits.sender_events_per_sec = 1e9;
        s.limits.sender_event_burst = 1e9;
        s.limits.max_sockets = 5;
    })
    .await;
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = app.sender_with_stream(1, None, "Flow").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let port = app.port;
    let total = 20_000;
    // The reading viewer reads as fast as it can, on a thread of its own.
    let reader_id = id.clone();
    let mut reader =
        actix_web::rt::task::spawn_blocking(move || RawSocket::open(port, &reader_id, 1 << 20))
            .await
            .unwrap();
    let reading = std::thread::spawn(move || {
        let texts = reader.read_texts(total);
        for (k, text) in texts.iter().enumerate() {
            let frame: Value = serde_json::from_str(text).unwrap();
            assert_eq!(frame["offset"], k as u64 + 1, "offsets count events");
            assert_eq!(
                sent_part(&frame),
                move_event(k as u64),
                "the reading viewer lost or reordered an event"
            );
        }
        reader // kept open: its place must not be the one that frees up below
    });
    let stuck_id = id.clone();
    let mut stuck =
        actix_web::rt::task::spawn_blocking(move || RawSocket::open(port, &stuck_id, 128 * 1024))
            .await
            .unwrap();

    // 20,000 events of ~120 bytes (2.4 MB): far more than the stuck
    // socket's kernel buffers (some 400 KB both ends) and its queue hold.
    // At most 10,000 a second, a pace any reader that reads keeps up with,
    // even on a loaded machine.
    for n in 0..total as u64 {
        sender.send_json(&move_event(n)).await;
        if n % 100 == 99 {
            actix::clock::sleep(Duration::from_millis(10)).await; // pacing, not synchronisation
        }
    }
    let _reader = actix_web::rt::task::spawn_blocking(move || reading.join())
        .await
        .unwrap()
        .expect("the reading viewer got every event, in order, in time");
    honest.still_fine(20).await;
    // The server lets go of the stuck socket without the client reading a
    // byte: its session, which cannot run, is cut off from outside at once.
    // (Left alone, actix-http would give the connection up only after its
    // five-second keep-alive timeout; the bound here is well inside that.)
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while app.try_connect(&id, None).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stuck socket still holds its place: it was never cut off"
        );
        actix::clock::sleep(Duration::from_millis(20)).await; // polling the server's count
    }
    // The stuck client, reading at last, finds its connection cut: some
    // events, then the end, well before all were sent to it.
    let opcodes = actix_web::rt::task::spawn_blocking(move || {
        stuck.drain_until_closed(Duration::from_secs(2))
    })
    .await
    .unwrap();
    let texts = opcodes.iter().filter(|&&op| op == 1).count();
    assert!(
        texts < total,
        "the stuck client got all {texts} events: it was never dropped"
    );
    honest.still_fine(20).await;
}

/// The server pings; a client that never answers is closed after three
/// silent intervals, while one that answers stays.
#[actix_web::test]
async fn a_client_that_never_answers_pings_is_closed() {
    let app = spawn_app_with(|s| s.heartbeat = Duration::from_millis(200)).await;
    let (token, id) = app.sender_with_stream(2, None, "Beat").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    let port = app.port;
    let silent_id = id.clone();
    let silent = actix_web::rt::task::spawn_blocking(move || {
        let mut silent = RawSocket::open(port, &silent_id, 1 << 16);
        silent.drain_until_closed(Duration::from_secs(3))
    });
    // Meanwhile the honest pair keeps talking (and answering pings) for
    // longer than three intervals.
    for n in 0..30 {
        sender.send_json(&move_event(n)).await;
        assert_eq!(viewer.next_json().await, move_event(n));
        actix::clock::sleep(Duration::from_millis(40)).await; // pacing, not synchronisation
    }
    let opcodes = silent.await.unwrap();
    assert!(opcodes.contains(&0x9), "the server pinged: {opcodes:?}");
    assert_eq!(
        opcodes.last(),
        Some(&0x8),
        "closed with a close frame: {opcodes:?}"
    );
    sender.send_json(&move_event(99)).await;
    assert_eq!(viewer.next_json().await, move_event(99));

    // The server answers a client's ping.
    viewer
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await;
    loop {
        match viewer.next().await {
            Seen::Pong(payload) => {
                assert_eq!(payload, b"are you there");
                break;
            }
            Seen::Text(_) => continue,
            other => panic!("expected a pong, saw {other:?}"),
        }
    }
}

/// A 10 MB frame closes its socket with 1009; nothing else notices.
#[actix_web::test]
async fn a_ten_megabyte_frame_closes_only_its_socket() {
    let app = spawn_app().await;
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = app.sender_with_stream(3, None, "Huge").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut huge = move_event(1);
    huge["data"]["binaryState"] = Value::String("x".repeat(10 << 20));
    sender.send_json(&huge).await;
    let (code, reason) = sender.next_close().await;
    assert_eq!(code, 1009);
    assert!(!reason.is_empty());
    honest.still_fine(50).await;
}

/// A flood over the rate is answered with one `rate limit exceeded` error
/// frame per dropped event; what was accepted reaches the viewer in order.
#[actix_web::test]
async fn a_flood_is_cut_to_the_rate() {
    let app = spawn_app().await;
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = app.sender_with_stream(4, None, "Flood").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    let sent = 1500u64;
    for n in 0..sent {
        sender.send_json(&move_event(n)).await;
    }
    // The burst allowance (400) plus what 200/s refills meanwhile gets through.
    let mut dropped = 0u64;
    sender.send_json(&reset_event(true)).await; // may itself be dropped
    loop {
        match actix::clock::timeout(Duration::from_millis(500), sender.next()).await {
            Ok(Seen::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(frame["data"]["message"], "rate limit exceeded");
                dropped += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break, // quiet: every error frame has come
        }
    }
    assert!(dropped >= 500, "only {dropped} of {sent} were refused");
    let accepted = sent + 1 - dropped;
    let mut last = None;
    for _ in 0..accepted {
        let frame = viewer.next_json().await;
        if frame["event"] == "move" {
            let n = frame["data"]["timeStamp"].as_u64().unwrap();
            assert!(last.is_none_or(|l| n > l), "reordered");
            last = Some(n);
        }
    }
    honest.still_fine(50).await;
}

/// A thousand bogus tokens get a thousand 401s, and cost the honest stream nothing.
#[actix_web::test]
async fn a_thousand_bogus_tokens_are_refused() {
    let app = spawn_app().await;
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = app.sender_with_stream(5, None, "Real").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for n in 0..1000 {
        let bogus = format!("twizzle_access_token_{:032x}", rng.random::<u128>());
        if n % 2 == 0 {
            let answer = app
                .post(&format!("/v0/streams?twizzleAccessToken={bogus}"))
                .await;
            assert_eq!(answer.status, 401);
            assert_eq!(answer.body["error"], "invalid twizzle access token");
        } else {
            let answer = app
                .get(&format!(
                    "/v0/streams/{id}/socket?twizzleAccessToken={bogus}"
                ))
                .await;
            assert_eq!(answer.status, 401);
        }
        if n % 250 == 0 {
            honest.still_fine(5).await;
        }
    }
    honest.still_fine(50).await;
    app.connect(&id, Some(&token)).await;
}

/// Past the socket limit an upgrade is refused with 503 naming the limit; a
/// closed socket frees its place.
#[actix_web::test]
async fn sockets_past_the_limit_are_refused() {
    let app = spawn_app_with(|s| s.limits.max_sockets = 4).await;
    let mut honest = HonestPair::start(&app).await; // two sockets
    let (_, id) = app.sender_with_stream(6, None, "Full").await;
    let mut third = app.connect(&id, None).await;
    let _fourth = app.connect(&id, None).await;
    let port = app.port;
    let path = format!("/v0/streams/{id}/socket");
    let (status, body) = actix_web::rt::task::spawn_blocking(move || raw_upgrade(port, &path))
        .await
        .unwrap();
    assert_eq!(status, 503);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("at most 4"),
        "{body}"
    );
    honest.still_fine(20).await;

    third.send(Message::Close(None)).await;
    assert!(matches!(third.next().await, Seen::Close(_) | Seen::Ended));
    // The server learns of the close a moment later: try until admitted.
    let deadline = std::time::Instant::now() + WAIT;
    while app.try_connect(&id, None).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed socket's place was never freed"
        );
        actix::clock::sleep(Duration::from_millis(20)).await; // polling the server's count
    }
    honest.still_fine(20).await;
}

/// Random query strings on every endpoint: each gets a status, and every
/// error a JSON body; nothing panics or hangs, and the honest stream goes on.
#[actix_web::test]
async fn random_query_strings_always_get_an_answer() {
    let app = spawn_app().await;
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = app.sender_with_stream(7, None, "Fuzz").await;
    let endpoints = [
        ("GET", "/".to_owned()),
        ("GET", "/v0/infra/liveness_check".to_owned()),
        ("GET", "/v0/streams".to_owned()),
        ("POST", "/v0/streams".to_owned()),
        ("GET", format!("/v0/streams/{id}/socket")),
        ("GET", "/v0/auth/wca/oauth_callback".to_owned()),
        ("POST", "/v0/claim".to_owned()),
    ];
    let pieces = [
        "twizzleAccessToken",
        "claimToken",
        "code",
        "=",
        "&",
        "%00",
        "%ff",
        "%",
        "%2",
        "+",
        "%26",
        "%3D",
        ";",
        "[]",
        "a",
        "Z9",
        &token,
        "claim_token_",
        "twizzle_access_token_",
        "..",
        "/",
        "?",
        "%C3%A9",
        "%E2%82",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..700 {
        let (method, path) = &endpoints[round % endpoints.len()];
        let query: String = (0..rng.random_range(0..12))
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect();
        let url = app.url(&format!("{path}?{query}"));
        let request = match *method {
            "GET" => app.client.get(url),
            _ => app.client.post(url),
        };
        let mut res = match request.send().await {
            Ok(res) => res,
            Err(awc::error::SendRequestError::Url(_)) => continue, // the client refused to build it
            Err(e) => panic!("no answer for {method} {path}?{query}: {e}"),
        };
        let status = res.status().as_u16();
        let body = res.body().await.unwrap();
        if status >= 400 {
            let error: Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{status} without JSON for ?{query}"));
            assert!(error["error"].is_string(), "{status} for ?{query}: {error}");
        }
        assert!(status != 500, "500 for {method} {path}?{query}");
        if round % 100 == 0 {
            honest.still_fine(3).await;
        }
    }
    honest.still_fine(20).await;
}

/// No endpoint reads a request body: a 10 MB one is not buffered, the
/// request is answered, and the server goes on.
#[actix_web::test]
async fn a_huge_request_body_is_not_read() {
    let app = spawn_app().await;
    let mut honest = HonestPair::start(&app).await;
    let body = vec![b'x'; 10 << 20];
    match app
        .client
        .post(app.url("/v0/claim?claimToken=claim_token_0"))
        .send_body(body)
        .await
    {
        Ok(mut res) => {
            assert_eq!(res.status().as_u16(), 401);
            let error: Value = res.json().await.unwrap();
            assert!(error["error"].is_string());
        }
        // The server may answer and close before the client has written it all.
        Err(e) => assert!(
            matches!(
                e,
                awc::error::SendRequestError::Send(_) | awc::error::SendRequestError::Response(_)
            ),
            "{e}"
        ),
    }
    honest.still_fine(20).await;
    assert_eq!(app.get("/").await.status, 200);
}

/// A stream takes at most `max_sender_sockets_per_stream` sender sockets at
/// once: one more is refused with 429 naming the limit, viewers do not
/// count, and a sender socket that closes frees its slot.
async fn sender_sockets_per_stream_are_limited(nodes: Nodes) {
    let app = nodes
        .spawn(|s| s.limits.max_sender_sockets_per_stream = 3)
        .await;
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = app.sender_with_stream(7, None, "Many").await;
    let mut senders = Vec::new();
    for _ in 0..3 {
        senders.push(app.connect(&id, Some(&token)).await);
    }
    let mut viewers = Vec::new();
    for _ in 0..5 {
        viewers.push(app.connect(&id, None).await);
    }
    let path = format!("/v0/streams/{id}/socket?twizzleAccessToken={token}");
    let (status, body) = raw_upgrade(app.socket_port(), &path);
    assert_eq!(status, 429);
    let body: Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(
        body["error"],
        "too many sender sockets on this stream (at most 3)"
    );

    let mut leaving = senders.pop().expect("a sender");
    leaving.send(Message::Close(None)).await;
    drop(leaving);
    // The slot is freed once the server has let go of the socket.
    let again = actix::clock::timeout(WAIT, async {
        loop {
            if let Ok(socket) = app.try_connect(&id, Some(&token)).await {
                return socket;
            }
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a sender slot freed within the wait bound");
    senders.push(again);
    for (n, sender) in senders.iter_mut().enumerate() {
        sender.send_json(&move_event(n as u64)).await;
        for viewer in &mut viewers {
            assert_eq!(viewer.next_json().await, move_event(n as u64));
        }
    }
    honest.still_fine(20).await;
}

/// All of a sender's sockets on one stream share one rate budget: a second
/// socket does not double what the sender may send.
async fn a_senders_sockets_share_one_budget(nodes: Nodes) {
    let app = nodes
        .spawn(|s| {
            s.limits.sender_events_per_sec = 0.001;
            s.limits.sender_event_burst = 20.0;
        })
        .await;
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = app.sender_with_stream(8, None, "Twice").await;
    let mut first = app.connect(&id, Some(&token)).await;
    let mut second = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    for n in 0..15 {
        first.send_json(&move_event(n)).await;
        second.send_json(&move_event(100 + n)).await;
    }
    let mut refused = 0;
    for socket in [&mut first, &mut second] {
        // Each socket hears of its own refused events, and gets the other's
        // accepted ones relayed.
        loop {
            match actix::clock::timeout(Duration::from_millis(300), socket.next()).await {
                Ok(Seen::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["event"] == "move" {
                        continue;
                    }
                    assert_eq!(frame["data"]["message"], "rate limit exceeded", "{frame}");
                    refused += 1;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            }
        }
    }
    assert_eq!(refused, 10, "30 sent against one budget of 20");
    for _ in 0..20 {
        assert_eq!(viewer.next_json().await["event"], "move");
    }
    // The honest sender has a budget of its own (20 here, too).
    honest.still_fine(20).await;
}

/// A stream's recording grows to its quota and no further, whole lines
/// only, while its viewer gets every event; the honest stream, under the
/// quota, is recorded whole and loses nothing.
#[actix_web::test]
async fn a_recording_stops_at_its_quota() {
    const QUOTA: u64 = 4096;
    let app = spawn_app_with(|s| s.limits.max_recording_bytes = QUOTA).await;
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = app.sender_with_stream(9, None, "Chatty").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    // Some 110 bytes each: 11 KB, well past the quota.
    let events: Vec<Value> = (0..100).map(move_event).collect();
    for event in &events {
        sender.send_json(event).await;
    }
    honest.still_fine(10).await;
    for event in &events {
        let got = viewer.next_json().await;
        assert_eq!(
            (&got["event"], &got["data"]),
            (&event["event"], &event["data"]),
            "the viewer gets every event, recorded or not"
        );
    }
    // Recorded before relayed: the viewer saw them, so the file has them.
    let recorded = recording_of(&app, &id);
    let bytes: usize = recorded.iter().map(|line| line.len() + 1).sum();
    assert!(bytes as u64 <= QUOTA, "{bytes} bytes recorded");
    assert!(
        recorded.len() < events.len() && bytes as u64 + 200 > QUOTA,
        "recorded up to the quota: {} lines, {bytes} bytes",
        recorded.len()
    );
    for (line, event) in recorded.iter().zip(&events) {
        let line: Value = serde_json::from_str(line).expect("a whole JSON line");
        assert_eq!(
            (&line["event"], &line["data"]),
            (&event["event"], &event["data"])
        );
    }
    honest.still_fine(10).await;
    assert_eq!(
        recording_of(&app, &honest.stream_id).len() as u64,
        honest.sent(),
        "the honest stream is recorded whole"
    );
}

/// The lines of stream `id`'s recording.
fn recording_of(app: &TestApp, id: &str) -> Vec<String> {
    let path = app.dir.path().join("log/streams").join(format!("{id}.log"));
    let text = std::fs::read_to_string(&path).expect("the recording exists");
    assert!(text.is_empty() || text.ends_with('\n'), "a torn last line");
    text.lines().map(str::to_owned).collect()
}

/// A sender flooding past its rate has every frame refused with an error
/// frame, but past the refusals' burst it is read no faster than the rate
/// and the refusal pace allow, so a flood at wire speed costs the server a
/// bounded share of a core; the honest stream goes on meanwhile.
#[actix_web::test]
async fn a_flood_past_the_rate_is_read_at_the_refusal_pace() {
    use twizzle_api_server::session::REFUSALS_PER_SEC;
    let app = spawn_app().await;
    let limits = Settings::local().limits;
    let (rate, burst) = (limits.sender_events_per_sec, limits.sender_event_burst);
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = app.sender_with_stream(11, None, "Torrent").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    let sent = (burst + 2.0 * REFUSALS_PER_SEC) as u64;
    let started = std::time::Instant::now();
    for n in 0..sent {
        sender.send_json(&move_event(n)).await;
    }
    honest.still_fine(20).await;
    let mut refused = 0u64;
    let mut last = started;
    loop {
        match actix::clock::timeout(Duration::from_millis(500), sender.next()).await {
            Ok(Seen::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(frame["data"]["message"], "rate limit exceeded");
                refused += 1;
                last = std::time::Instant::now();
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break, // quiet: every error frame has come
        }
    }
    let mut relayed = 0u64;
    let mut previous = None;
    while let Ok(Seen::Text(text)) =
        actix::clock::timeout(Duration::from_millis(500), viewer.next()).await
    {
        let frame: Value = serde_json::from_str(&text).unwrap();
        let n = frame["data"]["timeStamp"].as_u64().expect("a move");
        assert!(previous.is_none_or(|p| n > p), "reordered");
        previous = Some(n);
        relayed += 1;
    }
    assert_eq!(relayed + refused, sent, "every frame relayed or refused");
    // Past both bursts, each frame waits for a token of the rate or of the
    // refusal pace.
    let floor = (sent as f64 - burst - REFUSALS_PER_SEC) / (rate + REFUSALS_PER_SEC);
    let took = (last - started).as_secs_f64();
    assert!(
        took >= 0.8 * floor,
        "{sent} frames refused or relayed in {took:.2} s: read faster than the pace ({floor:.2} s)"
    );
    honest.still_fine(20).await;
}

/// The real binary's memory stays bounded while a viewer that stops
/// reading is sent 28 MB of events: the stream drops it once its queue is
/// full, and the honest pair on the same server loses nothing.
#[actix_web::test]
async fn a_stuck_viewer_costs_the_server_bounded_memory() {
    // What one socket may hold: its queue of events (512 here) of 7 KB
    // each, and its kernel buffers; the rest is the allocator's slack.
    const GROWTH_KIB: u64 = 12 * 1024;
    let dir = TempDir::new("stuck-memory");
    let wca = FakeWca::start();
    let (child, port, logs) = start_binary(dir.path(), wca.origin());
    let app = TestApp::attach(
        std::sync::Arc::new(TempDir::new("stuck-memory-app")),
        wca,
        port,
    );
    let mut honest = HonestPair::start(&app).await;
    let (token, id) = app.sender_with_stream(12, None, "Heavy").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let stuck_id = id.clone();
    let stuck = actix_web::rt::task::spawn_blocking(move || RawSocket::open(port, &stuck_id, 4096))
        .await
        .unwrap();
    honest.still_fine(10).await;
    let before = child.memory_kib("VmRSS");
    let total = 4000u64;
    for n in 0..total {
        let mut event = move_event(n);
        event["data"]["binaryState"] = Value::String("x".repeat(7000));
        sender.send_json(&event).await;
        if n % 500 == 499 {
            honest.still_fine(5).await;
        }
    }
    honest.still_fine(10).await;
    let peak = child.memory_kib("VmHWM");
    assert!(
        peak.saturating_sub(before) < GROWTH_KIB,
        "the server grew from {before} KiB to a peak of {peak} KiB"
    );
    // The stream says so when it drops the stuck socket (the client, not
    // reading, would see it only after TCP's backed-off window probes).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = logs
            .recv_timeout(left)
            .expect("the stuck viewer was dropped within the wait bound");
        if line.contains(&format!("stream {id}: dropping socket")) {
            break;
        }
    }
    drop(stuck);
}

on_one_and_two_nodes! {
    sender_sockets_per_stream_are_limited,
    a_senders_sockets_share_one_budget,
}
