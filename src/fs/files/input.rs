//! `input`: a message to the child, sent when the last descriptor of its open file is
//! closed. Reads are empty, so tree-walking tools copy it without an error.
//!
//! **Invariant: all or nothing.** A refused write poisons its whole open file: its later
//! writes and closes fail the same way, and nothing of it is ever sent ([`Message`]).
//!
//! **Invariant: a writer told "success" by every call has its message delivered, exactly
//! once.** The child is reserved for the message from its first write, so another writer
//! meanwhile gets `EBUSY` (which `status` shows as `running`) instead of being lost after
//! its close; a reservation that sees no write or close for the hold bound lapses, and its
//! open's next write takes the child back if it is still free or is refused. Once the last
//! descriptor is closed, the message is handed to the reactor, which writes it when the
//! child takes runs by its own word and never writes it twice ([`crate::watch`]). Only the
//! death of a process that wrote to the open file, before its writes were done, poisons
//! it: a bystander that merely inherited the descriptor may die as it likes.

use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};
use crate::fs::step::ready;
use crate::fs::writes::{Child, Delivery, Message, Refusal};
use crate::parents::ParentView;
use crate::watch::live::{Intake, Reach};
use crate::watch::{Lease, Watch};

use super::{Caller, ChildFile, Context, ControlFile, OpenFile, Opening, Step};

pub(super) struct Input;

impl ControlFile for Input {
    fn name(&self) -> &'static str {
        "input"
    }

    fn writable(&self) -> bool {
        true
    }

    fn stat(
        &self,
        _cx: &Context,
        _file: &ChildFile,
        view: &ParentView,
        _caller: &Caller,
        _now: bool,
    ) -> Step<(u64, SystemTime)> {
        Step::Ready(Ok((0, view.mtime())))
    }

    fn open(&self, cx: &Context, at: Opening<'_>) -> Step<Arc<dyn OpenFile>> {
        // Start watching: the first write will need the child's state. A child podfs may
        // not reach is refused here, where even `echo > input` sees it.
        let watch = if at.write {
            Some(ready!(cx.watch_of(at.record)))
        } else {
            None
        };
        Step::Ready(Ok(Arc::new(Open {
            watch,
            file: at.file,
            message: Mutex::new(Message::default()),
            last_writer: Mutex::new((0, 0)),
        })))
    }
}

struct Open {
    file: ChildFile,
    /// The child's watch (write opens only).
    watch: Option<Lease>,
    message: Mutex<Message>,
    /// The thread that wrote last and its process, so that a writer of many small writes
    /// costs one look into `/proc`.
    last_writer: Mutex<(u32, u32)>,
}

impl Open {
    /// The message of `fh` will not be sent: the child is free for other writers.
    fn free_intake(&self, fh: u64) {
        if let Some(w) = &self.watch {
            let due = w.state().release_intake(fh);
            for d in due {
                d.run();
            }
        }
    }

    /// The process of thread `tid` (0 when podfs cannot see it).
    fn process_of(&self, tid: u32) -> u32 {
        let mut last = self.last_writer.lock();
        if last.0 != tid || tid == 0 {
            *last = (tid, crate::process::tgid(tid).unwrap_or(0));
        }
        last.1
    }

    /// Whether the child takes this open's message now, as a write or a close asks.
    fn child(&self, w: &Lease, fh: u64) -> Child {
        match w.entry().intake(fh) {
            Intake::Takes => Child::Takes,
            Intake::Busy => Child::Busy,
            Intake::Unreachable => Child::Unreachable,
            Intake::Failed(f) => Child::Untracked(Error::from(f).errno()),
        }
    }

    /// Hand a finished message to the child. Its writer was told every write and close
    /// succeeded, so it is delivered even if the child is busy with another client's turn
    /// for a while (it waits for the child's next idle moment, bounded); what still fails
    /// is logged at error level.
    fn deliver(&self, fh: u64, delivery: Delivery) {
        let (pod, child) = self.file.key();
        match delivery {
            Delivery::Nothing => self.free_intake(fh),
            Delivery::Dropped(Refusal::Incomplete) => {
                self.free_intake(fh);
                error!(%pod, %child, "message not sent: it ends in the middle of a character");
            }
            Delivery::Dropped(why) => {
                self.free_intake(fh);
                debug!(%pod, %child, ?why, "refused message discarded; its writer was told");
            }
            Delivery::Send(text) => {
                let Some(w) = &self.watch else {
                    return;
                };
                let bytes = text.len();
                w.entry().send_run(
                    fh,
                    text,
                    Box::new(move |outcome| match outcome {
                        Ok(()) => info!(%pod, %child, bytes, "message delivered"),
                        Err(e) => error!(%pod, %child, bytes, error = %e,
                            "message not delivered after its writer closed"),
                    }),
                );
            }
        }
    }
}

impl OpenFile for Open {
    fn read(&self, _cx: &Context, _offset: u64, _size: u32, _out: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }

    fn write(&self, cx: &Context, fh: u64, data: &[u8], caller: &Caller, now: bool) -> Step<usize> {
        let Some(w) = &self.watch else {
            return Step::Ready(Err(Error::ReadOnly));
        };
        if !w.state().ready() && !now {
            return Step::watch(w, cx.bound(true));
        }
        let writer = self.process_of(caller.pid);
        let child = self.child(w, fh);
        let written = {
            let mut m = self.message.lock();
            m.written_by(writer);
            m.write(data, child)
        };
        if written.is_err() {
            self.free_intake(fh);
        }
        written.into()
    }

    /// A refused or cut message says so here; so does a writer killed by a signal midway
    /// (nothing of its message is sent), a message whose child is already gone, and one
    /// whose lapsed reservation another writer took meanwhile, where its writer can still
    /// hear of it.
    fn flush(&self, _cx: &Context, fh: u64, caller: &Caller) -> Result<()> {
        let mut m = self.message.lock();
        m.at_close()?;
        if m.is_empty() {
            return Ok(());
        }
        let (pod, child) = (&self.file.pod, &self.file.child);
        if crate::process::killed_by_signal(caller.pid) {
            if m.is_writer(self.process_of(caller.pid)) {
                warn!(%pod, %child, "input writer killed by a signal midway; nothing of its message is sent");
                let e = m.poison(Refusal::Killed);
                drop(m);
                self.free_intake(fh);
                return Err(e);
            }
            debug!(%pod, %child, "a process that never wrote the message was killed; the message goes on");
            return Ok(());
        }
        let Some(w) = &self.watch else {
            return Ok(());
        };
        let reach = w.state().reach();
        let refused = match reach {
            Reach::Gone | Reach::Silent => Some(Refusal::Unreachable),
            Reach::Failed(f) => Some(Refusal::Untracked(Error::from(f).errno())),
            // Its reservation lapsed and another writer's message holds the child now.
            Reach::Pending | Reach::Live if !w.entry().keep_reservation(fh) => Some(Refusal::Busy),
            Reach::Pending | Reach::Live => None,
        };
        if let Some(why) = refused {
            let e = m.poison(why);
            drop(m);
            self.free_intake(fh);
            return Err(e);
        }
        Ok(())
    }

    fn release(&self, _cx: &Context, fh: u64) {
        let delivery = self.message.lock().finish();
        self.deliver(fh, delivery);
    }

    fn watch(&self) -> Option<&Watch> {
        self.watch.as_deref()
    }
}
