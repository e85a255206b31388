//! What the kernel may cache of a child's `log`, and when it may be told a new size.
//!
//! `log` is read through the kernel's page cache, so that the same megabytes read again
//! (`grep`, `less`, `diff`, a second `cat`) never cross FUSE twice, and a history that
//! grew by a turn costs only the new bytes. The mount asks for `FUSE_EXPLICIT_INVAL_DATA`:
//! a new size then no longer makes the kernel drop every page of the file, only cut the
//! page it falls in (it zeroes what lies past the size there), and podfs drops the pages
//! a change made stale itself. Three rules of the kernel matter:
//! * a read that returns less than a page leaves the rest of the page zero-filled;
//! * applying a size zeroes the page it falls in from there on, even a larger size;
//! * an invalidation (`FUSE_NOTIFY_INVAL_INODE`) makes the kernel ignore every size
//!   asked for before it, so a size can only be learnt from a request sent after it.
//!
//! **Invariant: a read of `log` serves the published text, no more** (its body: the
//! published text, with its final newline if it has none), and a new text is published
//! only after the invalidation of the pages the one before left behind has been
//! delivered. Within an epoch (texts that extend each other) those are the pages from the
//! first byte the two bodies differ, which is the old end (the page the old end fell in
//! holds zeros, or was cut, past it), or the synthetic newline the old body ended with.
//! Publishing then dropping works, and the reverse would not: pages read after the
//! publication hold the new text, up to the new end; the ones read before are dropped by
//! the invalidation, and a size the kernel asked for before it is ignored, so the kernel
//! learns the new size only after. One publication is on its way per watch at a time; the
//! text may go on changing meanwhile, and the newest is published once it is delivered.
//! Without `FUSE_EXPLICIT_INVAL_DATA` (Linux before 5.2) a new size drops every page by
//! itself: slower, and just as right.
//!
//! A text that does not extend the one before (compaction, a rewind) starts a new epoch:
//! it is published at once, with an invalidation of every page.
//!
//! **Invariant: an open of `log` keeps the kernel's pages only if every one of them was
//! read within the epoch the text is in now.** An inode is kept only after an
//! invalidation of all its pages was delivered in this epoch: the first open of an inode
//! in a watch, and the first after a new epoch, queue one and are told to drop the pages,
//! and so is every open until it has been delivered (the kernel drops them for an open
//! told so only after answering it, in the opener's own time, so another open answered
//! meanwhile must not keep them).

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

/// What the kernel queue reports back, on the thread that runs what follows a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The invalidation sent with the last publication was delivered.
    Published,
    /// Every page of `ino` was dropped, in `epoch`.
    Dropped { ino: u64, epoch: u64 },
}

/// Takes a [`Delivery`] back to the watch. It locks the watch's state.
pub type Deliver = Arc<dyn Fn(Delivery) + Send + Sync>;

/// Something to run once the state's lock is released.
pub type Run = Box<dyn FnOnce() + Send>;

struct Link {
    kernel: Arc<dyn PageKernel>,
    deliver: Deliver,
}

/// The text `stat` shows and reads serve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shown {
    pub version: u64,
    /// Its body's length: the size.
    pub len: u64,
    /// Its text's length: how much of the text reads serve.
    pub text_len: usize,
}

impl Shown {
    fn of(version: u64, text: &str) -> Shown {
        Shown {
            version,
            len: body_len(text),
            text_len: text.len(),
        }
    }
}

#[derive(Default)]
pub struct KernelPages {
    epoch: u64,
    /// Inode → the epoch an invalidation of all its pages was delivered in; `None` while
    /// one is on its way.
    inodes: HashMap<u64, Option<u64>>,
    /// Set at the first open: from then on the kernel may hold pages of this text.
    link: Option<Link>,
    published: Shown,
    in_flight: bool,
}

