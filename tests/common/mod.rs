//! Shared harness for the mount tests: staged homes of either runtime generation, a real
//! `podfs mount` process that is always unmounted (even when an assertion fails), reference
//! pods, and shell helpers that report exit statuses and errnos, never message text; and
//! the harness every test binary runs under ([`harness`]).
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[macro_use]
pub mod harness;

#[allow(unused_imports)]
pub use harness::{Need, NotRun, Suite, PRETEND_NO_FUSE};
#[allow(unused_imports)]
pub use podfs::generation::{Generation, INSOMNIA_5472 as INSOMNIA, YOI_WORKER_485918EB as YOI};

pub const BIN: &str = env!("CARGO_BIN_EXE_podfs");

pub type Gen = &'static Generation;

/// One test body run on both generations: `both!(name, body)` makes `name::insomnia` and
/// `name::yoi`, each calling `body(gen)`; `both_tests![name]` lists them for the harness.
/// They mount, so they need a usable /dev/fuse.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            pub fn insomnia() {
                $body(&INSOMNIA)
            }
            pub fn yoi() {
                $body(&YOI)
            }
        }
    };
}

/// Where proptest keeps the failing cases it finds: beside the test file, as
/// `tests/<file>.proptest-regressions`. Its default (`SourceParallel`) ends up there too,
/// but only after looking for a lib.rs or main.rs above the test file, and it says on
/// every run that it found none.
pub fn regressions_beside_the_test() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    Some(Box::new(
        proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
    ))
}

/// The folder of the golden fixtures of `gen`.
pub fn fixtures_root(gen: Gen) -> PathBuf {
    let dir = if gen.name_key == "worker_name" {
        "yoi-485918eb"
    } else {
        "insomnia-5472"
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
}

pub fn fixture_text(gen: Gen, rel: &str, home: &str) -> String {
    let path = fixtures_root(gen).join(rel);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("@HOME@", home)
}

/// A temporary runtime home.
pub struct Home {
    pub dir: tempfile::TempDir,
    pub gen: Gen,
}

impl Home {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn s(&self) -> String {
        self.path().display().to_string()
    }

    fn new_dir() -> tempfile::TempDir {
        tempdir_named("podfs-home-")
    }

    /// A state folder of `gen`'s golden fixtures with `@HOME@` replaced by this home.
    pub fn fixture(gen: Gen, state: &str) -> Home {
        let dir = Self::new_dir();
        let home = dir.path().display().to_string();
        copy_tree(&fixtures_root(gen).join(state), dir.path(), &home);
        Home { dir, gen }
    }

    /// A demo home: `parent` with `children`, files as the runtime writes them.
    pub fn demo(gen: Gen, children: &[&str]) -> Home {
        let dir = Self::new_dir();
        let names: Vec<String> = children.iter().map(|s| s.to_string()).collect();
        podfs::demo::home::create(dir.path(), gen, "parent", &names).unwrap();
        Home { dir, gen }
    }

    /// `pods/<pod>/metadata.json` or `workers/<pod>/metadata.json`, relative.
    pub fn meta(&self, pod: &str) -> String {
        format!("{}/{pod}/metadata.json", self.gen.store_dir)
    }

    /// `run/pods.json` or `run/workers.json`, relative.
    pub fn table(&self) -> String {
        format!("run/{}", self.gen.alloc_file)
    }

    /// `run/<pod>/spawned_pods.json` or `spawned_workers.json`, relative.
    pub fn mirror(&self, pod: &str) -> String {
        format!("run/{pod}/{}", self.gen.mirror_file)
    }

    /// The name key of this generation (`pod_name` or `worker_name`).
    pub fn key(&self) -> &'static str {
        self.gen.name_key
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn json(&self, rel: &str) -> serde_json::Value {
        serde_json::from_str(&self.read(rel)).unwrap()
    }

    pub fn write_json(&self, rel: &str, v: &serde_json::Value) {
        std::fs::write(self.path().join(rel), serde_json::to_vec_pretty(v).unwrap()).unwrap();
    }

    /// Names listed in a list of objects (`spawned_children`, `allocations`).
    pub fn names(&self, list: &serde_json::Value) -> Vec<String> {
        list.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c[self.key()].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Add a child entry to `parent`'s registry, as the runtime would list it.
    pub fn add_child(&self, parent: &str, name: &str, socket: &Path) {
        let rel = self.meta(parent);
        let mut v = self.json(&rel);
        let mut entry = serde_json::Map::new();
        entry.insert(self.key().into(), name.into());
        entry.insert("socket_path".into(), socket.display().to_string().into());
        entry.insert(
            "scope_delegated".into(),
            serde_json::json!([{"target": format!("{}/work/{name}", self.s()), "permission": "write", "recursive": true}]),
        );
        entry.insert("callback_address".into(), "".into());
        match v.get_mut("spawned_children").and_then(|l| l.as_array_mut()) {
            Some(list) => list.push(entry.into()),
            None => v["spawned_children"] = serde_json::json!([entry]),
        }
        self.write_json(&rel, &v);
    }
}

fn copy_tree(from: &Path, to: &Path, home: &str) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dst = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_tree(&entry.path(), &dst, home);
        } else {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            std::fs::write(&dst, text.replace("@HOME@", home)).unwrap();
        }
    }
}

