//! The filesystem logic: the tree, the inode table, open handles, and what each
//! operation means. Free of `fuser` types, so it is driven without a mount in tests;
//! [`adapter`] only translates.
//!
//! What a control file does is its kind's business ([`files`]); this module finds the
//! file, keeps its handle, and answers. Every operation decides once whether it can answer
//! at once: the registry files answer from the parent cache, and so do the live files of
//! a child whose watch is ready. Otherwise the operation returns [`Step::Wait`] with what
//! to wait for; [`PodFs::answer`] parks the reply and runs the operation again once that
//! is ready, its bound passed, or its caller got a signal, and the second answer is final.
//! Nothing here blocks a request thread: removals, the one blocking operation, run on the
//! worker pool ([`PodFs::remove`]).

pub mod adapter;
pub mod body;
mod dirs;
pub mod files;
pub mod gate;
pub mod inode;
pub mod kernel;
pub mod step;
pub mod writes;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tracing::Span;

use crate::cursors::Cursors;
use crate::error::{contain, Error, Result};
use crate::name::PodName;
use crate::parents::{ParentCache, ParentView, RegistryChange};
use crate::pod_client::PodClient;
use crate::pool::Pool;
use crate::process::Requester;
use crate::watch::live::{Notify, Waiter, Wake};
use crate::watch::Watches;

use dirs::Listing;
pub use files::Pages;
use files::{ChildFile, Context, CursorKey, FileKind, OpenFile, Opening};
use inode::{Inodes, Node};
use kernel::{Inval, Kernel, KernelQueue};
use step::ready;
pub use step::{Caller, Round, Step, Wait};

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

/// An open file: its handle, and how the kernel may serve its reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    pub pages: Pages,
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

/// Settings of the logic layer.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Threads of the pool that runs removals.
    pub pool_threads: usize,
    /// The user the mount belongs to: the owner of every file (and so the one who may
    /// write `cursor`, and read `output`, which moves it).
    pub owner: u32,
    /// The longest a request may wait in podfs (see [`request_limit`]).
    pub request_limit: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pool_threads: 4,
            owner: nix::unistd::geteuid().as_raw(),
            request_limit: None,
        }
    }
}

/// The failpoint that stages an invalidation racing an `rmdir` ([`crate::failpoint`]).
pub const RACED_RMDIR: &str = "rmdir-races-an-invalidation";

/// An operation run again after it waited, in the round that follows.
type Again<T> = Arc<dyn Fn(&PodFs, Round) -> Step<T> + Send + Sync>;

/// A registry view and its children's inode numbers, in listing order.
type ChildInos = (Arc<ParentView>, Arc<Vec<u64>>);

