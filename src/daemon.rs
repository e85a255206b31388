//! `podfs mount --daemon`: return once the mount is ready, keep serving in the background.
//!
//! The process re-executes itself without a controlling terminal instead of forking: a fork
//! after threads exist (the FUSE session has several) is unsafe. The child reports "ready"
//! on a pipe once the kernel has completed the FUSE handshake; until then the parent
//! forwards everything the child prints, so a failed mount shows its real error.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Set in the child's environment; its value is irrelevant.
pub const CHILD_ENV: &str = "PODFS_DAEMON_CHILD";
const READY: &str = "podfs-ready";

/// In the parent: start the child and wait until it is mounted or has failed.
pub fn start_in_background() -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locate the podfs binary", e))?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let mut child = unsafe {
        Command::new(exe)
            .args(&args)
            .env(CHILD_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A session of its own: no terminal, and Ctrl-C in the caller's shell does not
            // reach it.
            .pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            })
            .spawn()
            .map_err(|e| Error::io("start the background podfs", e))?
    };
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    if line.trim() == READY {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child
        .wait()
        .map_err(|e| Error::io("wait for the background podfs", e))?;
    let message = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("podfs: "))
        .map(str::to_string)
        .unwrap_or_else(|| format!("the background podfs exited with {status} before mounting"));
    // The background podfs's own exit status says what kind of failure it was.
    Err(match status.code() {
        Some(1) => Error::Usage(message),
        Some(32) => Error::MountFailed(message),
        _ => Error::io(
            message,
            std::io::Error::other("the background podfs failed"),
        ),
    })
}

/// In the child: tell the parent the mount is ready, then detach from its pipes. Without
/// a log file, the log goes to the system log from here on.
pub fn report_ready(log_file: bool) {
    println!("{READY}");
    if !log_file {
        crate::logs::to_system_log();
    }
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    if let Ok(devnull) = devnull {
        use std::os::fd::AsRawFd;
        // Logs went to the pipe until now; from here on they go to the log file or the
        // system log.
        unsafe {
            libc::dup2(devnull.as_raw_fd(), 1);
            libc::dup2(devnull.as_raw_fd(), 2);
        }
    }
}
