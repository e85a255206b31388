//! The filesystem logic: the tree, attributes, open handles, and what each operation means.
//! Free of `fuser` types, so it is driven without a mount in tests; [`adapter`] only
//! translates.
//!
//! Every operation decides once, by the kind of file it touches, whether it can answer at
//! once: the registry files answer from the parent cache, and so do the live files of a
//! child whose watch is ready. Otherwise the operation returns [`Step::Wait`] with the
//! watch to wait for; the caller runs it again once the watch is ready (or its bound
//! passed), and the second answer is final. Nothing here blocks: removals, the one blocking
//! operation, run on the worker pool ([`PodFs::rmdir`]).

pub mod adapter;
pub mod files;
pub mod inode;
pub mod kernel;
pub mod writes;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tracing::{debug, error, info, warn};

use crate::cursors::Cursors;
use crate::error::{Error, Result};
use crate::name::PodName;
use crate::parents::{ParentCache, ParentView, RegistryChange};
use crate::pod_client::{PodClient, SocketPath};
use crate::pool::Pool;
use crate::protocol::history::{effective_cursor, file_len};
use crate::reclaim;
use crate::scope::render_scope;
use crate::store::metadata::ChildRecord;
use crate::watch::live::{Callback, LiveState, Reach, Topic};
use crate::watch::{Watch, Watches};

use files::FileKind;
use inode::{Inodes, Node};
use kernel::{Inval, KernelQueue};
use writes::{Child, CursorValue, Delivery, Message};

/// Attributes in a form the adapter can translate.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub is_dir: bool,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub mtime: SystemTime,
    /// The content changes on its own (the live files): the kernel must not cache these
    /// attributes, so `stat` always shows the size a read would return now.
    pub volatile: bool,
}

/// One directory entry, borrowed from an open directory's listing.
#[derive(Debug, Clone, PartialEq)]
pub struct DirEntry<'a> {
    pub ino: u64,
    pub is_dir: bool,
    pub name: &'a str,
    /// Attributes, when listing with them (readdirplus).
    pub attr: Option<Attr>,
}

/// An operation's answer.
pub enum Step<T> {
    Ready(Result<T>),
    /// Ask again once this watch knows the child's state, or after the bound.
    Wait(Arc<Watch>, Duration),
}

impl<T> Step<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Step<U> {
        match self {
            Step::Ready(r) => Step::Ready(r.map(f)),
            Step::Wait(w, b) => Step::Wait(w, b),
        }
    }

    /// The answer of a second round, which may not wait again.
    pub fn into_result(self) -> Result<T> {
        match self {
            Step::Ready(r) => r,
            Step::Wait(..) => Err(Error::Timeout("the child did not answer in time".into())),
        }
    }
}

impl<T> From<Result<T>> for Step<T> {
    fn from(r: Result<T>) -> Self {
        Step::Ready(r)
    }
}

macro_rules! ready {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Step::Ready(Err(e)),
        }
    };
}

/// A control file of a child.
#[derive(Debug, Clone)]
struct ChildFile {
    pod: PodName,
    child: PodName,
    kind: FileKind,
}

/// What an open file handle holds.
enum Handle {
    /// A value fixed at open and made again by a read at offset 0, like sysfs: `cat` sees
    /// one consistent value, and a program that polls re-reads from 0 to see the new one.
    Value {
        file: ChildFile,
        bytes: Mutex<Arc<[u8]>>,
        /// For `status`: the version the bytes show (poll wakes when it moves).
        seen: AtomicU64,
        watch: Option<Arc<Watch>>,
    },
    /// One snapshot of the new text, taken at open (the cursor moved past it then).
    Output {
        bytes: Arc<[u8]>,
        file: ChildFile,
        watch: Option<Arc<Watch>>,
    },
    /// All text of the current history, read live; empty without a watch.
    Log {
        watch: Option<Arc<Watch>>,
        seen: AtomicU64,
    },
    Input {
        file: ChildFile,
        watch: Option<Arc<Watch>>,
        message: Mutex<Message>,
    },
    Cursor {
        file: ChildFile,
        incarnation: u64,
        value: Mutex<CursorValue>,
        bytes: Mutex<Arc<[u8]>>,
    },
}

impl Handle {
    fn watch(&self) -> Option<&Arc<Watch>> {
        match self {
            Handle::Value { watch, .. }
            | Handle::Output { watch, .. }
            | Handle::Log { watch, .. }
            | Handle::Input { watch, .. } => watch.as_ref(),
            Handle::Cursor { .. } => None,
        }
    }
}

/// What an open directory handle holds: the directory as of `opendir`, so that a listing
/// split over several `readdir` calls is consistent.
enum Listing {
    /// A pod's children, straight from the registry view: no per-entry copies, which
    /// matters for a parent with ten thousand children.
    Pod {
        pod: PodName,
        view: Arc<ParentView>,
        inos: Arc<Vec<u64>>,
    },
    Root {
        pods: Arc<Vec<PodName>>,
    },
    Child {
        pod: PodName,
        child: PodName,
    },
}

