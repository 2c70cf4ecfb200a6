//! A real headless Chromium, driven over WebDriver (fantoccini talking to
//! chromedriver): started per test on a free port with a fresh profile,
//! and stopped with everything it started when the test ends, however it
//! ends.
//!
//! Chromium and chromedriver are Debian packages (`.ci/run` installs
//! them). Without them a developer's run says so and skips; under CI (`CI`
//! set) a missing tool fails the test, so nothing is skipped silently.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use twizzle_api_server::testkit::TempDir;

/// How long a page may take to show what a test waits for: a page polls
/// every couple of seconds and reconnects with a backoff capped at a few,
/// and the suite runs many tests side by side on few cores.
const PAGE_WAIT: Duration = Duration::from_secs(20);

/// How long starting chromedriver and a browser session may take.
const START_WAIT: Duration = Duration::from_secs(30);

/// How often a test looks at the page while it waits.
const LOOK_EVERY: Duration = Duration::from_millis(50);

const CHROMIUM: &str = "chromium";
const CHROMEDRIVER: &str = "chromedriver";

/// The flags Chromium runs with: headless, as root (no sandbox), and quiet:
/// nothing fetched on its own, so a test's page is all it talks to.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1100,1100",
];

/// Whether `tool --version` runs; if not, panics under CI and says why
/// (and returns false) otherwise.
fn have(tool: &str) -> bool {
    let runs = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if runs {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is not installed, and CI must run this test"
    );
    eprintln!("SKIPPED: {tool} is not installed (`bash .ci/run` installs what the tests need)");
    false
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    free.local_addr().unwrap().port()
}

/// Ports tried for chromedriver before a browser session is given up.
const START_ATTEMPTS: u32 = 3;

/// chromedriver and the Chromium it started, with one WebDriver session.
pub struct Browser {
    /// The session.
    client: Client,
    /// chromedriver, the leader of a process group of its own that the
    /// browser's processes join; the whole group is killed on drop.
    driver: Child,
    /// The browser's profile, removed once the browser is gone.
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` (having said why)
    /// when either is missing outside CI.
    pub async fn start() -> Option<Browser> {
        if !have(CHROMIUM) || !have(CHROMEDRIVER) {
            return None;
        }
        // A free port can be taken by another test's server between the
        // look and chromedriver's bind (the suite starts many at once):
        // then the session cannot be made there, and another port is tried.
        for attempt in 1..=START_ATTEMPTS {
            let profile = TempDir::new("chromium");
            let port = free_port();
            let driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // A group of its own, so that killing it takes every browser
                // process along, even those chromedriver did not wait for.
                .process_group(0)
                .spawn()
                .expect("chromedriver starts");
            let mut starting = Starting(Some(driver));
            let deadline = Instant::now() + START_WAIT;
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "chromedriver did not listen within {START_WAIT:?}"
                );
                actix::clock::sleep(LOOK_EVERY).await; // polling for chromedriver to listen
            }
            let mut flags: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
            flags.push(format!("--user-data-dir={}", profile.path().display()));
            let mut capabilities = fantoccini::wd::Capabilities::new();
            capabilities.insert(
                "goog:chromeOptions".to_owned(),
                json!({ "binary": which(CHROMIUM), "args": flags }),
            );
            let session =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await;
            let client = match session {
                Ok(client) => client,
                Err(e) if attempt < START_ATTEMPTS => {
                    eprintln!("no browser session on port {port} ({e}); trying another port");
                    continue;
                }
                Err(e) => panic!("no browser session: {e}"),
            };
            return Some(Browser {
                client,
                driver: starting.0.take().unwrap(),
                _profile: profile,
            });
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The value of `script` (a function body that `return`s JSON) on the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("run a script on the page: {e}"))
    }

    /// The text of the element with this id, or null if there is none.
    pub async fn text(&self, id: &str) -> Value {
        self.client
            .execute(
                "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
                vec![json!(id)],
            )
            .await
            .unwrap_or_else(|e| panic!("read #{id}: {e}"))
    }

    /// Looks at `script`'s value every few milliseconds until `done` holds
    /// for it, within [`PAGE_WAIT`]; returns that value. Fails the test
    /// with `what` and the last value seen.
    pub async fn wait_for(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let seen = self.eval(script).await;
            if done(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {PAGE_WAIT:?}; the page showed {seen}"
            );
            actix::clock::sleep(LOOK_EVERY).await; // polling the page, bounded above
        }
    }

    /// Waits until the element with this id holds exactly `text`.
    pub async fn wait_text(&self, id: &str, text: &str) {
        let script = format!(
            "const e = document.getElementById({}); return e ? e.textContent : null;",
            json!(id)
        );
        self.wait_for(&format!("#{id} reads {text:?}"), &script, |seen| {
            seen == text
        })
        .await;
    }

    /// Clicks the element with this id.
    pub async fn click(&self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("find #{id}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click #{id}: {e}"));
    }

    /// Writes a PNG of the page as shown to `target/screenshots/{name}.png`,
    /// for a person to look at; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("take a screenshot: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        // The binary is target/<profile>/twizzle-api-server.
        let target = Path::new(env!("CARGO_BIN_EXE_twizzle-api-server"))
            .ancestors()
            .nth(2)
            .expect("the target directory");
        let dir = target.join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Ends the session politely (the browser quits); the drop that
    /// follows stops chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop_group(&mut self.driver);
    }
}

/// chromedriver while the session starts: stopped if starting fails.
struct Starting(Option<Child>);

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(driver) = &mut self.0 {
            stop_group(driver);
        }
    }
}

/// Kills the process group `leader` leads, then reaps the leader.
fn stop_group(leader: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(leader.id()) {
        // SAFETY: signals the group of our own child, which is not reaped
        // yet (that happens below), so its id still names that group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = leader.wait();
}

/// Where `tool` is on the PATH (chromedriver wants the browser's path).
fn which(tool: &str) -> String {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(tool))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| panic!("{tool} is not on the PATH"))
        .display()
        .to_string()
}
