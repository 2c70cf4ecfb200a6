//! Settings: one typed struct, filled from flags with environment variables behind them.
//!
//! Each setting is `--flag VALUE` (or `--flag=VALUE`), else its `TWIZZLE_…`
//! variable, else its default; `--prod` switches to the production defaults.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The WCA's OAuth client ID for development (localhost redirect).
pub const DEV_WCA_CLIENT_ID: &str = "3GaLUmFKGG-61B1KTmkJnu2NWNbCmuKANvRuAcwKM-E";
/// The WCA's OAuth client ID for api.twizzle.net.
pub const PROD_WCA_CLIENT_ID: &str = "bnd4XCq3i0e4OesB_ML8YuuwIFLdIhQ19aXDv8su3p0";

/// The systemd credential (`LoadCredential=`) the WCA client secret is read
/// from when neither the secret nor a secret file is set.
pub const CREDENTIAL_NAME: &str = "wca-client-secret";

/// A value that must never be shown whole: its `Debug` shows only the tail.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", twizzle_actors::ids::redacted(&self.0))
    }
}

/// How the server talks to the WCA for sign-in.
#[derive(Debug, Clone)]
pub struct WcaSettings {
    /// The OAuth client secret; without it, sign-in answers 503.
    pub client_secret: Option<Secret>,
    /// The OAuth client ID.
    pub client_id: String,
    /// `https://www.worldcubeassociation.org`, or a fake WCA in tests (no trailing slash).
    pub origin: String,
    /// The redirect URI registered with the WCA for this server's callback.
    pub redirect_uri: String,
}

/// The limits that keep one client from costing anyone else anything.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket frame accepted; a larger one closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// Events per second one sender may keep up on one stream, over all
    /// its sockets there.
    pub sender_events_per_sec: f64,
    /// Events one sender may send in a burst on one stream.
    pub sender_event_burst: f64,
    /// Unsent events queued for one socket before it is dropped.
    pub max_queued_events: usize,
    /// Open streams one user may have.
    pub max_streams_per_user: usize,
    /// Open sockets over the whole server.
    pub max_sockets: usize,
    /// Sender sockets one stream takes at once.
    pub max_sender_sockets_per_stream: usize,
    /// Bytes one stream's recording may grow to; past it the stream goes on
    /// unrecorded (its replay is still kept).
    pub max_recording_bytes: u64,
    /// How long the recordings of ended streams are kept; zero keeps none.
    pub recording_retention: Duration,
    /// Open sockets from one client address.
    pub max_sockets_per_client: usize,
    /// WebSocket handshakes per second from one client address.
    pub handshakes_per_client_per_sec: f64,
    /// WebSocket handshakes one client address may make in a burst.
    pub handshake_burst: f64,
    /// HTTP requests per second (sockets aside) from one client address.
    pub requests_per_client_per_sec: f64,
    /// HTTP requests one client address may make in a burst.
    pub request_burst: f64,
}

impl Limits {
    /// The capacity of a socket's outbox: the queued-event limit, plus room
    /// for one sender's burst (at most the limit again). A burst the rate
    /// limit lets through can land in an outbox faster than a busy worker
    /// thread drains it; that must not cost an honest viewer its socket.
    /// Bounded either way, so a client that stops reading costs at most this
    /// many events of memory before it is dropped.
    pub fn outbox_capacity(&self) -> usize {
        let burst = self.sender_event_burst.min(self.max_queued_events as f64) as usize;
        self.max_queued_events.saturating_add(burst)
    }
}

