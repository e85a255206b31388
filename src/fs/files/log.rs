//! `log`: all text of the child's current history, read live and never consumed: the file
//! to `grep`, `tail -f`, copy or archive. `poll` says when the text changed since this
//! descriptor last read it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::Result;
use crate::fs::body;
use crate::fs::step::ready;
use crate::parents::ParentView;
use crate::watch::live::{Notify, Topic};
use crate::watch::pages::Deliver;
use crate::watch::{Lease, Watch};

use super::{Caller, ChildFile, Context, ControlFile, OpenFile, Opening, Pages, Step};

pub(super) struct Log;

impl ControlFile for Log {
    fn name(&self) -> &'static str {
        "log"
    }

    fn live(&self) -> bool {
        true
    }

    fn stat(
        &self,
        cx: &Context,
        file: &ChildFile,
        view: &ParentView,
        _caller: &Caller,
        now: bool,
    ) -> Step<(u64, SystemTime)> {
        let Some(record) = view.child(&file.child) else {
            return Step::Ready(Err(crate::error::Error::NotFound(file.child.to_string())));
        };
        let w = ready!(cx.watch_of(record));
        let Some(s) = w.state_if_ready(now) else {
            return Step::watch(&w, cx.bound(false));
        };
        if !now && !s.log_ready() {
            // Unlocked first: a lease's clone locks the state.
            drop(s);
            return Step::published(&w, cx.bound(false));
        }
        ready!(s.check());
        // The published size: never one whose stale pages the kernel may still hold.
        let size = s.log_len();
        Step::Ready(Ok((size, s.text_changed())))
    }

    fn open(&self, cx: &Context, at: Opening<'_>) -> Step<Arc<dyn OpenFile>> {
        let w = ready!(cx.watch_of(at.record));
        let (seen, keep, drop) = {
            let Some(mut s) = w.state_if_ready(at.round.now()) else {
                return Step::watch(&w, cx.bound(true));
            };
            if !at.round.now() && !s.log_ready() {
                drop(s);
                return Step::published(&w, cx.bound(true));
            }
            if let Some(e) = s.unreadable() {
                return Step::Ready(Err(e));
            }
            let weak = Arc::downgrade(w.entry());
            let deliver: Deliver = Arc::new(move |d| {
                if let Some(w) = weak.upgrade() {
                    w.pages_delivered(d);
                }
            });
            let owned = cx.own_log(at.ino, w.id());
            let (keep, drop) = s.keep_pages(at.ino, owned, cx.page_kernel(), deliver);
            (s.version(Topic::Text), keep, drop)
        };
        // With the state unlocked: without a kernel, what follows a drop runs at once.
        if let Some(drop) = drop {
            drop();
        }
        Step::Ready(Ok(Arc::new(Open {
            watch: w,
            ino: at.ino,
            seen: AtomicU64::new(seen),
            pages: if keep { Pages::Keep } else { Pages::Drop },
        })))
    }
}

/// An open `log`.
struct Open {
    watch: Lease,
    ino: u64,
    seen: AtomicU64,
    pages: Pages,
}

impl OpenFile for Open {
    /// The published text ([`crate::watch::pages`]). A descriptor of a child removed
    /// since, whose name (and so inode) another child's watch serves now, reads `ENOENT`:
    /// its old text would fill the pages the new child's readers are served from.
    fn read(&self, cx: &Context, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        if !cx.serves_log(self.ino, self.watch.id()) {
            return Err(crate::error::Error::NotFound(
                "the child was removed and its name is another's now".into(),
            ));
        }
        let s = self.watch.state();
        s.check()?;
        self.seen.store(s.version(Topic::Text), Ordering::Relaxed);
        if let Some(text) = s.log_text() {
            body::text_slice(text, offset, size, out);
        }
        Ok(())
    }

    fn poll(&self, _cx: &Context, fh: u64, notify: Notify) -> Result<bool> {
        Ok(self
            .watch
            .set_poller(fh, Topic::Text, self.seen.load(Ordering::Relaxed), notify))
    }

    fn watch(&self) -> Option<&Watch> {
        Some(&self.watch)
    }

    /// Through the page cache, kept coherent by [`crate::watch::pages`]: reads serve the
    /// text as it is now, `stat` the published size.
    fn pages(&self) -> Pages {
        self.pages
    }
}
