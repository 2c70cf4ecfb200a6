//! The plain HTTP endpoints: status codes, bodies, CORS.

use crate::helpers::*;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `GET /` names the service; every answer carries the CORS origin header.
#[actix_web::test]
async fn welcome_names_the_service() {
    let app = spawn_app().await;
    let answer = app.get("/").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.as_str().unwrap().contains("twizzle"));
    assert_eq!(
        answer.headers.get("access-control-allow-origin").unwrap(),
        "*"
    );
}

/// The liveness check reports its start in milliseconds, JavaScript's date form, and uptime.
#[actix_web::test]
async fn liveness_check_reports_start_and_uptime() {
    let app = spawn_app().await;
    let answer = app.get("/v0/infra/liveness_check").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers.get("content-type").unwrap(),
        "application/json"
    );
    let start = answer.body["startTimestamp"]
        .as_u64()
        .expect("ms since the epoch");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        start <= now && now - start < 60_000,
        "start {start} vs now {now}"
    );
    let human = answer.body["startTimestampHuman"].as_str().unwrap();
    assert!(
        human.ends_with("GMT+0000 (Coordinated Universal Time)"),
        "{human}"
    );
    assert!(answer.body["uptimeSeconds"].as_u64().is_some());
}

/// A preflight on any path answers 204 with methods and headers a browser needs.
#[actix_web::test]
async fn preflight_answers_any_path() {
    let app = spawn_app().await;
    for path in ["/v0/streams", "/v0/claim", "/no/such/path"] {
        let res = app
            .client
            .request(awc::http::Method::OPTIONS, app.url(path))
            .insert_header(("Access-Control-Request-Method", "POST"))
            .insert_header(("Access-Control-Request-Headers", "authorization"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 204, "{path}");
        let header = |name: &str| {
            res.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(header("access-control-allow-origin"), "*");
        let methods = header("access-control-allow-methods");
        for method in ["GET", "POST", "OPTIONS"] {
            assert!(methods.contains(method), "{methods}");
        }
        let headers = header("access-control-allow-headers").to_ascii_lowercase();
        assert!(
            headers.contains("authorization") && headers.contains("content-type"),
            "{headers}"
        );
    }
}

/// Unknown paths answer 404 and wrong methods 405, both as JSON errors with CORS.
#[actix_web::test]
async fn unknown_paths_and_methods_answer_json_errors() {
    let app = spawn_app().await;
    let answer = app.get("/v1/nothing").await;
    assert_eq!(answer.status, 404);
    assert!(answer.body["error"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing"));
    assert_eq!(
        answer.headers.get("access-control-allow-origin").unwrap(),
        "*"
    );
    let answer = app.get("/v0/claim").await;
    assert_eq!(answer.status, 405);
    assert!(answer.body["error"].is_string());
}

/// Creating a stream needs a valid token (query or Bearer) and answers both shapes.
async fn create_stream_answers_both_shapes(nodes: Nodes) {
    let app = nodes.app().await;
    let answer = app.post("/v0/streams").await;
    assert_eq!(answer.status, 401);
    assert!(answer.body["error"].is_string());
    let answer = app
        .post(
            "/v0/streams?twizzleAccessToken=twizzle_access_token_00000000000000000000000000000000",
        )
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["error"], "invalid twizzle access token");

    let (token, user) = app.sign_in(7, Some("2019TEST01"), "Tess Ter").await;
    let answer = app
        .post(&format!("/v0/streams?twizzleAccessToken={token}"))
        .await;
    assert_eq!(answer.status, 200);
    let id = answer.body["streamID"].as_str().unwrap();
    assert!(
        id.starts_with("twizzle_stream_") && is_hex(&id["twizzle_stream_".len()..], 16),
        "{id}"
    );
    assert_eq!(answer.body["stream"]["streamID"], id);
    assert_eq!(answer.body["senders"], serde_json::json!([user.clone()]));
    assert_eq!(answer.body["stream"]["senders"], serde_json::json!([user]));

    let res = app.post_as("/v0/streams", &token).await;
    assert_eq!(res.status, 200, "a Bearer header works too");
}

/// The list is `{"streams": [...]}` with each stream's senders as an array of public user info.
async fn streams_are_listed_with_their_senders(nodes: Nodes) {
    let app = nodes.app().await;
    assert_eq!(
        app.get("/v0/streams").await.body,
        serde_json::json!({"streams": []})
    );
    let (ana, ana_info) = app.sign_in(1, Some("2010ANAA01"), "Ana").await;
    let (bo, bo_info) = app.sign_in(2, None, "Bo").await;
    let first = app.create_stream(&ana).await;
    let second = app.create_stream(&bo).await;
    let answer = app.get("/v0/streams").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        without_counts(&answer.body["streams"]),
        serde_json::json!([
            {"streamID": first, "senders": [ana_info]},
            {"streamID": second, "senders": [bo_info]},
        ])
    );
}

/// The list's body is what the API always answered, byte for byte (keys
/// in the same order), and shows each sender as of their last sign-in.
async fn the_list_keeps_its_bytes_and_shows_a_new_name(nodes: Nodes) {
    let app = nodes.app().await;
    let (ana, ana_info) = app.sign_in(1, Some("2010ANAA01"), "Ana").await;
    let ana_id = ana_info["twizzleUserID"].as_str().unwrap().to_owned();
    let first = app.create_stream(&ana).await;
    let second = app.create_stream(&ana).await;
    let raw_list = || async {
        let mut res = app.client.get(app.url("/v0/streams")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/json"
        );
        String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
    };
    let created = app.get("/v0/streams").await.body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|info| info["createdAt"].as_u64().unwrap())
        .collect::<Vec<_>>();
    let (c1, c2) = (created[0], created[1]);
    let listed = |sender: &str| {
        format!(
            r#"{{"streams":[{{"createdAt":{c1},"live":false,"senders":[{sender}],"streamID":"{first}","viewers":0}},{{"createdAt":{c2},"live":false,"senders":[{sender}],"streamID":"{second}","viewers":0}}]}}"#
        )
    };
    assert_eq!(
        raw_list().await,
        listed(&format!(
            r#"{{"name":"Ana (2010ANAA01)","twizzleUserID":"{ana_id}","wcaID":"2010ANAA01"}}"#
        ))
    );

    let (_, renamed) = app.sign_in(1, None, "Ana Lima").await;
    assert_eq!(renamed["twizzleUserID"], ana_id.as_str());
    assert_eq!(
        raw_list().await,
        listed(&format!(
            r#"{{"name":"Ana Lima (unverified)","twizzleUserID":"{ana_id}","wcaID":null}}"#
        ))
    );
}

/// The readiness check answers 200 `{"ready": true}` when every actor
/// answers and the data directory takes writes, and leaves nothing in it.
#[actix_web::test]
async fn readiness_check_is_ready() {
    let app = spawn_app().await;
    let answer = app.get("/v0/infra/readiness_check").await;
    assert_eq!(
        (answer.status, &answer.body),
        (200, &serde_json::json!({"ready": true}))
    );
    assert_eq!(
        answer.headers.get("content-type").unwrap(),
        "application/json"
    );
    assert_eq!(
        answer.headers.get("access-control-allow-origin").unwrap(),
        "*"
    );
    let probes: Vec<_> = std::fs::read_dir(app.dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name.to_string_lossy().ends_with(".probe"))
        .collect();
    assert!(probes.is_empty(), "{probes:?}");
}

/// A user may hold only so many open streams; the next one is a 429 saying
/// so, and the honest pair's stream goes on.
async fn streams_per_user_are_limited(nodes: Nodes) {
    let app = nodes.spawn(|s| s.limits.max_streams_per_user = 2).await;
    let mut honest = HonestPair::start(&app).await;
    let (token, _) = app.sign_in(3, None, "Many").await;
    app.create_stream(&token).await;
    app.create_stream(&token).await;
    let answer = app
        .post(&format!("/v0/streams?twizzleAccessToken={token}"))
        .await;
    assert_eq!(answer.status, 429);
    assert!(answer.body["error"].as_str().unwrap().contains("at most 2"));
    honest.still_fine(20).await;
    let (other, _) = app.sign_in(4, None, "Other").await;
    app.create_stream(&other).await;
}

/// The socket endpoint: unknown stream 404, bad token 401, no upgrade 400, all JSON.
async fn socket_endpoint_errors(nodes: Nodes) {
    let app = nodes.app().await;
    let answer = app
        .get("/v0/streams/twizzle_stream_0000000000000000/socket")
        .await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body["error"], "stream ID is unknown");

    let (_, id) = app.sender_with_stream(5, None, "Sock").await;
    let answer = app
        .get(&format!(
            "/v0/streams/{id}/socket?twizzleAccessToken=twizzle_access_token_bogus"
        ))
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["error"], "invalid twizzle access token");
    let answer = app.get(&format!("/v0/streams/{id}/socket")).await;
    assert_eq!(answer.status, 400);
    assert!(answer.body["error"].as_str().unwrap().contains("WebSocket"));

    match app
        .try_connect("twizzle_stream_0000000000000000", None)
        .await
    {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 404)
        }
        other => panic!("expected a 404, got {:?}", other.map(|_| "a socket")),
    }
    match app
        .try_connect(&id, Some("twizzle_access_token_bogus"))
        .await
    {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 401)
        }
        other => panic!("expected a 401, got {:?}", other.map(|_| "a socket")),
    }
}

