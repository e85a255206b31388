//! What the kernel may cache of a child's `log`, and when it may be told a new size.
//!
//! `log` is read through the kernel's page cache, so that the same megabytes read again
//! (`grep`, `less`, `diff`, a second `cat`) never cross FUSE twice, and a history that
//! grew by a turn costs only the new bytes. The mount asks for `FUSE_EXPLICIT_INVAL_DATA`:
//! the kernel then drops cached pages only when podfs says so (a new size no longer drops
//! them all), and podfs says so for exactly the pages a change made stale:
//! * the page that held the old end of the text, if a read returned it short: the kernel
//!   filled it with zeros past that end ([`KernelPages::served`] notes where);
//! * from the first byte that changed, when the end of the old text changed (a text
//!   without a final newline is shown with one, and the next part may start there);
//! * every page, when a Snapshot replaced the history with one that does not extend it
//!   (compaction, a rewind), which starts a new *epoch*.
//!
//! **Invariant: within an epoch, the kernel is never told a size of `log` before every
//! page made stale by the text it measures has been dropped.** A change is *published*
//! (its size becomes what `stat` shows, and `poll` says readable) only once the kernel has
//! delivered its invalidations, which the kernel queue reports in order
//! ([`PageKernel::after`]). Reads serve the text as it is now: within an epoch each text
//! extends the one before, so a page read at any moment agrees with the published text up
//! to the published size.
//!
//! A new epoch is shown at once ([`KernelPages::changed`] says why waiting would not
//! help); what keeps readers right then is the second invariant, with an invalidation of
//! every page sent at the same moment for descriptors opened before.
//!
//! Where the kernel does not grant `FUSE_EXPLICIT_INVAL_DATA`, a new size drops every page
//! by itself: slower, and just as right.
//!
//! **Invariant: an open of `log` keeps the kernel's pages only if every one of them was
//! read within the epoch the text is in now.** An inode is kept only by opens after a
//! first one that dropped its pages in this watch (pages from before the watch, such as
//! those of a child removed and listed again under the same name, so with the same inode
//! number, are never kept), and only while the epoch is the one that open saw.
//!
//! At most one batch of invalidations per watch is on its way at a time; changes meanwhile
//! are merged into the next, so a child streaming events into a stuck kernel queue costs
//! one entry, not one per event.

use std::collections::HashMap;
use std::sync::Arc;

/// Where invalidations go: the kernel queue, delivered in order on a thread of its own.
pub trait PageKernel: Send + Sync {
    /// Drop the kernel's pages of inode `ino` from byte `from` to the end.
    fn drop_pages(&self, ino: u64, from: u64);
    /// Run `then` once everything queued before it has been delivered, on a thread that
    /// may lock a watch (never the delivery thread itself).
    fn after(&self, then: Box<dyn FnOnce() + Send>);
}

/// Publishes a delivered change: `(version, body length)`. It locks the watch's state.
pub type Publish = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Something to run once the state's lock is released.
pub type Run = Box<dyn FnOnce() + Send>;

struct Link {
    kernel: Arc<dyn PageKernel>,
    publish: Publish,
}

/// A batch of invalidations: pages from `from` on (none if `None`), then publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Batch {
    from: Option<u64>,
    version: u64,
    len: u64,
}

#[derive(Default)]
pub struct KernelPages {
    epoch: u64,
    /// Inode → the epoch its pages were last dropped in.
    inodes: HashMap<u64, u64>,
    /// Set at the first open: from then on the kernel may hold pages of this text.
    link: Option<Link>,
    /// The version and body length the kernel may be told.
    published: (u64, u64),
    /// The body length of the text as of the last change.
    len: u64,
    /// The lowest end of text a read returned short since the last change.
    short_at: Option<u64>,
    in_flight: bool,
    next: Option<Batch>,
}

impl KernelPages {
    /// An open of `log` inode `ino`: whether it may keep the pages the kernel holds. An
    /// open told no has the kernel drop them at once, so from then on they are of this
    /// epoch.
    pub fn open(&mut self, ino: u64, kernel: Arc<dyn PageKernel>, publish: Publish) -> bool {
        if self.link.is_none() {
            self.link = Some(Link { kernel, publish });
        }
        let epoch = self.epoch;
        self.inodes.insert(ino, epoch) == Some(epoch)
    }

    /// A read of the body (`len` bytes now) up to byte `end`: if it reached past the end,
    /// the kernel's page there holds zeros after `len`.
    pub fn served(&mut self, end: u64, len: u64) {
        if end > len {
            self.short_at = Some(self.short_at.map_or(len, |s| s.min(len)));
        }
    }

