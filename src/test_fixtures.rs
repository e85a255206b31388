//! The golden fixtures under `tests/fixtures/`, for unit tests.

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fixture file (`<runtime>/<state>/...`) with `@HOME@` replaced by `home`.
pub fn read(rel: &str, home: &str) -> String {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()));
    text.replace("@HOME@", home)
}

/// A private temporary directory for a unit test, where this user may write one (see
/// [`crate::scratch`]).
pub fn tempdir() -> tempfile::TempDir {
    crate::scratch::tempdir("podfs-test-").expect("a writable temporary directory")
}
