//! `status`: the child's state in one word (`idle`, `running`, `paused`, `unreachable`),
//! from its watch. Like a sysfs attribute: fixed at open, made again by a read at offset 0, and
//! `poll` says when it changed since this descriptor last read it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::error::Result;
use crate::fs::body;
use crate::fs::step::ready;
use crate::parents::ParentView;
use crate::watch::live::{Notify, Topic};
use crate::watch::{Lease, Watch};

use super::{Caller, ChildFile, Context, ControlFile, OpenFile, Opening, Step};

pub(super) struct Status;

impl ControlFile for Status {
    fn name(&self) -> &'static str {
        "status"
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
        ready!(s.check());
        let size = body::status(s.status_word()).len() as u64;
        Step::Ready(Ok((size, s.status_changed())))
    }

    fn open(&self, cx: &Context, at: Opening<'_>) -> Step<Arc<dyn OpenFile>> {
        let w = ready!(cx.watch_of(at.record));
        let (bytes, seen) = {
            let Some(s) = w.state_if_ready(at.round.now()) else {
                return Step::watch(&w, cx.bound(false));
            };
            ready!(s.check());
            (body::status(s.status_word()), s.version(Topic::Status))
        };
        Step::Ready(Ok(Arc::new(Open {
            bytes: Mutex::new(bytes.into()),
            seen: AtomicU64::new(seen),
            watch: w,
        })))
    }
}

struct Open {
    bytes: Mutex<Arc<[u8]>>,
    /// The version the bytes show: `poll` wakes when it moves.
    seen: AtomicU64,
    watch: Lease,
}

impl OpenFile for Open {
    fn read(&self, _cx: &Context, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        if offset == 0 {
            let s = self.watch.state();
            s.check()?;
            self.seen.store(s.version(Topic::Status), Ordering::Relaxed);
            *self.bytes.lock() = body::status(s.status_word()).into();
        }
        body::slice(&self.bytes.lock(), offset, size, out);
        Ok(())
    }

    fn poll(&self, _cx: &Context, fh: u64, notify: Notify) -> Result<bool> {
        Ok(self
            .watch
            .set_poller(fh, Topic::Status, self.seen.load(Ordering::Relaxed), notify))
    }

    fn watch(&self) -> Option<&Watch> {
        Some(&self.watch)
    }
}
