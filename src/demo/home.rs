//! A realistic runtime home for demo pods: the files the runtime would have written after a
//! parent spawned its children (`metadata.json`, the allocation table, work directories),
//! in the names of either generation.

use std::path::Path;

use serde_json::json;

use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::name::PodName;
use crate::paths::Paths;
use crate::scope::StoredRule;
use crate::store::alloc::{self, Allocation};
use crate::store::metadata::{Metadata, SpawnedChild};

/// The rules the demo delegates to child `name`: write on its own work dir, read on all.
pub fn child_rules(home: &Path, name: &str) -> Vec<StoredRule> {
    let work = home.join("work");
    vec![
        StoredRule::new(&work.join(name).display().to_string(), "write", true),
        StoredRule::new(&work.display().to_string(), "read", true),
    ]
}

fn allocation(
    paths: &Paths,
    name: &PodName,
    allow: Vec<StoredRule>,
    from: Option<&str>,
) -> Allocation {
    Allocation {
        name: name.to_string(),
        pid: 0,
        socket: paths.socket(name).display().to_string(),
        scope_allow: allow.iter().map(StoredRule::to_wire).collect(),
        scope_deny: Vec::new(),
        delegated_from: from.map(Into::into),
        segment_id: None,
    }
}

/// The registry entry of `child` under `parent`, as the runtime writes it.
pub fn spawned_child(paths: &Paths, parent: &str, child: &str) -> SpawnedChild {
    SpawnedChild {
        name: child.to_string(),
        socket_path: paths.runtime.join(child).join("sock").display().to_string(),
        scope_delegated: child_rules(&paths.data, child),
        callback_address: paths
            .runtime
            .join(parent)
            .join("sock")
            .display()
            .to_string(),
    }
}

fn name(s: &str) -> Result<PodName> {
    PodName::new(s)
}

/// Write the files of `parent` with `children` spawned, as the runtime leaves them, in a
/// home laid out like `INSOMNIA_HOME=home`.
pub fn create(
    home: &Path,
    gen: &'static Generation,
    parent: &str,
    children: &[String],
) -> Result<()> {
    create_in(&Paths::for_home(home, gen), parent, children)
}

/// [`create`] with the data and runtime dirs wherever `paths` puts them (a desktop's
/// runtime dir is `$XDG_RUNTIME_DIR/insomnia`, apart from the data in `~/.insomnia`).
pub fn create_in(paths: &Paths, parent: &str, children: &[String]) -> Result<()> {
    let (home, gen) = (paths.data.as_path(), paths.generation);
    let paths = paths.clone();
    let io = |what: &str, e| Error::io(what.to_string(), e);
    let work = home.join("work");
    std::fs::create_dir_all(&work).map_err(|e| io("create work dir", e))?;
    let parent_name = name(parent)?;
    let mut meta = Metadata::new(parent, gen);
    meta.set(
        "active",
        json!({"session_id": "00000000-0000-7000-8000-000000000001"}),
    );
    if gen.name_key == "worker_name" {
        meta.set("workspace_root", json!(work.display().to_string()));
    }
    let mut table = alloc::AllocTable::empty(gen);
    table.push(&allocation(
        &paths,
        &parent_name,
        vec![StoredRule::new(&work.display().to_string(), "write", true)],
        None,
    ));
    let mut spawned = Vec::new();
    for child in children {
        let child_name = name(child)?;
        std::fs::create_dir_all(work.join(child)).map_err(|e| io("create child work dir", e))?;
        spawned.push(spawned_child(&paths, parent, child));
        table.push(&allocation(
            &paths,
            &child_name,
            child_rules(home, child),
            Some(parent),
        ));
        let mut own = Metadata::new(child, gen);
        own.set(
            "active",
            json!({"session_id": "00000000-0000-7000-8000-000000000002"}),
        );
        write_new(&paths.metadata(&child_name), &own.to_bytes())?;
    }
    meta.set_children(&spawned);
    write_new(&paths.metadata(&parent_name), &meta.to_bytes())?;
    std::fs::create_dir_all(&paths.runtime).map_err(|e| io("create runtime dir", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&paths.runtime, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("chmod runtime dir", e))?;
    alloc::update(
        &paths.alloc_table(),
        gen,
        std::time::Duration::from_secs(5),
        |t| {
            *t = table;
            (true, ())
        },
    )?;
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(format!("write {}", path.display()), e))
}
