//! Telling the kernel about changes it cannot see: dentries and attributes to drop when the
//! runtime changes a registry.
//!
//! An entry invalidation takes the directory's lock in the kernel. Two rules follow:
//! * it is never sent from a FUSE request thread: the kernel may hold that very lock while
//!   it waits for the request's answer. Invalidations go through a queue to a thread of
//!   their own;
//! * it is never sent into a directory while podfs's own `rmdir` there is in flight (the
//!   kernel holds the directory locked for it, and the removal rewrites the registry,
//!   which asks for invalidations): it waits until that `rmdir` has been answered. A thread
//!   blocked on that lock would otherwise keep `/dev/fuse` open if podfs were killed
//!   meanwhile, and the `rm` would hang for good.
//!
//! The second rule cannot cover an invalidation already inside the kernel when a request
//! takes the directory's lock. If podfs is killed in that moment, the delivery thread is
//! stuck in the kernel and cannot die, and a process that cannot finish dying keeps its
//! `/dev/fuse` open, so the `rmdir` is never answered. Hence the delivery thread writes
//! through a clone of the FUSE device ([`Device`]) held in a file table of its own, which
//! holds nothing else of podfs: once the rest of podfs is gone, its file table is
//! released, the kernel ends every request podfs had read and not answered, the `rmdir`
//! returns, the invalidation goes through, and the thread dies too. No privilege is
//! needed. Where no clone can be made (`/dev/fuse` is root's alone), the cleanup guard
//! aborts the connection instead (see [`crate::guard`]).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;
use tracing::debug;

/// What the adapter implements with fuser's notifier, [`Device`] with a clone of the
/// session's device, and tests with a recorder.
pub trait Kernel: Send + Sync + 'static {
    fn inval_entry(&self, parent: u64, name: &str);
    fn inval_inode(&self, ino: u64);
    /// Drop the cached pages of `ino` from byte `from` to the end (and its attributes).
    fn inval_pages(&self, ino: u64, from: u64);
    /// The one descriptor this kernel writes through, when the delivery thread may keep it
    /// alone in a file table of its own.
    fn private_fd(&self) -> Option<i32> {
        None
    }
}

/// A clone of a FUSE session's device (`FUSE_DEV_IOC_CLONE`): another descriptor of the
/// same connection, through which the kernel's caches are invalidated by writing the
/// notifications of the FUSE protocol directly.
pub struct Device {
    fd: OwnedFd,
}

/// `_IOR(229, 0, uint32_t)`, from `<linux/fuse.h>`.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;
/// Notification codes of `<linux/fuse.h>`.
const FUSE_NOTIFY_INVAL_INODE: i32 = 2;
const FUSE_NOTIFY_INVAL_ENTRY: i32 = 3;

impl Device {
    /// A clone of the session device `session`; fails where `/dev/fuse` may not be
    /// opened by this user (it is root's alone in many containers).
    pub fn clone_of(session: BorrowedFd<'_>) -> io::Result<Device> {
        let fd = nix::fcntl::open(
            "/dev/fuse",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let mut source = u32::try_from(session.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: the ioctl reads one u32 (the source descriptor) from the pointer.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), FUSE_DEV_IOC_CLONE as _, &mut source) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Device { fd })
    }

    fn notify(&self, code: i32, body: &[&[u8]]) -> io::Result<()> {
        let len: usize = 16 + body.iter().map(|b| b.len()).sum::<usize>();
        let mut header = Vec::with_capacity(16);
        header.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
        header.extend_from_slice(&code.to_ne_bytes());
        header.extend_from_slice(&0u64.to_ne_bytes());
        let mut iov = vec![io::IoSlice::new(&header)];
        iov.extend(body.iter().map(|b| io::IoSlice::new(b)));
        match nix::sys::uio::writev(&self.fd, &iov) {
            Ok(_) => Ok(()),
            // Nothing cached under that name or inode: nothing to drop.
            Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Kernel for Device {
    fn inval_entry(&self, parent: u64, name: &str) {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&parent.to_ne_bytes());
        out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(0).to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        let _ = self.notify(FUSE_NOTIFY_INVAL_ENTRY, &[&out, name.as_bytes(), b"\0"]);
    }

    fn inval_inode(&self, ino: u64) {
        self.inval_pages(ino, 0);
    }

    fn inval_pages(&self, ino: u64, from: u64) {
        // `fuse_notify_inval_inode_out`: the inode, the offset, and a length of 0 (to the
        // end of the file).
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&ino.to_ne_bytes());
        out.extend_from_slice(&i64::try_from(from).unwrap_or(i64::MAX).to_ne_bytes());
        out.extend_from_slice(&0i64.to_ne_bytes());
        let _ = self.notify(FUSE_NOTIFY_INVAL_INODE, &[&out]);
    }

    fn private_fd(&self) -> Option<i32> {
        Some(self.fd.as_fd().as_raw_fd())
    }
}

