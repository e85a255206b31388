//! podfs as an ordinary user: the demo, a mount, `--daemon` and `podfs unmount`, the
//! systemd `--user` unit's command lines, and a SIGKILLed mount that must leave nothing
//! behind. Unprivileged mounts go through fusermount3.
//!
//! Run as root, the tests switch to an unprivileged user (`podfs-ci`, created if missing)
//! for every command; run as an ordinary user, they run as that user. An ordinary user can
//! only mount FUSE where /dev/fuse is open to everyone (mode 0666, as udev makes it on a
//! standard host; `.ci/run` does the same in containers where it is root's alone). `main`
//! finds out by trying, before the tests are listed; where the user cannot, it checks that
//! podfs says so with its mount-failure status, and the tests are reported as ignored
//! (under `CI=true` they fail). A user this binary created is removed when its tests end.
#[macro_use]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

fn main() -> std::process::ExitCode {
    // Listing the tests needs no user and no mount.
    let ordinary = if common::harness::only_listing() {
        Need::Met
    } else {
        Need::fuse().and_then(|| {
            Need::probe(
                "an ordinary user can mount FUSE here",
                an_ordinary_user_can_mount,
            )
        })
    };
    Suite::new()
        .add(
            &ordinary,
            tests![
                the_demo_runs_and_cleans_up_as_an_ordinary_user,
                a_killed_mount_leaves_nothing_behind,
                a_killed_demo_leaves_nothing_behind,
                daemon_and_unmount_as_an_ordinary_user,
                the_user_unit_command_lines_work_as_an_ordinary_user,
            ],
        )
        .finally(remove_the_user_if_created_here)
        .run()
}

const USER: &str = "podfs-ci";

/// The tests look for leftover processes of the user: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Whether this binary created the user (and so removes it at the end).
static CREATED_HERE: AtomicBool = AtomicBool::new(false);

/// An ordinary user, a private workspace it owns, and a copy of podfs it can run.
struct Ordinary {
    uid: u32,
    gid: u32,
    ws: tempfile::TempDir,
    bin: PathBuf,
}

/// Whether an ordinary user can mount FUSE here, found by trying: as root, the user is
/// `podfs-ci` (created if missing).
fn an_ordinary_user_can_mount() -> Need {
    match Ordinary::new() {
        Ok(o) => o.can_mount(),
        Err(not_run) => Need::Unmet(not_run),
    }
}

