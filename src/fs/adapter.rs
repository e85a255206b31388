//! The only code that knows `fuser`: decode a request, call one operation of [`PodFs`],
//! turn its answer into a reply.
//!
//! An operation that must wait hands its reply to what it waits for, which runs it again
//! when that is ready, its bound passed, or its caller got a signal: waiting costs no
//! thread. Removals run on the worker pool. Nothing here blocks a request thread, so a
//! child that accepts connections and never answers cannot stall anything else.
//!
//! Every method runs with its panics contained: a panic answers its request with `EIO`
//! (fuser answers a dropped reply so), is logged, and leaves the thread serving.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, PollEvents, PollFlags,
    PollNotifier, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use tracing::{debug_span, event, Level};

use crate::error::{Error, Result};
use crate::fs::kernel::Kernel;
use crate::fs::{Attr, Caller, Pages, PodFs, Round, Step};

/// Attribute and entry TTL: short, so changes show within a second even where the
/// registry's changes cannot be pushed (no inotify).
pub const TTL: Duration = Duration::from_secs(1);

pub struct Adapter {
    fs: Arc<PodFs>,
    uid: u32,
    gid: u32,
}

/// fuser's notifier as the logic layer's [`Kernel`].
struct Notifier(fuser::Notifier);

impl Kernel for Notifier {
    fn inval_entry(&self, parent: u64, name: &str) {
        let _ = self.0.inval_entry(INodeNo(parent), OsStr::new(name));
    }
    fn inval_inode(&self, ino: u64) {
        let _ = self.0.inval_inode(INodeNo(ino), 0, 0);
    }

    fn inval_pages(&self, ino: u64, from: u64) {
        let _ = self
            .0
            .inval_inode(INodeNo(ino), i64::try_from(from).unwrap_or(i64::MAX), 0);
    }
}

/// The FUSE session serving a [`PodFs`] on a mounted `/dev/fuse` descriptor, on threads
/// of its own. Its end (the kernel side went away: an unmount) is a descriptor that turns
/// readable, so whoever waits for it can wait for signals in the same `poll`.
pub struct Session {
    ended: UnixStream,
}

impl Session {
    /// Serve `fs` on `fd` with `threads` request threads; with `allow_other`, for every
    /// user (the kernel then checks the file modes), else for the mount's owner only.
    pub fn start(
        fs: Arc<PodFs>,
        fd: OwnedFd,
        allow_other: bool,
        threads: usize,
    ) -> std::io::Result<Session> {
        let acl = if allow_other {
            fuser::SessionACL::All
        } else {
            fuser::SessionACL::Owner
        };
        let mut config = fuser::Config::default();
        config.n_threads = Some(threads.max(1));
        // Invalidations go through a clone of the device where one can be made, so that a
        // podfs killed while one is stuck in the kernel can still die (see fs::kernel).
        let device = crate::fs::kernel::Device::clone_of(fd.as_fd());
        let session = fuser::Session::from_fd(Adapter::new(fs.clone()), fd, acl, config)?;
        match device {
            Ok(device) => fs.connect_kernel(Arc::new(device)),
            Err(e) => {
                tracing::debug!(error = %e, "no clone of the FUSE device; invalidations go through the session's own");
                fs.connect_kernel(Arc::new(Notifier(session.notifier())));
            }
        }
        let (ended, end) = UnixStream::pair()?;
        ended.set_nonblocking(true)?;
        std::thread::Builder::new()
            .name("podfs-fuse".into())
            .spawn(move || {
                if let Err(e) = session.run() {
                    tracing::debug!(error = %e, "FUSE session ended");
                }
                drop(end);
            })?;
        Ok(Session { ended })
    }

    /// Readable (end of file) once the session has ended.
    pub fn end(&self) -> BorrowedFd<'_> {
        self.ended.as_fd()
    }

    /// Whether the session ended, waiting at most `timeout` for it.
    pub fn wait_end(&self, timeout: Duration) -> bool {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            self.end(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).is_ok_and(|n| n > 0)
    }
}

/// Log a failure at the level its variant deserves and return its errno.
fn errno(op: &str, e: &Error) -> Errno {
    match e.level() {
        Level::ERROR => event!(Level::ERROR, op, error = %e),
        Level::WARN => event!(Level::WARN, op, error = %e),
        Level::INFO => event!(Level::INFO, op, error = %e),
        _ => event!(Level::DEBUG, op, error = %e),
    }
    Errno::from_i32(e.errno())
}

fn access_mode(flags: OpenFlags) -> bool {
    !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY)
}

