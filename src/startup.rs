//! Builds the application: opens the data directory, starts the actors, binds
//! the listener and returns a server ready to run.

use std::io;
use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use actix_web::dev::Server;
use actix_web::middleware::{DefaultHeaders, Logger};
use actix_web::{web, App, HttpServer};
use twizzle_actors::gate::{Gate, GateSettings, Knock, Pass, Rate};
use twizzle_actors::health::Pulse;
use twizzle_actors::ids;
use twizzle_actors::metrics::Metrics;
use twizzle_actors::registry::{Registry, RegistrySettings, Shutdown};
use twizzle_actors::store::{nats, Stores};
use twizzle_actors::stream::StreamLimits;
use twizzle_actors::tokens::TokenActor;

use crate::client;
use crate::config::Settings;
use crate::connection;
use crate::error::ApiError;
use crate::routes::{self, AppState, ACTOR_DEADLINE};
use crate::wca::WcaClient;

/// How long a request refused for its client's rate waits before its 429:
/// a client flooding over a few kept-alive connections then gets a few
/// answers a second on each, and costs the server little, while a client
/// that merely went over its budget hardly notices.
pub const REFUSAL_PAUSE: Duration = Duration::from_millis(100);
/// How long a stopping server waits for connections to finish after every
/// socket was sent its close frame; then the rest are dropped. Short enough
/// that a stop takes well under two seconds even with thousands of sockets
/// whose clients never answer the close.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest query string read; longer ones are refused before routing.
const MAX_QUERY_BYTES: usize = 4096;
/// The socket endpoint's path, which the request log leaves to the session.
const SOCKET_PATH: &str = "^/v0/streams/[^/]+/socket$";
/// Query parameters whose values are secrets: only their tails reach the log.
const SECRET_PARAMS: [&str; 3] = ["twizzleAccessToken", "claimToken", "code"];

/// A built server: the listener is bound and the actors run.
pub struct Application {
    /// The port actually bound (useful when the settings asked for port 0).
    port: u16,
    /// The port of `GET /metrics`, if it is served.
    metrics_port: Option<u16>,
    /// The HTTP server, not yet awaited.
    server: Server,
    /// Stops the server cleanly.
    handle: AppHandle,
    /// The threads the actors run on; stopped with the server.
    arbiters: Arbiters,
}

/// Stops a running application cleanly, from a signal or a test.
#[derive(Clone)]
pub struct AppHandle {
    server: actix_web::dev::ServerHandle,
    registry: Addr<Registry>,
    /// The metrics server, stopped with the API's.
    metrics: Option<actix_web::dev::ServerHandle>,
}

impl AppHandle {
    /// Stops taking connections, closes every socket with 1001 `server
    /// restarting` (the streams stay on disk for the next start), and stops
    /// the server. Returns once it has stopped.
    pub async fn shutdown(&self) {
        self.server.pause().await;
        if let Err(e) = self.registry.send(Shutdown).await {
            log::warn!("the registry did not shut down: {e}");
        }
        self.server.stop(true).await;
        self.stop_metrics().await;
    }

    /// Stops the metrics server, if there is one.
    async fn stop_metrics(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.stop(false).await;
        }
    }
}

/// Arbiters that stop when dropped, so a stopped server leaves no threads behind.
struct Arbiters(Vec<Arbiter>);

impl Drop for Arbiters {
    fn drop(&mut self) {
        for arbiter in &self.0 {
            arbiter.stop();
        }
    }
}

/// The actors of a running server, each on a thread of its own kind.
pub struct Actors {
    /// Users, access tokens and claim tokens.
    pub tokens: Addr<TokenActor>,
    /// The directory of streams.
    pub registry: Addr<Registry>,
    /// Each client address's handshake and request budgets.
    pub gate: Addr<Gate>,
    /// One per stream thread: answers for it in the readiness check.
    pub pulses: Vec<Addr<Pulse>>,
    /// What they count.
    pub metrics: Arc<Metrics>,
    /// The threads they run on.
    arbiters: Arbiters,
}

impl Actors {
    /// Opens the stores in `settings.data_dir` and starts the token actor,
    /// the registry and the streams' threads.
    ///
    /// Fails only if what is kept cannot be read; a full or read-only disk
    /// still starts, and what needs a write answers 503 until it is fixed.
    pub fn start(settings: &Settings) -> io::Result<Actors> {
        Ok(Actors::start_with(
            settings,
            Stores::local(&settings.data_dir)?,
        ))
    }