/// Remove `podfs-ci` once the tests are done, if this binary created it: the suite leaves
/// the host as it found it.
fn remove_the_user_if_created_here() -> Result<(), String> {
    if !CREATED_HERE.load(Ordering::SeqCst) {
        return Ok(());
    }
    let out = Command::new("userdel")
        .arg(USER)
        .output()
        .map_err(|e| format!("userdel {USER}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "userdel {USER}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Ordinary {
    fn new() -> Result<Ordinary, NotRun> {
        let root = nix::unistd::geteuid().is_root();
        let (uid, gid) = if root {
            match nix::unistd::User::from_name(USER).ok().flatten() {
                Some(u) => (u.uid.as_raw(), u.gid.as_raw()),
                None => {
                    let made = Command::new("useradd")
                        .args([
                            "--system",
                            "--no-create-home",
                            "--shell",
                            "/usr/sbin/nologin",
                        ])
                        .arg(USER)
                        .status()
                        .is_ok_and(|s| s.success());
                    if made {
                        CREATED_HERE.store(true, Ordering::SeqCst);
                    }
                    match nix::unistd::User::from_name(USER).ok().flatten() {
                        Some(u) if made => (u.uid.as_raw(), u.gid.as_raw()),
                        _ => {
                            return Err(NotRun {
                                why: "no ordinary user to run as".into(),
                                detail: format!("no user {USER}, and useradd failed"),
                            });
                        }
                    }
                }
            }
        } else {
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )
        };
        // A directory the user owns and can reach: the repository may be where it cannot.
        // As root that is the system temporary directory, which every user can traverse;
        // an ordinary user takes the suite's own scratch place (TMPDIR, /tmp, ~/.cache).
        let ws = if root {
            tempfile::Builder::new()
                .prefix("podfs-user-")
                .tempdir_in(std::env::temp_dir())
                .unwrap()
        } else {
            tempdir_named("podfs-user-")
        };
        std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = ws.path().join("podfs");
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let o = Ordinary { uid, gid, ws, bin };
        for dir in ["home", "m"] {
            std::fs::create_dir(o.p(dir)).unwrap();
        }
        o.chown(o.ws.path());
        Ok(o)
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.ws.path().join(rel)
    }

    fn chown(&self, path: &Path) {
        if nix::unistd::geteuid().is_root() {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{}:{}", self.uid, self.gid))
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// A command run as the user, in the workspace, with a minimal environment.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.ws.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", self.ws.path())
            .env("TMPDIR", self.ws.path())
            .stdin(Stdio::null());
        if let Ok(lang) = std::env::var("LANG") {
            c.env("LANG", lang);
        }
        if nix::unistd::geteuid().is_root() {
            c.uid(self.uid).gid(self.gid);
        }
        c
    }

    fn podfs(&self) -> Command {
        self.cmd(self.bin.to_str().unwrap())
    }

    fn sh(&self, script: &str) -> Output {
        self.cmd("bash").arg("-c").arg(script).output().unwrap()
    }

    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "`{script}` failed: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// A demo-style home (a parent and its children) owned by the user, in `dir`.
    fn home_in(&self, dir: &str, gen: Gen, children: &[&str]) -> PathBuf {
        let names: Vec<String> = children.iter().map(|s| s.to_string()).collect();
        let path = self.p(dir);
        std::fs::create_dir_all(&path).unwrap();
        podfs::demo::home::create(&path, gen, "parent", &names).unwrap();
        self.chown(&path);
        path
    }

    fn home(&self, gen: Gen, children: &[&str]) -> PathBuf {
        self.home_in("home", gen, children)
    }

    /// Processes of the user still running (podfs, its pods, its guard); zombies have
    /// exited already, and their parent (not podfs) reaps them.
    fn leftovers(&self) -> Vec<String> {
        let bin = self.bin.to_str().unwrap();
        processes()
            .into_iter()
            .filter(|p| p.uid == self.uid && p.pid != std::process::id())
            .filter(|p| p.args.first().is_some_and(|a| a == bin) && p.state != "Z")
            .map(|p| format!("{}: {}", p.pid, p.args.join(" ")))
            .collect()
    }

    /// Whether the user may mount at all; if not, check that podfs says so as a mount
    /// failure (status 32) and leaves nothing behind, and say why the tests cannot run.
    fn can_mount(&self) -> Need {
        let home = self.home_in("probe", &INSOMNIA, &["child1"]);
        let out = self
            .podfs()
            .args(["mount", "--daemon", "m", "--home"])
            .arg(&home)
            .output()
            .unwrap();
        if out.status.success() {
            let status = self.podfs().args(["unmount", "m"]).status().unwrap();
            assert!(status.success());
            return Need::Met;
        }
        assert_eq!(out.status.code(), Some(32), "{out:?}");
        assert!(!is_mounted(&self.p("m")));
        let mode = std::fs::metadata("/dev/fuse").map_or(0, |m| m.mode() & 0o777);
        Need::unmet(
            "an ordinary user cannot mount FUSE",
            format!("/dev/fuse mode {mode:o}; podfs refused with status 32, as it should"),
        )
    }
}

fn wait_mounted(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(path) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("podfs exited early with {status}");
        }
        assert!(Instant::now() < deadline, "not mounted in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends a child however the test goes, so that nothing outlives a failure.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The ordinary user, whom `main` found able to mount before the tests were listed.
macro_rules! ordinary_user {
    () => {
        Ordinary::new().unwrap_or_else(|not_run| panic!("{not_run}"))
    };
}

fn the_demo_runs_and_cleans_up_as_an_ordinary_user() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = ordinary_user!();
    let m = o.p("m");
    let _unmount = Unmount(m.clone());
    let mut demo = Reaper(
        o.podfs()
            .arg("demo")
            .arg(&m)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_mounted(&m, &mut demo.0);
    let p = m.join("parent");
    let p = p.display();
    assert_eq!(o.ok(&format!("ls {p}")), "child1\nchild2\nchild3\n");
    wait_for(Duration::from_secs(20), || {
        o.sh(&format!("cat {p}/child1/status")).stdout == b"idle\n"
    });
    o.ok(&format!("echo 'from an ordinary user' > {p}/child1/input"));
    wait_for(Duration::from_secs(20), || {
        String::from_utf8_lossy(&o.sh(&format!("cat {p}/child1/log")).stdout)
            .contains("echo: from an ordinary user")
    });
    o.ok(&format!("rm -r {p}/child3"));
    assert_eq!(o.ok(&format!("ls {p}")), "child1\nchild2\n");
    // Ctrl-C: unmounted, pods stopped, the home deleted.
    signal(demo.0.id(), nix::sys::signal::Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = demo.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&m));
    let homes: Vec<_> = std::fs::read_dir(o.ws.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("podfs-demo-home-")
        })
        .collect();
    assert!(homes.is_empty(), "the demo home stayed behind");
    wait_for(Duration::from_secs(10), || o.leftovers().is_empty());
}

fn killed_mount(o: &Ordinary, program: &str) {
    let m = o.p("m");
    let _unmount = Unmount(m.clone());
    let home = o.home(&INSOMNIA, &["child1", "child2"]);
    let mut child = Reaper(match program {
        "mount" => o
            .podfs()
            .args(["mount", "m", "--home"])
            .arg(&home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        _ => o
            .podfs()
            .args(["demo", "m"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    });
    wait_mounted(&m, &mut child.0);
    assert!(o.ok("ls m/parent").contains("child1"));
    signal(child.0.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = child.0.wait();
    // The guard unmounts the dead mount (and, for the demo, stops the pods and deletes
    // the home); fusermount3's own auto_unmount cannot see a mount it may not open.
    wait_for(Duration::from_secs(20), || !is_mounted(&m));
    wait_for(Duration::from_secs(20), || o.leftovers().is_empty());
    let left: Vec<_> = std::fs::read_dir(o.ws.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("podfs-demo-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The mount point is usable again.
    assert!(std::fs::read_dir(&m).unwrap().next().is_none());
}

fn a_killed_mount_leaves_nothing_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = ordinary_user!();
    killed_mount(&o, "mount");
}

fn a_killed_demo_leaves_nothing_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = ordinary_user!();
    killed_mount(&o, "demo");
}

fn daemon_and_unmount_as_an_ordinary_user() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = ordinary_user!();
    let _unmount = Unmount(o.p("m"));
    let home = o.home(&YOI, &["child1"]);
    let out = o
        .podfs()
        .args(["mount", "--daemon", "m/", "--home"])
        .arg(&home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(is_mounted(&o.p("m")));
    assert_eq!(o.ok("cat m/parent/child1/cursor"), "0\n");
    // Mounting again on it is refused as a usage error, whatever the home holds.
    let again = o
        .podfs()
        .args(["mount", "m", "--home"])
        .arg(&home)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let status = o.podfs().args(["unmount", "./m/"]).status().unwrap();
    assert!(status.success());
    assert!(!is_mounted(&o.p("m")));
    wait_for(Duration::from_secs(10), || o.leftovers().is_empty());
}

/// What systemd would run for `podfs.user.service`: the unit's own command lines, with
/// `%h` the user's home, run as the user; stopped with the unit's KillSignal.
fn the_user_unit_command_lines_work_as_an_ordinary_user() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = ordinary_user!();
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-scripts/systemd/podfs.user.service"),
    )
    .unwrap();
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}"))
            .replace("%h", o.ws.path().to_str().unwrap())
            .replace("@BINDIR@", o.ws.path().to_str().unwrap())
    };
    assert_eq!(line("KillSignal"), "SIGTERM");
    let pods = o.p("pods");
    let _unmount = Unmount(pods.clone());
    o.ok(&line("ExecStartPre"));
    // The unit finds the home the way the runtime does: here through INSOMNIA_HOME.
    let home = o.home(&INSOMNIA, &["child1"]);
    let start = line("ExecStart");
    let mut words = start.split_whitespace();
    let mut service = Reaper(
        o.cmd(words.next().unwrap())
            .args(words)
            .env("INSOMNIA_HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_mounted(&pods, &mut service.0);
    assert_eq!(o.ok("ls pods/parent"), "child1\n");
    signal(service.0.id(), nix::sys::signal::Signal::SIGTERM);
    let status = service.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&pods));
}
