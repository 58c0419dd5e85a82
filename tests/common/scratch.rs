//! A test's scratch path (a folder, or a file where a test needs one) under the system's
//! temporary directory, named by the test binary's process and the test: removed when the test
//! passes, kept when it fails (its path is printed with the failure) so that the run's files
//! can be read. Before this guard every `cargo test` left about 135 MB of run folders behind
//! (2026-11-30).
//!
//! Not `tempfile::TempDir`: that one removes the folder during a failing test's unwinding too,
//! and does not dereference to a `Path`, which the tests pass on as `&dir` and `dir.join(..)`.
//! The host crate's `tests/` include this file by path; `tests/test_folders.rs` tests it.

use std::ffi::OsStr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// The path `<temp>/byol-<binary>-<process id>-<name>`, absent when made (a leftover folder of
/// an earlier process with the same id is removed). The test creates it when it needs it.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(binary: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("byol-{binary}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// For `Command::arg`, as a `PathBuf` is given.
impl AsRef<OsStr> for Scratch {
    fn as_ref(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
