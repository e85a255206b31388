//! Mounting: pre-flight checks with messages that say what to do, the mount itself (direct
//! where allowed, otherwise through `fusermount3` with auto-unmount), the session serving it
//! ([`crate::fs::adapter::Session`]), and a clean unmount on SIGINT, SIGTERM or SIGHUP.
//!
//! podfs makes the mount itself rather than through fuser's mount helpers, for two
//! reasons: an owner-only unprivileged mount with `auto_unmount` (so a killed podfs leaves
//! no dead mount behind) is something fuser's API refuses, and a direct mount through
//! fuser shows as type `fuse` rather than `fuse.podfs`, which `podfs unmount`, `mount -t`
//! and "already mounted" checks rely on.

use std::io::{IoSliceMut, Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::fs::adapter::Session;
use crate::fs::PodFs;
use crate::guard::Guard;
use crate::mountinfo::{mount_type, top_mount};

/// The filesystem type podfs mounts as, in `/proc/mounts`.
pub const FSTYPE: &str = "fuse.podfs";

/// How the filesystem is mounted.
#[derive(Debug, Clone)]
pub struct MountSettings {
    /// Let other users in; the kernel then checks the honest file modes.
    pub allow_other: bool,
    /// Extra `-o` options, passed to the kernel or fusermount3.
    pub options: Vec<String>,
    /// FUSE request threads.
    pub threads: usize,
    /// Shown as the source in /proc/mounts.
    pub fsname: String,
    /// Mount through fusermount3 even where a direct mount would work (tests).
    pub force_fusermount: bool,
}

impl Default for MountSettings {
    fn default() -> Self {
        MountSettings {
            allow_other: false,
            options: Vec::new(),
            threads: 2,
            fsname: "podfs".into(),
            force_fusermount: false,
        }
    }
}

/// A mount point as the user named it, made absolute without following a FUSE mount that
/// may be dead (relative paths and trailing slashes work everywhere).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("find the current directory", e))?
            .join(path)
    };
    // Normalise `.` and trailing slashes lexically; resolve symlinks of the parent only.
    let clean: PathBuf = joined.components().collect();
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) => match parent.canonicalize() {
            Ok(parent) => Ok(parent.join(name)),
            Err(_) => Ok(clean),
        },
        _ => Ok(clean),
    }
}