/// Everything the server is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free one.
    pub bind: String,
    /// Where users, tokens and recordings live.
    pub data_dir: PathBuf,
    /// Sign-in with the WCA.
    pub wca: WcaSettings,
    /// Where the browser goes after sign-in, with `claimToken` added.
    pub client_app_url: String,
    /// How long a stream lives without a connected sender.
    pub stream_idle_timeout: Duration,
    /// How long a claim token may wait to be redeemed.
    pub claim_token_ttl: Duration,
    /// How often sockets are pinged; three silent intervals close a socket.
    pub heartbeat: Duration,
    /// Whether the production defaults are in force.
    pub prod: bool,
    /// Per-client and server-wide limits.
    pub limits: Limits,
    /// Peers whose last `X-Forwarded-For` hop is taken as the client address.
    pub trusted_proxies: Vec<IpAddr>,
    /// Where `GET /metrics` is served; `None` serves none.
    pub metrics_bind: Option<String>,
    /// The NATS server(s) whose JetStream keeps the state instead of
    /// `data_dir` (cluster mode); `None` keeps it in `data_dir`.
    pub nats_url: Option<String>,
    /// In cluster mode, how long a node's presence lease lasts unrefreshed:
    /// a node killed with -9 has no sockets after this.
    pub node_lease: Duration,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run the server with these settings.
    Run(Box<Settings>),
    /// Print this help and exit.
    Help(String),
}

/// A setting that could not be used; the message says which and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One setting: its flag, its variable, its defaults and its help line.
///
/// The defaults are text, as a user would give them, so that `--help` shows
/// them as they are and they are checked by the same code as a user's value.
#[derive(Debug)]
pub struct Setting {
    /// The flag without its `--`.
    pub flag: &'static str,
    /// The environment variable read when the flag is not given.
    pub var: &'static str,
    /// The default without `--prod`; empty for none.
    pub dev: &'static str,
    /// The default with `--prod`; empty for none.
    pub prod: &'static str,
    /// The line `--help` shows for it.
    pub help: &'static str,
}

/// The address to listen on.
pub const BIND: Setting = Setting {
    flag: "bind",
    var: "TWIZZLE_BIND",
    dev: "127.0.0.1:3337",
    prod: "127.0.0.1:3337",
    help: "listen address",
};

/// Where users, tokens and recordings are kept.
pub const DATA_DIR: Setting = Setting {
    flag: "data-dir",
    var: "TWIZZLE_DATA_DIR",
    dev: "./data",
    prod: "./data",
    help: "data directory (users, tokens, recordings)",
};

/// The WCA OAuth client secret itself.
pub const WCA_APPLICATION_CLIENT_SECRET: Setting = Setting {
    flag: "wca-application-client-secret",
    var: "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET",
    dev: "",
    prod: "",
    help: "WCA OAuth client secret; without it sign-in answers 503",
};

/// A file holding the WCA OAuth client secret, so it need not be in the environment.
pub const WCA_APPLICATION_CLIENT_SECRET_FILE: Setting = Setting {
    flag: "wca-application-client-secret-file",
    var: "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET_FILE",
    dev: "",
    prod: "",
    help: "a file holding the WCA OAuth client secret",
};

/// The WCA OAuth client ID; development and production are registered apart.
pub const WCA_CLIENT_ID: Setting = Setting {
    flag: "wca-client-id",
    var: "TWIZZLE_WCA_CLIENT_ID",
    dev: DEV_WCA_CLIENT_ID,
    prod: PROD_WCA_CLIENT_ID,
    help: "WCA OAuth client ID",
};

/// The WCA's origin; a fake WCA in tests.
pub const WCA_ORIGIN: Setting = Setting {
    flag: "wca-origin",
    var: "TWIZZLE_WCA_ORIGIN",
    dev: "https://www.worldcubeassociation.org",
    prod: "https://www.worldcubeassociation.org",
    help: "WCA origin",
};

/// The redirect URI registered with the WCA.
pub const OAUTH_REDIRECT_URI: Setting = Setting {
    flag: "oauth-redirect-uri",
    var: "TWIZZLE_OAUTH_REDIRECT_URI",
    dev: "http://localhost:3337/v0/auth/wca/oauth_callback",
    prod: "https://api.twizzle.net/v0/auth/wca/oauth_callback",
    help: "OAuth redirect URI",
};

/// Where the browser returns after sign-in.
pub const CLIENT_APP_URL: Setting = Setting {
    flag: "client-app-url",
    var: "TWIZZLE_CLIENT_APP_URL",
    dev: "http://localhost:1234/",
    prod: "https://twizzle.net/stream/",
    help: "client app URL the browser returns to after sign-in",
};

