//! The parent cache: the durable registry files of every parent, parsed, kept current, and
//! the changes the runtime makes to them reported to whoever must act on them (the kernel's
//! caches, the cursors).
//!
//! Each parent's `metadata.json` is parsed once into a lean, read-only [`ParentView`] and
//! served from memory. Changes are noticed through inotify on the parent's directory (the
//! runtime rewrites the file in place; a reload follows within milliseconds); where inotify
//! is unavailable, a `stat` at most every [`REVALIDATE`] stands in for it. Nothing here
//! sleeps on a caller's thread: a torn read is retried at once a few times, then the last
//! good view is served until the file has stayed unreadable for [`CORRUPT_GRACE`] (counted
//! from when it went bad), and the inotify thread re-reads it when the writer is done.
//!
//! Pod directories and their `metadata.json` are read without following symlinks
//! ([`crate::confine`]): a symlinked pod is not a pod to podfs.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use parking_lot::{Condvar, Mutex};
use tracing::{debug, info, warn};

use crate::confine::Dir;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::name::PodName;
use crate::store::metadata::{self, ChildRecord};

/// Without inotify: how stale a cached parse may be before `stat` is consulted again.
pub const REVALIDATE: Duration = Duration::from_millis(100);
/// How long the last good parse is served while the file does not parse (the runtime's
/// torn writes are brief; a file corrupt for longer than this gets EIO).
pub const CORRUPT_GRACE: Duration = Duration::from_secs(2);
/// Without inotify: how often the list of pods is rescanned.
const ROOT_RESCAN: Duration = Duration::from_millis(500);
/// Quiet time after an inotify event before the file is read (the runtime truncates, then
/// writes: reading between the two would find it empty).
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Pause between re-reads of a file that did not parse, on the inotify thread.
const TORN_RETRY: Duration = Duration::from_millis(20);
/// Pod directories watched for the appearance of their `metadata.json`; beyond this the
/// pod list falls back to rescanning.
const MAX_POD_WATCHES: usize = 8192;

/// A parent's registry with a name index (first match wins, as in the runtime).
#[derive(Debug)]
pub struct ParentView {
    children: Vec<ChildRecord>,
    /// Listed children: valid names only, duplicates dropped, in registry order.
    listed: Vec<(PodName, u32)>,
    index: HashMap<PodName, u32>,
    /// How often each name was reclaimed (the list is append-only and may repeat names).
    reclaimed: HashMap<Box<str>, u64>,
    mtime: SystemTime,
}

impl ParentView {
    fn new(parent: &PodName, file: metadata::RegistryFile, mtime: SystemTime) -> Self {
        let children = file.spawned;
        let mut index = HashMap::with_capacity(children.len());
        let mut listed = Vec::with_capacity(children.len());
        for (i, child) in children.iter().enumerate() {
            let Ok(name) = PodName::new(&child.name) else {
                warn!(%parent, child = ?child.name, "skipping a child with an invalid name");
                continue;
            };
            if !index.contains_key(&name) {
                index.insert(name.clone(), i as u32);
                listed.push((name, i as u32));
            }
        }
        let mut reclaimed = HashMap::new();
        for name in file.reclaimed {
            *reclaimed.entry(name).or_default() += 1;
        }
        ParentView {
            children,
            listed,
            index,
            reclaimed,
            mtime,
        }
    }

    pub fn child(&self, name: &str) -> Option<&ChildRecord> {
        self.index.get(name).map(|&i| &self.children[i as usize])
    }

    /// The `i`-th listed child.
    pub fn child_at(&self, i: usize) -> (&PodName, &ChildRecord) {
        let (name, at) = &self.listed[i];
        (name, &self.children[*at as usize])
    }

    pub fn names(&self) -> impl Iterator<Item = &PodName> {
        self.listed.iter().map(|(n, _)| n)
    }