/// Check everything that would otherwise fail with an obscure error deep in the mount.
/// A stale FUSE mount (its server died) is detached so the mount can go ahead.
pub fn preflight(mountpoint: &Path) -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::Usage(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or, in a container, \
             pass the device through (--device /dev/fuse)"
                .into(),
        ));
    }
    if let Some(fstype) = mount_type(mountpoint) {
        if fstype == FSTYPE && !is_stale(mountpoint) {
            return Err(Error::Usage(format!(
                "{} is already mounted (a podfs mount); unmount it first: podfs unmount {}",
                mountpoint.display(),
                mountpoint.display()
            )));
        }
    }
    match std::fs::metadata(mountpoint) {
        Ok(meta) if !meta.is_dir() => Err(Error::Usage(format!(
            "mount point {} is not a directory",
            mountpoint.display()
        ))),
        Ok(_) => {
            // stat may be answered from the kernel's attribute cache; reading the directory
            // always reaches the (possibly dead) server.
            let mut entries = match std::fs::read_dir(mountpoint) {
                Ok(entries) => entries,
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                    return recover_stale(mountpoint)
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("read mount point {}", mountpoint.display()),
                        e,
                    ))
                }
            };
            if entries.next().is_some() {
                return Err(Error::Usage(format!(
                    "mount point {} is not empty; choose an empty directory",
                    mountpoint.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => recover_stale(mountpoint),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Usage(format!(
            "mount point {} does not exist; create it first: mkdir -p {}",
            mountpoint.display(),
            mountpoint.display()
        ))),
        Err(e) => Err(Error::io(
            format!("stat mount point {}", mountpoint.display()),
            e,
        )),
    }
}

fn is_stale(mountpoint: &Path) -> bool {
    std::fs::read_dir(mountpoint).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// "Transport endpoint is not connected": a FUSE server died without unmounting.
fn recover_stale(mountpoint: &Path) -> Result<()> {
    warn!(mountpoint = %mountpoint.display(), "stale FUSE mount found; detaching it");
    let detached = nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH).is_ok()
        || Command::new("fusermount3")
            .args(["-u", "-z", "--"])
            .arg(mountpoint)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if detached && std::fs::metadata(mountpoint).is_ok() {
        return preflight(mountpoint);
    }
    Err(Error::Usage(format!(
        "mount point {m} is a stale FUSE mount (Transport endpoint is not connected) and could \
         not be detached; run: fusermount3 -u -z {m}   (or as root: umount -l {m})",
        m = mountpoint.display()
    )))
}

/// How the mount was made, which decides how it is undone.
enum Made {
    Direct,
    /// fusermount3 keeps running with `auto_unmount`, watching `watchdog`: when podfs's end
    /// closes (podfs exits, however), it unmounts.
    Fusermount {
        watchdog: UnixStream,
        child: Child,
    },
}

/// What a direct or fusermount mount needs to know, as kernel option strings.
struct Options {
    flags: MsFlags,
    /// Options both the kernel and fusermount3 understand.
    common: Vec<String>,
}

fn options(settings: &MountSettings) -> Options {
    let mut flags =
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME;
    let mut common = Vec::new();
    if settings.allow_other {
        common.push("allow_other".to_string());
        common.push("default_permissions".to_string());
    }
    for opt in &settings.options {
        match opt.trim() {
            // podfs serves no devices, set-id or executable files: it always mounts nodev,
            // nosuid, noexec, and mount(8)'s implied "dev,suid" are ignored; atime is off.
            "" | "allow_other" | "rw" | "dev" | "suid" | "exec" | "nodev" | "nosuid" | "noexec"
            | "atime" | "noatime" | "relatime" | "strictatime" | "allow_root" => {}
            "default_permissions" => common.push("default_permissions".into()),
            "ro" => flags |= MsFlags::MS_RDONLY,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "async" => {}
            other if other.starts_with("fsname=") || other.starts_with("subtype=") => {}
            other => common.push(other.to_string()),
        }
    }
    common.dedup();
    Options { flags, common }
}

fn fsname(settings: &MountSettings) -> String {
    settings
        .options
        .iter()
        .find_map(|o| o.trim().strip_prefix("fsname=").map(str::to_string))
        .unwrap_or_else(|| settings.fsname.clone())
}

/// Whether this process may mount directly: root, with /dev/fuse openable.
fn direct_allowed() -> Option<OwnedFd> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let fd = nix::fcntl::open(
        "/dev/fuse",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    Some(fd)
}

fn mount_direct(dev: OwnedFd, mountpoint: &Path, settings: &MountSettings) -> Result<OwnedFd> {
    let o = options(settings);
    let mode = std::fs::metadata(mountpoint)
        .map_err(|e| Error::io(format!("stat {}", mountpoint.display()), e))?
        .mode()
        & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        dev.as_raw_fd(),
        mode,
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    for opt in &o.common {
        data.push(',');
        data.push_str(opt);
    }
    nix::mount::mount(
        Some(fsname(settings).as_str()),
        mountpoint,
        Some(FSTYPE),
        o.flags,
        Some(data.as_str()),
    )
    .map_err(|e| mount_error(mountpoint, std::io::Error::from(e)))?;
    Ok(dev)
}

fn mount_fusermount(mountpoint: &Path, settings: &MountSettings) -> Result<(OwnedFd, Made)> {
    let o = options(settings);
    let mut opts = vec![
        format!("fsname={}", fsname(settings).replace(',', "_")),
        "subtype=podfs".to_string(),
        "nosuid".into(),
        "nodev".into(),
        "noexec".into(),
        "noatime".into(),
        "auto_unmount".into(),
    ];
    if o.flags.contains(MsFlags::MS_RDONLY) {
        opts.push("ro".into());
    }
    if o.flags.contains(MsFlags::MS_SYNCHRONOUS) {
        opts.push("sync".into());
    }
    if o.flags.contains(MsFlags::MS_DIRSYNC) {
        opts.push("dirsync".into());
    }
    opts.extend(o.common);
    let (ours, theirs) = UnixStream::pair().map_err(|e| Error::io("create a socket pair", e))?;
    let theirs_fd = theirs.as_raw_fd();
    // fusermount3's messages go to an anonymous in-memory file: read on failure, never a
    // pipe that could break while it keeps watching for our exit, and no directory needed
    // (an ordinary user may have no writable temporary directory).
    let mut errors = std::fs::File::from(
        nix::sys::memfd::memfd_create(c"podfs-fusermount3", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::io("create an in-memory file", e.into()))?,
    );
    let stderr = errors
        .try_clone()
        .map_err(|e| Error::io("duplicate a file", e))?;
    let mut command = Command::new("fusermount3");
    command
        .arg("-o")
        .arg(opts.join(","))
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: between fork and exec only the async-signal-safe fcntl runs, on a descriptor
    // the child owns.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(theirs_fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "; fusermount3 was not found: install fuse3 (apt-get install fuse3), or mount as root"
        } else {
            ""
        };
        Error::MountFailed(format!("cannot run fusermount3: {e}{hint}"))
    })?;
    drop(theirs);
    match receive_fd(&ours) {
        Ok(fd) => Ok((
            fd,
            Made::Fusermount {
                watchdog: ours,
                child,
            },
        )),
        Err(e) => {
            drop(ours);
            let _ = child.wait();
            let mut message = String::new();
            let _ = errors.rewind();
            let _ = errors.read_to_string(&mut message);
            let message = message.trim();
            let detail = if message.is_empty() {
                e.to_string()
            } else {
                message.to_string()
            };
            let hint = if detail.contains("user_allow_other") {
                "; --allow-other as an ordinary user needs 'user_allow_other' in /etc/fuse.conf"
                    .to_string()
            } else if detail.contains("/dev/fuse") {
                dev_fuse_hint()
            } else {
                String::new()
            };
            Err(Error::MountFailed(format!(
                "cannot mount {}: {detail}{hint}",
                mountpoint.display()
            )))
        }
    }
}