    /// The text became `version`, whose body is `len` bytes; `changed_at` is where its
    /// body first differs from the one before, `None` if it does not extend that text.
    /// Returns what to run once the state's lock is released.
    pub fn changed(&mut self, version: u64, len: u64, changed_at: Option<u64>) -> Option<Run> {
        let Some(at) = changed_at else {
            return self.rewritten(version, len);
        };
        // Pages wholly before `at` hold what they held. From `at` on the kernel holds only
        // what was read: the page a read returned short, and, if the old end changed,
        // pages from `at`.
        let short = self.short_at.take();
        let moved = (at < self.len).then_some(at);
        let from = min_some(short, moved);
        self.len = len;
        let batch = Batch { from, version, len };
        if self.link.is_none() {
            self.published = (version, len);
            return None;
        }
        if self.in_flight {
            self.next = Some(match self.next {
                Some(n) => Batch {
                    from: min_some(n.from, from),
                    ..batch
                },
                None => batch,
            });
            return None;
        }
        self.in_flight = true;
        Some(self.send(batch))
    }

    /// A text that does not extend the one before: a new epoch, shown at once. Every
    /// open from now on drops the kernel's pages before it returns (the epoch moved), so
    /// it reads only the new text; the invalidation sent now brings descriptors opened
    /// before to it as soon as the kernel has it. (Waiting for it before showing the new
    /// size would not help them: a read in between, served the old text, would fill the
    /// pages again after they were dropped; served the new, shorter one at the kernel's
    /// older size, it would come back padded with zeros.)
    fn rewritten(&mut self, version: u64, len: u64) -> Option<Run> {
        self.epoch += 1;
        self.short_at = None;
        self.len = len;
        self.published = (version, len);
        // What was waiting is older than this and changes nothing any more.
        self.next = None;
        let link = self.link.as_ref()?;
        let kernel = link.kernel.clone();
        let inodes: Vec<u64> = self.inodes.keys().copied().collect();
        Some(Box::new(move || {
            for ino in inodes {
                kernel.drop_pages(ino, 0);
            }
        }))
    }

    /// The batch that publishes `version` (body `len` bytes) was delivered.
    pub fn delivered(&mut self, version: u64, len: u64) -> Option<Run> {
        // A batch overtaken by a new epoch publishes nothing.
        if version >= self.published.0 {
            self.published = (version, len);
        }
        self.in_flight = false;
        let next = self.next.take()?;
        self.in_flight = true;
        Some(self.send(next))
    }

    /// Whether a change waits to be published.
    pub fn publishing(&self) -> bool {
        self.in_flight
    }

    /// Whether the kernel may hold pages of this text (an open made the link).
    pub fn linked(&self) -> bool {
        self.link.is_some()
    }

    /// The version and body length the kernel may be told.
    pub fn published(&self) -> (u64, u64) {
        self.published
    }

    fn send(&self, batch: Batch) -> Run {
        let link = self
            .link
            .as_ref()
            .expect("a batch is sent only with a link");
        let (kernel, publish) = (link.kernel.clone(), link.publish.clone());
        let inodes: Vec<u64> = self.inodes.keys().copied().collect();
        Box::new(move || {
            if let Some(from) = batch.from {
                for ino in inodes {
                    kernel.drop_pages(ino, from);
                }
            }
            kernel.after(Box::new(move || publish(batch.version, batch.len)));
        })
    }
}

/// The lower of two starts, where there are any.
fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The length of `text` as `log` shows it: a text without a final newline gets one.
pub fn body_len(text: &str) -> u64 {
    if text.is_empty() {
        0
    } else {
        text.len() as u64 + u64::from(!text.ends_with('\n'))
    }
}

