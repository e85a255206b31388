//! Which `log` inodes the kernel may hold pages of, and whether an open may keep them.
//!
//! `log` is read through the kernel's page cache, so that the same megabytes read again
//! (`grep`, `less`, `diff`, a second `cat`) never cross FUSE twice. Two rules of the kernel
//! do most of the work of keeping that cache right (podfs does not ask for
//! `FUSE_EXPLICIT_INVAL_DATA`, and the attributes of `log` are never cached):
//! * every `stat`, and every read that reaches past the size the kernel knows, asks podfs
//!   for the size, and a size that changed makes the kernel drop **every** page of the
//!   file first. A turn only ever appends, so it always changes the size: the page that
//!   held the old end (read short, zero-filled) is gone before the new size is used;
//! * an open without `FOPEN_KEEP_CACHE` drops every page of the file before it returns.
//!
//! What the kernel cannot see is a text replaced by another of the same length (a Snapshot
//! after the child compacted or rewound its history). That is what this module follows:
//! every text that is not an extension of the one before it starts a new *epoch*.
//!
//! **Invariant: an open of `log` keeps the kernel's pages only if every one of them was
//! read within the epoch the text is in now.** An inode is kept only by opens after a
//! first one that dropped its pages in this watch (pages from before the watch, such as
//! those of a child removed and listed again under the same name, so with the same inode
//! number, are never kept), and only while the epoch is the one that open saw. A new
//! epoch also sends the kernel an invalidation of every such inode, so that descriptors
//! opened before it stop serving the old text as soon as it is delivered.

use std::collections::HashMap;

use crate::watch::live::Notify;

#[derive(Default)]
pub struct KernelPages {
    epoch: u64,
    /// Inode → the epoch its pages were last dropped in, and how to drop them.
    inodes: HashMap<u64, (u64, Notify)>,
}

impl KernelPages {
    /// An open of `log` inode `ino`: whether it may keep the pages the kernel holds.
    /// `drop` invalidates them (it runs when the text starts a new epoch). An open told
    /// no has the kernel drop them at once, so from then on they are of this epoch.
    pub fn open(&mut self, ino: u64, drop: Notify) -> bool {
        let epoch = self.epoch;
        match self.inodes.insert(ino, (epoch, drop)) {
            Some((seen, _)) => seen == epoch,
            None => false,
        }
    }

    /// The text was replaced by one that does not extend it: what to run to drop the
    /// pages the kernel may hold of the old one.
    pub fn rewritten(&mut self) -> Vec<Notify> {
        self.epoch += 1;
        self.inodes.values().map(|(_, drop)| drop.clone()).collect()
    }
}

/// Whether the body of `new` (its text with the final newline a body gets) starts with
/// the body of `old`: then every page read of `old` holds the bytes `new` has there.
pub fn extends(old: &str, new: &str) -> bool {
    let (o, n) = (old.as_bytes(), new.as_bytes());
    if o.is_empty() {
        return true;
    }
    if n.len() >= o.len() {
        // `old`'s body is `old` and, when it has none, a newline: `new`'s next byte, or
        // the one `new`'s own body ends with.
        n.starts_with(o) && (o.ends_with(b"\n") || n.len() == o.len() || n[o.len()] == b'\n')
    } else {
        // Only `old` = `new` + a newline, when `new` has none: the same body.
        !n.is_empty()
            && o.len() == n.len() + 1
            && o.starts_with(n)
            && o.ends_with(b"\n")
            && !n.ends_with(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counter() -> (Arc<AtomicUsize>, Notify) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (
            n,
            Arc::new(move || {
                m.fetch_add(1, Ordering::Relaxed);
            }),
        )
    }

    #[test]
    fn an_inode_is_kept_only_after_a_drop_in_the_same_epoch() {
        let mut p = KernelPages::default();
        let (drops, drop) = counter();
        assert!(
            !p.open(7, drop.clone()),
            "pages from before this watch are dropped"
        );
        assert!(p.open(7, drop.clone()));
        assert!(!p.open(8, drop.clone()), "each inode on its own");
        assert_eq!(p.rewritten().len(), 2);
        assert!(!p.open(7, drop.clone()), "a new epoch drops them again");
        assert!(p.open(7, drop.clone()));
        for d in p.rewritten() {
            d();
        }
        assert_eq!(drops.load(Ordering::Relaxed), 2);
    }

    /// A body as `log` shows it: the text, with a final newline if it has none.
    fn body(text: &str) -> String {
        match text {
            "" => String::new(),
            t if t.ends_with('\n') => t.to_string(),
            t => format!("{t}\n"),
        }
    }

    #[test]
    fn extends_is_a_prefix_of_bodies() {
        let texts = [
            "", "a", "a\n", "ab", "ab\n", "a\n\nb", "b", "a\nb", "ab\n\nc", "\n", "a\n\n",
            "a\n\nb\n",
        ];
        for old in texts {
            for new in texts {
                let (o, n) = (body(old), body(new));
                assert_eq!(extends(old, new), n.starts_with(&o), "{old:?} -> {new:?}");
            }
        }
    }
}
