//! A realistic insomnia home for demo pods: the files the runtime would have written after
//! a parent spawned its children (`metadata.json`, `pods.json`, work directories).

use std::path::Path;

use serde_json::{json, Map};

use crate::error::{Error, Result};
use crate::paths::Paths;
use crate::scope::{ScopeRule, StoredRule};
use crate::store::metadata::{Metadata, SpawnedChild};
use crate::store::pods_table::{Allocation, PodsTable};

/// The rules the demo delegates to child `name`: write on its own work dir, read on all.
pub fn child_rules(home: &Path, name: &str) -> Vec<StoredRule> {
    let work = home.join("work");
    vec![
        StoredRule::new(&work.join(name).display().to_string(), "write", true),
        StoredRule::new(&work.display().to_string(), "read", true),
    ]
}

fn allocation(paths: &Paths, name: &str, allow: Vec<ScopeRule>, from: Option<&str>) -> Allocation {
    Allocation {
        pod_name: name.into(),
        pid: 0,
        socket: paths.socket(name).display().to_string(),
        scope_allow: allow,
        scope_deny: Vec::new(),
        delegated_from: from.map(Into::into),
        segment_id: None,
        extra: Map::new(),
    }
}

/// Write the files of `parent` with `children` spawned, as the runtime leaves them.
pub fn create(home: &Path, parent: &str, children: &[String]) -> Result<()> {
    let paths = Paths::for_home(home);
    let io = |what: &str, e| Error::io(what.to_string(), e);
    let work = home.join("work");
    std::fs::create_dir_all(&work).map_err(|e| io("create work dir", e))?;
    let mut meta = Metadata::new(parent);
    meta.active = Some(json!({"session_id": "00000000-0000-7000-8000-000000000001"}));
    let mut table = PodsTable::default();
    table.allocations.push(allocation(
        &paths,
        parent,
        vec![StoredRule::new(&work.display().to_string(), "write", true).to_wire()],
        None,
    ));
    for child in children {
        std::fs::create_dir_all(work.join(child)).map_err(|e| io("create child work dir", e))?;
        let rules = child_rules(home, child);
        meta.spawned_children.push(SpawnedChild {
            pod_name: child.clone(),
            socket_path: paths.socket(child).display().to_string(),
            scope_delegated: rules.clone(),
            callback_address: paths.socket(parent).display().to_string(),
            extra: Map::new(),
        });
        table.allocations.push(allocation(
            &paths,
            child,
            rules.iter().map(StoredRule::to_wire).collect(),
            Some(parent),
        ));
        let mut own = Metadata::new(child);
        own.active = Some(json!({"session_id": "00000000-0000-7000-8000-000000000002"}));
        write_new(&paths.metadata(child), &own.to_bytes())?;
    }
    write_new(&paths.metadata(parent), &meta.to_bytes())?;
    std::fs::create_dir_all(&paths.runtime).map_err(|e| io("create runtime dir", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&paths.runtime, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("chmod runtime dir", e))?;
    crate::store::pods_table::update(&paths.pods_json(), std::time::Duration::from_secs(5), |t| {
        *t = table;
        (true, ())
    })?;
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(format!("write {}", path.display()), e))
}
