//! The load: viewer and sender sockets, run as one task each on a few client
//! threads (actix arbiters), and the counters they share with the conductor.
//!
//! A viewer (`viewer.rs`) reads frames in place, finds the sequence number
//! and the send time by scanning for two keys (no JSON tree), and keeps its
//! counters in a per-thread record that the conductor collects at the end. A
//! sender (`sender.rs`) stamps each event with its sequence number and the
//! shared clock (see [`crate::measure::epoch`]).

mod sender;
mod viewer;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use actix::Arbiter;

pub use sender::SenderReport;
pub use viewer::ViewerStats;

/// Read buffer of a viewer that expects a stream of events.
pub const BUSY_VIEWER_BUFFER: usize = 8 * 1024;
/// Read buffer of a viewer that expects nothing but pings.
pub const IDLE_VIEWER_BUFFER: usize = 512;

/// Counters the conductor reads while the load runs.
pub struct Shared {
    /// Viewer sockets open (upgraded) so far.
    pub connected: AtomicU64,
    /// Viewer sockets that could not be opened.
    pub connect_failed: AtomicU64,
    /// Viewers that have seen their stream's start marker (a `reset`), so
    /// they are surely joined before the first counted event.
    pub ready: AtomicU64,
    /// Viewer sockets the server closed, or that failed, while the run went on.
    pub ended_early: AtomicU64,
    /// Senders connected and ready to start.
    pub senders_ready: AtomicU64,
    /// Senders finished sending (or failed).
    pub senders_done: AtomicU64,
    /// When senders start, in µs since the epoch; 0 until the conductor says go.
    pub start_at_us: AtomicU64,
    /// Set by the conductor to end the paced senders before their time is up.
    pub stop_sending: AtomicBool,
    /// Events sent so far, per stream.
    pub sent: Vec<AtomicU64>,
    /// Viewers connected, per stream.
    pub viewers: Vec<AtomicU64>,
    /// Event frames (with a sequence number) received by the viewers, per stream.
    pub delivered: Vec<AtomicU64>,
    /// Viewers whose socket ended during the run, per stream.
    pub ended: Vec<AtomicU64>,
    /// What ended viewers were owed while open (their highest sequence number
    /// + 1, summed), per stream.
    pub ended_owed: Vec<AtomicU64>,
    /// What each sender reported when it finished.
    pub sender_reports: Mutex<Vec<SenderReport>>,
    /// For each stream index, the index whose `sent` counts the events
    /// its viewers are owed: itself, or (in a cluster, where each node's
    /// viewers of one stream count apart) the index its sender sends on.
    pub sent_by: Vec<usize>,
}

impl Shared {
    /// Counters for `streams` streams, all zero.
    pub fn new(streams: usize) -> Arc<Shared> {
        Shared::sent_by((0..streams).collect())
    }

    /// Counters for `sent_by.len()` stream indexes, all zero, whose viewers
    /// are owed the events sent on `sent_by[index]`.
    pub fn sent_by(sent_by: Vec<usize>) -> Arc<Shared> {
        let streams = sent_by.len();
        Arc::new(Shared {
            connected: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            ended_early: AtomicU64::new(0),
            senders_ready: AtomicU64::new(0),
            senders_done: AtomicU64::new(0),
            start_at_us: AtomicU64::new(0),
            stop_sending: AtomicBool::new(false),
            sent: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            viewers: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            ended: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            ended_owed: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            sender_reports: Mutex::new(Vec::new()),
            sent_by,
        })
    }

    /// Deliveries owed to stream `s`'s viewers so far: every event sent to
    /// each open viewer, and to each viewer that ended, the events up to the
    /// last it saw.
    pub fn owed(&self, s: usize) -> u64 {
        let open = self.viewers[s]
            .load(Relaxed)
            .saturating_sub(self.ended[s].load(Relaxed));
        self.sent[self.sent_by[s]].load(Relaxed) * open + self.ended_owed[s].load(Relaxed)
    }

    /// Deliveries owed over all streams.
    pub fn expected(&self) -> u64 {
        (0..self.sent.len()).map(|s| self.owed(s)).sum()
    }

    /// Viewer sockets open or refused so far: the ones no longer pending.
    pub fn settled(&self) -> u64 {
        self.connected.load(Relaxed) + self.connect_failed.load(Relaxed)
    }

    /// Deliveries received over all streams.
    pub fn delivered(&self) -> u64 {
        self.delivered.iter().map(|d| d.load(Relaxed)).sum()
    }
}

/// Where and how one socket connects.
#[derive(Clone)]
pub struct SocketSpec {
    /// The server under test.
    pub server: SocketAddr,
    /// The loopback address to connect from.
    pub source: IpAddr,
    /// `/v0/streams/{id}/socket`, with `?twizzleAccessToken=…` for a sender.
    pub path: String,
    /// Index of the stream, for the per-stream counters.
    pub stream: usize,
}

/// How a sender sends.
#[derive(Clone, Copy)]
pub enum Pace {
    /// This many events a second, on a fixed schedule, for the duration.
    Rate(f64),
    /// As fast as the socket takes them, for the duration; with a `window`
    /// above 0, also no further ahead of the viewers than that many events.
    Flood {
        /// Events the average viewer may be behind before the sender waits; 0: no limit.
        window: u64,
    },
}

