//! What `/proc` says about another process: whether it has a signal waiting that would
//! end its system call, whether it is exiting because of one, and whether a recorded pid
//! may still name the process that recorded it.
//!
//! podfs needs these because the kernel does not tell it. fuser answers the kernel's
//! `FUSE_INTERRUPT` with `ENOSYS`, after which the kernel never sends another: a request
//! that podfs parks (an `open` waiting for a child, an `rmdir` stopping one) would keep a
//! Ctrl-C'd `cat` in uninterruptible sleep until its bound. And a `close()` at exit looks
//! the same to a filesystem whether the writer finished or was killed midway.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The thread a request is made for, so that a wait podfs owns on its behalf ends when it
/// gets a signal (the kernel would have interrupted the system call if podfs could hear
/// of it), and the latest its answer may come (before the kernel's own request timeout,
/// where one is set). Thread 0 (a caller outside podfs's pid namespace, or nobody) is
/// never interrupted; its waits end at their bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    tid: u32,
    deadline: Option<Instant>,
}

impl Requester {
    /// Nobody: a wait that only its bound ends.
    pub const NOBODY: Requester = Requester {
        tid: 0,
        deadline: None,
    };

    pub fn new(tid: u32) -> Requester {
        Requester {
            tid,
            deadline: None,
        }
    }

    /// The same requester, whose waits end by `deadline` too.
    pub fn until(self, deadline: Option<Instant>) -> Requester {
        Requester { deadline, ..self }
    }

    pub fn interrupted(&self) -> bool {
        signal_pending(self.tid)
    }

