//! The HTTP handlers. Each takes the actors' addresses from `web::Data`,
//! sends them a message or two, and turns the answers into a response.
//! Every message goes through [`AppState::ask`], which gives the actor a
//! deadline to answer by.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use actix_http::ws::Codec;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use futures_util::future::{join3, join_all};
use serde::{Deserialize, Serialize};
use serde_json::json;
use twizzle_actors::gate::Rate;
use twizzle_actors::health::{CheckWritable, Ping, Pulse};
use twizzle_actors::ids::{
    AccessToken, ClaimToken, DevName, PublicUserInfo, StreamId, ACCESS_TOKEN_PREFIX,
};
use twizzle_actors::metrics::Metrics;
use twizzle_actors::registry::{
    CreateStream, DeleteRecording, OpenSocket, ReadRecording, RecordingsBody, Registry,
    StreamInfoBody, StreamListBody,
};
use twizzle_actors::store::recording::line_of;
use twizzle_actors::store::StoreError;
use twizzle_actors::store::{Chunk, Cursor};
use twizzle_actors::tokens::{
    Authenticate, AuthenticatedUser, DevSignIn, RedeemClaim, SignIn, TokenActor,
};

use crate::client::ClientAddr;
use crate::config::Settings;
use crate::connection::{ConnectionFd, Cutoff};
use crate::error::ApiError;
use crate::inflow::{BoundedPayload, Inflow};
use crate::session::{SessionSetup, WsSession};
use crate::time::js_date_string;
use crate::wca::WcaClient;
use crate::ws_context::WsContext;

/// How long a handler waits for an actor's answer; past it the request is
/// answered 503 `server busy`, so that a stuck actor (a disk that hangs a
/// write, a flood of requests) costs a client seconds, not a hung request.
/// The message stays in the actor's mailbox and may still take effect,
/// as when a client gives up waiting.
pub const ACTOR_DEADLINE: Duration = Duration::from_secs(5);

/// How long the readiness check waits for each actor's answer.
pub const READINESS_DEADLINE: Duration = Duration::from_secs(1);

/// The WebSocket subprotocol of this API. A browser cannot set headers on a
/// WebSocket, so a sender may offer its access token as a second protocol:
/// `new WebSocket(url, ["twizzle.v0", token])`.
pub const SUBPROTOCOL: &str = "twizzle.v0";

/// What every handler may use: the actors and the settings. No state of its own.
pub struct AppState {
    /// Creates, lists and finds streams.
    pub registry: Addr<Registry>,
    /// Users, access tokens and claim tokens.
    pub tokens: Addr<TokenActor>,
    /// One per stream thread, for the readiness check.
    pub pulses: Vec<Addr<Pulse>>,
    /// The server's settings.
    pub settings: Settings,
    /// When the server started, for the liveness check.
    pub started: SystemTime,
    /// How long a handler waits for an actor: [`ACTOR_DEADLINE`], shorter
    /// only in tests.
    pub deadline: Duration,
    /// What the server counts, for `GET /metrics`.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Sends `msg` to `actor` and waits for the answer, at most
    /// [`AppState::deadline`]: past it, [`ApiError::Busy`].
    async fn ask<A, M>(&self, actor: &Addr<A>, msg: M) -> Result<M::Result, ApiError>
    where
        A: Actor + Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        ask_within(actor, msg, self.deadline).await
    }
}

/// Sends `msg` to `actor` and waits for the answer at most `deadline`.
async fn ask_within<A, M>(
    actor: &Addr<A>,
    msg: M,
    deadline: Duration,
) -> Result<M::Result, ApiError>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    Ok(actor.send(msg).timeout(deadline).await?)
}

