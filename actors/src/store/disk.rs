//! Blocking file work on threads of its own.
//!
//! A write(2) to a slow or stalled disk blocks its thread. Recordings are
//! written here rather than on the threads that run streams, so a slow disk
//! holds up only the writes waiting for it, never another stream's fan-out,
//! joins or leaves. Reads (a viewer catching up, a recording being
//! downloaded) have their own threads, so they wait for no write.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use actix::prelude::*;

use super::StoreError;

/// Threads writing recordings: enough that one stalled file does not hold
/// up every other stream's writes.
pub const WRITE_THREADS: usize = 2;
/// Threads reading recordings.
pub const READ_THREADS: usize = 2;

/// A pool of threads that run blocking jobs, started the first time it is
/// used (which must be inside an actix system).
#[derive(Clone)]
pub struct Disk {
    /// How many threads it runs.
    threads: usize,
    /// The pool, once started.
    pool: Arc<OnceLock<Addr<DiskWorker>>>,
}

impl Disk {
    /// A pool of `threads` threads, not yet started.
    pub fn new(threads: usize) -> Disk {
        Disk {
            threads: threads.max(1),
            pool: Arc::new(OnceLock::new()),
        }
    }

    /// Runs `job` on one of the pool's threads; resolves to what it returned.
    pub fn run<R, F>(&self, job: F) -> impl Future<Output = Result<R, StoreError>> + 'static
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let threads = self.threads;
        let pool = self
            .pool
            .get_or_init(|| SyncArbiter::start(threads, || DiskWorker));
        let sent = pool.send(Job(Box::new(job)));
        async move {
            sent.await
                .map_err(|e| StoreError::Failed(format!("disk thread gone: {e}")))
        }
    }
}

/// One blocking job and the type of its answer.
struct Job<R>(Box<dyn FnOnce() -> R + Send>);

impl<R: Send + 'static> Message for Job<R> {
    type Result = R;
}

/// A thread of a [`Disk`] pool.
struct DiskWorker;

impl Actor for DiskWorker {
    type Context = SyncContext<Self>;
}

impl<R: Send + 'static> Handler<Job<R>> for DiskWorker {
    type Result = MessageResult<Job<R>>;

    fn handle(&mut self, job: Job<R>, _: &mut SyncContext<Self>) -> Self::Result {
        MessageResult((job.0)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn runs_jobs_off_the_calling_thread_and_answers() {
        let disk = Disk::new(2);
        let here = std::thread::current().id();
        let there = disk.run(|| std::thread::current().id()).await.unwrap();
        assert_ne!(here, there);
        assert_eq!(disk.run(|| 6 * 7).await, Ok(42));
    }
}
