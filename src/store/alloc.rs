//! `run/pods.json` (`run/workers.json`): the machine-wide allocation table, "the scope lock".
//!
//! Runtime pods lock this very inode with `flock(2)` (insomnia waits forever, yoi workers
//! poll for 10 s and then fail), so podfs follows the same protocol exactly: open without
//! truncating, exclusive BSD lock on the file itself, read-modify-write in place (never
//! rename: others hold the inode), `fdatasync`, unlock. podfs bounds its own wait and holds
//! the lock for the read-modify-write only, which takes milliseconds.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::scope::{ScopeRule, StoredRule};
use crate::store::{required_str, shape_error, to_runtime_json};

/// The table, as the ordered object it was read as.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocTable {
    root: Map<String, Value>,
    gen: &'static Generation,
}

/// What one `reclaim_delegated_scope` did, so callers can log a deny layer that stayed
/// (the runtime compares raw strings; a canonicalised deny never matches a raw rule).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReclaimReport {
    pub denies_removed: usize,
    pub denies_not_found: Vec<String>,
    pub child_allocation_removed: bool,
    pub reparented: Vec<String>,
}

/// An allocation to add (reference homes and pods); the runtime's field order.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub name: String,
    pub pid: u32,
    pub socket: String,
    pub scope_allow: Vec<ScopeRule>,
    pub scope_deny: Vec<ScopeRule>,
    pub delegated_from: Option<String>,
    pub segment_id: Option<String>,
}

impl Allocation {
    pub fn to_value(&self, gen: &Generation) -> Value {
        let mut o = Map::new();
        o.insert(gen.name_key.into(), self.name.clone().into());
        o.insert("pid".into(), self.pid.into());
        o.insert("socket".into(), self.socket.clone().into());
        o.insert("scope_allow".into(), to_value(&self.scope_allow));
        o.insert("scope_deny".into(), to_value(&self.scope_deny));
        o.insert("delegated_from".into(), to_value(&self.delegated_from));
        o.insert("segment_id".into(), to_value(&self.segment_id));
        Value::Object(o)
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("plain data serialises")
}

impl AllocTable {
    pub fn empty(gen: &'static Generation) -> Self {
        let mut root = Map::new();
        root.insert("allocations".into(), Value::Array(Vec::new()));
        AllocTable { root, gen }
    }

    /// Empty or whitespace-only content is an empty table, as in the runtime.
    pub fn parse(bytes: &[u8], gen: &'static Generation) -> serde_json::Result<Self> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(AllocTable::empty(gen));
        }
        let root: Map<String, Value> = serde_json::from_slice(bytes)?;
        let table = AllocTable { root, gen };
        match table.root.get("allocations") {
            None | Some(Value::Array(_)) => {}
            Some(_) => return Err(shape_error("`allocations` is not an array")),
        }
        for a in table.list() {
            let o = a
                .as_object()
                .ok_or_else(|| shape_error("an allocation is not an object"))?;
            required_str(o, gen.name_key)?;
            for key in ["scope_allow", "scope_deny"] {
                if let Some(rules) = o.get(key) {
                    let _: Vec<ScopeRule> = serde_json::from_value(rules.clone())?;
                }
            }
            match o.get("delegated_from") {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(_) => return Err(shape_error("`delegated_from` is not a string or null")),
            }
        }
        Ok(table)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        to_runtime_json(&self.root)
    }