/// Registers every endpoint on `cfg`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/", web::get().to(welcome)))
        .service(resource(
            "/v0/infra/liveness_check",
            web::get().to(liveness_check),
        ))
        .service(resource(
            "/v0/infra/readiness_check",
            web::get().to(readiness_check),
        ))
        .service(
            web::resource("/v0/streams")
                .route(web::get().to(list_streams))
                .route(web::post().to(create_stream))
                .default_service(web::to(method_not_allowed)),
        )
        .service(resource(
            "/v0/streams/{stream_id}",
            web::get().to(stream_info),
        ))
        .service(
            web::resource("/v0/streams/{stream_id}/recording")
                .route(web::get().to(recording))
                .route(web::delete().to(delete_recording))
                .default_service(web::to(method_not_allowed)),
        )
        .service(resource("/v0/recordings", web::get().to(list_recordings)))
        .service(resource(
            "/v0/streams/{stream_id}/socket",
            web::get().to(socket),
        ))
        .service(resource(
            "/v0/auth/wca/oauth_callback",
            web::get().to(oauth_callback),
        ))
        .service(resource("/v0/claim", web::post().to(claim)))
        .configure(|cfg| crate::watch::configure(cfg, resource))
        .default_service(web::to(not_found));
}

fn resource(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

/// The answer to a CORS preflight, on any path.
fn preflight() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, POST, DELETE, OPTIONS",
        ))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Authorization, Content-Type",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "86400"))
        .finish()
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    match *req.method() {
        Method::OPTIONS => Ok(preflight()),
        _ => Err(ApiError::MethodNotAllowed),
    }
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    match *req.method() {
        Method::OPTIONS => Ok(preflight()),
        _ => Err(ApiError::NoSuchEndpoint(req.path().to_owned())),
    }
}

async fn welcome() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("twizzle stream broker (api.twizzle.net): the API server behind twizzle.net/stream. Watch the streams at /watch/; the API is under /v0/ (e.g. /v0/streams).\n")
}

async fn liveness_check(state: web::Data<AppState>) -> HttpResponse {
    let start_ms = state
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let uptime = SystemTime::now()
        .duration_since(state.started)
        .map_or(0, |d| d.as_secs());
    HttpResponse::Ok().json(json!({
        "startTimestamp": start_ms,
        "startTimestampHuman": js_date_string(state.started),
        "uptimeSeconds": uptime,
    }))
}

/// A stream as the API shows it.
#[derive(Serialize)]
struct StreamInfo {
    #[serde(rename = "streamID")]
    stream_id: StreamId,
    senders: Vec<PublicUserInfo>,
    /// Viewer sockets open now.
    viewers: usize,
    /// Whether a sender socket is open now.
    live: bool,
    /// When it was created, in ms since the Unix epoch.
    #[serde(rename = "createdAt")]
    created_at: u64,
}

/// Ready: every actor answers within [`READINESS_DEADLINE`] and every store
/// takes writes. Its 503 is shaped like its 200, `{"ready": false,
/// "reason"}`, not as an error: it is the check's answer, not a failure.
async fn readiness_check(state: web::Data<AppState>) -> HttpResponse {
    match not_ready(&state).await {
        None => HttpResponse::Ok().json(json!({ "ready": true })),
        Some(reason) => {
            log::debug!("not ready: {reason}");
            HttpResponse::ServiceUnavailable().json(json!({ "ready": false, "reason": reason }))
        }
    }
}

/// Why the server is not ready, if it is not: the first actor that did not
/// answer in time, else the first store that cannot be written. The actors
/// are asked at once, so the check takes one deadline at most.
async fn not_ready(state: &AppState) -> Option<&'static str> {
    let (tokens, registry, pulses) = join3(
        ask_within(&state.tokens, CheckWritable, READINESS_DEADLINE),
        ask_within(&state.registry, CheckWritable, READINESS_DEADLINE),
        join_all(
            state
                .pulses
                .iter()
                .map(|pulse| ask_within(pulse, Ping, READINESS_DEADLINE)),
        ),
    )
    .await;
    let unanswered = |e: ApiError, busy, stopped| match e {
        ApiError::Busy => Some(busy),
        _ => Some(stopped),
    };
    let tokens = match tokens {
        Ok(writable) => writable,
        Err(e) => return unanswered(e, "token actor busy", "token actor stopped"),
    };
    let registry = match registry {
        Ok(writable) => writable,
        Err(e) => return unanswered(e, "registry busy", "registry stopped"),
    };
    if let Some(e) = pulses.into_iter().find_map(Result::err) {
        return unanswered(e, "stream thread busy", "stream thread stopped");
    }
    match tokens.and(registry) {
        Ok(()) => None,
        Err(StoreError::Failed(_)) => Some("storage failed"),
        Err(e) => Some(e.public_message()),
    }
}

