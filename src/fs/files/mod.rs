//! The control files of a child directory: one type per kind, each in its own module,
//! behind [`ControlFile`] (what `stat` and `open` do) and [`OpenFile`] (what an open
//! descriptor does). Adding a file is a new module and one line in [`FileKind::control`];
//! everything `output` does is in [`output`].
//!
//! A file reaches the rest of podfs only through [`Context`], whose parts are private to
//! this module and its kinds.

mod callback;
mod cursor;
mod input;
mod log;
pub mod output;
mod registry;
mod scope;
mod socket;
mod status;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cursors::Cursors;
use crate::error::{Error, Result};
use crate::name::PodName;
use crate::parents::{ParentCache, ParentView};
use crate::pod_client::PodClient;
use crate::process::Requester;
use crate::store::metadata::ChildRecord;
use crate::watch::live::{Notify, Until, Waiter};
use crate::watch::pages::PageKernel;
use crate::watch::{Lease, Watch, Watches};

use super::gate::Gates;
use super::inode::{Inodes, Node};
use super::kernel::{Inval, KernelQueue};
use super::step::{Caller, Round, Step, Wait};

/// One control file inside `<parent>/<child>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Socket,
    Scope,
    Cursor,
    Output,
    Log,
    Input,
    Status,
    Callback,
}

impl FileKind {
    /// Directory order of `ls`.
    pub const ALL: [FileKind; 8] = [
        FileKind::Socket,
        FileKind::Scope,
        FileKind::Cursor,
        FileKind::Output,
        FileKind::Log,
        FileKind::Input,
        FileKind::Status,
        FileKind::Callback,
    ];

    /// What the file does.
    pub(crate) fn control(self) -> &'static dyn ControlFile {
        match self {
            FileKind::Socket => &socket::SOCKET,
            FileKind::Scope => &scope::SCOPE,
            FileKind::Cursor => &cursor::Cursor,
            FileKind::Output => &output::Output,
            FileKind::Log => &log::Log,
            FileKind::Input => &input::Input,
            FileKind::Status => &status::Status,
            FileKind::Callback => &callback::CALLBACK,
        }
    }

    pub fn name(self) -> &'static str {
        self.control().name()
    }

    pub fn from_name(name: &str) -> Option<FileKind> {
        FileKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// 1-based code used in inode numbers (0 is the directory itself).
    pub fn code(self) -> u64 {
        FileKind::ALL
            .iter()
            .position(|&k| k == self)
            .map_or(0, |i| i as u64 + 1)
    }

    pub fn from_code(code: u64) -> Option<FileKind> {
        FileKind::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    /// Honest permission bits: what a read or write is actually allowed to do.
    pub fn perm(self) -> u16 {
        if self.control().writable() {
            0o644
        } else {
            0o444
        }
    }

    pub fn writable(self) -> bool {
        self.control().writable()
    }

    /// Files whose content changes on its own: the kernel must not cache their attributes.
    pub fn is_live(self) -> bool {
        self.control().live()
    }
}

/// The child a control file belongs to.
#[derive(Debug, Clone)]
pub(crate) struct ChildFile {
    pub pod: PodName,
    pub child: PodName,
}

/// A child, as the key of its cursor.
pub type CursorKey = (PodName, PodName);

impl ChildFile {
    pub fn key(&self) -> CursorKey {
        (self.pod.clone(), self.child.clone())
    }
}

/// An `open` as a control file sees it.
pub(crate) struct Opening<'a> {
    pub file: ChildFile,
    /// The inode being opened.
    pub ino: u64,
    /// The registry as of the open; lists the child.
    pub view: &'a ParentView,
    pub record: &'a ChildRecord,
    /// The handle the open will get.
    pub fh: u64,
    pub write: bool,
    pub caller: &'a Caller,
    /// Which round of the open this is: what it may still wait for.
    pub round: Round,
    /// `O_NONBLOCK`: never wait for a turn.
    pub nonblocking: bool,
}

/// What a kind of control file does before it is open.
pub(crate) trait ControlFile: Sync {
    fn name(&self) -> &'static str;

    /// Whether it takes writes (and so has mode 0644).
    fn writable(&self) -> bool {
        false
    }

    /// Whether its content changes on its own, from the child.
    fn live(&self) -> bool {
        false
    }

    /// Size and modification time for `stat` by `caller`.
    fn stat(
        &self,
        cx: &Context,
        file: &ChildFile,
        view: &ParentView,
        caller: &Caller,
        now: bool,
    ) -> Step<(u64, SystemTime)>;

