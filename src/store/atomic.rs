//! Crash-safe whole-file replacement: temp file in the same directory, fsync, rename,
//! fsync of the directory. A reader (the runtime, or podfs itself) sees the old file or
//! the new one, never a torn one, and a power cut cannot leave an empty file behind.

use std::fs::{self, File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Replace `path` with `bytes`, keeping the old file's mode (or `default_mode` if new).
pub fn replace_file(path: &Path, bytes: &[u8], default_mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Usage(format!("{}: no parent directory", path.display())))?;
    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(_) => default_mode,
    };
    let ctx = |what: &str| format!("{what} {}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".podfs-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(ctx("create temp file for"), e))?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(|e| Error::io(ctx("chmod temp file for"), e))?;
    tmp.write_all(bytes)
        .map_err(|e| Error::io(ctx("write temp file for"), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(ctx("fsync temp file for"), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io(ctx("rename temp file onto"), e.error))?;
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents_and_keeps_mode() {
        let dir = crate::test_fixtures::tempdir();
        let path = dir.path().join("f.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        replace_file(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
    }

    #[test]
    fn new_file_gets_the_default_mode() {
        let dir = crate::test_fixtures::tempdir();
        let path = dir.path().join("g.json");
        replace_file(&path, b"x", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
