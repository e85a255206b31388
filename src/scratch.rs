//! Where podfs (the demo) and its tests may put throw-away files: the temporary directory
//! (`$TMPDIR`, else `/tmp`) when this user may write it, else `$XDG_CACHE_HOME` (else
//! `~/.cache`), created if need be. Machines exist where an ordinary user may not write
//! `/tmp`; nothing that runs there should depend on it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn writable(dir: &Path) -> bool {
    dir.is_absolute()
        && nix::unistd::access(
            dir,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok()
}

/// The first writable directory of `preferred`, then the temporary directory, then the
/// cache directory.
pub fn base_preferring(preferred: Option<PathBuf>) -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    let candidates = preferred
        .map(|p| (p, false))
        .into_iter()
        .chain(std::iter::once((std::env::temp_dir(), false)))
        .chain(cache.map(|c| (c, true)));
    for (dir, create) in candidates {
        if create && dir.is_absolute() {
            let _ = std::fs::create_dir_all(&dir);
        }
        if writable(&dir) {
            return Ok(dir);
        }
    }
    Err(Error::Usage(
        "no writable place for temporary files: neither the temporary directory ($TMPDIR, \
         else /tmp) nor $XDG_CACHE_HOME (else ~/.cache) is writable by this user; set TMPDIR \
         to a directory you can write"
            .into(),
    ))
}

/// The temporary directory if writable, else the cache directory.
pub fn base() -> Result<PathBuf> {
    base_preferring(None)
}

/// A fresh private directory (mode 0700) under [`base`], removed when dropped.
pub fn tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let base = base()?;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|e| Error::io(format!("create a directory in {}", base.display()), e))?;
    Ok(dir)
}