async fn stream_info(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = StreamId::parse(&path).ok_or(ApiError::UnknownStream)?;
    let body = state
        .ask(&state.registry, StreamInfoBody { id })
        .await?
        .ok_or(ApiError::UnknownStream)?;
    Ok(HttpResponse::Ok()
        .insert_header(header::ContentType::json())
        .body(body))
}

/// Events one read of a recording download fetches.
const RECORDING_CHUNK: usize = 512;

/// A stream's recording as NDJSON, read and sent a chunk at a time, so a
/// long recording is never in memory whole and a slow client holds only
/// the chunk it is being sent.
async fn recording(
    path: web::Path<String>,
    since: web::Query<SinceQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let after = since.since()?.unwrap_or(0);
    let id = StreamId::parse(&path).ok_or(ApiError::UnknownStream)?;
    let first = read_recording(&state, &id, after, Cursor::default()).await?;
    let chunks = futures_util::stream::unfold(Some(first), move |next| {
        let (state, id) = (state.clone(), id.clone());
        async move {
            let chunk = next?;
            let mut body = String::new();
            let mut after = after;
            for event in &chunk.events {
                body.push_str(&line_of(event));
                after = event.offset;
            }
            let then = if chunk.done {
                None
            } else {
                match read_recording(&state, &id, after, chunk.next).await {
                    Ok(chunk) => Some(chunk),
                    Err(e) => {
                        // Too late for a status: the download ends short,
                        // which its client sees as a cut-off body.
                        log::warn!("stream {id}: recording download cut short: {e}");
                        return Some((Err(actix_web::error::ErrorServiceUnavailable(e)), None));
                    }
                }
            };
            Some((Ok::<_, actix_web::Error>(web::Bytes::from(body)), then))
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(chunks))
}

async fn read_recording(
    state: &AppState,
    id: &StreamId,
    after: u64,
    cursor: Cursor,
) -> Result<Chunk, ApiError> {
    let read = ReadRecording {
        id: id.clone(),
        after,
        cursor,
        max: RECORDING_CHUNK,
    };
    Ok(state.ask(&state.registry, read).await??)
}

async fn delete_recording(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = access_token(&req, &query).ok_or(ApiError::MissingAccessToken)?;
    let user = authenticate(&state, token).await?;
    let id = StreamId::parse(&path).ok_or(ApiError::UnknownStream)?;
    let delete = DeleteRecording { id, user: user.id };
    state.ask(&state.registry, delete).await??;
    Ok(HttpResponse::NoContent().finish())
}

async fn list_recordings(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = state.ask(&state.registry, RecordingsBody).await??;
    Ok(HttpResponse::Ok()
        .insert_header(header::ContentType::json())
        .body(body))
}

async fn list_streams(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = state.ask(&state.registry, StreamListBody).await?;
    Ok(HttpResponse::Ok()
        .insert_header(header::ContentType::json())
        .body(body))
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(rename = "twizzleAccessToken")]
    access_token: Option<String>,
}

/// `?since=N` of a socket or a recording: the offset of the last event
/// the client has.
#[derive(Deserialize)]
struct SinceQuery {
    since: Option<String>,
}

impl SinceQuery {
    /// The offset, if one was given; 400 if it is not a non-negative integer.
    fn since(&self) -> Result<Option<u64>, ApiError> {
        match self.since.as_deref() {
            None => Ok(None),
            Some(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                text.parse().map(Some).map_err(|_| ApiError::BadSince)
            }
            Some(_) => Err(ApiError::BadSince),
        }
    }
}

/// The access token from `?twizzleAccessToken=` or `Authorization: Bearer`:
/// `None` if there is none, an error if it cannot be one.
fn access_token(req: &HttpRequest, query: &TokenQuery) -> Option<Result<AccessToken, ApiError>> {
    let text = match query.access_token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => token,
        None => bearer(req)?,
    };
    Some(AccessToken::parse(text).ok_or(ApiError::InvalidAccessToken))
}

/// The protocols a client offers in `Sec-WebSocket-Protocol`, over every
/// line of that header (a client may split its list across several).
fn offered_protocols(req: &HttpRequest) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
}

