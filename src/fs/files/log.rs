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
use crate::watch::pages::Publish;
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
            return Step::published(&w, cx.bound(false));
        }
        ready!(s.check());
        // The published size: never one whose stale pages the kernel may still hold.
        let size = s.log_len();
        Step::Ready(Ok((size, s.text_changed())))
    }

    fn open(&self, cx: &Context, at: Opening<'_>) -> Step<Arc<dyn OpenFile>> {
        let w = ready!(cx.watch_of(at.record));
        let (seen, keep) = {
            let Some(mut s) = w.state_if_ready(at.round.now()) else {
                return Step::watch(&w, cx.bound(true));
            };
            if !at.round.now() && !s.log_ready() {
                return Step::published(&w, cx.bound(true));
            }
            if let Some(e) = s.unreadable() {
                return Step::Ready(Err(e));
            }
            let weak = Arc::downgrade(w.entry());
            let publish: Publish = Arc::new(move |version, len| {
                if let Some(w) = weak.upgrade() {
                    w.pages_delivered(version, len);
                }
            });
            let keep = s.keep_pages(at.ino, cx.page_kernel(), publish);
            (s.version(Topic::Text), keep)
        };
        Step::Ready(Ok(Arc::new(Open {
            watch: w,
            seen: AtomicU64::new(seen),
            pages: if keep { Pages::Keep } else { Pages::Drop },
        })))
    }
}

/// An open `log`.
struct Open {
    watch: Lease,
    seen: AtomicU64,
    pages: Pages,
}

impl OpenFile for Open {
    fn read(&self, _cx: &Context, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        let mut s = self.watch.state();
        s.check()?;
        s.log_served(offset.saturating_add(u64::from(size)));
        self.seen.store(s.version(Topic::Text), Ordering::Relaxed);
        if let Some(h) = s.history() {
            body::text_slice(h.text(), offset, size, out);
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
