//! The FUSE floor: a static tree of the same shape as podfs's, answering from arithmetic,
//! with the open flags and capabilities podfs asks for (`FOPEN_NOFLUSH` on read-only
//! opens, `PARALLEL_DIROPS`), and no allocation per entry or request, so that a ratio
//! under 1.0x means podfs is faster than the cheapest FUSE filesystem of its shape.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

pub const FILES: [&str; 8] = [
    "socket", "scope", "cursor", "output", "log", "input", "status", "callback",
];
const TTL: Duration = Duration::from_secs(1);
/// Parent directories of the floor get inode numbers far above any child's.
const PARENT_BASE: u64 = 1 << 62;

/// A directory entry's name: borrowed, or a child's `c%05d` on the stack.
enum Name<'a> {
    Str(&'a str),
    Child([u8; 12], usize),
}

impl Name<'_> {
    fn child(j: usize) -> Self {
        let mut buf = [0u8; 12];
        let mut w = &mut buf[..];
        let _ = write!(w, "c{j:05}");
        let len = 12 - w.len();
        Name::Child(buf, len)
    }

    fn as_str(&self) -> &str {
        match self {
            Name::Str(s) => s,
            Name::Child(buf, len) => std::str::from_utf8(&buf[..*len]).unwrap_or(""),
        }
    }
}

pub struct Floor {
    parents: Vec<(String, usize)>,
    /// Global index of each parent's first child.
    starts: Vec<usize>,
    content: Vec<Vec<u8>>,
}

enum FNode {
    Root,
    Parent(usize),
    Child(usize, usize),
    /// The file kind; only the kind decides the content.
    File(usize),
}

impl Floor {
    /// The content of each file kind, in [`FILES`] order (the tmpfs floor gets the same).
    pub fn content(&self, kind: usize) -> &[u8] {
        &self.content[kind]
    }

    pub fn new(parents: Vec<(String, usize)>) -> Self {
        let mut starts = Vec::new();
        let mut n = 0;
        for (_, count) in &parents {
            starts.push(n);
            n += count;
        }
        let content = FILES
            .iter()
            .map(|f| match *f {
                "socket" | "callback" => b"/tmp/podfs-bench-home/run/c00000/sock\n".to_vec(),
                "scope" => b"write recursive /tmp/podfs-bench-home/work/c00000\nread recursive /tmp/podfs-bench-home/work\n".to_vec(),
                "cursor" => b"0\n".to_vec(),
                "status" => b"unreachable\n".to_vec(),
                _ => Vec::new(),
            })
            .collect();
        Floor {
            parents,
            starts,
            content,
        }
    }

    fn node(&self, ino: u64) -> Option<FNode> {
        if ino == 1 {
            return Some(FNode::Root);
        }
        if ino >= PARENT_BASE {
            let p = (ino - PARENT_BASE) as usize;
            return (p < self.parents.len()).then_some(FNode::Parent(p));
        }
        let g = (ino >> 4) as usize - 1;
        let code = (ino & 15) as usize;
        let p = self.starts.iter().rposition(|&s| s <= g)?;
        let j = g - self.starts[p];
        if j >= self.parents[p].1 {
            return None;
        }
        Some(if code == 0 {
            FNode::Child(p, j)
        } else {
            FNode::File(code - 1)
        })
    }

    fn child_ino(&self, p: usize, j: usize) -> u64 {
        ((self.starts[p] + j + 1) as u64) << 4
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.node(ino)?;
        let (dir, size, perm) = match node {
            FNode::Root | FNode::Parent(_) | FNode::Child(..) => (true, 0, 0o755),
            FNode::File(k) => (false, self.content[k].len() as u64, 0o644),
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm,
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The `i`-th entry of directory `ino` (`.` and `..` first), computed, not stored,
    /// and without a heap allocation (podfs lists from its registry view without one).
    fn entry_at(&self, ino: u64, i: usize) -> Option<(u64, bool, Name<'_>)> {
        match i {
            0 => return Some((ino, true, Name::Str("."))),
            1 => return Some((1, true, Name::Str(".."))),
            _ => {}
        }
        let k = i - 2;
        match self.node(ino)? {
            FNode::Root => self
                .parents
                .get(k)
                .map(|(n, _)| (PARENT_BASE + k as u64, true, Name::Str(n))),
            FNode::Parent(p) => {
                (k < self.parents[p].1).then(|| (self.child_ino(p, k), true, Name::child(k)))
            }
            FNode::Child(p, j) => FILES
                .get(k)
                .map(|f| (self.child_ino(p, j) | (k as u64 + 1), false, Name::Str(f))),
            FNode::File(_) => None,
        }
    }
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_str().unwrap_or("");
        let ino = match self.node(parent.0) {
            Some(FNode::Root) => self
                .parents
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| PARENT_BASE + i as u64),
            Some(FNode::Parent(p)) => name
                .strip_prefix('c')
                .and_then(|d| d.parse::<usize>().ok())
                .filter(|&j| j < self.parents[p].1 && Name::child(j).as_str() == name)
                .map(|j| self.child_ino(p, j)),
            Some(FNode::Child(p, j)) => FILES
                .iter()
                .position(|f| *f == name)
                .map(|k| self.child_ino(p, j) | (k as u64 + 1)),
            _ => None,
        };
        match ino.and_then(|i| self.attr(i)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::from_i32(libc::ENOENT)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::from_i32(libc::ENOENT)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::from_i32(libc::ENOENT)),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // As podfs: direct I/O, and no flush round trip for a read-only descriptor.
        let read_only = matches!(flags.acc_mode(), fuser::OpenAccMode::O_RDONLY);
        let mut open_flags = FopenFlags::FOPEN_DIRECT_IO;
        if read_only {
            open_flags |= FopenFlags::FOPEN_NOFLUSH;
        }
        reply.opened(FileHandle(0), open_flags);
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let data = match self.node(ino.0) {
            Some(FNode::File(k)) => &self.content[k][..],
            _ => &[][..],
        };
        let start = (offset as usize).min(data.len());
        let end = (start + size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut i = offset as usize;
        while let Some((ino, dir, name)) = self.entry_at(ino.0, i) {
            let kind = if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name.as_str()) {
                break;
            }
            i += 1;
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut i = offset as usize;
        while let Some((ino, _, name)) = self.entry_at(ino.0, i) {
            let Some(attr) = self.attr(ino) else { break };
            if reply.add(
                INodeNo(ino),
                i as u64 + 1,
                name.as_str(),
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
            i += 1;
        }
        reply.ok();
    }
}

/// `bench floor <mnt> <name:count,...>`: serve the floor until SIGTERM.
pub fn serve_floor(mnt: &Path, shape: &str) {
    let parents: Vec<(String, usize)> = shape
        .split(',')
        .map(|s| {
            let (n, c) = s.split_once(':').unwrap();
            (n.to_string(), c.parse().unwrap())
        })
        .collect();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("floor".into()),
        fuser::MountOption::Subtype("floor".into()),
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoExec,
        fuser::MountOption::NoAtime,
    ];
    config.n_threads = Some(2);
    let session = fuser::Session::new(Floor::new(parents), mnt, &config)
        .unwrap()
        .spawn()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()).unwrap();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = session.umount_and_join();
}