/// Settings of the logic layer.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Threads of the pool that runs removals.
    pub pool_threads: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { pool_threads: 4 }
    }
}

type CursorKey = (PodName, PodName);
/// A registry view and its children's inode numbers, in listing order.
type ChildInos = (Arc<ParentView>, Arc<Vec<u64>>);
/// The text an `output` open took, and the watch it came from.
type Taken = (Arc<[u8]>, Option<Arc<Watch>>);

pub struct PodFs {
    pub parents: Arc<ParentCache>,
    pub client: Arc<PodClient>,
    pub watches: Arc<Watches>,
    cursors: Arc<Cursors<CursorKey>>,
    inodes: Inodes,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    /// Children's inode numbers per pod, computed once per version of its registry.
    child_inos: Arc<Mutex<HashMap<PodName, ChildInos>>>,
    pub kernel: Arc<KernelQueue>,
    pub pool: Pool,
    /// Open `output` snapshots per child (handle, size): while one is open, `stat` of
    /// `output` shows its size, so a tool that stats, opens, stats the descriptor and
    /// reads (`tar`, `rsync`) sees one consistent size.
    open_outputs: Mutex<HashMap<CursorKey, Vec<(u64, u64)>>>,
    next_fh: AtomicU64,
    started: SystemTime,
}

fn dir_attr(ino: u64, perm: u16, subdirs: usize, mtime: SystemTime) -> Attr {
    Attr {
        ino,
        is_dir: true,
        size: 0,
        perm,
        nlink: 2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2),
        mtime,
        volatile: false,
    }
}

/// `size` bytes from `offset` of `text` as a file body (newline-terminated).
fn slice_of_text(text: &str, offset: u64, size: u32) -> Vec<u8> {
    let total = file_len(text) as usize;
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
    let end = start.saturating_add(size as usize).min(total);
    let mut out = Vec::with_capacity(end - start);
    let body = text.as_bytes();
    if start < body.len() {
        out.extend_from_slice(&body[start..end.min(body.len())]);
    }
    // The newline a body without one gets sits at `body.len()`.
    if (start..end).contains(&body.len()) {
        out.push(b'\n');
    }
    out
}

fn slice(bytes: &[u8], offset: u64, size: u32) -> Vec<u8> {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = start.saturating_add(size as usize).min(bytes.len());
    bytes[start..end].to_vec()
}

/// What `status` shows for a child without a watch (its socket is outside the runtime dir).
const UNREACHABLE: &[u8] = b"unreachable\n";

impl PodFs {
    pub fn new(
        parents: Arc<ParentCache>,
        client: Arc<PodClient>,
        watches: Arc<Watches>,
        settings: &Settings,
    ) -> PodFs {
        let cursors: Arc<Cursors<CursorKey>> = Arc::new(Cursors::default());
        let kernel = Arc::new(KernelQueue::default());
        let child_inos: Arc<Mutex<HashMap<PodName, _>>> = Arc::default();
        {
            let (cursors, kernel, child_inos) =
                (cursors.clone(), kernel.clone(), child_inos.clone());
            parents.set_listener(Box::new(move |change| match change {
                RegistryChange::Pods { removed } => {
                    for pod in removed {
                        cursors.retain(|(parent, _)| parent != pod);
                        child_inos.lock().remove(pod);
                        kernel.push(Inval::Entry(inode::ROOT, pod.to_string()));
                    }
                    kernel.push(Inval::Inode(inode::ROOT));
                }
                RegistryChange::Parent { parent, removed } => {
                    let pod_ino = inode::pod_ino(parent);
                    for child in removed {
                        cursors.forget(&(parent.clone(), child.clone()));
                        kernel.push(Inval::Entry(pod_ino, child.to_string()));
                    }
                    kernel.push(Inval::Inode(pod_ino));
                }
            }));
        }
        PodFs {
            parents,
            client,
            watches,
            cursors,
            inodes: Inodes::default(),
            handles: Mutex::default(),
            dirs: Mutex::default(),
            child_inos,
            kernel,
            pool: Pool::new(settings.pool_threads),
            open_outputs: Mutex::default(),
            next_fh: AtomicU64::new(1),
            started: SystemTime::now(),
        }
    }

