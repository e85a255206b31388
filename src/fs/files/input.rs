//! `input`: a message to the child, sent when the last descriptor of its open file is
//! closed. All or nothing: a refused write poisons the whole open file, and nothing of it
//! is ever sent. The child is reserved for the message from its first write, so a writer
//! told "success" by every `write()` and `close()` has its message delivered, and another
//! writer meanwhile gets `EBUSY` (which `status` shows as `running`). Reads are empty, so
//! tree-walking tools copy it without an error.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};
use crate::fs::writes::{Child, Delivery, Message, Refusal};
use crate::parents::ParentView;
use crate::watch::live::{Intake, Reach};
use crate::watch::Watch;

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
        // Start watching: the first write will need the child's state.
        Step::Ready(Ok(Arc::new(Open {
            watch: cx.watch_of(at.record),
            file: at.file,
            message: Mutex::new(Message::default()),
        })))
    }
}

struct Open {
    file: ChildFile,
    watch: Option<Arc<Watch>>,
    message: Mutex<Message>,
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
                    error!(%pod, %child, "message not sent: the child's socket is outside the runtime dir");
                    return;
                };
                let bytes = text.len();
                w.send_run(
                    fh,
                    text,
                    Box::new(move |outcome| match outcome {
                        Ok(()) => info!(%pod, %child, bytes, "message delivered"),
                        Err(e) => error!(%pod, %child, bytes, error = %e,
                            "message not delivered: the child refused it after its writer closed"),
                    }),
                );
            }
        }
    }
}

impl OpenFile for Open {
    fn read(&self, _cx: &Context, _offset: u64, _size: u32) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn write(&self, cx: &Context, fh: u64, data: &[u8], now: bool) -> Step<usize> {
        let child = match &self.watch {
            None => Child::Unreachable,
            Some(w) => {
                let Some(mut s) = w.state_if_ready(now) else {
                    return Step::watch(w, cx.bound(true));
                };
                s.touch(Instant::now());
                match s.intake(fh) {
                    Intake::Takes => Child::Takes,
                    Intake::Busy => Child::Busy,
                    Intake::Unreachable => Child::Unreachable,
                    Intake::Failed(f) => Child::Untracked(Error::from(f).errno()),
                }
            }
        };
        let written = self.message.lock().write(data, child);
        if written.is_err() {
            self.free_intake(fh);
        }
        written.into()
    }

    /// A refused or cut message says so here; so does a writer killed by a signal midway
    /// (nothing of its message is sent), and a message whose child is already gone, where
    /// its writer can still hear of it.
    fn flush(&self, _cx: &Context, fh: u64, caller: &Caller) -> Result<()> {
        let mut m = self.message.lock();
        m.at_close()?;
        if m.is_empty() {
            return Ok(());
        }
        let (pod, child) = (&self.file.pod, &self.file.child);
        if crate::process::killed_by_signal(caller.pid) {
            warn!(%pod, %child, "input writer killed by a signal midway; nothing of its message is sent");
            let e = m.poison(Refusal::Killed);
            drop(m);
            self.free_intake(fh);
            return Err(e);
        }
        let gone = self.watch.as_ref().and_then(|w| match w.state().reach() {
            Reach::Gone | Reach::Silent => Some(Refusal::Unreachable),
            Reach::Failed(f) => Some(Refusal::Untracked(Error::from(f).errno())),
            Reach::Pending | Reach::Live => None,
        });
        if let Some(why) = gone {
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

    fn watch(&self) -> Option<&Arc<Watch>> {
        self.watch.as_ref()
    }
}
