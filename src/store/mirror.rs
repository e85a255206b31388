//! `run/<pod>/spawned_pods.json` (`spawned_workers.json`): the live parent's mirror of its
//! registry.
//!
//! Not authoritative (the parent never reads it back), but a stale copy after a crash
//! should not name a child podfs has reclaimed, so the offline reclaim rewrites it too,
//! leaving every other entry exactly as it was.

use std::path::Path;

use serde_json::Value;

use crate::confine::Dir;
use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::store::metadata::SpawnedChild;
use crate::store::{atomic, required_str, shape_error, to_runtime_json};

/// Parse, checking that every entry is an object with a name.
pub fn parse(bytes: &[u8], gen: &Generation) -> serde_json::Result<Vec<Value>> {
    let records: Vec<Value> = serde_json::from_slice(bytes)?;
    for r in &records {
        let o = r
            .as_object()
            .ok_or_else(|| shape_error("a mirror entry is not an object"))?;
        required_str(o, gen.name_key)?;
    }
    Ok(records)
}

/// `None` when the file does not exist (the parent exited cleanly, or never wrote it).
pub fn read(path: &Path, gen: &Generation) -> Result<Option<Vec<Value>>> {
    match std::fs::read(path) {
        Ok(bytes) => parse(&bytes, gen)
            .map(Some)
            .map_err(|e| Error::corrupt(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// The runtime's bytes for a registry (an empty one is `[]`).
pub fn render(children: &[SpawnedChild], gen: &Generation) -> Vec<u8> {
    let records: Vec<Value> = children.iter().map(|c| c.to_value(gen)).collect();
    to_runtime_json(&records)
}

/// Whole-file rewrite via temp + rename, as the runtime does it.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic::replace_file(path, bytes, 0o644)
}

/// Drop `child` from the file if the file exists; a missing file stays missing.
/// Returns whether the file was rewritten.
pub fn remove_child(path: &Path, child: &str, gen: &Generation) -> Result<bool> {
    let Some(mut records) = read(path, gen)? else {
        return Ok(false);
    };
    let before = records.len();
    records.retain(|r| r.get(gen.name_key).and_then(Value::as_str) != Some(child));
    if records.len() == before {
        return Ok(false);
    }
    write(path, &to_runtime_json(&records))?;
    Ok(true)
}

/// [`remove_child`] for the mirror in the pod runtime directory `dir`.
pub fn remove_child_in(dir: &Dir, file: &str, child: &str, gen: &Generation) -> Result<bool> {
    let path = dir.path().join(file);
    let mut records = match dir.read(file) {
        Ok((bytes, _)) => parse(&bytes, gen).map_err(|e| Error::corrupt(&path, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    let before = records.len();
    records.retain(|r| r.get(gen.name_key).and_then(Value::as_str) != Some(child));
    if records.len() == before {
        return Ok(false);
    }
    dir.replace(file, &to_runtime_json(&records), 0o644)
        .map_err(|e| Error::io(format!("replace {}", path.display()), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{INSOMNIA_5472, YOI_WORKER_485918EB};
    use crate::store::metadata::Metadata;
    use crate::test_fixtures as fixtures;

    const CASES: [(&Generation, &str, &str, &str); 2] = [
        (
            &INSOMNIA_5472,
            "insomnia-5472/live/run/parent/spawned_pods.json",
            "insomnia-5472/after-stop/run/parent/spawned_pods.json",
            "insomnia-5472/live/pods/parent/metadata.json",
        ),
        (
            &YOI_WORKER_485918EB,
            "yoi-485918eb/live/run/parent/spawned_workers.json",
            "yoi-485918eb/after-stop/run/parent/spawned_workers.json",
            "yoi-485918eb/live/workers/parent/metadata.json",
        ),
    ];

    #[test]
    fn fixtures_round_trip() {
        for (gen, live, after, _) in CASES {
            for rel in [live, after] {
                let text = fixtures::read(rel, "/x");
                let records = parse(text.as_bytes(), gen).unwrap();
                assert_eq!(String::from_utf8(to_runtime_json(&records)).unwrap(), text);
            }
        }
    }

    #[test]
    fn empty_registry_is_an_empty_array() {
        assert_eq!(render(&[], &INSOMNIA_5472), b"[]");
    }

    #[test]
    fn removing_child1_gives_the_runtime_after_stop_file() {
        for (gen, live, after, _) in CASES {
            let dir = crate::test_fixtures::tempdir();
            let path = dir.path().join("mirror.json");
            std::fs::write(&path, fixtures::read(live, "/x")).unwrap();
            assert!(remove_child(&path, "child1", gen).unwrap());
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                fixtures::read(after, "/x")
            );
            assert!(!remove_child(&path, "child1", gen).unwrap());
            assert!(!remove_child(&dir.path().join("missing.json"), "c", gen).unwrap());
        }
    }

    #[test]
    fn records_from_metadata_match_the_mirror() {
        for (gen, live, _, meta) in CASES {
            let meta = Metadata::parse(fixtures::read(meta, "/x").as_bytes(), gen).unwrap();
            let bytes = render(&meta.children().unwrap(), gen);
            assert_eq!(
                String::from_utf8(bytes).unwrap(),
                fixtures::read(live, "/x")
            );
        }
    }
}
