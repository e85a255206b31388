//! Mounting: pre-flight checks with messages that say what to do, the fuser session, and a
//! clean unmount on SIGINT, SIGTERM or SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::fs::adapter::Adapter;
use crate::fs::PodFs;

/// How the filesystem is mounted.
#[derive(Debug, Clone)]
pub struct MountSettings {
    /// Let other users in; the kernel then checks the honest file modes.
    pub allow_other: bool,
    /// Extra `-o` options, passed through as the kernel or fusermount understand them.
    pub options: Vec<String>,
    /// Request threads; blocking work runs on threads of its own regardless.
    pub threads: usize,
    /// Shown as the source in /proc/mounts.
    pub fsname: String,
}

impl Default for MountSettings {
    fn default() -> Self {
        MountSettings {
            allow_other: false,
            options: Vec::new(),
            threads: 2,
            fsname: "podfs".into(),
        }
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

/// "Transport endpoint is not connected": a FUSE server died without unmounting.
fn recover_stale(mountpoint: &Path) -> Result<()> {
    warn!(mountpoint = %mountpoint.display(), "stale FUSE mount found; detaching it");
    let detached = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).is_ok()
        || std::process::Command::new("fusermount3")
            .args(["-u", "-z", "--"])
            .arg(mountpoint)
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

fn config(settings: &MountSettings) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(settings.fsname.clone()),
        MountOption::Subtype("podfs".into()),
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    if settings.allow_other {
        config.acl = SessionACL::All;
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    for opt in &settings.options {
        match opt.trim() {
            // podfs serves no devices, set-id or executable files: it always mounts nodev,
            // nosuid, noexec, and mount(8)'s implied "dev,suid" are ignored; atime is off.
            "" | "allow_other" | "rw" | "dev" | "suid" | "exec" | "nodev" | "nosuid" | "noexec"
            | "atime" | "noatime" | "relatime" | "strictatime" => {}
            "default_permissions" => config.mount_options.push(MountOption::DefaultPermissions),
            "ro" => config.mount_options.push(MountOption::RO),
            "sync" => config.mount_options.push(MountOption::Sync),
            "async" => config.mount_options.push(MountOption::Async),
            "dirsync" => config.mount_options.push(MountOption::DirSync),
            "allow_root" if !settings.allow_other => config.acl = SessionACL::RootAndOwner,
            "allow_root" => {}
            other => match other.split_once('=') {
                Some(("fsname", name)) => {
                    config
                        .mount_options
                        .retain(|o| !matches!(o, MountOption::FSName(_)));
                    config
                        .mount_options
                        .push(MountOption::FSName(name.to_string()));
                }
                Some(("subtype", _)) => {}
                _ => config
                    .mount_options
                    .push(MountOption::CUSTOM(other.to_string())),
            },
        }
    }
    config.n_threads = Some(settings.threads.max(1));
    config
}

/// A mounted podfs; dropping it unmounts.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    /// The kernel's id of this mount, to tell it from a later mount at the same path.
    mount_id: Option<u64>,
}

impl Mounted {
    /// Whether the kernel side went away (someone ran `umount` or `fusermount -u`).
    pub fn finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
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
        if !session.guard.is_finished() && self.still_ours() {
            // Plain unmount first; if busy, detach, then give the session a moment to end.
            if nix::mount::umount(&self.mountpoint).is_err() {
                let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::process::Command::new("fusermount3")
                    .args(["-u", "-z", "-q", "--"])
                    .arg(&self.mountpoint)
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while !session.guard.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if !session.guard.is_finished() {
                warn!("session still busy after unmount; exiting anyway");
            }
        }
        // Not joined: joining drops fuser's own mount handle, which unmounts by path when it
        // cannot yet tell that the kernel has let go, and by then the path may hold a new
        // mount (the next `podfs mount` at the same place). The process is about to end.
        std::mem::forget(session);
        info!(mountpoint = %self.mountpoint.display(), "unmounted");
    }

