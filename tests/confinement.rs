//! A confined home, through a real mount: podfs reaches only what lies in the home's own
//! data and runtime dirs, opened once at start; a socket it may not reach is an error of
//! its own (`EACCES`, `ELOOP`), never a child that is gone; only a refused connection, with
//! no live process behind it, proves a pod gone; a file too large to read is one parent's
//! `EFBIG`; and a mount point may not lie in or over the home.
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    let root = |what: &str| fuse.and(Need::root(what));
    Suite::new()
        .add(
            &root("serving a runtime dir as other users (uids 61001, 61002)"),
            tests![
                a_home_whose_run_is_a_symlink_to_another_users_runtime_dir_reaches_nothing_of_it
            ],
        )
        .add(
            &fuse,
            both_tests![
                a_parent_that_accepts_is_present_even_with_a_pid_file_older_than_its_process,
                the_desktop_layout_serves_sockets_in_the_xdg_runtime_dir,
                a_runtime_dir_the_home_does_not_have_is_refused_never_taken_for_gone,
            ],
        )
        .add(
            &root("starting podfs in a pid namespace of its own (unshare --pid)"),
            tests![a_parent_that_accepts_is_present_when_podfs_runs_in_a_pid_namespace_of_its_own],
        )
        .add(
            &fuse,
            tests![
                a_registry_file_larger_than_podfs_reads_is_that_parents_error_alone,
                a_home_spelled_differently_from_its_recorded_sockets_still_knows_them,
                a_mount_point_in_or_over_the_home_is_refused,
                a_child_whose_listener_died_while_its_process_lives_is_not_reclaimed,
            ],
        )
        .add(
            &root("a mount namespace without /proc (unshare --mount)"),
            tests![without_proc_podfs_connects_to_nothing],
        )
        .run()
}

// ---------------------------------------------------------------------------------------
// Helpers

/// A process of the test's, killed and reaped when dropped (also when the test fails).
struct Reaped(Child);

