//! The map of watches and the leases it hands out: the one place that decides which
//! watches are in use, and so which may end.
//!
//! **Invariant: a watch handed out is a watch that is followed.** A lease pins its entry
//! under the map's lock, and entries are ended (for lack of interest, for memory) under
//! that same lock, only when nothing uses them: no lease, no parked operation, no message
//! of ours on its way. Every use starts from a lease, so while the map's lock is held no
//! unused entry can become used, and no operation can be handed an entry that is being
//! ended, whatever other threads do meanwhile. (Checked under shuttle in
//! `tests/model_check.rs`.) Lock order: the map, then an entry's state.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

use crate::sync::Mutex;
use crate::watch::live::LiveState;

/// What the map holds: something with a live state to pin.
pub trait Leasable {
    fn live(&self) -> &Mutex<LiveState>;
}

/// An entry nobody uses, as [`Leases::end`] shows it.
#[derive(Debug, Clone)]
pub struct Unused<K> {
    pub key: K,
    pub last_interest: Instant,
    /// Bytes it holds of the memory budget.
    pub charged: usize,
}

pub struct Leases<K, W> {
    map: Mutex<HashMap<K, Arc<W>>>,
}

impl<K, W> Default for Leases<K, W> {
    fn default() -> Self {
        Leases {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// An entry in use: neither ended for lack of interest nor evicted while this lives.
pub struct Lease<W: Leasable>(Arc<W>);

impl<W: Leasable> Lease<W> {
    /// The entry itself, for what outlives the lease (a delivery callback).
    pub fn entry(&self) -> &Arc<W> {
        &self.0
    }
}

impl<W: Leasable> Clone for Lease<W> {
    /// Another lease on the same entry (already pinned by this one, so it cannot end
    /// meanwhile).
    fn clone(&self) -> Self {
        self.0.live().lock().pin(Instant::now());
        Lease(self.0.clone())
    }
}

impl<W: Leasable> std::ops::Deref for Lease<W> {
    type Target = W;
    fn deref(&self) -> &W {
        &self.0
    }
}

impl<W: Leasable> Drop for Lease<W> {
    fn drop(&mut self) {
        self.0.live().lock().unpin(Instant::now());
    }
}

impl<K: Hash + Eq + Clone, W: Leasable> Leases<K, W> {
    /// A lease on the entry of `key`, made by `make` if there is none (then the second
    /// value is true).
    pub fn lease(&self, key: &K, make: impl FnOnce() -> W) -> (Lease<W>, bool) {
        let mut map = self.map.lock();
        if let Some(w) = map.get(key) {
            w.live().lock().pin(Instant::now());
            return (Lease(w.clone()), false);
        }
        let w = Arc::new(make());
        w.live().lock().pin(Instant::now());
        map.insert(key.clone(), w.clone());
        (Lease(w), true)
    }

    /// Take the entry of `key` out of the map, used or not (its child is gone for good).
    pub fn remove(&self, key: &K) -> Option<Arc<W>> {
        self.map.lock().remove(key)
    }

    /// End entries nobody uses: `choose` sees each of them and names those to end, which
    /// are taken out of the map, all under its lock, and returned.
    pub fn end(&self, choose: impl FnOnce(Vec<Unused<K>>) -> Vec<K>) -> Vec<Arc<W>> {
        let mut map = self.map.lock();
        let unused: Vec<Unused<K>> = map
            .iter()
            .filter_map(|(key, w)| {
                let s = w.live().lock();
                s.is_idle().then(|| Unused {
                    key: key.clone(),
                    last_interest: s.last_interest(),
                    charged: s.charged(),
                })
            })
            .collect();
        if unused.is_empty() {
            return Vec::new();
        }
        choose(unused)
            .into_iter()
            .filter_map(|key| map.remove(&key))
            .collect()
    }

    /// Every entry now (for counters and the log).
    pub fn entries(&self) -> Vec<Arc<W>> {
        self.map.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
