//! The development sign-in, `GET /v0/auth/dev?name=NAME`: its answers, its
//! users, and the settings under which it exists at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use twizzle_api_server::testkit::query_value;

use crate::helpers::*;

/// `GET /v0/auth/dev?name=<name, encoded>`, answered.
async fn dev_get(app: &TestApp, name: &str) -> Answer {
    app.get(&format!("/v0/auth/dev?name={}", query_value(name)))
        .await
}

/// The claim token in a sign-in redirect to the test client app, which
/// must be the whole redirect: the app URL with `claimToken` added.
fn claim_of(answer: &Answer) -> String {
    assert_eq!(answer.status, 302, "{}", answer.body);
    let location = answer
        .headers
        .get("location")
        .expect("a Location")
        .to_str()
        .unwrap();
    let claim = location
        .strip_prefix("http://localhost:1234/stream/?claimToken=")
        .unwrap_or_else(|| panic!("not a redirect to the client app: {location}"));
    assert!(
        claim.starts_with("claim_token_") && claim.len() == "claim_token_".len() + 32,
        "a claim token and nothing else after it"
    );
    claim.to_owned()
}

/// Signs `name` in: the access token and user info the claim gives.
async fn dev_sign_in(app: &TestApp, name: &str) -> (String, Value) {
    let claim = claim_of(&dev_get(app, name).await);
    match app.try_claim(&claim).await {
        Ok(claimed) => claimed,
        Err(answer) => panic!("claim answered {} {}", answer.status, answer.body),
    }
}

/// Fails unless `answer` is the 404 of a path the server does not have.
fn assert_unknown_path(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 404, "{what}: {}", answer.body);
    assert_eq!(
        answer.body["error"], "no such endpoint: /v0/auth/dev",
        "{what}: answered like any unknown path"
    );
}

/// All three conditions met: the sign-in redirects like the OAuth callback,
/// the claim gives an unverified user without a WCA ID whose token creates
/// a stream and sends on it, and a claim token works once.
async fn dev_sign_in_end_to_end(nodes: Nodes) {
    let app = nodes.dev_app().await;
    let answer = dev_get(&app, "Demo Cuber").await;
    assert!(answer.body.is_null(), "a redirect has no body");
    let claim = claim_of(&answer);
    let Ok((token, info)) = app.try_claim(&claim).await else {
        panic!("the claim does not redeem");
    };
    assert!(token.starts_with("twizzle_access_token_"));
    assert_eq!(info["name"], "Demo Cuber (unverified)");
    assert!(info["wcaID"].is_null());
    assert!(info["twizzleUserID"].as_str().unwrap().starts_with("user_"));
    let again = app
        .try_claim(&claim)
        .await
        .map(|_| ())
        .expect_err("a claim works once");
    assert_eq!(again.status, 401);

    let id = app.create_stream(&token).await;
    let listed = app.list_with(&id).await;
    assert_eq!(listed["streams"][0]["streamID"], id);
    assert_eq!(listed["streams"][0]["senders"][0], info);
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    let event = move_event(1);
    sender.send_json(&event).await;
    let seen = viewer.next_json().await;
    assert_eq!(seen["event"], event["event"]);
    assert_eq!(seen["data"], event["data"]);
}

/// The same name is the same user with the same token; another name (even
/// one that differs only by a trailing space) is someone else.
async fn the_same_name_is_the_same_user(nodes: Nodes) {
    let app = nodes.dev_app().await;
    let (first, info) = dev_sign_in(&app, "Ana").await;
    let (second, info2) = dev_sign_in(&app, "Ana").await;
    assert!(first == second, "the access token changed across sign-ins");
    assert_eq!(info2, info);
    let (other, other_info) = dev_sign_in(&app, "Ana ").await;
    assert!(other != first);
    assert_ne!(other_info["twizzleUserID"], info["twizzleUserID"]);
    assert_eq!(other_info["name"], "Ana  (unverified)");
}

/// Names with spaces, accents, other scripts and emoji sign in as they are;
/// 40 characters is the limit whatever their bytes.
async fn names_are_characters_not_bytes(nodes: Nodes) {
    let app = nodes.dev_app().await;
    let forty = "é".repeat(40);
    for name in [
        "Zoë Ünal",
        "陳 小明",
        "Cubo 🧊🧊",
        "  spaced  out  ",
        "a+b&c=d?e#f",
        forty.as_str(),
    ] {
        let (_, info) = dev_sign_in(&app, name).await;
        assert_eq!(info["name"], format!("{name} (unverified)"), "{name:?}");
    }
}