/// The access token offered as a subprotocol next to [`SUBPROTOCOL`]: the
/// first offered protocol that starts like an access token. Without
/// `twizzle.v0` the offer is not this API's, and nothing in it is read.
fn subprotocol_token(req: &HttpRequest) -> Option<&str> {
    if !offered_protocols(req).any(|protocol| protocol == SUBPROTOCOL) {
        return None;
    }
    offered_protocols(req).find(|protocol| protocol.starts_with(ACCESS_TOKEN_PREFIX))
}

/// A socket's access token. When several are given, the first of these
/// wins and the others are not looked at: the query parameter, then the
/// `Authorization: Bearer` header, then the subprotocol.
fn socket_token(req: &HttpRequest, query: &TokenQuery) -> Option<Result<AccessToken, ApiError>> {
    access_token(req, query).or_else(|| {
        let text = subprotocol_token(req)?;
        Some(AccessToken::parse(text).ok_or(ApiError::InvalidAccessToken))
    })
}

/// The token of an `Authorization: Bearer` header.
fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn authenticate(
    state: &AppState,
    token: Result<AccessToken, ApiError>,
) -> Result<AuthenticatedUser, ApiError> {
    let access_token = token?;
    Ok(state
        .ask(&state.tokens, Authenticate { access_token })
        .await??)
}

async fn create_stream(
    req: HttpRequest,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = access_token(&req, &query).ok_or(ApiError::MissingAccessToken)?;
    let user = authenticate(&state, token).await?;
    let owner = user.info.clone();
    let summary = state.ask(&state.registry, CreateStream { owner }).await??;
    let stream = StreamInfo {
        stream_id: summary.id,
        senders: vec![user.info],
        viewers: 0,
        live: false,
        created_at: summary.created_ms,
    };
    Ok(HttpResponse::Ok().json(json!({
        "streamID": stream.stream_id,
        "senders": stream.senders,
        "stream": stream,
    })))
}

/// The socket endpoint. The request log leaves it out (a socket's entry
/// would wait for the socket to close); refusals are logged here, and the
/// session logs each socket that opens and closes.
async fn socket(
    req: HttpRequest,
    payload: web::Payload,
    path: web::Path<String>,
    query: web::Query<TokenQuery>,
    since: web::Query<SinceQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let answer = match (StreamId::parse(&path), since.since()) {
        (_, Err(e)) => Err(e),
        (Some(stream_id), Ok(since)) => {
            open_socket(&req, payload, stream_id, &query, since, &state).await
        }
        (None, Ok(_)) => Err(ApiError::UnknownStream),
    };
    if let Err(e) = &answer {
        log::info!(
            "GET {} {} ({e})",
            req.path(),
            actix_web::ResponseError::status_code(e).as_u16()
        );
    }
    answer
}

