//! Shared harness for the mount tests: staged homes, a real `podfs mount` process that is
//! always unmounted (even when an assertion fails), demo pods, and shell helpers.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_podfs");

/// False (with a loud message) when FUSE is unavailable; under `CI=true` that is a failure.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    let msg = "/dev/fuse is missing: this mount test CANNOT RUN here";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (CI=true makes this a failure)");
    }
    eprintln!("\n!!!!! SKIPPED: {msg} !!!!!\n");
    false
}

/// A temporary insomnia home.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn s(&self) -> String {
        self.path().display().to_string()
    }

    /// A state folder of the golden fixtures with `@HOME@` replaced by this home.
    pub fn fixture(state: &str) -> Home {
        let dir = tempfile::Builder::new()
            .prefix("podfs-home-")
            .tempdir()
            .unwrap();
        let root = fixtures_root().join(state);
        let home = dir.path().display().to_string();
        copy_tree(&root, dir.path(), &home);
        Home { dir }
    }

    /// A demo home: `parent` with `children`, files as the runtime writes them.
    pub fn demo(children: &[&str]) -> Home {
        let dir = tempfile::Builder::new()
            .prefix("podfs-home-")
            .tempdir()
            .unwrap();
        let names: Vec<String> = children.iter().map(|s| s.to_string()).collect();
        podfs::demo::home::create(dir.path(), "parent", &names).unwrap();
        Home { dir }
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn json(&self, rel: &str) -> serde_json::Value {
        serde_json::from_str(&self.read(rel)).unwrap()
    }
}

pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/insomnia-5472")
}

pub fn fixture_text(rel: &str, home: &str) -> String {
    std::fs::read_to_string(fixtures_root().join(rel))
        .unwrap()
        .replace("@HOME@", home)
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

/// A running `podfs mount`, unmounted and reaped on drop.
pub struct Mount {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
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
            "--probe-timeout-ms",
            "500",
        ];
        args.extend_from_slice(extra);
        Self::with_args(home, &args)
    }

    pub fn with_args(home: &Home, extra: &[&str]) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("podfs-mnt-")
            .tempdir()
            .unwrap();
        let log = home.path().with_extension("mount.log");
        let before = std::fs::metadata(dir.path()).unwrap().dev();
        let child = Command::new(BIN)
            .args(["--log-level", "debug", "mount"])
            .arg(dir.path())
            .arg("--home")
            .arg(home.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut mount = Mount {
            child: Some(child),
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(meta) = std::fs::metadata(mount.dir.path()) {
                if meta.dev() != before {
                    break;
                }
            }
            if let Some(status) = mount.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("podfs exited early ({status}):\n{}", mount.log());
            }
            assert!(
                Instant::now() < deadline,
                "mount not ready:\n{}",
                mount.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
        mount
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
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

    /// SIGKILL without unmounting (leaves a stale mount for the drop guard to clear).
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("already stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(self.path())
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let target = path.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(target.as_str()))
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

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Run a bash command line; returns (exit code, stdout, stderr).
pub fn sh(cmd: &str) -> (i32, String, String) {
    let out: Output = Command::new("bash")
        .arg("-c")
        .arg(cmd)
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

/// Run a command line that must fail; returns stderr.
pub fn fails(cmd: &str) -> String {
    let (code, out, err) = sh(cmd);
    assert_ne!(code, 0, "`{cmd}` should fail but printed {out:?}");
    err
}

/// The errno of an operation, performed by python3 so the exact error is visible.
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

/// Demo pods for a demo home, stopped on drop.
pub fn demo_pods(home: &Home, children: &[&str]) -> podfs::demo::Pods {
    let names: Vec<String> = children.iter().map(|s| s.to_string()).collect();
    podfs::demo::Pods::start(Path::new(BIN), home.path(), "parent", &names).unwrap()
}

/// Start one extra demo pod process with explicit arguments (for odd behaviours).
pub struct PodProcess(pub Child);

impl PodProcess {
    pub fn start(home: &Home, name: &str, extra: &[&str]) -> PodProcess {
        let child = Command::new(BIN)
            .args(["--log-level", "warn", "pod", "--home"])
            .arg(home.path())
            .args(["--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let sock = home.path().join("run").join(name).join("sock");
        wait_for(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        PodProcess(child)
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
