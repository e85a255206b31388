//! The memory all watches may hold together, whatever the children send: histories, the
//! unfinished line a connection is reading, text announced but not yet logged, and the
//! text `output` handles took. Every holder charges what it holds; a charge that would pass
//! the limit is refused, and the holder that asked (never a sibling) is the one that fails.
//! No one child may hold more than [`Budget::share`]: a quarter always stays for the
//! others, so a child that floods fails before its siblings feel it.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The most one child may hold.
    pub fn share(&self) -> usize {
        self.limit - self.limit / 4
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Move a holder's charge from `from` to `to` bytes. Shrinking always succeeds;
    /// growing fails (and changes nothing) when it would pass the limit.
    pub fn resize(&self, from: usize, to: usize) -> bool {
        if to <= from {
            self.used.fetch_sub(from - to, Ordering::Relaxed);
            return true;
        }
        let more = to - from;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(more).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    /// The most a child that now holds `holding` bytes could hold in all.
    pub fn room_for(&self, holding: usize) -> usize {
        let others = self.used().saturating_sub(holding);
        self.limit.saturating_sub(others).min(self.share())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_never_pass_the_limit_and_shrinking_always_works() {
        let b = Budget::new(100);
        assert!(b.resize(0, 60));
        assert!(!b.resize(0, 50), "60 + 50 > 100");
        assert_eq!(b.used(), 60);
        assert_eq!(b.room_for(60), 75, "one child holds three quarters at most");
        assert_eq!(b.room_for(0), 40);
        assert!(b.resize(0, 40));
        assert!(b.resize(60, 10));
        assert_eq!(b.used(), 50);
        assert!(b.resize(40, 0) && b.resize(10, 0));
        assert_eq!(b.used(), 0);
    }
}
