//! The server under test: a child process on a free loopback port with a
//! fresh data directory, signed into through a fake WCA that the benchmark
//! serves itself; and the HTTP calls a real client makes against it.
//!
//! The child is stopped (SIGTERM, then SIGKILL) and its directory removed
//! when the run ends, and by a drop guard if the run panics.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use twizzle_api_server::testkit::{FakeWca, TempDir, WcaAccount};

/// How long the server may take to answer its liveness check after it starts.
const START_WAIT: Duration = Duration::from_secs(30);
/// How long a SIGTERM may take before the child is killed.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// The timeout of each HTTP call to the server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The WCA client secret the server is given and the fake WCA accepts.
const CLIENT_SECRET: &str = "twizzle-bench-client-secret";
/// Codes the fake WCA accepts: this prefix and the WCA account number.
const CODE_PREFIX: &str = "bench-";

/// How to start a server: a program, its arguments, and a name for tables.
#[derive(Debug, Clone)]
pub struct Target {
    /// Shown in tables: `ours` or `peer`.
    pub label: String,
    /// The program to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl Target {
    /// A target from a command line split on whitespace (no shell: the
    /// process measured is the one started).
    pub fn from_command(label: &str, command: &str) -> Result<Target, String> {
        let mut words = command.split_whitespace().map(str::to_owned);
        let program = words
            .next()
            .ok_or_else(|| format!("the {label} server command is empty"))?;
        Ok(Target {
            label: label.to_owned(),
            program: PathBuf::from(program),
            args: words.collect(),
        })
    }

    /// Our server: the `twizzle-api-server` binary next to this one. Under
    /// `cargo run` it is built first (same profile), so the figures are
    /// always those of the code in the checkout.
    pub fn ours() -> Result<Target, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        let server = dir.join("twizzle-api-server");
        if let Some(cargo) = std::env::var_os("CARGO") {
            let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if profile == "release" || profile == "debug" {
                eprintln!("twizzle-bench: building twizzle-api-server ({profile})…");
                let mut build = Command::new(cargo);
                build.args([
                    "build",
                    "--quiet",
                    "--bin",
                    "twizzle-api-server",
                    "--manifest-path",
                ]);
                build.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
                if profile == "release" {
                    build.arg("--release");
                }
                let status = build
                    .status()
                    .map_err(|e| format!("cannot run cargo: {e}"))?;
                if !status.success() {
                    return Err("building twizzle-api-server failed".to_owned());
                }
            }
        }
        if !server.is_file() {
            return Err(format!(
                "{} does not exist: run `cargo build --release` first, or pass --server-cmd",
                server.display()
            ));
        }
        Ok(Target {
            label: "ours".to_owned(),
            program: server,
            args: Vec::new(),
        })
    }

    /// The Node peer in `dir` (`node DIR/server.mjs`); `npm ci` must have run there.
    pub fn peer(dir: &Path) -> Result<Target, String> {
        let script = dir.join("server.mjs");
        if !script.is_file() {
            return Err(format!("{} does not exist", script.display()));
        }
        if !dir.join("node_modules").join("ws").is_dir() {
            return Err(format!(
                "{} has no node_modules/ws: copy the peer to a writable folder and run `npm ci` there",
                dir.display()
            ));
        }
        Ok(Target {
            label: "peer".to_owned(),
            program: PathBuf::from("node"),
            args: vec![script.to_string_lossy().into_owned()],
        })
    }
}

/// Whether a run lifts the server's per-client limits (and its socket limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLimits {
    /// Lifted: the generator is a handful of client addresses, as SPEC lets
    /// benchmarks do.
    Lifted,
    /// The server's own defaults, for a run that tries them.
    Default,
}

/// Settings that lift the per-client limits and the socket limit.
const LIFTED_LIMITS: [(&str, &str); 6] = [
    ("TWIZZLE_MAX_SOCKETS", "1000000"),
    ("TWIZZLE_MAX_SOCKETS_PER_CLIENT", "1000000"),
    ("TWIZZLE_HANDSHAKES_PER_CLIENT_PER_SEC", "1000000000"),
    ("TWIZZLE_HANDSHAKE_BURST", "1000000000"),
    ("TWIZZLE_REQUESTS_PER_CLIENT_PER_SEC", "1000000000"),
    ("TWIZZLE_REQUEST_BURST", "1000000000"),
];

/// A child process that is killed and reaped when dropped, unless it was already.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A server under test, running.
pub struct RunningServer {
    /// The child; dropped (killed) before the directory is removed.
    child: ChildGuard,
    /// The child's process ID, for `/proc`.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The fake WCA, stopped with the run.
    wca: FakeWca,
    /// HTTP client for the API calls (no redirects followed: the claim token is in one).
    client: awc::Client,
    /// Next WCA account number to sign in as.
    next_account: u64,
    /// The data directory and the server's log; removed last.
    dir: TempDir,
}

/// How the server stopped.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// It exited by itself after SIGTERM, within [`STOP_WAIT`].
    pub clean: bool,
    /// How long that took.
    pub took: Duration,
}

