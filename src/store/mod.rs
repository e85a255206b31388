//! The runtime's files, one module each. Nothing here knows about FUSE.
//!
//! * [`metadata`]: `pods/<pod>/metadata.json`, the durable registry (atomic rewrite).
//! * [`spawned`]: `run/<pod>/spawned_pods.json`, the live parent's mirror.
//! * [`pods_table`]: `run/pods.json`, the machine-wide allocation table (flock, in place).
//! * [`atomic`]: temp file + fsync + rename, shared by the first two.

pub mod atomic;
pub mod metadata;
pub mod pods_table;
pub mod spawned;

/// The runtime writes every JSON file with serde_json's pretty printer and no trailing
/// newline; writing the same way keeps podfs's output byte-identical to the runtime's.
pub(crate) fn to_runtime_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("runtime types always serialise")
}

/// Helpers for tests that stage the golden fixtures into a temporary home.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::{Path, PathBuf};

    pub fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/insomnia-5472")
    }

    /// A fixture file with `@HOME@` replaced by `home`.
    pub fn read(rel: &str, home: &str) -> String {
        let path = root().join(rel);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()));
        text.replace("@HOME@", home)
    }
}
