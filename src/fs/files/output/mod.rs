//! `output`: the child's new text since this mount's cursor, taken at open: ReadPodOutput
//! with the mount's cursor. The new text, and the cursor moved past it, in one step with
//! the cursor locked, so two readers never get the same text; and the text charged to the
//! memory budget in the same step, so that a reader whose text does not fit gets an error
//! with the cursor unmoved. Reading `output` moves the cursor, so it takes the permission
//! to write `cursor`.
//!
//! Like a pipe whose writer has not closed yet, an open while the child runs a turn waits
//! for the turn to end (a message of ours reserved or on its way counts), then takes its
//! snapshot: `echo q > input; cat output` prints the reply. `O_NONBLOCK` takes what there
//! is at once; a signal ends the wait with nothing taken; where the kernel aborts requests
//! that wait too long, the wait ends before that with `EAGAIN`.
//!
//! Each open holds its own snapshot until release, and its reads return it. `stat` and
//! `fstat` report the size of the newest snapshot the asking process holds, else the
//! newest of all: the kernel sends no handle with a `stat` or an `fstat` (it asks for the
//! attributes of the inode), so an `fstat` of an older open of the same process reports
//! the newer one's size; tools that read what they `fstat` (`tar`, `rsync`, `cp`) open one
//! file at a time.

pub mod take;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::fs::body;
use crate::fs::step::ready;
use crate::parents::ParentView;
use crate::protocol::history::History;
use crate::sync::Mutex;
use crate::watch::live::{Notify, Reach, Topic};
use crate::watch::share::Share;
use crate::watch::{Lease, Watch};

use take::{take, Take};

use super::{Caller, ChildFile, Context, ControlFile, CursorKey, OpenFile, Opening, Step};

pub(super) struct Output;

impl ControlFile for Output {
    fn name(&self) -> &'static str {
        "output"
    }

    fn live(&self) -> bool {
        true
    }

    /// The size a read would return: the caller's own open snapshot, else the newest
    /// open one, else what an open would take now.
    fn stat(
        &self,
        cx: &Context,
        file: &ChildFile,
        view: &ParentView,
        caller: &Caller,
        now: bool,
    ) -> Step<(u64, SystemTime)> {
        let Some(record) = view.child(&file.child) else {
            return Step::Ready(Err(Error::NotFound(file.child.to_string())));
        };
        let w = ready!(cx.watch_of(record));
        // The cursor first: it is locked before the watch elsewhere.
        let cursor = cx.cursor(file, view);
        let Some(s) = w.state_if_ready(now) else {
            return Step::watch(&w, cx.bound(false));
        };
        ready!(s.check());
        let size = cx.outputs.size_for(&file.key(), caller).unwrap_or_else(|| {
            s.current_history()
                .map_or(0, |h| body::text_len(h.unread(cursor)))
        });
        Step::Ready(Ok((size, s.text_changed())))
    }

    fn open(&self, cx: &Context, at: Opening<'_>) -> Step<Arc<dyn OpenFile>> {
        if !cx.may_move_cursor(at.caller) {
            return Step::Ready(Err(Error::ReadOnly));
        }
        if let Some(wait) = cx.cursor_gate(&at.file, at.round.now()) {
            return wait;
        }
        let incarnation = at.view.incarnation(&at.file.child);
        let ((share, len), watch) = ready!(match take_output(cx, &at, incarnation) {
            Step::Ready(r) => r,
            Step::Wait(w, b) => return Step::Wait(w, b),
        });
        cx.outputs
            .opened(at.file.key(), at.fh, len as u64, at.caller);
        Step::Ready(Ok(Arc::new(Open {
            share,
            len,
            file: at.file,
            watch,
        })))
    }
}

/// The text an `output` open took, and the watch it came from.
type Taken = ((Arc<Share>, usize), Lease);

