//! Every file and socket podfs opens under a runtime home, opened so that what is opened
//! is what was meant: never through a symlink below a directory podfs opened at start,
//! never belonging to anyone but the home's owner, and never read past a bound.
//!
//! A registry entry, a pod's runtime directory or the allocation table can be a symlink
//! planted by whoever can write the home. When root mounts another user's home (fstab,
//! `podfs@`), following one would make podfs connect to another user's socket or rewrite
//! a file outside the home. So the home's directories are opened once, at start
//! ([`crate::home`]); below them every directory is opened with `O_NOFOLLOW` relative to
//! its parent, files are opened and replaced relative to their directory, and sockets are
//! connected through `/proc/self/fd` of the very socket inode that was checked, with
//! `SO_PEERCRED` telling whose process answered.
//!
//! **Invariant, held by [`Dir`] itself:** a `Dir` carries the [`Policy`] of the home it was
//! opened in, and every directory, file and socket reached through it is checked against
//! that policy as it is opened: directories and files must belong to the home's owner (or
//! root), a socket's peer must be the owner, and no read returns more than the policy's
//! cap (a file's size never decides an allocation: a sparse terabyte costs a bounded read
//! and an `EFBIG`). There is no unchecked way to go from a `Dir` to what lies below it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{fchmod, fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fsync, unlinkat, Gid, Uid, UnlinkatFlags};

/// What everything reached through a [`Dir`] must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The uid that must own every directory and file below (root is accepted too: root
    /// may do anything anyway) and serve every socket. `None`: nobody is checked (a home
    /// podfs made itself, such as the demo's).
    pub owner: Option<u32>,
    /// The most bytes one read of a file may return; a larger file is `EFBIG`.
    pub read_cap: usize,
}

impl Policy {
    /// A policy that checks no owner, with a cap large enough for any registry a runtime
    /// writes (for homes podfs made itself and for tests).
    pub fn unchecked() -> Arc<Policy> {
        Arc::new(Policy {
            owner: None,
            read_cap: 64 << 20,
        })
    }

