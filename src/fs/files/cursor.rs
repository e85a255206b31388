//! `cursor`: how much of the child's history this mount has read through `output`.
//!
//! A value written takes effect when the last descriptor of its open file is closed (like
//! `input`), so a `dup`'d descriptor's close does not set it early. A value past the end
//! of a history podfs knows is `EINVAL` at the write; a writer killed midway sets nothing.
//! Between the writer's `close()` and the release that applies the value, the value is
//! held in the cursor gate, and readers of the cursor wait for it briefly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::error::Result;
use crate::fs::body;
use crate::fs::step::ready;
use crate::fs::writes::{CursorValue, Refusal};
use crate::parents::ParentView;
use crate::watch::{Lease, Watch};

use super::{Caller, ChildFile, Context, ControlFile, OpenFile, Opening, Step};

pub(super) struct Cursor;

impl ControlFile for Cursor {
    fn name(&self) -> &'static str {
        "cursor"
    }

    fn writable(&self) -> bool {
        true
    }

    fn stat(
        &self,
        cx: &Context,
        file: &ChildFile,
        view: &ParentView,
        _caller: &Caller,
        _now: bool,
    ) -> Step<(u64, SystemTime)> {
        let size = body::cursor(cx.cursor(file, view)).len() as u64;
        Step::Ready(Ok((size, view.mtime())))
    }

    fn open(&self, cx: &Context, at: Opening<'_>) -> Step<Arc<dyn OpenFile>> {
        if let Some(wait) = cx.cursor_gate(&at.file, at.round.now()) {
            return wait;
        }
        Step::Ready(Ok(Arc::new(Open {
            bytes: Mutex::new(body::cursor(cx.cursor(&at.file, at.view)).into()),
            incarnation: at.view.incarnation(&at.file.child),
            value: Mutex::new(CursorValue::default()),
            // A value is checked against the history's end: start watching now. A child
            // podfs may not reach has no end podfs knows; any value is taken.
            watch: if at.write {
                cx.watch_of(at.record).ok()
            } else {
                None
            },
            gated: AtomicBool::new(false),
            file: at.file,
        })))
    }
}

struct Open {
    file: ChildFile,
    /// The registry incarnation of the child the value is for.
    incarnation: u64,
    value: Mutex<CursorValue>,
    bytes: Mutex<Arc<[u8]>>,
    /// For a value's end check: the child's watch (writes only).
    watch: Option<Lease>,
    /// A complete value was closed by one descriptor: it is held in the gate until this
    /// handle's release applies it.
    gated: AtomicBool,
}

impl Open {
    fn set(&self, cx: &Context, v: u64) {
        let current = cx
            .parents
            .child_view(&self.file.pod, &self.file.child)
            .map(|view| view.incarnation(&self.file.child));
        let file = &self.file;
        if current.ok() != Some(self.incarnation) {
            debug!(pod = %file.pod, child = %file.child, "cursor value for a child that is gone");
            return;
        }
        let before = cx.cursors.set(&file.key(), self.incarnation, v);
        cx.cursor_moved(file, before, v);
        debug!(pod = %file.pod, child = %file.child, cursor = v, "cursor set");
    }
}

impl OpenFile for Open {
    fn read(&self, cx: &Context, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        if offset == 0 {
            let value = cx.cursors.get(&self.file.key(), self.incarnation);
            *self.bytes.lock() = body::cursor(value).into();
        }
        body::slice(&self.bytes.lock(), offset, size, out);
        Ok(())
    }

    fn write(
        &self,
        cx: &Context,
        _fh: u64,
        data: &[u8],
        _caller: &Caller,
        now: bool,
    ) -> Step<usize> {
        // The child may have gone meanwhile; then so has its cursor.
        ready!(cx.parents.child_view(&self.file.pod, &self.file.child));
        // Only a value above 0 can be past the end: `echo 0 > cursor` never waits.
        let prospective = {
            let mut v = self.value.lock().clone();
            v.write(data, None).map(|_| v.value()).unwrap_or(0)
        };
        let end = match &self.watch {
            Some(w) if prospective > 0 => {
                let Some(s) = w.state_if_ready(now) else {
                    return Step::watch(w, cx.bound(false));
                };
                s.known_len()
            }
            _ => None,
        };
        self.value.lock().write(data, end).into()
    }

    /// A refused or cut value says so here; a writer killed by a signal midway poisons its
    /// value.
    fn flush(&self, cx: &Context, _fh: u64, caller: &Caller) -> Result<()> {
        let mut value = self.value.lock();
        if value.at_close()?.is_some() && crate::process::killed_by_signal(caller.pid) {
            warn!(pod = %self.file.pod, child = %self.file.child,
                  "cursor writer killed by a signal midway; the value is dropped");
            return Err(value.poison(Refusal::Killed));
        }
        if value.at_close()?.is_some() && !self.gated.swap(true, Ordering::SeqCst) {
            cx.gates.hold(&self.file.key());
        }
        Ok(())
    }

    fn release(&self, cx: &Context, _fh: u64) {
        if let Ok(Some(v)) = self.value.lock().at_close() {
            self.set(cx, v);
        }
        if self.gated.load(Ordering::SeqCst) {
            cx.gates.release(&self.file.key());
        }
    }

    fn watch(&self) -> Option<&Watch> {
        self.watch.as_deref()
    }
}
