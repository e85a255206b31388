//! The spawned-pod registry of every parent, seen from outside the parent process.
//!
//! The durable truth is each parent's `metadata.json`; podfs caches its parse and
//! revalidates it by `stat` at most every [`REVALIDATE`], so `ls`, `stat` and `cat` of the
//! cheap files cost no socket I/O and usually no file I/O either. Cursors and status live
//! here too: cursors belong to the mount (the runtime never exposes its own), status is a
//! short-lived cache of socket probes.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::paths::{validate_pod_name, Paths};
use crate::protocol::wire::PodStatus;
use crate::protocol::{ops, Timeouts};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::scope::{Rule, StoredRule};
use crate::store::metadata;

/// How stale a cached parse may be before `stat` is consulted again. Well under the
/// contract's "about one second" for changes made by the runtime.
pub const REVALIDATE: Duration = Duration::from_millis(100);
/// How long a status probe result is served from cache.
pub const STATUS_TTL: Duration = Duration::from_millis(1000);
/// How long the last good parse is served while the file does not parse (the runtime's
/// torn writes are brief; a file corrupt for longer than this gets EIO).
pub const CORRUPT_GRACE: Duration = Duration::from_secs(2);
/// How often the list of pods is rescanned.
const ROOT_RESCAN: Duration = Duration::from_millis(500);

/// A child as podfs serves it: the four fields of a registry entry, stored compactly.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChildRecord {
    pub pod_name: Box<str>,
    pub socket_path: Box<str>,
    pub scope_delegated: Box<[Rule]>,
    pub callback_address: Box<str>,
}

impl ChildRecord {
    /// The rules in the shape the runtime's files use, for reclaiming them.
    pub fn stored_rules(&self) -> Vec<StoredRule> {
        self.scope_delegated.iter().map(Rule::to_stored).collect()
    }
}

/// The parts of `metadata.json` podfs serves. Read-only: every rewrite goes through the
/// full [`metadata::Metadata`], which keeps unknown fields.
#[derive(Deserialize)]
struct Registered {
    #[allow(dead_code)]
    pod_name: IgnoredAny,
    #[serde(default)]
    spawned_children: Vec<ChildRecord>,
    #[serde(default)]
    reclaimed_children: Vec<ReclaimedName>,
}

#[derive(Deserialize)]
struct ReclaimedName {
    pod_name: Box<str>,
}

/// A parent's registry with a name index (first match wins, as in the runtime).
#[derive(Debug)]
pub struct ParentView {
    children: Vec<ChildRecord>,
    index: HashMap<Box<str>, u32>,
    /// Children in registry order, valid names only, duplicates dropped.
    order: Vec<u32>,
    /// How often each name was reclaimed (the list is append-only and may repeat names).
    reclaimed: HashMap<Box<str>, usize>,
    pub mtime: SystemTime,
}

impl ParentView {
    fn new(parent: &str, registered: Registered, mtime: SystemTime) -> Self {
        let children = registered.spawned_children;
        let mut index = HashMap::with_capacity(children.len());
        let mut order = Vec::with_capacity(children.len());
        for (i, child) in children.iter().enumerate() {
            if validate_pod_name(&child.pod_name).is_err() {
                warn!(pod = parent, child = ?child.pod_name, "skipping child with invalid name");
                continue;
            }
            if !index.contains_key(&child.pod_name) {
                index.insert(child.pod_name.clone(), i as u32);
                order.push(i as u32);
            }
        }
        let mut reclaimed = HashMap::new();
        for r in registered.reclaimed_children {
            *reclaimed.entry(r.pod_name).or_default() += 1;
        }
        ParentView {
            children,
            index,
            order,
            reclaimed,
            mtime,
        }
    }

    pub fn child(&self, name: &str) -> Option<&ChildRecord> {
        self.index.get(name).map(|&i| &self.children[i as usize])
    }

    /// The `i`-th listed child (registry order, valid names, first of duplicates).
    pub fn child_at(&self, i: usize) -> &ChildRecord {
        &self.children[self.order[i] as usize]
    }