/// An unreachable child gives nothing and leaves the cursor alone; a child that is gone
/// gives nothing more. If the text does not fit the budget even after idle watches made
/// room, the open fails with `EFBIG` and the cursor stays where it was.
fn take_output(cx: &Context, at: &Opening<'_>, incarnation: u64) -> Step<Taken> {
    let w = ready!(cx.watch_of(at.record));
    {
        let Some(s) = w.state_if_ready(at.round.now()) else {
            return Step::watch(&w, cx.bound(true));
        };
        if let Some(e) = s.unreadable() {
            return Step::Ready(Err(e));
        }
        if !s.turn_over() && at.round.may_wait_for_a_turn() && !at.nonblocking {
            drop(s);
            return Step::turn(&w, cx.turn_bound());
        }
        if s.reach() == Reach::Gone {
            drop(s);
            return Step::Ready(Ok(((Share::empty(), 0), w)));
        }
    }
    let key = at.file.key();
    let budget = cx.watches.budget();
    // Room in the budget is made (idle watches ended) with nothing locked, then the take
    // is tried once more.
    let mut room_made = false;
    let (share, len, before, after) = loop {
        match take(&cx.cursors, &key, incarnation, w.state_lock(), budget) {
            Take::Taken {
                share,
                len,
                before,
                after,
            } => break (share, len, before, after),
            Take::NeedsRoom(size) if !room_made => {
                room_made = true;
                cx.watches.make_room(size);
            }
            Take::NeedsRoom(size) => {
                return Step::Ready(Err(Error::OverBudget(format!(
                    "{size} bytes of new text do not fit the memory budget; the cursor did \
                     not move"
                ))))
            }
        }
    };
    cx.cursor_moved(&at.file, before, after);
    Step::Ready(Ok(((share, len), w)))
}

/// One open's snapshot, charged to the memory budget until released.
struct Open {
    /// A range of the watch's text (`len` bytes as a body), read under its lock.
    share: Arc<Share>,
    len: usize,
    file: ChildFile,
    watch: Lease,
}

impl OpenFile for Open {
    fn read(&self, _cx: &Context, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        let s = self.watch.state();
        self.share
            .with_text(s.history().map(History::text), |text| {
                body::text_slice(text, offset, size, out);
            });
        Ok(())
    }

    fn release(&self, cx: &Context, fh: u64) {
        cx.watches.budget().resize(self.len, 0);
        cx.outputs.closed(&self.file.key(), fh);
    }

    /// Readable when a new open would return text without waiting: the turn is over and
    /// there is text the cursor has not passed.
    fn poll(&self, cx: &Context, fh: u64, notify: Notify) -> Result<bool> {
        let w = &self.watch;
        let view = cx.parents.child_view(&self.file.pod, &self.file.child)?;
        let cursor = cx.cursor(&self.file, &view);
        let (pending, version) = {
            let s = w.state();
            let pending =
                s.turn_over() && s.history().is_some_and(|h| !h.unread(cursor).is_empty());
            (pending, s.version(Topic::Output))
        };
        w.set_poller(fh, Topic::Output, version, notify);
        Ok(pending)
    }

    fn watch(&self) -> Option<&Watch> {
        Some(&self.watch)
    }

    fn own_size(&self) -> Option<u64> {
        Some(self.len as u64)
    }
}

/// An open snapshot, for `stat`.
struct OpenOutput {
    fh: u64,
    size: u64,
    /// The thread that opened it, and (once asked for) its process.
    opener: u32,
    opener_process: Option<Option<u32>>,
}

impl OpenOutput {
    /// The opener's process, looked up once and only when a `stat` needs it: reading
    /// `/proc` costs more than the rest of an open, and most `stat`s come from the very
    /// thread that opened (or name the descriptor).
    fn process(&mut self) -> Option<u32> {
        let opener = self.opener;
        *self
            .opener_process
            .get_or_insert_with(|| crate::process::tgid(opener))
    }
}

/// The `output` snapshots open per child, oldest first.
#[derive(Default)]
pub(super) struct OpenOutputs {
    open: Mutex<HashMap<CursorKey, Vec<OpenOutput>>>,
}

impl OpenOutputs {
    fn opened(&self, key: CursorKey, fh: u64, size: u64, caller: &Caller) {
        self.open.lock().entry(key).or_default().push(OpenOutput {
            fh,
            size,
            opener: caller.pid,
            opener_process: None,
        });
    }

    fn closed(&self, key: &CursorKey, fh: u64) {
        let mut open = self.open.lock();
        if let Some(list) = open.get_mut(key) {
            list.retain(|o| o.fh != fh);
            if list.is_empty() {
                open.remove(key);
            }
        }
    }

    /// The size `stat` of `output` shows `caller` while snapshots are open: that of the
    /// newest one its process opened, else the newest of all.
    fn size_for(&self, key: &CursorKey, caller: &Caller) -> Option<u64> {
        let mut open = self.open.lock();
        let list = open.get_mut(key)?;
        if caller.pid != 0 {
            if let Some(o) = list.iter().rev().find(|o| o.opener == caller.pid) {
                return Some(o.size);
            }
            if let Some(me) = crate::process::tgid(caller.pid) {
                for o in list.iter_mut().rev() {
                    if o.process() == Some(me) {
                        return Some(o.size);
                    }
                }
            }
        }
        list.last().map(|o| o.size)
    }
}
