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

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    /// Start a guard for the mount `mount_id` at `mountpoint`.
    pub fn spawn(mount_id: u64, mountpoint: &Path, via_fusermount: bool) -> Result<Guard> {
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
        let mut guard = Guard {
            pipe: Some(File::from(write)),
            child: Some(child),
        };
        guard.tell(&format!(
            "mount {mount_id} {} {}",
            u8::from(via_fusermount),
            mountpoint.display()
        ));
        Ok(guard)
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

fn parse_orders(input: impl BufRead) -> Orders {
    let mut orders = Orders::default();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let mut words = line.splitn(2, ' ');
        match (words.next(), words.next()) {
            (Some("done"), _) => orders.done = true,
            (Some("mount"), Some(rest)) => {
                let mut parts = rest.splitn(3, ' ');
                if let (Some(id), Some(fm), Some(path)) = (parts.next(), parts.next(), parts.next())
                {
                    if let Ok(id) = id.parse() {
                        orders.mount = Some((id, fm == "1", PathBuf::from(path)));
                    }
                }
            }
            (Some("stop"), Some(rest)) => {
                let mut parts = rest.split(' ');
                if let (Some(Ok(pid)), Some(Ok(start))) =
                    (parts.next().map(str::parse), parts.next().map(str::parse))
                {
                    orders.stop.push((pid, start));
                }
            }
            (Some("remove"), Some(dir)) => orders.remove.push(PathBuf::from(dir)),
            (Some("rmdir"), Some(dir)) => orders.rmdir.push(PathBuf::from(dir)),
            _ => {}
        }
    }
    orders
}

/// The guard's side: wait for the owner to finish or die, then clean up if it died.
pub fn run() -> Result<()> {
    let orders = parse_orders(BufReader::new(std::io::stdin().lock()));
    if orders.done {
        return Ok(());
    }
    debug!(?orders, "owner died; cleaning up after it");
    if let Some((id, via_fusermount, mountpoint)) = &orders.mount {
        if crate::mountinfo::mount_is_present(*id, mountpoint) {
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
    fn a_process_is_known_by_its_start_time() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(start));
        assert_eq!(start_time(u32::MAX), None);
    }
}