    fn list(&self) -> &[Value] {
        self.root
            .get("allocations")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    fn list_mut(&mut self) -> &mut Vec<Value> {
        let slot = self
            .root
            .entry("allocations")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !slot.is_array() {
            *slot = Value::Array(Vec::new());
        }
        slot.as_array_mut().expect("just made an array")
    }

    fn name_of<'v>(&self, a: &'v Value) -> Option<&'v str> {
        a.get(self.gen.name_key).and_then(Value::as_str)
    }

    pub fn names(&self) -> Vec<String> {
        self.list()
            .iter()
            .filter_map(|a| self.name_of(a).map(str::to_string))
            .collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.list().iter().any(|a| self.name_of(a) == Some(name))
    }

    /// A field of `name`'s allocation (first match).
    pub fn field(&self, name: &str, key: &str) -> Option<&Value> {
        self.list()
            .iter()
            .find(|a| self.name_of(a) == Some(name))?
            .get(key)
    }

    /// `name`'s deny layers, in order.
    pub fn deny(&self, name: &str) -> Option<Vec<Value>> {
        match self.field(name, "scope_deny") {
            Some(Value::Array(rules)) => Some(rules.clone()),
            Some(_) => None,
            None if self.contains(name) => Some(Vec::new()),
            None => None,
        }
    }

    pub fn push(&mut self, allocation: &Allocation) {
        let value = allocation.to_value(self.gen);
        self.list_mut().push(value);
    }

    /// Set a field of `name`'s allocation; false when there is none.
    pub fn set_field(&mut self, name: &str, key: &str, value: Value) -> bool {
        let key_name = self.gen.name_key;
        let found = self
            .list_mut()
            .iter_mut()
            .find(|a| a.get(key_name).and_then(Value::as_str) == Some(name));
        match found.and_then(Value::as_object_mut) {
            Some(o) => {
                o.insert(key.into(), value);
                true
            }
            None => false,
        }
    }

    /// The runtime's `reclaim_delegated_scope(parent, child, rules)`, step for step.
    pub fn reclaim_delegated_scope(
        &mut self,
        parent: &str,
        child: &str,
        rules: &[StoredRule],
    ) -> ReclaimReport {
        let mut report = ReclaimReport::default();
        let key = self.gen.name_key;
        let parent_alloc = self
            .list_mut()
            .iter_mut()
            .find(|a| a.get(key).and_then(Value::as_str) == Some(parent));
        if let Some(parent_alloc) = parent_alloc {
            let mut none = Vec::new();
            let deny = match parent_alloc
                .get_mut("scope_deny")
                .and_then(Value::as_array_mut)
            {
                Some(deny) => deny,
                None => &mut none,
            };
            for rule in rules.iter().filter(|r| r.is_write()) {
                match deny.iter().position(|d| same_rule(rule, d)) {
                    Some(i) => {
                        deny.remove(i);
                        report.denies_removed += 1;
                    }
                    None => report.denies_not_found.push(rule.to_string()),
                }
            }
        }
        let (removed, reparented) = self.remove_child_allocation(child);
        report.child_allocation_removed = removed;
        report.reparented = reparented;
        report
    }

    /// Step 3 of `reclaim_delegated_scope` alone: remove `child`'s allocation and move its
    /// children up one level. Idempotent.
    pub fn remove_child_allocation(&mut self, child: &str) -> (bool, Vec<String>) {
        if !self.contains(child) {
            return (false, Vec::new());
        }
        let from = self
            .field(child, "delegated_from")
            .cloned()
            .unwrap_or(Value::Null);
        let key = self.gen.name_key;
        let mut moved = Vec::new();
        for a in self.list_mut().iter_mut() {
            if a.get("delegated_from").and_then(Value::as_str) == Some(child) {
                if let Some(name) = a.get(key).and_then(Value::as_str) {
                    moved.push(name.to_string());
                }
                a["delegated_from"] = from.clone();
            }
        }
        self.list_mut()
            .retain(|a| a.get(key).and_then(Value::as_str) != Some(child));
        (true, moved)
    }

    /// The runtime's `release_pod(name)`: remove it, move its children up one level.
    pub fn release(&mut self, name: &str) -> bool {
        self.remove_child_allocation(name).0
    }
}

/// The runtime compares deny layers by exact target, permission and recursion (a missing
/// `recursive` reads as true in this file).
fn same_rule(rule: &StoredRule, deny: &Value) -> bool {
    deny.get("target").and_then(Value::as_str) == Some(rule.target.as_str())
        && deny.get("permission").and_then(Value::as_str) == Some(rule.permission.as_str())
        && deny
            .get("recursive")
            .and_then(Value::as_bool)
            .unwrap_or(true)
            == rule.recursive
}

/// Read without locking, for display and for planning a change.
pub fn read(path: &Path, gen: &'static Generation) -> Result<AllocTable> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    AllocTable::parse(&bytes, gen).map_err(|e| Error::corrupt(path, e))
}