impl Reaped {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything below `root`, not following symlinks: each regular file with its content,
/// each directory, symlink (with its target) and socket by kind. Two equal trees mean
/// nothing was created, removed or rewritten.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                walk(root, &path, out);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).unwrap_or_default();
                let mut v = b"<symlink> ".to_vec();
                v.extend_from_slice(target.as_os_str().as_encoded_bytes());
                out.insert(rel, v);
            } else if kind.is_socket() {
                out.insert(rel, b"<socket>".to_vec());
            } else {
                out.insert(rel, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `lchown -R`: `path` and everything below it to `uid`, symlinks themselves, never their
/// targets.
fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            chown_tree(&entry.path(), uid);
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A socket that accepts connections and never says a word (a parent busy or stuck),
/// holding them until dropped.
struct Silent {
    stop: Arc<AtomicBool>,
}

impl Silent {
    fn at(sock: &Path) -> Silent {
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(sock);
        let listener = UnixListener::bind(sock).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Silent { stop }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The names a parent's `spawned_children` lists.
fn spawned(home: &Home, parent: &str) -> Vec<String> {
    let meta = home.json(&home.meta(parent));
    home.names(&meta["spawned_children"])
}

fn reclaimed(home: &Home, parent: &str) -> Vec<String> {
    let meta = home.json(&home.meta(parent));
    home.names(&meta["reclaimed_children"])
}

/// The runtime dir a desktop's runtime of `gen` uses: `$XDG_RUNTIME_DIR/<sub>`.
fn xdg_sub(gen: Gen) -> &'static str {
    match gen.runtime_default {
        podfs::generation::Default::Xdg { sub, .. } => sub,
        podfs::generation::Default::Home(_) => panic!("{} has no XDG runtime dir", gen.id),
    }
}

/// Whether a line of `log` contains every one of `words`.
fn a_line_with(log: &str, words: &[&str]) -> bool {
    log.lines().any(|l| words.iter().all(|w| l.contains(w)))
}

// ---------------------------------------------------------------------------------------
// 1. A home whose `run` leads into another user's runtime dir reaches nothing there.

const ALICE: u32 = 61001;
const BOB: u32 = 61002;

/// A server that answers every connection with an idle Snapshot and records, in a file,
/// each connection (`connected`) and every line it receives.
const RECORDING_SERVER: &str = r#"
import socket, sys, threading
path, record = sys.argv[1], sys.argv[2]
def note(b):
    with open(record, 'ab') as r:
        r.write(b)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(8)
def serve(c):
    try:
        c.sendall(b'{"event":"snapshot","data":{"entries":[],"status":"idle"}}\n')
        for line in c.makefile('rb'):
            note(line)
    except OSError:
        pass
while True:
    c, _ = s.accept()
    note(b'connected\n')
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Alice (uid 61001) owns a home whose `run` is her symlink to Bob's (uid 61002) runtime
/// dir, where Bob's live child1 listens. podfs, mounted by root for all users, answers
/// `ELOOP` for alice's child1 (its runtime dir is reached without following a symlink),
/// its `rm -r` fails with `ELOOP`, Bob's server never sees a connection (so no
/// `shutdown`), nothing is created in Bob's dir and alice's registry is unchanged. With
/// `run` leading to a directory that does not exist, `rm -r` creates nothing there.
fn a_home_whose_run_is_a_symlink_to_another_users_runtime_dir_reaches_nothing_of_it() {
    // Bob's runtime dir, reachable by Bob: its parent must be traversable.
    let outer = tempdir();
    chmod(outer.path(), 0o755);
    let bob = outer.path().join("bob");
    std::fs::create_dir_all(bob.join("child1")).unwrap();
    let records = outer.path().join("records");
    std::fs::create_dir(&records).unwrap();
    chown_tree(&bob, BOB);
    chown_tree(&records, BOB);
    chmod(&bob, 0o700);
    let sock = bob.join("child1/sock");
    let record = records.join("received");
    let server = Reaped(
        Command::new("setpriv")
            .args([
                &format!("--reuid={BOB}"),
                &format!("--regid={BOB}"),
                "--clear-groups",
                "--",
                system_python(),
                "-c",
                RECORDING_SERVER,
            ])
            .arg(&sock)
            .arg(&record)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(10), || sock.exists());
    let received = || std::fs::read_to_string(&record).unwrap_or_default();
    // The server works: a connection of the test's own is answered and recorded.
    {
        let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.contains("snapshot"), "{line:?}");
        wait_for(Duration::from_secs(10), || received() == "connected\n");
        std::fs::remove_file(&record).unwrap();
    }
    let bob_before = tree(&bob);

    let home = Home::fixture(&INSOMNIA, "live");
    std::fs::remove_dir_all(home.path().join("run")).unwrap();
    std::os::unix::fs::symlink(&bob, home.path().join("run")).unwrap();
    chown_tree(home.path(), ALICE);
    let meta = home.meta("parent");
    let meta_before = home.read(&meta);
    let m = Mount::quick(&home, &["--allow-other"]);
    let c = format!("{}/parent/child1", m.s());
    assert_eq!(py_errno(&format!("open('{c}/status').read()")), "ELOOP");
    assert_eq!(py_errno(&format!("os.rmdir('{c}')")), "ELOOP");
    fails(&format!("rm -r {c}"));
    assert_eq!(
        received(),
        "",
        "podfs connected to Bob's socket (a shutdown sent there would stop Bob's child)"
    );
    assert_eq!(tree(&bob), bob_before, "podfs changed Bob's runtime dir");
    assert!(!bob.join("pods.json").exists());
    assert_eq!(home.read(&meta), meta_before, "alice's registry changed");
    assert!(ok(&format!("ls {}/parent", m.s())).contains("child1"));
    drop(m);
    drop(server);

    // `run` leads to a directory that does not exist: nothing is made there.
    let home = Home::fixture(&INSOMNIA, "live");
    let elsewhere = tempdir();
    let missing = elsewhere.path().join("some/dir");
    std::fs::remove_dir_all(home.path().join("run")).unwrap();
    std::os::unix::fs::symlink(&missing, home.path().join("run")).unwrap();
    chown_tree(home.path(), ALICE);
    let meta_before = home.read(&meta);
    let m = Mount::quick(&home, &["--allow-other"]);
    let c = format!("{}/parent/child1", m.s());
    assert_eq!(py_errno(&format!("os.rmdir('{c}')")), "ELOOP");
    fails(&format!("rm -r {c}"));
    assert_eq!(
        tree(elsewhere.path()),
        BTreeMap::new(),
        "rm -r created something through the symlink"
    );
    assert_eq!(home.read(&meta), meta_before);
}

// ---------------------------------------------------------------------------------------
// 2, 3. A parent that accepts connections is present, whatever its pid file says.

/// Accepts and never answers, its pid file naming a live process (this test's own) but
/// written, by its mtime, an hour before that process started: the pid looks reused. An
/// accepted connection outweighs it: `rmdir` of a child is `EBUSY` and no file of the home
/// changed.
fn pid_file_older_than_its_process(gen: Gen) {
    let home = Home::fixture(gen, "live");
    let _parent = Silent::at(&home.path().join("run/parent/sock"));
    let pid_file = home.path().join("run/parent/pid");
    std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
    ok(&format!("touch -d '1 hour ago' {}", pid_file.display()));
    let before = tree(home.path());
    let m = Mount::quick(&home, &[]);
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/child1')", m.s())),
        "EBUSY"
    );
    assert_eq!(
        tree(home.path()),
        before,
        "the files of a parent that accepts connections were edited"
    );
    assert!(ok(&format!("ls {}/parent", m.s())).contains("child1"));
}
both!(
    a_parent_that_accepts_is_present_even_with_a_pid_file_older_than_its_process,
    pid_file_older_than_its_process
);

/// A podfs started by `unshare --pid --fork` (so not podfs's own pid: the test finds podfs
/// as unshare's child), stopped and unmounted when dropped.
struct Namespaced {
    unshare: Option<Child>,
    base: tempfile::TempDir,
    mnt: PathBuf,
}

impl Namespaced {
    fn start(home: &Home, extra: &[&str]) -> Namespaced {
        let base = tempdir_named("podfs-mnt-");
        let mnt = base.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let log = std::fs::File::create(base.path().join("mount.log")).unwrap();
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child=SIGTERM", BIN])
            .args(["--log-level", "debug", "mount"])
            .arg(&mnt)
            .arg("--home")
            .arg(home.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut ns = Namespaced {
            unshare: Some(unshare),
            base,
            mnt,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(&ns.mnt) {
            if let Some(status) = ns.unshare.as_mut().unwrap().try_wait().unwrap() {
                panic!("unshare/podfs exited early ({status}):\n{}", ns.log());
            }
            assert!(Instant::now() < deadline, "not mounted:\n{}", ns.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        ns
    }

    fn s(&self) -> String {
        self.mnt.display().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.base.path().join("mount.log")).unwrap_or_default()
    }

    /// podfs: the child of unshare.
    fn podfs(&self) -> Option<u32> {
        let unshare = self.unshare.as_ref()?.id();
        processes()
            .into_iter()
            .find(|p| p.ppid == unshare)
            .map(|p| p.pid)
    }
}

impl Drop for Namespaced {
    fn drop(&mut self) {
        if let Some(pid) = self.podfs() {
            signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if let Some(mut unshare) = self.unshare.take() {
            let ended = eventually(Duration::from_secs(10), || {
                unshare.try_wait().ok().flatten().is_some()
            });
            if !ended {
                if let Some(pid) = self.podfs() {
                    signal(pid, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = unshare.kill();
            }
            let _ = unshare.wait();
        }
        if std::thread::panicking() {
            eprintln!("podfs's log:\n{}", self.log());
        }
        force_unmount(&self.mnt);
    }
}

/// The same silent parent, its pid file naming a live process (this test's) and written
/// now, with podfs in a pid namespace of its own, where that pid names nobody. The
/// accepted connection decides: `rmdir` is `EBUSY` and no file of the home changed.
fn a_parent_that_accepts_is_present_when_podfs_runs_in_a_pid_namespace_of_its_own() {
    let home = Home::fixture(&INSOMNIA, "live");
    let _parent = Silent::at(&home.path().join("run/parent/sock"));
    std::fs::write(
        home.path().join("run/parent/pid"),
        std::process::id().to_string(),
    )
    .unwrap();
    let before = tree(home.path());
    let m = Namespaced::start(
        &home,
        &[
            "--stop-timeout-ms",
            "1500",
            "--confirm-timeout-ms",
            "1500",
            "--io-timeout-ms",
            "2000",
            "--status-timeout-ms",
            "500",
        ],
    );
    assert!(m.podfs().is_some(), "podfs runs under unshare");
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/child1')", m.s())),
        "EBUSY"
    );
    assert_eq!(
        tree(home.path()),
        before,
        "the files of a parent that accepts connections were edited"
    );
    assert!(ok(&format!("ls {}/parent", m.s())).contains("child1"));
}

// ---------------------------------------------------------------------------------------
// 4, 5. The desktop layout: data in H, runtime dir in $XDG_RUNTIME_DIR/<runtime>.

/// A home laid out as on a desktop: data in `home` (H), runtime files in
/// `<xdg>/insomnia` or `<xdg>/yoi` (R), with live reference pods: `parent` and its
/// children, each started with `--runtime-dir R`.
struct Desktop {
    home: Home,
    xdg: tempfile::TempDir,
    runtime: PathBuf,
    /// podfs's `HOME`, so that no default of the runtime leads into the real one.
    user_home: tempfile::TempDir,
    pods: Vec<(String, Reaped)>,
}

impl Desktop {
    fn new(gen: Gen, children: &[&str]) -> Desktop {
        let home = Home {
            dir: tempdir_named("podfs-home-"),
            gen,
        };
        let xdg = tempdir();
        let runtime = xdg.path().join(xdg_sub(gen));
        let paths = podfs::paths::Paths {
            data: home.path().to_path_buf(),
            runtime: runtime.clone(),
            config: home.path().join("config"),
            generation: gen,
        };
        let names: Vec<String> = children.iter().map(|s| s.to_string()).collect();
        podfs::demo::home::create_in(&paths, "parent", &names).unwrap();
        let mut d = Desktop {
            home,
            xdg,
            runtime,
            user_home: tempdir(),
            pods: Vec::new(),
        };
        d.start("parent", &[]);
        let callback = d.sock("parent").display().to_string();
        for child in children {
            d.start(child, &["--callback", &callback, "--turn-ms", "50"]);
        }
        d
    }

    fn sock(&self, pod: &str) -> PathBuf {
        self.runtime.join(pod).join("sock")
    }

    fn start(&mut self, name: &str, extra: &[&str]) {
        let child = PodProcess::command(&self.home)
            .arg("--runtime-dir")
            .arg(&self.runtime)
            .args(["--name", name])
            .args(extra)
            .spawn()
            .unwrap();
        let pod = Reaped(child);
        let sock = self.sock(name);
        wait_for(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        self.pods.push((name.to_string(), pod));
    }

    fn pod(&mut self, name: &str) -> &mut Child {
        &mut self.pods.iter_mut().find(|(n, _)| n == name).unwrap().1 .0
    }

    /// podfs's environment: a desktop session's.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("XDG_RUNTIME_DIR", self.xdg.path().display().to_string()),
            ("HOME", self.user_home.path().display().to_string()),
        ]
    }

    fn mount(&self, extra: &[&str]) -> Mount {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Mount::started(&self.home, Command::new(BIN), extra, &env)
    }
}

/// Data in H, runtime dir `$XDG_RUNTIME_DIR/insomnia` (or `/yoi`), podfs given only
/// `--home H` as users do, with `XDG_RUNTIME_DIR` set: the children's sockets in the XDG
/// dir are the home's. A child's `status` is `idle`, a message is delivered (its echo is
/// in `log`), `rm -r` stops the child and goes through the live parent (which no longer
/// lists it), and the log names R as a runtime dir.
fn desktop_layout(gen: Gen) {
    let mut d = Desktop::new(gen, &["child1", "child2"]);
    let m = d.mount(&["--stop-timeout-ms", "5000", "--confirm-timeout-ms", "5000"]);
    let c = format!("{}/parent/child1", m.s());
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c}/status")).1 == "idle\n"
    });
    ok(&format!("echo hi > {c}/input"));
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c}/log")).1.contains("echo: hi\n")
    });
    settle(&m, "child1");
    ok(&format!("rm -r {c}"));
    assert!(!spawned(&d.home, "parent").contains(&"child1".to_string()));
    assert!(
        reclaimed(&d.home, "parent").contains(&"child1".to_string()),
        "the live parent did not record the reclaim"
    );
    let child = d.pod("child1");
    wait_for(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child2\n");
    let r = d.runtime.canonicalize().unwrap().display().to_string();
    assert!(
        a_line_with(&m.log(), &["runtime dir", &r]),
        "the log does not name {r} as a runtime dir:\n{}",
        m.log()
    );
}
both!(
    the_desktop_layout_serves_sockets_in_the_xdg_runtime_dir,
    desktop_layout
);