    /// Starts the actors on `stores` rather than the data directory's.
    pub fn start_with(settings: &Settings, stores: Stores) -> Actors {
        let Stores {
            users,
            streams,
            engine,
        } = stores;
        let cores = thread::available_parallelism().map_or(2, |n| n.get());
        let token_arbiter = Arbiter::new();
        let registry_arbiter = Arbiter::new();
        let gate_arbiter = Arbiter::new();
        let stream_arbiters: Vec<Arbiter> = (0..cores).map(|_| Arbiter::new()).collect();

        let metrics = Metrics::with_engine(engine.unwrap_or_default());
        let mut token_actor =
            TokenActor::new(users, settings.claim_token_ttl).with_metrics(Arc::clone(&metrics));
        if let Some(secret) = &settings.wca.client_secret {
            token_actor = token_actor.with_sealing_secret(secret.expose().as_bytes());
        }
        let tokens = TokenActor::start_in_arbiter(&token_arbiter.handle(), move |_| token_actor);
        let registry = Registry::new(
            RegistrySettings {
                idle_timeout: settings.stream_idle_timeout,
                max_streams_per_user: settings.limits.max_streams_per_user,
                max_sockets: settings.limits.max_sockets,
                max_sender_sockets_per_stream: settings.limits.max_sender_sockets_per_stream,
                max_sockets_per_client: settings.limits.max_sockets_per_client,
                stream_limits: StreamLimits {
                    events_per_sec: settings.limits.sender_events_per_sec,
                    event_burst: settings.limits.sender_event_burst,
                    max_recording_bytes: settings.limits.max_recording_bytes,
                },
                recording_retention: settings.limits.recording_retention,
                metrics: Arc::clone(&metrics),
            },
            streams,
            stream_arbiters.iter().map(Arbiter::handle).collect(),
        )
        .with_users(tokens.clone())
        .with_node_lease(settings.node_lease);
        // The registry syncs its journal when a stream is created; on its own
        // thread that stalls nothing else.
        let registry = Registry::start_in_arbiter(&registry_arbiter.handle(), move |_| registry);
        let limits = &settings.limits;
        let gate = Gate::new(GateSettings {
            handshakes: Rate {
                per_sec: limits.handshakes_per_client_per_sec,
                burst: limits.handshake_burst,
            },
            requests: Rate {
                per_sec: limits.requests_per_client_per_sec,
                burst: limits.request_burst,
            },
        });
        // Every request asks the gate first: a thread of its own keeps that
        // one hop off the threads that do the work.
        let gate = Gate::start_in_arbiter(&gate_arbiter.handle(), move |_| gate);
        let pulses = stream_arbiters
            .iter()
            .map(|arbiter| Pulse::start_in_arbiter(&arbiter.handle(), |_| Pulse))
            .collect();
        Actors {
            tokens,
            registry,
            gate,
            pulses,
            metrics,
            arbiters: Arbiters(
                [token_arbiter, registry_arbiter, gate_arbiter]
                    .into_iter()
                    .chain(stream_arbiters)
                    .collect(),
            ),
        }
    }
}

impl Application {
    /// Starts the actors, then binds `settings.bind` and builds the HTTP
    /// server around them.
    ///
    /// Must run inside an actix system (`#[actix_web::main]` or `#[actix_web::test]`).
    pub async fn build(settings: Settings) -> io::Result<Application> {
        let stores = match &settings.nats_url {
            // Connected here, on the thread that runs the server, where
            // the client's connection task then runs; the actors use it
            // from their threads.
            Some(url) => Stores::nats(url)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?,
            None => Stores::local(&settings.data_dir)?,
        };
        Application::build_with(settings, stores, ACTOR_DEADLINE).await
    }

    /// [`Application::build`] on `stores` rather than the data directory's,
    /// with handlers that wait `deadline` for an actor rather than
    /// [`ACTOR_DEADLINE`]. For tests: a store of their own makes an actor
    /// slow, and a short deadline shows it without waiting seconds. No
    /// setting leads here.
    pub async fn build_with(
        settings: Settings,
        stores: Stores,
        deadline: Duration,
    ) -> io::Result<Application> {
        let actors = Actors::start_with(&settings, stores);
        if settings.wca.client_secret.is_none() {
            log::warn!("no WCA client secret is configured: sign-in will answer 503 (set TWIZZLE_WCA_APPLICATION_CLIENT_SECRET or _FILE)");
        }
        match connection::raise_open_file_limit() {
            Ok(limit) if (limit as usize) < settings.limits.max_sockets => log::warn!(
                "open-file limit {limit} is below --max-sockets {}: raise LimitNOFILE",
                settings.limits.max_sockets
            ),
            Ok(limit) => log::info!("open-file limit {limit}"),
            Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
        }
        let listener = TcpListener::bind(&settings.bind)?;
        let port = listener.local_addr()?.port();
        let dev_sign_in = settings.dev_sign_in(listener.local_addr()?.ip());
        let state = match &settings.nats_url {
            Some(url) => format!("state in NATS at {}", nats::redacted_url(url)),
            None => format!("data in {}", settings.data_dir.display()),
        };
        log::info!("listening on {} ({state})", listener.local_addr()?);
        if dev_sign_in {
            log::info!("development sign-in is on (no WCA client secret, not --prod, loopback only): GET /v0/auth/dev?name=NAME signs anyone on this machine in as NAME");
        }
        Self::serve(listener, port, settings, actors, deadline, dev_sign_in)
    }

