//! The mount's read positions, one per (parent, child) and incarnation of that child.
//!
//! The runtime keeps its own cursors in the parent's memory and exposes none, so these are
//! podfs's alone: they start at 0, and at 0 again for a child that was removed and later
//! listed under the same name. The caller names the incarnation (how often the parent's
//! append-only `reclaimed_children` lists the name), so a removal podfs never saw still
//! resets the cursor.
//!
//! [`Cursors::update`] runs a read-and-advance with that cursor locked: two `output` readers
//! of one child are serialised, and the second starts where the first stopped, so they never
//! both receive the same text.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use crate::sync::Mutex;

struct Slot {
    incarnation: u64,
    cell: Arc<Mutex<u64>>,
}

pub struct Cursors<K> {
    slots: Mutex<HashMap<K, Slot>>,
}

impl<K: Hash + Eq + Clone> Default for Cursors<K> {
    fn default() -> Self {
        Cursors {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> Cursors<K> {
    /// The cursor of `key`'s `incarnation`; 0 if it has none (nothing is stored for a read).
    pub fn get(&self, key: &K, incarnation: u64) -> u64 {
        let cell = match self.slots.lock().get(key) {
            Some(slot) if slot.incarnation == incarnation => slot.cell.clone(),
            _ => return 0,
        };
        let value = *cell.lock();
        value
    }

    fn cell(&self, key: &K, incarnation: u64) -> Arc<Mutex<u64>> {
        let mut slots = self.slots.lock();
        match slots.get(key) {
            Some(slot) if slot.incarnation == incarnation => slot.cell.clone(),
            _ => {
                let cell = Arc::new(Mutex::new(0));
                slots.insert(
                    key.clone(),
                    Slot {
                        incarnation,
                        cell: cell.clone(),
                    },
                );
                cell
            }
        }
    }

    /// Set the cursor; returns the value it had.
    pub fn set(&self, key: &K, incarnation: u64, value: u64) -> u64 {
        std::mem::replace(&mut *self.cell(key, incarnation).lock(), value)
    }

    /// Run `f` on the cursor with it locked (a read-and-advance is atomic).
    pub fn update<R>(&self, key: &K, incarnation: u64, f: impl FnOnce(&mut u64) -> R) -> R {
        let cell = self.cell(key, incarnation);
        let mut value = cell.lock();
        f(&mut value)
    }

    /// Drop the cursors of keys that `keep` refuses (children no longer listed).
    pub fn retain(&self, keep: impl Fn(&K) -> bool) {
        self.slots.lock().retain(|k, _| keep(k));
    }

    pub fn forget(&self, key: &K) {
        self.slots.lock().remove(key);
    }

    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