/// The same desktop layout, mounted with `--runtime-dir H/run`: the XDG dir is then not
/// the home's. Its children's `status`, `log` and `output` answer `EACCES` (never
/// `unreachable`, never gone), `rm -r` of one fails with `EACCES`, the child keeps running
/// and no file changed; the log says to mount with `--runtime-dir R`.
fn a_foreign_runtime_dir(gen: Gen) {
    let mut d = Desktop::new(gen, &["child1"]);
    let run = d.home.path().join("run").display().to_string();
    let data_before = tree(d.home.path());
    let runtime_before = tree(&d.runtime);
    let m = d.mount(&["--runtime-dir", &run, "--stop-timeout-ms", "1500"]);
    let c = format!("{}/parent/child1", m.s());
    for file in ["status", "log", "output"] {
        assert_eq!(
            py_errno(&format!("open('{c}/{file}').read()")),
            "EACCES",
            "{file}"
        );
    }
    assert_eq!(py_errno(&format!("os.rmdir('{c}')")), "EACCES");
    fails(&format!("rm -r {c}"));
    assert!(
        d.pod("child1").try_wait().unwrap().is_none(),
        "the child was stopped"
    );
    assert!(std::os::unix::net::UnixStream::connect(d.sock("child1")).is_ok());
    assert_eq!(tree(d.home.path()), data_before, "the data dir changed");
    assert_eq!(tree(&d.runtime), runtime_before, "the runtime dir changed");
    let r = d.runtime.display().to_string();
    assert!(
        a_line_with(&m.log(), &["--runtime-dir", &r]),
        "no line of the log says to mount with --runtime-dir {r}:\n{}",
        m.log()
    );
}
both!(
    a_runtime_dir_the_home_does_not_have_is_refused_never_taken_for_gone,
    a_foreign_runtime_dir
);

