//! Writing files so that a crash never leaves half of one: a temporary file in the same
//! folder, then a rename (atomic on POSIX file systems).

use crate::error::{Error, Result};
use std::path::Path;

/// Writes `bytes` to `path` atomically. When the write or the rename fails (a full disk, a
/// folder in the way) the temporary file is removed and `path` keeps its old content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        // Best effort: the write's own error is the one worth reporting.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    #[test]
    fn write_atomic_should_replace_the_file_and_leave_no_temporary() {
        let dir = std::env::temp_dir().join(format!("byol-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        super::write_atomic(&path, b"one").unwrap();
        super::write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!dir.join("a.json.tmp").exists());
        let e = super::write_atomic(&dir.join("missing/b.json"), b"x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.json.tmp"), "{e}");
        // A folder where the file should go: the rename fails, the temporary goes away.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let e = super::write_atomic(&blocked, b"x").unwrap_err().to_string();
        assert!(e.contains("blocked"), "{e}");
        assert!(!dir.join("blocked.tmp").exists());
        assert!(blocked.join("inside").is_dir());
    }
}
