//! The text files: `log` through the page cache, `output` one open's snapshot in direct
//! I/O, against the same bytes on tmpfs and on a FUSE floor that serves them from memory
//! with the open flags podfs gives each file (`FOPEN_KEEP_CACHE` for `log`, direct I/O for
//! `output`) and the same attribute TTL (none). Reads are 1 MiB `read()`s.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

use crate::harness::{child_name, Row, Server, Tmpfs};
use crate::live::LiveHome;

const BIG: usize = 20_000_000;
const SMALL: usize = 1_000_000;
const SMALL_COUNT: usize = 40;

/// A flat FUSE floor: each file's bytes in memory, opened cached (`FOPEN_KEEP_CACHE`) or
/// in direct I/O, attributes never cached.
struct TextFloor {
    files: Vec<(String, Arc<Vec<u8>>, bool)>,
}

impl TextFloor {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (kind, size, perm, nlink) = match ino {
            1 => (FileType::Directory, 0, 0o755, 2),
            i => {
                let (_, bytes, _) = self.files.get(i as usize - 2)?;
                (FileType::RegularFile, bytes.len() as u64, 0o444, 1)
            }
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for TextFloor {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (parent.0 == 1)
            .then(|| {
                self.files
                    .iter()
                    .position(|(n, _, _)| OsStr::new(n) == name)
            })
            .flatten();
        match found.and_then(|i| self.attr(i as u64 + 2)) {
            Some(a) => {
                reply.entry_with_ttls(&Duration::ZERO, &Duration::from_secs(1), &a, Generation(0))
            }
            None => reply.error(Errno::from_i32(libc::ENOENT)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&Duration::ZERO, &a),
            None => reply.error(Errno::from_i32(libc::ENOENT)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let cached = self
            .files
            .get((ino.0 as usize).wrapping_sub(2))
            .is_some_and(|(_, _, c)| *c);
        let flags = if cached {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_DIRECT_IO
        };
        reply.opened(FileHandle(0), flags | FopenFlags::FOPEN_NOFLUSH);
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
        let data = self
            .files
            .get((ino.0 as usize).wrapping_sub(2))
            .map_or(&[][..], |(_, b, _)| &b[..]);
        let start = (offset as usize).min(data.len());
        let end = (start + size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        for (i, (name, _, _)) in self.files.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(i as u64 + 2),
                i as u64 + 1,
                FileType::RegularFile,
                name,
            ) {
                break;
            }
        }
        reply.ok();
    }
}

/// Read `path` to its end in 1 MiB reads; the bytes read.
fn read_all(path: &Path, buf: &mut [u8]) -> usize {
    let mut f = std::fs::File::open(path).unwrap();
    let mut n = 0;
    loop {
        match f.read(buf).unwrap() {
            0 => return n,
            k => n += k,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Rounds of (tmpfs, floor, podfs), each timed by `op`, with the ratios taken round by
/// round: the row for one operation.
fn rounds(
    op: &str,
    n: usize,
    mut each: impl FnMut(usize) -> (Duration, Duration, Duration),
    target: f64,
) -> Row {
    let (mut t, mut f, mut p, mut rt, mut rf) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let (a, b, c) = each(i);
        rt.push(c.as_secs_f64() / a.as_secs_f64());
        rf.push(c.as_secs_f64() / b.as_secs_f64());
        t.push(a.as_secs_f64());
        f.push(b.as_secs_f64());
        p.push(c.as_secs_f64());
    }
    let vs_tmpfs = median(rt);
    Row {
        op: op.into(),
        tmpfs: Some(Duration::from_secs_f64(median(t))),
        floor: Duration::from_secs_f64(median(f)),
        podfs: Duration::from_secs_f64(median(p)),
        ratios: (median(rf), Some(vs_tmpfs)),
        target: Some((format!("≤{target}× tmpfs"), vs_tmpfs <= target)),
    }
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn grep_c(files: &[PathBuf]) -> Duration {
    timed(|| {
        let out = Command::new("grep")
            .arg("-c")
            .arg("echo")
            .args(files)
            .output()
            .unwrap();
        assert!(!out.stdout.is_empty());
    })
}

pub fn run(quick: bool, rows: &mut Vec<Row>) {
    let n = if quick { 5 } else { 15 };
    let small: Vec<String> = (0..SMALL_COUNT).map(child_name).collect();
    let mut all = small.clone();
    all.extend(["big".to_string(), "backlog".to_string()]);
    let mut home = LiveHome::new(&all);
    println!("text: starting reference pods: two with a 20 MB history, {SMALL_COUNT} with 1 MB");
    let stats = home.path().join("text-stats.json");
    home.serve(&small, &stats, &["--history-bytes", &SMALL.to_string()]);
    let big_stats = home.path().join("big-stats.json");
    home.serve(
        &["big".to_string(), "backlog".to_string()],
        &big_stats,
        &["--history-bytes", &BIG.to_string(), "--turn-ms", "20"],
    );
    let (pod, _) = Server::podfs(home.path());
    let p = pod.path().join("live");
    let mut buf = vec![0u8; 1 << 20];

    // The same bytes on tmpfs and on the floor.
    let big_log = std::fs::read(p.join("big/log")).unwrap();
    let small_log = std::fs::read(p.join(&small[0]).join("log")).unwrap();
    let backlog = std::fs::read(p.join("backlog/log")).unwrap();
    let tmpfs = Tmpfs::new();
    let t = tmpfs.0.path();
    std::fs::write(t.join("log"), &big_log).unwrap();
    std::fs::write(t.join("output"), &backlog).unwrap();
    let mut files = vec![
        ("log".to_string(), Arc::new(big_log.clone()), true),
        ("output".to_string(), Arc::new(backlog.clone()), false),
        ("cold".to_string(), Arc::new(big_log.clone()), false),
    ];
    let small_bytes = Arc::new(small_log.clone());
    for name in &small {
        std::fs::write(t.join(name), &small_log).unwrap();
        files.push((name.clone(), small_bytes.clone(), true));
    }
    let floor_mnt = tempfile::Builder::new()
        .prefix("podfs-bench-text-floor-")
        .tempdir()
        .unwrap();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("floor".into()),
        fuser::MountOption::NoAtime,
    ];
    config.n_threads = Some(2);
    let floor = fuser::Session::new(TextFloor { files }, floor_mnt.path(), &config)
        .unwrap()
        .spawn()
        .unwrap();
    let f = floor_mnt.path();

    // 1. `cat log`, repeated, the text unchanged.
    for root in [t.join("log"), f.join("log"), p.join("big/log")] {
        read_all(&root, &mut buf);
    }
    rows.push(rounds(
        "cat log, 20 MB, repeated, unchanged",
        n,
        |_| {
            (
                timed(|| assert_eq!(read_all(&t.join("log"), &mut buf), big_log.len())),
                timed(|| {
                    read_all(&f.join("log"), &mut buf);
                }),
                timed(|| assert_eq!(read_all(&p.join("big/log"), &mut buf), big_log.len())),
            )
        },
        1.5,
    ));

    // 2. `cat log`, the first read after one more turn. tmpfs gets the same append; the
    // floor reads its bytes cold (what crosses FUSE when nothing is cached).
    let mut tlog = std::fs::OpenOptions::new()
        .append(true)
        .open(t.join("log"))
        .unwrap();
    rows.push(rounds(
        "cat log, 20 MB, first read after a turn",
        n,
        |i| {
            let before = std::fs::metadata(p.join("big/log")).unwrap().len();
            let mut input = std::fs::OpenOptions::new()
                .write(true)
                .open(p.join("big/input"))
                .unwrap();
            writeln!(input, "line {i}").unwrap();
            drop(input);
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::read_to_string(p.join("big/status")).unwrap() != "idle\n"
                || std::fs::metadata(p.join("big/log")).unwrap().len() <= before
            {
                assert!(Instant::now() < deadline, "the turn did not end");
                std::thread::sleep(Duration::from_millis(2));
            }
            let grown = std::fs::metadata(p.join("big/log")).unwrap().len() as usize;
            writeln!(tlog, "\necho: line {i}").unwrap();
            (
                timed(|| {
                    read_all(&t.join("log"), &mut buf);
                }),
                timed(|| {
                    read_all(&f.join("cold"), &mut buf);
                }),
                timed(|| assert_eq!(read_all(&p.join("big/log"), &mut buf), grown)),
            )
        },
        2.5,
    ));

    // 3. `grep -c` over 40 logs of 1 MB, repeated.
    let tf: Vec<PathBuf> = small.iter().map(|s| t.join(s)).collect();
    let ff: Vec<PathBuf> = small.iter().map(|s| f.join(s)).collect();
    let pf: Vec<PathBuf> = small.iter().map(|s| p.join(s).join("log")).collect();
    for set in [&tf, &ff, &pf] {
        grep_c(set);
    }
    rows.push(rounds(
        "grep -c over 40 logs of 1 MB, repeated",
        n,
        |_| (grep_c(&tf), grep_c(&ff), grep_c(&pf)),
        1.5,
    ));

    // 4. `cat output` of a 20 MB backlog: the cursor goes back to 0 before each read.
    rows.push(rounds(
        "cat output, 20 MB backlog, one open",
        n,
        |_| {
            std::fs::write(p.join("backlog/cursor"), "0\n").unwrap();
            // Settled: a read of `cursor` waits until the value written is applied.
            assert_eq!(
                std::fs::read_to_string(p.join("backlog/cursor")).unwrap(),
                "0\n"
            );
            (
                timed(|| {
                    read_all(&t.join("output"), &mut buf);
                }),
                timed(|| {
                    read_all(&f.join("output"), &mut buf);
                }),
                timed(|| assert_eq!(read_all(&p.join("backlog/output"), &mut buf), backlog.len())),
            )
        },
        2.5,
    ));
    drop(floor);
    drop(pod);
}