    fn open(&self, cx: &Context, at: Opening<'_>) -> Step<Arc<dyn OpenFile>>;
}

/// What an open descriptor of a control file does. The defaults are those of a file that
/// only reads and never changes on its own.
pub(crate) trait OpenFile: Send + Sync {
    /// `size` bytes from `offset`, appended to `out` (a buffer the caller reuses, so that
    /// a read of a megabyte allocates nothing).
    fn read(&self, cx: &Context, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()>;

    /// One `write()` by `caller`.
    fn write(
        &self,
        _cx: &Context,
        _fh: u64,
        _data: &[u8],
        _caller: &Caller,
        _now: bool,
    ) -> Step<usize> {
        Step::Ready(Err(Error::ReadOnly))
    }

    /// `close()` of one descriptor.
    fn flush(&self, _cx: &Context, _fh: u64, _caller: &Caller) -> Result<()> {
        Ok(())
    }

    /// The last descriptor closed (after the watch's poller is dropped; its lease goes
    /// with the handle).
    fn release(&self, _cx: &Context, _fh: u64) {}

    /// Whether there is something new to read; `notify` runs on every later change.
    fn poll(&self, _cx: &Context, _fh: u64, _notify: Notify) -> Result<bool> {
        Ok(true)
    }

    /// The child's watch this descriptor holds a lease on.
    fn watch(&self) -> Option<&Watch> {
        None
    }

    /// The size `fstat` of this descriptor shows, when it differs from the file's.
    fn own_size(&self) -> Option<u64> {
        None
    }

    /// How the kernel may serve this descriptor's reads.
    fn pages(&self) -> Pages {
        Pages::Direct
    }
}

/// How the kernel serves an open file's reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// Every read reaches podfs (direct I/O): values, and `output`, whose text is one
    /// open's own snapshot, which a cache shared by every open must never serve.
    Direct,
    /// Through the page cache, keeping the pages the kernel holds of the file.
    Keep,
    /// Through the page cache, after the kernel dropped every page it held of the file.
    Drop,
}

/// How long a reader of the cursor waits for a value closed but not yet applied.
const CURSOR_GATE: Duration = Duration::from_millis(500);

/// Who may do what in the mount, and for how long a request may wait.
pub(crate) struct Access {
    /// The user the mount belongs to.
    pub owner: u32,
    /// The longest a request may wait (see [`super::request_limit`]).
    pub limit: Option<Duration>,
}

/// What a control file may reach of podfs.
pub(crate) struct Context {
    parents: Arc<ParentCache>,
    client: Arc<PodClient>,
    watches: Arc<Watches>,
    cursors: Arc<Cursors<CursorKey>>,
    /// Cursor values closed and not yet applied.
    gates: Arc<Gates<CursorKey>>,
    kernel: Arc<KernelQueue>,
    inodes: Arc<Inodes>,
    outputs: output::OpenOutputs,
    /// `log` inode → the watch serving it. A child removed and another listed under its
    /// name share the inode, and with it the kernel's pages, but not the watch.
    log_owners: parking_lot::Mutex<std::collections::HashMap<u64, u64>>,
    /// The user the mount belongs to.
    owner: u32,
    /// The longest a request may wait here: shorter than the kernel's own request
    /// timeout, where one is set (past it the kernel aborts the whole connection).
    limit: Option<Duration>,
}

impl Context {
    pub fn new(
        parents: Arc<ParentCache>,
        client: Arc<PodClient>,
        watches: Arc<Watches>,
        cursors: Arc<Cursors<CursorKey>>,
        kernel: Arc<KernelQueue>,
        inodes: Arc<Inodes>,
        access: Access,
    ) -> Context {
        Context {
            parents,
            client,
            watches,
            cursors,
            gates: Arc::default(),
            kernel,
            inodes,
            outputs: output::OpenOutputs::default(),
            log_owners: Default::default(),
            owner: access.owner,
            limit: access.limit,
        }
    }