/// How long a stream outlives its last sender.
pub const STREAM_IDLE_TIMEOUT_SECS: Setting = Setting {
    flag: "stream-idle-timeout-secs",
    var: "TWIZZLE_STREAM_IDLE_TIMEOUT_SECS",
    dev: "600",
    prod: "600",
    help: "a stream with no sender for this long ends",
};

/// How long a claim token may wait to be redeemed.
pub const CLAIM_TOKEN_TTL_SECS: Setting = Setting {
    flag: "claim-token-ttl-secs",
    var: "TWIZZLE_CLAIM_TOKEN_TTL_SECS",
    dev: "600",
    prod: "600",
    help: "claim token lifetime",
};

/// How often sockets are pinged.
pub const HEARTBEAT_SECS: Setting = Setting {
    flag: "heartbeat-secs",
    var: "TWIZZLE_HEARTBEAT_SECS",
    dev: "10",
    prod: "10",
    help: "ping interval; a socket silent for 3 intervals is closed",
};

/// The largest WebSocket frame accepted.
pub const MAX_FRAME_BYTES: Setting = Setting {
    flag: "max-frame-bytes",
    var: "TWIZZLE_MAX_FRAME_BYTES",
    dev: "8192",
    prod: "8192",
    help: "largest WebSocket frame (close 1009 above)",
};

/// The events per second a sender socket may keep up.
pub const SENDER_EVENTS_PER_SEC: Setting = Setting {
    flag: "sender-events-per-sec",
    var: "TWIZZLE_SENDER_EVENTS_PER_SEC",
    dev: "200",
    prod: "200",
    help: "events per second one sender may keep up on one stream, over all its sockets",
};

/// The events a sender socket may send in a burst.
pub const SENDER_EVENT_BURST: Setting = Setting {
    flag: "sender-event-burst",
    var: "TWIZZLE_SENDER_EVENT_BURST",
    dev: "400",
    prod: "400",
    help: "events one sender may send in a burst on one stream",
};

/// The unsent events queued for one socket before it is dropped.
pub const MAX_QUEUED_EVENTS: Setting = Setting {
    flag: "max-queued-events",
    var: "TWIZZLE_MAX_QUEUED_EVENTS",
    dev: "256",
    prod: "256",
    help: "unsent events queued for one socket before it is dropped",
};

/// The open streams one user may have.
pub const MAX_STREAMS_PER_USER: Setting = Setting {
    flag: "max-streams-per-user",
    var: "TWIZZLE_MAX_STREAMS_PER_USER",
    dev: "10",
    prod: "10",
    help: "open streams per user (429 above)",
};

/// The open sockets over the whole server.
pub const MAX_SOCKETS: Setting = Setting {
    flag: "max-sockets",
    var: "TWIZZLE_MAX_SOCKETS",
    dev: "100000",
    prod: "100000",
    help: "open sockets in all (503 above)",
};

/// Sender sockets one stream takes at once.
pub const MAX_SENDER_SOCKETS_PER_STREAM: Setting = Setting {
    flag: "max-sender-sockets-per-stream",
    var: "TWIZZLE_MAX_SENDER_SOCKETS_PER_STREAM",
    dev: "4",
    prod: "4",
    help: "sender sockets one stream takes at once (429 above)",
};

/// Bytes one stream's recording may grow to.
pub const MAX_RECORDING_BYTES: Setting = Setting {
    flag: "max-recording-bytes",
    var: "TWIZZLE_MAX_RECORDING_BYTES",
    dev: "67108864",
    prod: "67108864",
    help: "bytes recorded for one stream; past it the stream goes on unrecorded",
};

/// How long the recordings of ended streams are kept.
pub const RECORDING_RETENTION_DAYS: Setting = Setting {
    flag: "recording-retention-days",
    var: "TWIZZLE_RECORDING_RETENTION_DAYS",
    dev: "30",
    prod: "30",
    help: "days the recordings of ended streams are kept (0: none past the end)",
};