/// A set of client threads, each an actix arbiter running many socket tasks.
pub struct ClientPool {
    /// The threads.
    arbiters: Vec<Arbiter>,
    /// Round-robin position for the next socket.
    next: usize,
}

impl ClientPool {
    /// Starts `threads` client threads.
    pub fn new(threads: usize) -> ClientPool {
        ClientPool {
            arbiters: (0..threads.max(1)).map(|_| Arbiter::new()).collect(),
            next: 0,
        }
    }

    /// Opens viewer sockets, spread over the threads; each thread opens its
    /// share a batch at a time and then reads them until the pool stops or
    /// `deadline` passes.
    pub fn spawn_viewers(
        &mut self,
        specs: Vec<SocketSpec>,
        buffer: usize,
        shared: &Arc<Shared>,
        deadline: std::time::Instant,
    ) {
        let threads = self.arbiters.len();
        let mut shares: Vec<Vec<SocketSpec>> = vec![Vec::new(); threads];
        for spec in specs {
            shares[self.next % threads].push(spec);
            self.next += 1;
        }
        for (arbiter, share) in self.arbiters.iter().zip(shares) {
            let shared = Arc::clone(shared);
            // Spawned from inside the thread: the tasks hold `Rc`s, so they stay on it.
            arbiter.spawn_fn(move || {
                actix_web::rt::spawn(viewer::open_share(share, buffer, shared, deadline));
            });
        }
    }

    /// Starts one sender per spec, spread over the threads.
    pub fn spawn_senders(
        &mut self,
        specs: Vec<SocketSpec>,
        pace: Pace,
        secs: f64,
        shared: &Arc<Shared>,
    ) {
        for spec in specs {
            let arbiter = &self.arbiters[self.next % self.arbiters.len()];
            self.next += 1;
            let shared = Arc::clone(shared);
            arbiter.spawn_fn(move || {
                actix_web::rt::spawn(async move {
                    let report = sender::run_sender(&spec, pace, secs, &shared).await;
                    shared
                        .sender_reports
                        .lock()
                        .expect("no sender panicked holding the reports")
                        .push(report);
                    shared.senders_done.fetch_add(1, Relaxed);
                });
            });
        }
    }

    /// Runs the task `make` builds on the next thread; it is built there, so
    /// it may hold `Rc`s.
    pub fn spawn_task<F, Fut>(&mut self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let arbiter = &self.arbiters[self.next % self.arbiters.len()];
        self.next += 1;
        arbiter.spawn_fn(move || {
            actix_web::rt::spawn(make());
        });
    }

    /// Gives the threads the lowest scheduling priority (nice 19): they get
    /// only the CPU that the server and the other threads leave idle.
    /// Returns their thread IDs (within `wait`).
    pub fn run_last(&self, wait: Duration) -> Vec<u32> {
        let (tx, rx) = mpsc::channel();
        for arbiter in &self.arbiters {
            let tx = tx.clone();
            arbiter.spawn_fn(move || {
                // SAFETY: plain system calls about the calling thread itself.
                let (tid, failed) = unsafe {
                    let tid = libc::gettid();
                    let failed =
                        libc::setpriority(libc::PRIO_PROCESS as _, tid as libc::id_t, 19) != 0;
                    (tid, failed)
                };
                if failed {
                    log::warn!(
                        "could not lower a client thread's priority: {}",
                        std::io::Error::last_os_error()
                    );
                }
                let _ = tx.send(tid as u32);
            });
        }
        drop(tx);
        let until = std::time::Instant::now() + wait;
        let mut tids = Vec::with_capacity(self.arbiters.len());
        for _ in 0..self.arbiters.len() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(tid) => tids.push(tid),
                Err(_) => break,
            }
        }
        tids
    }

    /// Takes the viewer counters of every thread (waiting at most `wait`).
    pub fn collect(&self, wait: Duration) -> ViewerStats {
        let (tx, rx) = mpsc::channel();
        for arbiter in &self.arbiters {
            let tx = tx.clone();
            arbiter.spawn_fn(move || {
                let stats = viewer::take_thread_stats();
                let _ = tx.send(stats);
            });
        }
        drop(tx);
        let mut total = ViewerStats::default();
        let until = std::time::Instant::now() + wait;
        for _ in 0..self.arbiters.len() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(stats) => total.merge(&stats),
                Err(_) => {
                    log::warn!("a client thread did not report its counters in time");
                    break;
                }
            }
        }
        total
    }

    /// Stops the threads, which closes every socket they hold, and waits for them.
    pub fn stop(mut self) {
        let arbiters = std::mem::take(&mut self.arbiters);
        for arbiter in &arbiters {
            arbiter.stop();
        }
        for arbiter in arbiters {
            let _ = arbiter.join();
        }
    }
}

impl Drop for ClientPool {
    /// A pool dropped without [`ClientPool::stop`] (an error, a signal) still
    /// stops its threads, which closes their sockets.
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}
