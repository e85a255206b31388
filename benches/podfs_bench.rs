//! podfs against its floors: a minimal static FUSE filesystem of the same shape (same fuser,
//! same mount options, direct I/O, same TTLs, fixed content) and the same tree on tmpfs.
//! Every figure is printed with its ratio to the floors measured in the same run.
//!
//! Run: `cargo bench --bench podfs_bench` (as root, with /dev/fuse). `PODFS_BENCH_QUICK=1`
//! shrinks the iteration counts for a smoke run.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use podfs::generation::INSOMNIA_5472 as GEN;
use podfs::scope::StoredRule;
use podfs::store::alloc::{AllocTable, Allocation};
use podfs::store::metadata::{Metadata, SpawnedChild};

#[path = "podfs_bench/hostile.rs"]
mod hostile;
#[path = "podfs_bench/live.rs"]
mod live;

const PODFS: &str = env!("CARGO_BIN_EXE_podfs");
const FILES: [&str; 8] = [
    "socket", "scope", "cursor", "output", "log", "input", "status", "callback",
];
const TTL: Duration = Duration::from_secs(1);
/// Parent directories of the floor get inode numbers far above any child's.
const PARENT_BASE: u64 = 1 << 62;

fn child_name(j: usize) -> String {
    format!("c{j:05}")
}

// ---------------------------------------------------------------------------------------
// The FUSE floor: a static tree of the same shape, answering from arithmetic, with the
// open flags and capabilities podfs asks for, and no allocation per entry or request.

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

