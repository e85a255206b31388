//! A small process that cleans up after a podfs that dies without doing so itself
//! (SIGKILL, the OOM killer): it unmounts the dead mount and, for the demo, stops the
//! reference pods and deletes the throw-away home.
//!
//! fusermount3's own `auto_unmount` cannot be relied on: it runs as root and checks the
//! mount by opening it, and a mount without `allow_other` refuses root with EACCES before
//! the dead connection shows, so fusermount3 concludes there is nothing to do. The guard
//! runs as the mount's owner, which the kernel lets through.
//!
//! The guard is `podfs` itself under a hidden subcommand, started with a pipe as its
//! standard input. Its owner writes what to clean up as lines on the pipe and, when it has
//! cleaned up itself, `done`. End of file without `done` means the owner died: the guard
//! acts on what it was told. It runs in a session of its own, so Ctrl-C in the owner's
//! terminal does not reach it.
//!
//! End of file is not the only sign of death. A killed podfs whose invalidation thread is
//! blocked in the kernel on a directory lock (held by a request the dead podfs will never
//! answer) cannot finish dying: that thread keeps the pipe and `/dev/fuse` open, and the
//! request and the thread wait for each other for good. So the guard also looks at its
//! owner, and once the owner is exiting it aborts the FUSE connection (a forced unmount
//! as root, the connection's `abort` file otherwise) before it unmounts: every waiting
//! request fails with `ENOTCONN`, the lock is let go, and the owner ends.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use crate::error::{Error, Result};

/// The hidden subcommand that runs the guard.
pub const SUBCOMMAND: &str = "guard";

/// The owner's end of the guard.
pub struct Guard {
    pipe: Option<File>,
    child: Option<Child>,
}

impl Guard {
    /// Start a guard with nothing to clean up yet. It is started before what it guards
    /// (the mount, the demo's pods and home) and told of each as soon as it exists: a
    /// podfs killed a moment after its mount appeared must not leave the mount behind.
    pub fn start() -> Result<Guard> {
        let exe = std::env::current_exe().map_err(|e| Error::io("locate the podfs binary", e))?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("create a pipe", e.into()))?;
        let mut command = Command::new(exe);
        command
            .arg(SUBCOMMAND)
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| Error::io("start the cleanup guard", e))?;
        Ok(Guard {
            pipe: Some(File::from(write)),
            child: Some(child),
        })
    }

    /// Unmount the mount `mount_id` at `mountpoint` if the owner dies.
    pub fn also_unmount(&mut self, mount_id: u64, mountpoint: &Path, via_fusermount: bool) {
        self.tell(&format!(
            "mount {mount_id} {} {}",
            u8::from(via_fusermount),
            mountpoint.display()
        ));
    }

    /// Also stop this process (a reference pod) if the owner dies.
    pub fn also_stop(&mut self, pid: u32) {
        if let Some(start) = start_time(pid) {
            self.tell(&format!("stop {pid} {start}"));
        }
    }

    /// Also delete this directory and everything in it if the owner dies.
    pub fn also_remove(&mut self, dir: &Path) {
        self.tell(&format!("remove {}", dir.display()));
    }

    /// Also remove this directory if the owner dies, only if it is empty (a mount point:
    /// never recursively, in case it is still mounted).
    pub fn also_rmdir(&mut self, dir: &Path) {
        self.tell(&format!("rmdir {}", dir.display()));
    }

    fn tell(&mut self, line: &str) {
        if let Some(pipe) = &mut self.pipe {
            if let Err(e) = writeln!(pipe, "{line}") {
                warn!(error = %e, "the cleanup guard is gone");
                self.pipe = None;
            }
        }
    }

    /// The owner cleaned up itself: the guard ends without doing anything.
    pub fn dismiss(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.tell("done");
        self.pipe = None;
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A process's start time (clock ticks since boot), to recognise it and not a later
/// process that reuses its pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Debug, Default, PartialEq)]
struct Orders {
    mount: Option<(u64, bool, PathBuf)>,
    stop: Vec<(u32, u64)>,
    remove: Vec<PathBuf>,
    rmdir: Vec<PathBuf>,
    done: bool,
}

impl Orders {
    fn add(&mut self, line: &str) {
        let mut words = line.splitn(2, ' ');
        match (words.next(), words.next()) {
            (Some("done"), _) => self.done = true,
            (Some("mount"), Some(rest)) => {
                let mut parts = rest.splitn(3, ' ');
                if let (Some(id), Some(fm), Some(path)) = (parts.next(), parts.next(), parts.next())
                {
                    if let Ok(id) = id.parse() {
                        self.mount = Some((id, fm == "1", PathBuf::from(path)));
                    }
                }
            }
            (Some("stop"), Some(rest)) => {
                let mut parts = rest.split(' ');
                if let (Some(Ok(pid)), Some(Ok(start))) =
                    (parts.next().map(str::parse), parts.next().map(str::parse))
                {
                    self.stop.push((pid, start));
                }
            }
            (Some("remove"), Some(dir)) => self.remove.push(PathBuf::from(dir)),
            (Some("rmdir"), Some(dir)) => self.rmdir.push(PathBuf::from(dir)),
            _ => {}
        }
    }
}

/// How often the guard looks at its owner while the pipe stays open.
const OWNER_CHECK: Duration = Duration::from_millis(250);

/// Whether process `pid` (started at `start`) is gone or on its way out: a zombie, or
/// exiting (`PF_EXITING`) while a thread of it cannot finish.
fn exiting(pid: u32, start: Option<u64>) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        // Gone, unless there is no /proc to tell (then only the pipe can).
        return std::path::Path::new("/proc/self/stat").exists();
    };
    let Some(close) = stat.rfind(')') else {
        return true;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    let started: Option<u64> = fields.get(19).and_then(|f| f.parse().ok());
    matches!(fields.first(), Some(&"Z") | Some(&"X"))
        || flags & PF_EXITING != 0
        || (start.is_some() && started != start)
}