// ---------------------------------------------------------------------------------------
// 6. A file larger than podfs reads is the error of its parent alone.

/// A second parent, `second`, with children `kid1` and `kid2` (offline, as the
/// fixture's parent).
fn add_second_parent(home: &Home) {
    let h = home.s();
    let kid = |name: &str| {
        json!({
            "pod_name": name,
            "socket_path": format!("{h}/run/{name}/sock"),
            "scope_delegated": [
                {"target": format!("{h}/work/{name}"), "permission": "write", "recursive": true}
            ],
            "callback_address": format!("{h}/run/second/sock"),
        })
    };
    let mut meta = home.json(&home.meta("parent"));
    meta["pod_name"] = "second".into();
    meta["spawned_children"] = json!([kid("kid1"), kid("kid2")]);
    std::fs::create_dir_all(home.path().join("pods/second")).unwrap();
    home.write_json(&home.meta("second"), &meta);
}

/// `parent`'s `metadata.json` is a sparse terabyte; podfs runs with a 64 MiB budget.
/// The root still lists, `ls` of that parent answers `EFBIG`, the other parent's children
/// are listed and readable, and after 20 listings podfs's peak RSS is under the budget
/// plus 64 MiB and it is still mounted. Then, with `second` offline, the allocation table
/// is a sparse GiB: `rm -r` of its child fails (`EFBIG`, or `EIO`), `second`'s registry is
/// unchanged, and the RSS bound holds.
fn a_registry_file_larger_than_podfs_reads_is_that_parents_error_alone() {
    const BUDGET_MIB: u64 = 64;
    const SLACK_MIB: u64 = 64;
    let home = Home::fixture(&INSOMNIA, "live");
    add_second_parent(&home);
    let big = home.path().join(home.meta("parent"));
    ok(&format!("truncate -s 1T {}", big.display()));
    let budget = BUDGET_MIB.to_string();
    let m = Mount::quick(&home, &["--memory-budget-mib", &budget]);
    let mnt = m.s();
    assert_eq!(py_errno(&format!("os.listdir('{mnt}')")), "OK");
    assert!(ok(&format!("ls {mnt}")).contains("second"));
    assert_eq!(py_errno(&format!("os.listdir('{mnt}/parent')")), "EFBIG");
    assert_eq!(ok(&format!("ls {mnt}/second")), "kid1\nkid2\n");
    assert_eq!(
        ok(&format!("cat {mnt}/second/kid1/scope")),
        format!("write recursive {}/work/kid1\n", home.s())
    );
    for _ in 0..20 {
        ok(&format!("ls {mnt} > /dev/null"));
        fails(&format!("ls {mnt}/parent"));
    }
    let peak = peak_rss_mib(m.pid());
    eprintln!("a sparse 1 TiB metadata.json: podfs peak RSS {peak} MiB");
    assert!(
        peak < BUDGET_MIB + SLACK_MIB,
        "peak RSS {peak} MiB with a {BUDGET_MIB} MiB budget"
    );
    assert!(m.is_mounted());

    let table = home.path().join(home.table());
    ok(&format!("truncate -s 1G {}", table.display()));
    let meta_before = home.read(&home.meta("second"));
    let errno = py_errno(&format!("os.rmdir('{mnt}/second/kid1')"));
    assert!(errno == "EFBIG" || errno == "EIO", "{errno}");
    assert_eq!(home.read(&home.meta("second")), meta_before);
    assert_eq!(std::fs::metadata(&table).unwrap().len(), 1 << 30);
    let peak = peak_rss_mib(m.pid());
    eprintln!("and a sparse 1 GiB allocation table: podfs peak RSS {peak} MiB");
    assert!(peak < BUDGET_MIB + SLACK_MIB, "peak RSS {peak} MiB");
    assert!(m.is_mounted());
    assert_eq!(ok(&format!("ls {mnt}/second")), "kid1\nkid2\n");
}