/// fusermount3 opens /dev/fuse with the caller's own permissions, on purpose: where the
/// device is root's alone (many containers), no ordinary user can mount any FUSE
/// filesystem, and only an administrator can change that.
fn dev_fuse_hint() -> String {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if m.permissions().mode() & 0o006 != 0o006 => format!(
            "; /dev/fuse has mode {:04o}, so ordinary users cannot use FUSE on this machine \
             (hosts with udev make it 0666); an administrator can run: chmod 0666 /dev/fuse",
            m.permissions().mode() & 0o7777
        ),
        Ok(_) => String::new(),
        Err(_) => "; /dev/fuse is missing: load the fuse module (modprobe fuse)".into(),
    }
}

/// The /dev/fuse descriptor fusermount3 sends back over the socket.
fn receive_fd(socket: &UnixStream) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "fusermount3 sent no descriptor",
    ))
}

/// A mounted podfs; dropping it unmounts.
pub struct Mounted {
    session: Option<Session>,
    mountpoint: PathBuf,
    /// The kernel's id of this mount, to tell it from a later mount at the same path.
    mount_id: Option<u64>,
    made: Option<Made>,
    fs: Arc<PodFs>,
    /// Unmounts if this process dies without doing so (see [`crate::guard`]).
    guard: Option<Guard>,
}

impl Mounted {
    /// The guard, for an owner that has more to clean up than the mount (the demo); it
    /// then dismisses the guard itself when done.
    pub fn take_guard(&mut self) -> Option<Guard> {
        self.guard.take()
    }