impl Adapter {
    pub fn new(fs: Arc<PodFs>) -> Self {
        Adapter {
            fs,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    fn attr(uid: u32, gid: u32, a: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.mtime,
            mtime: a.mtime,
            ctime: a.mtime,
            crtime: a.mtime,
            kind: if a.is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: a.perm,
            nlink: a.nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn reply_attr(&self, op: &'static str, reply: ReplyAttr) -> impl FnOnce(Result<Attr>) + Send {
        let (uid, gid) = (self.uid, self.gid);
        move |r| match r {
            Ok(a) => reply.attr(&attr_ttl(&a), &Self::attr(uid, gid, &a)),
            Err(e) => reply.error(errno(op, &e)),
        }
    }
}

/// The open flags for a file served as `pages` says. A read-only descriptor has nothing
/// to flush: `FOPEN_NOFLUSH` skips that round trip on close.
fn open_flags(pages: Pages, write: bool) -> FopenFlags {
    let flags = match pages {
        // Every read reaches podfs, so values are never stale and readers see the whole
        // content whatever size `stat` reported.
        Pages::Direct => FopenFlags::FOPEN_DIRECT_IO,
        Pages::Keep => FopenFlags::FOPEN_KEEP_CACHE,
        Pages::Drop => FopenFlags::empty(),
    };
    if write {
        flags
    } else {
        flags | FopenFlags::FOPEN_NOFLUSH
    }
}

/// How long the kernel may cache attributes: not at all for content that changes by
/// itself, so `stat` (and `tar`, `rsync`, `cp`) always see the size a read returns.
fn attr_ttl(a: &Attr) -> Duration {
    if a.volatile {
        Duration::ZERO
    } else {
        TTL
    }
}

fn reply_empty(op: &str, reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, &e)),
    }
}

fn span(op: &'static str, req: &Request, ino: u64) -> tracing::span::EnteredSpan {
    debug_span!("fuse", op, req = req.unique().0, pid = req.pid(), ino).entered()
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        pid: req.pid(),
    }
}