/// Sockets one client address may hold open at once.
pub const MAX_SOCKETS_PER_CLIENT: Setting = Setting {
    flag: "max-sockets-per-client",
    var: "TWIZZLE_MAX_SOCKETS_PER_CLIENT",
    dev: "256",
    prod: "256",
    help: "open sockets from one client address (429 above)",
};

/// WebSocket handshakes per second one client address may keep up.
pub const HANDSHAKES_PER_CLIENT_PER_SEC: Setting = Setting {
    flag: "handshakes-per-client-per-sec",
    var: "TWIZZLE_HANDSHAKES_PER_CLIENT_PER_SEC",
    dev: "20",
    prod: "20",
    help: "WebSocket handshakes per second from one client address (429 above)",
};

/// WebSocket handshakes one client address may make in a burst.
pub const HANDSHAKE_BURST: Setting = Setting {
    flag: "handshake-burst",
    var: "TWIZZLE_HANDSHAKE_BURST",
    dev: "100",
    prod: "100",
    help: "WebSocket handshakes one client address may make in a burst",
};

/// HTTP API requests per second one client address may keep up.
pub const REQUESTS_PER_CLIENT_PER_SEC: Setting = Setting {
    flag: "requests-per-client-per-sec",
    var: "TWIZZLE_REQUESTS_PER_CLIENT_PER_SEC",
    dev: "50",
    prod: "50",
    help: "HTTP requests per second from one client address, sockets aside (429 above)",
};

/// HTTP API requests one client address may make in a burst.
pub const REQUEST_BURST: Setting = Setting {
    flag: "request-burst",
    var: "TWIZZLE_REQUEST_BURST",
    dev: "200",
    prod: "200",
    help: "HTTP requests one client address may make in a burst",
};

/// The proxies whose `X-Forwarded-For` names the client.
pub const TRUSTED_PROXIES: Setting = Setting {
    flag: "trusted-proxies",
    var: "TWIZZLE_TRUSTED_PROXIES",
    dev: "127.0.0.1,::1",
    prod: "127.0.0.1,::1",
    help: "comma-separated proxy addresses whose last X-Forwarded-For hop is the client",
};

/// Where the Prometheus metrics are served.
pub const METRICS_BIND: Setting = Setting {
    flag: "metrics-bind",
    var: "TWIZZLE_METRICS_BIND",
    dev: "127.0.0.1:9337",
    prod: "127.0.0.1:9337",
    help: "address GET /metrics is served on; off turns it off",
};

/// The NATS server(s) whose JetStream keeps the state (cluster mode).
pub const NATS_URL: Setting = Setting {
    flag: "nats-url",
    var: "TWIZZLE_NATS_URL",
    dev: "",
    prod: "",
    help: "NATS URL(s), comma-separated; state in its JetStream instead of the data directory",
};

/// How long a node's presence lease lasts unrefreshed (cluster mode).
pub const NODE_LEASE_SECS: Setting = Setting {
    flag: "node-lease-secs",
    var: "TWIZZLE_NODE_LEASE_SECS",
    dev: "30",
    prod: "30",
    help: "cluster mode: a node silent this long counts as having no sockets",
};

/// Every setting, in the order `--help` lists them; the flags a command line may use.
pub const ALL: &[&Setting] = &[
    &BIND,
    &DATA_DIR,
    &WCA_APPLICATION_CLIENT_SECRET,
    &WCA_APPLICATION_CLIENT_SECRET_FILE,
    &WCA_CLIENT_ID,
    &WCA_ORIGIN,
    &OAUTH_REDIRECT_URI,
    &CLIENT_APP_URL,
    &STREAM_IDLE_TIMEOUT_SECS,
    &CLAIM_TOKEN_TTL_SECS,
    &HEARTBEAT_SECS,
    &MAX_FRAME_BYTES,
    &SENDER_EVENTS_PER_SEC,
    &SENDER_EVENT_BURST,
    &MAX_QUEUED_EVENTS,
    &MAX_STREAMS_PER_USER,
    &MAX_SOCKETS,
    &MAX_SENDER_SOCKETS_PER_STREAM,
    &MAX_RECORDING_BYTES,
    &RECORDING_RETENTION_DAYS,
    &MAX_SOCKETS_PER_CLIENT,
    &HANDSHAKES_PER_CLIENT_PER_SEC,
    &HANDSHAKE_BURST,
    &REQUESTS_PER_CLIENT_PER_SEC,
    &REQUEST_BURST,
    &TRUSTED_PROXIES,
    &METRICS_BIND,
    &NATS_URL,
    &NODE_LEASE_SECS,
];

