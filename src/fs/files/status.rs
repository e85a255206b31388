//! `status`: the child's state in one word (`idle`, `running`, `unreachable`), from its
//! watch. Like a sysfs attribute: fixed at open, made again by a read at offset 0, and
//! `poll` says when it changed since this descriptor last read it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::error::Result;
use crate::fs::body;
use crate::fs::step::ready;
use crate::parents::ParentView;
use crate::protocol::wire::PodStatus;
use crate::watch::live::{Notify, Topic};
use crate::watch::Watch;

use super::{Caller, ChildFile, Context, ControlFile, OpenFile, Opening, Step};

pub(super) struct Status;

/// What a child without a watch shows (its socket is outside the runtime dir).
fn unreachable() -> Vec<u8> {
    body::status(PodStatus::Unreachable)
}

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
        let Some(w) = view.child(&file.child).and_then(|r| cx.watch_of(r)) else {
            return Step::Ready(Ok((unreachable().len() as u64, view.mtime())));
        };
        let Some(s) = w.state_if_ready(now) else {
            return Step::watch(&w, cx.bound(false));
        };
        ready!(s.check());
        let size = body::status(s.status_word()).len() as u64;
        Step::Ready(Ok((size, s.status_changed())))
    }

    fn open(&self, cx: &Context, at: Opening<'_>) -> Step<Arc<dyn OpenFile>> {
        let (bytes, seen, watch) = match cx.watch_of(at.record) {
            None => (unreachable(), 0, None),
            Some(w) => {
                let Some(s) = w.state_if_ready(at.now) else {
                    return Step::watch(&w, cx.bound(false));
                };
                ready!(s.check());
                let bytes = body::status(s.status_word());
                let seen = s.version(Topic::Status);
                drop(s);
                (bytes, seen, Some(w))
            }
        };
        Step::Ready(Ok(Arc::new(Open {
            bytes: Mutex::new(bytes.into()),
            seen: AtomicU64::new(seen),
            watch,
        })))
    }
}

struct Open {
    bytes: Mutex<Arc<[u8]>>,
    /// The version the bytes show: `poll` wakes when it moves.
    seen: AtomicU64,
    watch: Option<Arc<Watch>>,
}

impl OpenFile for Open {
    fn read(&self, _cx: &Context, offset: u64, size: u32) -> Result<Vec<u8>> {
        if let (0, Some(w)) = (offset, &self.watch) {
            let s = w.state();
            s.check()?;
            self.seen.store(s.version(Topic::Status), Ordering::Relaxed);
            *self.bytes.lock() = body::status(s.status_word()).into();
        }
        Ok(body::slice(&self.bytes.lock(), offset, size))
    }

    fn poll(&self, _cx: &Context, fh: u64, notify: Notify) -> Result<bool> {
        Ok(match &self.watch {
            Some(w) => w.set_poller(fh, Topic::Status, self.seen.load(Ordering::Relaxed), notify),
            None => true,
        })
    }

    fn watch(&self) -> Option<&Arc<Watch>> {
        self.watch.as_ref()
    }
}