/// Over-long and malformed query strings get a 400 JSON answer, not a crash.
#[actix_web::test]
async fn bad_query_strings_are_refused() {
    let app = spawn_app().await;
    let long = "a".repeat(10_000);
    let answer = app.post(&format!("/v0/claim?claimToken={long}")).await;
    assert_eq!(answer.status, 400);
    assert!(answer.body["error"].is_string());
    let answer = app.post("/v0/claim?claimToken=a&claimToken=b").await;
    assert_eq!(answer.status, 400);
    assert!(answer.body["error"].is_string());
    assert_eq!(app.get("/").await.status, 200, "the server is still up");
}

/// `GET /v0/streams/{id}` answers the stream's `StreamInfo`, whose viewer
/// count and `live` follow the sockets (within the list's staleness
/// bound); an unknown stream answers 404.
async fn a_stream_shows_its_viewers_and_whether_it_is_live(nodes: Nodes) {
    let app = nodes.app().await;
    let (token, info) = app.sign_in(1, Some("2010ANAA01"), "Ana").await;
    let before = epoch_ms();
    let created = app.post_as("/v0/streams", &token).await;
    let id = created.body["streamID"].as_str().unwrap().to_owned();
    let stream = &created.body["stream"];
    assert_eq!(
        (&stream["viewers"], &stream["live"]),
        (&0.into(), &false.into())
    );
    let created_at = stream["createdAt"].as_u64().unwrap();
    assert!((before..=epoch_ms()).contains(&created_at), "{created_at}");

    let one = app.get(&format!("/v0/streams/{id}")).await;
    assert_eq!(one.status, 200);
    assert_eq!(
        one.body,
        serde_json::json!({"streamID": id, "senders": [info], "viewers": 0, "live": false, "createdAt": created_at})
    );

    let _sender = app.connect(&id, Some(&token)).await;
    let _viewers = [app.connect(&id, None).await, app.connect(&id, None).await];
    let shows = |viewers: u64, live: bool| {
        let app = &app;
        let id = id.clone();
        async move {
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                let listed = app.get("/v0/streams").await.body;
                let one = app.get(&format!("/v0/streams/{id}")).await.body;
                let seen = (
                    &one["viewers"],
                    &one["live"],
                    &listed["streams"][0]["viewers"],
                );
                if seen == (&viewers.into(), &live.into(), &viewers.into()) {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "saw {seen:?}");
                actix::clock::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    shows(2, true).await;
    drop(_viewers);
    drop(_sender);
    shows(0, false).await;

    let unknown = app.get("/v0/streams/twizzle_stream_0000000000000000").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body["error"], "stream ID is unknown");
    assert_eq!(app.get("/v0/streams/nonsense").await.status, 404);
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

on_one_and_two_nodes! {
    create_stream_answers_both_shapes,
    streams_are_listed_with_their_senders,
    the_list_keeps_its_bytes_and_shows_a_new_name,
    streams_per_user_are_limited,
    socket_endpoint_errors,
    a_stream_shows_its_viewers_and_whether_it_is_live,
}
