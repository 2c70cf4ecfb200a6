//! Settings: one typed struct, filled from flags with environment variables behind them.
//!
//! Each setting is `--flag VALUE` (or `--flag=VALUE`), else its `TWIZZLE_…`
//! variable, else its default; `--prod` switches to the production defaults.

use std::fmt;
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
    /// Events per second one sender socket may keep up.
    pub sender_events_per_sec: f64,
    /// Events one sender socket may send in a burst.
    pub sender_event_burst: f64,
    /// Unsent events queued for one socket before it is dropped.
    pub max_queued_events: usize,
    /// Open streams one user may have.
    pub max_streams_per_user: usize,
    /// Open sockets over the whole server.
    pub max_sockets: usize,
}

impl Limits {
    /// The capacity of a socket's mailbox: the queued-event limit, plus room
    /// for one sender's burst (at most the limit again). A burst the rate
    /// limit lets through can land in a mailbox faster than a busy worker
    /// thread drains it; that must not cost an honest viewer its socket.
    /// Bounded either way, so a client that stops reading costs at most this
    /// many events of memory before it is dropped.
    pub fn mailbox_capacity(&self) -> usize {
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

/// One setting: its flag, variable, defaults and help.
struct Spec {
    flag: &'static str,
    var: &'static str,
    dev: &'static str,
    prod: &'static str,
    help: &'static str,
}

const fn spec(
    flag: &'static str,
    var: &'static str,
    dev: &'static str,
    prod: &'static str,
    help: &'static str,
) -> Spec {
    Spec {
        flag,
        var,
        dev,
        prod,
        help,
    }
}

/// Every setting, in the order `--help` lists them.
const SPECS: &[Spec] = &[
    spec(
        "bind",
        "TWIZZLE_BIND",
        "127.0.0.1:3337",
        "127.0.0.1:3337",
        "listen address",
    ),
    spec(
        "data-dir",
        "TWIZZLE_DATA_DIR",
        "./data",
        "./data",
        "data directory (users, tokens, recordings)",
    ),
    spec(
        "wca-application-client-secret",
        "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET",
        "",
        "",
        "WCA OAuth client secret; without it sign-in answers 503",
    ),
    spec(
        "wca-application-client-secret-file",
        "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET_FILE",
        "",
        "",
        "a file holding the WCA OAuth client secret",
    ),
    spec(
        "wca-client-id",
        "TWIZZLE_WCA_CLIENT_ID",
        DEV_WCA_CLIENT_ID,
        PROD_WCA_CLIENT_ID,
        "WCA OAuth client ID",
    ),
    spec(
        "wca-origin",
        "TWIZZLE_WCA_ORIGIN",
        "https://www.worldcubeassociation.org",
        "https://www.worldcubeassociation.org",
        "WCA origin",
    ),
    spec(
        "oauth-redirect-uri",
        "TWIZZLE_OAUTH_REDIRECT_URI",
        "http://localhost:3337/v0/auth/wca/oauth_callback",
        "https://api.twizzle.net/v0/auth/wca/oauth_callback",
        "OAuth redirect URI",
    ),
    spec(
        "client-app-url",
        "TWIZZLE_CLIENT_APP_URL",
        "http://localhost:1234/",
        "https://twizzle.net/stream/",
        "client app URL the browser returns to after sign-in",
    ),
    spec(
        "stream-idle-timeout-secs",
        "TWIZZLE_STREAM_IDLE_TIMEOUT_SECS",
        "600",
        "600",
        "a stream with no sender for this long ends",
    ),
    spec(
        "claim-token-ttl-secs",
        "TWIZZLE_CLAIM_TOKEN_TTL_SECS",
        "600",
        "600",
        "claim token lifetime",
    ),
    spec(
        "heartbeat-secs",
        "TWIZZLE_HEARTBEAT_SECS",
        "10",
        "10",
        "ping interval; a socket silent for 3 intervals is closed",
    ),
    spec(
        "max-frame-bytes",
        "TWIZZLE_MAX_FRAME_BYTES",
        "65536",
        "65536",
        "largest WebSocket frame (close 1009 above)",
    ),
    spec(
        "sender-events-per-sec",
        "TWIZZLE_SENDER_EVENTS_PER_SEC",
        "200",
        "200",
        "events per second a sender socket may keep up",
    ),
    spec(
        "sender-event-burst",
        "TWIZZLE_SENDER_EVENT_BURST",
        "400",
        "400",
        "events a sender socket may send in a burst",
    ),
    spec(
        "max-queued-events",
        "TWIZZLE_MAX_QUEUED_EVENTS",
        "256",
        "256",
        "unsent events queued for one socket before it is dropped",
    ),
    spec(
        "max-streams-per-user",
        "TWIZZLE_MAX_STREAMS_PER_USER",
        "10",
        "10",
        "open streams per user (429 above)",
    ),
    spec(
        "max-sockets",
        "TWIZZLE_MAX_SOCKETS",
        "100000",
        "100000",
        "open sockets in all (503 above)",
    ),
];

/// The `--help` text.
pub fn usage() -> String {
    let mut text = String::from(
        "twizzle-api-server: the API server behind twizzle.net/stream\n\n\
         Usage: twizzle-api-server [--prod] [--help] [--SETTING VALUE ...]\n\n\
         Each setting is a flag, else its environment variable, else its default.\n\n",
    );
    for s in SPECS {
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
    /// The local defaults: what the server runs with when nothing is set.
    pub fn local() -> Settings {
        match Settings::parse(std::iter::empty(), |_| None) {
            Ok(Command::Run(settings)) => *settings,
            _ => unreachable!("the defaults parse"),
        }
    }

    /// Reads the command line (without the program name) and the environment.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Command, ConfigError> {
        let mut flags: Vec<(&'static Spec, String)> = Vec::new();
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
            let spec = SPECS
                .iter()
                .find(|s| s.flag == name)
                .ok_or_else(|| ConfigError(format!("unknown flag --{name}; see --help")))?;
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .ok_or_else(|| ConfigError(format!("--{name} needs a value")))?,
            };
            flags.push((spec, value));
        }
        let get = |flag: &str| -> String {
            let spec = SPECS
                .iter()
                .find(|s| s.flag == flag)
                .expect("a known setting");
            if let Some((_, value)) = flags.iter().rev().find(|(s, _)| s.flag == flag) {
                return value.clone();
            }
            match env(spec.var) {
                Some(value) if !value.is_empty() => value,
                _ if prod => spec.prod.to_owned(),
                _ => spec.dev.to_owned(),
            }
        };

        let mut secret = get("wca-application-client-secret");
        let mut secret_file = get("wca-application-client-secret-file");
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

        let settings = Settings {
            bind: get("bind"),
            data_dir: PathBuf::from(get("data-dir")),
            wca: WcaSettings {
                client_secret,
                client_id: get("wca-client-id"),
                origin: get("wca-origin").trim_end_matches('/').to_owned(),
                redirect_uri: get("oauth-redirect-uri"),
            },
            client_app_url: get("client-app-url"),
            stream_idle_timeout: seconds(
                "stream-idle-timeout-secs",
                &get("stream-idle-timeout-secs"),
            )?,
            claim_token_ttl: seconds("claim-token-ttl-secs", &get("claim-token-ttl-secs"))?,
            heartbeat: seconds("heartbeat-secs", &get("heartbeat-secs"))?,
            prod,
            limits: Limits {
                max_frame_bytes: count("max-frame-bytes", &get("max-frame-bytes"))?,
                sender_events_per_sec: positive(
                    "sender-events-per-sec",
                    &get("sender-events-per-sec"),
                )?,
                sender_event_burst: positive("sender-event-burst", &get("sender-event-burst"))?
                    .max(1.0),
                max_queued_events: count("max-queued-events", &get("max-queued-events"))?,
                max_streams_per_user: count("max-streams-per-user", &get("max-streams-per-user"))?,
                max_sockets: count("max-sockets", &get("max-sockets"))?,
            },
        };
        Ok(Command::Run(Box::new(settings)))
    }
}

fn positive(flag: &str, value: &str) -> Result<f64, ConfigError> {
    match value.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(ConfigError(format!(
            "--{flag}: expected a positive number, got {value:?}"
        ))),
    }
}

fn seconds(flag: &str, value: &str) -> Result<Duration, ConfigError> {
    let secs = positive(flag, value)?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| ConfigError(format!("--{flag}: {value:?} is too long")))
}

fn count(flag: &str, value: &str) -> Result<usize, ConfigError> {
    match value.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError(format!(
            "--{flag}: expected a positive whole number, got {value:?}"
        ))),
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
}
