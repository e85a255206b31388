//! The locks and threads the shared state machines use, named in one place.
//!
//! Modules that hold state shared between FUSE threads, the watch reactor and the worker
//! pool ([`crate::cursors`], [`crate::watch::live`], [`crate::fs::files::output::take`],
//! [`crate::fs::gate`], [`crate::pool`]) take their locks and threads from here, so that
//! the model-checking test (`tests/model_check.rs`) can compile those same modules
//! against `shuttle`'s and explore their interleavings.

pub use parking_lot::{Mutex, MutexGuard};
pub use std::thread;

/// A condition variable with `std`'s by-value `wait`, which both `parking_lot` and
/// `shuttle` can provide.
#[derive(Default)]
pub struct Condvar(parking_lot::Condvar);

impl Condvar {
    pub fn new() -> Self {
        Condvar(parking_lot::Condvar::new())
    }

    pub fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(&mut guard);
        guard
    }

    pub fn notify_one(&self) {
        self.0.notify_one();
    }

    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}