    fn node(&self, ino: u64) -> Result<Node> {
        self.inodes
            .resolve(ino)
            .ok_or_else(|| Error::NotFound(format!("inode {ino}")))
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// One log line with what the mount holds: inode-table entries, open handles,
    /// watches, the text they hold, and the watch counters (`kill -USR1` asks for it).
    pub fn report(&self) {
        let stats = &self.watches.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
        tracing::info!(
            inodes = self.inodes.len(),
            handles = self.handles.lock().len(),
            watches = self.watches.len(),
            text_bytes = self.watches.text_bytes(),
            watches_started = load(&stats.started),
            watches_ended = load(&stats.ended),
            connects = load(&stats.connects),
            snapshots = load(&stats.snapshots),
            resyncs = load(&stats.resyncs),
            evicted_for_memory = load(&stats.evicted_for_memory),
            threads,
            "report"
        );
    }

    /// The watch of a child, counted as interest; `None` for a socket outside the runtime
    /// dir, which podfs never connects to.
    fn watch_of(&self, record: &ChildRecord) -> Option<Arc<Watch>> {
        let socket: SocketPath = self.client.socket(&record.socket_path).ok()?;
        Some(self.watches.watch(&socket))
    }

    fn bound(&self, kind: FileKind) -> Duration {
        match kind {
            FileKind::Status => self.client.timeouts.status_wait,
            _ => self.client.timeouts.io,
        }
    }

    // -----------------------------------------------------------------------------------
    // Attributes

    fn root_attr(&self) -> Result<Attr> {
        let pods = self.parents.pods()?;
        Ok(dir_attr(inode::ROOT, 0o555, pods.len(), self.started))
    }

    fn pod_attr(&self, pod: &PodName) -> Result<Attr> {
        let view = self.parents.parent(pod)?;
        Ok(dir_attr(
            self.inodes.number(&Node::Pod(pod.clone())),
            0o755,
            view.len(),
            view.mtime,
        ))
    }

    fn child_attr(&self, pod: &PodName, child: &PodName) -> Result<Attr> {
        let view = self.parents.child_view(pod, child)?;
        Ok(dir_attr(
            self.inodes.number(&Node::Child(pod.clone(), child.clone())),
            0o755,
            0,
            view.mtime,
        ))
    }

    /// The bytes of a value file (no socket I/O).
    fn value(&self, view: &ParentView, pod: &PodName, child: &PodName, kind: FileKind) -> Vec<u8> {
        let record = view.child(child).expect("checked by the caller");
        let text = match kind {
            FileKind::Socket => format!("{}\n", record.socket_path),
            FileKind::Scope => render_scope(&record.scope_delegated),
            FileKind::Callback if record.callback_address.is_empty() => String::new(),
            FileKind::Callback => format!("{}\n", record.callback_address),
            FileKind::Cursor => {
                let key = (pod.clone(), child.clone());
                format!("{}\n", self.cursors.get(&key, view.incarnation(child)))
            }
            _ => unreachable!("not a value file: {kind:?}"),
        };
        text.into_bytes()
    }

    /// Size and mtime of a live file, from the child's watch.
    fn live_size(
        &self,
        view: &ParentView,
        pod: &PodName,
        child: &PodName,
        kind: FileKind,
        now: bool,
    ) -> Step<(u64, SystemTime)> {
        let record = view.child(child).expect("checked by the caller");
        let Some(w) = self.watch_of(record) else {
            let size = if kind == FileKind::Status {
                UNREACHABLE.len() as u64
            } else {
                0
            };
            return Step::Ready(Ok((size, view.mtime)));
        };
        // The cursor first: it is locked before the watch elsewhere.
        let cursor = (kind == FileKind::Output).then(|| {
            self.cursors
                .get(&(pod.clone(), child.clone()), view.incarnation(child))
        });
        let Some(s) = w.state_if_ready(now) else {
            return Step::Wait(w.clone(), self.bound(kind));
        };
        Step::Ready(Ok(match kind {
            FileKind::Status => (s.status_word().as_str().len() as u64 + 1, s.status_changed),
            FileKind::Log => (
                s.history.as_ref().map_or(0, |h| file_len(h.text())),
                s.text_changed,
            ),
            FileKind::Output => {
                let open = self
                    .open_outputs
                    .lock()
                    .get(&(pod.clone(), child.clone()))
                    .and_then(|v| v.last().map(|(_, size)| *size));
                let size = match (&s.history, s.reach, cursor) {
                    _ if open.is_some() => open.unwrap_or(0),
                    (Some(h), Reach::Live, Some(c)) if s.fresh => {
                        file_len(h.text_from(effective_cursor(h.len(), c)))
                    }
                    _ => 0,
                };
                (size, s.text_changed)
            }
            _ => unreachable!("not a live file"),
        }))
    }

    fn file_attr(&self, pod: &PodName, child: &PodName, kind: FileKind, now: bool) -> Step<Attr> {
        let view = ready!(self.parents.child_view(pod, child));
        let ino = self
            .inodes
            .number(&Node::File(pod.clone(), child.clone(), kind));
        let attr = |size, mtime| Attr {
            ino,
            is_dir: false,
            size,
            perm: kind.perm(),
            nlink: 1,
            mtime,
            // `cursor` changes only through podfs, which tells the kernel when it does
            // (see `cursor_moved`), so its attributes may be cached like any file's.
            volatile: kind.is_live(),
        };
        match kind {
            FileKind::Socket | FileKind::Scope | FileKind::Callback | FileKind::Cursor => {
                let size = self.value(&view, pod, child, kind).len() as u64;
                Step::Ready(Ok(attr(size, view.mtime)))
            }
            FileKind::Input => Step::Ready(Ok(attr(0, view.mtime))),
            FileKind::Status | FileKind::Log | FileKind::Output => self
                .live_size(&view, pod, child, kind, now)
                .map(|(size, mtime)| attr(size, mtime)),
        }
    }

    fn attr_of(&self, node: &Node, now: bool) -> Step<Attr> {
        match node {
            Node::Root => self.root_attr().into(),
            Node::Pod(pod) => self.pod_attr(pod).into(),
            Node::Child(pod, child) => self.child_attr(pod, child).into(),
            Node::File(pod, child, kind) => self.file_attr(pod, child, *kind, now),
        }
    }

    pub fn getattr(&self, ino: u64, now: bool) -> Step<Attr> {
        let node = ready!(self.node(ino));
        self.attr_of(&node, now)
    }

    /// Look `name` up in directory `parent`; a success counts one kernel reference.
    ///
    /// Never waits: the kernel holds the directory locked during a lookup, and a shell's
    /// `> input` (an `O_CREAT` open) in the same directory would wait behind it. A live
    /// file whose child has not answered yet gets provisional attributes the kernel does
    /// not cache; the `stat` that follows waits in `getattr`, which holds no lock.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let node = match self.node(parent)? {
            Node::Root => Node::Pod(PodName::from_os(name)?),
            Node::Pod(pod) => Node::Child(pod, PodName::from_os(name)?),
            Node::Child(pod, child) => {
                let kind = name
                    .to_str()
                    .and_then(FileKind::from_name)
                    .ok_or_else(|| Error::NotFound(format!("{pod}/{child}/{name:?}")))?;
                Node::File(pod, child, kind)
            }
            Node::File(..) => return Err(Error::NotDir),
        };
        let mut attr = self.attr_of(&node, true).into_result()?;
        attr.ino = self.inodes.remember(&node);
        Ok(attr)
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// `O_TRUNC` on the writable files is accepted; every other attribute change is not.
    pub fn truncate(&self, ino: u64, size: u64) -> Step<Attr> {
        match ready!(self.node(ino)) {
            Node::File(pod, child, kind) if kind.writable() && size == 0 => {
                self.file_attr(&pod, &child, kind, true)
            }
            Node::File(..) => Step::Ready(Err(Error::ReadOnly)),
            _ => Step::Ready(Err(Error::IsDir)),
        }
    }

