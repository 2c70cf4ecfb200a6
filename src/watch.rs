//! The watch page: a small web app in plain HTML, CSS and JavaScript,
//! compiled into the binary, that lists the open streams and recordings
//! and shows one stream live or replays its recording. It talks to the
//! same API as any other client; the handlers here only hand out files.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse};

use crate::error::ApiError;
use twizzle_actors::ids::StreamId;

/// The policy of every watch page response. Scripts only from this server
/// and the cubing.js CDN (`https://cdn.cubing.net`, whose `<twisty-player>`
/// is an ES module that imports further modules from there), none inline;
/// styles only from this server (twisty-player styles its shadow DOM with
/// constructed style sheets, which need no source); fetches and sockets only
/// to this server (`'self'` covers `ws:`/`wss:` to the same host) and the
/// CDN; workers also from `blob:` (cubing.js wraps its cross-origin worker
/// in a `blob:` module that imports it); images also from `data:` and
/// `blob:` (three.js textures); nothing framed, no plugins, no `<base>`, no
/// forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     script-src 'self' https://cdn.cubing.net; \
     style-src 'self'; \
     img-src 'self' data: blob: https://cdn.cubing.net; \
     connect-src 'self' https://cdn.cubing.net; \
     worker-src 'self' blob: https://cdn.cubing.net; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const LIST_HTML: &str = include_str!("watch/list.html");
const STREAM_HTML: &str = include_str!("watch/stream.html");
const LIST_JS: &str = include_str!("watch/list.js");
const STREAM_JS: &str = include_str!("watch/stream.js");
const COMMON_JS: &str = include_str!("watch/common.js");
const WATCH_CSS: &str = include_str!("watch/watch.css");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Registers the watch page's paths on `cfg`; `resource` makes a path
/// answer 405 to other methods, as every API path does. The files come
/// before `/watch/{stream_id}`, which would match them too.
pub fn configure(
    cfg: &mut web::ServiceConfig,
    resource: fn(&str, actix_web::Route) -> actix_web::Resource,
) {
    cfg.service(resource("/watch", web::get().to(to_list)))
        .service(resource("/watch/", web::get().to(list_page)))
        .service(resource("/watch/list.js", web::get().to(list_js)))
        .service(resource("/watch/stream.js", web::get().to(stream_js)))
        .service(resource("/watch/common.js", web::get().to(common_js)))
        .service(resource("/watch/watch.css", web::get().to(watch_css)))
        .service(resource("/watch/{stream_id}", web::get().to(stream_page)));
}

/// A file of the page, with its type and the page's headers. `no-cache`:
/// a browser asks again each time, so a new release is seen at once.
fn file(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn to_list() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/watch/"))
        .finish()
}

async fn list_page() -> HttpResponse {
    file(HTML, LIST_HTML)
}

/// One stream's page. The page itself asks the API whether the stream is
/// open, ended with a recording, or unknown; only a path that cannot be a
/// stream ID is refused here.
async fn stream_page(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    match StreamId::parse(&path) {
        Some(_) => Ok(file(HTML, STREAM_HTML)),
        None => Err(ApiError::NoSuchEndpoint(format!("/watch/{path}"))),
    }
}

async fn list_js() -> HttpResponse {
    file(JAVASCRIPT, LIST_JS)
}

async fn stream_js() -> HttpResponse {
    file(JAVASCRIPT, STREAM_JS)
}

async fn common_js() -> HttpResponse {
    file(JAVASCRIPT, COMMON_JS)
}

async fn watch_css() -> HttpResponse {
    file(CSS, WATCH_CSS)
}