impl KernelPages {
    /// An open of `log` inode `ino`. `owned`: no other watch served this inode since this
    /// one did. Returns whether the open may keep the kernel's pages, and what to run.
    pub fn open(
        &mut self,
        ino: u64,
        owned: bool,
        kernel: Arc<dyn PageKernel>,
        deliver: Deliver,
    ) -> (bool, Option<Run>) {
        if self.link.is_none() {
            self.link = Some(Link { kernel, deliver });
        }
        let epoch = self.epoch;
        match self.inodes.get(&ino) {
            Some(Some(e)) if *e == epoch && owned => return (true, None),
            Some(None) if owned => return (false, None),
            _ => {}
        }
        self.inodes.insert(ino, None);
        let link = self.link.as_ref().expect("set above");
        let (kernel, deliver) = (link.kernel.clone(), link.deliver.clone());
        let run: Run = Box::new(move || {
            kernel.drop_pages(ino, 0);
            kernel.after(Box::new(move || deliver(Delivery::Dropped { ino, epoch })));
        });
        (false, Some(run))
    }

    /// Every page of `ino` was dropped in `epoch`: opens in it may keep them from now on.
    pub fn dropped(&mut self, ino: u64, epoch: u64) {
        if self.inodes.get(&ino) == Some(&None) {
            if epoch == self.epoch {
                self.inodes.insert(ino, Some(epoch));
            } else {
                // Of an epoch gone by: the next open asks for another.
                self.inodes.remove(&ino);
            }
        }
    }

    /// The text became `version` (`text`); `extends`: it extends the one before.
    pub fn changed(&mut self, version: u64, text: &str, extends: bool) -> Option<Run> {
        if self.link.is_none() {
            self.published = Shown::of(version, text);
            return None;
        }
        if !extends {
            self.epoch += 1;
            self.published = Shown::of(version, text);
            self.in_flight = true;
            return Some(self.send(0));
        }
        if self.in_flight {
            // Published once what is on its way has been delivered.
            return None;
        }
        Some(self.publish(version, text))
    }

    /// The invalidation sent with the last publication was delivered; the text is now
    /// `current` (`text`). Returns the next publication, if the text changed meanwhile.
    pub fn delivered(&mut self, current: u64, text: &str) -> Option<Run> {
        self.in_flight = false;
        (current > self.published.version).then(|| self.publish(current, text))
    }

    /// Publish `text`, an extension of the published one, and drop what the published one
    /// left behind.
    fn publish(&mut self, version: u64, text: &str) -> Run {
        let old = text.get(..self.published.text_len).unwrap_or("");
        let from = changed_at(old, text).unwrap_or(0);
        self.published = Shown::of(version, text);
        self.in_flight = true;
        self.send(from)
    }

    fn send(&self, from: u64) -> Run {
        let link = self
            .link
            .as_ref()
            .expect("a publication is sent only with a link");
        let (kernel, deliver) = (link.kernel.clone(), link.deliver.clone());
        let inodes: Vec<u64> = self.inodes.keys().copied().collect();
        Box::new(move || {
            for ino in inodes {
                kernel.drop_pages(ino, from);
            }
            kernel.after(Box::new(move || deliver(Delivery::Published)));
        })
    }

    /// Whether a publication is on its way.
    pub fn publishing(&self) -> bool {
        self.in_flight
    }