    /// `access(2)` against the honest modes, so `test -w socket` is false even on a private
    /// mount where the kernel does not check modes itself.
    pub fn access(&self, ino: u64, write: bool) -> Result<()> {
        let perm = match self.node(ino)? {
            Node::Root => 0o555,
            Node::Pod(_) | Node::Child(..) => 0o755,
            Node::File(_, _, kind) => kind.perm(),
        };
        if write && perm & 0o222 == 0 {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }

    // -----------------------------------------------------------------------------------
    // Directories

    /// The inode numbers of `view`'s children, cached while the view is current.
    fn inos_of(&self, pod: &PodName, view: &Arc<ParentView>) -> Arc<Vec<u64>> {
        if let Some((cached, inos)) = self.child_inos.lock().get(pod) {
            if Arc::ptr_eq(cached, view) {
                return inos.clone();
            }
        }
        let inos: Arc<Vec<u64>> = Arc::new(
            view.names()
                .map(|c| self.inodes.number(&Node::Child(pod.clone(), c.clone())))
                .collect(),
        );
        self.child_inos
            .lock()
            .insert(pod.clone(), (view.clone(), inos.clone()));
        inos
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let listing = match self.node(ino)? {
            Node::Root => Listing::Root {
                pods: self.parents.pods()?,
            },
            Node::Pod(pod) => {
                let view = self.parents.parent(&pod)?;
                let inos = self.inos_of(&pod, &view);
                Listing::Pod { pod, view, inos }
            }
            Node::Child(pod, child) => {
                let view = self.parents.child_view(&pod, &child)?;
                // Start watching now: a listing with attributes will need the sizes.
                let _ = self.watch_of(view.child(&child).expect("checked"));
                Listing::Child { pod, child }
            }
            Node::File(..) => return Err(Error::NotDir),
        };
        let fh = self.fh();
        self.dirs.lock().insert(fh, Arc::new(listing));
        Ok(fh)
    }

    /// Feed the entries of an open directory from position `offset` on (`.` and `..`
    /// first) to `emit`, with the offset of the entry after each, until `emit` says the
    /// reply is full. With `plus`, entries carry attributes and each one emitted counts a
    /// kernel reference.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        mut emit: impl FnMut(u64, DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let listing = self
            .dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("directory handle {fh}")))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let (ino, parent_ino, len) = match &*listing {
            Listing::Root { pods } => (inode::ROOT, inode::ROOT, pods.len()),
            Listing::Pod { pod, view, .. } => (
                self.inodes.number(&Node::Pod(pod.clone())),
                inode::ROOT,
                view.len(),
            ),
            Listing::Child { pod, child } => (
                self.inodes.number(&Node::Child(pod.clone(), child.clone())),
                self.inodes.number(&Node::Pod(pod.clone())),
                FileKind::ALL.len(),
            ),
        };
        // Never waits (the directory is locked meanwhile): live sizes not known yet are
        // provisional and not cached by the kernel.
        let mut file_attrs: HashMap<FileKind, Attr> = HashMap::new();
        if let (true, Listing::Child { pod, child }) = (plus, &*listing) {
            for kind in FileKind::ALL {
                if let Ok(a) = self.file_attr(pod, child, kind, true).into_result() {
                    file_attrs.insert(kind, a);
                }
            }
        }
        for k in start..len + 2 {
            // The kernel takes no reference for `.` and `..`; their attributes are a formality.
            let dot = |name: &'static str, ino| DirEntry {
                ino,
                is_dir: true,
                name,
                attr: plus.then(|| dir_attr(ino, 0o755, 0, self.started)),
            };
            let (entry, node) = match (k, &*listing) {
                (0, _) => (dot(".", ino), None),
                (1, _) => (dot("..", parent_ino), None),
                (k, Listing::Root { pods }) => {
                    let pod = &pods[k - 2];
                    let node = Node::Pod(pod.clone());
                    let attr = if plus {
                        match self.pod_attr(pod) {
                            Ok(a) => Some(a),
                            // Vanished since opendir: skip rather than fail the listing.
                            Err(_) => continue,
                        }
                    } else {
                        None
                    };
                    let entry = DirEntry {
                        ino: self.inodes.number(&node),
                        is_dir: true,
                        name: pod,
                        attr,
                    };
                    (entry, Some(node))
                }
                (k, Listing::Pod { pod, view, inos }) => {
                    let (name, _) = view.child_at(k - 2);
                    let child_ino = inos[k - 2];
                    let entry = DirEntry {
                        ino: child_ino,
                        is_dir: true,
                        name,
                        attr: plus.then(|| dir_attr(child_ino, 0o755, 0, view.mtime)),
                    };
                    if emit(k as u64 + 1, entry) {
                        break;
                    }
                    if plus {
                        self.inodes.remember_child(child_ino, pod, name);
                    }
                    continue;
                }
                (k, Listing::Child { pod, child }) => {
                    let kind = FileKind::ALL[k - 2];
                    let attr = if plus {
                        match file_attrs.get(&kind) {
                            Some(a) => Some(a.clone()),
                            None => continue,
                        }
                    } else {
                        None
                    };
                    let node = Node::File(pod.clone(), child.clone(), kind);
                    let entry = DirEntry {
                        ino: self.inodes.number(&node),
                        is_dir: false,
                        name: kind.name(),
                        attr,
                    };
                    (entry, Some(node))
                }
            };
            if emit(k as u64 + 1, entry) {
                break;
            }
            if let (true, Some(node)) = (plus, node) {
                self.inodes.remember(&node);
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    // -----------------------------------------------------------------------------------
    // Files

    /// Open a file; `write` when the caller asked for write access.
    pub fn open(&self, ino: u64, write: bool, now: bool) -> Step<u64> {
        let Node::File(pod, child, kind) = ready!(self.node(ino)) else {
            return Step::Ready(Err(Error::IsDir));
        };
        if write && !kind.writable() {
            return Step::Ready(Err(Error::ReadOnly));
        }
        let view = ready!(self.parents.child_view(&pod, &child));
        let file = ChildFile {
            pod: pod.clone(),
            child: child.clone(),
            kind,
        };
        let record = view.child(&child).expect("checked by child_view");
        let handle = match kind {
            FileKind::Socket | FileKind::Scope | FileKind::Callback => Handle::Value {
                bytes: Mutex::new(self.value(&view, &pod, &child, kind).into()),
                file,
                seen: AtomicU64::new(0),
                watch: None,
            },
            FileKind::Cursor => Handle::Cursor {
                bytes: Mutex::new(self.value(&view, &pod, &child, kind).into()),
                incarnation: view.incarnation(&child),
                value: Mutex::new(CursorValue::default()),
                file,
            },
            FileKind::Input => {
                // Start watching: the first write will need the child's state.
                let watch = self.watch_of(record);
                Handle::Input {
                    file,
                    watch,
                    message: Mutex::new(Message::default()),
                }
            }
            FileKind::Status => {
                let (bytes, seen, watch) = match self.watch_of(record) {
                    None => (UNREACHABLE.into(), 0, None),
                    Some(w) => {
                        let Some(s) = w.state_if_ready(now) else {
                            return Step::Wait(w.clone(), self.bound(kind));
                        };
                        let bytes = format!("{}\n", s.status_word()).into_bytes();
                        let seen = s.status_version;
                        drop(s);
                        (bytes.into(), seen, Some(w))
                    }
                };
                Handle::Value {
                    file,
                    bytes: Mutex::new(bytes),
                    seen: AtomicU64::new(seen),
                    watch,
                }
            }
            FileKind::Output => {
                let incarnation = view.incarnation(&child);
                match self.take_output(&pod, &child, incarnation, record, now) {
                    Step::Ready(Ok((bytes, watch))) => Handle::Output { bytes, file, watch },
                    Step::Ready(Err(e)) => return Step::Ready(Err(e)),
                    Step::Wait(w, b) => return Step::Wait(w, b),
                }
            }
            FileKind::Log => match self.watch_of(record) {
                None => Handle::Log {
                    watch: None,
                    seen: AtomicU64::new(0),
                },
                Some(w) => {
                    let Some(s) = w.state_if_ready(now) else {
                        return Step::Wait(w.clone(), self.bound(kind));
                    };
                    if let Some(e) = self.no_history(&s) {
                        return Step::Ready(Err(e));
                    }
                    let seen = s.text_version;
                    drop(s);
                    Handle::Log {
                        watch: Some(w),
                        seen: AtomicU64::new(seen),
                    }
                }
            },
        };
        if let Some(w) = handle.watch() {
            w.pin();
        }
        let fh = self.fh();
        if let Handle::Output { bytes, file, .. } = &handle {
            self.open_outputs
                .lock()
                .entry((file.pod.clone(), file.child.clone()))
                .or_default()
                .push((fh, bytes.len() as u64));
        }
        self.handles.lock().insert(fh, Arc::new(handle));
        Step::Ready(Ok(fh))
    }

    /// Why a history cannot be shown, if it cannot: a child that accepted the connection
    /// and never answered in the I/O bound (`ETIMEDOUT`), never an empty success.
    fn no_history(&self, s: &LiveState) -> Option<Error> {
        match s.reach {
            Reach::Silent => Some(Error::Timeout(
                "the child accepted the connection but sent no Snapshot in time".into(),
            )),
            Reach::Pending => Some(Error::Timeout("the child did not answer in time".into())),
            Reach::Live if !s.fresh => Some(Error::Timeout(
                "the child's history could not be refreshed in time".into(),
            )),
            Reach::Live | Reach::Gone => None,
        }
    }

    /// ReadPodOutput with the mount's cursor: the new text since the cursor, and the cursor
    /// moved past it, in one step with the cursor locked (two readers never get the same
    /// text). An unreachable child gives nothing and leaves the cursor alone.
    fn take_output(
        &self,
        pod: &PodName,
        child: &PodName,
        incarnation: u64,
        record: &ChildRecord,
        now: bool,
    ) -> Step<Taken> {
        let Some(w) = self.watch_of(record) else {
            return Step::Ready(Ok((Arc::from(&b""[..]), None)));
        };
        {
            let Some(s) = w.state_if_ready(now) else {
                return Step::Wait(w.clone(), self.bound(FileKind::Output));
            };
            if let Some(e) = self.no_history(&s) {
                return Step::Ready(Err(e));
            }
            if s.reach == Reach::Gone {
                drop(s);
                return Step::Ready(Ok((Arc::from(&b""[..]), Some(w))));
            }
        }
        let key = (pod.clone(), child.clone());
        let taken = self.cursors.update(&key, incarnation, |cursor| {
            let s = w.state();
            let Some(h) = s.history.as_ref() else {
                return (Vec::new(), *cursor, *cursor);
            };
            let before = *cursor;
            let start = effective_cursor(h.len(), *cursor);
            if start < *cursor {
                warn!(%pod, %child, cursor = *cursor, len = h.len(), "history shrank below the cursor; starting over");
            }
            let text = h.text_from(start);
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() && !text.ends_with('\n') {
                bytes.push(b'\n');
            }
            *cursor = h.len();
            (bytes, before, h.len())
        });
        let (bytes, before, after) = taken;
        self.cursor_moved(pod, child, before, after);
        Step::Ready(Ok((bytes.into(), Some(w))))
    }

    /// The kernel may hold `cursor`'s attributes for the attribute TTL: drop them whenever
    /// the value changes length (the size is all that depends on the value). Queued, never
    /// sent from the request thread: this may run inside a request on the cursor file.
    fn cursor_moved(&self, pod: &PodName, child: &PodName, before: u64, after: u64) {
        if before.to_string().len() == after.to_string().len() {
            return;
        }
        let node = Node::File(pod.clone(), child.clone(), FileKind::Cursor);
        self.kernel.push(Inval::Inode(self.inodes.number(&node)));
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("file handle {fh}")))
    }

    /// A value file's bytes now (a read at offset 0 refreshes them).
    fn regenerate(
        &self,
        file: &ChildFile,
        watch: Option<&Arc<Watch>>,
        seen: &AtomicU64,
    ) -> Option<Vec<u8>> {
        if file.kind == FileKind::Status {
            let w = watch?;
            let s = w.state();
            seen.store(s.status_version, Ordering::Relaxed);
            return Some(format!("{}\n", s.status_word()).into_bytes());
        }
        let view = self.parents.child_view(&file.pod, &file.child).ok()?;
        Some(self.value(&view, &file.pod, &file.child, file.kind))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        match &*self.handle(fh)? {
            Handle::Value {
                file,
                bytes,
                seen,
                watch,
            } => {
                if offset == 0 {
                    if let Some(new) = self.regenerate(file, watch.as_ref(), seen) {
                        *bytes.lock() = new.into();
                    }
                }
                Ok(slice(&bytes.lock(), offset, size))
            }
            Handle::Cursor {
                file,
                bytes,
                incarnation,
                ..
            } => {
                if offset == 0 {
                    let key = (file.pod.clone(), file.child.clone());
                    let value = format!("{}\n", self.cursors.get(&key, *incarnation));
                    *bytes.lock() = value.into_bytes().into();
                }
                Ok(slice(&bytes.lock(), offset, size))
            }
            Handle::Output { bytes, .. } => Ok(slice(bytes, offset, size)),
            Handle::Log { watch, seen } => match watch {
                Some(w) => {
                    let s = w.state();
                    seen.store(s.text_version, Ordering::Relaxed);
                    Ok(s.history
                        .as_ref()
                        .map_or_else(Vec::new, |h| slice_of_text(h.text(), offset, size)))
                }
                None => Ok(Vec::new()),
            },
            // Reading input returns nothing, so tree-walking tools copy it without an error.
            Handle::Input { .. } => Ok(Vec::new()),
        }
    }

    pub fn write(&self, fh: u64, data: &[u8], now: bool) -> Step<usize> {
        let handle = ready!(self.handle(fh));
        match &*handle {
            Handle::Cursor { file, value, .. } => {
                // The child may have gone meanwhile; then so has its cursor.
                ready!(self.parents.child_view(&file.pod, &file.child));
                value.lock().write(data).into()
            }
            Handle::Input { watch, message, .. } => {
                let child = match watch {
                    None => Child::Unreachable,
                    Some(w) => {
                        let Some(s) = w.state_if_ready(now) else {
                            return Step::Wait(w.clone(), self.client.timeouts.io);
                        };
                        match s.reach {
                            Reach::Live if s.takes_input() => Child::Takes,
                            Reach::Live => Child::Busy,
                            _ => Child::Unreachable,
                        }
                    }
                };
                w_touch(watch);
                message.lock().write(data, child).into()
            }
            _ => Step::Ready(Err(Error::ReadOnly)),
        }
    }

    /// `close()` of one descriptor: a cursor value takes effect (so `echo 0 > cursor; cat
    /// output` sees it), a refused or cut message says so. The message itself is sent when
    /// the last descriptor closes ([`PodFs::release`]).
    pub fn flush(&self, fh: u64) -> Result<()> {
        match &*self.handle(fh)? {
            Handle::Cursor {
                file,
                value,
                incarnation,
                ..
            } => {
                if let Some(v) = value.lock().at_close()? {
                    let view = self.parents.child_view(&file.pod, &file.child)?;
                    if view.incarnation(&file.child) != *incarnation {
                        return Err(Error::NotFound(format!("{}/{}", file.pod, file.child)));
                    }
                    let key = (file.pod.clone(), file.child.clone());
                    let before = self.cursors.set(&key, *incarnation, v);
                    self.cursor_moved(&file.pod, &file.child, before, v);
                    debug!(pod = %file.pod, child = %file.child, cursor = v, "cursor set");
                }
                Ok(())
            }
            Handle::Input { message, .. } => message.lock().at_close(),
            _ => Ok(()),
        }
    }

    /// The last descriptor of an open closed.
    pub fn release(&self, fh: u64) {
        let Some(handle) = self.handles.lock().remove(&fh) else {
            return;
        };
        if let Some(w) = handle.watch() {
            w.unpin();
        }
        if let Handle::Output { file, .. } = &*handle {
            let key = (file.pod.clone(), file.child.clone());
            let mut open = self.open_outputs.lock();
            if let Some(list) = open.get_mut(&key) {
                list.retain(|(h, _)| *h != fh);
                if list.is_empty() {
                    open.remove(&key);
                }
            }
        }
        if let Handle::Input {
            file,
            watch,
            message,
        } = &*handle
        {
            let delivery = message.lock().finish();
            self.deliver(file, watch.as_ref(), delivery);
        }
    }

    /// Hand a finished message to the child. The writer is gone by now, so every outcome
    /// is logged, and a message that cannot be sent is logged at error level.
    fn deliver(&self, file: &ChildFile, watch: Option<&Arc<Watch>>, delivery: Delivery) {
        let (pod, child) = (file.pod.clone(), file.child.clone());
        match delivery {
            Delivery::Nothing => {}
            Delivery::Dropped(writes::Refusal::Incomplete) => {
                error!(%pod, %child, "message not sent: it ends in the middle of a character");
            }
            Delivery::Dropped(why) => {
                debug!(%pod, %child, ?why, "refused message discarded; its writer was told");
            }
            Delivery::Send(text) => {
                let Some(w) = watch else {
                    error!(%pod, %child, "message not sent: the child's socket is outside the runtime dir");
                    return;
                };
                let bytes = text.len();
                w.send_run(
                    text,
                    Box::new(move |outcome| match outcome {
                        Ok(()) => info!(%pod, %child, bytes, "message delivered"),
                        Err(e) => error!(%pod, %child, bytes, error = %e,
                            "message not delivered: the child refused it after its writer closed"),
                    }),
                );
            }
        }
    }

    /// Whether the file has something new for `poll`; if not, `wake` runs when it has.
    pub fn poll(&self, fh: u64, wake: Callback) -> Result<bool> {
        let handle = self.handle(fh)?;
        match &*handle {
            Handle::Value {
                seen,
                watch: Some(w),
                file,
                ..
            } if file.kind == FileKind::Status => {
                Ok(!w.when_changed(Topic::Status, seen.load(Ordering::Relaxed), wake))
            }
            Handle::Log {
                seen,
                watch: Some(w),
                ..
            } => Ok(!w.when_changed(Topic::Text, seen.load(Ordering::Relaxed), wake)),
            Handle::Output {
                file,
                watch: Some(w),
                ..
            } => {
                // Readable when a new open would return text.
                let view = self.parents.child_view(&file.pod, &file.child)?;
                let key = (file.pod.clone(), file.child.clone());
                let cursor = self.cursors.get(&key, view.incarnation(&file.child));
                let s = w.state();
                let pending = s
                    .history
                    .as_ref()
                    .is_some_and(|h| !h.text_from(effective_cursor(h.len(), cursor)).is_empty());
                let version = s.text_version;
                drop(s);
                Ok(pending || !w.when_changed(Topic::Text, version, wake))
            }
            // Everything else never changes on its own: always readable, like a file.
            _ => Ok(true),
        }
    }

    // -----------------------------------------------------------------------------------
    // Removal

    /// Unlinking a control file succeeds and changes nothing: `rm -r` removes the files
    /// before the directory, and only `rmdir` stops and reclaims.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        match self.node(parent)? {
            Node::Child(pod, child) => {
                name.to_str()
                    .and_then(FileKind::from_name)
                    .ok_or_else(|| Error::NotFound(format!("{pod}/{child}/{name:?}")))?;
                self.parents.child_view(&pod, &child)?;
                Ok(())
            }
            Node::Pod(_) | Node::Root => {
                PodName::from_os(name)?;
                Err(Error::IsDir)
            }
            Node::File(..) => Err(Error::NotDir),
        }
    }

    /// `rmdir <parent>/<child>`: stop and reclaim. Blocking: run it on [`PodFs::pool`].
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        match self.node(parent)? {
            Node::Pod(pod) => {
                let child = PodName::from_os(name)?;
                let view = self.parents.parent(&pod)?;
                let socket = view
                    .child(&child)
                    .and_then(|r| self.client.socket(&r.socket_path).ok());
                reclaim::remove_child(&self.parents, &self.client, &pod, &child)?;
                self.cursors.forget(&(pod, child));
                if let Some(socket) = socket {
                    self.watches.end(&socket);
                }
                Ok(())
            }
            Node::Root => {
                PodName::from_os(name)?;
                Err(Error::NotPermitted(
                    "pods themselves cannot be removed; remove their children".into(),
                ))
            }
            Node::Child(..) | Node::File(..) => Err(Error::NotDir),
        }
    }

    /// Release everything held (at unmount).
    pub fn shutdown(&self) {
        self.kernel.disconnect();
        self.watches.shutdown();
        self.pool.close();
    }
}

fn w_touch(watch: &Option<Arc<Watch>>) {
    if let Some(w) = watch {
        w.state().last_interest = std::time::Instant::now();
    }
}

/// Builds the logic layer for a home: the parent cache, the pod client, the watches.
pub fn build(
    paths: crate::paths::Paths,
    timeouts: crate::pod_client::Timeouts,
    watch: crate::watch::WatchConfig,
    settings: &Settings,
    inotify: bool,
) -> Result<PodFs> {
    let parents = ParentCache::new(paths.clone(), inotify);
    let client = Arc::new(PodClient::new(&paths, timeouts));
    let watches = Watches::start(client.clone(), watch)
        .map_err(|e| Error::io("start the watch reactor", e))?;
    Ok(PodFs::new(parents, client, watches, settings))
}
