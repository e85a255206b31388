//! The filesystem logic: the tree, attributes, open handles, and what each operation means.
//! Free of `fuser` types, so it is driven without a mount in tests; [`adapter`] only
//! translates.
//!
//! Every operation decides once, by the kind of file it touches, whether it can answer at
//! once: the registry files answer from the parent cache, and so do the live files of a
//! child whose watch is ready. Otherwise the operation returns [`Step::Wait`] with what to
//! wait for; the caller parks it ([`PodFs::park`]) and runs it again once that is ready,
//! its bound passed, or its caller got a signal, and the second answer is final. Nothing
//! here blocks: removals, the one blocking operation, run on the worker pool
//! ([`PodFs::rmdir`]).

pub mod adapter;
pub mod files;
pub mod gate;
pub mod inode;
pub mod kernel;
pub mod output;
pub mod writes;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tracing::{debug, error, info, warn};

use crate::cursors::Cursors;
use crate::error::{Error, Result};
use crate::name::PodName;
use crate::parents::{ParentCache, ParentView, RegistryChange};
use crate::pod_client::{PodClient, SocketPath};
use crate::pool::Pool;
use crate::process::Requester;
use crate::protocol::history::{effective_cursor, file_len};
use crate::reclaim::Removals;
use crate::scope::render_scope;
use crate::store::metadata::ChildRecord;
use crate::watch::live::{Failure, Intake, LiveState, Notify, Reach, Topic, Waiter};
use crate::watch::{Watch, Watches};

use files::FileKind;
use gate::Gates;
use inode::{Inodes, Node};
use kernel::{Inval, KernelQueue};
use writes::{Child, CursorValue, Delivery, Message, Refusal};

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

/// What a parked operation waits for.
pub enum Wait {
    /// The child's state, from its watch.
    Watch(Arc<Watch>),
    /// A cursor value closed but not yet applied (see [`gate`]).
    Cursor(CursorKey),
}

/// An operation's answer.
pub enum Step<T> {
    Ready(Result<T>),
    /// Ask again once this is ready, or after the bound.
    Wait(Wait, Duration),
}

impl<T> Step<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Step<U> {
        match self {
            Step::Ready(r) => Step::Ready(r.map(f)),
            Step::Wait(w, b) => Step::Wait(w, b),
        }
    }

    fn watch(w: &Arc<Watch>, bound: Duration) -> Step<T> {
        Step::Wait(Wait::Watch(w.clone()), bound)
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
    /// One snapshot of the new text, taken at open (the cursor moved past it then), and
    /// charged to the memory budget until released.
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
        /// For a value's end check: the child's watch (writes only).
        watch: Option<Arc<Watch>>,
        /// A complete value was closed by one descriptor: it is held in the gate until
        /// this handle's release applies it.
        gated: AtomicBool,
    },
}

impl Handle {
    fn watch(&self) -> Option<&Arc<Watch>> {
        match self {
            Handle::Value { watch, .. }
            | Handle::Output { watch, .. }
            | Handle::Log { watch, .. }
            | Handle::Input { watch, .. }
            | Handle::Cursor { watch, .. } => watch.as_ref(),
        }
    }
}

/// Who asks, as the kernel tells it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    /// The calling thread (0 when it is outside podfs's pid namespace).
    pub pid: u32,
}

impl Caller {
    /// podfs itself, or a test: may do anything, never interrupted.
    pub const INTERNAL: Caller = Caller { uid: 0, pid: 0 };

    pub fn requester(&self) -> Requester {
        Requester(self.pid)
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
    /// The user the mount belongs to: the owner of every file (and so the one who may
    /// write `cursor`, and read `output`, which moves it).
    pub owner: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pool_threads: 4,
            owner: nix::unistd::geteuid().as_raw(),
        }
    }
}

/// An open `output` snapshot, for `stat`.
struct OpenOutput {
    fh: u64,
    size: u64,
    /// The process that opened it.
    opener: Option<u32>,
}

