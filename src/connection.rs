//! The TCP connection under each WebSocket: socket options set when it is
//! accepted, and a way for a stream to cut it when its session cannot run.
//!
//! A client that stops reading backs its socket up; actix-http then stops
//! polling the WebSocket body, so the session actor, its mailbox and its
//! timers all stop. The stream notices the full mailbox (`try_send` fails)
//! and, through [`Cutoff`], shuts the socket down; the failed write makes
//! actix-http drop the connection, and with it the session.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::dev::Extensions;
use twizzle_actors::stream::Disconnect;

/// The kernel's send buffer per socket: small, so that a client that stops
/// reading backs up after some 100 KB rather than megabytes.
pub const SEND_BUFFER_BYTES: i32 = 64 * 1024;
/// How long sent data may stay unacknowledged before the kernel gives the
/// connection up: the backstop for a peer that vanished mid-write.
pub const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Raises this process's soft limit on open files to its hard limit (each
/// socket is a file; systemd's `LimitNOFILE=` sets the hard limit in
/// production) and returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the calls to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// The raw descriptor of a connection, kept in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFd(pub RawFd);

/// `HttpServer::on_connect`: sets the socket options and remembers the descriptor.
pub fn on_connect(connection: &dyn Any, extensions: &mut Extensions) {
    let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
        return;
    };
    let fd = tcp.as_raw_fd();
    let timeout_ms = u32::try_from(USER_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    set_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SEND_BUFFER_BYTES);
    set_option(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        timeout_ms as libc::c_int,
    );
    extensions.insert(ConnectionFd(fd));
}

fn set_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: `fd` is the open socket actix-web just accepted, and `value`
    // is a c_int that lives across the call, as setsockopt reads it.
    let result = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        log::debug!(
            "setsockopt({level}, {name}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Cuts one connection on request, for as long as its session lives.
///
/// The descriptor is forgotten when the session stops or is dropped, which
/// actix-http does before it closes the socket, so a cut can never reach a
/// later connection that reuses the number.
#[derive(Debug)]
pub struct Cutoff {
    fd: Mutex<Option<RawFd>>,
}

impl Cutoff {
    /// A cutoff for the connection `fd`.
    pub fn new(fd: RawFd) -> Cutoff {
        Cutoff {
            fd: Mutex::new(Some(fd)),
        }
    }

    /// Forgets the descriptor: the session is going away.
    pub fn forget(&self) {
        *self.fd.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Disconnect for Cutoff {
    fn disconnect(&self) {
        let fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = *fd {
            // SAFETY: the lock is held, and the descriptor is forgotten (under
            // the same lock) before the connection is closed, so `fd` is
            // still this connection's socket.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
    }
}
