//! `run/<pod>/spawned_pods.json`: the live parent's mirror of its registry.
//!
//! Not authoritative (the parent never reads it back), but a stale copy after a crash
//! should not name a child podfs has reclaimed, so the offline reclaim rewrites it too.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::scope::ScopeRule;
use crate::store::{atomic, metadata::SpawnedChild, to_runtime_json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnedRecord {
    pub pod_name: String,
    pub socket_path: String,
    pub scope_delegated: Vec<ScopeRule>,
    pub callback_address: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl From<&SpawnedChild> for SpawnedRecord {
    fn from(c: &SpawnedChild) -> Self {
        SpawnedRecord {
            pod_name: c.pod_name.clone(),
            socket_path: c.socket_path.clone(),
            scope_delegated: c.scope_delegated.iter().map(|r| r.to_wire()).collect(),
            callback_address: c.callback_address.clone(),
            extra: Map::new(),
        }
    }
}

pub fn parse(bytes: &[u8]) -> serde_json::Result<Vec<SpawnedRecord>> {
    serde_json::from_slice(bytes)
}

pub fn read(path: &Path) -> Result<Option<Vec<SpawnedRecord>>> {
    match std::fs::read(path) {
        Ok(bytes) => parse(&bytes).map(Some).map_err(|e| Error::corrupt(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// Whole-file rewrite via temp + rename, as the runtime does it.
pub fn write(path: &Path, records: &[SpawnedRecord]) -> Result<()> {
    atomic::replace_file(path, &to_runtime_json(&records), 0o644)
}

/// Drop `child` from the file if the file exists; a missing file stays missing.
/// Returns whether the file was rewritten.
pub fn remove_child(path: &Path, child: &str) -> Result<bool> {
    let Some(mut records) = read(path)? else {
        return Ok(false);
    };
    let before = records.len();
    records.retain(|r| r.pod_name != child);
    if records.len() == before {
        return Ok(false);
    }
    write(path, &records)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;

    #[test]
    fn fixtures_round_trip() {
        for rel in [
            "live/run/parent/spawned_pods.json",
            "after-stop/run/parent/spawned_pods.json",
        ] {
            let text = fixtures::read(rel, "/x");
            let records = parse(text.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(to_runtime_json(&records)).unwrap(), text);
        }
    }

    #[test]
    fn empty_registry_is_an_empty_array() {
        let empty: Vec<SpawnedRecord> = Vec::new();
        assert_eq!(to_runtime_json(&empty), b"[]");
    }

    #[test]
    fn removing_child1_gives_the_runtime_after_stop_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spawned_pods.json");
        std::fs::write(
            &path,
            fixtures::read("live/run/parent/spawned_pods.json", "/x"),
        )
        .unwrap();
        assert!(remove_child(&path, "child1").unwrap());
        let after = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            after,
            fixtures::read("after-stop/run/parent/spawned_pods.json", "/x")
        );
        assert!(!remove_child(&path, "child1").unwrap());
        assert!(!remove_child(&dir.path().join("missing.json"), "c").unwrap());
    }

    #[test]
    fn records_from_metadata_match_the_mirror() {
        let meta = crate::store::metadata::Metadata::parse(
            fixtures::read("live/pods/parent/metadata.json", "/x").as_bytes(),
        )
        .unwrap();
        let records: Vec<SpawnedRecord> = meta.spawned_children.iter().map(Into::into).collect();
        let mirror = fixtures::read("live/run/parent/spawned_pods.json", "/x");
        assert_eq!(
            String::from_utf8(to_runtime_json(&records)).unwrap(),
            mirror
        );
    }
}
