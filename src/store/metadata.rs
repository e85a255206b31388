//! `pods/<pod>/metadata.json`: the durable registry of a pod's children.
//!
//! The runtime rewrites this file with a plain truncating write and no lock, so a reader can
//! catch it empty or half-written; [`read`] retries briefly before calling it corrupt.
//! podfs itself only ever writes it while the owner is not live, and then atomically.

use std::path::Path;
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::scope::StoredRule;
use crate::store::{atomic, to_runtime_json};

/// How often and how long to retry a read that does not parse (the runtime's torn writes
/// last microseconds; three tries 20 ms apart outlast them without stalling a request).
pub const PARSE_RETRIES: u32 = 3;
pub const PARSE_RETRY_DELAY: Duration = Duration::from_millis(20);

/// The runtime creates the file with the default umask; a new file gets this mode.
const DEFAULT_MODE: u32 = 0o644;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub pod_name: String,
    /// The session pointer; podfs never interprets it, only carries it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spawned_children: Vec<SpawnedChild>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reclaimed_children: Vec<ReclaimedChild>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_manifest_snapshot: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnedChild {
    pub pod_name: String,
    pub socket_path: String,
    pub scope_delegated: Vec<StoredRule>,
    pub callback_address: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReclaimedChild {
    pub pod_name: String,
    pub scope_delegated: Vec<StoredRule>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Metadata {
    pub fn new(pod_name: &str) -> Self {
        Metadata {
            pod_name: pod_name.into(),
            active: None,
            spawned_children: Vec::new(),
            reclaimed_children: Vec::new(),
            resolved_manifest_snapshot: None,
            extra: Map::new(),
        }
    }

    pub fn parse(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        to_runtime_json(self)
    }

    /// The runtime keys children by name and takes the first match; so does podfs.
    pub fn child(&self, name: &str) -> Option<&SpawnedChild> {
        self.spawned_children.iter().find(|c| c.pod_name == name)
    }

    /// How often `name` appears in the (append-only, never pruned) reclaimed list.
    pub fn times_reclaimed(&self, name: &str) -> usize {
        self.reclaimed_children
            .iter()
            .filter(|c| c.pod_name == name)
            .count()
    }

    /// The runtime's `reclaim_spawned_children` for one child: drop **every** spawned entry
    /// with that name, then append one reclaimed entry carrying the first entry's rules.
    /// Returns the appended entry, or `None` when the child was not listed (nothing changes).
    pub fn reclaim_child(&mut self, name: &str) -> Option<ReclaimedChild> {
        let first = self.child(name)?.clone();
        self.spawned_children.retain(|c| c.pod_name != name);
        let entry = ReclaimedChild {
            pod_name: first.pod_name,
            scope_delegated: first.scope_delegated,
            extra: Map::new(),
        };
        self.reclaimed_children.push(entry.clone());
        Some(entry)
    }
}

/// Read and parse, retrying a parse failure briefly because the runtime writes in place.
pub fn read(path: &Path) -> Result<Metadata> {
    read_as(path)
}

/// [`read`] into any shape of the file (the registry keeps a lean read-only one).
pub fn read_as<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let mut last_error = None;
    for attempt in 0..=PARSE_RETRIES {
        if attempt > 0 {
            thread::sleep(PARSE_RETRY_DELAY);
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(path.display().to_string()))
            }
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(meta) => return Ok(meta),
            Err(e) => last_error = Some(e),
        }
    }
    Err(Error::corrupt(
        path,
        last_error.map(|e| e.to_string()).unwrap_or_default(),
    ))
}