pub struct PodFs {
    parents: Arc<ParentCache>,
    client: Arc<PodClient>,
    watches: Arc<Watches>,
    cursors: Arc<Cursors<CursorKey>>,
    /// What the control files reach.
    files: Context,
    inodes: Arc<Inodes>,
    handles: Mutex<HashMap<u64, Arc<dyn OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    /// Children's inode numbers per pod, computed once per version of its registry.
    child_inos: Arc<Mutex<HashMap<PodName, ChildInos>>>,
    kernel: Arc<KernelQueue>,
    pool: Pool,
    /// The longest a request may wait (see [`request_limit`]).
    request_limit: Option<Duration>,
    /// The mount is going away: parked operations are answered `ENOTCONN`.
    stopping: AtomicBool,
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

impl PodFs {
    pub fn new(
        parents: Arc<ParentCache>,
        client: Arc<PodClient>,
        watches: Arc<Watches>,
        settings: &Settings,
    ) -> PodFs {
        let cursors: Arc<Cursors<CursorKey>> = Arc::new(Cursors::default());
        let kernel = Arc::new(KernelQueue::default());
        let inodes = Arc::new(Inodes::default());
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
        let files = Context::new(
            parents.clone(),
            client.clone(),
            watches.clone(),
            cursors.clone(),
            kernel.clone(),
            inodes.clone(),
            files::Access {
                owner: settings.owner,
                limit: settings.request_limit,
            },
        );
        PodFs {
            parents,
            client,
            watches,
            cursors,
            files,
            inodes,
            handles: Mutex::default(),
            dirs: Mutex::default(),
            child_inos,
            kernel,
            pool: Pool::new(settings.pool_threads),
            request_limit: settings.request_limit,
            stopping: AtomicBool::new(false),
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

    /// Say in the log where the children's recorded sockets are: how many lie in each of
    /// the home's runtime dirs (and, once per directory, which lie in none, with what to
    /// do about it). Reads the registries of the first few hundred parents.
    pub fn survey(&self) {
        let home = self.client.home();
        let mut placed = vec![0usize; home.runtime_dirs().count()];
        let mut outside = 0usize;
        let Ok(pods) = self.parents.pods() else {
            return;
        };
        for pod in pods.iter().take(256) {
            let Ok(view) = self.parents.parent(pod) else {
                continue;
            };
            for i in 0..view.len() {
                let (_, record) = view.child_at(i);
                match self.client.place(&record.socket_path) {
                    Ok(socket) => placed[socket.runtime()] += 1,
                    Err(_) => outside += 1,
                }
            }
        }
        for ((dir, rule), n) in home.runtime_dirs().zip(&placed) {
            tracing::info!(runtime = %dir.display(), chosen_by = %rule, recorded_sockets = n,
                "children's sockets in this runtime dir");
        }
        if outside > 0 {
            tracing::warn!(
                recorded_sockets = outside,
                "children record sockets outside every runtime dir of this home; their files \
                 answer EACCES (see the warning naming the directory)"
            );
        }
    }

    /// Where invalidations go: the kernel, once the session is up.
    pub fn connect_kernel(&self, kernel: Arc<dyn Kernel>) {
        self.kernel.connect(kernel);
    }

    /// Park `then` until `wait` is ready, its `bound` passes, or `who` gets a signal.
    pub fn park(&self, wait: Wait, bound: Duration, who: Requester, then: Waiter) {
        self.files.park(wait, bound, who, then);
    }

    /// Answer with `first`, or, if it must wait, with `again` once what it waits for is
    /// ready (`EINTR` if `who` gets a signal first), in the round that follows that wait
    /// ([`Round`]). A round after waiting for the child's state may still wait for a
    /// running turn, and is parked again for that; a turn that outlasts its bound (the
    /// kernel's own request timeout, where one is set) is answered `EAGAIN`, for the
    /// caller to try again. `again` runs with its panics contained, in the span of the
    /// request that parked it.
    pub fn answer<T: Send + 'static>(
        self: &Arc<Self>,
        who: &Caller,
        first: Step<T>,
        again: impl Fn(&PodFs, Round) -> Step<T> + Send + Sync + 'static,
        reply: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        self.settle(*who, first, Arc::new(again), Box::new(reply));
    }

    fn settle<T: Send + 'static>(
        self: &Arc<Self>,
        who: Caller,
        step: Step<T>,
        again: Again<T>,
        reply: Box<dyn FnOnce(Result<T>) + Send>,
    ) {
        let (wait, bound) = match step {
            Step::Ready(r) => return reply(r),
            Step::Wait(wait, bound) => (wait, bound),
        };
        let round = wait.next_round();
        let fs = self.clone();
        let span = Span::current();
        self.park(
            wait,
            bound,
            who.requester(),
            Box::new(move |why| {
                let _entered = span.enter();
                match why {
                    Wake::Interrupted => reply(Err(Error::Interrupted)),
                    _ if fs.stopping.load(Ordering::SeqCst) => reply(Err(Error::Unmounting)),
                    Wake::Expired if round == Round::Last => reply(Err(Error::TryAgain(
                        "the child's turn outlasted the longest a request may wait; read again"
                            .into(),
                    ))),
                    Wake::Ready | Wake::Expired => {
                        match contain("a parked operation", || Ok(again(&fs, round))) {
                            Ok(next @ Step::Wait(Wait::TurnOver(_), _))
                                if round == Round::Again =>
                            {
                                fs.settle(who, next, again, reply)
                            }
                            Ok(next) => reply(next.into_result()),
                            Err(e) => reply(Err(e)),
                        }
                    }
                }
            }),
        );
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
            view.mtime(),
        ))
    }

    fn child_attr(&self, pod: &PodName, child: &PodName) -> Result<Attr> {
        let view = self.parents.child_view(pod, child)?;
        Ok(dir_attr(
            self.inodes.number(&Node::Child(pod.clone(), child.clone())),
            0o755,
            0,
            view.mtime(),
        ))
    }

    fn file_attr(
        &self,
        pod: &PodName,
        child: &PodName,
        kind: FileKind,
        caller: &Caller,
        now: bool,
    ) -> Step<Attr> {
        let view = ready!(self.parents.child_view(pod, child));
        let ino = self
            .inodes
            .number(&Node::File(pod.clone(), child.clone(), kind));
        let file = ChildFile {
            pod: pod.clone(),
            child: child.clone(),
        };
        kind.control()
            .stat(&self.files, &file, &view, caller, now)
            .map(|(size, mtime)| Attr {
                ino,
                is_dir: false,
                size,
                perm: kind.perm(),
                nlink: 1,
                mtime,
                // `cursor` changes only through podfs, which tells the kernel when it does,
                // so its attributes may be cached like any file's.
                volatile: kind.is_live(),
            })
    }

    fn attr_of(&self, node: &Node, caller: &Caller, now: bool) -> Step<Attr> {
        match node {
            Node::Root => self.root_attr().into(),
            Node::Pod(pod) => self.pod_attr(pod).into(),
            Node::Child(pod, child) => self.child_attr(pod, child).into(),
            Node::File(pod, child, kind) => self.file_attr(pod, child, *kind, caller, now),
        }
    }

    /// Attributes of `ino` for `caller`; with `fh`, those of that open file (an open
    /// `output` reports the size of its own snapshot, whatever other opens took since).
    pub fn getattr(&self, ino: u64, fh: Option<u64>, caller: &Caller, now: bool) -> Step<Attr> {
        let node = ready!(self.node(ino));
        let own_size = fh
            .and_then(|fh| self.handles.lock().get(&fh).cloned())
            .and_then(|h| h.own_size());
        // A descriptor with a size of its own needs nothing of who asks.
        let caller = if own_size.is_some() {
            &Caller::INTERNAL
        } else {
            caller
        };
        self.attr_of(&node, caller, now).map(|mut a| {
            if let Some(size) = own_size {
                a.size = size;
            }
            a
        })
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
        let mut attr = self.attr_of(&node, &Caller::INTERNAL, true).into_result()?;
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
                self.file_attr(&pod, &child, kind, &Caller::INTERNAL, true)
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
    // Files

    fn handle(&self, fh: u64) -> Result<Arc<dyn OpenFile>> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("file handle {fh}")))
    }

    /// Open a file; `write` when the caller asked for write access, `nonblocking` for
    /// `O_NONBLOCK`, in `round`.
    pub fn open(
        &self,
        ino: u64,
        write: bool,
        nonblocking: bool,
        caller: &Caller,
        round: Round,
    ) -> Step<Opened> {
        let Node::File(pod, child, kind) = ready!(self.node(ino)) else {
            return Step::Ready(Err(Error::IsDir));
        };
        if write && !kind.writable() {
            return Step::Ready(Err(Error::ReadOnly));
        }
        let view = ready!(self.parents.child_view(&pod, &child));
        let Some(record) = view.child(&child) else {
            return Step::Ready(Err(Error::NotFound(format!("{pod}/{child}"))));
        };
        let fh = self.fh();
        let opening = Opening {
            file: ChildFile { pod, child },
            ino,
            view: &view,
            record,
            fh,
            write,
            caller,
            round,
            nonblocking,
        };
        let handle = match kind.control().open(&self.files, opening) {
            Step::Ready(Ok(h)) => h,
            Step::Ready(Err(e)) => return Step::Ready(Err(e)),
            Step::Wait(w, b) => return Step::Wait(w, b),
        };
        let pages = handle.pages();
        self.handles.lock().insert(fh, handle);
        Step::Ready(Ok(Opened { fh, pages }))
    }

    /// `size` bytes of open file `fh` from `offset`, into `out` (cleared first).
    pub fn read(&self, fh: u64, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        self.handle(fh)?.read(&self.files, offset, size, out)
    }

    pub fn write(&self, fh: u64, data: &[u8], caller: &Caller, now: bool) -> Step<usize> {
        ready!(self.handle(fh)).write(&self.files, fh, data, caller, now)
    }

    /// `close()` of one descriptor: a refused or cut value says so here; the value itself
    /// takes effect when the last descriptor closes ([`PodFs::release`]).
    pub fn flush(&self, fh: u64, caller: &Caller) -> Result<()> {
        self.handle(fh)?.flush(&self.files, fh, caller)
    }

    /// The last descriptor of an open closed: a cursor value takes effect, a message is
    /// sent.
    pub fn release(&self, fh: u64) {
        let Some(handle) = self.handles.lock().remove(&fh) else {
            return;
        };
        if let Some(w) = handle.watch() {
            w.drop_poller(fh);
        }
        handle.release(&self.files, fh);
    }

    /// Whether the file has something new for `poll`; `notify` is registered for the open
    /// file (once, however often it polls) and runs on every later change until release.
    pub fn poll(&self, fh: u64, notify: Notify) -> Result<bool> {
        self.handle(fh)?.poll(&self.files, fh, notify)
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

    /// `rmdir <parent>/<child>` on the worker pool, answered through `reply`. The kernel
    /// holds the directory locked until then: invalidations for it wait (see [`kernel`]),
    /// and are let go however the removal ends.
    pub fn remove(
        self: &Arc<Self>,
        parent: u64,
        name: OsString,
        caller: Caller,
        reply: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        let held = self.kernel.hold(parent);
        let fs = self.clone();
        let deadline = self
            .request_limit
            .map(|limit| std::time::Instant::now() + limit);
        self.pool.submit(move || {
            reply(contain("rmdir", || {
                fs.rmdir(parent, &name, &caller, deadline)
            }));
            drop(held);
        });
    }

    /// `rmdir <parent>/<child>`: stop and reclaim, for `caller` (whose signal ends the
    /// waits before any file is touched). Blocking: [`PodFs::remove`] runs it on the pool.
    pub fn rmdir(
        &self,
        parent: u64,
        name: &OsStr,
        caller: &Caller,
        deadline: Option<std::time::Instant>,
    ) -> Result<()> {
        match self.node(parent)? {
            Node::Pod(pod) => {
                let child = PodName::from_os(name)?;
                if crate::failpoint::is_armed(RACED_RMDIR) {
                    self.stage_a_raced_invalidation(parent, &child);
                }
                let view = self.parents.parent(&pod)?;
                let socket = view
                    .child(&child)
                    .and_then(|r| self.client.place(&r.socket_path).ok());
                crate::reclaim::remove_child(
                    &self.parents,
                    &self.client,
                    &pod,
                    &child,
                    caller.requester().until(deadline),
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

    /// The race a kill can land in, staged for its test: an invalidation of this very
    /// directory already on its way into the kernel, which holds the directory locked
    /// for this `rmdir`; the removal then waits to be killed.
    fn stage_a_raced_invalidation(&self, parent: u64, child: &PodName) {
        self.kernel
            .push_unheld(Inval::Entry(parent, child.to_string()));
        loop {
            std::thread::park();
        }
    }

    /// Release everything held (at unmount): every parked operation is answered now,
    /// whatever the children do, and nothing is waited for longer than a moment.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.kernel.disconnect();
        self.watches.shutdown();
        self.pool.close();
    }
}

/// The longest a request may wait in podfs when the kernel aborts a FUSE connection whose
/// request has waited `timeout` (Linux 6.14 on: `fs.fuse.default_request_timeout`, capped
/// by `fs.fuse.max_request_timeout`): a tenth less, and at least half a second less, so
/// every wait ends with an answer of its own first.
pub fn request_limit(timeout: Duration) -> Duration {
    let margin = (timeout / 10).max(Duration::from_millis(500));
    timeout
        .saturating_sub(margin)
        .max(Duration::from_millis(100))
}

/// The kernel's FUSE request timeout for a connection that asks for none: the default,
/// capped by the maximum (either 0 or missing: none).
pub fn kernel_request_timeout() -> Option<Duration> {
    let read = |name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/sys/fs/fuse/{name}"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    let (default, max) = (read("default_request_timeout"), read("max_request_timeout"));
    let secs = match (default, max) {
        (0, 0) => return None,
        (d, 0) => d,
        (0, m) => m,
        (d, m) => d.min(m),
    };
    Some(Duration::from_secs(secs))
}

/// Builds the logic layer for a home: the parent cache, the pod client, the watches.
pub fn build(
    home: Arc<crate::home::Home>,
    timeouts: crate::pod_client::Timeouts,
    watch: crate::watch::WatchConfig,
    settings: &Settings,
    inotify: bool,
) -> Result<PodFs> {
    let parents = ParentCache::new(home.clone(), inotify);
    let client = Arc::new(PodClient::new(home, timeouts));
    let watches = Watches::start(client.clone(), watch)
        .map_err(|e| Error::io("start the watch reactor", e))?;
    Ok(PodFs::new(parents, client, watches, settings))
}