/// The `--help` text.
pub fn usage() -> String {
    let mut text = String::from(
        "twizzle-api-server: the API server behind twizzle.net/stream\n\n\
         Usage: twizzle-api-server [--prod] [--help] [--SETTING VALUE ...]\n\n\
         Each setting is a flag, else its environment variable, else its default.\n\n",
    );
    for s in ALL {
        let default = match (s.dev, s.prod) {
            ("", _) => "none".to_owned(),
            (dev, prod) if dev == prod => dev.to_owned(),
            (dev, prod) => format!("{dev} (with --prod: {prod})"),
        };
        text.push_str(&format!(
            "  --{:<36} {}\n      {}; default {default}\n",
            s.flag, s.var, s.help
        ));
    }
    text.push_str(&format!(
        "  --{:<36} {}\n      production defaults; refuses to start without the WCA client secret\n",
        "prod", "TWIZZLE_PROD"
    ));
    text.push_str("  --help\n      print this and exit\n\nLogging: RUST_LOG (default info).\n");
    text
}

impl Settings {
    /// Whether the development sign-in (`GET /v0/auth/dev?name=NAME`, which
    /// signs anyone in by a name of their choosing) is offered by a server
    /// with these settings listening on `listening`: only with no WCA client
    /// secret, without `--prod`, and on a loopback address, so that it is
    /// there on a fresh checkout and nowhere a WCA sign-in or anyone else
    /// could reach. `listening` is the address actually bound (a name such
    /// as `localhost` in `--bind` resolves to it); an IPv4 address mapped
    /// into IPv6 counts as the IPv4 address, and `0.0.0.0` or `::` (every
    /// interface) is not loopback. `--prod` without a secret cannot start
    /// from the command line; the settings are refused here too.
    pub fn dev_sign_in(&self, listening: IpAddr) -> bool {
        self.wca.client_secret.is_none() && !self.prod && listening.to_canonical().is_loopback()
    }

    /// The local defaults: what the server runs with when nothing is set.
    pub fn local() -> Settings {
        // Nothing is read from outside: no flags, no environment, so no
        // secret file. What is left to fail is a built-in default that does
        // not parse, a mistake in this file that `every_default_parses`
        // catches before it can ship.
        Settings::resolve(&[], false, |_| None)
            .unwrap_or_else(|e| panic!("a built-in default is invalid: {e}"))
    }