    pub fn children(&self) -> impl Iterator<Item = &ChildRecord> {
        self.order.iter().map(|&i| &self.children[i as usize])
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn times_reclaimed(&self, name: &str) -> usize {
        self.reclaimed.get(name).copied().unwrap_or(0)
    }
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

#[derive(Default)]
struct CachedParent {
    checked: Option<Instant>,
    stamp: Option<Stamp>,
    view: Option<Arc<ParentView>>,
    good_at: Option<Instant>,
}

/// Per-parent state: the cached view, and the lock that serialises every mutation of that
/// parent's files (one mutation path per parent).
#[derive(Default)]
pub struct ParentSlot {
    cache: Mutex<CachedParent>,
    pub mutation: Mutex<()>,
}

#[derive(Default)]
struct RootCache {
    scanned: Option<Instant>,
    pods: Arc<Vec<String>>,
}

pub struct Registry {
    pub paths: Paths,
    pub timeouts: Timeouts,
    parents: Mutex<HashMap<String, Arc<ParentSlot>>>,
    root: Mutex<RootCache>,
    cursors: Mutex<HashMap<String, HashMap<String, u64>>>,
    status: Mutex<HashMap<PathBuf, (PodStatus, Instant)>>,
}

impl Registry {
    pub fn new(paths: Paths, timeouts: Timeouts) -> Self {
        Registry {
            paths,
            timeouts,
            parents: Mutex::default(),
            root: Mutex::default(),
            cursors: Mutex::default(),
            status: Mutex::default(),
        }
    }

    /// Every pod with `pods/<name>/metadata.json`, sorted, valid UTF-8 names only.
    pub fn pods(&self) -> Result<Arc<Vec<String>>> {
        let mut root = self.root.lock();
        if let Some(at) = root.scanned {
            if at.elapsed() < ROOT_RESCAN {
                return Ok(root.pods.clone());
            }
        }
        let dir = self.paths.pods_dir();
        let mut pods = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let Ok(name) = entry.file_name().into_string() else {
                        continue;
                    };
                    if validate_pod_name(&name).is_ok()
                        && entry.path().join("metadata.json").is_file()
                    {
                        pods.push(name);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("list {}", dir.display()), e)),
        }
        pods.sort();
        root.pods = Arc::new(pods);
        root.scanned = Some(Instant::now());
        Ok(root.pods.clone())
    }

    pub fn slot(&self, parent: &str) -> Arc<ParentSlot> {
        let mut parents = self.parents.lock();
        if let Some(slot) = parents.get(parent) {
            return slot.clone();
        }
        let slot = Arc::new(ParentSlot::default());
        parents.insert(parent.to_string(), slot.clone());
        slot
    }

    /// The parent's registry, from cache when fresh. `NotFound` when the pod has no
    /// `metadata.json`; `Corrupt` (EIO) when it has not parsed for [`CORRUPT_GRACE`].
    pub fn parent(&self, parent: &str) -> Result<Arc<ParentView>> {
        validate_pod_name(parent)?;
        let slot = self.slot(parent);
        let mut cache = slot.cache.lock();
        if let (Some(at), Some(view)) = (cache.checked, &cache.view) {
            if at.elapsed() < REVALIDATE {
                return Ok(view.clone());
            }
        }
        self.revalidate(parent, &mut cache)
    }

    /// Drop the cached parse so the next access re-reads the file (after podfs's own writes).
    pub fn invalidate(&self, parent: &str) {
        let slot = self.slot(parent);
        let mut cache = slot.cache.lock();
        cache.checked = None;
        cache.stamp = None;
    }

    /// Re-read now, bypassing the revalidation interval.
    pub fn parent_fresh(&self, parent: &str) -> Result<Arc<ParentView>> {
        self.invalidate(parent);
        self.parent(parent)
    }

    fn revalidate(&self, parent: &str, cache: &mut CachedParent) -> Result<Arc<ParentView>> {
        let path = self.paths.metadata(parent);
        let now = Instant::now();
        let stat = match std::fs::metadata(&path) {
            Ok(stat) => stat,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                *cache = CachedParent::default();
                return Err(Error::NotFound(format!("pod {parent}")));
            }
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        let stamp = Stamp {
            ino: stat.ino(),
            size: stat.size(),
            mtime_ns: stat.mtime() as i128 * 1_000_000_000 + stat.mtime_nsec() as i128,
            ctime_ns: stat.ctime() as i128 * 1_000_000_000 + stat.ctime_nsec() as i128,
        };
        if let (Some(old), Some(view)) = (cache.stamp, &cache.view) {
            if old == stamp {
                cache.checked = Some(now);
                return Ok(view.clone());
            }
        }
        match metadata::read_as::<Registered>(&path) {
            Ok(registered) => {
                let mtime = stat.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                let view = Arc::new(ParentView::new(parent, registered, mtime));
                debug!(parent, children = view.len(), "metadata parsed");
                // A file modified within the filesystem's timestamp granularity could change
                // again without changing its stamp; do not trust such a stamp.
                let racy = SystemTime::now()
                    .duration_since(mtime)
                    .map_or(true, |age| age < Duration::from_millis(50));
                cache.stamp = (!racy).then_some(stamp);
                cache.view = Some(view.clone());
                cache.checked = Some(now);
                cache.good_at = Some(now);
                Ok(view)
            }
            Err(Error::NotFound(_)) => {
                *cache = CachedParent::default();
                Err(Error::NotFound(format!("pod {parent}")))
            }
            Err(e) => {
                let within_grace = cache.good_at.is_some_and(|at| at.elapsed() < CORRUPT_GRACE);
                match (&cache.view, within_grace) {
                    (Some(view), true) => {
                        warn!(parent, error = %e, "metadata.json unreadable; serving last good view");
                        Ok(view.clone())
                    }
                    _ => {
                        warn!(parent, error = %e, "metadata.json unreadable");
                        Err(e)
                    }
                }
            }
        }
    }

