//! A directory of its own under the system's temporary directory, removed on drop.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A directory of its own under the system's temporary directory, removed
/// (with everything in it) when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new, empty directory whose name carries `label`.
    ///
    /// # Panics
    ///
    /// If the directory cannot be made: a test cannot go on without it.
    pub fn new(label: &str) -> TempDir {
        TempDir::try_new(label).expect("create a temporary directory")
    }

    /// A new, empty directory whose name carries `label`, or why it could not be made.
    pub fn try_new(label: &str) -> io::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // The pid and the counter keep this process's directories apart; the
        // random part keeps them apart from a dead process's leftovers under
        // a reused pid.
        let path = std::env::temp_dir().join(format!(
            "twizzle-{label}-{}-{}-{:016x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_u64()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// 64 bits from the std hasher's per-process random keys and the time:
/// enough to tell directories apart, and no secret.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