    pub fn len(&self) -> usize {
        self.listed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// Whether this pod has children or had some (a parent, as the root lists them).
    pub fn is_parent(&self) -> bool {
        !self.children.is_empty() || !self.reclaimed.is_empty()
    }

    /// How often `name` was reclaimed: a child removed and listed again is a new one.
    /// When the registry file last changed.
    pub fn mtime(&self) -> SystemTime {
        self.mtime
    }

    pub fn incarnation(&self, name: &str) -> u64 {
        self.reclaimed.get(name).copied().unwrap_or(0)
    }
}

/// What changed in the durable registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChange {
    /// The list of pods changed; these are no longer listed.
    Pods { removed: Vec<PodName> },
    /// A parent's registry changed; these children are no longer listed.
    Parent {
        parent: PodName,
        removed: Vec<PodName>,
    },
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
struct Cached {
    view: Option<Arc<ParentView>>,
    stamp: Option<Stamp>,
    checked: Option<Instant>,
    /// Since when the file has not parsed (it parsed before that, or never did).
    bad_since: Option<Instant>,
    /// Whether inotify reports changes to this parent's directory.
    watched: bool,
    /// An event arrived that has not been read yet.
    dirty: bool,
    /// The version (inode, size, mtime) of a file found too large, already warned about.
    too_large: Option<(u64, u64, i128)>,
}

/// Per-parent state: the cached view. (Mutations are serialised by
/// [`crate::reclaim::Removals`], never here: a lookup takes no mutation lock.)
#[derive(Default)]
struct ParentSlot {
    cache: Mutex<Cached>,
}

#[derive(Default)]
struct RootCache {
    scanned: Option<Instant>,
    pods: Arc<Vec<PodName>>,
    dirty: bool,
}

/// What an inotify watch descriptor stands for.
#[derive(Debug, Clone)]
enum Target {
    Data,
    Store,
    Pod(PodName),
}

struct Notify {
    inotify: Inotify,
    /// Whether the watcher thread runs and reads its events. Once it stops (it could not
    /// start, or a read failed), nothing is trusted to be current for being unchanged:
    /// every cached view is revalidated by `stat` as if there were no inotify at all.
    alive: AtomicBool,
    targets: Mutex<HashMap<i32, Target>>,
    pods: Mutex<HashMap<PodName, WatchDescriptor>>,
}

type Listener = Box<dyn Fn(&RegistryChange) + Send + Sync>;

pub struct ParentCache {
    home: Arc<Home>,
    parents: Mutex<HashMap<PodName, Arc<ParentSlot>>>,
    root: Mutex<RootCache>,
    notify: Option<Notify>,
    store_watched: Mutex<bool>,
    listener: OnceLock<Listener>,
    /// How many changes inotify has reported to parents' registries, and a condvar
    /// signalled with each: what a removal waits on for the parent's own bookkeeping.
    changes: Mutex<u64>,
    changed: Condvar,
}

/// How often a waiter re-reads a registry whose changes inotify does not report.
const UNWATCHED_RECHECK: Duration = Duration::from_millis(20);

impl ParentCache {
    /// A cache over `home`, with inotify when `use_inotify` and the kernel allows it.
    pub fn new(home: Arc<Home>, use_inotify: bool) -> Arc<ParentCache> {
        let notify = if use_inotify {
            match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
                Ok(inotify) => Some(Notify {
                    inotify,
                    alive: AtomicBool::new(true),
                    targets: Mutex::new(HashMap::new()),
                    pods: Mutex::new(HashMap::new()),
                }),
                Err(e) => {
                    warn!(error = %e, "inotify unavailable; registry changes are found by stat");
                    None
                }
            }
        } else {
            None
        };
        let cache = Arc::new(ParentCache {
            home,
            parents: Mutex::new(HashMap::new()),
            root: Mutex::new(RootCache::default()),
            notify,
            store_watched: Mutex::new(false),
            listener: OnceLock::new(),
            changes: Mutex::new(0),
            changed: Condvar::new(),
        });
        if let Some(n) = &cache.notify {
            if let Ok(data) = cache.home.data() {
                cache.add_watch(n, &data, Target::Data);
            }
            cache.watch_store();
            let weak = Arc::downgrade(&cache);
            let spawned = thread::Builder::new()
                .name("podfs-registry".into())
                .spawn(move || watch_loop(weak));
            if let Err(e) = spawned {
                n.alive.store(false, Ordering::SeqCst);
                warn!(error = %e, "cannot start the registry watcher; registry changes are found by stat");
            }
        }
        cache
    }