    /// Whether the kernel side went away (someone ran `umount` or `fusermount -u`).
    pub fn finished(&self) -> bool {
        self.session
            .as_ref()
            .is_none_or(|s| s.wait_end(Duration::ZERO))
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmount and wait (bounded) for the session to end. A busy mount (a process still
    /// has a file open) is detached lazily instead of failing.
    pub fn unmount(mut self) {
        self.unmount_inner();
    }

    fn unmount_inner(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // First answer everyone podfs keeps waiting (readers of a silent child, a removal
        // waiting for a child to stop): an unmount must not wait for any child.
        self.fs.shutdown();
        if !session.wait_end(Duration::ZERO) && self.still_ours() {
            match &self.made {
                Some(Made::Fusermount { .. }) => {
                    let _ = Command::new("fusermount3")
                        .args(["-u", "-z", "-q", "--"])
                        .arg(&self.mountpoint)
                        .stderr(Stdio::null())
                        .status();
                }
                _ => {
                    if nix::mount::umount(&self.mountpoint).is_err() {
                        let _ = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH);
                    }
                }
            }
            // A process that still has a file open keeps a lazily detached mount's session
            // alive; once podfs exits, the kernel fails whatever it still asks.
            if !session.wait_end(Duration::from_millis(300)) {
                debug!("session still busy after unmount; exiting anyway");
            }
        }
        if let Some(Made::Fusermount {
            watchdog,
            mut child,
        }) = self.made.take()
        {
            drop(watchdog);
            // It exits once it sees the socket close; a stopped or stuck one (it runs as
            // root, so it cannot be killed from here) must not hold the unmount up.
            let deadline = Instant::now() + Duration::from_millis(300);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(guard) = self.guard.take() {
            guard.dismiss();
        }
        // Not joined: the session thread may still be finishing a request; the process is
        // about to end.
        drop(session);
        info!(mountpoint = %self.mountpoint.display(), "unmounted");
    }

    /// Whether the mount point still shows this mount (not one made since at the same path).
    ///
    /// Decided from /proc/self/mountinfo, never by a `stat` of the mount point: a FUSE
    /// server that touches its own mount can hang for good if it is killed meanwhile (the
    /// request is in userspace, the thread that would answer it is gone, and the kernel
    /// waits uninterruptibly for the answer).
    fn still_ours(&self) -> bool {
        match (self.mount_id, top_mount(&self.mountpoint).map(|m| m.0)) {
            (Some(ours), Some(top)) => ours == top,
            (_, None) => false,
            (None, Some(_)) => true,
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount_inner();
    }
}

/// Mount `fs` at `mountpoint` and return once the kernel has completed the handshake.
pub fn mount(fs: Arc<PodFs>, mountpoint: &Path, settings: &MountSettings) -> Result<Mounted> {
    mount_guarded(fs, mountpoint, settings, start_guard())
}

/// A cleanup guard, or none (with a warning) if it cannot be started.
pub fn start_guard() -> Option<Guard> {
    Guard::start()
        .inspect_err(|e| warn!(error = %e, "cannot start the cleanup guard"))
        .ok()
}

/// [`mount`] with a guard the caller started, and may have told of more to clean up
/// (the demo's pods and home), before anything existed to leave behind.
pub fn mount_guarded(
    fs: Arc<PodFs>,
    mountpoint: &Path,
    settings: &MountSettings,
    mut guard: Option<Guard>,
) -> Result<Mounted> {
    let mountpoint = absolute(mountpoint)?;
    preflight(&mountpoint)?;
    let direct = if settings.force_fusermount {
        None
    } else {
        direct_allowed()
    };
    let (fd, made) = match direct {
        Some(dev) => (mount_direct(dev, &mountpoint, settings)?, Made::Direct),
        None => mount_fusermount(&mountpoint, settings)?,
    };
    debug!(
        fusermount = matches!(made, Made::Fusermount { .. }),
        "mounted"
    );
    let mount_id = top_mount(&mountpoint).map(|m| m.0);
    let undo = |made: &Made| match made {
        Made::Direct => {
            let _ = nix::mount::umount2(&mountpoint, MntFlags::MNT_DETACH);
        }
        Made::Fusermount { .. } => {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "-q", "--"])
                .arg(&mountpoint)
                .stderr(Stdio::null())
                .status();
        }
    };
    // The guard hears of the mount before the session answers a single request, so
    // whoever sees the mount work knows the guard would clean it up.
    match (&mut guard, mount_id) {
        (Some(g), Some(id)) => {
            g.also_unmount(id, &mountpoint, matches!(made, Made::Fusermount { .. }))
        }
        (Some(_), None) => warn!(
            "no cleanup guard: the mount is not in mountinfo, a killed podfs would leave it behind"
        ),
        (None, _) => warn!("no cleanup guard: a killed podfs would leave its mount behind"),
    }
    let session = match Session::start(fs.clone(), fd, settings.allow_other, settings.threads) {
        Ok(s) => s,
        Err(e) => {
            undo(&made);
            return Err(Error::io("start the FUSE session", e));
        }
    };
    Ok(Mounted {
        mount_id,
        session: Some(session),
        mountpoint,
        made: Some(made),
        fs,
        guard,
    })
}

fn mount_error(mountpoint: &Path, e: std::io::Error) -> Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "; mounting needs root, or fusermount3 (apt-get install fuse3)"
        }
        Some(libc::ENODEV) => "; the fuse kernel module is not loaded (modprobe fuse)",
        Some(libc::EINVAL) => "; an -o option is not one the kernel knows",
        _ => "",
    };
    Error::MountFailed(format!("cannot mount {}: {e}{hint}", mountpoint.display()))
}

