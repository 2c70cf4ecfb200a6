//! The watch page as files: each path's type, its security headers, and
//! JSON errors for what is not there. (`browser.rs` runs it.)

use twizzle_api_server::watch::CONTENT_SECURITY_POLICY;

use crate::helpers::*;

const STREAM_ID: &str = "twizzle_stream_0123456789abcdef";

/// The value of `name` in `answer`, which must be there once.
fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    let values: Vec<_> = answer.headers.get_all(name).collect();
    assert_eq!(values.len(), 1, "one {name} header");
    values[0].to_str().unwrap()
}

/// Every file of the page answers with its type, the policy, `nosniff`
/// and the CORS header every answer has.
#[actix_web::test]
async fn each_file_has_its_type_and_the_policy() {
    let app = spawn_app().await;
    let stream_page = format!("/watch/{STREAM_ID}");
    for (path, content_type, holds) in [
        (
            "/watch/",
            "text/html; charset=utf-8",
            r#"src="/watch/list.js""#,
        ),
        (&stream_page, "text/html; charset=utf-8", r#"id="moves""#),
        (
            "/watch/list.js",
            "text/javascript; charset=utf-8",
            "/v0/streams",
        ),
        (
            "/watch/stream.js",
            "text/javascript; charset=utf-8",
            "?since=",
        ),
        (
            "/watch/common.js",
            "text/javascript; charset=utf-8",
            "export function moveNotation",
        ),
        ("/watch/watch.css", "text/css; charset=utf-8", ".badge"),
    ] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, 200, "GET {path}");
        assert_eq!(header(&answer, "content-type"), content_type, "GET {path}");
        assert_eq!(
            header(&answer, "content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(header(&answer, "x-content-type-options"), "nosniff");
        assert_eq!(header(&answer, "access-control-allow-origin"), "*");
        let body = answer.body.as_str().expect("a text body");
        assert!(body.contains(holds), "GET {path} lacks {holds}");
    }
}

/// The stream page carries the status and moves elements the SPEC names,
/// the status as a polite live region that starts at `connecting`.
#[actix_web::test]
async fn the_stream_page_has_its_status_and_moves() {
    let app = spawn_app().await;
    let answer = app.get(&format!("/watch/{STREAM_ID}")).await;
    let page = answer.body.as_str().unwrap();
    assert!(page.contains(
        r#"<span id="status" class="badge connecting" aria-live="polite">connecting</span>"#
    ));
    assert!(page.contains(r#"<p id="moves" class="moves"></p>"#));
    assert!(page.contains(r#"<script type="module" src="/watch/stream.js"></script>"#));
}

/// The policy lets scripts come from this server and the cubing.js CDN
/// only, none inline and nothing evaluated; everything else it names is
/// as narrow, and what it does not name is refused.
#[test]
fn the_policy_is_strict() {
    let directives: Vec<&str> = CONTENT_SECURITY_POLICY.split(';').map(str::trim).collect();
    for expected in [
        "default-src 'none'",
        "script-src 'self' https://cdn.cubing.net",
        "style-src 'self'",
        "connect-src 'self' https://cdn.cubing.net",
        "worker-src 'self' blob: https://cdn.cubing.net",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(
            directives.contains(&expected),
            "the policy lacks {expected}"
        );
    }
    for loose in ["'unsafe-inline'", "'unsafe-eval'", "*", "http:", "https: "] {
        assert!(
            !CONTENT_SECURITY_POLICY.contains(loose),
            "the policy allows {loose}"
        );
    }
}

/// What is not the page answers as the API does: JSON 404s and 405s;
/// `/watch` without its slash is sent to `/watch/`.
#[actix_web::test]
async fn other_watch_paths_answer_json_errors() {
    let app = spawn_app().await;
    for path in [
        "/watch/nothing",
        "/watch/twizzle_stream_0123",
        "/watch/watch.js",
        "/watch/list.js/more",
        &format!("/watch/{STREAM_ID}/more"),
    ] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, 404, "GET {path}");
        assert!(
            answer.body["error"].is_string(),
            "GET {path}: {}",
            answer.body
        );
    }
    let answer = app.post("/watch/").await;
    assert_eq!(answer.status, 405);
    assert!(answer.body["error"].is_string());
    let answer = app.get("/watch").await;
    assert_eq!(answer.status, 308);
    assert_eq!(answer.headers.get("location").unwrap(), "/watch/");
}

/// `GET /` stays the short text welcome, and names the watch page.
#[actix_web::test]
async fn the_welcome_names_the_watch_page() {
    let app = spawn_app().await;
    let answer = app.get("/").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.as_str().unwrap().contains("/watch/"));
}