    /// The home the registries are in.
    pub fn home(&self) -> &Arc<Home> {
        &self.home
    }

    /// Whether inotify reports changes now (for the log and the tests).
    pub fn uses_inotify(&self) -> bool {
        self.notify
            .as_ref()
            .is_some_and(|n| n.alive.load(Ordering::SeqCst))
    }

    /// Who hears about changes. Called from the inotify thread or a request thread: it must
    /// not call into the kernel synchronously.
    pub fn set_listener(&self, listener: Listener) {
        let _ = self.listener.set(listener);
    }

    fn emit(&self, change: RegistryChange) {
        if let Some(l) = self.listener.get() {
            l(&change);
        }
    }

    /// Watch the directory `dir` (opened without following a symlink: the watch is put on
    /// that very inode, through `/proc/self/fd`, where `/proc` is there).
    fn add_watch(&self, n: &Notify, dir: &Dir, target: Target) -> Option<WatchDescriptor> {
        let (path, follow) = if crate::confine::proc_fd_works() {
            let link = format!("/proc/self/fd/{}", dir.fd().as_raw_fd());
            (std::path::PathBuf::from(link), AddWatchFlags::empty())
        } else {
            (dir.path().to_path_buf(), AddWatchFlags::IN_DONT_FOLLOW)
        };
        let mask = match target {
            Target::Data | Target::Store => {
                AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_ONLYDIR
            }
            // IN_DONT_FOLLOW only by name: /proc's link to the directory podfs opened
            // without following one must be followed to reach it.
            Target::Pod(_) => {
                AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_ONLYDIR
            }
        };
        match n.inotify.add_watch(&path, mask | follow) {
            Ok(wd) => {
                n.targets.lock().insert(wd.as_raw(), target);
                Some(wd)
            }
            Err(e) => {
                debug!(path = %dir.path().display(), error = %e, "no inotify watch");
                None
            }
        }
    }

    fn watch_store(&self) {
        let Some(n) = &self.notify else { return };
        let mut watched = self.store_watched.lock();
        if !*watched {
            *watched = self
                .home
                .store()
                .ok()
                .and_then(|store| self.add_watch(n, &store, Target::Store))
                .is_some();
        }
    }

    /// Watch a pod's directory; true when changes to it will be reported.
    fn watch_pod(&self, pod: &PodName) -> bool {
        let Some(n) = &self.notify else { return false };
        if n.pods.lock().contains_key(pod) {
            return true;
        }
        if n.pods.lock().len() >= MAX_POD_WATCHES {
            return false;
        }
        let Ok(dir) = self.home.pod_dir(pod) else {
            return false;
        };
        match self.add_watch(n, &dir, Target::Pod(pod.clone())) {
            Some(wd) => {
                n.pods.lock().insert(pod.clone(), wd);
                true
            }
            None => false,
        }
    }

    fn unwatch_pod(&self, pod: &PodName) {
        let Some(n) = &self.notify else { return };
        if let Some(wd) = n.pods.lock().remove(pod) {
            n.targets.lock().remove(&wd.as_raw());
            let _ = n.inotify.rm_watch(wd);
        }
    }

