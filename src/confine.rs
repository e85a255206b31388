//! Every file and socket podfs opens under the runtime's directories, opened so that what
//! is opened is what was meant: never through a symlink below the configured directory.
//!
//! A registry entry, a pod's runtime directory or the allocation table can be a symlink
//! planted by whoever can write the home. When root mounts another user's home (fstab,
//! `podfs@`), following one would make podfs connect to a root-owned socket elsewhere on
//! the machine or rewrite a file outside the home. So the configured base (the data dir,
//! the runtime dir) is the one path resolved by name; below it every directory is opened
//! with `O_NOFOLLOW` relative to its parent, files are opened and replaced relative to
//! their directory, and sockets are connected through `/proc/self/fd` of the very socket
//! inode that was checked, with `SO_PEERCRED` telling whose process answered.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{fchmod, fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fsync, unlinkat, Gid, Uid, UnlinkatFlags};

/// An open directory under a configured base, reached without following a symlink.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a file is, from its own inode (never the target of a link).
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub ino: u64,
    pub size: u64,
    pub mtime: SystemTime,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Stamp {
    fn of(s: &FileStat) -> Stamp {
        let ns = |sec: i64, nsec: i64| i128::from(sec) * 1_000_000_000 + i128::from(nsec);
        let mtime_ns = ns(s.st_mtime, s.st_mtime_nsec);
        let mtime = if mtime_ns >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64)
        } else {
            std::time::UNIX_EPOCH
        };
        Stamp {
            ino: s.st_ino,
            size: u64::try_from(s.st_size).unwrap_or(0),
            mtime,
            mtime_ns,
            ctime_ns: ns(s.st_ctime, s.st_ctime_nsec),
            uid: s.st_uid,
            gid: s.st_gid,
            mode: s.st_mode,
        }
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// One plain name: not empty, not `.` or `..`, no `/` and no NUL.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(())
}