/// A missing or bad name answers 400 with a JSON error saying why.
async fn bad_names_answer_400(nodes: Nodes) {
    let app = nodes.dev_app().await;
    let too_long = "a".repeat(41);
    let too_long_wide = "é".repeat(41);
    let cases: &[(&str, &str)] = &[
        ("/v0/auth/dev", "name was not provided"),
        ("/v0/auth/dev?name=", "name was not provided"),
        ("/v0/auth/dev?nom=Ana", "name was not provided"),
        (&format!("/v0/auth/dev?name={too_long}"), "longer than 40"),
        (
            &format!("/v0/auth/dev?name={}", query_value(&too_long_wide)),
            "longer than 40",
        ),
        ("/v0/auth/dev?name=bell%07", "printable"),
        ("/v0/auth/dev?name=two%0Alines", "printable"),
        ("/v0/auth/dev?name=tab%09", "printable"),
        ("/v0/auth/dev?name=del%7F", "printable"),
        ("/v0/auth/dev?name=%E2%80%A8", "printable"),
        ("/v0/auth/dev?name=%20%20%20", "whitespace"),
        ("/v0/auth/dev?name=a&name=b", "bad query string"),
    ];
    for (path, why) in cases {
        let answer = app.get(path).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert_eq!(
            answer.headers.get("content-type").unwrap(),
            "application/json",
            "{path}"
        );
        let error = answer.body["error"].as_str().expect("a JSON error");
        assert!(error.contains(why), "{path}: {error}");
    }
    // No user was made by any of them.
    assert_eq!(
        app.get("/v0/streams").await.body["streams"],
        Value::Array(vec![])
    );
    let (_, info) = dev_sign_in(&app, "still works").await;
    assert_eq!(info["name"], "still works (unverified)");
}

/// A WCA client secret, `--prod` or a listener that is not loopback each
/// take the development sign-in away: 404 as for any unknown path.
#[actix_web::test]
async fn absent_unless_no_secret_no_prod_and_loopback() {
    // The test settings carry a WCA client secret.
    let with_secret = spawn_app().await;
    assert_unknown_path(&dev_get(&with_secret, "Ana").await, "with a secret");
    assert_eq!(with_secret.get("/v0/auth/dev").await.status, 404);

    // `--prod` without a secret cannot start from the command line (it is
    // refused there); the settings themselves can say so, and are refused here too.
    let prod = spawn_app_with(|s| {
        s.wca.client_secret = None;
        s.prod = true;
    })
    .await;
    assert_unknown_path(&dev_get(&prod, "Ana").await, "with --prod");

    // Every interface, loopback among them: reached on 127.0.0.1, still absent.
    let everywhere = spawn_app_with(|s| {
        s.wca.client_secret = None;
        s.bind = "0.0.0.0:0".to_owned();
    })
    .await;
    assert_unknown_path(&dev_get(&everywhere, "Ana").await, "bound to 0.0.0.0");

    // And the OAuth callback without a secret is still the 503 it was.
    let dev = spawn_dev_app().await;
    assert_eq!(
        dev.get("/v0/auth/wca/oauth_callback?code=x").await.status,
        503
    );
    assert_eq!(dev_get(&dev, "Ana").await.status, 302);
    // A method it does not take is refused as on any endpoint.
    assert_eq!(dev.post("/v0/auth/dev?name=Ana").await.status, 405);
}

/// A development user survives a restart: the same name finds the same
/// user, and the token handed out before still works. (With no WCA secret
/// to seal it with, the token is sealed with a key of the process, so the
/// first sign-in after a restart hands out a new one; the old one goes on
/// working.)
#[actix_web::test]
async fn development_users_survive_a_restart() {
    let app = spawn_dev_app().await;
    let (token, info) = dev_sign_in(&app, "Re Start").await;
    app.handle
        .as_ref()
        .expect("an in-process server")
        .shutdown()
        .await;
    let TestApp { dir, wca, .. } = app;

    let app = spawn_app_in(Arc::clone(&dir), wca, |s| s.wca.client_secret = None).await;
    let (_, info_again) = dev_sign_in(&app, "Re Start").await;
    assert_eq!(info_again, info, "the same user");
    let res = app.post_as("/v0/streams", &token).await;
    assert_eq!(res.status, 200, "the old token still works: {}", res.body);
    assert_eq!(res.body["stream"]["senders"][0], info);
}

/// The real binary logs, right after where it listens, that the
/// development sign-in is on; with a secret it does not.
#[actix_web::test]
async fn the_binary_says_when_it_is_on() {
    const ON: &str = "development sign-in is on";
    for with_secret in [false, true] {
        let dir = TempDir::new("api");
        let wca = FakeWca::start();
        let (_child, port, logs) = start_binary_with(dir.path(), wca.origin(), |command| {
            if !with_secret {
                command.env_remove("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET");
            }
        });
        // The metrics server is started after the line, if any, is logged.
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = logs
                .recv_timeout(left.max(Duration::from_millis(1)))
                .unwrap_or_else(|_| panic!("no metrics line after the listening one: {seen:?}"));
            if line.contains("metrics on") {
                break;
            }
            seen.push(line);
        }
        assert_eq!(
            seen.iter().any(|line| line.contains(ON)),
            !with_secret,
            "with_secret {with_secret}: {seen:?}"
        );
        let app = TestApp::attach(Arc::new(dir), wca, port);
        let status = dev_get(&app, "Bin Ary").await.status;
        assert_eq!(status, if with_secret { 404 } else { 302 });
    }
}

on_one_and_two_nodes! {
    dev_sign_in_end_to_end,
    the_same_name_is_the_same_user,
    names_are_characters_not_bytes,
    bad_names_answer_400,
}