struct Floor {
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
    fn new(parents: Vec<(String, usize)>) -> Self {
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
fn serve_floor(mnt: &Path, shape: &str) {
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

// ---------------------------------------------------------------------------------------
// Staging.

/// A home with `parents`, every child unreachable (no sockets), as the runtime leaves it:
/// each child has its own allocation, and each of its write rules is a deny layer of its
/// parent's allocation.
fn make_home(parents: &[(String, usize)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("podfs-bench-home-")
        .tempdir()
        .unwrap();
    let home = dir.path();
    let run = home.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut table = AllocTable::empty(&GEN);
    for (parent, n) in parents {
        let mut meta = Metadata::new(parent, &GEN);
        let mut children = Vec::with_capacity(*n);
        let mut denies = Vec::with_capacity(*n);
        for j in 0..*n {
            let name = child_name(j);
            let full = format!("{parent}-{name}");
            let rules = vec![
                StoredRule::new(
                    &home.join("work").join(&full).display().to_string(),
                    "write",
                    true,
                ),
                StoredRule::new(&home.join("work").display().to_string(), "read", true),
            ];
            children.push(SpawnedChild {
                name: name.clone(),
                socket_path: run.join(&full).join("sock").display().to_string(),
                scope_delegated: rules.clone(),
                callback_address: run.join(parent).join("sock").display().to_string(),
            });
            denies.push(rules[0].to_wire());
            table.push(&Allocation {
                name: name.clone(),
                pid: 0,
                socket: run.join(&full).join("sock").display().to_string(),
                scope_allow: rules.iter().map(StoredRule::to_wire).collect(),
                scope_deny: Vec::new(),
                delegated_from: Some(parent.clone()),
                segment_id: None,
            });
        }
        table.push(&Allocation {
            name: parent.clone(),
            pid: 0,
            socket: run.join(parent).join("sock").display().to_string(),
            scope_allow: vec![StoredRule::new(
                &home.join("work").display().to_string(),
                "write",
                true,
            )
            .to_wire()],
            scope_deny: denies,
            delegated_from: None,
            segment_id: None,
        });
        meta.set_children(&children);
        let path = home.join("pods").join(parent).join("metadata.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, meta.to_bytes()).unwrap();
    }
    std::fs::write(run.join("pods.json"), table.to_bytes()).unwrap();
    dir
}

/// The same tree as real directories and files (for tmpfs).
fn make_tree(root: &Path, parents: &[(String, usize)]) {
    let floor = Floor::new(parents.to_vec());
    for (parent, n) in parents {
        for j in 0..*n {
            let dir = root.join(parent).join(child_name(j));
            std::fs::create_dir_all(&dir).unwrap();
            for (k, f) in FILES.iter().enumerate() {
                std::fs::write(dir.join(f), &floor.content[k]).unwrap();
            }
        }
    }
}

struct Server {
    child: Option<Child>,
    mnt: tempfile::TempDir,
}

impl Server {
    fn start(cmd: &mut Command) -> (Server, Duration) {
        Self::start_logging(cmd, Stdio::null())
    }

    fn start_logging(cmd: &mut Command, stderr: Stdio) -> (Server, Duration) {
        let mnt = tempfile::Builder::new()
            .prefix("podfs-bench-mnt-")
            .tempdir()
            .unwrap();
        let dev = std::fs::metadata(mnt.path()).unwrap().dev();
        let started = Instant::now();
        let child = cmd
            .arg(mnt.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let server = Server {
            child: Some(child),
            mnt,
        };
        while std::fs::metadata(server.mnt.path())
            .map(|m| m.dev())
            .unwrap_or(dev)
            == dev
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "server did not mount"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        (server, started.elapsed())
    }

    /// podfs on `home`. `PODFS_BENCH_LOG=FILE` keeps its debug log, for finding out
    /// where a slow row spends its time.
    fn podfs(home: &Path) -> (Server, Duration) {
        let log = std::env::var_os("PODFS_BENCH_LOG");
        let mut cmd = Command::new(PODFS);
        cmd.args(["--log-level", if log.is_some() { "debug" } else { "error" }])
            .args(["mount", "--home"])
            .arg(home);
        // The mount point is appended last by `start`.
        match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap();
                Self::start_logging(&mut cmd, Stdio::from(file))
            }
            None => Self::start(&mut cmd),
        }
    }

    /// podfs with `extra` mount arguments, logging at info level to `log` (for its
    /// SIGUSR1 report).
    fn podfs_logged(home: &Path, extra: &[&str], log: &Path) -> Server {
        let mut cmd = Command::new(PODFS);
        cmd.args(["--log-level", "info", "mount", "--home"])
            .arg(home)
            .args(extra);
        Self::start_logging(&mut cmd, Stdio::from(std::fs::File::create(log).unwrap())).0
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, and wait until the process has exited.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    fn floor(parents: &[(String, usize)]) -> (Server, Duration) {
        let shape: Vec<String> = parents.iter().map(|(n, c)| format!("{n}:{c}")).collect();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["floor", &shape.join(",")]);
        Self::start(&mut cmd)
    }

    fn path(&self) -> &Path {
        self.mnt.path()
    }

    fn rss_kib(&self) -> (u64, u64) {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mnt.path())
            .stderr(Stdio::null())
            .status();
    }
}

struct Tmpfs(tempfile::TempDir, bool);

impl Tmpfs {
    fn new() -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("podfs-bench-tmpfs-")
            .tempdir()
            .unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2g", "podfs-bench"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!(
                "note: could not mount tmpfs; using {} as the kernel floor",
                dir.path().display()
            );
        }
        Tmpfs(dir, mounted)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("umount").arg(self.0.path()).status();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measurement.

/// Time per operation for each root, over `rounds` rounds of `iters` operations.
/// Rounds are interleaved across the roots (tmpfs, floor, podfs, tmpfs, ...) and ratios are
/// taken round by round, so drift in the machine's speed affects both sides of a ratio.
struct Timing {
    /// Median per root.
    median: Vec<Duration>,
    /// Median over rounds of podfs ÷ floor and podfs ÷ tmpfs.
    vs_floor: f64,
    vs_tmpfs: f64,
}

fn per_op(roots: &[&Path; 3], rounds: usize, iters: usize, op: impl Fn(&Path, usize)) -> Timing {
    // One full warm-up round: every path looked up once, so rounds compare like with like.
    for root in roots {
        for i in 0..iters {
            op(root, i);
        }
    }
    let mut samples = vec![Vec::with_capacity(rounds); roots.len()];
    for _ in 0..rounds {
        for (k, root) in roots.iter().enumerate() {
            let t = Instant::now();
            for i in 0..iters {
                op(root, i);
            }
            samples[k].push((t.elapsed() / iters as u32).max(Duration::from_nanos(1)));
        }
    }
    let median_ratio = |base: usize| {
        let mut r: Vec<f64> = (0..rounds)
            .map(|i| samples[2][i].as_secs_f64() / samples[base][i].as_secs_f64())
            .collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let (vs_floor, vs_tmpfs) = (median_ratio(1), median_ratio(0));
    let median = samples
        .into_iter()
        .map(|mut v| {
            v.sort();
            v[v.len() / 2]
        })
        .collect();
    Timing {
        median,
        vs_floor,
        vs_tmpfs,
    }
}

fn read_file(path: &Path) {
    let mut buf = [0u8; 4096];
    let mut f = std::fs::File::open(path).unwrap();
    while f.read(&mut buf).unwrap() > 0 {}
}

fn ls_l(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::symlink_metadata(entry.path()).unwrap();
        n += 1;
    }
    n
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

struct Row {
    op: String,
    tmpfs: Option<Duration>,
    floor: Duration,
    podfs: Duration,
    /// podfs ÷ floor and podfs ÷ tmpfs (paired by round where measured in rounds).
    ratios: (f64, Option<f64>),
    target: Option<(String, bool)>,
}

impl Row {
    fn timed(op: &str, t: &Timing, target: Option<(&str, f64)>) -> Row {
        Row {
            op: op.into(),
            tmpfs: Some(t.median[0]),
            floor: t.median[1],
            podfs: t.median[2],
            ratios: (t.vs_floor, Some(t.vs_tmpfs)),
            target: target.map(|(name, max)| (name.to_string(), t.vs_floor <= max)),
        }
    }

    fn single(
        op: &str,
        tmpfs: Option<Duration>,
        floor: Duration,
        podfs: Duration,
        target: Option<(&str, bool)>,
    ) -> Row {
        let r = |base: Duration| podfs.as_secs_f64() / base.as_secs_f64().max(1e-12);
        Row {
            op: op.into(),
            tmpfs,
            floor,
            podfs,
            ratios: (r(floor), tmpfs.map(r)),
            target: target.map(|(name, met)| (name.to_string(), met)),
        }
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "| {:<44} | {:>10} | {:>10} | {:>10} | {:>8} | {:>8} | target |",
        "operation", "tmpfs", "FUSE floor", "podfs", "÷floor", "÷tmpfs"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|---|",
        "-".repeat(46),
        "-".repeat(12),
        "-".repeat(12),
        "-".repeat(12),
        "-".repeat(10),
        "-".repeat(10)
    );
    for r in rows {
        println!(
            "| {:<44} | {:>10} | {:>10} | {:>10} | {:>8} | {:>8} | {} |",
            r.op,
            r.tmpfs.map(fmt).unwrap_or_else(|| "–".into()),
            fmt(r.floor),
            fmt(r.podfs),
            format!("{:.2}×", r.ratios.0),
            r.ratios
                .1
                .map(|x| format!("{x:.2}×"))
                .unwrap_or_else(|| "–".into()),
            r.target
                .as_ref()
                .map(|(t, met)| format!("{t}: {}", if *met { "MET" } else { "MISSED" }))
                .unwrap_or_default(),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("floor") {
        // Called as `floor <shape> <mnt>` (the mount point comes last).
        serve_floor(Path::new(&args[2]), &args[1]);
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("podfs_bench: /dev/fuse is missing; nothing to measure");
        std::process::exit(1);
    }
    let quick = std::env::var_os("PODFS_BENCH_QUICK").is_some();
    let (rounds, iters) = if quick { (3, 500) } else { (11, 3000) };
    let mut rows = Vec::new();
    // PODFS_BENCH_ONLY=files|reclaim|startup|live|memory|hostile runs one section.
    let only = std::env::var("PODFS_BENCH_ONLY").ok();
    let want = |section: &str| only.as_deref().is_none_or(|o| o == section);
    if want("files") {
        files(quick, rounds, iters, &mut rows);
    }
    if want("reclaim") {
        reclaim(quick, &mut rows);
    }
    if want("startup") {
        startup(quick, &mut rows);
    }
    let live_figures = if want("live") {
        live::run(quick, &mut rows).lines
    } else {
        Vec::new()
    };
    let memory = if want("memory") {
        Some(memory(quick))
    } else {
        None
    };
    let hostile_figures = if want("hostile") {
        hostile::run(quick)
    } else {
        Vec::new()
    };

    println!();
    println!(
        "podfs benchmark ({} mode)",
        if quick { "quick" } else { "full" }
    );
    print_rows(&rows);
    println!();
    for line in &live_figures {
        println!("{line}");
    }
    if let Some(line) = memory {
        println!();
        println!("{line}");
    }
    if !hostile_figures.is_empty() {
        println!();
        for line in &hostile_figures {
            println!("{line}");
        }
    }
}

/// Control files, listings and `ls -l` against both floors.
fn files(quick: bool, rounds: usize, iters: usize, rows: &mut Vec<Row>) {
    let _ = quick;
    let shape: Vec<(String, usize)> = vec![
        ("p10".into(), 10),
        ("p1000".into(), 1000),
        ("p10000".into(), 10000),
    ];
    let home = make_home(&shape);
    let tmp = Tmpfs::new();
    make_tree(tmp.0.path(), &shape);
    let (floor, _) = Server::floor(&shape);
    let (pod, _) = Server::podfs(home.path());
    let roots: [&Path; 3] = [tmp.0.path(), floor.path(), pod.path()];

    let mut measure = |op: &str, target: Option<(&str, f64)>, f: &dyn Fn(&Path, usize)| {
        let t = per_op(&roots, rounds, iters, f);
        rows.push(Row::timed(op, &t, target));
    };
    for file in ["cursor", "socket", "scope"] {
        measure(
            &format!("open+read+close {file}"),
            Some(("≤1.25× floor", 1.25)),
            &|root, i| read_file(&root.join("p10000").join(child_name(i % 10000)).join(file)),
        );
    }
    measure("stat cursor", None, &|root, i| {
        std::fs::metadata(
            root.join("p10000")
                .join(child_name(i % 10000))
                .join("cursor"),
        )
        .unwrap();
    });
    measure("echo N > cursor", None, &|root, i| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(root.join("p1000").join(child_name(i % 1000)).join("cursor"))
            .unwrap();
        f.write_all(format!("{}\n", i % 7).as_bytes()).unwrap();
    });
    for (parent, n, iters) in [
        ("p10", 10, iters / 10),
        ("p1000", 1000, 20),
        ("p10000", 10000, 3),
    ] {
        let t = per_op(&roots, rounds, iters.max(2), |root, _| {
            assert_eq!(std::fs::read_dir(root.join(parent)).unwrap().count(), n)
        });
        rows.push(Row::timed(&format!("readdir, {n} children"), &t, None));
    }
    let t = per_op(&roots, rounds, 2, |root, _| {
        assert_eq!(ls_l(&root.join("p10000")), 10000)
    });
    rows.push(Row::timed(
        "ls -l (readdir + stat each), 10,000 children",
        &t,
        Some(("≤1.5× floor", 1.5)),
    ));
    drop((floor, pod));
}

/// Durable reclaim, parent not live: rm -r of 1,000 children, one at a time.
fn reclaim(quick: bool, rows: &mut Vec<Row>) {
    let n = if quick { 100 } else { 1000 };
    let rshape = vec![("r".to_string(), n)];
    let rhome = make_home(&rshape);
    let rtmp = Tmpfs::new();
    make_tree(rtmp.0.path(), &rshape);
    let (rfloor, _) = Server::floor(&rshape);
    let (rpod, _) = Server::podfs(rhome.path());
    let remove_each = |root: &Path| -> Duration {
        let mut times: Vec<Duration> = (0..n)
            .map(|j| {
                let t = Instant::now();
                std::fs::remove_dir_all(root.join("r").join(child_name(j))).unwrap();
                t.elapsed()
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let (t_tmp, t_floor, t_pod) = (
        remove_each(rtmp.0.path()),
        remove_each(rfloor.path()),
        remove_each(rpod.path()),
    );
    let left = std::fs::read_to_string(rhome.path().join("pods/r/metadata.json")).unwrap();
    assert!(
        !left.contains("\"spawned_children\""),
        "every child must have been reclaimed"
    );
    // ... and its scope given back: only the parent's allocation, with no deny layer left.
    let table = AllocTable::parse(
        &std::fs::read(rhome.path().join("run/pods.json")).unwrap(),
        &GEN,
    )
    .unwrap();
    assert_eq!(table.names(), ["r"]);
    assert_eq!(table.deny("r"), Some(Vec::new()));
    rows.push(Row::single(
        &format!("rm -r child, parent not live (median of {n})"),
        Some(t_tmp),
        t_floor,
        t_pod,
        Some(("≤10 ms", t_pod <= Duration::from_millis(10))),
    ));
    drop((rfloor, rpod, rtmp));
}

/// Start-up: from starting the server to the first successful ls of 1,000 unreachable
/// children.
fn startup(quick: bool, rows: &mut Vec<Row>) {
    let mshape = vec![("m".to_string(), 1000)];
    let mhome = make_home(&mshape);
    let first_ls = |start: &dyn Fn() -> (Server, Duration)| -> Duration {
        let t = Instant::now();
        let (server, _) = start();
        while std::fs::read_dir(server.path().join("m"))
            .map(|d| d.count())
            .unwrap_or(0)
            != 1000
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        t.elapsed()
    };
    let samples = if quick { 2 } else { 5 };
    let median = |f: &dyn Fn() -> Duration| {
        let mut v: Vec<Duration> = (0..samples).map(|_| f()).collect();
        v.sort();
        v[v.len() / 2]
    };
    let t_floor = median(&|| first_ls(&|| Server::floor(&mshape)));
    let t_pod = median(&|| first_ls(&|| Server::podfs(mhome.path())));
    rows.push(Row::single(
        "start to first ls, 1,000 unreachable children",
        None,
        t_floor,
        t_pod,
        Some(("≤1 s", t_pod <= Duration::from_secs(1))),
    ));
}

/// Memory: 100,000 children across 100 parents, every child directory and one file
/// looked up.
fn memory(quick: bool) -> String {
    let per = if quick { 100 } else { 1000 };
    let bshape: Vec<(String, usize)> = (0..100).map(|i| (format!("b{i:03}"), per)).collect();
    let bhome = make_home(&bshape);
    let rss = |server: &Server| {
        for (parent, count) in &bshape {
            assert_eq!(ls_l(&server.path().join(parent)), *count);
            for j in (0..*count).step_by(10) {
                read_file(
                    &server
                        .path()
                        .join(parent)
                        .join(child_name(j))
                        .join("cursor"),
                );
            }
        }
        server.rss_kib()
    };
    let (bfloor, _) = Server::floor(&bshape);
    let (floor_rss, floor_hwm) = rss(&bfloor);
    drop(bfloor);
    let (bpod, _) = Server::podfs(bhome.path());
    let (pod_rss, pod_hwm) = rss(&bpod);
    drop(bpod);

    format!(
        "| resident memory, {} children in 100 parents | floor {} MiB (peak {}) | podfs {} MiB (peak {}) | {:.1}× floor | ≤150 MB: {} |",
        100 * per,
        floor_rss / 1024,
        floor_hwm / 1024,
        pod_rss / 1024,
        pod_hwm / 1024,
        pod_rss as f64 / floor_rss.max(1) as f64,
        if pod_hwm * 1024 <= 150_000_000 { "MET" } else { "MISSED" }
    )
}