/// The system's python3, for commands run as another user (a per-user install, such as
/// pyenv's shims under root's home, is not theirs to run).
pub fn system_python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A private temporary directory (mode 0700), in the temporary directory when this user
/// may write it, else in the cache directory (see `podfs::scratch`). Honours `TMPDIR`.
pub fn tempdir() -> tempfile::TempDir {
    tempdir_named("podfs-test-")
}

pub fn tempdir_named(prefix: &str) -> tempfile::TempDir {
    podfs::scratch::tempdir(prefix).expect("a writable temporary directory")
}

/// A temporary file in the same place as [`tempdir`].
pub fn temp_file() -> tempfile::NamedTempFile {
    let base = podfs::scratch::base().expect("a writable temporary directory");
    tempfile::NamedTempFile::new_in(base).unwrap()
}

/// A running `podfs mount`, unmounted and reaped on drop. The mount point lies in a
/// private directory of its own, so a test that opens it to other users changes nothing
/// outside its own temporary directories.
pub struct Mount {
    child: Option<Child>,
    /// The private directory holding the mount point and the log.
    pub base: tempfile::TempDir,
    mnt: PathBuf,
    log: PathBuf,
}

impl Mount {
    pub fn new(home: &Home) -> Mount {
        Self::with_args(home, &[])
    }

    /// Short bounds so failure paths stay fast in tests.
    pub fn quick(home: &Home, extra: &[&str]) -> Mount {
        let mut args = vec![
            "--stop-timeout-ms",
            "1500",
            "--confirm-timeout-ms",
            "1500",
            "--io-timeout-ms",
            "2000",
            "--status-timeout-ms",
            "500",
        ];
        args.extend_from_slice(extra);
        Self::with_args(home, &args)
    }

    pub fn with_args(home: &Home, extra: &[&str]) -> Mount {
        Self::started(home, Command::new(BIN), extra, &[])
    }

