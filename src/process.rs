//! What `/proc` says about another process: whether it has a signal waiting, whether it
//! is exiting because of one, and whether a recorded pid still names the process that
//! recorded it.
//!
//! podfs needs these because the kernel does not tell it. fuser answers the kernel's
//! `FUSE_INTERRUPT` with `ENOSYS`, after which the kernel never sends another: a request
//! that podfs parks (an `open` waiting for a child, an `rmdir` stopping one) would keep a
//! Ctrl-C'd `cat` in uninterruptible sleep until its bound. And a `close()` at exit looks
//! the same to a filesystem whether the writer finished or was killed midway.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The thread a request is made for, so that a wait podfs owns on its behalf ends when it
/// gets a signal (the kernel would have interrupted the system call if podfs could hear
/// of it). Thread 0 (a caller outside podfs's pid namespace, or nobody) is never
/// interrupted; its waits end at their bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester(pub u32);

impl Requester {
    /// Nobody: a wait that only its bound ends.
    pub const NOBODY: Requester = Requester(0);

    pub fn interrupted(&self) -> bool {
        signal_pending(self.0)
    }

    /// `Err(Interrupted)` once the requester has a signal waiting.
    pub fn check(&self) -> crate::error::Result<()> {
        if self.interrupted() {
            Err(crate::error::Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

/// The process (thread group) thread `tid` belongs to; `None` when it cannot be told.
pub fn tgid(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// `PF_EXITING`: the task is in `do_exit` (include/linux/sched.h).
const PF_EXITING: u64 = 0x4;

/// The fields of `/proc/<pid>/stat` after the command name, from field 3 (the state) on.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: the command name may hold spaces and parentheses.
    let (_, after) = stat.rsplit_once(')')?;
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// A field of `/proc/<pid>/stat` by its 1-based number in proc(5).
fn field(fields: &[String], number: usize) -> Option<u64> {
    fields.get(number.checked_sub(3)?)?.parse().ok()
}

/// Whether thread `tid` has a signal pending that it does not block: the kernel would have
/// interrupted its system call. False when it cannot be told (no such thread, pid 0 for a
/// caller outside podfs's pid namespace, no `/proc`).
pub fn signal_pending(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return false;
    };
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

/// Whether thread `tid` is exiting because a signal killed it (not by `exit()`): its
/// descriptors are being closed by the kernel in the middle of whatever it was doing.
/// `do_exit` records the exit code before it closes the files, so this is decided by the
/// time the filesystem hears of the close. False when it cannot be told.
pub fn killed_by_signal(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let Some(fields) = stat_fields(tid) else {
        return false;
    };
    let flags = field(&fields, 9).unwrap_or(0);
    // Field 52, the exit status as waitpid(2) reports it (0 when not permitted to see).
    let exit_code = field(&fields, 52).unwrap_or(0);
    flags & PF_EXITING != 0 && exit_code & 0x7f != 0
}

/// Whether the process `pid` recorded at `recorded` (the modification time of the file
/// that names it) is certainly gone: no such process, a zombie, or a process that started
/// after the record was written (the pid was reused). Anything else, including a process
/// podfs may not signal, counts as alive, as in the runtime's own stale check.
pub fn recorded_pid_is_gone(pid: u32, recorded: SystemTime) -> bool {
    if pid == 0 {
        return true;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    if let Err(nix::errno::Errno::ESRCH) =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None)
    {
        return true;
    }
    let Some(fields) = stat_fields(pid) else {
        // Signalled a moment ago but gone from /proc now: it exited in between.
        return !Path::new(&format!("/proc/{pid}")).exists();
    };
    if matches!(fields.first().map(String::as_str), Some("Z" | "X" | "x")) {
        return true;
    }
    match started_at(&fields) {
        // The record is written after the process starts; a process that started after
        // the record (with a second of slack for clock granularity) is another one.
        Some(start) => start > recorded + Duration::from_secs(1),
        None => false,
    }
}

/// When the process of these `stat` fields started, in wall-clock time.
fn started_at(fields: &[String]) -> Option<SystemTime> {
    let ticks = field(fields, 22)?;
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let since_boot = Duration::from_secs(ticks / hz.max(1))
        + Duration::from_nanos((ticks % hz.max(1)) * 1_000_000_000 / hz.max(1));
    Some(UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_thread_belongs_to_its_process() {
        let me = std::process::id();
        let tid = nix::unistd::gettid().as_raw() as u32;
        assert_eq!(tgid(tid), Some(me));
        assert_eq!(tgid(0), None);
    }

    #[test]
    fn a_live_process_and_its_own_record_count_as_alive() {
        let me = std::process::id();
        assert!(!recorded_pid_is_gone(me, SystemTime::now()));
        assert!(!killed_by_signal(me));
        assert!(!signal_pending(me));
    }

    #[test]
    fn dead_zombie_and_reused_pids_are_gone() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Unreaped: a zombie still answers kill(pid, 0).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stat_fields(pid).and_then(|f| f.first().cloned()).as_deref() != Some("Z") {
            assert!(std::time::Instant::now() < deadline, "no zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(recorded_pid_is_gone(pid, SystemTime::now()));
        child.wait().unwrap();
        assert!(recorded_pid_is_gone(pid, SystemTime::now()));
        // A record older than the process that now holds the pid names another process.
        let me = std::process::id();
        assert!(recorded_pid_is_gone(me, UNIX_EPOCH));
        assert!(recorded_pid_is_gone(0, SystemTime::now()));
    }

    #[test]
    fn a_signal_waiting_for_a_stopped_process_is_pending() {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGSTOP).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stat_fields(child.id())
            .and_then(|f| f.first().cloned())
            .as_deref()
            != Some("T")
        {
            assert!(std::time::Instant::now() < deadline, "not stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!signal_pending(child.id()));
        // A stopped process keeps every signal but SIGKILL and SIGCONT pending.
        kill(pid, Signal::SIGUSR1).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !signal_pending(child.id()) {
            assert!(
                std::time::Instant::now() < deadline,
                "SIGUSR1 not seen pending"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