    /// Reads the command line (without the program name) and the environment.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Command, ConfigError> {
        let mut flags: Vec<(&'static Setting, String)> = Vec::new();
        let mut prod = env("TWIZZLE_PROD").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--help" | "-h" => return Ok(Command::Help(usage())),
                "--prod" => {
                    prod = true;
                    continue;
                }
                _ => {}
            }
            let Some(body) = arg.strip_prefix("--") else {
                return Err(ConfigError(format!(
                    "unexpected argument {arg:?}; see --help"
                )));
            };
            let (name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (body, None),
            };
            let setting = ALL
                .iter()
                .copied()
                .find(|s| s.flag == name)
                .ok_or_else(|| ConfigError(format!("unknown flag --{name}; see --help")))?;
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .ok_or_else(|| ConfigError(format!("--{name} needs a value")))?,
            };
            flags.push((setting, value));
        }
        Settings::resolve(&flags, prod, env).map(|settings| Command::Run(Box::new(settings)))
    }

    /// The settings from the flags given (the last of a flag wins), else the
    /// environment, else the defaults.
    fn resolve(
        flags: &[(&'static Setting, String)],
        prod: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let get = |setting: &'static Setting| -> Value {
            let text = if let Some((_, value)) =
                flags.iter().rev().find(|(s, _)| s.flag == setting.flag)
            {
                value.clone()
            } else {
                match env(setting.var) {
                    Some(value) if !value.is_empty() => value,
                    _ if prod => setting.prod.to_owned(),
                    _ => setting.dev.to_owned(),
                }
            };
            Value { setting, text }
        };

        let mut secret = get(&WCA_APPLICATION_CLIENT_SECRET).text;
        let mut secret_file = get(&WCA_APPLICATION_CLIENT_SECRET_FILE).text;
        if secret_file.is_empty() {
            // systemd's LoadCredential= puts the secret in this directory.
            if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
                let candidate = PathBuf::from(dir).join(CREDENTIAL_NAME);
                if candidate.is_file() {
                    secret_file = candidate.to_string_lossy().into_owned();
                }
            }
        }
        if secret.is_empty() && !secret_file.is_empty() {
            secret = std::fs::read_to_string(&secret_file)
                .map_err(|e| {
                    ConfigError(format!(
                        "cannot read the WCA client secret from {secret_file}: {e}"
                    ))
                })?
                .trim()
                .to_owned();
        }
        let client_secret = (!secret.is_empty()).then(|| Secret::new(secret));
        if prod && client_secret.is_none() {
            return Err(ConfigError(
                "--prod needs the WCA client secret (TWIZZLE_WCA_APPLICATION_CLIENT_SECRET or TWIZZLE_WCA_APPLICATION_CLIENT_SECRET_FILE)".to_owned(),
            ));
        }

        Ok(Settings {
            bind: get(&BIND).text,
            data_dir: PathBuf::from(get(&DATA_DIR).text),
            wca: WcaSettings {
                client_secret,
                client_id: get(&WCA_CLIENT_ID).text,
                origin: get(&WCA_ORIGIN).text.trim_end_matches('/').to_owned(),
                redirect_uri: get(&OAUTH_REDIRECT_URI).text,
            },
            client_app_url: get(&CLIENT_APP_URL).text,
            stream_idle_timeout: get(&STREAM_IDLE_TIMEOUT_SECS).seconds()?,
            claim_token_ttl: get(&CLAIM_TOKEN_TTL_SECS).seconds()?,
            heartbeat: get(&HEARTBEAT_SECS).seconds()?,
            prod,
            limits: Limits {
                max_frame_bytes: get(&MAX_FRAME_BYTES).count()?,
                sender_events_per_sec: get(&SENDER_EVENTS_PER_SEC).positive()?,
                sender_event_burst: get(&SENDER_EVENT_BURST).positive()?.max(1.0),
                max_queued_events: get(&MAX_QUEUED_EVENTS).count()?,
                max_streams_per_user: get(&MAX_STREAMS_PER_USER).count()?,
                max_sockets: get(&MAX_SOCKETS).count()?,
                max_sender_sockets_per_stream: get(&MAX_SENDER_SOCKETS_PER_STREAM).count()?,
                max_recording_bytes: get(&MAX_RECORDING_BYTES).count()? as u64,
                recording_retention: Duration::from_secs(
                    (get(&RECORDING_RETENTION_DAYS).whole()? as u64).saturating_mul(86_400),
                ),
                max_sockets_per_client: get(&MAX_SOCKETS_PER_CLIENT).count()?,
                handshakes_per_client_per_sec: get(&HANDSHAKES_PER_CLIENT_PER_SEC).positive()?,
                handshake_burst: get(&HANDSHAKE_BURST).positive()?.max(1.0),
                requests_per_client_per_sec: get(&REQUESTS_PER_CLIENT_PER_SEC).positive()?,
                request_burst: get(&REQUEST_BURST).positive()?.max(1.0),
            },
            trusted_proxies: get(&TRUSTED_PROXIES).addresses()?,
            metrics_bind: Some(get(&METRICS_BIND).text).filter(|bind| bind != "off"),
            nats_url: Some(get(&NATS_URL).text.trim().to_owned()).filter(|url| !url.is_empty()),
            node_lease: get(&NODE_LEASE_SECS).seconds()?,
        })
    }
}