    /// Every pod with `<store>/<name>/metadata.json`, sorted, valid names only.
    pub fn pods(&self) -> Result<Arc<Vec<PodName>>> {
        let watched = *self.store_watched.lock() && self.uses_inotify();
        let mut root = self.root.lock();
        let fresh = match root.scanned {
            Some(_) if watched => !root.dirty,
            Some(at) => at.elapsed() < ROOT_RESCAN,
            None => false,
        };
        if fresh {
            return Ok(root.pods.clone());
        }
        let pods = Arc::new(self.scan()?);
        let removed: Vec<PodName> = root
            .pods
            .iter()
            .filter(|p| pods.binary_search(p).is_err())
            .cloned()
            .collect();
        root.pods = pods.clone();
        root.scanned = Some(Instant::now());
        root.dirty = false;
        drop(root);
        for pod in &removed {
            self.parents.lock().remove(pod);
            self.unwatch_pod(pod);
        }
        if !removed.is_empty() {
            self.emit(RegistryChange::Pods { removed });
        }
        Ok(pods)
    }

    /// The pods the root lists: those that have children or had some. A pod that never
    /// spawned one is listed under its parent only (it is still reachable by name), so a
    /// removed child does not linger at the top; a parent whose last child was removed
    /// stays. A pod whose registry cannot be read is listed, so its error can be seen.
    pub fn parents(&self) -> Result<Arc<Vec<PodName>>> {
        let pods = self.pods()?;
        let listed: Vec<PodName> = pods
            .iter()
            .filter(|p| match self.parent(p) {
                Ok(view) => view.is_parent(),
                Err(Error::NotFound(_)) => false,
                Err(_) => true,
            })
            .cloned()
            .collect();
        Ok(Arc::new(listed))
    }

    fn scan(&self) -> Result<Vec<PodName>> {
        let store = match self.home.store() {
            Ok(store) => store,
            Err(e) if is_absent(&e) => return Ok(Vec::new()),
            Err(e) => {
                let path = self.home.data_path().join(self.home.generation().store_dir);
                return Err(Error::io(format!("list {}", path.display()), e));
            }
        };
        let names = store
            .names()
            .map_err(|e| Error::io(format!("list {}", store.path().display()), e))?;
        let mut pods = Vec::new();
        for name in names {
            let Ok(name) = PodName::new(&name) else {
                continue;
            };
            // A symlink is not a pod directory to podfs, nor is another user's (see
            // crate::confine).
            let Ok(dir) = store.sub(name.as_str()) else {
                continue;
            };
            // Watched before the check, so a metadata.json written right after the
            // check is still noticed.
            self.watch_pod(&name);
            if dir.stat(metadata::FILE).is_ok_and(|s| s.is_file()) {
                pods.push(name);
            }
        }
        pods.sort();
        Ok(pods)
    }

    fn slot(&self, parent: &PodName) -> Option<Arc<ParentSlot>> {
        self.parents.lock().get(parent).cloned()
    }

    /// The slot of `parent`, made when it is first read.
    fn slot_or_new(&self, parent: &PodName) -> Arc<ParentSlot> {
        let mut parents = self.parents.lock();
        parents.entry(parent.clone()).or_default().clone()
    }

    /// The parent's registry, from memory when it is current. `NotFound` when the pod has
    /// no `metadata.json`; `Corrupt` (EIO) when it has not parsed for [`CORRUPT_GRACE`].
    /// Looking up a pod that does not exist leaves nothing behind.
    pub fn parent(&self, parent: &PodName) -> Result<Arc<ParentView>> {
        if let Some(slot) = self.slot(parent) {
            let cache = slot.cache.lock();
            if let Some(view) = &cache.view {
                let current = if cache.watched && self.uses_inotify() {
                    !cache.dirty
                } else {
                    cache.checked.is_some_and(|at| at.elapsed() < REVALIDATE)
                };
                if current {
                    return Ok(view.clone());
                }
            }
        }
        self.revalidate(parent, false)
    }

    /// Re-read now, whatever the cache says (after podfs's own writes, before a removal).
    pub fn refresh(&self, parent: &PodName) -> Result<Arc<ParentView>> {
        self.revalidate(parent, true)
    }