    fn check_owner(&self, what: &Path, uid: u32) -> io::Result<()> {
        match self.owner {
            Some(owner) if uid != owner && uid != 0 => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {uid}, not to the home's owner {owner}; podfs does \
                     not use it",
                    what.display()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The errno of a file larger than a read may return.
pub const TOO_BIG: i32 = libc::EFBIG;

/// An open directory of a runtime home, reached without following a symlink, and the
/// policy everything below it is held to.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    policy: Arc<Policy>,
}

/// What a file is, from its own inode (never the target of a link).
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub nlink: u64,
    pub mtime: SystemTime,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Stamp {
    pub(crate) fn of(s: &FileStat) -> Stamp {
        let ns = |sec: i64, nsec: i64| i128::from(sec) * 1_000_000_000 + i128::from(nsec);
        let mtime_ns = ns(s.st_mtime, s.st_mtime_nsec);
        let mtime = if mtime_ns >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64)
        } else {
            std::time::UNIX_EPOCH
        };
        Stamp {
            dev: s.st_dev,
            ino: s.st_ino,
            size: u64::try_from(s.st_size).unwrap_or(0),
            nlink: s.st_nlink,
            mtime,
            mtime_ns,
            ctime_ns: ns(s.st_ctime, s.st_ctime_nsec),
            uid: s.st_uid,
            gid: s.st_gid,
            mode: s.st_mode,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

pub(crate) fn errno(e: Errno) -> io::Error {
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

/// Read at most `cap` bytes of `f`; a file that holds more is [`TOO_BIG`], decided from
/// its size before anything is read where the size says so, and by the bounded read
/// where the file grows meanwhile.
fn read_bounded(mut f: File, size: u64, cap: usize) -> io::Result<Vec<u8>> {
    if size > cap as u64 {
        return Err(io::Error::from_raw_os_error(TOO_BIG));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    (&mut f).take(cap as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > cap {
        return Err(io::Error::from_raw_os_error(TOO_BIG));
    }
    Ok(bytes)
}

/// Everything an open file holds from its current offset, at most `cap` bytes
/// ([`TOO_BIG`] past that).
pub fn read_open(f: &mut File, cap: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    f.take(cap as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > cap {
        return Err(io::Error::from_raw_os_error(TOO_BIG));
    }
    Ok(bytes)
}

impl Dir {
    /// A directory by its path, which is followed (the caller decided it may be), held to
    /// `policy` from here on: the directory itself must belong to its owner.
    pub fn open_base(path: &Path, policy: Arc<Policy>) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let s = fstat(&fd).map_err(errno)?;
        policy.check_owner(path, s.st_uid)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
            policy,
        })
    }

    /// A directory podfs (or a test) made itself: followed, nobody's ownership checked.
    pub fn base(path: &Path) -> io::Result<Dir> {
        Self::open_base(path, Policy::unchecked())
    }

    /// A subdirectory; `ELOOP` when `name` is a symlink (whatever it points to), `EACCES`
    /// when it belongs to someone other than the home's owner.
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
        let path = self.path.join(name);
        let s = fstat(&fd).map_err(errno)?;
        self.policy.check_owner(&path, s.st_uid)?;
        Ok(Dir {
            fd,
            path,
            policy: self.policy.clone(),
        })
    }

    /// The names of a relative path below this directory, each opened as [`Dir::sub`].
    pub fn walk(&self, rel: &[impl AsRef<str>]) -> io::Result<Dir> {
        let mut dir = self.try_clone()?;
        for name in rel {
            dir = dir.sub(name.as_ref())?;
        }
        Ok(dir)
    }

    /// The same directory, on a descriptor of its own.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
            policy: self.policy.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The directory's descriptor (for `flock`, `inotify` and identity checks).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directory's own inode.
    pub fn stamp(&self) -> io::Result<Stamp> {
        Ok(Stamp::of(&fstat(&self.fd).map_err(errno)?))
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

    /// The plain names in this directory (`.` and `..` left out), unsorted.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let dup = self.fd.try_clone()?;
        let mut listing = nix::dir::Dir::from_fd(dup).map_err(errno)?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(errno)?;
            if let Ok(name) = entry.file_name().to_str() {
                if name != "." && name != ".." {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }

    /// Open a file in this directory, never through a symlink, and only one that belongs
    /// to the home's owner.
    pub fn open(&self, name: &str, flags: OFlag, mode: u32) -> io::Result<File> {
        check_name(name)?;
        let fd = openat(
            &self.fd,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(errno)?;
        let s = fstat(&fd).map_err(errno)?;
        self.policy.check_owner(&self.path.join(name), s.st_uid)?;
        Ok(File::from(fd))
    }

    /// The whole content of the regular file `name`, at most the policy's cap, and the
    /// stamp of the inode it was read from.
    pub fn read(&self, name: &str) -> io::Result<(Vec<u8>, Stamp)> {
        self.read_at_most(name, self.policy.read_cap)
    }

    /// [`Dir::read`] with a smaller cap (a pid is a few bytes).
    pub fn read_at_most(&self, name: &str, cap: usize) -> io::Result<(Vec<u8>, Stamp)> {
        let f = self.open(name, OFlag::O_RDONLY, 0)?;
        let s = Stamp::of(&fstat(&f).map_err(errno)?);
        if !s.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a regular file", self.path.join(name).display()),
            ));
        }
        let bytes = read_bounded(f, s.size, cap.min(self.policy.read_cap))?;
        Ok((bytes, s))
    }

    /// Replace `name` with `bytes` atomically: a temporary file in this directory, fsync,
    /// rename over `name`, fsync of the directory. The new file keeps the old one's mode
    /// and (when podfs runs as root) its owner, so the runtime can still write it; a new
    /// file gets `default_mode` and the directory's owner.
    pub fn replace(&self, name: &str, bytes: &[u8], default_mode: u32) -> io::Result<()> {
        check_name(name)?;
        let (mode, uid, gid) = match self.stat(name) {
            Ok(s) if s.is_file() => {
                self.policy.check_owner(&self.path.join(name), s.uid)?;
                (s.mode & 0o7777, s.uid, s.gid)
            }
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
    /// checked is what is connected to; then the peer must be the home's owner.
    /// `Ok(None)`: the listener's backlog is full (non-blocking only).
    ///
    /// Where `/proc/self/fd` is not there, nothing is connected to at all (`EACCES`): a
    /// connect by name would follow whatever the name leads to by then, which is not
    /// what was checked. Not being able to ask proves nothing about the pod.
    pub fn connect(&self, name: &str, nonblocking: bool) -> io::Result<Option<UnixStream>> {
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
        if !proc_fd_works() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "podfs connects to pod sockets only through /proc/self/fd, and /proc is not \
                 mounted here",
            ));
        }
        let target = PathBuf::from(format!("/proc/self/fd/{}", node.as_raw_fd()));
        let addr = UnixAddr::new(&target).map_err(errno)?;
        let mut flags = SockFlag::SOCK_CLOEXEC;
        if nonblocking {
            flags |= SockFlag::SOCK_NONBLOCK;
        }
        let sock =
            socket::socket(AddressFamily::Unix, SockType::Stream, flags, None).map_err(errno)?;
        match socket::connect(sock.as_raw_fd(), &addr) {
            Ok(()) => {}
            // A Unix stream connect completes at once or fails; a full backlog refuses a
            // non-blocking one with EAGAIN.
            Err(Errno::EAGAIN) if nonblocking => return Ok(None),
            Err(e) => return Err(errno(e)),
        }
        if let Some(owner) = self.policy.owner {
            let peer =
                socket::getsockopt(&sock, socket::sockopt::PeerCredentials).map_err(errno)?;
            if peer.uid() != owner {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is served by uid {}, not by the home's owner {owner}",
                        self.path.join(name).display(),
                        peer.uid()
                    ),
                ));
            }
        }
        Ok(Some(UnixStream::from(sock)))
    }
}