thread_local! {
    /// Each FUSE thread's read buffer, kept between requests: a fresh megabyte per read
    /// is a fresh mapping for the allocator, faulted in and zeroed by the kernel, which
    /// cost more than the copy itself. It holds at most one request (the kernel's
    /// `max_pages`, 1 MiB), so the mount's threads hold at most that each.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run one request's handling with its panic contained: the reply it owns is dropped on
/// the way out, which fuser answers with EIO, and the thread goes on serving.
fn guarded(op: &'static str, f: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let e = Error::from_panic(&*payload);
        tracing::error!(op, error = %e, "panic contained; the request is answered with EIO");
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // readdirplus saves one lookup per entry for `ls -l`; the kernel may decline it.
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // Without this the kernel serialises lookups within a directory: a `stat` of one
        // child's `status` waiting for a silent child would hold up `cat socket` beside it.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // `log`'s pages are dropped when podfs says which (`watch::pages`), not all of
        // them whenever its size changes. A kernel without it drops them all: just as
        // right, only slower.
        let _ = config.add_capabilities(InitFlags::FUSE_EXPLICIT_INVAL_DATA);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _s = span("lookup", req, parent.0);
        guarded("lookup", || match self.fs.lookup(parent.0, name) {
            Ok(a) => reply.entry_with_ttls(
                &attr_ttl(&a),
                &TTL,
                &Self::attr(self.uid, self.gid, &a),
                Generation(0),
            ),
            Err(e) => reply.error(errno("lookup", &e)),
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        guarded("forget", || self.fs.forget(ino.0, nlookup));
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _s = span("getattr", req, ino.0);
        let fh = fh.map(|f| f.0);
        let who = caller(req);
        guarded("getattr", || {
            self.fs.answer(
                &who,
                self.fs.getattr(ino.0, fh, &who, false),
                move |fs, _| fs.getattr(ino.0, fh, &who, true),
                self.reply_attr("getattr", reply),
            )
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _s = span("setattr", req, ino.0);
        let who = caller(req);
        guarded("setattr", || {
            let step = match (mode, uid, gid, size) {
                (None, None, None, Some(size)) => self.fs.truncate(ino.0, size),
                // touch(1): times are not kept, and that is not an error worth failing on.
                (None, None, None, None) => self.fs.getattr(ino.0, None, &who, false),
                _ => Step::Ready(Err(Error::NotPermitted("attributes are fixed".into()))),
            };
            self.fs.answer(
                &who,
                step,
                move |fs, _| fs.getattr(ino.0, None, &who, true),
                self.reply_attr("setattr", reply),
            )
        });
    }

    fn mkdir(&self, req: &Request, p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        let _s = span("mkdir", req, p.0);
        reply.error(errno(
            "mkdir",
            &Error::NotPermitted("spawning from the filesystem is not supported".into()),
        ));
    }

    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EACCES));
    }

    fn create(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::from_i32(libc::EACCES));
    }

    fn symlink(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _t: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EPERM));
    }

    fn link(&self, _req: &Request, _i: INodeNo, _p: INodeNo, _n: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::from_i32(libc::EPERM));
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(Errno::from_i32(libc::EINVAL));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = span("unlink", req, parent.0);
        guarded("unlink", || {
            reply_empty("unlink", reply, self.fs.unlink(parent.0, name))
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = span("rmdir", req, parent.0);
        guarded("rmdir", || {
            self.fs
                .remove(parent.0, name.to_os_string(), caller(req), move |r| {
                    reply_empty("rmdir", reply, r)
                })
        });
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::EPERM));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _s = span("open", req, ino.0);
        let write = access_mode(flags);
        let nonblocking = flags.0 & libc::O_NONBLOCK != 0;
        let who = caller(req);
        guarded("open", || {
            self.fs.answer(
                &who,
                self.fs.open(ino.0, write, nonblocking, &who, Round::First),
                move |fs, round| fs.open(ino.0, write, nonblocking, &who, round),
                move |r| match r {
                    Ok(o) => reply.opened(FileHandle(o.fh), open_flags(o.pages, write)),
                    Err(e) => reply.error(errno("open", &e)),
                },
            )
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _s = span("read", req, ino.0);
        guarded("read", || {
            READ_BUFFER.with_borrow_mut(|buf| match self.fs.read(fh.0, offset, size, buf) {
                Ok(()) => reply.data(buf),
                Err(e) => reply.error(errno("read", &e)),
            })
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _s = span("write", req, ino.0);
        let who = caller(req);
        guarded("write", || {
            let first = self.fs.write(fh.0, data, &who, false);
            // Only a write that must wait keeps a copy of its data.
            let data = match &first {
                Step::Wait(..) => data.to_vec(),
                Step::Ready(_) => Vec::new(),
            };
            self.fs.answer(
                &who,
                first,
                move |fs, _| fs.write(fh.0, &data, &who, true),
                move |r| match r {
                    Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
                    Err(e) => reply.error(errno("write", &e)),
                },
            )
        });
    }

    fn flush(&self, req: &Request, ino: INodeNo, fh: FileHandle, _l: LockOwner, reply: ReplyEmpty) {
        let _s = span("flush", req, ino.0);
        let who = caller(req);
        guarded("flush", || {
            reply_empty("flush", reply, self.fs.flush(fh.0, &who))
        });
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _s = span("release", req, ino.0);
        guarded("release", || {
            self.fs.release(fh.0);
            reply.ok();
        });
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _s = span("opendir", req, ino.0);
        guarded("opendir", || match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", &e)),
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _s = span("readdir", req, ino.0);
        guarded("readdir", || {
            let result = self.fs.readdir(fh.0, offset, false, |next, entry| {
                let kind = if entry.is_dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                reply.add(INodeNo(entry.ino), next, kind, entry.name)
            });
            match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("readdir", &e)),
            }
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _s = span("readdirplus", req, ino.0);
        let (uid, gid) = (self.uid, self.gid);
        guarded("readdirplus", || {
            let result = self.fs.readdir(fh.0, offset, true, |next, entry| {
                // Entries of a listing with attributes always carry them.
                let Some(attr) = entry.attr else {
                    return true;
                };
                // One TTL for the entry and its attributes here: live files get none.
                reply.add(
                    INodeNo(entry.ino),
                    next,
                    entry.name,
                    &attr_ttl(&attr),
                    &Self::attr(uid, gid, &attr),
                    Generation(0),
                )
            });
            match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("readdirplus", &e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guarded("releasedir", || {
            self.fs.releasedir(fh.0);
            reply.ok();
        });
    }

    fn fsyncdir(&self, _req: &Request, _i: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let _s = span("access", req, ino.0);
        let write = mask.contains(fuser::AccessFlags::W_OK);
        guarded("access", || {
            reply_empty("access", reply, self.fs.access(ino.0, write))
        });
    }

    /// No extended attributes; ENOSYS tells the kernel not to ask again.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, _s: u32, reply: ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    /// No ioctls: `isatty()` (Python's `open()` asks) gets the answer a regular file gives.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    /// `status`, `log` and `output` are readable when their content changed since the
    /// descriptor last read it (`output`: when a new open would return text); the kernel
    /// is told on every change for as long as the file is open (an edge-triggered epoll
    /// waits for exactly that). Everything else is always ready, like a regular file.
    fn poll(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        ph: PollNotifier,
        _events: PollEvents,
        flags: PollFlags,
        reply: ReplyPoll,
    ) {
        let _s = span("poll", req, ino.0);
        let notify: crate::watch::live::Notify =
            if flags.contains(PollFlags::FUSE_POLL_SCHEDULE_NOTIFY) {
                std::sync::Arc::new(move || {
                    let _ = ph.clone().notify();
                })
            } else {
                std::sync::Arc::new(|| {})
            };
        guarded("poll", || match self.fs.poll(fh.0, notify) {
            Ok(true) => reply.poll(
                PollEvents::POLLIN
                    | PollEvents::POLLRDNORM
                    | PollEvents::POLLOUT
                    | PollEvents::POLLWRNORM,
            ),
            Ok(false) => reply.poll(PollEvents::empty()),
            Err(e) => reply.error(errno("poll", &e)),
        });
    }

    /// The kernel seeks on its own; ENOSYS tells it not to ask again.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The kernel falls back to reading and writing.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _bs: u32, _idx: u64, reply: fuser::ReplyBmap) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }
}