// ---------------------------------------------------------------------------------------
// 7. A home known by another spelling than its sockets were recorded by.

/// podfs started through bash, which replaces the value of `--home` with `spelling` and
/// execs podfs (so the pid is podfs's own) from `cwd`.
fn mount_spelled(home: &Home, spelling: &Path, cwd: &Path, env: &[(&str, &str)]) -> Mount {
    let mut wrapper = Command::new("bash");
    wrapper
        .args([
            "-c",
            r#"spelling=$1; shift; args=()
while [ $# -gt 0 ]; do
    if [ "$1" = --home ]; then args+=(--home "$spelling"); shift 2
    else args+=("$1"); shift; fi
done
exec "${args[@]}""#,
            "wrapper",
        ])
        .arg(spelling)
        .current_dir(cwd);
    Mount::started(home, wrapper, &[], env)
}

/// Through a home spelled otherwise than the registry records its sockets, a child's
/// `status` is `idle` and `echo hi > input` is delivered, and nothing in the log calls the
/// recorded dir "not a runtime dir": (a) `--home` relative to podfs's working directory,
/// (b) `--home` a symlink to the home the registry records by its real path, (c) the
/// registry recording the symlink's spelling and podfs given the real path.
fn a_home_spelled_differently_from_its_recorded_sockets_still_knows_them() {
    let scratch = tempdir();
    let env_home = scratch.path().display().to_string();
    let env = [
        ("HOME", env_home.as_str()),
        ("XDG_RUNTIME_DIR", env_home.as_str()),
    ];
    let check = |m: &Mount, case: &str| {
        let c = format!("{}/parent/child1", m.s());
        wait_for(Duration::from_secs(10), || {
            sh(&format!("cat {c}/status")).1 == "idle\n"
        });
        ok(&format!("echo hi > {c}/input"));
        wait_for(Duration::from_secs(10), || {
            sh(&format!("cat {c}/log")).1.contains("echo: hi\n")
        });
        assert!(
            !m.log().contains("not a runtime dir"),
            "{case}: the log says a recorded dir is not a runtime dir:\n{}",
            m.log()
        );
    };

    // (a) relative, and (b) through a symlink, to a home recorded by its real path.
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let pods = demo_pods(&home, &["child1"]);
    let relative = Path::new(home.path().file_name().unwrap());
    let m = mount_spelled(&home, relative, home.path().parent().unwrap(), &env);
    check(&m, "relative --home");
    drop(m);
    let link = scratch.path().join("link");
    std::os::unix::fs::symlink(home.path(), &link).unwrap();
    let m = mount_spelled(&home, &link, scratch.path(), &env);
    check(&m, "--home through a symlink");
    drop(m);
    drop(pods);

    // (c) recorded through the symlink, podfs given the real path.
    let home = Home {
        dir: tempdir_named("podfs-home-"),
        gen: &INSOMNIA,
    };
    let link = scratch.path().join("link2");
    std::os::unix::fs::symlink(home.path(), &link).unwrap();
    let names = vec!["child1".to_string()];
    podfs::demo::home::create(&link, &INSOMNIA, "parent", &names).unwrap();
    let _pods =
        podfs::demo::Pods::start(Path::new(BIN), &link, &INSOMNIA, "parent", &names).unwrap();
    let recorded = spawned(&home, "parent");
    assert_eq!(recorded, ["child1"]);
    assert!(home
        .read(&home.meta("parent"))
        .contains(&link.display().to_string()));
    let m = Mount::started(&home, Command::new(BIN), &[], &env);
    check(&m, "recorded through a symlink, --home the real path");
}

// ---------------------------------------------------------------------------------------
// 8. A mount point in or over the home is refused.

/// `podfs mount` with these arguments: its exit status (it must end by itself within a
/// generous bound) and whether it mounted `mp`. Nothing stays mounted either way.
fn refused_mount(mp: &Path, args: &[&str]) -> (Option<i32>, bool) {
    let _unmount = Unmount(mp.to_path_buf());
    let mut podfs = Reaped(
        Command::new(BIN)
            .arg("mount")
            .arg(mp)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut mounted = false;
    let mut status = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        mounted |= is_mounted(mp);
        if let Some(s) = podfs.0.try_wait().unwrap() {
            status = Some(s.code().unwrap_or(-1));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    mounted |= is_mounted(mp);
    (status, mounted)
}

/// `podfs mount` refuses (exit status 1, nothing mounted) a mount point that is the home,
/// an empty directory inside it, its runtime dir, or an empty directory the runtime dir
/// (`--runtime-dir M/run`) lies inside.
fn a_mount_point_in_or_over_the_home_is_refused() {
    let home = Home::fixture(&INSOMNIA, "live");
    let h = home.s();
    std::fs::create_dir(home.path().join("sub")).unwrap();
    let above = tempdir();
    let m = above.path().join("m");
    std::fs::create_dir(&m).unwrap();
    let inside = m.join("run").display().to_string();
    let cases: Vec<(&str, PathBuf, Vec<&str>)> = vec![
        ("the home", home.path().to_path_buf(), vec!["--home", &h]),
        (
            "an empty dir in the home",
            home.path().join("sub"),
            vec!["--home", &h],
        ),
        (
            "the runtime dir",
            home.path().join("run"),
            vec!["--home", &h],
        ),
        (
            "a dir the runtime dir lies in",
            m.clone(),
            vec!["--home", &h, "--runtime-dir", &inside],
        ),
    ];
    for (what, mp, args) in cases {
        let (status, mounted) = refused_mount(&mp, &args);
        assert_eq!(status, Some(1), "{what}: exit status");
        assert!(!mounted, "{what}: mounted");
    }
    assert_eq!(tree(&m), BTreeMap::new(), "something was made in M");
}

// ---------------------------------------------------------------------------------------
// 9. A dead listener is no proof while the process that owned it lives.

/// A child's socket served by a python process: idle Snapshots until told `close` on its
/// standard input, then the listening socket is closed (its file stays, so a connect is
/// refused) while the process goes on running, until its input ends.
const CLOSABLE_LISTENER: &str = r#"
import select, socket, sys
l = socket.socket(socket.AF_UNIX)
l.bind(sys.argv[1])
l.listen(8)
print('listening', flush=True)
conns = []
snap = b'{"event":"snapshot","data":{"entries":[],"status":"idle"}}\n'
while True:
    r, _, _ = select.select([sys.stdin] + ([l] if l else []) + conns, [], [])
    for x in r:
        if x is sys.stdin:
            line = sys.stdin.readline()
            if not line:
                sys.exit(0)
            if line.strip() == 'close' and l:
                l.close()
                l = None
                print('closed', flush=True)
        elif x is l:
            c, _ = l.accept()
            c.sendall(snap)
            conns.append(c)
        else:
            try:
                data = x.recv(65536)
            except OSError:
                data = b''
            if not data:
                conns.remove(x)
                x.close()
"#;

struct Listener {
    process: Reaped,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Listener {
    fn start(sock: &Path) -> Listener {
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let mut child = Command::new("python3")
            .args(["-c", CLOSABLE_LISTENER])
            .arg(sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut l = Listener {
            process: Reaped(child),
            stdin,
            stdout,
        };
        assert_eq!(l.line(), "listening\n");
        l
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    fn close_listener(&mut self) {
        writeln!(self.stdin, "close").unwrap();
        self.stdin.flush().unwrap();
        assert_eq!(self.line(), "closed\n");
    }
}

/// A child whose process still runs (its pid file, written after it started, names it)
/// but whose listening socket was closed, so that a connect is refused: `rm -r` of it,
/// beside an offline parent, is `EBUSY` and changes nothing. Once the process is dead too,
/// `rm -r` reclaims it.
fn a_child_whose_listener_died_while_its_process_lives_is_not_reclaimed() {
    let home = Home::fixture(&INSOMNIA, "live");
    let sock = home.path().join("run/child1/sock");
    let mut listener = Listener::start(&sock);
    std::fs::write(
        home.path().join("run/child1/pid"),
        listener.process.id().to_string(),
    )
    .unwrap();
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c}/status")).1 == "idle\n"
    });
    listener.close_listener();
    assert_eq!(
        std::os::unix::net::UnixStream::connect(&sock)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ECONNREFUSED)
    );
    let before = tree(home.path());
    assert_eq!(py_errno(&format!("os.rmdir('{c}')")), "EBUSY");
    assert_eq!(
        tree(home.path()),
        before,
        "a child that may run was reclaimed"
    );
    assert!(spawned(&home, "parent").contains(&"child1".to_string()));

    drop(listener);
    ok(&format!("rm -r {c}"));
    assert!(!spawned(&home, "parent").contains(&"child1".to_string()));
    assert!(reclaimed(&home, "parent").contains(&"child1".to_string()));
}

// ---------------------------------------------------------------------------------------
// 10. Without /proc, podfs connects to nothing.

/// In a mount namespace of its own where `/proc` is unmounted, podfs
/// cannot connect through `/proc/self/fd`, so it connects to nothing at all: a live
/// child's `status` answers `EACCES`, never a state.
fn without_proc_podfs_connects_to_nothing() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _pods = demo_pods(&home, &["child1"]);
    let base = tempdir();
    let mnt = base.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _unmount = Unmount(mnt.clone());
    // `--daemon` needs /proc/self/exe to start its background copy: podfs runs as a job
    // of the script instead, which waits until the mount answers.
    let script = format!(
        r#"set -e
umount -l /proc
{bin} --log-file {log} mount {mnt} --home {home} --status-timeout-ms 500 &
for i in $(seq 400); do [ -e {mnt}/parent ] && break; sleep 0.05; done
{py} -c '
import errno
try:
    open("{mnt}/parent/child1/status").read()
    print("OK")
except OSError as e:
    print(errno.errorcode[e.errno])
'
kill -TERM %1
wait %1
"#,
        bin = BIN,
        log = base.path().join("mount.log").display(),
        mnt = mnt.display(),
        home = home.s(),
        py = system_python(),
    );
    // A pid namespace too: when the script ends (or `timeout` ends it), everything it
    // started (podfs included) is killed, and the private mount namespace goes with its
    // mount.
    let out = Command::new("timeout")
        .args([
            "-s",
            "KILL",
            "120",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "bash",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(base.path().join("mount.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}\nlog:\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "EACCES\n",
        "log:\n{log}"
    );
}
