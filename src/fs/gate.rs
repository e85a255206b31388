//! Cursor values closed but not yet applied, and the operations that wait for them.
//!
//! A `cursor` value takes effect when the last descriptor of its open file is closed,
//! which the kernel reports with RELEASE, sent after `close()` has already returned. So in
//! `echo 0 > cursor; cat output` the `open` of `output` can reach podfs before the RELEASE
//! that sets 0. A value whose writer has closed (a FLUSH with a complete value) is held
//! here until its RELEASE; the operations that read the cursor wait for it, briefly: a
//! value still held by another descriptor (a `dup`, a forked child) is not the cursor's
//! yet, and a reader goes on with the old value once the bound passes.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use crate::sync::Mutex;

use crate::watch::live::{Waiter, Wake};

struct Held {
    handles: usize,
    waiters: Vec<(u64, Waiter)>,
}

/// Keys (children) with cursor values on their way, and who waits for them.
pub struct Gates<K> {
    held: Mutex<HashMap<K, Held>>,
    next: Mutex<u64>,
}

impl<K> Default for Gates<K> {
    fn default() -> Self {
        Gates {
            held: Mutex::new(HashMap::new()),
            next: Mutex::new(0),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> Gates<K> {
    /// A value for `key` was closed and waits for its release.
    pub fn hold(&self, key: &K) {
        self.held
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Held {
                handles: 0,
                waiters: Vec::new(),
            })
            .handles += 1;
    }

    /// That value was applied (or dropped): wake the waiters once none is left.
    pub fn release(&self, key: &K) {
        let woken = {
            let mut held = self.held.lock();
            let Some(h) = held.get_mut(key) else {
                return;
            };
            h.handles = h.handles.saturating_sub(1);
            if h.handles > 0 {
                return;
            }
            held.remove(key).map(|h| h.waiters).unwrap_or_default()
        };
        for (_, w) in woken {
            w(Wake::Ready);
        }
    }

    pub fn is_held(&self, key: &K) -> bool {
        self.held.lock().contains_key(key)
    }

    /// Run `then` once `key` holds no value, or when `expire` (which the caller schedules)
    /// is called. Returns that expiry, or runs `then` at once if nothing is held.
    pub fn park(self: &Arc<Self>, key: &K, then: Waiter) -> Option<Box<dyn FnOnce() + Send>> {
        let id = {
            let mut next = self.next.lock();
            *next += 1;
            *next
        };
        {
            let mut held = self.held.lock();
            match held.get_mut(key) {
                Some(h) => h.waiters.push((id, then)),
                None => {
                    drop(held);
                    then(Wake::Ready);
                    return None;
                }
            }
        }
        let gates = Arc::downgrade(self);
        let key = key.clone();
        Some(Box::new(move || {
            let Some(gates) = gates.upgrade() else {
                return;
            };
            let waiter = {
                let mut held = gates.held.lock();
                held.get_mut(&key).and_then(|h| {
                    let i = h.waiters.iter().position(|(w, _)| *w == id)?;
                    Some(h.waiters.swap_remove(i).1)
                })
            };
            if let Some(w) = waiter {
                w(Wake::Expired);
            }
        }))
    }
}

// Tested under the model checker (`tests/model_check.rs`), which compiles this very file
// against shuttle's locks.