/// Make every request still waiting on the mount `id` fail, so that nothing (the dead
/// owner's last thread above all) waits for an answer that will never come.
fn abort_connection(id: u64, mountpoint: &Path, via_fusermount: bool) {
    // For the test that shows a killed podfs ends its own deadlock, with no help.
    if crate::failpoint::is_armed("guard-cannot-abort") {
        return;
    }
    if let Some(conn) = crate::mountinfo::fuse_connection(id) {
        let abort = format!("/sys/fs/fuse/connections/{conn}/abort");
        if std::fs::write(&abort, b"1").is_ok() {
            debug!(conn, "FUSE connection aborted");
            return;
        }
    }
    if !via_fusermount {
        // As root: a forced unmount aborts a FUSE connection first.
        let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_FORCE);
    }
}

/// The guard's side: wait for the owner to finish or die, then clean up if it died.
pub fn run() -> Result<()> {
    let owner = nix::unistd::getppid().as_raw() as u32;
    let owner_start = start_time(owner);
    let orders = Arc::new(Mutex::new(Orders::default()));
    let (ended, end) = mpsc::channel();
    {
        let orders = orders.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(std::io::stdin().lock()).lines() {
                let Ok(line) = line else { break };
                orders.lock().unwrap_or_else(|e| e.into_inner()).add(&line);
            }
            let _ = ended.send(());
        });
    }
    // Until the pipe ends, or the owner is dying with the pipe still open.
    while let Err(mpsc::RecvTimeoutError::Timeout) = end.recv_timeout(OWNER_CHECK) {
        if exiting(owner, owner_start) {
            break;
        }
    }
    let orders = std::mem::take(&mut *orders.lock().unwrap_or_else(|e| e.into_inner()));
    if orders.done {
        return Ok(());
    }
    debug!(?orders, "owner died; cleaning up after it");
    if let Some((id, via_fusermount, mountpoint)) = &orders.mount {
        if crate::mountinfo::mount_is_present(*id, mountpoint) {
            abort_connection(*id, mountpoint, *via_fusermount);
            if *via_fusermount {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z", "-q", "--"])
                    .arg(mountpoint)
                    .stderr(Stdio::null())
                    .status();
            } else {
                let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let alive = |(pid, start): &(u32, u64)| start_time(*pid) == Some(*start);
    for p in orders.stop.iter().filter(|p| alive(p)) {
        let _ = kill(Pid::from_raw(p.0 as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while orders.stop.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in orders.stop.iter().filter(|p| alive(p)) {
        let _ = kill(Pid::from_raw(p.0 as i32), Signal::SIGKILL);
    }
    for dir in &orders.remove {
        let _ = std::fs::remove_dir_all(dir);
    }
    for dir in &orders.rmdir {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_orders(input: impl BufRead) -> Orders {
        let mut orders = Orders::default();
        for line in input.lines() {
            let Ok(line) = line else { break };
            orders.add(&line);
        }
        orders
    }

    #[test]
    fn orders_are_read_line_by_line_and_done_dismisses() {
        let text = "mount 42 1 /tmp/a b\nstop 7 99\nremove /tmp/home x\nrmdir /tmp/m\n";
        let o = parse_orders(text.as_bytes());
        assert_eq!(o.mount, Some((42, true, PathBuf::from("/tmp/a b"))));
        assert_eq!(o.stop, [(7, 99)]);
        assert_eq!(o.remove, [PathBuf::from("/tmp/home x")]);
        assert_eq!(o.rmdir, [PathBuf::from("/tmp/m")]);
        assert!(!o.done);
        let o = parse_orders(format!("{text}done\n").as_bytes());
        assert!(o.done);
    }

    #[test]
    fn a_live_process_is_not_exiting_and_a_reaped_one_is() {
        let me = std::process::id();
        assert!(!exiting(me, start_time(me)));
        assert!(exiting(me, Some(0)), "another process under this pid");
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !exiting(pid, start) {
            assert!(
                Instant::now() < deadline,
                "a finished child never showed as exiting"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(exiting(pid, start));
    }

    #[test]
    fn a_process_is_known_by_its_start_time() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(start));
        assert_eq!(start_time(u32::MAX), None);
    }
}