    /// What `stat` shows and reads serve.
    pub fn published(&self) -> Shown {
        self.published
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

    /// A kernel queue that records, and delivers when told to.
    #[derive(Default)]
    struct Queue {
        dropped: Mutex<Vec<(u64, u64)>>,
        later: Mutex<Vec<Run>>,
        delivered: Arc<Mutex<Vec<Delivery>>>,
    }

    impl PageKernel for Queue {
        fn drop_pages(&self, ino: u64, from: u64) {
            self.dropped.lock().unwrap().push((ino, from));
        }
        fn after(&self, then: Box<dyn FnOnce() + Send>) {
            self.later.lock().unwrap().push(then);
        }
    }

    impl Queue {
        /// Deliver everything queued; what came back.
        fn deliver(&self) -> Vec<Delivery> {
            for then in std::mem::take(&mut *self.later.lock().unwrap()) {
                then();
            }
            std::mem::take(&mut *self.delivered.lock().unwrap())
        }

        fn take_dropped(&self) -> Vec<(u64, u64)> {
            std::mem::take(&mut *self.dropped.lock().unwrap())
        }
    }

    fn open(p: &mut KernelPages, k: &Arc<Queue>, ino: u64, owned: bool) -> bool {
        let got = k.delivered.clone();
        let deliver: Deliver = Arc::new(move |d| got.lock().unwrap().push(d));
        let (keep, run) = p.open(ino, owned, k.clone(), deliver);
        if let Some(run) = run {
            run();
        }
        keep
    }

    /// An inode opened once and its drop delivered: the state of a followed inode.
    fn followed(text: &str) -> (KernelPages, Arc<Queue>) {
        let k = Arc::new(Queue::default());
        let mut p = KernelPages::default();
        assert!(
            p.changed(1, text, true).is_none(),
            "no link yet: shown at once"
        );
        assert!(!open(&mut p, &k, 7, true), "the first open drops");
        for d in k.deliver() {
            if let Delivery::Dropped { ino, epoch } = d {
                p.dropped(ino, epoch);
            }
        }
        k.take_dropped();
        (p, k)
    }

    #[test]
    fn without_an_open_a_change_is_published_at_once() {
        let mut p = KernelPages::default();
        assert!(p.changed(1, "abc", true).is_none());
        assert_eq!(p.published(), Shown::of(1, "abc"));
    }

    #[test]
    fn a_publication_drops_the_page_the_old_end_left_behind() {
        let (mut p, k) = followed("one\n");
        p.changed(2, "one\n\ntwo", true).unwrap()();
        assert_eq!(
            p.published(),
            Shown::of(2, "one\n\ntwo"),
            "reads serve it now"
        );
        assert_eq!(k.take_dropped(), [(7, 4)], "from the old end");
        assert!(p.publishing());
        // The text goes on meanwhile: published once the first is delivered.
        assert!(p.changed(3, "one\n\ntwo three", true).is_none());
        assert_eq!(p.published().version, 2);
        assert_eq!(k.deliver(), [Delivery::Published]);
        let next = p.delivered(3, "one\n\ntwo three").unwrap();
        next();
        assert_eq!(p.published(), Shown::of(3, "one\n\ntwo three"));
        // "one\n\ntwo" had no final newline: its body's last byte, one podfs added, is
        // now a space.
        assert_eq!(k.take_dropped(), [(7, 8)]);
        k.deliver();
        assert!(p.delivered(3, "one\n\ntwo three").is_none());
        assert!(!p.publishing());
    }

    #[test]
    fn a_new_epoch_is_shown_at_once_and_drops_every_page() {
        let (mut p, k) = followed("a long text\n");
        assert!(open(&mut p, &k, 7, true), "followed: kept");
        p.changed(2, "short", false).unwrap()();
        assert_eq!(p.published(), Shown::of(2, "short"));
        assert_eq!(k.take_dropped(), [(7, 0)]);
        assert!(!open(&mut p, &k, 7, true), "a new epoch: dropped");
        assert!(!open(&mut p, &k, 7, true), "until that drop is delivered");
        assert_eq!(
            k.take_dropped(),
            [(7, 0)],
            "one drop asked for, not one per open"
        );
        for d in k.deliver() {
            if let Delivery::Dropped { ino, epoch } = d {
                p.dropped(ino, epoch);
            }
        }
        assert!(open(&mut p, &k, 7, true));
    }

    #[test]
    fn an_inode_is_kept_only_after_a_drop_delivered_in_the_same_epoch() {
        let (mut p, k) = followed("x\n");
        assert!(open(&mut p, &k, 7, true));
        assert!(!open(&mut p, &k, 8, true), "each inode on its own");
        assert!(
            !open(&mut p, &k, 7, false),
            "served by another watch since: dropped"
        );
        // A drop of an epoch gone by confirms nothing.
        p.changed(2, "y", false).unwrap()();
        for d in k.deliver() {
            if let Delivery::Dropped { ino, epoch } = d {
                p.dropped(ino, epoch);
            }
        }
        assert!(!open(&mut p, &k, 8, true));
        assert!(k.take_dropped().contains(&(8, 0)), "asked for again");
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