/// How long a reader of the cursor waits for a value closed but not yet applied.
const CURSOR_GATE: Duration = Duration::from_millis(500);

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
    /// Cursor values closed and not yet applied.
    gates: Arc<Gates<CursorKey>>,
    removals: Removals,
    owner: u32,
    inodes: Inodes,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    /// Children's inode numbers per pod, computed once per version of its registry.
    child_inos: Arc<Mutex<HashMap<PodName, ChildInos>>>,
    pub kernel: Arc<KernelQueue>,
    pub pool: Pool,
    /// Open `output` snapshots per child: while one is open, `stat` of `output` shows the
    /// size of the newest one the asking process opened (else the newest of all), so a
    /// tool that opens, `fstat`s and reads (`tar`, `rsync`) sees its own snapshot's size.
    /// (The kernel does not say which open file an `fstat` is about.)
    open_outputs: Mutex<HashMap<CursorKey, Vec<OpenOutput>>>,
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
            gates: Arc::default(),
            removals: Removals::default(),
            owner: settings.owner,
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
        let stats = self.watches.stats();
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
            over_budget = load(&stats.over_budget),
            budget_used = self.watches.budget().used(),
            pollers = self.watches.pollers(),
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

    /// How long an operation on `kind` waits for a child that has not answered: reads of
    /// the history wait the I/O bound, the rest (`status`, any `stat`) the status bound.
    fn bound(&self, kind: FileKind, reading: bool) -> Duration {
        match kind {
            FileKind::Output | FileKind::Log | FileKind::Input | FileKind::Cursor if reading => {
                self.client.timeouts.io
            }
            _ => self.client.timeouts.status_wait,
        }
    }

    /// Park `then` until `wait` is ready, its `bound` passes, or `who` gets a signal.
    pub fn park(&self, wait: Wait, bound: Duration, who: Requester, then: Waiter) {
        match wait {
            Wait::Watch(w) => w.when_ready(bound, who, then),
            Wait::Cursor(key) => {
                if let Some(expire) = self.gates.park(&key, then) {
                    self.watches.at(Instant::now() + bound, expire);
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Attributes

    /// The root: its link count counts every pod, listed or not (a count above the
    /// subdirectories `ls` shows only makes `find` look closer; one below would make it
    /// skip some).
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
            return Step::watch(&w, self.bound(kind, false));
        };
        if let Some(f) = s.failure() {
            return Step::Ready(Err(failure_error(f)));
        }
        Step::Ready(Ok(match kind {
            FileKind::Status => (
                s.status_word().as_str().len() as u64 + 1,
                s.status_changed(),
            ),
            FileKind::Log => (
                s.history().map_or(0, |h| file_len(h.text())),
                s.text_changed(),
            ),
            FileKind::Output => {
                let open = self
                    .open_outputs
                    .lock()
                    .get(&(pod.clone(), child.clone()))
                    .and_then(|v| v.last().map(|o| o.size));
                let size = match (s.history(), s.reach(), cursor) {
                    _ if open.is_some() => open.unwrap_or(0),
                    (Some(h), Reach::Live, Some(c)) if s.is_fresh() => {
                        file_len(h.text_from(effective_cursor(h.len(), c)))
                    }
                    _ => 0,
                };
                (size, s.text_changed())
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

    /// Attributes of `ino` for `caller`; with `fh`, those of that open file. An open
    /// `output` reports the size of its own snapshot (the caller's newest), whatever
    /// other opens took since.
    pub fn getattr(&self, ino: u64, fh: Option<u64>, caller: &Caller, now: bool) -> Step<Attr> {
        let node = ready!(self.node(ino));
        let own_size = fh
            .and_then(|fh| self.handles.lock().get(&fh).cloned())
            .and_then(|h| match &*h {
                Handle::Output { bytes, .. } => Some(bytes.len() as u64),
                _ => None,
            })
            .or_else(|| match &node {
                Node::File(pod, child, FileKind::Output) => {
                    self.own_output_size(&(pod.clone(), child.clone()), caller)
                }
                _ => None,
            });
        match own_size {
            Some(size) => self.attr_of(&node, now).map(|mut a| {
                a.size = size;
                a
            }),
            None => self.attr_of(&node, now),
        }
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

    /// The size of the newest `output` snapshot `caller`'s process has open, if any.
    fn own_output_size(&self, key: &CursorKey, caller: &Caller) -> Option<u64> {
        let open = self.open_outputs.lock();
        let list = open.get(key)?;
        let me = crate::process::tgid(caller.pid)?;
        list.iter()
            .rev()
            .find(|o| o.opener == Some(me))
            .map(|o| o.size)
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
                pods: self.parents.parents()?,
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

    /// Whether `caller` may move the cursor: reading `output` moves it, so it takes the
    /// permission to write `cursor` (mode 0644, the mount's owner), not just to read.
    fn may_move_cursor(&self, caller: &Caller) -> bool {
        caller.uid == self.owner || caller.uid == 0
    }

    /// Open a file; `write` when the caller asked for write access.
    pub fn open(&self, ino: u64, write: bool, caller: &Caller, now: bool) -> Step<u64> {
        let Node::File(pod, child, kind) = ready!(self.node(ino)) else {
            return Step::Ready(Err(Error::IsDir));
        };
        if write && !kind.writable() {
            return Step::Ready(Err(Error::ReadOnly));
        }
        if kind == FileKind::Output && !self.may_move_cursor(caller) {
            return Step::Ready(Err(Error::ReadOnly));
        }
        let view = ready!(self.parents.child_view(&pod, &child));
        let key = (pod.clone(), child.clone());
        // A value closed but not yet applied is the cursor by the time this would read it.
        if matches!(kind, FileKind::Output | FileKind::Cursor) && !now && self.gates.is_held(&key) {
            return Step::Wait(Wait::Cursor(key), CURSOR_GATE);
        }
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
                // A value is checked against the history's end: start watching now.
                watch: if write { self.watch_of(record) } else { None },
                gated: AtomicBool::new(false),
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
                            return Step::watch(&w, self.bound(kind, true));
                        };
                        if let Some(f) = s.failure() {
                            return Step::Ready(Err(failure_error(f)));
                        }
                        let bytes = format!("{}\n", s.status_word()).into_bytes();
                        let seen = s.version(Topic::Status);
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
                        return Step::watch(&w, self.bound(kind, true));
                    };
                    if let Some(e) = self.no_history(&s) {
                        return Step::Ready(Err(e));
                    }
                    let seen = s.version(Topic::Text);
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
                .push(OpenOutput {
                    fh,
                    size: bytes.len() as u64,
                    opener: crate::process::tgid(caller.pid),
                });
        }
        self.handles.lock().insert(fh, Arc::new(handle));
        Step::Ready(Ok(fh))
    }

    /// Why a history cannot be shown, if it cannot: a child that accepted the connection
    /// and never answered in the I/O bound (`ETIMEDOUT`), never an empty success; a child
    /// podfs cannot follow (`EFBIG` over the budget, or podfs's own errno).
    fn no_history(&self, s: &LiveState) -> Option<Error> {
        match s.reach() {
            Reach::Failed(f) => Some(failure_error(f)),
            Reach::Silent => Some(Error::Timeout(
                "the child accepted the connection but sent no Snapshot in time".into(),
            )),
            Reach::Pending => Some(Error::Timeout("the child did not answer in time".into())),
            Reach::Live if !s.is_fresh() => Some(Error::Timeout(
                "the child's history could not be refreshed in time".into(),
            )),
            Reach::Live | Reach::Gone => None,
        }
    }

    /// ReadPodOutput with the mount's cursor: the new text since the cursor, and the cursor
    /// moved past it, in one step with the cursor locked (two readers never get the same
    /// text). An unreachable child gives nothing and leaves the cursor alone. The text is
    /// charged to the memory budget while the handle holds it; if it does not fit, the
    /// open fails with `EFBIG` and the cursor stays where it was.
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
                return Step::watch(&w, self.bound(FileKind::Output, true));
            };
            if let Some(e) = self.no_history(&s) {
                return Step::Ready(Err(e));
            }
            if s.reach() == Reach::Gone {
                drop(s);
                return Step::Ready(Ok((Arc::from(&b""[..]), Some(w))));
            }
        }
        let key = (pod.clone(), child.clone());
        let budget = self.watches.budget();
        // Room in the budget is made (idle watches ended) with nothing locked, then the
        // take is tried once more.
        let mut room_made = false;
        let taken = loop {
            match output::take(&self.cursors, &key, incarnation, w.state_lock(), budget) {
                output::Take::Taken {
                    bytes,
                    before,
                    after,
                } => break Ok((bytes, before, after)),
                output::Take::NeedsRoom(size) if !room_made => {
                    room_made = true;
                    self.watches.make_room(size);
                }
                output::Take::NeedsRoom(size) => {
                    break Err(Error::OverBudget(format!(
                        "{size} bytes of new text do not fit the memory budget; the cursor \
                         did not move"
                    )))
                }
            }
        };
        let (bytes, before, after) = ready!(taken);
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
    ) -> Result<Option<Vec<u8>>> {
        if file.kind == FileKind::Status {
            let Some(w) = watch else {
                return Ok(None);
            };
            let s = w.state();
            if let Some(f) = s.failure() {
                return Err(failure_error(f));
            }
            seen.store(s.version(Topic::Status), Ordering::Relaxed);
            return Ok(Some(format!("{}\n", s.status_word()).into_bytes()));
        }
        let Ok(view) = self.parents.child_view(&file.pod, &file.child) else {
            return Ok(None);
        };
        Ok(Some(self.value(&view, &file.pod, &file.child, file.kind)))
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
                    if let Some(new) = self.regenerate(file, watch.as_ref(), seen)? {
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
                    if let Some(f) = s.failure() {
                        return Err(failure_error(f));
                    }
                    seen.store(s.version(Topic::Text), Ordering::Relaxed);
                    Ok(s.history()
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
            Handle::Cursor {
                file, value, watch, ..
            } => {
                // The child may have gone meanwhile; then so has its cursor.
                ready!(self.parents.child_view(&file.pod, &file.child));
                // Only a value above 0 can be past the end: `echo 0 > cursor` never waits.
                let prospective = {
                    let mut v = value.lock().clone();
                    v.write(data, None).map(|_| v.value()).unwrap_or(0)
                };
                let end = match watch {
                    Some(w) if prospective > 0 => {
                        let Some(s) = w.state_if_ready(now) else {
                            return Step::watch(w, self.bound(FileKind::Cursor, false));
                        };
                        // Only a history podfs knows bounds the value.
                        match s.reach() {
                            Reach::Live | Reach::Gone | Reach::Pending => {
                                s.history().map(|h| h.len())
                            }
                            Reach::Silent | Reach::Failed(_) => None,
                        }
                    }
                    _ => None,
                };
                value.lock().write(data, end).into()
            }
            Handle::Input { watch, message, .. } => {
                let child = match watch {
                    None => Child::Unreachable,
                    Some(w) => {
                        let Some(mut s) = w.state_if_ready(now) else {
                            return Step::watch(w, self.bound(FileKind::Input, true));
                        };
                        s.touch(Instant::now());
                        match s.intake(fh) {
                            Intake::Takes => Child::Takes,
                            Intake::Busy => Child::Busy,
                            Intake::Unreachable => Child::Unreachable,
                            Intake::Failed(f) => Child::Untracked(failure_errno(f)),
                        }
                    }
                };
                let written = message.lock().write(data, child);
                if written.is_err() {
                    self.free_intake(fh, watch.as_ref());
                }
                written.into()
            }
            _ => Step::Ready(Err(Error::ReadOnly)),
        }
    }

    /// The message of `fh` will not be sent: the child is free for other writers.
    fn free_intake(&self, fh: u64, watch: Option<&Arc<Watch>>) {
        if let Some(w) = watch {
            let due = w.state().release_intake(fh);
            for d in due {
                d.run();
            }
        }
    }

    /// `close()` of one descriptor: a refused or cut value says so here. A writer killed by
    /// a signal midway poisons its value (nothing of it takes effect), and a message whose
    /// child is already gone fails here, where its writer can still hear of it. The value
    /// itself takes effect when the last descriptor closes ([`PodFs::release`]).
    pub fn flush(&self, fh: u64, caller: &Caller) -> Result<()> {
        match &*self.handle(fh)? {
            Handle::Cursor {
                file, value, gated, ..
            } => {
                let mut value = value.lock();
                if value.at_close()?.is_some() && crate::process::killed_by_signal(caller.pid) {
                    warn!(pod = %file.pod, child = %file.child,
                          "cursor writer killed by a signal midway; the value is dropped");
                    return Err(value.poison(Refusal::Killed));
                }
                if value.at_close()?.is_some() && !gated.swap(true, Ordering::SeqCst) {
                    self.gates.hold(&(file.pod.clone(), file.child.clone()));
                }
                Ok(())
            }
            Handle::Input {
                file,
                watch,
                message,
            } => {
                let mut m = message.lock();
                m.at_close()?;
                if m.is_empty() {
                    return Ok(());
                }
                if crate::process::killed_by_signal(caller.pid) {
                    warn!(pod = %file.pod, child = %file.child,
                          "input writer killed by a signal midway; nothing of its message is sent");
                    let e = m.poison(Refusal::Killed);
                    drop(m);
                    self.free_intake(fh, watch.as_ref());
                    return Err(e);
                }
                let gone = watch.as_ref().and_then(|w| match w.state().reach() {
                    Reach::Gone | Reach::Silent => Some(Refusal::Unreachable),
                    Reach::Failed(f) => Some(Refusal::Untracked(failure_errno(f))),
                    Reach::Pending | Reach::Live => None,
                });
                if let Some(why) = gone {
                    let e = m.poison(why);
                    drop(m);
                    self.free_intake(fh, watch.as_ref());
                    return Err(e);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The last descriptor of an open closed: a cursor value takes effect, a message is
    /// sent.
    pub fn release(&self, fh: u64) {
        let Some(handle) = self.handles.lock().remove(&fh) else {
            return;
        };
        if let Some(w) = handle.watch() {
            w.drop_poller(fh);
            w.unpin();
        }
        match &*handle {
            Handle::Output { file, bytes, .. } => {
                self.watches.budget().resize(bytes.len(), 0);
                let key = (file.pod.clone(), file.child.clone());
                let mut open = self.open_outputs.lock();
                if let Some(list) = open.get_mut(&key) {
                    list.retain(|o| o.fh != fh);
                    if list.is_empty() {
                        open.remove(&key);
                    }
                }
            }
            Handle::Cursor {
                file,
                value,
                incarnation,
                gated,
                ..
            } => {
                let key = (file.pod.clone(), file.child.clone());
                if let Ok(Some(v)) = value.lock().at_close() {
                    self.set_cursor(file, *incarnation, v);
                }
                if gated.load(Ordering::SeqCst) {
                    self.gates.release(&key);
                }
            }
            Handle::Input {
                file,
                watch,
                message,
            } => {
                let delivery = message.lock().finish();
                self.deliver(fh, file, watch.as_ref(), delivery);
            }
            Handle::Value { .. } | Handle::Log { .. } => {}
        }
    }

    fn set_cursor(&self, file: &ChildFile, incarnation: u64, v: u64) {
        let current = self
            .parents
            .child_view(&file.pod, &file.child)
            .map(|view| view.incarnation(&file.child));
        if current.ok() != Some(incarnation) {
            debug!(pod = %file.pod, child = %file.child, "cursor value for a child that is gone");
            return;
        }
        let key = (file.pod.clone(), file.child.clone());
        let before = self.cursors.set(&key, incarnation, v);
        self.cursor_moved(&file.pod, &file.child, before, v);
        debug!(pod = %file.pod, child = %file.child, cursor = v, "cursor set");
    }

    /// Hand a finished message to the child. Its writer was told every write and close
    /// succeeded, so it is delivered even if the child is busy with another client's turn
    /// for a while (it waits for the child's next idle moment, bounded); what still fails
    /// is logged at error level.
    fn deliver(&self, fh: u64, file: &ChildFile, watch: Option<&Arc<Watch>>, delivery: Delivery) {
        let (pod, child) = (file.pod.clone(), file.child.clone());
        match delivery {
            Delivery::Nothing => self.free_intake(fh, watch),
            Delivery::Dropped(writes::Refusal::Incomplete) => {
                self.free_intake(fh, watch);
                error!(%pod, %child, "message not sent: it ends in the middle of a character");
            }
            Delivery::Dropped(why) => {
                self.free_intake(fh, watch);
                debug!(%pod, %child, ?why, "refused message discarded; its writer was told");
            }
            Delivery::Send(text) => {
                let Some(w) = watch else {
                    error!(%pod, %child, "message not sent: the child's socket is outside the runtime dir");
                    return;
                };
                let bytes = text.len();
                w.send_run(
                    fh,
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

    /// Whether the file has something new for `poll`; `notify` is registered for the open
    /// file (once, however often it polls) and runs on every later change until release.
    pub fn poll(&self, fh: u64, notify: Notify) -> Result<bool> {
        let handle = self.handle(fh)?;
        match &*handle {
            Handle::Value {
                seen,
                watch: Some(w),
                file,
                ..
            } if file.kind == FileKind::Status => {
                Ok(w.set_poller(fh, Topic::Status, seen.load(Ordering::Relaxed), notify))
            }
            Handle::Log {
                seen,
                watch: Some(w),
                ..
            } => Ok(w.set_poller(fh, Topic::Text, seen.load(Ordering::Relaxed), notify)),
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
                    .history()
                    .is_some_and(|h| !h.text_from(effective_cursor(h.len(), cursor)).is_empty());
                let version = s.version(Topic::Text);
                drop(s);
                Ok(w.set_poller(fh, Topic::Text, version, notify) || pending)
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

    /// `rmdir <parent>/<child>`: stop and reclaim, for `caller` (whose signal ends the
    /// waits before any file is touched). Blocking: run it on [`PodFs::pool`].
    pub fn rmdir(&self, parent: u64, name: &OsStr, caller: &Caller) -> Result<()> {
        match self.node(parent)? {
            Node::Pod(pod) => {
                let child = PodName::from_os(name)?;
                let view = self.parents.parent(&pod)?;
                let socket = view
                    .child(&child)
                    .and_then(|r| self.client.socket(&r.socket_path).ok());
                self.removals.remove_child(
                    &self.parents,
                    &self.client,
                    &pod,
                    &child,
                    caller.requester(),
                )?;
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

    /// Release everything held (at unmount): every parked operation is answered now,
    /// whatever the children do, and nothing is waited for longer than a moment.
    pub fn shutdown(&self) {
        self.kernel.disconnect();
        self.watches.shutdown();
        self.pool.close();
    }
}

/// The error a file of a child podfs cannot follow answers with.
fn failure_error(f: Failure) -> Error {
    match f {
        Failure::OverBudget => Error::OverBudget(
            "the child's history does not fit podfs's memory budget (--memory-budget-mib)".into(),
        ),
        Failure::Local(errno) => Error::io(
            "podfs cannot follow the child for lack of its own resources",
            std::io::Error::from_raw_os_error(errno),
        ),
        Failure::Internal => {
            Error::Panicked("podfs failed while following the child; see the log".into())
        }
    }
}

fn failure_errno(f: Failure) -> i32 {
    failure_error(f).errno()
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
