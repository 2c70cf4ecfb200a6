//! `GET /metrics`: every family SPEC names is there, read with a real
//! Prometheus text parser, and moves with traffic.

use prometheus_parse::{Sample, Scrape, Value};

use crate::helpers::*;

/// The server's metrics, parsed.
async fn scrape(app: &TestApp) -> Scrape {
    let port = app.metrics_port.expect("the test server serves metrics");
    let mut answer = awc::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("a metrics answer");
    assert_eq!(answer.status(), 200);
    let body = answer.body().await.expect("the exposition");
    let text = String::from_utf8(body.to_vec()).expect("text");
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("the exposition parses")
}

/// The samples named `name` whose labels include `labels`.
fn samples<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The sum of the values of those samples (a histogram counts its observations).
fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, name, labels);
    assert!(!found.is_empty(), "no sample {name}{labels:?}");
    found
        .iter()
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => panic!("{name} is not a summary"),
        })
        .sum()
}

/// After a sign-in, a stream with a sender and two viewers, a refused
/// frame, a rate-limited event, a limit hit and closed sockets, every
/// family is present and has moved.
#[actix_web::test]
async fn every_family_is_there_and_moves() {
    let app = spawn_app_with(|s| {
        s.limits.sender_events_per_sec = 0.001;
        s.limits.sender_event_burst = 5.0;
        s.limits.max_streams_per_user = 1;
    })
    .await;
    let before = scrape(&app).await;
    assert_eq!(total(&before, "twizzle_streams", &[]), 0.0);
    assert_eq!(total(&before, "twizzle_events_accepted_total", &[]), 0.0);

    let (token, id) = app.sender_with_stream(1, None, "Metered").await;
    let refused = app
        .post(&format!("/v0/streams?twizzleAccessToken={token}"))
        .await;
    assert_eq!(refused.status, 429, "the second stream is over the limit");
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewers = [app.connect(&id, None).await, app.connect(&id, None).await];
    sender.send_text("not json").await;
    assert_eq!(sender.next_json().await["event"], "error");
    for n in 0..6 {
        sender.send_json(&move_event(n)).await;
    }
    assert_eq!(
        sender.next_json().await["data"]["message"],
        "rate limit exceeded"
    );
    for viewer in &mut viewers {
        for n in 0..5 {
            assert_eq!(viewer.next_json().await, move_event(n));
        }
    }
    let [mut gone, _kept] = viewers;
    gone.send(awc::ws::Message::Close(None)).await;
    assert!(matches!(gone.next().await, Seen::Close(_) | Seen::Ended));

    // The close is counted once the server has let go of the socket.
    let deadline = std::time::Instant::now() + WAIT;
    let after = loop {
        let after = scrape(&app).await;
        if !samples(
            &after,
            "twizzle_sockets_closed_total",
            &[("reason", "client")],
        )
        .is_empty()
            || std::time::Instant::now() > deadline
        {
            break after;
        }
        actix::clock::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(total(&after, "twizzle_streams", &[]), 1.0);
    assert_eq!(total(&after, "twizzle_sockets", &[("role", "sender")]), 1.0);
    assert_eq!(total(&after, "twizzle_sockets", &[("role", "viewer")]), 1.0);
    assert_eq!(total(&after, "twizzle_events_accepted_total", &[]), 5.0);
    assert_eq!(
        total(
            &after,
            "twizzle_events_rejected_total",
            &[("reason", "invalid")]
        ),
        1.0
    );
    assert_eq!(
        total(
            &after,
            "twizzle_events_rejected_total",
            &[("reason", "rate_limited")]
        ),
        1.0
    );
    assert_eq!(total(&after, "twizzle_deliveries_total", &[]), 10.0);
    assert_eq!(
        total(
            &after,
            "twizzle_sockets_closed_total",
            &[("reason", "client")]
        ),
        1.0
    );
    assert_eq!(
        total(
            &after,
            "twizzle_limit_hits_total",
            &[("limit", "streams_per_user")]
        ),
        1.0
    );
    assert_eq!(
        total(
            &after,
            "twizzle_limit_hits_total",
            &[("limit", "sender_events")]
        ),
        1.0
    );
    assert!(
        total(
            &after,
            "twizzle_http_requests_total",
            &[("route", "/v0/streams"), ("status", "429")]
        ) >= 1.0
    );
    assert!(
        total(
            &after,
            "twizzle_http_requests_total",
            &[("route", "/v0/claim"), ("status", "200")]
        ) >= 1.0
    );
    assert!(total(&after, "twizzle_recording_bytes_total", &[]) > 0.0);
    assert!(total(&after, "twizzle_fanout_seconds_count", &[]) >= 5.0);
    // A sign-in, a claim and a stream creation: three durable writes at least.
    assert!(total(&after, "twizzle_state_sync_seconds_count", &[]) >= 3.0);
    assert!(total(&after, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(total(&after, "process_open_fds", &[]) >= 3.0);
}

/// In cluster mode the engine shows: each append's time to JetStream's
/// acknowledgement, and the times the connection to NATS came back.
#[actix_web::test]
async fn cluster_mode_shows_the_engine() {
    let Some(mut nats) = twizzle_actors::testkit::NatsServer::start("metrics") else {
        return;
    };
    let url = nats.url();
    let app = spawn_app_with(|s| s.nats_url = Some(url)).await;
    let before = scrape(&app).await;
    assert_eq!(
        total(&before, "twizzle_engine_publish_seconds_count", &[]),
        0.0
    );
    assert_eq!(total(&before, "twizzle_engine_reconnects_total", &[]), 0.0);
    assert_eq!(total(&before, "twizzle_gaps_repaired_total", &[]), 0.0);
    let (token, id) = app.sender_with_stream(5, None, "Engine").await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    for n in 0..5 {
        sender.send_json(&move_event(n)).await;
        assert_eq!(viewer.next_json().await, move_event(n));
    }
    let sent = scrape(&app).await;
    assert!(total(&sent, "twizzle_engine_publish_seconds_count", &[]) >= 5.0);

    nats.restart();
    let came_back = actix::clock::timeout(WAIT * 3, async {
        loop {
            let now = scrape(&app).await;
            if total(&now, "twizzle_engine_reconnects_total", &[]) >= 1.0 {
                return;
            }
            actix::clock::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(came_back.is_ok(), "the reconnect is counted");
}