/// The plain names of a relative path, or an error for anything else (`..`, absolute).
pub fn names_of(rel: &Path) -> io::Result<Vec<&str>> {
    rel.components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(n) => n.to_str().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "a path that is not UTF-8")
            }),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a path below the base", rel.display()),
            )),
        })
        .collect()
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Dir {
    /// The configured base itself. Its own path is the user's choice and is followed.
    pub fn base(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// `rel` below `base`, each directory opened without following a symlink.
    pub fn beneath(base: &Path, rel: &Path) -> io::Result<Dir> {
        let mut dir = Dir::base(base)?;
        for name in names_of(rel)? {
            dir = dir.sub(name)?;
        }
        Ok(dir)
    }

    /// [`Dir::beneath`], creating missing directories with `mode` (owned, when podfs runs
    /// as root, by the owner of the directory they are made in).
    pub fn beneath_or_create(base: &Path, rel: &Path, mode: u32) -> io::Result<Dir> {
        if !base.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(base)?;
            if let Some(parent) = base.parent() {
                if let Ok(meta) = std::fs::metadata(parent) {
                    give_to(&File::open(base)?, meta.uid(), meta.gid());
                }
            }
        }
        let mut dir = Dir::base(base)?;
        for name in names_of(rel)? {
            dir = match dir.sub(name) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    nix::sys::stat::mkdirat(&dir.fd, name, Mode::from_bits_truncate(mode))
                        .or_else(|e| if e == Errno::EEXIST { Ok(()) } else { Err(e) })
                        .map_err(errno)?;
                    let sub = dir.sub(name)?;
                    let (uid, gid) = dir.owner()?;
                    give_to(&sub.fd, uid, gid);
                    sub
                }
                other => other?,
            };
        }
        Ok(dir)
    }

    /// A subdirectory; `ELOOP` when `name` is a symlink (whatever it points to).
    pub fn sub(&self, name: &str) -> io::Result<Dir> {
        check_name(name)?;
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // O_DIRECTORY on a symlink it may not follow says ENOTDIR; say what it is.
            Errno::ENOTDIR
                if self
                    .stat(name)
                    .is_ok_and(|s| s.mode & libc::S_IFMT == libc::S_IFLNK) =>
            {
                io::Error::from_raw_os_error(libc::ELOOP)
            }
            e => errno(e),
        })?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who owns this directory.
    pub fn owner(&self) -> io::Result<(u32, u32)> {
        let s = fstat(&self.fd).map_err(errno)?;
        Ok((s.st_uid, s.st_gid))
    }

    /// The entry `name` itself (a symlink is reported as one, not followed).
    pub fn stat(&self, name: &str) -> io::Result<Stamp> {
        check_name(name)?;
        let s = fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)?;
        Ok(Stamp::of(&s))
    }

    /// Open a file in this directory, never through a symlink.
    pub fn open(&self, name: &str, flags: OFlag, mode: u32) -> io::Result<File> {
        check_name(name)?;
        let fd = openat(
            &self.fd,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// The whole content of `name` and the stamp of the inode it was read from.
    pub fn read(&self, name: &str) -> io::Result<(Vec<u8>, Stamp)> {
        let mut f = self.open(name, OFlag::O_RDONLY, 0)?;
        let s = fstat(&f).map_err(errno)?;
        if SFlag::from_bits_truncate(s.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a regular file", self.path.join(name).display()),
            ));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(s.st_size).unwrap_or(0));
        f.read_to_end(&mut bytes)?;
        Ok((bytes, Stamp::of(&s)))
    }

    /// Replace `name` with `bytes` atomically: a temporary file in this directory, fsync,
    /// rename over `name`, fsync of the directory. The new file keeps the old one's mode
    /// and (when podfs runs as root) its owner, so the runtime can still write it; a new
    /// file gets `default_mode` and the directory's owner.
    pub fn replace(&self, name: &str, bytes: &[u8], default_mode: u32) -> io::Result<()> {
        check_name(name)?;
        let (mode, uid, gid) = match self.stat(name) {
            Ok(s) if s.mode & libc::S_IFMT == libc::S_IFREG => (s.mode & 0o7777, s.uid, s.gid),
            _ => {
                let (uid, gid) = self.owner()?;
                (default_mode, uid, gid)
            }
        };
        let (tmp_name, mut tmp) = loop {
            let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let candidate = format!(".podfs-{}-{seq}-{nanos}.tmp", std::process::id());
            match self.open(
                &candidate,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
                0o600,
            ) {
                Ok(f) => break (candidate, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        let written = (|| {
            tmp.write_all(bytes)?;
            fchmod(&tmp, Mode::from_bits_truncate(mode)).map_err(errno)?;
            give_to(&tmp, uid, gid);
            tmp.sync_all()?;
            renameat(&self.fd, tmp_name.as_str(), &self.fd, name).map_err(errno)
        })();
        if let Err(e) = written {
            let _ = unlinkat(&self.fd, tmp_name.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        // The rename is durable only once the directory entry is.
        fsync(&self.fd).map_err(errno)
    }

    /// Remove the file `name`; a missing one is not an error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Connect to the socket `name` in this directory. The socket inode is opened first
    /// (never through a symlink) and connected to through `/proc/self/fd`, so what was
    /// checked is what is connected to; then the peer must belong to `owner` (the owner of
    /// the runtime dir). `Ok(None)`: the listener's backlog is full (non-blocking only).
    pub fn connect(
        &self,
        name: &str,
        nonblocking: bool,
        owner: u32,
    ) -> io::Result<Option<UnixStream>> {
        check_name(name)?;
        let node = openat(
            &self.fd,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let s = fstat(&node).map_err(errno)?;
        match SFlag::from_bits_truncate(s.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFSOCK => {}
            SFlag::S_IFLNK => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is a symlink; podfs connects only to sockets in the runtime dir",
                        self.path.join(name).display()
                    ),
                ))
            }
            // What connect() says of a file that is not a socket.
            _ => return Err(io::Error::from_raw_os_error(libc::ECONNREFUSED)),
        }
        let target = if proc_fd_works() {
            PathBuf::from(format!("/proc/self/fd/{}", node.as_raw_fd()))
        } else {
            self.path.join(name)
        };
        let addr = UnixAddr::new(&target).map_err(errno)?;
        let mut flags = SockFlag::SOCK_CLOEXEC;
        if nonblocking {
            flags |= SockFlag::SOCK_NONBLOCK;
        }
        let sock =
            socket::socket(AddressFamily::Unix, SockType::Stream, flags, None).map_err(errno)?;
        match socket::connect(sock.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(Errno::EAGAIN) if nonblocking => return Ok(None),
            Err(Errno::EINPROGRESS) => {
                wait_connected(sock.as_fd())?;
            }
            Err(e) => return Err(errno(e)),
        }
        let peer = socket::getsockopt(&sock, socket::sockopt::PeerCredentials).map_err(errno)?;
        if peer.uid() != owner {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is served by uid {}, not by the runtime dir's owner {owner}",
                    self.path.join(name).display(),
                    peer.uid()
                ),
            ));
        }
        Ok(Some(UnixStream::from(sock)))
    }
}