    /// `Err(Interrupted)` once the requester has a signal waiting, `Err(TryAgain)` once
    /// its deadline passed: the checks every long wait makes as it goes.
    pub fn check(&self) -> crate::error::Result<()> {
        if self.interrupted() {
            return Err(crate::error::Error::Interrupted);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(crate::error::Error::TryAgain(
                "the removal outlasted the longest a request may wait; nothing was edited \
                 yet, try again"
                    .into(),
            ));
        }
        Ok(())
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

/// Signals whose handlers are, by universal convention, installed with `SA_RESTART`
/// (a shell's `SIGCHLD` and `SIGWINCH`, an event loop's `SIGURG`), and `SIGCONT`: a system
/// call they arrive during goes on, so a wait podfs holds for it goes on too.
const RESTARTING: [i32; 4] = [libc::SIGCHLD, libc::SIGWINCH, libc::SIGURG, libc::SIGCONT];

/// Signals whose default action neither ends the process nor interrupts anything: they
/// are ignored, or stop the process (which the kernel does once the system call
/// returns, and `fg` resumes it where it was).
const HARMLESS_BY_DEFAULT: [i32; 8] = [
    libc::SIGCHLD,
    libc::SIGWINCH,
    libc::SIGURG,
    libc::SIGCONT,
    libc::SIGSTOP,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// Whether a pending, unblocked signal `sig` would end the system call a process waits
/// in: a signal it ignores never does; one it handles does unless it is one of those
/// handled with `SA_RESTART` by convention (`/proc` does not show a handler's flags);
/// one left at its default does when that default kills the process.
fn interrupts(sig: i32, ignored: u64, caught: u64) -> bool {
    let bit = 1u64 << (sig - 1);
    if ignored & bit != 0 {
        return false;
    }
    if caught & bit != 0 {
        return !RESTARTING.contains(&sig);
    }
    !HARMLESS_BY_DEFAULT.contains(&sig)
}

/// Whether thread `tid` has a signal pending that would end the system call it waits in,
/// were podfs's wait an ordinary blocking one: a fatal signal, or one its handler takes
/// without restarting. Not a stop (`Ctrl-Z`, then `fg`), not `SIGWINCH` or `SIGCHLD`, not
/// an ignored or blocked one. False when it cannot be told (no such thread, pid 0 for a
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
    let pending = (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:");
    let (ignored, caught) = (mask("SigIgn:"), mask("SigCgt:"));
    (1..=64)
        .filter(|sig| pending & (1u64 << (sig - 1)) != 0)
        .any(|sig| interrupts(sig, ignored, caught))
}

/// How long a close waits to learn whether its process was killed. A read of
/// `/proc/<pid>/stat` blocks while that process is in `execve`, and an `execve` closes the
/// process's close-on-exec descriptors (a FUSE flush each) with the lock that read waits
/// for held: a flush that waited for the read would wait for itself.
const STAT_WAIT: Duration = Duration::from_millis(100);

/// Whether thread `tid` is exiting because a signal killed it (not by `exit()`): its
/// descriptors are being closed by the kernel in the middle of whatever it was doing.
/// `do_exit` records the exit code before it closes the files, so this is decided by the
/// time the filesystem hears of the close. False when it cannot be told, and when the
/// answer does not come within [`STAT_WAIT`] (the process is in `execve`, which closes
/// descriptors it is not killed by; the read is left to finish on its own thread once the
/// close has been answered).
pub fn killed_by_signal(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let asked = std::thread::Builder::new()
        .name("podfs-proc".into())
        .stack_size(64 << 10)
        .spawn(move || {
            let _ = tx.send(stat_fields(tid));
        });
    if asked.is_err() {
        return false;
    }
    let Ok(Some(fields)) = rx.recv_timeout(STAT_WAIT) else {
        return false;
    };
    let flags = field(&fields, 9).unwrap_or(0);
    // Field 52, the exit status as waitpid(2) reports it (0 when not permitted to see).
    let exit_code = field(&fields, 52).unwrap_or(0);
    flags & PF_EXITING != 0 && exit_code & 0x7f != 0
}

/// Whether a live process that podfs can see may be the pod that wrote `pid` into its
/// pid file at `recorded` (the file's modification time): a process with that pid exists
/// in podfs's pid namespace, is not a zombie, and did not start after the file was
/// written (a later one only reuses the pid). Any doubt counts as "may be": this only
/// ever keeps a pod from being taken for gone, never proves it gone.
pub fn may_be_the_recorded_process(pid: u32, recorded: SystemTime) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    if let Err(nix::errno::Errno::ESRCH) =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None)
    {
        return false;
    }
    let Some(fields) = stat_fields(pid) else {
        // Signalled a moment ago but gone from /proc now: it exited in between.
        return Path::new(&format!("/proc/{pid}")).exists();
    };
    if matches!(fields.first().map(String::as_str), Some("Z" | "X" | "x")) {
        return false;
    }
    match started_at(&fields) {
        Some(start) => start <= recorded + Duration::from_secs(2),
        None => true,
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
    fn a_live_process_may_be_the_one_its_record_names() {
        let me = std::process::id();
        assert!(may_be_the_recorded_process(me, SystemTime::now()));
        assert!(!killed_by_signal(me));
        assert!(!signal_pending(me));
        // A record written before this process started names another one.
        assert!(!may_be_the_recorded_process(me, UNIX_EPOCH));
        assert!(!may_be_the_recorded_process(0, SystemTime::now()));
    }

    #[test]
    fn dead_and_zombie_pids_are_not_the_recorded_process() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Unreaped: a zombie still answers kill(pid, 0).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stat_fields(pid).and_then(|f| f.first().cloned()).as_deref() != Some("Z") {
            assert!(std::time::Instant::now() < deadline, "no zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!may_be_the_recorded_process(pid, SystemTime::now()));
        child.wait().unwrap();
        assert!(!may_be_the_recorded_process(pid, SystemTime::now()));
    }

    #[test]
    fn only_signals_that_would_end_a_system_call_interrupt() {
        let bit = |s: i32| 1u64 << (s - 1);
        // At their defaults: fatal ones interrupt; stops and ignored ones do not.
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGKILL,
            libc::SIGHUP,
            libc::SIGPIPE,
        ] {
            assert!(interrupts(sig, 0, 0), "{sig}");
        }
        for sig in [
            libc::SIGTSTP,
            libc::SIGSTOP,
            libc::SIGWINCH,
            libc::SIGCHLD,
            libc::SIGCONT,
        ] {
            assert!(!interrupts(sig, 0, 0), "{sig}");
        }
        // Ignored: never. Handled: unless handled with SA_RESTART by convention.
        assert!(!interrupts(libc::SIGINT, bit(libc::SIGINT), 0));
        assert!(interrupts(libc::SIGINT, 0, bit(libc::SIGINT)));
        assert!(interrupts(libc::SIGUSR1, 0, bit(libc::SIGUSR1)));
        assert!(!interrupts(libc::SIGWINCH, 0, bit(libc::SIGWINCH)));
        assert!(!interrupts(libc::SIGCHLD, 0, bit(libc::SIGCHLD)));
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
        // A stopped process keeps every signal but SIGKILL and SIGCONT pending; a stop
        // or a window change would not end a system call, SIGUSR1 (fatal) would.
        kill(pid, Signal::SIGWINCH).unwrap();
        kill(pid, Signal::SIGTSTP).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!signal_pending(child.id()));
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