/// Finds the socket's user, admits the socket (the registry is asked
/// once), then upgrades. A refusal after admission drops the ticket, which
/// frees the slot again.
async fn open_socket(
    req: &HttpRequest,
    payload: web::Payload,
    stream_id: StreamId,
    query: &TokenQuery,
    since: Option<u64>,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let user_id = match socket_token(req, query) {
        Some(token) => Some(authenticate(state, token).await?.id),
        None => None,
    };
    // The gate, which every request passes first, found the client address.
    let client = req
        .extensions()
        .get::<ClientAddr>()
        .map(|client| client.0)
        .or_else(|| req.peer_addr().map(|peer| peer.ip()))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let admission = state
        .ask(
            &state.registry,
            OpenSocket {
                stream_id,
                user_id,
                client,
            },
        )
        .await??;
    ws::handshake(req).map_err(|_| ApiError::NotAnUpgrade)?;
    let limits = &state.settings.limits;
    let inflow = Inflow::new(limits.max_frame_bytes);
    let session = WsSession::new(SessionSetup {
        admission,
        since,
        heartbeat: state.settings.heartbeat,
        outbox_capacity: limits.outbox_capacity(),
        cutoff: req
            .conn_data::<ConnectionFd>()
            .map(|fd| Arc::new(Cutoff::new(fd.0))),
        inflow: inflow.clone(),
        metrics: Arc::clone(&state.metrics),
        sender_rate: Rate {
            per_sec: limits.sender_events_per_sec,
            burst: limits.sender_event_burst,
        },
    });
    let codec = Codec::new().max_size(limits.max_frame_bytes);
    let body = WsContext::create(session, BoundedPayload::new(payload, inflow), codec);
    let mut response = ws::handshake(req)
        .map_err(|_| ApiError::NotAnUpgrade)?
        .streaming(body);
    // The answer names `twizzle.v0` whenever it was offered: a browser fails
    // a socket whose offered protocols go unanswered. It is set here rather
    // than by `WsResponseBuilder::protocols`, which reads only the first
    // header line, so that the answer agrees with `subprotocol_token`, and
    // so that nothing the client sent (its token least of all) is echoed.
    if offered_protocols(req).any(|protocol| protocol == SUBPROTOCOL) {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(response)
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
}

async fn oauth_callback(
    query: web::Query<CallbackQuery>,
    state: web::Data<AppState>,
    wca: web::Data<WcaClient>,
) -> Result<HttpResponse, ApiError> {
    if !wca.configured() {
        return Err(ApiError::SignInNotConfigured);
    }
    let code = query
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or(ApiError::MissingCode)?;
    let profile = wca.profile(code).await.map_err(|e| {
        log::warn!("WCA sign-in failed: {e}");
        ApiError::WcaFailed
    })?;
    let claim_token = state.ask(&state.tokens, SignIn { profile }).await??;
    Ok(claim_redirect(&state, &claim_token))
}

/// The answer to a sign-in: a redirect to the client app with the claim
/// token added to its query.
fn claim_redirect(state: &AppState, claim_token: &ClaimToken) -> HttpResponse {
    let target = with_query_param(
        &state.settings.client_app_url,
        "claimToken",
        claim_token.expose(),
    );
    log::info!("sign-in: claim token {claim_token} issued");
    HttpResponse::Found()
        .insert_header((header::LOCATION, target))
        .finish()
}

/// Registers the development sign-in, `GET /v0/auth/dev?name=NAME`; only
/// where [`Settings::dev_sign_in`] allows it. Elsewhere the path is unknown
/// (404) like any other.
pub fn configure_dev_sign_in(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v0/auth/dev", web::get().to(dev_sign_in)));
}

#[derive(Deserialize)]
struct DevSignInQuery {
    name: Option<String>,
}

/// Signs in the development user `name` (found or created) and answers as
/// the OAuth callback does.
async fn dev_sign_in(
    query: web::Query<DevSignInQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let text = query.into_inner().name.unwrap_or_default();
    let name = DevName::parse(&text).map_err(ApiError::BadDevName)?;
    let claim_token = state.ask(&state.tokens, DevSignIn { name }).await??;
    Ok(claim_redirect(&state, &claim_token))
}

/// `url` with `name=value` added to its query, before any fragment.
/// `value` must need no escaping (the tokens are hex).
fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let separator = match base.split_once('?') {
        Some((_, "")) => "",
        Some((_, query)) if query.ends_with('&') => "",
        Some(_) => "&",
        None => "?",
    };
    let mut out = format!("{base}{separator}{name}={value}");
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

#[derive(Deserialize)]
struct ClaimQuery {
    #[serde(rename = "claimToken")]
    claim_token: Option<String>,
}

async fn claim(
    query: web::Query<ClaimQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let text = query
        .into_inner()
        .claim_token
        .filter(|c| !c.is_empty())
        .ok_or(ApiError::MissingClaimToken)?;
    let claim_token = ClaimToken::parse(&text).ok_or(ApiError::InvalidClaimToken)?;
    let claimed = state
        .ask(&state.tokens, RedeemClaim { claim_token })
        .await??;
    Ok(HttpResponse::Ok().json(json!({
        "twizzleAccessToken": claimed.access_token.expose(),
        "userInfo": claimed.user,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_token_goes_into_the_query_before_the_fragment() {
        assert_eq!(
            with_query_param("http://localhost:1234/", "claimToken", "c"),
            "http://localhost:1234/?claimToken=c"
        );
        assert_eq!(
            with_query_param("https://x/stream/?a=1", "claimToken", "c"),
            "https://x/stream/?a=1&claimToken=c"
        );
        assert_eq!(
            with_query_param("https://x/?", "claimToken", "c"),
            "https://x/?claimToken=c"
        );
        assert_eq!(
            with_query_param("https://x/#top", "claimToken", "c"),
            "https://x/?claimToken=c#top"
        );
    }
}
