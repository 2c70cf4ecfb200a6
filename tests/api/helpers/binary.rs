//! The real binary as a child process: started on port 0 in a data
//! directory, its log lines read as they come, and signalled or killed
//! like a service manager would.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::WAIT;
use twizzle_api_server::testkit::TempDir;

/// Starts the binary on port 0; returns it, its port, and its log lines as they come.
pub fn start_binary(dir: &TempDir, wca_origin: &str) -> (KillOnDrop, u16, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twizzle-api-server"))
        .args(["--bind", "127.0.0.1:0", "--wca-origin", wca_origin])
        .arg("--data-dir")
        .arg(dir.path())
        .env(
            "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET",
            "test-client-secret",
        )
        .env("TWIZZLE_CLIENT_APP_URL", "http://localhost:1234/stream/")
        .env("RUST_LOG", "debug")
        .env("TWIZZLE_SENDER_EVENTS_PER_SEC", "100000")
        .env("TWIZZLE_SENDER_EVENT_BURST", "100000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut child = KillOnDrop(child);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.0.kill();
                panic!("the binary did not say where it listens within {WAIT:?}");
            }
        };
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            let port = rest.split_whitespace().next().unwrap().parse().unwrap();
            return (child, port, rx);
        }
    }
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(Child);

impl KillOnDrop {
    /// Kills the process with SIGKILL.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    /// Sends a signal by name (`TERM`, `INT`), at once: a race test needs
    /// it to land when it says, not after a `kill` process has started.
    pub fn signal(&self, name: &str) {
        let signal = match name {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            other => panic!("no such signal here: {other}"),
        };
        let pid = libc::pid_t::try_from(self.0.id()).expect("a pid");
        // SAFETY: sends a signal to our own child, which has not been reaped
        // (`KillOnDrop` waits for it only when dropped), so `pid` is still it.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill -{name}: {}", std::io::Error::last_os_error());
    }

    /// The exit status, if the process exits within `bound`.
    pub fn wait_within(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10)); // polling a child's exit
        }
    }

    /// Waits for the process to exit; its status.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fails the test if an access token appears in full in `logs`; the
/// message names no token.
pub fn assert_no_token_in(logs: &[String], token: &str) {
    assert!(
        logs.iter().all(|line| !line.contains(token)),
        "an access token appeared in full in the log"
    );
}
