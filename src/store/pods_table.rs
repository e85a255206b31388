//! `run/pods.json`: the machine-wide allocation table ("the scope lock").
//!
//! Runtime pods lock this very inode with `flock(2)` and wait forever, so podfs follows the
//! same protocol exactly: open without truncating, exclusive BSD lock on the file itself,
//! read-modify-write in place (never rename: others hold the inode), `fdatasync`, unlock.
//! podfs bounds its own wait and holds the lock for the read-modify-write only.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::scope::{ScopeRule, StoredRule};
use crate::store::to_runtime_json;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodsTable {
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub pod_name: String,
    pub pid: u32,
    pub socket: String,
    pub scope_allow: Vec<ScopeRule>,
    #[serde(default)]
    pub scope_deny: Vec<ScopeRule>,
    /// Always written; `null` means top-level.
    #[serde(default)]
    pub delegated_from: Option<String>,
    /// Always written; `null` is the spawner's reservation before the child adopts it.
    #[serde(default)]
    pub segment_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
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

impl PodsTable {
    /// Empty or whitespace-only content is an empty table, as in the runtime.
    pub fn parse(bytes: &[u8]) -> serde_json::Result<Self> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(PodsTable::default());
        }
        serde_json::from_slice(bytes)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        to_runtime_json(self)
    }

    pub fn get(&self, name: &str) -> Option<&Allocation> {
        self.allocations.iter().find(|a| a.pod_name == name)
    }

    /// The runtime's `reclaim_delegated_scope(parent, child, rules)`, step for step.
    pub fn reclaim_delegated_scope(
        &mut self,
        parent: &str,
        child: &str,
        rules: &[StoredRule],
    ) -> ReclaimReport {
        let mut report = ReclaimReport::default();
        if let Some(p) = self.allocations.iter_mut().find(|a| a.pod_name == parent) {
            for rule in rules.iter().filter(|r| r.is_write()) {
                match p.scope_deny.iter().position(|d| rule.same_rule(d)) {
                    Some(i) => {
                        p.scope_deny.remove(i);
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
        match self.get(child).map(|a| a.delegated_from.clone()) {
            Some(from) => (true, self.remove_and_reparent(child, from)),
            None => (false, Vec::new()),
        }
    }

    /// The runtime's `release_pod(name)`: remove it, move its children up one level.
    pub fn release_pod(&mut self, name: &str) -> bool {
        self.remove_child_allocation(name).0
    }

    fn remove_and_reparent(&mut self, name: &str, new_parent: Option<String>) -> Vec<String> {
        let mut moved = Vec::new();
        for a in &mut self.allocations {
            if a.delegated_from.as_deref() == Some(name) {
                a.delegated_from = new_parent.clone();
                moved.push(a.pod_name.clone());
            }
        }
        self.allocations.retain(|a| a.pod_name != name);
        moved
    }
}

/// Read without locking, for display only.
pub fn read(path: &Path) -> Result<PodsTable> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    PodsTable::parse(&bytes).map_err(|e| Error::corrupt(path, e))
}

/// Run a read-modify-write of `pods.json` under the runtime's locking protocol, waiting at
/// most `lock_wait` for the lock. `change` returns whether it modified the table; the file
/// is rewritten only then. On a parse error nothing is written.
pub fn update<T>(
    path: &Path,
    lock_wait: Duration,
    change: impl FnOnce(&mut PodsTable) -> (bool, T),
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
    let mut table = PodsTable::parse(&bytes).map_err(|e| Error::corrupt(path, e))?;
    let (changed, out) = change(&mut table);
    if changed {
        let new = table.to_bytes();
        // One positioned write of the whole buffer, then cut the tail: the file is never
        // observed empty by a reader that ignores the lock.
        locked
            .write_all_at(&new, 0)
            .and_then(|()| locked.set_len(new.len() as u64))
            .and_then(|()| locked.sync_data())
            .map_err(|e| Error::io(ctx("rewrite"), e))?;
    }
    tracing::debug!(
        held_us = started.elapsed().as_micros() as u64,
        changed,
        "pods.json lock released"
    );
    drop(locked);
    Ok(out)
}

enum LockError {
    TimedOut,
    Os(nix::errno::Errno),
}

/// A bounded try-lock loop: the runtime's own wait is unbounded, podfs's must not be.
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
    use crate::store::fixtures;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn staged(rel: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pods.json");
        std::fs::write(&path, fixtures::read(rel, "/h")).unwrap();
        (dir, path)
    }

    fn child1_rules() -> Vec<StoredRule> {
        vec![
            StoredRule::new("/h/work/sub1", "write", true),
            StoredRule::new("/h/work", "read", true),
        ]
    }

    #[test]
    fn fixtures_round_trip() {
        for rel in [
            "live/run/pods.json",
            "after-stop/run/pods.json",
            "after-crash-restore/run/pods.json",
        ] {
            let text = fixtures::read(rel, "/h");
            let table = PodsTable::parse(text.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(table.to_bytes()).unwrap(), text, "{rel}");
        }
    }

    #[test]
    fn reclaim_in_place_matches_the_runtime_after_stop() {
        let (_dir, path) = staged("live/run/pods.json");
        let inode = std::fs::metadata(&path).unwrap().ino();
        let report = update(&path, Duration::from_secs(1), |t| {
            let r = t.reclaim_delegated_scope("parent", "child1", &child1_rules());
            (true, r)
        })
        .unwrap();
        assert!(report.child_allocation_removed);
        // The parent was not restored, so it holds no deny layer to remove.
        assert_eq!(report.denies_not_found, ["write recursive /h/work/sub1"]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            fixtures::read("after-stop/run/pods.json", "/h")
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            inode,
            "must not rename"
        );
    }

    #[test]
    fn restored_parent_loses_exactly_one_equal_deny_per_write_rule() {
        let text = fixtures::read("after-crash-restore/run/pods.json", "/h");
        let mut table = PodsTable::parse(text.as_bytes()).unwrap();
        let deny = table.get("parent").unwrap().scope_deny[0].clone();
        // Stack a second identical layer and an unrelated overlapping one.
        let parent = table
            .allocations
            .iter_mut()
            .find(|a| a.pod_name == "parent")
            .unwrap();
        parent.scope_deny.push(deny.clone());
        let mut wider = deny.clone();
        wider.target = "/h/work".into();
        parent.scope_deny.push(wider);
        let rules = vec![
            StoredRule::new("/h/work/sub3", "write", true),
            StoredRule::new("/h/work", "read", true),
        ];
        let report = table.reclaim_delegated_scope("parent", "child3", &rules);
        assert_eq!(report.denies_removed, 1);
        let left: Vec<_> = table
            .get("parent")
            .unwrap()
            .scope_deny
            .iter()
            .map(|d| d.target.as_str())
            .collect();
        assert_eq!(left, ["/h/work/sub3", "/h/work"]);
        assert!(table.get("child3").is_none());
    }

    #[test]
    fn grandchildren_move_up_one_level() {
        let mut table =
            PodsTable::parse(fixtures::read("live/run/pods.json", "/h").as_bytes()).unwrap();
        let mut grandchild = table.get("child1").unwrap().clone();
        grandchild.pod_name = "g".into();
        grandchild.delegated_from = Some("child1".into());
        table.allocations.push(grandchild);
        let report = table.reclaim_delegated_scope("parent", "child1", &child1_rules());
        assert_eq!(report.reparented, ["g"]);
        assert_eq!(
            table.get("g").unwrap().delegated_from.as_deref(),
            Some("parent")
        );
    }

    #[test]
    fn missing_parent_and_child_change_nothing_but_are_not_errors() {
        let mut table = PodsTable::default();
        let report = table.reclaim_delegated_scope("p", "c", &child1_rules());
        assert_eq!(report, ReclaimReport::default());
    }

    #[test]
    fn empty_file_is_an_empty_table_and_new_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("pods.json");
        update(&path, Duration::from_secs(1), |_| (false, ())).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        std::fs::write(&path, b"  \n").unwrap();
        assert!(read(&path).unwrap().allocations.is_empty());
    }

    #[test]
    fn corrupt_table_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pods.json");
        std::fs::write(&path, b"{\"allocations\": [").unwrap();
        let err = update(&path, Duration::from_secs(1), |_| (true, ())).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }));
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"allocations\": [");
    }

    #[test]
    fn lock_wait_is_bounded() {
        let (_dir, path) = staged("live/run/pods.json");
        let holder = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusive).unwrap();
        let started = Instant::now();
        let err = update(&path, Duration::from_millis(100), |_| (false, ())).unwrap_err();
        assert!(matches!(err, Error::LockTimeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(holder);
        update(&path, Duration::from_millis(100), |_| (false, ())).unwrap();
    }

    #[test]
    fn unknown_fields_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pods.json");
        let mut v: Value =
            serde_json::from_str(&fixtures::read("live/run/pods.json", "/h")).unwrap();
        v["version"] = 3.into();
        v["allocations"][0]["host"] = "a".into();
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        update(&path, Duration::from_secs(1), |t| {
            (t.release_pod("child2"), ())
        })
        .unwrap();
        let after: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(after["version"], 3);
        assert_eq!(after["allocations"][0]["host"], "a");
        assert_eq!(after["allocations"].as_array().unwrap().len(), 3);
    }
}