    fn revalidate(&self, parent: &PodName, force: bool) -> Result<Arc<ParentView>> {
        let path = self
            .home
            .data_path()
            .join(self.home.generation().store_dir)
            .join(parent.as_str())
            .join(metadata::FILE);
        let not_found = || Error::NotFound(format!("pod {parent}"));
        let found = self
            .home
            .pod_dir(parent)
            .and_then(|dir| dir.stat(metadata::FILE).map(|stat| (dir, stat)));
        let (dir, stat) = match found {
            Ok((dir, stat)) if stat.mode & libc::S_IFMT == libc::S_IFREG => (dir, stat),
            // Missing, or a symlink (or not a directory) where the pod should be.
            Ok(_) => {
                self.gone(parent);
                return Err(not_found());
            }
            Err(e) if is_absent(&e) => {
                self.gone(parent);
                return Err(not_found());
            }
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        let stamp = Stamp {
            ino: stat.ino,
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            ctime_ns: stat.ctime_ns,
        };
        let slot = self.slot_or_new(parent);
        let mut cache = slot.cache.lock();
        let now = Instant::now();
        if !force {
            if let (Some(old), Some(view)) = (cache.stamp, cache.view.clone()) {
                if old == stamp {
                    cache.checked = Some(now);
                    cache.dirty = false;
                    return Ok(view);
                }
            }
        }
        if !cache.watched {
            cache.watched = self.watch_pod(parent);
        }
        // The runtime's torn writes last microseconds: re-read at once, never sleep here.
        let mut parsed = Err(Error::NotFound(String::new()));
        let mut mtime = stat.mtime;
        for attempt in 0..3 {
            if attempt > 0 {
                thread::yield_now();
            }
            parsed = match dir.read(metadata::FILE) {
                Ok((bytes, read_stamp)) => {
                    mtime = read_stamp.mtime;
                    metadata::parse_registry(&bytes, self.home.generation())
                        .map_err(|e| Error::corrupt(&path, e))
                }
                Err(e) if is_absent(&e) => Err(not_found()),
                Err(e) if e.raw_os_error() == Some(crate::confine::TOO_BIG) => {
                    Err(Error::TooLarge {
                        path: path.clone(),
                        limit: self.home.read_cap(),
                    })
                }
                Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
            };
            if !matches!(parsed, Err(Error::Corrupt { .. })) {
                break;
            }
        }
        match parsed {
            Ok(file) => {
                if file.malformed > 0 {
                    warn!(%parent, entries = file.malformed,
                          "registry entries without the runtime's shape are not shown; the rest are");
                }
                let view = Arc::new(ParentView::new(parent, file, mtime));
                debug!(%parent, children = view.len(), "metadata parsed");
                // A file modified within the filesystem's timestamp granularity could change
                // again without changing its stamp; do not trust such a stamp.
                let racy = SystemTime::now()
                    .duration_since(mtime)
                    .map_or(true, |age| age < Duration::from_millis(50));
                let old = cache.view.replace(view.clone());
                cache.stamp = (!racy).then_some(stamp);
                cache.checked = Some(now);
                cache.bad_since = None;
                cache.dirty = false;
                drop(cache);
                if let Some(old) = old {
                    let removed: Vec<PodName> = old
                        .names()
                        .filter(|n| {
                            view.child(n).is_none() || view.incarnation(n) != old.incarnation(n)
                        })
                        .cloned()
                        .collect();
                    self.emit(RegistryChange::Parent {
                        parent: parent.clone(),
                        removed,
                    });
                }
                Ok(view)
            }
            Err(Error::NotFound(_)) => {
                drop(cache);
                self.gone(parent);
                Err(Error::NotFound(format!("pod {parent}")))
            }
            Err(e @ Error::TooLarge { .. }) => {
                // A file too large to read is that parent's error until it changes;
                // said once per version of the file, not at every look.
                let version = (stamp.ino, stamp.size, stamp.mtime_ns);
                if cache.too_large != Some(version) {
                    cache.too_large = Some(version);
                    warn!(%parent, error = %e, "metadata.json is larger than podfs reads; that parent answers EFBIG");
                }
                Err(e)
            }
            Err(e) => {
                let bad_since = *cache.bad_since.get_or_insert(now);
                let within_grace = bad_since.elapsed() < CORRUPT_GRACE;
                match (&cache.view, within_grace) {
                    (Some(view), true) => {
                        debug!(%parent, error = %e, "metadata.json unreadable; serving the last good view");
                        Ok(view.clone())
                    }
                    _ => {
                        warn!(%parent, error = %e, "metadata.json unreadable");
                        Err(e)
                    }
                }
            }
        }
    }

    /// A pod whose `metadata.json` is gone: forget it, so nothing of it stays behind.
    fn gone(&self, parent: &PodName) {
        let removed = self.parents.lock().remove(parent);
        self.unwatch_pod(parent);
        if let Some(slot) = removed {
            let old = slot.cache.lock().view.take();
            if let Some(old) = old {
                self.emit(RegistryChange::Parent {
                    parent: parent.clone(),
                    removed: old.names().cloned().collect(),
                });
            }
        }
    }

    /// The parent's view, after checking that it lists `child`.
    pub fn child_view(&self, parent: &PodName, child: &str) -> Result<Arc<ParentView>> {
        let view = self.parent(parent)?;
        if view.child(child).is_none() {
            return Err(Error::NotFound(format!("{parent}/{child}")));
        }
        Ok(view)
    }

    /// Parents currently cached (for tests of memory behaviour).
    pub fn cached(&self) -> usize {
        self.parents.lock().len()
    }

    fn mark_dirty(&self, pod: &PodName) {
        if let Some(slot) = self.slot(pod) {
            slot.cache.lock().dirty = true;
        }
        *self.changes.lock() += 1;
        self.changed.notify_all();
    }

    /// A count of the registry changes inotify reported; pass it to
    /// [`ParentCache::wait_for_change`] after reading what it covers.
    pub fn changes(&self) -> u64 {
        *self.changes.lock()
    }

    /// Wait until a registry change is reported after `seen` ([`ParentCache::changes`]),
    /// or `until`. Where inotify does not cover `parent` (no inotify, or past the watch
    /// limit), wakes every [`UNWATCHED_RECHECK`] instead, so the caller re-reads.
    pub fn wait_for_change(&self, parent: &PodName, seen: u64, until: Instant) {
        let watched = self.uses_inotify()
            && self
                .slot(parent)
                .is_some_and(|slot| slot.cache.lock().watched);
        let until = if watched {
            until
        } else {
            until.min(Instant::now() + UNWATCHED_RECHECK)
        };
        let mut changes = self.changes.lock();
        while *changes == seen {
            // A watcher that stopped meanwhile wakes this (see `watch_loop`): re-read.
            if self.changed.wait_until(&mut changes, until).timed_out() || !self.uses_inotify() {
                return;
            }
        }
    }

    fn mark_root_dirty(&self) {
        self.root.lock().dirty = true;
    }
}

/// Whether an error opening a pod's directory or file means it is not there (missing, or
/// a symlink or a file where a directory should be).
fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

/// The inotify thread: marks what changed at once (readers then re-read on access), and
/// after a short quiet period re-reads it itself, so the change reaches the kernel's caches
/// even if nobody looks.
fn watch_loop(cache: Weak<ParentCache>) {
    let mut pending: HashSet<PodName> = HashSet::new();
    let mut root_pending = false;
    loop {
        let Some(c) = cache.upgrade() else { return };
        let Some(n) = &c.notify else { return };
        let timeout = if pending.is_empty() && !root_pending {
            PollTimeout::from(1000u16)
        } else {
            PollTimeout::try_from(DEBOUNCE).unwrap_or(PollTimeout::ZERO)
        };
        let ready = {
            let mut fds = [PollFd::new(n.inotify.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, timeout).unwrap_or(0)
        };
        if ready > 0 {
            let read = if crate::failpoint::is_armed("inotify-read") {
                Err(nix::errno::Errno::EIO)
            } else {
                n.inotify.read_events()
            };
            let events = match read {
                Ok(events) => events,
                Err(nix::errno::Errno::EAGAIN) => Vec::new(),
                Err(e) => {
                    // From now on every look revalidates by stat (see `Notify::alive`).
                    n.alive.store(false, Ordering::SeqCst);
                    warn!(error = %e, "inotify read failed; registry changes are found by stat from now on");
                    c.changed.notify_all();
                    return;
                }
            };
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    let all: Vec<PodName> = c.parents.lock().keys().cloned().collect();
                    for pod in all {
                        c.mark_dirty(&pod);
                        pending.insert(pod);
                    }
                    root_pending = true;
                    c.mark_root_dirty();
                    continue;
                }
                let target = n.targets.lock().get(&event.wd.as_raw()).cloned();
                let name = event.name.as_ref().and_then(|n| n.to_str());
                match target {
                    Some(Target::Data) if name == Some(c.home.generation().store_dir) => {
                        c.watch_store();
                        root_pending = true;
                        c.mark_root_dirty();
                    }
                    Some(Target::Store) => {
                        root_pending = true;
                        c.mark_root_dirty();
                    }
                    Some(Target::Pod(pod))
                        if name == Some("metadata.json")
                            || event.mask.contains(AddWatchFlags::IN_DELETE_SELF) =>
                    {
                        c.mark_dirty(&pod);
                        pending.insert(pod);
                        if event.mask.intersects(
                            AddWatchFlags::IN_CREATE
                                | AddWatchFlags::IN_DELETE
                                | AddWatchFlags::IN_MOVED_FROM
                                | AddWatchFlags::IN_MOVED_TO
                                | AddWatchFlags::IN_DELETE_SELF,
                        ) {
                            root_pending = true;
                            c.mark_root_dirty();
                        }
                    }
                    _ => {}
                }
            }
            continue;
        }
        // Quiet: read what changed.
        if root_pending {
            root_pending = false;
            if let Err(e) = c.pods() {
                debug!(error = %e, "rescanning the pod list failed");
            }
        }
        let mut retry = HashSet::new();
        for pod in pending.drain() {
            if c.slot(&pod).is_none() {
                continue;
            }
            match c.revalidate(&pod, false) {
                Err(Error::Corrupt { .. }) => {
                    retry.insert(pod);
                }
                Err(Error::NotFound(_)) => info!(%pod, "pod no longer has a metadata.json"),
                _ => {}
            }
        }
        if !retry.is_empty() {
            thread::sleep(TORN_RETRY);
            pending = retry;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::INSOMNIA_5472;
    use crate::test_fixtures as fixtures;

    fn n(s: &str) -> PodName {
        PodName::new(s).unwrap()
    }

    fn staged(state: &str, inotify: bool) -> (tempfile::TempDir, Arc<ParentCache>) {
        let dir = crate::test_fixtures::tempdir();
        let home = dir.path().to_str().unwrap().to_string();
        for rel in ["pods/parent/metadata.json", "pods/child1/metadata.json"] {
            let src = format!("insomnia-5472/{state}/{rel}");
            if fixtures::root().join(&src).exists() {
                let dst = dir.path().join(rel);
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::write(dst, fixtures::read(&src, &home)).unwrap();
            }
        }
        let cache = ParentCache::new(
            Arc::new(Home::for_home(dir.path(), &INSOMNIA_5472).unwrap()),
            inotify,
        );
        (dir, cache)
    }

    fn wait_until(mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "condition not met");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn lists_pods_and_children() {
        let (_d, cache) = staged("live", true);
        assert_eq!(*cache.pods().unwrap(), [n("child1"), n("parent")]);
        let view = cache.parent(&n("parent")).unwrap();
        let names: Vec<_> = view.names().map(|c| c.as_str()).collect();
        assert_eq!(names, ["child1", "child2", "child3"]);
        assert!(cache.parent(&n("child1")).unwrap().is_empty());
        assert!(matches!(cache.parent(&n("nope")), Err(Error::NotFound(_))));
    }

    #[test]
    fn lookups_of_missing_pods_leave_nothing_behind() {
        let (_d, cache) = staged("live", true);
        cache.parent(&n("parent")).unwrap();
        let before = cache.cached();
        for i in 0..1000 {
            assert!(cache.parent(&n(&format!("missing{i}"))).is_err());
        }
        assert_eq!(cache.cached(), before);
    }

    fn rewrite_and_see_it(inotify: bool) {
        let (dir, cache) = staged("live", inotify);
        assert_eq!(cache.uses_inotify(), inotify);
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = changes.clone();
        cache.set_listener(Box::new(move |c| sink.lock().push(c.clone())));
        assert_eq!(cache.parent(&n("parent")).unwrap().len(), 3);
        let path = dir.path().join("pods/parent/metadata.json");
        // An in-place rewrite, as the runtime does it.
        let after = fixtures::read(
            "insomnia-5472/after-stop/pods/parent/metadata.json",
            dir.path().to_str().unwrap(),
        );
        std::fs::write(&path, after).unwrap();
        wait_until(|| cache.parent(&n("parent")).unwrap().len() == 2);
        let view = cache.parent(&n("parent")).unwrap();
        assert_eq!(view.incarnation("child1"), 1);
        assert!(changes.lock().contains(&RegistryChange::Parent {
            parent: n("parent"),
            removed: vec![n("child1")],
        }));
        // Torn: served from the last good view within the grace period...
        std::fs::write(&path, b"{\"pod_na").unwrap();
        thread::sleep(REVALIDATE + DEBOUNCE * 4);
        assert_eq!(cache.parent(&n("parent")).unwrap().len(), 2);
        // ...and EIO once it stays corrupt.
        thread::sleep(CORRUPT_GRACE);
        assert_eq!(cache.refresh(&n("parent")).unwrap_err().errno(), libc::EIO);
    }

    #[test]
    fn sees_runtime_rewrites_and_survives_torn_ones_with_inotify() {
        rewrite_and_see_it(true);
    }

    #[test]
    fn sees_runtime_rewrites_and_survives_torn_ones_by_stat() {
        rewrite_and_see_it(false);
    }

    #[test]
    fn a_change_is_noticed_without_anyone_asking() {
        let (dir, cache) = staged("live", true);
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = changes.clone();
        cache.set_listener(Box::new(move |c| sink.lock().push(c.clone())));
        cache.pods().unwrap();
        cache.parent(&n("parent")).unwrap();
        let path = dir.path().join("pods/parent/metadata.json");
        let after = fixtures::read(
            "insomnia-5472/after-stop/pods/parent/metadata.json",
            dir.path().to_str().unwrap(),
        );
        std::fs::write(&path, after).unwrap();
        wait_until(|| !changes.lock().is_empty());
        // A new pod appears in the list, a removed one disappears.
        std::fs::create_dir_all(dir.path().join("pods/newpod")).unwrap();
        std::fs::write(
            dir.path().join("pods/newpod/metadata.json"),
            br#"{"pod_name":"newpod"}"#,
        )
        .unwrap();
        wait_until(|| cache.pods().unwrap().contains(&n("newpod")));
        std::fs::remove_dir_all(dir.path().join("pods/child1")).unwrap();
        wait_until(|| {
            changes.lock().contains(&RegistryChange::Pods {
                removed: vec![n("child1")],
            })
        });
    }

    #[test]
    fn invalid_and_duplicate_names_are_hidden() {
        let (dir, cache) = staged("live", false);
        let path = dir.path().join("pods/parent/metadata.json");
        let mut meta = metadata::read(&path, &INSOMNIA_5472).unwrap();
        let mut children = meta.children().unwrap();
        let mut bad = children[0].clone();
        bad.name = "../escape".into();
        let dup = children[1].clone();
        children.push(bad);
        children.push(dup);
        meta.set_children(&children);
        metadata::write(&path, &meta).unwrap();
        let view = cache.refresh(&n("parent")).unwrap();
        let names: Vec<_> = view.names().map(|c| c.as_str()).collect();
        assert_eq!(names, ["child1", "child2", "child3"]);
    }
}