/// Run a read-modify-write of the table under the runtime's locking protocol, waiting at
/// most `lock_wait` for the lock. `change` returns whether it modified the table; the file
/// is rewritten only then. On a parse error nothing is written. `change` runs with the lock
/// held: it must not do I/O of its own.
pub fn update<T>(
    path: &Path,
    gen: &'static Generation,
    lock_wait: Duration,
    change: impl FnOnce(&mut AllocTable) -> (bool, T),
) -> Result<T> {
    let ctx = |what: &str| format!("{what} {}", path.display());
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(ctx("create directory for"), e))?;
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(ctx("open"), e))?;
    let mut locked = lock_exclusive(file, lock_wait).map_err(|e| match e {
        LockError::TimedOut => Error::LockTimeout(path.to_path_buf()),
        LockError::Os(errno) => Error::io(ctx("flock"), errno.into()),
    })?;
    let started = Instant::now();
    let mut bytes = Vec::new();
    locked
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(ctx("read"), e))?;
    let mut table = AllocTable::parse(&bytes, gen).map_err(|e| Error::corrupt(path, e))?;
    let (changed, out) = change(&mut table);
    if changed {
        let new = table.to_bytes();
        // One positioned write, then cut the tail: the file is never observed empty by a
        // reader that ignores the lock. A shorter table is padded with spaces to the old
        // length first, so that a kill between the write and the cut leaves valid JSON
        // followed by whitespace rather than the new table glued to the old one's tail.
        let mut padded = new.clone();
        if padded.len() < bytes.len() {
            padded.resize(bytes.len(), b' ');
        }
        locked
            .write_all_at(&padded, 0)
            .and_then(|()| locked.set_len(new.len() as u64))
            .and_then(|()| locked.sync_data())
            .map_err(|e| Error::io(ctx("rewrite"), e))?;
    }
    tracing::debug!(
        held_us = started.elapsed().as_micros() as u64,
        changed,
        "allocation table lock released"
    );
    drop(locked);
    Ok(out)
}

enum LockError {
    TimedOut,
    Os(nix::errno::Errno),
}

