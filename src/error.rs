//! The one error type of podfs, with an exhaustive errno mapping.
//!
//! Every failure that can reach the kernel or the command line goes through [`Error`], so
//! the errno a shell user sees and the log level it is reported at are decided in one place.

use std::io;
use std::path::PathBuf;

use tracing::Level;

/// Convenience alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Run `f`, turning a panic into [`Error::Panicked`] (logged at error level), for every
/// place that owes somebody an answer: a panic must never leave a request unanswered or
/// take a thread that others wait on with it. The state podfs shares is behind
/// `parking_lot` locks, which a panic does not poison.
pub fn contain<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let e = Error::from_panic(&*payload);
            tracing::error!(operation = what, error = %e, "panic contained; answered with EIO");
            Err(e)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such pod, child or file.
    #[error("not found: {0}")]
    NotFound(String),
    /// A name that the runtime would refuse (empty, `.`, `..`, `/` or NUL inside).
    #[error("invalid pod name {0:?}")]
    InvalidName(String),
    /// A value written to a control file did not parse; nothing changed.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A write to a read-only control file.
    #[error("read-only file")]
    ReadOnly,
    /// An operation podfs refuses by design (mkdir, rename, ...).
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    /// The child is running a turn, or did not stop in time.
    #[error("busy: {0}")]
    Busy(String),
    /// The pod's socket did not answer (connect failed or no Snapshot in time).
    #[error("pod unreachable: {0}")]
    Unreachable(String),
    /// A write larger than the documented limit.
    #[error("message too large: {size} bytes, limit {limit}")]
    TooBig { size: usize, limit: usize },
    /// The child still has children of its own.
    #[error("{0}")]
    NotEmpty(String),
    /// Directory operation on a file, or the other way round.
    #[error("is a directory")]
    IsDir,
    #[error("not a directory")]
    NotDir,
    /// A runtime file is larger than podfs reads (a file's size never decides what podfs
    /// allocates): that file's error, nothing else's.
    #[error("{path}: larger than the {limit} bytes podfs reads of a registry file")]
    TooLarge { path: PathBuf, limit: usize },
    /// A runtime file exists but does not parse.
    #[error("{path}: corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// The peer broke the protocol (bad JSON, unexpected EOF, oversized line).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The pod refused the request with an `error` event.
    #[error("rejected by pod: {0}")]
    Rejected(String),
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Not now, and not an error of the child or of podfs: the caller may simply try again
    /// (a turn that outlasts the longest a FUSE request may wait).
    #[error("try again: {0}")]
    TryAgain(String),
    /// The mount is going away: what waited for a child is answered so, at once.
    #[error("the mount is going away")]
    Unmounting,
    /// The caller got a signal while podfs waited on its behalf.
    #[error("interrupted by a signal")]
    Interrupted,
    /// Holding this child's history would take podfs past its memory budget.
    #[error("over the memory budget: {0}")]
    OverBudget(String),
    /// A bug in podfs: an operation panicked. The request is answered; podfs keeps serving.
    #[error("internal error: {0}")]
    Panicked(String),
    /// `pods.json` stayed locked for longer than the bounded wait.
    #[error("{0}: lock not acquired in time (another process holds it)")]
    LockTimeout(PathBuf),
    /// A live parent did not confirm a reclaim; nothing was edited behind its back.
    #[error("not confirmed: {0}")]
    NotConfirmed(String),
    /// A registry entry names a socket outside the runtime dir; podfs never connects there.
    #[error("{0}: socket path outside the runtime dir, refusing to connect")]
    OutsideRuntimeDir(PathBuf),
    /// Command-line level problems (bad mount point, missing /dev/fuse, ...).
    #[error("{0}")]
    Usage(String),
    /// The kernel or fusermount3 refused the mount itself.
    #[error("{0}")]
    MountFailed(String),
    /// Any other I/O failure, with what podfs was doing.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The error for a caught panic, with its message when it has one.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        Error::Panicked(what)
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn corrupt(path: impl Into<PathBuf>, detail: impl ToString) -> Self {
        Error::Corrupt {
            path: path.into(),
            detail: detail.to_string(),
        }
    }

    /// The errno the kernel hands to the caller.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::InvalidName(_) | Error::InvalidValue(_) => libc::EINVAL,
            Error::ReadOnly => libc::EACCES,
            Error::NotPermitted(_) => libc::EPERM,
            Error::Busy(_) => libc::EBUSY,
            Error::Unreachable(_) => libc::EHOSTDOWN,
            Error::TooBig { .. } => libc::EFBIG,
            Error::NotEmpty(_) => libc::ENOTEMPTY,
            Error::IsDir => libc::EISDIR,
            Error::NotDir => libc::ENOTDIR,
            Error::TooLarge { .. } => libc::EFBIG,
            Error::Corrupt { .. } => libc::EIO,
            Error::Protocol(_) => libc::EPROTO,
            Error::Rejected(_) => libc::EIO,
            Error::Timeout(_) => libc::ETIMEDOUT,
            Error::TryAgain(_) => libc::EAGAIN,
            Error::Unmounting => libc::ENOTCONN,
            Error::Interrupted => libc::EINTR,
            Error::OverBudget(_) => libc::EFBIG,
            Error::Panicked(_) => libc::EIO,
            Error::LockTimeout(_) => libc::EAGAIN,
            Error::NotConfirmed(_) => libc::EIO,
            Error::OutsideRuntimeDir(_) => libc::EACCES,
            Error::Usage(_) => libc::EINVAL,
            Error::MountFailed(_) => libc::EPERM,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// The exit status of the command line, in the spirit of mount(8): 1 for what the user
    /// can fix in the command (arguments, mount point, home), 32 when the mount itself
    /// failed, 2 for any other failure of the system or a pod.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::InvalidName(_) => 1,
            Error::MountFailed(_) => 32,
            _ => 2,
        }
    }

    /// How loudly to log it: expected outcomes of user actions are not warnings.
    pub fn level(&self) -> Level {
        match self {
            Error::NotFound(_)
            | Error::InvalidName(_)
            | Error::InvalidValue(_)
            | Error::ReadOnly
            | Error::NotPermitted(_)
            | Error::IsDir
            | Error::NotDir
            | Error::TooBig { .. }
            | Error::NotEmpty(_)
            | Error::Busy(_)
            | Error::TryAgain(_)
            | Error::Unmounting
            | Error::Interrupted
            | Error::Unreachable(_) => Level::DEBUG,
            Error::Usage(_) | Error::MountFailed(_) => Level::INFO,
            Error::Protocol(_)
            | Error::Rejected(_)
            | Error::Timeout(_)
            | Error::OverBudget(_)
            | Error::TooLarge { .. }
            | Error::LockTimeout(_)
            | Error::OutsideRuntimeDir(_) => Level::WARN,
            Error::Corrupt { .. }
            | Error::NotConfirmed(_)
            | Error::Panicked(_)
            | Error::Io { .. } => Level::ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_matches_the_contract() {
        assert_eq!(Error::InvalidValue("x".into()).errno(), libc::EINVAL);
        assert_eq!(Error::Busy("x".into()).errno(), libc::EBUSY);
        assert_eq!(Error::Unreachable("x".into()).errno(), libc::EHOSTDOWN);
        assert_eq!(Error::TooBig { size: 2, limit: 1 }.errno(), libc::EFBIG);
        assert_eq!(Error::NotPermitted("mkdir".into()).errno(), libc::EPERM);
        assert_eq!(Error::corrupt("/x", "bad").errno(), libc::EIO);
        assert_eq!(Error::Interrupted.errno(), libc::EINTR);
        assert_eq!(Error::OverBudget("x".into()).errno(), libc::EFBIG);
        let caught = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
        let e = Error::from_panic(&*caught);
        assert_eq!(e.errno(), libc::EIO);
        assert!(matches!(e, Error::Panicked(m) if m == "boom"));
        let raw = Error::io("open", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(raw.errno(), libc::ENOSPC);
        let kindless = Error::io("x", io::Error::other("no errno"));
        assert_eq!(kindless.errno(), libc::EIO);
    }
}