    /// The HTTP server on `listener`, handing requests to `actors`; with
    /// the development sign-in if `dev_sign_in`.
    fn serve(
        listener: TcpListener,
        port: u16,
        settings: Settings,
        actors: Actors,
        deadline: Duration,
        dev_sign_in: bool,
    ) -> io::Result<Application> {
        let cores = thread::available_parallelism().map_or(2, |n| n.get());
        let Actors {
            tokens,
            registry,
            gate,
            pulses,
            metrics,
            arbiters,
        } = actors;
        let metrics_server = match &settings.metrics_bind {
            Some(bind) => Some(serve_metrics(bind, Arc::clone(&metrics))?),
            None => None,
        };
        let trusted = Arc::new(settings.trusted_proxies.clone());
        let state = web::Data::new(AppState {
            registry: registry.clone(),
            tokens,
            pulses,
            settings: settings.clone(),
            started: SystemTime::now(),
            deadline,
            metrics: Arc::clone(&metrics),
        });
        let wca_settings = settings.wca.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(WcaClient::new(wca_settings.clone())))
                .app_data(
                    web::QueryConfig::default()
                        .error_handler(|e, _| ApiError::BadQuery(e.to_string()).into()),
                )
                .wrap_fn({
                    let (gate, trusted) = (gate.clone(), Arc::clone(&trusted));
                    let metrics = Arc::clone(&metrics);
                    move |req, srv| {
                        use actix_web::dev::Service;
                        let client = client::of_request(&req, &trusted);
                        let knock = if is_socket_path(req.path()) {
                            Knock::Handshake
                        } else {
                            Knock::Request
                        };
                        let pass = gate.send(Pass { client, knock });
                        let call = srv.call(req);
                        let metrics = Arc::clone(&metrics);
                        async move {
                            match pass.await {
                                Ok(Ok(())) => call.await,
                                Ok(Err(refused)) => Err({
                                    // A flood on kept-alive connections gets
                                    // its answers slowly: a few a second per
                                    // connection, not as fast as it asks.
                                    actix_web::rt::time::sleep(REFUSAL_PAUSE).await;
                                    metrics.limit_hit(match knock {
                                        Knock::Handshake => "handshakes_per_client",
                                        Knock::Request => "requests_per_client",
                                    });
                                    ApiError::TooFast {
                                        limit: refused.limit,
                                        retry_after: refused.retry_after,
                                    }
                                }
                                .into()),
                                Err(e) => Err(ApiError::from(e).into()),
                            }
                        }
                    }
                })
                .wrap(DefaultHeaders::new().add(("Access-Control-Allow-Origin", "*")))
                .wrap(request_log(Arc::clone(&trusted)))
                .wrap_fn({
                    let metrics = Arc::clone(&metrics);
                    move |req, srv| {
                        use actix_web::dev::Service;
                        let route = req
                            .match_pattern()
                            .unwrap_or_else(|| "unmatched".to_owned());
                        let metrics = Arc::clone(&metrics);
                        let call = srv.call(req);
                        async move {
                            let answer = call.await;
                            let status = match &answer {
                                Ok(response) => response.status(),
                                Err(e) => e.as_response_error().status_code(),
                            };
                            metrics.http_request(&route, status.as_u16());
                            answer
                        }
                    }
                })
                // The outermost layer: its future is what a connection holds
                // while a request is handled, and, being the largest variant
                // of the connection's state, what it is sized by for as long
                // as it lives. Boxed, a WebSocket's connection is smaller by
                // the whole chain of middleware futures, which are freed once
                // the upgrade is answered.
                .wrap_fn(|req, srv| {
                    use actix_web::dev::Service;
                    let too_long = req.query_string().len() > MAX_QUERY_BYTES;
                    let fut = (!too_long).then(|| srv.call(req));
                    Box::pin(async move {
                        match fut {
                            Some(fut) => fut.await,
                            None => Err(ApiError::BadQuery(format!(
                                "longer than {MAX_QUERY_BYTES} bytes"
                            ))
                            .into()),
                        }
                    })
                })
                .configure(|cfg| {
                    if dev_sign_in {
                        routes::configure_dev_sign_in(cfg);
                    }
                })
                .configure(routes::configure)
        })
        .workers(cores)
        .on_connect(connection::on_connect)
        // Signals are ours: a clean stop closes the sockets first.
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs())
        // A WebSocket's response body ends when its session stops, with the
        // request's payload (the client's frames) still open. actix-http
        // then lingers by default, reading until the client ends the
        // connection or a second passes; but after a close handshake the
        // client waits for the server to end it (RFC 6455 §7.1.1), so every
        // socket took most of that second to close in the browser. Without
        // the linger the connection is flushed, shut down and dropped at
        // once; the session waits for the client's close first, so nothing
        // unread is left. The same goes for a plain request whose body a
        // handler left unread: none here reads a body, and a client that
        // sends a large one anyway may see a reset after the answer.
        .client_disconnect_timeout(Duration::ZERO)
        .listen(listener)?
        .run();
        let metrics_port = metrics_server.as_ref().map(|(_, port)| *port);
        let metrics = metrics_server.map(|(server, _)| {
            let handle = server.handle();
            actix_web::rt::spawn(server);
            handle
        });
        let handle = AppHandle {
            server: server.handle(),
            registry,
            metrics,
        };
        Ok(Application {
            port,
            metrics_port,
            server,
            handle,
            arbiters,
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port `GET /metrics` is served on, if it is.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    /// A handle to stop the server cleanly from elsewhere.
    pub fn handle(&self) -> AppHandle {
        self.handle.clone()
    }

    /// Serves until the server is stopped by its handle, or by SIGTERM or
    /// SIGINT, which stop it cleanly the same way.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let Application {
            server,
            handle,
            arbiters,
            ..
        } = self;
        let stopper = handle.clone();
        let signals = actix_web::rt::spawn(async move {
            if let Some(name) = stop_signal().await {
                log::info!("{name} received: closing sockets and stopping");
                handle.shutdown().await;
            }
        });
        let result = server.await;
        signals.abort();
        stopper.stop_metrics().await;
        drop(arbiters);
        log::info!("stopped");
        result
    }
}