/// Where the body of `new` first differs from the body of `old` (its length if nowhere),
/// when `new`'s text extends `old`'s; `None` when it does not (a rewrite).
pub fn changed_at(old: &str, new: &str) -> Option<u64> {
    let rest = new.strip_prefix(old)?;
    // `old`'s body has a newline at `old.len()` that its text lacks; `new`'s body has
    // the same byte there unless its text goes on with something else.
    if !old.is_empty() && !old.ends_with('\n') && !rest.is_empty() && !rest.starts_with('\n') {
        return Some(old.len() as u64);
    }
    Some(body_len(old))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A body as `log` shows it: the text, with a final newline if it has none.
    fn body(text: &str) -> String {
        match text {
            "" => String::new(),
            t if t.ends_with('\n') => t.to_string(),
            t => format!("{t}\n"),
        }
    }

    #[derive(Default)]
    struct Recorder {
        got: Mutex<Vec<String>>,
        later: Mutex<Vec<Run>>,
    }

    impl PageKernel for Recorder {
        fn drop_pages(&self, ino: u64, from: u64) {
            self.got
                .lock()
                .unwrap()
                .push(format!("drop {ino} from {from}"));
        }
        fn after(&self, then: Box<dyn FnOnce() + Send>) {
            self.later.lock().unwrap().push(then);
        }
    }

    /// What was published, in order.
    type Published = Arc<Mutex<Vec<(u64, u64)>>>;

    fn setup() -> (KernelPages, Arc<Recorder>, Published) {
        let k = Arc::new(Recorder::default());
        let published = Arc::new(Mutex::new(Vec::new()));
        let p = published.clone();
        let publish: Publish = Arc::new(move |v, l| p.lock().unwrap().push((v, l)));
        let mut pages = KernelPages::default();
        assert!(
            !pages.open(7, k.clone(), publish.clone()),
            "first open drops"
        );
        (pages, k, published)
    }

    #[test]
    fn without_an_open_a_change_is_published_at_once() {
        let mut p = KernelPages::default();
        assert!(p.changed(1, 10, Some(0)).is_none());
        assert_eq!(p.published(), (1, 10));
    }

    #[test]
    fn a_size_is_published_only_after_the_stale_page_is_dropped() {
        let (mut p, k, published) = setup();
        p.changed(1, 100, Some(0)).unwrap()();
        k.later.lock().unwrap().pop().unwrap()();
        assert_eq!(published.lock().unwrap().pop(), Some((1, 100)));
        p.delivered(1, 100);
        k.got.lock().unwrap().clear();
        // A read returned the body short at 100; then 50 bytes were appended.
        p.served(4096, 100);
        p.changed(2, 150, Some(100)).unwrap()();
        assert_eq!(*k.got.lock().unwrap(), ["drop 7 from 100"]);
        assert_eq!(p.published(), (1, 100), "not before the kernel dropped it");
        k.later.lock().unwrap().pop().unwrap()();
        assert_eq!(published.lock().unwrap().pop(), Some((2, 150)));
        assert!(p.delivered(2, 150).is_none());
        assert_eq!(p.published(), (2, 150));
        // Nothing read short since: nothing to drop, only the publication.
        k.got.lock().unwrap().clear();
        p.changed(3, 170, Some(150)).unwrap()();
        assert!(k.got.lock().unwrap().is_empty());
    }

    #[test]
    fn changes_while_a_batch_is_on_its_way_are_merged_into_one() {
        let (mut p, k, _) = setup();
        p.served(10, 0);
        p.changed(1, 100, Some(0)).unwrap()();
        p.served(4096, 100);
        assert!(p.changed(2, 150, Some(100)).is_none());
        p.served(8192, 150);
        assert!(
            p.changed(3, 170, Some(150)).is_none(),
            "merged into the one waiting"
        );
        let next = p.delivered(1, 100).unwrap();
        k.got.lock().unwrap().clear();
        next();
        assert_eq!(*k.got.lock().unwrap(), ["drop 7 from 100"]);
        assert_eq!(p.published(), (1, 100));
        assert!(p.delivered(3, 170).is_none());
        assert_eq!(p.published(), (3, 170));
    }

    #[test]
    fn a_new_epoch_is_shown_at_once_and_drops_every_page() {
        let (mut p, k, _) = setup();
        p.changed(1, 100, Some(0)).unwrap()();
        assert!(
            p.changed(2, 150, Some(100)).is_none(),
            "waits behind the first"
        );
        k.got.lock().unwrap().clear();
        p.changed(3, 30, None).unwrap()();
        assert_eq!(*k.got.lock().unwrap(), ["drop 7 from 0"]);
        assert_eq!(p.published(), (3, 30), "shown at once");
        assert!(p.delivered(1, 100).is_none(), "what waited is moot");
        assert_eq!(p.published(), (3, 30), "an older delivery changes nothing");
        assert!(p.changed(4, 40, Some(30)).is_some(), "a batch of its own");
    }

    #[test]
    fn an_inode_is_kept_only_after_a_drop_in_the_same_epoch() {
        let (mut p, k, _) = setup();
        let publish: Publish = Arc::new(|_, _| {});
        assert!(p.open(7, k.clone(), publish.clone()));
        assert!(
            !p.open(8, k.clone(), publish.clone()),
            "each inode on its own"
        );
        p.changed(1, 10, Some(0)).unwrap()();
        assert!(
            p.open(7, k.clone(), publish.clone()),
            "an append keeps them"
        );
        p.delivered(1, 10);
        p.changed(2, 10, None).unwrap()();
        assert!(
            !p.open(7, k.clone(), publish.clone()),
            "a rewrite drops them"
        );
        assert!(p.open(7, k.clone(), publish.clone()));
        let mut dropped = k.got.lock().unwrap().clone();
        dropped.sort();
        assert_eq!(dropped, ["drop 7 from 0", "drop 8 from 0"]);
    }

    #[test]
    fn changed_at_is_where_the_bodies_first_differ() {
        let texts = [
            "", "a", "a\n", "ab", "ab\n", "a\n\nb", "b", "a\nb", "ab\n\nc", "\n", "a\n\n",
            "a\n\nb\n",
        ];
        for old in texts {
            for new in texts {
                let (o, n) = (body(old), body(new));
                let first = o
                    .bytes()
                    .zip(n.bytes())
                    .position(|(a, b)| a != b)
                    .unwrap_or(o.len().min(n.len())) as u64;
                let expected = new.starts_with(old).then_some(first);
                assert_eq!(changed_at(old, new), expected, "{old:?} -> {new:?}");
                assert_eq!(body_len(old), o.len() as u64);
            }
        }
    }
}