/// A bounded try-lock loop: the runtime's own wait may be unbounded, podfs's must not be.
/// Runs on the worker pool, never on a FUSE request thread.
fn lock_exclusive(file: File, wait: Duration) -> std::result::Result<Flock<File>, LockError> {
    let deadline = Instant::now() + wait;
    let mut file = file;
    let mut pause = Duration::from_micros(200);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) | Err((f, nix::errno::Errno::EINTR)) => {
                if Instant::now() >= deadline {
                    return Err(LockError::TimedOut);
                }
                file = f;
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err((_, errno)) => return Err(LockError::Os(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{INSOMNIA_5472, YOI_WORKER_485918EB};
    use crate::test_fixtures as fixtures;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const I: &Generation = &INSOMNIA_5472;
    const Y: &Generation = &YOI_WORKER_485918EB;

    fn table(rel: &str, gen: &'static Generation) -> AllocTable {
        AllocTable::parse(fixtures::read(rel, "/h").as_bytes(), gen).unwrap()
    }

    fn child1_rules() -> Vec<StoredRule> {
        vec![
            StoredRule::new("/h/work/sub1", "write", true),
            StoredRule::new("/h/work", "read", true),
        ]
    }

    #[test]
    fn fixtures_round_trip() {
        for (gen, rel) in [
            (I, "insomnia-5472/live/run/pods.json"),
            (I, "insomnia-5472/after-stop/run/pods.json"),
            (I, "insomnia-5472/after-crash-restore/run/pods.json"),
            (Y, "yoi-485918eb/live/run/workers.json"),
            (Y, "yoi-485918eb/after-stop/run/workers.json"),
            (Y, "yoi-485918eb/after-crash-restore/run/workers.json"),
            (Y, "yoi-485918eb/before-external-reclaim/run/workers.json"),
        ] {
            let text = fixtures::read(rel, "/h");
            let t = AllocTable::parse(text.as_bytes(), gen).unwrap();
            assert_eq!(String::from_utf8(t.to_bytes()).unwrap(), text, "{rel}");
        }
    }

    #[test]
    fn reclaim_in_place_matches_the_runtime_after_stop() {
        for (gen, live, after) in [
            (
                I,
                "insomnia-5472/live/run/pods.json",
                "insomnia-5472/after-stop/run/pods.json",
            ),
            (
                Y,
                "yoi-485918eb/live/run/workers.json",
                "yoi-485918eb/after-stop/run/workers.json",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("table.json");
            std::fs::write(&path, fixtures::read(live, "/h")).unwrap();
            let inode = std::fs::metadata(&path).unwrap().ino();
            let report = update(&path, gen, Duration::from_secs(1), |t| {
                (
                    true,
                    t.reclaim_delegated_scope("parent", "child1", &child1_rules()),
                )
            })
            .unwrap();
            assert!(report.child_allocation_removed);
            // The parent was not restored, so it holds no deny layer to remove.
            assert_eq!(report.denies_not_found, ["write recursive /h/work/sub1"]);
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                fixtures::read(after, "/h")
            );
            assert_eq!(
                std::fs::metadata(&path).unwrap().ino(),
                inode,
                "must not rename"
            );
        }
    }

    #[test]
    fn restored_parent_loses_exactly_one_equal_deny_per_write_rule() {
        let mut t = table("insomnia-5472/after-crash-restore/run/pods.json", I);
        let deny = t.deny("parent").unwrap()[0].clone();
        let mut wider = deny.clone();
        wider["target"] = "/h/work".into();
        let mut layers = t.deny("parent").unwrap();
        layers.push(deny.clone());
        layers.push(wider);
        t.set_field("parent", "scope_deny", Value::Array(layers));
        let rules = vec![
            StoredRule::new("/h/work/sub3", "write", true),
            StoredRule::new("/h/work", "read", true),
        ];
        let report = t.reclaim_delegated_scope("parent", "child3", &rules);
        assert_eq!(report.denies_removed, 1);
        let left: Vec<_> = t
            .deny("parent")
            .unwrap()
            .iter()
            .map(|d| d["target"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(left, ["/h/work/sub3", "/h/work"]);
        assert!(!t.contains("child3"));
    }

    #[test]
    fn grandchildren_move_up_one_level() {
        let mut t = table("yoi-485918eb/live/run/workers.json", Y);
        t.push(&Allocation {
            name: "g".into(),
            pid: 1,
            socket: "/h/run/g/sock".into(),
            scope_allow: Vec::new(),
            scope_deny: Vec::new(),
            delegated_from: Some("child1".into()),
            segment_id: None,
        });
        let report = t.reclaim_delegated_scope("parent", "child1", &child1_rules());
        assert_eq!(report.reparented, ["g"]);
        assert_eq!(t.field("g", "delegated_from"), Some(&Value::from("parent")));
    }

    #[test]
    fn a_parent_that_left_the_table_keeps_its_children_top_level() {
        // A parent that shut down cleanly released its own allocation; its running
        // children kept theirs with `delegated_from: null`.
        let mut t = table("yoi-485918eb/live/run/workers.json", Y);
        assert!(t.release("parent"));
        assert_eq!(t.field("child1", "delegated_from"), Some(&Value::Null));
        let report = t.reclaim_delegated_scope("parent", "child1", &child1_rules());
        assert!(report.child_allocation_removed);
        assert_eq!(report.denies_removed, 0);
        assert_eq!(t.names(), ["child2", "child3"]);
    }

    #[test]
    fn missing_parent_and_child_change_nothing_but_are_not_errors() {
        let mut t = AllocTable::empty(I);
        let report = t.reclaim_delegated_scope("p", "c", &child1_rules());
        assert!(!report.child_allocation_removed);
        assert_eq!(report.denies_removed, 0);
        assert_eq!(t, AllocTable::empty(I));
    }

    #[test]
    fn empty_file_is_an_empty_table_and_new_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("pods.json");
        update(&path, I, Duration::from_secs(1), |_| (false, ())).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        std::fs::write(&path, b"  \n").unwrap();
        assert!(read(&path, I).unwrap().names().is_empty());
    }

    #[test]
    fn corrupt_table_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pods.json");
        for bad in [
            &b"{\"allocations\": ["[..],
            b"{\"allocations\": [{\"pid\": 1}]}",
            b"[]",
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = update(&path, I, Duration::from_secs(1), |_| (true, ())).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }));
            assert_eq!(std::fs::read(&path).unwrap(), bad);
        }
    }

    #[test]
    fn lock_wait_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pods.json");
        std::fs::write(
            &path,
            fixtures::read("insomnia-5472/live/run/pods.json", "/h"),
        )
        .unwrap();
        let holder = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusive).unwrap();
        let started = Instant::now();
        let err = update(&path, I, Duration::from_millis(100), |_| (false, ())).unwrap_err();
        assert!(matches!(err, Error::LockTimeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(holder);
        update(&path, I, Duration::from_millis(100), |_| (false, ())).unwrap();
    }

    #[test]
    fn unknown_fields_survive_in_place() {
        let mut v: Value =
            serde_json::from_str(&fixtures::read("insomnia-5472/live/run/pods.json", "/h"))
                .unwrap();
        v["version"] = 3.into();
        v["allocations"][0]["host"] = "a".into();
        let mut t = AllocTable::parse(&serde_json::to_vec_pretty(&v).unwrap(), I).unwrap();
        assert!(t.release("child2"));
        let after: Value = serde_json::from_slice(&t.to_bytes()).unwrap();
        assert_eq!(after["version"], 3);
        assert_eq!(after["allocations"][0]["host"], "a");
        assert_eq!(after["allocations"].as_array().unwrap().len(), 3);
    }
}