/// One line per request, with secret query values cut to their tail.
fn request_log(trusted: Arc<Vec<IpAddr>>) -> Logger {
    Logger::new("%{client}xi %{request}xi %s %b %Dms")
        .custom_request_replace("client", move |req| {
            client::of_request(req, &trusted).to_string()
        })
        .custom_request_replace("request", |req| {
            format!(
                "{} {}",
                req.method(),
                redact_secrets(&req.uri().to_string())
            )
        })
        // A socket's request would be logged when the socket closes, and
        // its log state held all the while; the socket handler and the
        // session log sockets instead.
        .exclude_regex(SOCKET_PATH)
}

/// Serves `GET /metrics` on `bind`, apart from the API so that scrapes
/// pass no gate and the API's port exposes nothing of the server's state.
fn serve_metrics(bind: &str, metrics: Arc<Metrics>) -> io::Result<(Server, u16)> {
    let listener = TcpListener::bind(bind)?;
    let port = listener.local_addr()?.port();
    log::info!("metrics on {}", listener.local_addr()?);
    let server = HttpServer::new(move || {
        let metrics = Arc::clone(&metrics);
        App::new().route(
            "/metrics",
            web::get().to(move || {
                let text = metrics.encode();
                async move {
                    actix_web::HttpResponse::Ok()
                        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
                        .body(text)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(0)
    .listen(listener)?
    .run();
    Ok((server, port))
}

/// Whether `path` is a stream's socket endpoint (what [`SOCKET_PATH`] matches).
fn is_socket_path(path: &str) -> bool {
    path.strip_prefix("/v0/streams/")
        .and_then(|rest| rest.strip_suffix("/socket"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// Waits for SIGTERM or SIGINT; `None` if signals cannot be listened to.
async fn stop_signal() -> Option<&'static str> {
    use actix_web::rt::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            log::error!("cannot listen for SIGTERM and SIGINT: {e}");
            return None;
        }
    };
    let term = std::pin::pin!(term.recv());
    let int = std::pin::pin!(int.recv());
    match futures_util::future::select(term, int).await {
        futures_util::future::Either::Left(_) => Some("SIGTERM"),
        futures_util::future::Either::Right(_) => Some("SIGINT"),
    }
}

/// `uri` with the values of secret query parameters cut to their last four characters.
pub fn redact_secrets(uri: &str) -> String {
    let Some((path, query)) = uri.split_once('?') else {
        return uri.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if SECRET_PARAMS.contains(&name) => {
                format!("{name}={}", ids::redacted(value))
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_query_strings_are_redacted() {
        let token = "twizzle_access_token_0123456789abcdef0123456789abcdef";
        let line = redact_secrets(&format!("/v0/streams?twizzleAccessToken={token}&x=1"));
        assert_eq!(line, "/v0/streams?twizzleAccessToken=…cdef&x=1");
        assert_eq!(
            redact_secrets("/v0/claim?claimToken=claim_token_99aa"),
            "/v0/claim?claimToken=…99aa"
        );
        assert_eq!(redact_secrets("/v0/streams"), "/v0/streams");
    }
}
