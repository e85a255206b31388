//! What every section shares: staging a home and its floors (the same tree on tmpfs, and
//! the static FUSE floor of [`crate::floor`]), serving podfs over it, and measuring and
//! printing per-operation times as ratios against the floors of the same run.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use podfs::generation::INSOMNIA_5472 as GEN;
use podfs::scope::StoredRule;
use podfs::store::alloc::{AllocTable, Allocation};
use podfs::store::metadata::{Metadata, SpawnedChild};

pub use crate::floor::{Floor, FILES};

pub const PODFS: &str = env!("CARGO_BIN_EXE_podfs");

pub fn child_name(j: usize) -> String {
    format!("c{j:05}")
}

// ---------------------------------------------------------------------------------------
// Staging.

/// A home with `parents`, every child unreachable (no sockets), as the runtime leaves it:
/// each child has its own allocation, and each of its write rules is a deny layer of its
/// parent's allocation.
pub fn make_home(parents: &[(String, usize)]) -> tempfile::TempDir {
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
pub fn make_tree(root: &Path, parents: &[(String, usize)]) {
    let floor = Floor::new(parents.to_vec());
    for (parent, n) in parents {
        for j in 0..*n {
            let dir = root.join(parent).join(child_name(j));
            std::fs::create_dir_all(&dir).unwrap();
            for (k, f) in FILES.iter().enumerate() {
                std::fs::write(dir.join(f), floor.content(k)).unwrap();
            }
        }
    }
}

pub struct Server {
    pub child: Option<Child>,
    pub mnt: tempfile::TempDir,
}

impl Server {
    pub fn start(cmd: &mut Command) -> (Server, Duration) {
        Self::start_logging(cmd, Stdio::null())
    }

    pub fn start_logging(cmd: &mut Command, stderr: Stdio) -> (Server, Duration) {
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
    pub fn podfs(home: &Path) -> (Server, Duration) {
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
    pub fn podfs_logged(home: &Path, extra: &[&str], log: &Path) -> Server {
        let mut cmd = Command::new(PODFS);
        cmd.args(["--log-level", "info", "mount", "--home"])
            .arg(home)
            .args(extra);
        Self::start_logging(&mut cmd, Stdio::from(std::fs::File::create(log).unwrap())).0
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, and wait until the process has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    pub fn floor(parents: &[(String, usize)]) -> (Server, Duration) {
        let shape: Vec<String> = parents.iter().map(|(n, c)| format!("{n}:{c}")).collect();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["floor", &shape.join(",")]);
        Self::start(&mut cmd)
    }

    pub fn path(&self) -> &Path {
        self.mnt.path()
    }

    pub fn rss_kib(&self) -> (u64, u64) {
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

pub struct Tmpfs(pub tempfile::TempDir, bool);

impl Tmpfs {
    pub fn new() -> Tmpfs {
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
pub struct Timing {
    /// Median per root.
    pub median: Vec<Duration>,
    /// Median over rounds of podfs ÷ floor and podfs ÷ tmpfs.
    pub vs_floor: f64,
    pub vs_tmpfs: f64,
}

pub fn per_op(
    roots: &[&Path; 3],
    rounds: usize,
    iters: usize,
    op: impl Fn(&Path, usize),
) -> Timing {
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

pub fn read_file(path: &Path) {
    let mut buf = [0u8; 4096];
    let mut f = std::fs::File::open(path).unwrap();
    while f.read(&mut buf).unwrap() > 0 {}
}

pub fn ls_l(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::symlink_metadata(entry.path()).unwrap();
        n += 1;
    }
    n
}

pub fn fmt(d: Duration) -> String {
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

pub struct Row {
    pub op: String,
    pub tmpfs: Option<Duration>,
    pub floor: Duration,
    pub podfs: Duration,
    /// podfs ÷ floor and podfs ÷ tmpfs (paired by round where measured in rounds).
    pub ratios: (f64, Option<f64>),
    pub target: Option<(String, bool)>,
}

impl Row {
    pub fn timed(op: &str, t: &Timing, target: Option<(&str, f64)>) -> Row {
        Row {
            op: op.into(),
            tmpfs: Some(t.median[0]),
            floor: t.median[1],
            podfs: t.median[2],
            ratios: (t.vs_floor, Some(t.vs_tmpfs)),
            target: target.map(|(name, max)| (name.to_string(), t.vs_floor <= max)),
        }
    }

    pub fn single(
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

pub fn print_rows(rows: &[Row]) {
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
