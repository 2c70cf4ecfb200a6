//! A real `nats-server` with JetStream, one per test: on a free loopback
//! port, with a store directory of its own, killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// How long the server may take to listen.
const START_WAIT: Duration = Duration::from_secs(10);

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

    /// Kills the server (SIGKILL) and waits for it; its store stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (after [`NatsServer::stop`]) on the same port
    /// and store, and waits until it listens.
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
        self.stop();
    }
}
