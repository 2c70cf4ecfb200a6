//! A small RAM disk for tests that fill the disk or make it read-only.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::TempDir;

/// A tmpfs of a given size mounted on a fresh directory; unmounted (and the
/// directory removed) on drop. Mounting needs root, which CI has.
pub struct Tmpfs {
    /// The mount point; declared so that it is removed after the unmount.
    dir: TempDir,
}

impl Tmpfs {
    /// A tmpfs of `size` (as `mount -o size=` takes it, e.g. `2m`), or
    /// `None` where mounting is not allowed: the caller skips its test,
    /// saying why. Under CI (`CI` set) a skipped test would hide a
    /// regression, so this panics there instead.
    pub fn mount(label: &str, size: &str) -> Option<Tmpfs> {
        let dir = TempDir::new(label);
        let why = match Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
        {
            Ok(out) if out.status.success() => return Some(Tmpfs { dir }),
            Ok(out) => format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
            Err(e) => e.to_string(),
        };
        if std::env::var_os("CI").is_some() {
            panic!("cannot mount a tmpfs: {why}");
        }
        eprintln!("skipping: cannot mount a tmpfs (this test needs root): {why}");
        None
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts read-only (`ro`) or read-write (`rw`); for `ro`, no file
    /// may be open for writing on it.
    ///
    /// # Panics
    ///
    /// If the remount fails: the test cannot go on.
    pub fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount,{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fills the file system with a file `filler` until a write fails with
    /// `StorageFull`; returns the file's path, to remove to free the space.
    ///
    /// # Panics
    ///
    /// If a write fails otherwise.
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .expect("create the filler");
        let chunk = [0u8; 4096];
        // Whole chunks first, then single bytes, so that not even a small
        // record fits afterwards.
        for size in [chunk.len(), 1] {
            loop {
                match file.write(&chunk[..size]) {
                    Ok(0) => panic!("a write of nothing before the disk filled"),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::StorageFull => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut command = Command::new("umount");
            if lazy {
                // Still busy (a process that outlived its test): detach it
                // now; the kernel frees it once the last file is closed.
                command.arg("-l");
            }
            command
                .arg(self.path())
                .output()
                .is_ok_and(|out| out.status.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("cannot unmount {}", self.path().display());
        }
    }
}