/// Atomic rewrite (temp file, fsync, rename), keeping the file's mode. Only call this while
/// the owning pod is not live: a live owner would overwrite the change from memory.
pub fn write(path: &Path, meta: &Metadata) -> Result<()> {
    atomic::replace_file(path, &meta.to_bytes(), DEFAULT_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;

    #[test]
    fn fixture_round_trips_byte_for_byte() {
        for rel in [
            "live/pods/parent/metadata.json",
            "live/pods/child1/metadata.json",
            "after-stop/pods/parent/metadata.json",
            "after-crash-restore/pods/parent/metadata.json",
        ] {
            let text = fixtures::read(rel, "/home/t");
            let meta = Metadata::parse(text.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(meta.to_bytes()).unwrap(), text, "{rel}");
        }
    }

    #[test]
    fn live_fixture_lists_three_children() {
        let text = fixtures::read("live/pods/parent/metadata.json", "/h");
        let meta = Metadata::parse(text.as_bytes()).unwrap();
        let names: Vec<_> = meta.spawned_children.iter().map(|c| &c.pod_name).collect();
        assert_eq!(names, ["child1", "child2", "child3"]);
        assert_eq!(
            meta.child("child1").unwrap().socket_path,
            "/h/run/child1/sock"
        );
        assert!(meta.active.is_some());
    }

    #[test]
    fn reclaim_matches_the_runtime_after_stop() {
        let live = fixtures::read("live/pods/parent/metadata.json", "/h");
        let expected = fixtures::read("after-stop/pods/parent/metadata.json", "/h");
        let mut meta = Metadata::parse(live.as_bytes()).unwrap();
        let entry = meta.reclaim_child("child1").unwrap();
        assert_eq!(entry.scope_delegated.len(), 2);
        assert_eq!(String::from_utf8(meta.to_bytes()).unwrap(), expected);
        assert!(
            meta.reclaim_child("child1").is_none(),
            "second reclaim must be a no-op"
        );
    }

    #[test]
    fn reclaim_drops_every_duplicate_and_appends_once() {
        let mut meta = Metadata::new("p");
        let child = SpawnedChild {
            pod_name: "c".into(),
            socket_path: "/r/c/sock".into(),
            scope_delegated: vec![StoredRule::new("/w", "write", true)],
            callback_address: String::new(),
            extra: Map::new(),
        };
        meta.spawned_children = vec![child.clone(), child];
        meta.reclaim_child("c").unwrap();
        assert!(meta.spawned_children.is_empty());
        assert_eq!(meta.reclaimed_children.len(), 1);
        let text = String::from_utf8(meta.to_bytes()).unwrap();
        assert!(
            !text.contains("spawned_children"),
            "empty list must be omitted"
        );
    }

    #[test]
    fn unknown_fields_survive_read_modify_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        let mut value: Value =
            serde_json::from_str(&fixtures::read("live/pods/parent/metadata.json", "/h")).unwrap();
        value["future_field"] = serde_json::json!({"keep": [1, 2, 3]});
        value["spawned_children"][0]["note"] = serde_json::json!("kept too");
        std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();

        let mut meta = read(&path).unwrap();
        meta.reclaim_child("child2").unwrap();
        write(&path, &meta).unwrap();

        let after: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(after["future_field"], value["future_field"]);
        assert_eq!(after["active"], value["active"]);
        assert_eq!(after["spawned_children"][0]["note"], "kept too");
        assert_eq!(after["reclaimed_children"][0]["pod_name"], "child2");
    }

    #[test]
    fn minimal_file_is_valid_and_missing_file_is_not_found() {
        let meta = Metadata::parse(br#"{"pod_name":"x"}"#).unwrap();
        assert!(meta.spawned_children.is_empty());
        let err = read(Path::new("/nonexistent/metadata.json")).unwrap_err();
        assert!(matches!(err, Error::NotFound(_)));
    }

    #[test]
    fn torn_file_is_reported_corrupt_after_retries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        std::fs::write(&path, b"{\"pod_name\": \"x\", \"spawned_chi").unwrap();
        let err = read(&path).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn torn_read_recovers_when_the_writer_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        std::fs::write(&path, b"").unwrap();
        let writer_path = path.clone();
        let writer = thread::spawn(move || {
            thread::sleep(PARSE_RETRY_DELAY / 2);
            std::fs::write(writer_path, br#"{"pod_name":"x"}"#).unwrap();
        });
        let meta = read(&path).unwrap();
        writer.join().unwrap();
        assert_eq!(meta.pod_name, "x");
    }
}