/// Whether connecting through `/proc/self/fd/N` is possible here (procfs mounted).
fn proc_fd_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

fn wait_connected(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::from(100u16)).map_err(errno)?;
    let raw = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    match socket::getsockopt(&raw, socket::sockopt::SocketError).map_err(errno)? {
        0 => Ok(()),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// When podfs runs as root, give a file it made to `uid`/`gid` (the owner of the home it
/// works in), so that the runtime, which runs as that user, can still write it.
pub fn give_to(file: &impl AsFd, uid: u32, gid: u32) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Ok(s) = fstat(file) {
        if s.st_uid == uid && s.st_gid == gid {
            return;
        }
    }
    let _ = fchown(file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn tmp() -> tempfile::TempDir {
        crate::test_fixtures::tempdir()
    }

    #[test]
    fn directories_and_files_are_never_reached_through_a_symlink() {
        let home = tmp();
        let outside = tmp();
        std::fs::create_dir_all(home.path().join("run/real")).unwrap();
        std::fs::write(outside.path().join("pods.json"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), home.path().join("run/linked")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("pods.json"),
            home.path().join("run/pods.json"),
        )
        .unwrap();
        let run = Dir::base(&home.path().join("run")).unwrap();
        assert!(run.sub("real").is_ok());
        let e = run.sub("linked").unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
            "{e}"
        );
        let e = run.open("pods.json", OFlag::O_RDWR, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(Dir::beneath(home.path(), Path::new("run/linked")).is_err());
        assert!(Dir::beneath(home.path(), Path::new("run/../run")).is_err());
        // Replacing the link itself is fine: the rename replaces the link, not its target.
        run.replace("pods.json", b"{}", 0o600).unwrap();
        assert_eq!(
            std::fs::read(outside.path().join("pods.json")).unwrap(),
            b"secret"
        );
        assert_eq!(
            std::fs::read(home.path().join("run/pods.json")).unwrap(),
            b"{}"
        );
    }

    #[test]
    fn replace_keeps_the_mode_and_leaves_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp();
        let path = d.path().join("metadata.json");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let dir = Dir::base(d.path()).unwrap();
        dir.replace("metadata.json", b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        dir.replace("fresh.json", b"x", 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(d.path().join("fresh.json"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn sockets_are_connected_only_as_themselves_and_only_to_the_owner() {
        let run = tmp();
        let outside = tmp();
        std::fs::create_dir(run.path().join("child")).unwrap();
        let real = UnixListener::bind(run.path().join("child/sock")).unwrap();
        let foreign = UnixListener::bind(outside.path().join("sock")).unwrap();
        foreign.set_nonblocking(true).unwrap();
        std::fs::create_dir(run.path().join("evil")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("sock"), run.path().join("evil/sock"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), run.path().join("evildir")).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let base = Dir::base(run.path()).unwrap();
        let child = base.sub("child").unwrap();
        assert!(child.connect("sock", false, me).unwrap().is_some());
        let _ = real.accept().unwrap();
        let e = base
            .sub("evil")
            .unwrap()
            .connect("sock", false, me)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(base.sub("evildir").is_err());
        assert!(
            foreign.accept().is_err(),
            "the foreign socket was connected to"
        );
        // A peer of another uid is refused.
        let e = child
            .connect("sock", false, me.wrapping_add(1))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        // Nobody listening: the errno the runtime's liveness rule reads as gone.
        drop(real);
        let e = child.connect("sock", false, me).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
        let e = base.sub("missing").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