    /// Park `then` until `wait` is ready, its `bound` passes, or `who` gets a signal.
    pub fn park(&self, wait: Wait, bound: Duration, who: Requester, then: Waiter) {
        let wait_kind = wait.next_round();
        let for_publication = matches!(wait, Wait::Published(_));
        match wait {
            Wait::Watch(lease) | Wait::TurnOver(lease) | Wait::Published(lease) => {
                let until = match (&wait_kind, for_publication) {
                    (_, true) => Until::Published,
                    (Round::Last, _) => Until::TurnOver,
                    _ => Until::Ready,
                };
                let watch = lease.entry().clone();
                // The lease goes with the parked operation: the watch stays followed until
                // it runs again.
                watch.when(
                    until,
                    bound,
                    who,
                    Box::new(move |why| {
                        then(why);
                        drop(lease);
                    }),
                )
            }
            Wait::Cursor(key) => {
                if let Some(expire) = self.gates.park(&key, then) {
                    self.watches.at(std::time::Instant::now() + bound, expire);
                }
            }
        }
    }

    /// A lease on the watch of a child; `EACCES` for a socket outside the home's runtime
    /// dirs, which podfs never connects to.
    pub fn watch_of(&self, record: &ChildRecord) -> Result<Lease> {
        let socket = self.client.place(&record.socket_path)?;
        Ok(self.watches.lease(&socket))
    }

    /// How long an operation waits for a child that has not answered: reads of the
    /// history wait the I/O bound, the rest (`status`, any `stat`) the status bound.
    fn bound(&self, reading: bool) -> Duration {
        let t = self.client.timeouts();
        let bound = if reading { t.io } else { t.status_wait };
        self.limit.map_or(bound, |limit| bound.min(limit))
    }

    /// How long an `output` reader waits for a running turn to end: as long as it runs,
    /// or, where the kernel has a request timeout, safely less than that.
    fn turn_bound(&self) -> Duration {
        self.limit.unwrap_or(Duration::from_secs(365 * 24 * 3600))
    }

    /// The cursor of `file`'s child as the registry `view` knows it.
    fn cursor(&self, file: &ChildFile, view: &ParentView) -> u64 {
        self.cursors.get(&file.key(), view.incarnation(&file.child))
    }

    /// A value closed but not yet applied is the cursor by the time a reader would read
    /// it: wait for it (briefly) unless this is the second round.
    fn cursor_gate(&self, file: &ChildFile, now: bool) -> Option<Step<Arc<dyn OpenFile>>> {
        let key = file.key();
        let bound = self
            .limit
            .map_or(CURSOR_GATE, |limit| CURSOR_GATE.min(limit));
        (!now && self.gates.is_held(&key)).then(|| Step::Wait(Wait::Cursor(key), bound))
    }

    /// The kernel may hold `cursor`'s attributes for the attribute TTL: drop them whenever
    /// the value changes length (the size is all that depends on the value). Queued, never
    /// sent from the request thread: this may run inside a request on the cursor file.
    /// A watch opens `log` inode `ino`: it serves it from now on. Returns whether it did
    /// already (no other watch served it since).
    fn own_log(&self, ino: u64, watch: u64) -> bool {
        self.log_owners.lock().insert(ino, watch) == Some(watch)
    }

    /// Whether `watch` is the one serving `log` inode `ino`.
    fn serves_log(&self, ino: u64, watch: u64) -> bool {
        self.log_owners.lock().get(&ino).is_none_or(|w| *w == watch)
    }

    /// Where `log`'s page invalidations go: the kernel queue, never the request thread
    /// (the kernel may hold a page's lock while it waits for a read there).
    fn page_kernel(&self) -> Arc<dyn PageKernel> {
        self.kernel.clone()
    }

    fn cursor_moved(&self, file: &ChildFile, before: u64, after: u64) {
        if before.to_string().len() == after.to_string().len() {
            return;
        }
        let node = Node::File(file.pod.clone(), file.child.clone(), FileKind::Cursor);
        self.kernel.push(Inval::Inode(self.inodes.number(&node)));
    }

    /// Whether `caller` may move the cursor: reading `output` moves it, so it takes the
    /// permission to write `cursor` (mode 0644, the mount's owner), not just to read.
    fn may_move_cursor(&self, caller: &Caller) -> bool {
        caller.uid == self.owner || caller.uid == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for kind in FileKind::ALL {
            assert_eq!(FileKind::from_name(kind.name()), Some(kind));
            assert_eq!(FileKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(FileKind::from_code(0), None);
        assert_eq!(FileKind::from_code(9), None);
        assert_eq!(FileKind::from_name("sock"), None);
    }

    #[test]
    fn modes_say_what_is_allowed() {
        for kind in FileKind::ALL {
            assert_eq!(kind.perm() & 0o200 != 0, kind.writable(), "{kind:?}");
            assert_ne!(kind.perm() & 0o444, 0, "{kind:?} reads");
            assert_eq!(kind.control().name(), kind.name());
        }
    }
}
