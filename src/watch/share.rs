//! `output`'s snapshots, shared with the text they were taken from.
//!
//! An open of `output` takes the text after the cursor: often a whole history, megabytes,
//! and copying it at every open cost more than reading it. Within an epoch of the text
//! (see [`super::pages`]) a history only grows at its end, so the bytes a take covers stay
//! where they are, and a snapshot can be a range of the live text.
//!
//! **Invariant: a share reads the bytes it was taken with, whatever the text does later.**
//! Before the watch replaces its text with one that does not extend it, or drops it, it
//! copies every share still open out of the old text ([`Shares::keep`]). Both that and
//! every read of a share happen under the watch's state lock, so no read sees a range of
//! a text that is no longer the one it was taken from.

use std::sync::{Arc, Weak};

use crate::sync::Mutex;

/// One open's snapshot: bytes `start..end` of the text it was taken from.
pub struct Share {
    start: usize,
    end: usize,
    /// The bytes, once the text they were taken from is gone.
    copy: Mutex<Option<Box<str>>>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share({}..{})", self.start, self.end)
    }
}

impl Share {
    /// An empty share, of no text.
    pub fn empty() -> Arc<Share> {
        Arc::new(Share {
            start: 0,
            end: 0,
            copy: Mutex::new(None),
        })
    }

    /// The share's text: `live` is the watch's text now, read under its state lock.
    pub fn with_text<R>(&self, live: Option<&str>, f: impl FnOnce(&str) -> R) -> R {
        let copy = self.copy.lock();
        match copy.as_deref() {
            Some(kept) => f(kept),
            None => f(live.and_then(|t| t.get(self.start..self.end)).unwrap_or("")),
        }
    }
}

/// The shares a watch has lent out of its text.
#[derive(Default)]
pub struct Shares {
    lent: Vec<Weak<Share>>,
}

impl Shares {
    /// Lend bytes `start..end` of the text.
    pub fn lend(&mut self, start: usize, end: usize) -> Arc<Share> {
        // Closed opens leave dead entries: drop them as the list grows, so it holds
        // about as many entries as there are open shares.
        if self.lent.len() >= 16 && self.lent.len().is_power_of_two() {
            self.lent.retain(|w| w.strong_count() > 0);
        }
        let share = Arc::new(Share {
            start,
            end,
            copy: Mutex::new(None),
        });
        self.lent.push(Arc::downgrade(&share));
        share
    }

    /// `text` is about to be replaced by one that does not extend it, or dropped: every
    /// share still open keeps a copy of its bytes.
    pub fn keep(&mut self, text: &str) {
        for share in self.lent.drain(..).filter_map(|w| w.upgrade()) {
            let mut copy = share.copy.lock();
            if copy.is_none() {
                *copy = Some(text.get(share.start..share.end).unwrap_or("").into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_reads_its_bytes_after_the_text_is_replaced() {
        let mut shares = Shares::default();
        let text = String::from("hello world");
        let a = shares.lend(6, 11);
        let closed = shares.lend(0, 5);
        drop(closed);
        assert_eq!(a.with_text(Some(&text), str::to_owned), "world");
        // The text grows: the share still reads the same range.
        let grown = format!("{text} and more");
        assert_eq!(a.with_text(Some(&grown), str::to_owned), "world");
        shares.keep(&grown);
        assert_eq!(a.with_text(Some("something else"), str::to_owned), "world");
        assert_eq!(a.with_text(None, str::to_owned), "world");
        assert_eq!(Share::empty().with_text(Some("x"), str::to_owned), "");
    }

    #[test]
    fn closed_shares_do_not_pile_up() {
        let mut shares = Shares::default();
        let keep: Vec<_> = (0..3).map(|i| shares.lend(i, i + 1)).collect();
        for i in 0..10_000 {
            drop(shares.lend(i, i));
        }
        assert!(shares.lent.len() < 64, "{}", shares.lent.len());
        shares.keep("abcd");
        assert_eq!(keep[2].with_text(None, str::to_owned), "c");
    }
}
