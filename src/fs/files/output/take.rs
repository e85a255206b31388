//! The step at the heart of opening `output`: the new text since the cursor, and the
//! cursor moved past it, in one step with the cursor locked, so two readers never get the
//! same text; and the text charged to the memory budget in the same step, so that a reader
//! whose text does not fit gets an error with the cursor unmoved. Free of the rest of the
//! filesystem, so the model checker runs this very code.

use std::hash::Hash;
use std::sync::Arc;

use tracing::debug;

use crate::cursors::Cursors;
use crate::fs::body;
use crate::protocol::history::effective_cursor;
use crate::sync::Mutex;
use crate::watch::budget::Budget;
use crate::watch::live::LiveState;
use crate::watch::share::Share;

/// The outcome of one take.
#[derive(Debug)]
pub enum Take {
    /// The text (its body, `len` bytes, is charged to the budget), and the cursor before
    /// and after.
    Taken {
        share: Arc<Share>,
        len: usize,
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
        let mut s = state.lock();
        let Some(h) = s.history() else {
            return Take::Taken {
                share: Share::empty(),
                len: 0,
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
        let (start, end, after) = (h.text().len() - text.len(), h.text().len(), h.len());
        let share = s.lend(start, end);
        *cursor = after;
        Take::Taken {
            share,
            len: size,
            before,
            after,
        }
    })
}