/// SIGINT, SIGTERM and SIGHUP, caught from the moment this is created. Create it before
/// mounting: a signal that arrives between the mount and the serving loop must still
/// unmount cleanly rather than kill the process and leave a stale mount.
pub struct StopSignals {
    stop: Arc<AtomicBool>,
    report: Arc<AtomicBool>,
    /// Readable when any of these signals arrived: what [`StopSignals::wait`] polls.
    arrived: UnixStream,
}

impl StopSignals {
    /// SIGINT, SIGTERM and SIGHUP stop the mount; SIGUSR1 asks for a one-line report of
    /// what the mount holds (as `dd` reports its progress), written to the log.
    pub fn install() -> Result<StopSignals> {
        let install = |e| Error::io("install signal handler", e);
        let (arrived, wake) = UnixStream::pair().map_err(install)?;
        arrived.set_nonblocking(true).map_err(install)?;
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(AtomicBool::new(false));
        for (sig, flag) in [
            (signal_hook::consts::SIGINT, &stop),
            (signal_hook::consts::SIGTERM, &stop),
            (signal_hook::consts::SIGHUP, &stop),
            (signal_hook::consts::SIGUSR1, &report),
        ] {
            signal_hook::flag::register(sig, flag.clone()).map_err(install)?;
            let wake = wake.try_clone().map_err(install)?;
            signal_hook::low_level::pipe::register(sig, wake).map_err(install)?;
        }
        Ok(StopSignals {
            stop,
            report,
            arrived,
        })
    }