/// Give the calling thread a file table of its own holding only `keep` (and the standard
/// descriptors, for its log lines): nothing else of podfs, above all not the session's
/// own device, stays open because of this thread.
fn isolate(keep: i32) -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES)?;
    let keep = u32::try_from(keep).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: closes descriptors of this thread's private table only.
    unsafe {
        if keep > 3 {
            libc::close_range(3, keep - 1, 0);
        }
        libc::close_range(keep + 1, u32::MAX, 0);
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inval {
    Entry(u64, String),
    Inode(u64),
    /// An inode's pages from this byte on.
    Pages(u64, u64),
}

/// What the delivery thread is given, in order.
enum Item {
    /// An invalidation, and whether it ignores held directories.
    Inval(Inval, bool),
    /// Run once everything before it was delivered (on the publishing thread).
    After(Box<dyn FnOnce() + Send>),
}

#[derive(Default)]
struct Held {
    /// Directories with an `rmdir` in flight, and how many.
    busy: HashMap<u64, usize>,
    /// Entry invalidations waiting for those directories.
    deferred: HashMap<u64, Vec<Inval>>,
}

/// Entry invalidations of a directory held back while its `rmdir` is answered.
pub struct Hold {
    queue: Arc<KernelQueue>,
    dir: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.queue.release(self.dir);
    }
}

#[derive(Default)]
pub struct KernelQueue {
    /// To the delivery thread.
    tx: Mutex<Option<mpsc::Sender<Item>>>,
    held: Arc<Mutex<Held>>,
}

impl KernelQueue {
    /// Start delivering to `kernel`. Before this, notifications are dropped (nothing is
    /// cached by a kernel that has not mounted us yet).
    pub fn connect(&self, kernel: Arc<dyn Kernel>) {
        let (tx, rx) = mpsc::channel::<Item>();
        // What runs after a delivery runs on a thread of its own: the delivery thread has
        // no descriptor but the device's, and what follows a delivery tells pollers
        // through the session's.
        let (after_tx, after_rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let publisher = thread::Builder::new()
            .name("podfs-publish".into())
            .spawn(move || {
                for then in after_rx {
                    let _ = crate::error::contain("publishing a delivered change", || {
                        then();
                        Ok(())
                    });
                }
            });
        if publisher.is_err() {
            return;
        }
        let held = self.held.clone();
        let spawned = thread::Builder::new()
            .name("podfs-inval".into())
            .spawn(move || {
                if let Some(fd) = kernel.private_fd() {
                    if let Err(e) = isolate(fd) {
                        tracing::warn!(error = %e, "the invalidation thread shares podfs's descriptors");
                    }
                }
                for item in rx {
                    let (inval, unheld) = match item {
                        Item::Inval(inval, unheld) => (inval, unheld),
                        Item::After(then) => {
                            let _ = after_tx.send(then);
                            continue;
                        }
                    };
                    if let (Inval::Entry(dir, _), false) = (&inval, unheld) {
                        let mut h = held.lock();
                        if h.busy.contains_key(dir) {
                            h.deferred.entry(*dir).or_default().push(inval);
                            continue;
                        }
                    }
                    match &inval {
                        Inval::Entry(parent, name) => kernel.inval_entry(*parent, name),
                        Inval::Inode(ino) => kernel.inval_inode(*ino),
                        Inval::Pages(ino, from) => kernel.inval_pages(*ino, *from),
                    }
                    debug!(?inval, "kernel cache invalidated");
                }
            });
        if spawned.is_ok() {
            *self.tx.lock() = Some(tx);
        }
    }

    /// Stop delivering (at unmount); the thread ends.
    pub fn disconnect(&self) {
        self.tx.lock().take();
    }

    pub fn push(&self, inval: Inval) {
        if let Some(tx) = self.tx.lock().as_ref() {
            let _ = tx.send(Item::Inval(inval, false));
        }
    }

    /// Run `then` once everything pushed before it has been delivered; at once when
    /// nothing is delivered (no kernel yet, or no more).
    pub fn after(&self, then: Box<dyn FnOnce() + Send>) {
        let unsent = match self.tx.lock().as_ref() {
            Some(tx) => tx.send(Item::After(then)).err().map(|e| match e.0 {
                Item::After(then) => then,
                Item::Inval(..) => unreachable!("sent an After"),
            }),
            None => Some(then),
        };
        if let Some(then) = unsent {
            then();
        }
    }

    /// Deliver `inval` even into a held directory: the race a held directory prevents
    /// only when the invalidation comes second (one already inside the kernel when an
    /// `rmdir` takes the directory's lock). For the test that stages that race.
    pub fn push_unheld(&self, inval: Inval) {
        if let Some(tx) = self.tx.lock().as_ref() {
            let _ = tx.send(Item::Inval(inval, true));
        }
    }

    /// An `rmdir` in directory `dir` begins: hold entry invalidations for it until the
    /// returned guard is dropped (however the removal ends, a panic included).
    pub fn hold(self: &Arc<Self>, dir: u64) -> Hold {
        *self.held.lock().busy.entry(dir).or_default() += 1;
        Hold {
            queue: self.clone(),
            dir,
        }
    }

    /// That `rmdir` has been answered: send what waited once no other is in flight.
    fn release(&self, dir: u64) {
        let waiting = {
            let mut h = self.held.lock();
            let Some(n) = h.busy.get_mut(&dir) else {
                return;
            };
            *n -= 1;
            if *n > 0 {
                return;
            }
            h.busy.remove(&dir);
            h.deferred.remove(&dir).unwrap_or_default()
        };
        for inval in waiting {
            self.push(inval);
        }
    }
}

/// `log`'s page invalidations go through the queue, in order with everything else.
impl crate::watch::pages::PageKernel for KernelQueue {
    fn drop_pages(&self, ino: u64, from: u64) {
        self.push(Inval::Pages(ino, from));
    }

    fn after(&self, then: Box<dyn FnOnce() + Send>) {
        KernelQueue::after(self, then);
    }
}
