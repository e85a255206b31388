//! The only code that knows `fuser`: decode a request, call one operation of [`PodFs`],
//! turn its `Result` into a reply.
//!
//! Operations that may talk to a socket (opening `output`, `log` or an uncached `status`,
//! writing `input`, `rmdir`) run on a thread of their own with the reply moved there, so a
//! child that accepts connections and never answers cannot stall any other request.

use std::ffi::OsStr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};
use tracing::{debug_span, event, Level};

use crate::error::{Error, Result};
use crate::fs::{Attr, PodFs};

/// Attribute and entry TTL: short, so runtime changes show within a second.
pub const TTL: Duration = Duration::from_secs(1);

pub struct Adapter {
    fs: Arc<PodFs>,
    uid: u32,
    gid: u32,
}

impl Adapter {
    pub fn new(fs: Arc<PodFs>) -> Self {
        Adapter {
            fs,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    /// Run `op` on this request thread, or on a worker of its own when it may talk to a
    /// socket (`blocks`), so a silent pod never holds up the other requests.
    fn dispatch(&self, blocks: bool, op: impl FnOnce(&PodFs) + Send + 'static) {
        if blocks {
            let fs = self.fs.clone();
            offload(move || op(&fs));
        } else {
            op(&self.fs);
        }
    }

    fn reply_attr(&self, op: &str, reply: ReplyAttr, result: Result<Attr>) {
        match result {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(errno(op, &e)),
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
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
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn reply_empty(op: &str, reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, &e)),
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

fn name_str(name: &OsStr) -> std::result::Result<&str, Errno> {
    name.to_str().ok_or(Errno::from_i32(libc::EINVAL))
}

/// Run `work` off the request thread, keeping the request's span.
fn offload(work: impl FnOnce() + Send + 'static) {
    let span = tracing::Span::current();
    let spawned = thread::Builder::new()
        .name("podfs-worker".into())
        .spawn(move || span.in_scope(work));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a worker thread");
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // readdirplus saves one lookup per entry for `ls -l`; the kernel may decline it.
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _s = debug_span!("lookup", parent = parent.0, ?name).entered();
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.fs.lookup(parent.0, name) {
            Ok(a) => reply.entry(&TTL, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(errno("lookup", &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _s = debug_span!("getattr", ino = ino.0).entered();
        self.reply_attr("getattr", reply, self.fs.getattr(ino.0))
    }

    fn setattr(
        &self,
        _req: &Request,
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
        let _s = debug_span!("setattr", ino = ino.0, ?size).entered();
        let result = match (mode, uid, gid, size) {
            (None, None, None, Some(size)) => self.fs.truncate(ino.0, size),
            (None, None, None, None) => self.fs.getattr(ino.0),
            _ => Err(Error::NotPermitted("attributes are fixed".into())),
        };
        self.reply_attr("setattr", reply, result)
    }

    fn mkdir(
        &self,
        _req: &Request,
        _p: INodeNo,
        name: &OsStr,
        _m: u32,
        _u: u32,
        reply: ReplyEntry,
    ) {
        let _s = debug_span!("mkdir", ?name).entered();
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
        name: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        let _s = debug_span!("create", ?name).entered();
        reply.error(Errno::from_i32(libc::EACCES));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = debug_span!("unlink", parent = parent.0, ?name).entered();
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        reply_empty("unlink", reply, self.fs.unlink(parent.0, name))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = debug_span!("rmdir", parent = parent.0, ?name).entered();
        let name = match name_str(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        self.dispatch(true, move |fs| {
            reply_empty("rmdir", reply, fs.rmdir(parent.0, &name))
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

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _s = debug_span!("open", ino = ino.0, flags = flags.0).entered();
        let (read, write) = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => (true, false),
            OpenAccMode::O_WRONLY => (false, true),
            OpenAccMode::O_RDWR => (true, true),
        };
        // Direct I/O: every read reaches podfs, so values are never stale and readers see
        // the whole content whatever size `stat` reported.
        let open = move |fs: &PodFs, reply: ReplyOpen| match fs.open(ino.0, read, write) {
            // A read-only descriptor has nothing to flush: skip that round trip on close.
            Ok(fh) if !write => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
            ),
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno("open", &e)),
        };
        self.dispatch(self.fs.open_blocks(ino.0), move |fs| open(fs, reply));
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _s = debug_span!("read", ino = ino.0, fh = fh.0, offset, size).entered();
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno("read", &e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _s = debug_span!("write", ino = ino.0, fh = fh.0, offset, len = data.len()).entered();
        let done = |r: Result<usize>, reply: ReplyWrite| match r {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno("write", &e)),
        };
        if self.fs.write_blocks(ino.0) {
            let data = data.to_vec();
            self.dispatch(true, move |fs| done(fs.write(ino.0, fh.0, &data), reply));
        } else {
            done(self.fs.write(ino.0, fh.0, data), reply);
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("flush", ino = ino.0, fh = fh.0).entered();
        let flush =
            move |fs: &PodFs, reply: ReplyEmpty| reply_empty("flush", reply, fs.flush(ino.0, fh.0));
        self.dispatch(self.fs.flush_blocks(fh.0), move |fs| flush(fs, reply));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _s = debug_span!("opendir", ino = ino.0).entered();
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _s = debug_span!("readdir", ino = ino.0, offset).entered();
        let result = self.fs.readdir(fh.0, offset, |next, entry| {
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
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _s = debug_span!("readdirplus", ino = ino.0, offset).entered();
        let result = self.fs.readdir(fh.0, offset, |next, entry| {
            // An entry that vanished since opendir is skipped rather than failing the listing.
            let attr = match entry.attr {
                Some(attr) => attr,
                None => match self.fs.getattr(entry.ino) {
                    Ok(attr) => attr,
                    Err(_) => return false,
                },
            };
            let attr = self.attr(&attr);
            reply.add(
                INodeNo(entry.ino),
                next,
                entry.name,
                &TTL,
                &attr,
                Generation(0),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdirplus", &e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let _s = debug_span!("access", ino = ino.0, mask = mask.bits()).entered();
        let read = mask.contains(fuser::AccessFlags::R_OK);
        let write = mask.contains(fuser::AccessFlags::W_OK);
        reply_empty("access", reply, self.fs.access(ino.0, read, write))
    }

    /// No extended attributes; ENOSYS tells the kernel not to ask again.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }
}