    /// Sleep until one of the signals arrives, `mounted`'s session ends, or `timeout`
    /// passes (`None`: no timeout).
    pub fn wait(&self, mounted: &Mounted, timeout: Option<Duration>) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let timeout = timeout.map_or(PollTimeout::NONE, |t| {
            PollTimeout::from(u16::try_from(t.as_millis()).unwrap_or(u16::MAX))
        });
        let mut fds = vec![PollFd::new(self.arrived.as_fd(), PollFlags::POLLIN)];
        if let Some(session) = &mounted.session {
            fds.push(PollFd::new(session.end(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, timeout);
        // Drain what woke this; the flags say which signals.
        let mut buf = [0u8; 64];
        while matches!((&self.arrived).read(&mut buf), Ok(n) if n > 0) {}
    }

    pub fn received(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Clear a received signal (the demo counts them).
    pub fn reset(&self) {
        self.stop.store(false, Ordering::SeqCst);
    }

    /// Whether SIGUSR1 arrived since the last call.
    pub fn report_requested(&self) -> bool {
        self.report.swap(false, Ordering::SeqCst)
    }

    /// Block until a signal or until the mount disappears, then unmount. `report` runs
    /// on SIGUSR1.
    pub fn serve(&self, mounted: Mounted, report: impl Fn()) -> Result<()> {
        while !self.received() && !mounted.finished() {
            self.wait(&mounted, None);
            if self.report_requested() {
                report();
            }
        }
        if self.received() {
            info!("signal received; unmounting");
        } else {
            info!("unmounted from outside");
        }
        mounted.unmount();
        Ok(())
    }
}

/// `podfs unmount MNT`: unmount as root directly, otherwise through fusermount3.
pub fn unmount_path(mountpoint: &Path) -> Result<()> {
    let mountpoint = absolute(mountpoint)?;
    match mount_type(&mountpoint) {
        Some(t) if t.starts_with("fuse") => {}
        Some(t) => {
            return Err(Error::Usage(format!(
                "{} is a {t} mount, not podfs; not unmounting it",
                mountpoint.display()
            )))
        }
        None => {
            return Err(Error::Usage(format!(
                "{} is not a mount point; nothing to unmount",
                mountpoint.display()
            )))
        }
    }
    if nix::mount::umount(&mountpoint).is_ok() {
        return Ok(());
    }
    let status = Command::new("fusermount3")
        .args(["-u", "--"])
        .arg(&mountpoint)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(Error::MountFailed(format!(
            "could not unmount {m}: it may be busy (a shell inside it, an open file); close \
             those, or detach it lazily: fusermount3 -u -z {m}",
            m = mountpoint.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_explains_bad_mount_points() {
        let dir = crate::test_fixtures::tempdir();
        let missing = dir.path().join("nope");
        let err = preflight(&missing).unwrap_err().to_string();
        if Path::new("/dev/fuse").exists() {
            assert!(matches!(preflight(&missing), Err(Error::Usage(_))), "{err}");
            std::fs::write(dir.path().join("f"), b"").unwrap();
            assert!(matches!(preflight(dir.path()), Err(Error::Usage(_))));
            assert!(matches!(
                preflight(&dir.path().join("f")),
                Err(Error::Usage(_))
            ));
        } else {
            assert!(matches!(preflight(&missing), Err(Error::Usage(_))), "{err}");
        }
    }

    #[test]
    fn relative_paths_and_trailing_slashes_are_made_absolute() {
        let dir = crate::test_fixtures::tempdir();
        let canonical = dir.path().canonicalize().unwrap();
        std::fs::create_dir(canonical.join("m1")).unwrap();
        let with_slash = PathBuf::from(format!("{}/m1/", canonical.display()));
        assert_eq!(absolute(&with_slash).unwrap(), canonical.join("m1"));
        let dotted = canonical.join(".").join("m1");
        assert_eq!(absolute(&dotted).unwrap(), canonical.join("m1"));
    }

    #[test]
    fn options_pass_through() {
        let s = MountSettings {
            allow_other: true,
            options: vec![
                "ro".into(),
                "max_read=65536".into(),
                "dev".into(),
                "suid".into(),
                "fsname=mine".into(),
            ],
            ..Default::default()
        };
        let o = options(&s);
        assert!(o
            .flags
            .contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        assert_eq!(
            o.common,
            ["allow_other", "default_permissions", "max_read=65536"]
        );
        assert_eq!(fsname(&s), "mine");
    }
}