/// Whether connecting through `/proc/self/fd/N` is possible here (procfs mounted).
pub fn proc_fd_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| Path::new("/proc/self/fd").is_dir())
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

    fn owned_by(uid: u32, cap: usize) -> Arc<Policy> {
        Arc::new(Policy {
            owner: Some(uid),
            read_cap: cap,
        })
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
        let base = Dir::base(home.path()).unwrap();
        let run = base.sub("run").unwrap();
        assert!(run.sub("real").is_ok());
        let e = run.sub("linked").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        let e = run.open("pods.json", OFlag::O_RDWR, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(base.walk(&["run", "linked"]).is_err());
        assert!(base.walk(&["run", ".."]).is_err());
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
    fn a_file_larger_than_the_cap_is_efbig_whatever_its_size_claims() {
        let d = tmp();
        let me = nix::unistd::geteuid().as_raw();
        let dir = Dir::open_base(d.path(), owned_by(me, 1024)).unwrap();
        // A sparse terabyte: refused from its size, nothing read or reserved.
        let f = File::create(d.path().join("metadata.json")).unwrap();
        f.set_len(1 << 40).unwrap();
        let e = dir.read("metadata.json").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(TOO_BIG));
        std::fs::write(d.path().join("small"), vec![b'x'; 1024]).unwrap();
        assert_eq!(dir.read("small").unwrap().0.len(), 1024);
        std::fs::write(d.path().join("big"), vec![b'x'; 1025]).unwrap();
        assert_eq!(dir.read("big").unwrap_err().raw_os_error(), Some(TOO_BIG));
        assert_eq!(
            dir.read_at_most("small", 8).unwrap_err().raw_os_error(),
            Some(TOO_BIG)
        );
    }

    #[test]
    fn what_belongs_to_another_user_is_refused() {
        let d = tmp();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        if me == 0 {
            // Root owns everything here, and root is always accepted; pretend the home
            // belongs to someone else and give them one of the two entries.
            let other = 4242;
            nix::unistd::chown(&d.path().join("f"), Some(Uid::from_raw(other)), None).unwrap();
            let dir = Dir::open_base(d.path(), owned_by(other, 1 << 20)).unwrap();
            assert!(dir.read("f").is_ok(), "the owner's file");
            assert!(dir.sub("sub").is_ok(), "root's directory is accepted");
            nix::unistd::chown(&d.path().join("sub"), Some(Uid::from_raw(other + 1)), None)
                .unwrap();
            let e = dir.sub("sub").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        } else {
            // An ordinary user cannot give files away; the base itself is checked.
            let e = Dir::open_base(d.path(), owned_by(me + 1, 1 << 20)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        }
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
        let base = Dir::open_base(run.path(), owned_by(me, 1 << 20)).unwrap();
        let child = base.sub("child").unwrap();
        assert!(child.connect("sock", false).unwrap().is_some());
        let _ = real.accept().unwrap();
        let e = base
            .sub("evil")
            .unwrap()
            .connect("sock", false)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(base.sub("evildir").is_err());
        assert!(
            foreign.accept().is_err(),
            "the foreign socket was connected to"
        );
        // A peer of another uid is refused (a home said to belong to someone else).
        let theirs = Dir {
            fd: child.fd.try_clone().unwrap(),
            path: child.path.clone(),
            policy: owned_by(me.wrapping_add(1), 1 << 20),
        };
        let e = theirs.connect("sock", false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        // Nobody listening: the errno the runtime's liveness rule reads as gone.
        drop(real);
        let e = child.connect("sock", false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
        let e = base.sub("missing").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn names_lists_the_directory() {
        let d = tmp();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("b"), b"").unwrap();
        let mut names = Dir::base(d.path()).unwrap().names().unwrap();
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }
}