impl RunningServer {
    /// Starts the fake WCA and the server with the variables the run needs
    /// (the per-client limits lifted or not, as `limits` says) plus
    /// `extra_env`, and waits until the server answers its liveness check.
    pub async fn start(
        target: &Target,
        limits: ClientLimits,
        extra_env: &[(String, String)],
    ) -> Result<RunningServer, String> {
        let dir = TempDir::try_new("bench").map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let wca = FakeWca::builder()
            .client_secret(CLIENT_SECRET)
            .numbered_codes(CODE_PREFIX, bench_account)
            .try_start()
            .map_err(|e| format!("fake WCA: {e}"))?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = dir.path().join("server.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("cannot create the log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;

        let mut command = Command::new(&target.program);
        command.args(&target.args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TWIZZLE_") {
                command.env_remove(name);
            }
        }
        let data = dir.path().join("data");
        command
            .env("TWIZZLE_BIND", addr.to_string())
            .env("TWIZZLE_DATA_DIR", &data)
            .env("TWIZZLE_WCA_ORIGIN", wca.origin())
            .env("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET", CLIENT_SECRET)
            // Several servers may run side by side; none needs its metrics here.
            .env("TWIZZLE_METRICS_BIND", "off");
        if limits == ClientLimits::Lifted {
            // The generator is a handful of client addresses: lift the
            // per-client limits, as the rate limit is lifted for saturate.
            for (name, value) in LIFTED_LIMITS {
                command.env(name, value);
            }
        }
        for (name, value) in extra_env {
            command.env(name, value);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // SAFETY: prctl is async-signal-safe, as code between fork and exec
        // must be. The server gets SIGTERM if the benchmark dies, however it
        // dies, so it never outlives the run.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", target.program.display()))?;
        let pid = child.id();
        let mut server = RunningServer {
            child: ChildGuard(Some(child)),
            pid,
            addr,
            wca,
            client: awc::Client::builder()
                .disable_redirects()
                .timeout(HTTP_TIMEOUT)
                .finish(),
            next_account: 1,
            dir,
        };
        server.wait_until_live().await?;
        Ok(server)
    }

    async fn wait_until_live(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let url = format!("http://{}/v0/infra/liveness_check", self.addr);
        while started.elapsed() < START_WAIT {
            if let Some(Ok(Some(status))) = self.child.0.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "the server exited at start ({status}); its log:\n{}",
                    self.log_tail(20)
                ));
            }
            if let Ok(res) = self
                .client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                if res.status().is_success() {
                    return Ok(());
                }
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "the server did not answer within {START_WAIT:?}; its log:\n{}",
            self.log_tail(20)
        ))
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Signs a new user in the way a browser does (OAuth callback, claim);
    /// returns the access token.
    pub async fn sign_in(&mut self) -> Result<String, String> {
        let account = self.next_account;
        self.next_account += 1;
        let url = format!(
            "http://{}/v0/auth/wca/oauth_callback?code={CODE_PREFIX}{account}",
            self.addr
        );
        let res = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("callback: {e}"))?;
        if res.status().as_u16() != 302 {
            return Err(format!("callback answered {}", res.status()));
        }
        let location = res
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or("callback sent no Location")?;
        let claim = location
            .split("claimToken=")
            .nth(1)
            .and_then(|rest| rest.split(['&', '#']).next())
            .ok_or("no claimToken in the redirect")?
            .to_owned();
        let body = self
            .post_json(&format!("/v0/claim?claimToken={claim}"))
            .await?;
        body["twizzleAccessToken"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("claim answered {body}"))
    }

    /// Creates a stream as the user with `token`; returns its ID.
    pub async fn create_stream(&self, token: &str) -> Result<String, String> {
        let body = self
            .post_json(&format!("/v0/streams?twizzleAccessToken={token}"))
            .await?;
        body["streamID"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("create answered {body}"))
    }

    async fn post_json(&self, path: &str) -> Result<Value, String> {
        let mut res = self
            .client
            .post(format!("http://{}{path}", self.addr))
            .send()
            .await
            .map_err(|e| format!("POST {}: {e}", path_only(path)))?;
        let body = res
            .body()
            .await
            .map_err(|e| format!("POST {}: {e}", path_only(path)))?;
        if !res.status().is_success() {
            return Err(format!(
                "POST {} answered {}: {}",
                path_only(path),
                res.status(),
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("POST {}: {e}", path_only(path)))
    }

    /// Stops the server (SIGTERM, then SIGKILL after [`STOP_WAIT`]), the fake
    /// WCA, and removes the data directory.
    pub async fn stop(mut self) -> Stopped {
        let started = Instant::now();
        let mut clean = false;
        if let Some(child) = self.child.0.as_mut() {
            let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
            // SAFETY: a plain system call on our own child's pid.
            let termed = pid > 0 && unsafe { libc::kill(pid, libc::SIGTERM) } == 0;
            while termed && started.elapsed() < STOP_WAIT {
                if let Ok(Some(_)) = child.try_wait() {
                    clean = true;
                    break;
                }
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let took = started.elapsed();
        // Killed and reaped here if it has not exited.
        drop(self.child.0.take().map(|c| ChildGuard(Some(c))));
        self.wca.stop().await;
        Stopped { clean, took }
    }
}

fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// The account the fake WCA signs in for the code `bench-<n>`.
fn bench_account(n: u64) -> WcaAccount {
    WcaAccount {
        id: n,
        wca_id: Some(format!("2026BNCH{:02}", n % 100)),
        name: format!("Bench Cuber {n}"),
    }
}
