//! A real `nats-server` with JetStream, one per test: on a free loopback
//! port, with a store directory of its own, killed when dropped. A test
//! may stop it (SIGTERM, as an operator does), kill it (SIGKILL, as a
//! crash does) and start it again on the same port and store mid-test.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// How long the server may take to listen.
const START_WAIT: Duration = Duration::from_secs(10);

/// How long a stopped server may take to exit before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A running `nats-server -js`, killed (SIGKILL) when dropped; its store
/// directory goes with it.
pub struct NatsServer {
    /// The process while it runs.
    child: Option<Child>,
    /// The loopback port it listens on, the same across restarts.
    port: u16,
    /// Its JetStream store (`-sd`) and its log.
    dir: TempDir,
}

/// Whether `nats-server` can be run. Where it cannot, a developer's run is
/// told so and the test skips; under CI (`CI` set) that panics instead, so
/// that no test is skipped unseen.
pub fn have_nats_server() -> bool {
    let ran = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if ran {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "nats-server is not installed, and CI must run this test"
    );
    eprintln!(
        "SKIPPED: nats-server is not installed (`bash .ci/run` installs what the tests need)"
    );
    false
}

impl NatsServer {
    /// Starts a server whose store directory's name carries `label`; `None`
    /// where `nats-server` is not installed (see [`have_nats_server`]).
    ///
    /// # Panics
    ///
    /// If it does not listen within a few seconds.
    pub fn start(label: &str) -> Option<NatsServer> {
        if !have_nats_server() {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = NatsServer {
            child: None,
            port,
            dir: TempDir::new(&format!("nats-{label}")),
        };
        server.restart();
        Some(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The loopback port it listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server runs now (it has not been stopped or killed, and
    /// has not exited by itself).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Stops the server as an operator does (SIGTERM: it closes its
    /// clients' connections and its store) and waits for it to exit, or
    /// kills it if it has not within a few seconds; its store stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: signals our own child, not yet reaped (it is waited for
        // below), so `pid` is still that process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_WAIT;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10)); // polling for it to exit
        }
        let _ = child.wait();
    }

    /// Kills the server as a crash does (SIGKILL, nothing flushed or
    /// closed by it) and waits for it; its store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (after [`NatsServer::stop`] or
    /// [`NatsServer::kill`]; a running one is stopped first) on the same
    /// port and store, and waits until it listens.
    ///
    /// # Panics
    ///
    /// If it does not listen within a few seconds.
    pub fn restart(&mut self) {
        self.stop();
        let log = self.dir.path().join("nats.log");
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.store_dir())
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, so that a Ctrl-C meant for the tests
            // reaches it only through the kill below.
            .process_group(0);
        // SAFETY: `prctl` is async-signal-safe and touches nothing of the
        // parent's: the server dies with the thread that started it, even
        // if the test process is killed before it can kill the server.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("nats-server starts");
        let deadline = Instant::now() + START_WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nats-server exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nats-server did not listen within {START_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20)); // polling for it to listen
        }
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Nothing of it is needed any more: no reason to wait for a clean exit.
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether anything listens on `port` on loopback now.
    fn listens(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    #[test]
    fn it_stops_is_killed_and_comes_back_on_its_port_and_store() {
        let Some(mut server) = NatsServer::start("testkit") else {
            return;
        };
        let port = server.port();
        assert!(server.is_running() && listens(port));
        assert!(server.store_dir().is_dir(), "JetStream made its store");

        server.kill();
        assert!(!server.is_running());
        assert!(!listens(port), "a killed server listens no more");
        server.restart();
        assert!(server.is_running() && listens(port));
        assert_eq!(server.port(), port);
        assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));

        server.stop();
        assert!(!server.is_running());
        assert!(!listens(port), "a stopped server listens no more");
        assert!(server.store_dir().is_dir(), "the store outlives the server");
        server.restart();
        assert!(server.is_running() && listens(port));
    }
}
