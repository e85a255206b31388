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
//! takes the directory's lock; if podfs is killed in that moment, its cleanup guard sees
//! it exiting and aborts the connection (see [`crate::guard`]).

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;
use tracing::debug;

/// What the adapter implements with fuser's notifier (and tests with a recorder).
pub trait Kernel: Send + Sync + 'static {
    fn inval_entry(&self, parent: u64, name: &str);
    fn inval_inode(&self, ino: u64);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inval {
    Entry(u64, String),
    Inode(u64),
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
    /// To the delivery thread: an invalidation, and whether it ignores held directories.
    tx: Mutex<Option<mpsc::Sender<(Inval, bool)>>>,
    held: Arc<Mutex<Held>>,
}

impl KernelQueue {
    /// Start delivering to `kernel`. Before this, notifications are dropped (nothing is
    /// cached by a kernel that has not mounted us yet).
    pub fn connect(&self, kernel: Arc<dyn Kernel>) {
        let (tx, rx) = mpsc::channel::<(Inval, bool)>();
        let held = self.held.clone();
        let spawned = thread::Builder::new()
            .name("podfs-inval".into())
            .spawn(move || {
                for (inval, unheld) in rx {
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
            let _ = tx.send((inval, false));
        }
    }

    /// Deliver `inval` even into a held directory: the race a held directory prevents
    /// only when the invalidation comes second (one already inside the kernel when an
    /// `rmdir` takes the directory's lock). For the test that stages that race.
    pub fn push_unheld(&self, inval: Inval) {
        if let Some(tx) = self.tx.lock().as_ref() {
            let _ = tx.send((inval, true));
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