    /// The parent's view, after checking that it lists `child` (no copy of the record).
    pub fn child_view(&self, parent: &str, child: &str) -> Result<Arc<ParentView>> {
        let view = self.parent(parent)?;
        if view.child(child).is_none() {
            return Err(Error::NotFound(format!("{parent}/{child}")));
        }
        Ok(view)
    }

    /// A child of a parent, or `NotFound`.
    pub fn child(&self, parent: &str, child: &str) -> Result<(Arc<ParentView>, ChildRecord)> {
        let view = self.parent(parent)?;
        let found = view
            .child(child)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("{parent}/{child}")))?;
        Ok((view, found))
    }

    /// The socket podfs may connect to for `child`, refusing paths outside the runtime dir.
    pub fn child_socket(&self, child: &ChildRecord) -> Result<PathBuf> {
        let path = PathBuf::from(&*child.socket_path);
        if self.paths.socket_is_allowed(&path) {
            Ok(path)
        } else {
            warn!(child = %child.pod_name, socket = %path.display(), "registry socket outside runtime dir; not connecting");
            Err(Error::OutsideRuntimeDir(path))
        }
    }

    pub fn cursor(&self, parent: &str, child: &str) -> u64 {
        self.cursors
            .lock()
            .get(parent)
            .and_then(|m| m.get(child))
            .copied()
            .unwrap_or(0)
    }

    pub fn set_cursor(&self, parent: &str, child: &str, value: u64) {
        self.cursors
            .lock()
            .entry(parent.to_string())
            .or_default()
            .insert(child.to_string(), value);
    }

    /// Forget a reclaimed child's cursor, so a later child of the same name starts at 0.
    pub fn forget_child(&self, parent: &str, child: &str, socket: Option<&Path>) {
        if let Some(m) = self.cursors.lock().get_mut(parent) {
            m.remove(child);
        }
        if let Some(socket) = socket {
            self.status.lock().remove(socket);
        }
    }

    /// The cached status of a socket, if probed within [`STATUS_TTL`].
    pub fn cached_status(&self, socket: &Path) -> Option<PodStatus> {
        let status = self.status.lock();
        let (value, at) = status.get(socket)?;
        (at.elapsed() < STATUS_TTL).then_some(*value)
    }

    /// Probe now (blocking: call it off the FUSE request threads) and cache the result.
    pub fn probe_status(&self, socket: &Path) -> PodStatus {
        let value = ops::status(socket, &self.timeouts);
        self.status
            .lock()
            .insert(socket.to_path_buf(), (value, Instant::now()));
        value
    }

    /// Record a status podfs learned first-hand (a run it just started).
    pub fn note_status(&self, socket: &Path, value: PodStatus) {
        self.status
            .lock()
            .insert(socket.to_path_buf(), (value, Instant::now()));
    }

    /// Status of a child: cached, or probed (blocking).
    pub fn status(&self, child: &ChildRecord) -> PodStatus {
        let Ok(socket) = self.child_socket(child) else {
            return PodStatus::Unreachable;
        };
        self.cached_status(&socket)
            .unwrap_or_else(|| self.probe_status(&socket))
    }

    /// Whether a pod answers on its own socket (connect + Snapshot).
    pub fn pod_is_live(&self, pod: &str) -> bool {
        let socket = self.paths.socket(pod);
        ops::probe(&socket, &self.timeouts).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;

    fn staged(state: &str) -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        for rel in ["pods/parent/metadata.json", "pods/child1/metadata.json"] {
            let src = format!("{state}/{rel}");
            if fixtures::root().join(&src).exists() {
                let dst = dir.path().join(rel);
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::write(dst, fixtures::read(&src, &home)).unwrap();
            }
        }
        let reg = Registry::new(Paths::for_home(dir.path()), Timeouts::default());
        (dir, reg)
    }

    #[test]
    fn lists_pods_and_children() {
        let (_d, reg) = staged("live");
        assert_eq!(*reg.pods().unwrap(), ["child1", "parent"]);
        let view = reg.parent("parent").unwrap();
        let names: Vec<_> = view.children().map(|c| &*c.pod_name).collect();
        assert_eq!(names, ["child1", "child2", "child3"]);
        assert!(reg.parent("child1").unwrap().is_empty());
        assert!(matches!(reg.parent("nope"), Err(Error::NotFound(_))));
        assert!(matches!(reg.parent(".."), Err(Error::InvalidName(_))));
    }

    #[test]
    fn sees_runtime_rewrites_and_survives_torn_ones() {
        let (dir, reg) = staged("live");
        assert_eq!(reg.parent("parent").unwrap().len(), 3);
        let path = dir.path().join("pods/parent/metadata.json");
        // An in-place rewrite, as the runtime does it.
        let after = fixtures::read(
            "after-stop/pods/parent/metadata.json",
            dir.path().to_str().unwrap(),
        );
        std::fs::write(&path, after).unwrap();
        std::thread::sleep(REVALIDATE);
        assert_eq!(reg.parent("parent").unwrap().len(), 2);
        // Torn: served from the last good view within the grace period...
        std::fs::write(&path, b"{\"pod_na").unwrap();
        std::thread::sleep(REVALIDATE);
        assert_eq!(reg.parent("parent").unwrap().len(), 2);
        // ...and EIO once it stays corrupt.
        std::thread::sleep(CORRUPT_GRACE);
        let err = reg.parent("parent").unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
    }

    #[test]
    fn invalid_and_duplicate_names_are_hidden() {
        let (dir, reg) = staged("live");
        let path = dir.path().join("pods/parent/metadata.json");
        let mut meta = metadata::read(&path).unwrap();
        let mut bad = meta.spawned_children[0].clone();
        bad.pod_name = "../escape".into();
        let dup = meta.spawned_children[1].clone();
        meta.spawned_children.push(bad);
        meta.spawned_children.push(dup);
        metadata::write(&path, &meta).unwrap();
        let view = reg.parent_fresh("parent").unwrap();
        let names: Vec<_> = view.children().map(|c| &*c.pod_name).collect();
        assert_eq!(names, ["child1", "child2", "child3"]);
    }

    #[test]
    fn the_lean_view_agrees_with_the_full_metadata() {
        for state in ["live", "after-stop", "after-crash-restore"] {
            let (dir, reg) = staged(state);
            let full = metadata::read(&dir.path().join("pods/parent/metadata.json")).unwrap();
            let view = reg.parent("parent").unwrap();
            assert_eq!(view.len(), full.spawned_children.len(), "{state}");
            for (lean, child) in view.children().zip(&full.spawned_children) {
                assert_eq!(&*lean.pod_name, child.pod_name);
                assert_eq!(&*lean.socket_path, child.socket_path);
                assert_eq!(&*lean.callback_address, child.callback_address);
                assert_eq!(lean.stored_rules(), child.scope_delegated);
            }
            for name in ["child1", "child2", "child3"] {
                assert_eq!(
                    view.times_reclaimed(name),
                    full.times_reclaimed(name),
                    "{state} {name}"
                );
            }
        }
    }

    #[test]
    fn cursors_default_to_zero_and_are_per_child() {
        let (_d, reg) = staged("live");
        assert_eq!(reg.cursor("parent", "child1"), 0);
        reg.set_cursor("parent", "child1", 12);
        assert_eq!(reg.cursor("parent", "child1"), 12);
        assert_eq!(reg.cursor("parent", "child2"), 0);
        reg.forget_child("parent", "child1", None);
        assert_eq!(reg.cursor("parent", "child1"), 0);
    }

    #[test]
    fn unreachable_children_report_unreachable() {
        let (_d, reg) = staged("live");
        let (_, child) = reg.child("parent", "child2").unwrap();
        assert_eq!(reg.status(&child), PodStatus::Unreachable);
        let mut outside = child.clone();
        outside.socket_path = "/tmp/elsewhere/sock".into();
        assert_eq!(reg.status(&outside), PodStatus::Unreachable);
        assert!(matches!(
            reg.child_socket(&outside),
            Err(Error::OutsideRuntimeDir(_))
        ));
    }
}
