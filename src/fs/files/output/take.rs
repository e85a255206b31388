//! The step at the heart of opening `output`: the new text since the cursor, and the
//! cursor moved past it, in one step with the cursor locked, so two readers never get the
//! same text; and the text charged to the memory budget in the same step, so that a reader
//! whose text does not fit gets an error with the cursor unmoved. Free of the rest of the
//! filesystem, so the model checker runs this very code.

use std::hash::Hash;

use tracing::debug;

use crate::cursors::Cursors;
use crate::fs::body;
use crate::protocol::history::effective_cursor;
use crate::sync::Mutex;
use crate::watch::budget::Budget;
use crate::watch::live::LiveState;

/// The outcome of one take.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// The text as a file body (newline-terminated), charged to the budget, and the
    /// cursor before and after.
    Taken {
        bytes: Vec<u8>,
        before: u64,
        after: u64,
    },
    /// The text (this many bytes) does not fit the budget now; nothing was taken.
    NeedsRoom(usize),
}

/// Take the new text of `state`'s history after the cursor of `key`. Locks the cursor,
/// then the state (the order every taker uses).
pub fn take<K: Hash + Eq + Clone>(
    cursors: &Cursors<K>,
    key: &K,
    incarnation: u64,
    state: &Mutex<LiveState>,
    budget: &Budget,
) -> Take {
    cursors.update(key, incarnation, |cursor| {
        let s = state.lock();
        let Some(h) = s.history() else {
            return Take::Taken {
                bytes: Vec::new(),
                before: *cursor,
                after: *cursor,
            };
        };
        let before = *cursor;
        let start = effective_cursor(h.len(), *cursor);
        if start < *cursor {
            debug!(
                cursor = *cursor,
                len = h.len(),
                "the history is shorter than the cursor; starting over from its start"
            );
        }
        let text = h.text_from(start);
        let size = body::text_len(text) as usize;
        if !budget.resize(0, size) {
            return Take::NeedsRoom(size);
        }
        let bytes = body::text(text);
        *cursor = h.len();
        Take::Taken {
            bytes,
            before,
            after: h.len(),
        }
    })
}