/// A setting's text as found, kept with its setting so that an error about
/// it names the flag it came from.
struct Value {
    setting: &'static Setting,
    text: String,
}

impl Value {
    fn positive(&self) -> Result<f64, ConfigError> {
        match self.text.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
            _ => Err(ConfigError(format!(
                "--{}: expected a positive number, got {:?}",
                self.setting.flag, self.text
            ))),
        }
    }

    fn seconds(&self) -> Result<Duration, ConfigError> {
        let secs = self.positive()?;
        Duration::try_from_secs_f64(secs).map_err(|_| {
            ConfigError(format!(
                "--{}: {:?} is too long",
                self.setting.flag, self.text
            ))
        })
    }

    fn addresses(&self) -> Result<Vec<IpAddr>, ConfigError> {
        self.text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse().map_err(|_| {
                    ConfigError(format!(
                        "--{}: {part:?} is not an IP address",
                        self.setting.flag
                    ))
                })
            })
            .collect()
    }

    fn whole(&self) -> Result<usize, ConfigError> {
        self.text.trim().parse::<usize>().map_err(|_| {
            ConfigError(format!(
                "--{}: expected a whole number, got {:?}",
                self.setting.flag, self.text
            ))
        })
    }

    fn count(&self) -> Result<usize, ConfigError> {
        match self.text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError(format!(
                "--{}: expected a positive whole number, got {:?}",
                self.setting.flag, self.text
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Command, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::parse(args.iter().map(|s| s.to_string()), |k| env.get(k).cloned())
    }

    fn settings(args: &[&str], env: &[(&str, &str)]) -> Settings {
        match parse(args, env) {
            Ok(Command::Run(s)) => *s,
            other => panic!("expected settings, got {other:?}"),
        }
    }

    #[test]
    fn defaults_work_locally() {
        let s = Settings::local();
        assert_eq!(s.bind, "127.0.0.1:3337");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert!(s.wca.client_secret.is_none());
        assert_eq!(s.wca.client_id, DEV_WCA_CLIENT_ID);
        assert_eq!(s.client_app_url, "http://localhost:1234/");
        assert_eq!(s.stream_idle_timeout, Duration::from_secs(600));
        assert_eq!(s.heartbeat, Duration::from_secs(10));
        assert_eq!(s.limits.max_queued_events, 256);
        assert_eq!(s.limits.max_sockets, 100_000);
    }

    #[test]
    fn flags_beat_variables_which_beat_defaults() {
        let s = settings(
            &["--bind", "127.0.0.1:0", "--heartbeat-secs=2"],
            &[
                ("TWIZZLE_BIND", "0.0.0.0:1"),
                ("TWIZZLE_DATA_DIR", "/tmp/x"),
                ("TWIZZLE_HEARTBEAT_SECS", "5"),
            ],
        );
        assert_eq!(s.bind, "127.0.0.1:0");
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.heartbeat, Duration::from_secs(2));
    }

    #[test]
    fn prod_needs_the_secret_and_switches_defaults() {
        assert!(parse(&["--prod"], &[]).unwrap_err().0.contains("secret"));
        let s = settings(
            &["--prod"],
            &[("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET", "s3cr3t-value")],
        );
        assert_eq!(s.wca.client_id, PROD_WCA_CLIENT_ID);
        assert_eq!(s.client_app_url, "https://twizzle.net/stream/");
        assert_eq!(
            s.wca.redirect_uri,
            "https://api.twizzle.net/v0/auth/wca/oauth_callback"
        );
        assert!(!format!("{s:?}").contains("s3cr3t-value"));
        let s = settings(
            &[],
            &[
                ("TWIZZLE_PROD", "1"),
                ("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET", "x"),
            ],
        );
        assert!(s.prod);
    }

    #[test]
    fn the_secret_can_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("twizzle-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let s = settings(
            &[],
            &[(
                "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET_FILE",
                path.to_str().unwrap(),
            )],
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.wca.client_secret.unwrap().expose(), "from-file");
        assert!(parse(
            &[],
            &[(
                "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET_FILE",
                "/nonexistent/secret"
            )]
        )
        .is_err());
    }

    #[test]
    fn the_secret_can_come_from_a_systemd_credential() {
        let dir = std::env::temp_dir().join(format!("twizzle-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CREDENTIAL_NAME), "from-credential").unwrap();
        let s = settings(
            &["--prod"],
            &[("CREDENTIALS_DIRECTORY", dir.to_str().unwrap())],
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.wca.client_secret.unwrap().expose(), "from-credential");
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        assert!(parse(&["--max-sockets", "0"], &[])
            .unwrap_err()
            .0
            .contains("--max-sockets"));
        assert!(parse(&["--heartbeat-secs", "soon"], &[])
            .unwrap_err()
            .0
            .contains("--heartbeat-secs"));
        assert!(parse(&["--nope", "1"], &[])
            .unwrap_err()
            .0
            .contains("unknown flag"));
        assert!(parse(&["--bind"], &[])
            .unwrap_err()
            .0
            .contains("needs a value"));
        assert!(
            matches!(parse(&["--help"], &[]), Ok(Command::Help(text)) if text.contains("TWIZZLE_MAX_SOCKETS"))
        );
    }

    #[test]
    fn every_setting_has_its_own_flag_and_variable_and_is_in_the_help() {
        let help = usage();
        let mut flags = std::collections::HashSet::from(["prod", "help"]);
        let mut vars = std::collections::HashSet::from(["TWIZZLE_PROD"]);
        for s in ALL {
            assert!(flags.insert(s.flag), "--{} is taken twice", s.flag);
            assert!(vars.insert(s.var), "{} is taken twice", s.var);
            assert!(
                help.contains(&format!("--{:<36} {}\n", s.flag, s.var)),
                "--{} is not in the help",
                s.flag
            );
            assert!(help.contains(s.help), "--{} has no help line", s.flag);
        }
    }

    #[test]
    fn the_nats_url_switches_the_state_to_jetstream_only_when_set() {
        assert_eq!(Settings::local().nats_url, None);
        let from_env = settings(&[], &[("TWIZZLE_NATS_URL", "nats://127.0.0.1:4222")]);
        assert_eq!(from_env.nats_url.as_deref(), Some("nats://127.0.0.1:4222"));
        let from_flag = settings(
            &["--nats-url", "nats://a:4222,nats://b:4222"],
            &[("TWIZZLE_NATS_URL", "nats://127.0.0.1:4222")],
        );
        assert_eq!(
            from_flag.nats_url.as_deref(),
            Some("nats://a:4222,nats://b:4222")
        );
        assert_eq!(settings(&["--nats-url", "  "], &[]).nats_url, None);
        assert_eq!(Settings::local().node_lease, Duration::from_secs(30));
        let short = settings(&[], &[("TWIZZLE_NODE_LEASE_SECS", "2.5")]);
        assert_eq!(short.node_lease, Duration::from_millis(2500));
    }

    #[test]
    fn the_development_sign_in_needs_no_secret_no_prod_and_loopback() {
        let local = Settings::local();
        for loopback in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(local.dev_sign_in(loopback.parse().unwrap()), "{loopback}");
        }
        for other in [
            "0.0.0.0",
            "::",
            "192.168.1.20",
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!local.dev_sign_in(other.parse().unwrap()), "{other}");
        }
        let loopback = "127.0.0.1".parse().unwrap();
        let with_secret = settings(&[], &[("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET", "x")]);
        assert!(!with_secret.dev_sign_in(loopback));
        let prod = settings(
            &["--prod"],
            &[("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET", "x")],
        );
        assert!(!prod.dev_sign_in(loopback));
        // Not from the command line, but the settings are a plain struct.
        let mut prod_without_secret = Settings::local();
        prod_without_secret.prod = true;
        assert!(!prod_without_secret.dev_sign_in(loopback));
    }

    #[test]
    fn every_default_parses() {
        let local = Settings::local();
        assert!(!local.prod);
        let prod = settings(
            &["--prod"],
            &[("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET", "x")],
        );
        assert!(prod.prod);
    }
}