    /// Whether the mount point still shows this mount (not one made since at the same path).
    ///
    /// Decided from /proc/self/mountinfo, never by a `stat` of the mount point: a FUSE
    /// server that touches its own mount can hang for good if it is killed meanwhile (the
    /// request is in userspace, the thread that would answer it is gone, and the kernel
    /// waits uninterruptibly for the answer).
    fn still_ours(&self) -> bool {
        match (self.mount_id, top_mount_id(&self.mountpoint)) {
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
    preflight(mountpoint)?;
    // Resolved before mounting, while the path still shows the plain directory.
    let mountpoint = mountpoint
        .canonicalize()
        .map_err(|e| Error::io(format!("resolve {}", mountpoint.display()), e))?;
    let session = fuser::Session::new(Adapter::new(fs), &mountpoint, &config(settings))
        .map_err(|e| mount_error(&mountpoint, e))?;
    let session = session
        .spawn()
        .map_err(|e| Error::io("start the FUSE session", e))?;
    Ok(Mounted {
        mount_id: top_mount_id(&mountpoint),
        session: Some(session),
        mountpoint,
    })
}

fn mount_error(mountpoint: &Path, e: std::io::Error) -> Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "; mounting needs root, or fusermount3 (apt-get install fuse3), and for \
             --allow-other 'user_allow_other' in /etc/fuse.conf"
        }
        Some(libc::ENODEV) => "; the fuse kernel module is not loaded (modprobe fuse)",
        _ if e.kind() == std::io::ErrorKind::NotFound => {
            "; fusermount3 was not found: install fuse3 or run as root"
        }
        _ => "",
    };
    Error::Usage(format!("cannot mount {}: {e}{hint}", mountpoint.display()))
}

/// SIGINT, SIGTERM and SIGHUP, caught from the moment this is created. Create it before
/// mounting: a signal that arrives between the mount and the serving loop must still
/// unmount cleanly rather than kill the process and leave a stale mount.
pub struct StopSignals(Arc<AtomicBool>);

impl StopSignals {
    pub fn install() -> Result<StopSignals> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::flag::register(sig, stop.clone())
                .map_err(|e| Error::io("install signal handler", e))?;
        }
        Ok(StopSignals(stop))
    }

    pub fn received(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Block until a signal or until the mount disappears, then unmount.
    pub fn serve(&self, mounted: Mounted) -> Result<()> {
        while !self.received() && !mounted.finished() {
            thread::sleep(Duration::from_millis(50));
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
    let fuse = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split(' ');
            let (_, target, fstype) = (f.next(), f.next(), f.next());
            target.map(unescape_mounts) == Some(mountpoint.display().to_string())
                && fstype.is_some_and(|t| t.starts_with("fuse"))
        });
    if !fuse {
        return Err(Error::Usage(format!(
            "{} is not a FUSE mount; nothing to unmount",
            mountpoint.display()
        )));
    }
    if nix::mount::umount(mountpoint).is_ok() {
        return Ok(());
    }
    let status = std::process::Command::new("fusermount3")
        .args(["-u", "--"])
        .arg(mountpoint)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(Error::Usage(format!(
            "could not unmount {m}: it may be busy (a shell inside it, an open file); \
             close those, or detach it lazily: fusermount3 -u -z {m}",
            m = mountpoint.display()
        ))),
    }
}

/// The id of the topmost mount at `path`, from /proc/self/mountinfo (the last entry for a
/// mount point is the one on top, so search from the end).
fn top_mount_id(path: &Path) -> Option<u64> {
    let wanted = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .rev()
        .find_map(|l| {
            let mut fields = l.split(' ');
            let id = fields.next()?.parse().ok()?;
            let target = fields.nth(3)?;
            (unescape_mounts(target) == wanted).then_some(id)
        })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mounts(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_explains_bad_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = preflight(&missing).unwrap_err().to_string();
        if Path::new("/dev/fuse").exists() {
            assert!(err.contains("does not exist"), "{err}");
            std::fs::write(dir.path().join("f"), b"").unwrap();
            let err = preflight(dir.path()).unwrap_err().to_string();
            assert!(err.contains("not empty"), "{err}");
            let err = preflight(&dir.path().join("f")).unwrap_err().to_string();
            assert!(err.contains("not a directory"), "{err}");
        } else {
            assert!(err.contains("/dev/fuse"), "{err}");
        }
    }

    #[test]
    fn the_topmost_mount_is_found_without_touching_it() {
        let root = top_mount_id(Path::new("/")).expect("/ is a mount point");
        let proc_id = top_mount_id(Path::new("/proc")).expect("/proc is a mount point");
        assert_ne!(root, proc_id);
        assert_eq!(top_mount_id(Path::new("/no/such/mount")), None);
    }

    #[test]
    fn mounts_escapes() {
        assert_eq!(unescape_mounts("/a\\040b"), "/a b");
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
        let c = config(&s);
        assert_eq!(c.acl, SessionACL::All);
        assert!(c.mount_options.contains(&MountOption::DefaultPermissions));
        assert!(c.mount_options.contains(&MountOption::RO));
        assert!(c
            .mount_options
            .contains(&MountOption::CUSTOM("max_read=65536".into())));
        assert!(
            c.mount_options.contains(&MountOption::NoSuid),
            "mount(8)'s implied suid is ignored"
        );
        assert!(c
            .mount_options
            .contains(&MountOption::FSName("mine".into())));
        assert!(!c
            .mount_options
            .contains(&MountOption::FSName("podfs".into())));
    }
}
