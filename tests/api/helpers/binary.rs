//! The real binary as a child process: started on port 0 on a data
//! directory, its output read line by line, and killed when the test ends.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::WAIT;

/// Starts the binary on port 0 with the test settings; returns it, its port,
/// and its log lines (stderr and stdout) as they come.
pub fn start_binary(
    data_dir: &Path,
    wca_origin: &str,
) -> (KillOnDrop, u16, mpsc::Receiver<String>) {
    start_binary_with(data_dir, wca_origin, |_| {})
}

/// [`start_binary`], with the command changed by `tweak` before it runs (an
/// environment variable set there replaces the test setting's).
pub fn start_binary_with(
    data_dir: &Path,
    wca_origin: &str,
    tweak: impl FnOnce(&mut Command),
) -> (KillOnDrop, u16, mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_twizzle-api-server"));
    command
        .args(["--bind", "127.0.0.1:0", "--wca-origin", wca_origin])
        .arg("--data-dir")
        .arg(data_dir)
        .env(
            "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET",
            "test-client-secret",
        )
        .env("TWIZZLE_CLIENT_APP_URL", "http://localhost:1234/stream/")
        .env("RUST_LOG", "debug")
        .env("TWIZZLE_SENDER_EVENTS_PER_SEC", "100000")
        .env("TWIZZLE_SENDER_EVENT_BURST", "100000")
        // Every test client is 127.0.0.1: the per-client limits are lifted.
        .env("TWIZZLE_MAX_SOCKETS_PER_CLIENT", "1000000")
        // Many servers run side by side: metrics on a port of their own.
        .env("TWIZZLE_METRICS_BIND", "127.0.0.1:0")
        .env("TWIZZLE_HANDSHAKES_PER_CLIENT_PER_SEC", "1000000000")
        .env("TWIZZLE_HANDSHAKE_BURST", "1000000000")
        .env("TWIZZLE_REQUESTS_PER_CLIENT_PER_SEC", "1000000000")
        .env("TWIZZLE_REQUEST_BURST", "1000000000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tweak(&mut command);
    let mut child = command.spawn().expect("the binary starts");
    let (tx, rx) = mpsc::channel();
    forward_lines(child.stderr.take().unwrap(), tx.clone());
    forward_lines(child.stdout.take().unwrap(), tx);
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let last = &seen[seen.len().saturating_sub(20)..];
                panic!(
                    "the binary did not say where it listens within {WAIT:?}; its last lines:\n{}",
                    last.join("\n")
                );
            }
        };
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            let port = rest.split_whitespace().next().unwrap().parse().unwrap();
            return (child, port, rx);
        }
        seen.push(line);
    }
}

/// Starts `command` with no input and its output read line by line as it
/// comes: the process, its stdout lines, its stderr lines.
pub fn spawn_reading(
    command: &mut Command,
) -> (KillOnDrop, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the command starts");
    let (out_tx, out_rx) = mpsc::channel();
    let (err_tx, err_rx) = mpsc::channel();
    forward_lines(child.stdout.take().unwrap(), out_tx);
    forward_lines(child.stderr.take().unwrap(), err_tx);
    (KillOnDrop(child), out_rx, err_rx)
}

/// Sends each line read from `from` to `to`, on a thread of its own, until
/// either end closes.
fn forward_lines(from: impl Read + Send + 'static, to: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if to.send(line).is_err() {
                break;
            }
        }
    });
}

/// Every line left in `logs` once the process that writes them has exited
/// (its output is closed), within the wait bound.
pub fn rest_of(logs: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match logs.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return lines,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the binary's output was not closed within {WAIT:?}")
            }
        }
    }
}

/// Fails the test if `token` appears in full in a log line; the message
/// names neither the token nor the line.
pub fn assert_no_token_in(logs: &[String], token: &str) {
    assert!(
        logs.iter().all(|line| !line.contains(token)),
        "an access token appeared in full in the log"
    );
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
    pub fn wait_within(&mut self, bound: Duration) -> Option<ExitStatus> {
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

    /// A `kB` line of the process's `/proc/<pid>/status` (`VmRSS`, or the
    /// peak `VmHWM`), in KiB.
    pub fn memory_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .expect("the process's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the process's status"))
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.0.wait()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
