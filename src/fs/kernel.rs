//! Telling the kernel about changes it cannot see: dentries and attributes to drop when the
//! runtime changes a registry.
//!
//! A notification must never be sent from a FUSE request thread: the kernel may hold the
//! very directory lock the notification needs while it waits for that request's answer.
//! So they go through a queue to a thread of their own.

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
pub struct KernelQueue {
    tx: Mutex<Option<mpsc::Sender<Inval>>>,
}

impl KernelQueue {
    /// Start delivering to `kernel`. Before this, notifications are dropped (nothing is
    /// cached by a kernel that has not mounted us yet).
    pub fn connect(&self, kernel: Arc<dyn Kernel>) {
        let (tx, rx) = mpsc::channel::<Inval>();
        let spawned = thread::Builder::new()
            .name("podfs-inval".into())
            .spawn(move || {
                for inval in rx {
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
            let _ = tx.send(inval);
        }
    }
}