    /// podfs started by `command` (a wrapper such as `prlimit ... --` that execs it, so the
    /// pid is podfs's own), with `env` set.
    pub fn started(
        home: &Home,
        mut command: Command,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mount {
        let base = tempdir_named("podfs-mnt-");
        let mnt = base.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let log = base.path().join("mount.log");
        if command.get_program() != BIN {
            command.arg(BIN);
        }
        let child = command
            .args(["--log-level", "debug", "mount"])
            .arg(&mnt)
            .arg("--home")
            .arg(home.path())
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut mount = Mount {
            child: Some(child),
            base,
            mnt,
            log,
        };
        mount.wait_ready();
        mount
    }

    /// Until the mount is there and so is its cleanup guard (started right after the
    /// mount appears): a test that kills podfs must find the guard.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(self.path()) || self.guard_pid().is_none() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("podfs exited early ({status}):\n{}", self.log());
            }
            if is_mounted(self.path()) && self.log().contains("no cleanup guard") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mount (and its guard) not ready:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    pub fn s(&self) -> String {
        self.path().display().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The numbers of the mount's report line (`kill -USR1`): inodes, handles, watches,
    /// text_bytes, connects, snapshots, threads, ...
    pub fn report(&self) -> std::collections::BTreeMap<String, u64> {
        let count = |log: &str| log.matches(" report ").count();
        let before = count(&self.log());
        signal(self.pid(), nix::sys::signal::Signal::SIGUSR1);
        wait_for(Duration::from_secs(10), || count(&self.log()) > before);
        let log = self.log();
        let line = log.lines().rev().find(|l| l.contains(" report ")).unwrap();
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of this mount's cleanup guard (a child process running `podfs guard`).
    pub fn guard_pid(&self) -> Option<u32> {
        let me = self.pid();
        processes()
            .into_iter()
            .find(|p| p.ppid == me && p.has_arg("guard"))
            .map(|p| p.pid)
    }

    /// SIGKILL without unmounting (leaves a stale mount for the drop guard to clear).
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("already stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(self.path())
    }

    /// The FUSE connection of this mount (its number under /sys/fs/fuse/connections).
    pub fn connection(&self) -> u32 {
        let (id, _) = podfs::mountinfo::top_mount(self.path()).expect("mounted");
        podfs::mountinfo::fuse_connection(id).expect("a FUSE mount")
    }
}

/// Abort FUSE connection `conn` through the control filesystem (mounted for the purpose
/// when it is not, as root): what ends a deadlock a failing test would otherwise leave
/// behind for good.
pub fn abort_fuse_connection(conn: u32) {
    let dir = Path::new("/sys/fs/fuse/connections");
    let mounted = podfs::mountinfo::mount_type(dir).is_some_and(|t| t == "fusectl");
    if !mounted {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(dir)
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::write(dir.join(conn.to_string()).join("abort"), b"1");
    if !mounted {
        let _ = Command::new("umount")
            .arg(dir)
            .stderr(Stdio::null())
            .status();
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let target = path.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(target.as_str()))
}

/// Unmounts (lazily) whatever is still mounted at a path when dropped, so that a test
/// leaves no mount behind even when it fails.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

pub fn force_unmount(path: &Path) {
    for _ in 0..3 {
        if !is_mounted(path) {
            return;
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(path)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z", "-q"])
            .arg(path)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            if thread::panicking() {
                eprintln!("podfs exited with {status}; its log:\n{}", self.log());
            }
        }
        force_unmount(self.path());
    }
}

/// The peak resident size of process `pid` so far, in MiB (`VmHWM`).
pub fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib / 1024
}

/// A child played by the test: a Unix socket under `run/<name>/` whose connections are
/// served by `behave` (each on a thread of its own), listed under `parent`. Stops
/// accepting when dropped.
pub struct FakeChild {
    pub sock: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeChild {
    pub fn serve(
        home: &Home,
        name: &str,
        behave: impl Fn(std::os::unix::net::UnixStream) + Send + Sync + 'static,
    ) -> FakeChild {
        use std::sync::atomic::{AtomicBool, Ordering};
        let sock = home.path().join("run").join(name).join("sock");
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let behave = std::sync::Arc::new(behave);
        {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let behave = behave.clone();
                            thread::spawn(move || behave(s));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        home.add_child("parent", name, &sock);
        FakeChild { sock, stop }
    }
}

impl Drop for FakeChild {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A Snapshot line: an idle child with these assistant texts, one entry each.
pub fn snapshot_line(texts: &[&str]) -> Vec<u8> {
    let entries: Vec<serde_json::Value> = texts
        .iter()
        .map(|t| serde_json::json!({"kind": "assistant_item", "ts": 1, "item": {"kind": "message", "role": "assistant", "content": [{"kind": "text", "text": t}]}}))
        .collect();
    let mut line = serde_json::to_vec(
        &serde_json::json!({"event": "snapshot", "data": {"entries": entries, "status": "idle"}}),
    )
    .unwrap();
    line.push(b'\n');
    line
}

/// `cmd` with SIGINT and SIGQUIT at their defaults, the way a terminal's foreground job
/// has them: a test that sends Ctrl-C must not depend on how the suite was started (a
/// shell starts background jobs with both ignored, and an ignored signal stays ignored
/// across `exec`).
pub fn like_a_foreground_job(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only `signal(2)`, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        })
    }
}

/// Wait until process `pid` waits for a FUSE answer inside one of the system calls `calls`
/// (as `/proc/<pid>/syscall` and `wchan` report; where the kernel hides `wchan`, the system
/// call alone), not for being scheduled.
pub fn wait_in_syscall(pid: u32, calls: &[libc::c_long]) {
    wait_for(Duration::from_secs(20), || {
        let in_call = std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .ok()
            .and_then(|s| s.split(' ').next()?.parse::<libc::c_long>().ok())
            .is_some_and(|nr| calls.contains(&nr));
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let in_fuse = wchan.contains("fuse")
            || wchan.contains("request")
            || wchan.trim() == "0"
            || wchan.is_empty();
        in_call && in_fuse
    });
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Run a bash command line; returns (exit code, stdout, stderr). The shell's `TMPDIR` is
/// the suite's scratch place, so a snippet's `mktemp` works where `/tmp` is not writable.
pub fn sh(cmd: &str) -> (i32, String, String) {
    let out: Output = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .env(
            "TMPDIR",
            podfs::scratch::base().expect("a writable temporary directory"),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a command line that must succeed; returns stdout.
pub fn ok(cmd: &str) -> String {
    let (code, out, err) = sh(cmd);
    assert_eq!(code, 0, "`{cmd}` failed: {err}");
    out
}

/// Run a command line that must fail; returns its exit status.
pub fn fails(cmd: &str) -> i32 {
    let (code, out, _) = sh(cmd);
    assert_ne!(code, 0, "`{cmd}` should fail but printed {out:?}");
    code
}

/// The errno name of an operation (or "OK"), performed by python3 so the exact error is
/// visible; `code` may span several statements separated by `;`.
pub fn py_errno(code: &str) -> String {
    let script = format!(
        "import errno, os, sys\ntry:\n    {code}\n    print('OK')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Reference pods for a demo home, stopped on drop.
pub fn demo_pods(home: &Home, children: &[&str]) -> podfs::demo::Pods {
    let names: Vec<String> = children.iter().map(|s| s.to_string()).collect();
    podfs::demo::Pods::start(Path::new(BIN), home.path(), home.gen, "parent", &names).unwrap()
}

/// One extra reference pod process with explicit arguments (for odd behaviours).
pub struct PodProcess(pub Child);

impl PodProcess {
    /// `podfs pod` for `home`'s generation, before any `--name`.
    pub fn command(home: &Home) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--log-level",
            "warn",
            "pod",
            "--generation",
            home.gen.id,
            "--home",
        ])
        .arg(home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        cmd
    }

    pub fn start(home: &Home, name: &str, extra: &[&str]) -> PodProcess {
        let child = Self::command(home)
            .args(["--name", name])
            .args(extra)
            .spawn()
            .unwrap();
        let sock = home.path().join("run").join(name).join("sock");
        wait_for(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        PodProcess(child)
    }

    /// `--callback` of a child of `parent`.
    pub fn callback(home: &Home, parent: &str) -> String {
        home.path()
            .join("run")
            .join(parent)
            .join("sock")
            .display()
            .to_string()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `cond` until true or panic after `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `cond` becomes true within `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until `child`'s status reads `idle` (its first task, or a run, has finished).
pub fn settle(m: &Mount, child: &str) {
    let status = format!("{}/parent/{child}/status", m.s());
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {status}")).1 == "idle\n"
    });
}

/// The device number of a path (to tell a mount point from the directory under it).
pub fn dev_of(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().dev()
}

/// Write `text` to `child`'s input and wait until the child has answered it (its reply is
/// in `log`): the message is sent when the last descriptor closes, after the shell's
/// redirection has returned.
pub fn run_turn(m: &Mount, child: &str, text: &str) {
    let c = format!("{}/parent/{child}", m.s());
    let before = sh(&format!("cat {c}/log")).1;
    ok(&format!("printf '%s\\n' '{text}' > {c}/input"));
    let reply = format!("echo: {text}\n");
    wait_for(Duration::from_secs(10), || {
        let log = sh(&format!("cat {c}/log")).1;
        log.len() > before.len() && log.ends_with(&reply)
    });
    settle(m, child);
}

/// The cursor grammar, restated independently of the implementation: digits with at most
/// one trailing newline, fitting a u64. `None` is refused, `Some(None)` changes nothing
/// (nothing was written), `Some(Some(v))` sets `v`.
pub fn cursor_grammar(data: &[u8]) -> Option<Option<u64>> {
    if data.is_empty() {
        return Some(None);
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    if body.is_empty() || !body.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(body).ok()?.parse().ok().map(Some)
}

/// A process as /proc shows it.
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// The one-letter state (`S`, `R`, `Z`, `T`, ...).
    pub state: String,
    pub uid: u32,
    pub args: Vec<String>,
}

impl Proc {
    pub fn has_arg(&self, arg: &str) -> bool {
        self.args.iter().any(|a| a == arg)
    }
}

/// Every process this test can see.
pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(stat), Ok(meta)) = (
            std::fs::read_to_string(entry.path().join("stat")),
            std::fs::metadata(entry.path()),
        ) else {
            continue;
        };
        // pid (comm) state ppid ...: the command name may hold spaces and parentheses.
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        out.push(Proc {
            pid,
            ppid: fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0),
            state: fields.first().unwrap_or(&"").to_string(),
            uid: meta.uid(),
            args: cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        });
    }
    out
}

/// Another client (the parent's LLM, another mount) starts a run straight on the socket.
pub const OTHER_CLIENT: &str = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile('rwb')
while json.loads(f.readline())['event'] != 'snapshot':
    pass
f.write(json.dumps({'method': 'run', 'params': {'input': [{'kind': 'text', 'content': 'other'}]}}).encode() + b'\n')
f.flush()
while json.loads(f.readline())['event'] != 'user_message':
    pass
"#;

/// [`OTHER_CLIENT`] as a script in `home`, to run as `python3 <script> <socket>`.
pub fn other_client(home: &Home) -> PathBuf {
    let path = home.path().join("other_client.py");
    std::fs::write(&path, OTHER_CLIENT).unwrap();
    path
}
