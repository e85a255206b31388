//! The live state of one watched child, as readers see it, and the rules by which the
//! reactor changes it. No I/O here: the reactor feeds it Snapshots, events and failures;
//! readers register to be woken when it is ready or when a file's content changes.
//!
//! Wake-ups are returned to the caller as [`Due`] rather than run under the lock, so a
//! woken operation may freely read this state again (the FUSE adapter re-runs the
//! operation that waited).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::Error;
use crate::protocol::history::{Changes, History, Snapshot};

use crate::protocol::wire::PodStatus;
use crate::watch::budget::Budget;
use crate::watch::pages::{self, Deliver, Delivery, KernelPages, PageKernel, Run};
use crate::watch::share::{Share, Shares};

/// Why a parked operation is run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The child's state is known.
    Ready,
    /// Its bound passed first.
    Expired,
    /// The process it waited for got a signal.
    Interrupted,
}

/// A parked operation, run once.
pub type Waiter = Box<dyn FnOnce(Wake) + Send + 'static>;

/// A poller's notification to the kernel: called on every change of its topic, for as long
/// as its open file lives (an edge-triggered epoll waits for exactly these).
pub type Notify = Arc<dyn Fn() + Send + Sync + 'static>;

/// Something to run once the state's lock is released.
pub enum Due {
    Wake(Waiter, Wake),
    Notify(Notify),
    Run(Run),
}

impl Due {
    pub fn run(self) {
        match self {
            Due::Wake(w, why) => w(why),
            Due::Notify(n) => n(),
            Due::Run(r) => r(),
        }
    }
}

/// Whether podfs can talk to the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No answer yet: connecting, or waiting for the first Snapshot.
    Pending,
    /// Connected, and a Snapshot arrived.
    Live,
    /// Nobody listens, or the connection failed: the runtime's "unreachable".
    Gone,
    /// Connected, but no Snapshot within the I/O bound.
    Silent,
    /// podfs itself cannot follow the child; its files say why instead of a state.
    Failed(Failure),
}

/// Why podfs cannot follow a child. Never a statement about the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// What it sent would take podfs past its memory budget.
    OverBudget,
    /// podfs's own resources ran out (the errno: EMFILE, ENFILE, ENOMEM, ...).
    Local(i32),
    /// podfs failed (a contained panic) while handling what the child sent.
    Internal,
    /// podfs may not connect to the child's socket (a symlink on the way, another user's
    /// file or process, no `/proc`): `EACCES`, never a statement that the child is gone.
    Refused(i32),
}

/// The error every file of a child podfs cannot follow answers with.
impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f {
            Failure::OverBudget => Error::OverBudget(
                "the child's history does not fit podfs's memory budget (--memory-budget-mib)"
                    .into(),
            ),
            Failure::Local(errno) => Error::io(
                "podfs cannot follow the child for lack of its own resources",
                std::io::Error::from_raw_os_error(errno),
            ),
            Failure::Internal => {
                Error::Panicked("podfs failed while following the child; see the log".into())
            }
            Failure::Refused(errno) => Error::io(
                "podfs may not connect to the child's socket (see the log)",
                std::io::Error::from_raw_os_error(errno),
            ),
        }
    }
}

/// Which content a poller waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Status,
    Text,
    /// Either: what `output` is readable by (text, once the turn is over).
    Output,
}

/// Whether a message may be written to the child now, as `input` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    Takes,
    Busy,
    Unreachable,
    Failed(Failure),
}

/// What a parked operation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The child's state is known ([`LiveState::ready`]).
    Ready,
    /// The turn the child runs is over ([`LiveState::turn_over`]): a reader of `output`
    /// waits for it as a pipe's reader waits for a writer that has not closed yet.
    TurnOver,
    /// The child's state is known and `log`'s text is published
    /// ([`LiveState::log_ready`]).
    Published,
}

struct Parked {
    id: u64,
    until: Until,
    then: Waiter,
}

/// An open `input` whose first write reserved the child for its message.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    fh: u64,
    /// Its last write or close: a reservation that sees none for the hold bound lapses.
    last: Instant,
}

pub struct LiveState {
    reach: Reach,
    /// The child's own word while live.
    status: PodStatus,
    /// The last history seen; kept when the child goes away (`log` shows it).
    history: Option<History>,
    /// Whether `history` is current: false while a fresh Snapshot is being fetched.
    fresh: bool,
    status_version: u64,
    text_version: u64,
    /// When the published text last changed (`log`'s mtime).
    text_changed: SystemTime,
    status_changed: SystemTime,
    /// Messages handed to the child and not yet confirmed: a second writer must not be told
    /// the child is idle meanwhile.
    pending_runs: u32,
    /// The open `input` whose first write reserved the child for its message.
    reservation: Option<Reservation>,
    /// Open handles: a pinned watch is never ended for being idle or evicted.
    pins: u32,
    last_interest: Instant,
    /// A parked operation's bound passed before the child answered: later operations do
    /// not wait again (one bound covers the whole directory, not every file in it).
    overdue: bool,
    /// Set once the watch has been ended; nothing will change any more.
    closed: bool,
    /// Bytes this watch has charged to the memory budget.
    charged: usize,
    waiters: Vec<Parked>,
    /// One poller per open file that polled (a descriptor polled a million times is still
    /// one), dropped when that file is released.
    pollers: HashMap<u64, (Topic, Notify)>,
    next_waiter: u64,
    /// The `log` pages the kernel may hold of this text ([`KernelPages`]'s invariants).
    pages: KernelPages,
    /// The text's length as of its last change: what events appended to.
    shown: usize,
    /// `output`'s open snapshots, ranges of this text ([`Shares`]' invariant).
    shares: Shares,
    /// What a change of the text gave to run once the lock is released.
    runs: Vec<Run>,
}

impl LiveState {
    pub fn new(now: Instant) -> Self {
        LiveState {
            reach: Reach::Pending,
            status: PodStatus::Unreachable,
            history: None,
            fresh: false,
            status_version: 0,
            text_version: 0,
            text_changed: SystemTime::now(),
            status_changed: SystemTime::now(),
            pending_runs: 0,
            reservation: None,
            pins: 0,
            last_interest: now,
            overdue: false,
            closed: false,
            charged: 0,
            waiters: Vec::new(),
            pollers: HashMap::new(),
            next_waiter: 0,
            pages: KernelPages::default(),
            shown: 0,
            shares: Shares::default(),
            runs: Vec::new(),
        }
    }

    // -----------------------------------------------------------------------------------
    // What readers see

    pub fn reach(&self) -> Reach {
        self.reach
    }

    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// Whether the history is the child's current one (not being refreshed).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    pub fn text_changed(&self) -> SystemTime {
        self.text_changed
    }

    pub fn status_changed(&self) -> SystemTime {
        self.status_changed
    }

    /// Why podfs cannot follow the child, if it cannot.
    pub fn failure(&self) -> Option<Failure> {
        match self.reach {
            Reach::Failed(f) => Some(f),
            _ => None,
        }
    }

    /// The history, if it is the child's current one: what a size shown before a read
    /// may promise.
    pub fn current_history(&self) -> Option<&History> {
        match self.reach {
            Reach::Live if self.fresh => self.history.as_ref(),
            _ => None,
        }
    }

    /// The history's length, where podfs knows the child's history (a silent child's, or
    /// one podfs cannot follow, is not known): the bound of a cursor value.
    pub fn known_len(&self) -> Option<u64> {
        match self.reach {
            Reach::Live | Reach::Gone | Reach::Pending => self.history.as_ref().map(History::len),
            Reach::Silent | Reach::Failed(_) => None,
        }
    }

    /// Why the history cannot be read now, if it cannot: a child that accepted the
    /// connection and never answered in the I/O bound (`ETIMEDOUT`), never an empty
    /// success; a child podfs cannot follow (`EFBIG` over the budget, or podfs's own
    /// errno).
    pub fn unreadable(&self) -> Option<Error> {
        match self.reach {
            Reach::Failed(f) => Some(f.into()),
            Reach::Silent => Some(Error::Timeout(
                "the child accepted the connection but sent no Snapshot in time".into(),
            )),
            Reach::Pending => Some(Error::Timeout("the child did not answer in time".into())),
            Reach::Live if !self.fresh => Some(Error::Timeout(
                "the child's history could not be refreshed in time".into(),
            )),
            Reach::Live | Reach::Gone => None,
        }
    }

    /// The error of any read while podfs cannot follow the child.
    pub fn check(&self) -> Result<(), Error> {
        self.failure().map_or(Ok(()), |f| Err(f.into()))
    }

    /// Whether readers can be answered: the child's state is known, and if it is live, the
    /// history is current; or an earlier wait's bound already passed.
    pub fn ready(&self) -> bool {
        self.closed
            || match self.reach {
                Reach::Pending => self.overdue,
                Reach::Live => self.fresh || self.overdue,
                Reach::Gone | Reach::Silent | Reach::Failed(_) => true,
            }
    }

    /// Whether the child is between turns, as far as a reader of `output` must wait for:
    /// not running by the word `status` shows (so a message of ours reserved or on its
    /// way counts as running), or gone, or podfs cannot follow it, or the watch ended. A
    /// connection being re-made keeps the last word.
    pub fn turn_over(&self) -> bool {
        self.closed
            || !matches!(self.reach, Reach::Live | Reach::Pending)
            || self.status_word() != PodStatus::Running
    }

    fn holds(&self, until: Until) -> bool {
        match until {
            Until::Ready => self.ready(),
            Until::TurnOver => self.turn_over(),
            Until::Published => self.closed || self.log_ready(),
        }
    }

    /// Whether a message of ours holds the child (reserved or on its way).
    fn ours_running(&self) -> bool {
        self.reservation.is_some() || self.pending_runs > 0
    }

    /// The word `status` shows: `running` whenever `input` would refuse with EBUSY.
    pub fn status_word(&self) -> PodStatus {
        match self.reach {
            Reach::Live if self.ours_running() => PodStatus::Running,
            Reach::Live => self.status,
            // A child that accepts connections and never answers is not live by the
            // runtime's rule (connect and a Snapshot).
            Reach::Gone | Reach::Silent | Reach::Failed(_) => PodStatus::Unreachable,
            Reach::Pending if self.history.is_some() && self.ours_running() => PodStatus::Running,
            Reach::Pending if self.history.is_some() => self.status,
            Reach::Pending => PodStatus::Unreachable,
        }
    }

    pub fn version(&self, topic: Topic) -> u64 {
        match topic {
            Topic::Status => self.status_version,
            // What `log` shows: the published text ([`KernelPages`]), so that a poller
            // told "readable" finds the new size.
            Topic::Text => self.pages.published().version,
            Topic::Output => self.status_version + self.text_version,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.waiters.is_empty() && self.pins == 0 && self.pending_runs == 0
    }

    pub fn is_pinned(&self) -> bool {
        self.pins > 0 || self.pending_runs > 0
    }

    pub fn last_interest(&self) -> Instant {
        self.last_interest
    }

    pub fn touch(&mut self, now: Instant) {
        self.last_interest = now;
    }

    pub fn pin(&mut self, now: Instant) {
        self.pins += 1;
        self.last_interest = now;
    }

    pub fn unpin(&mut self, now: Instant) {
        self.pins = self.pins.saturating_sub(1);
        self.last_interest = now;
    }

    pub fn text_bytes(&self) -> usize {
        self.history.as_ref().map_or(0, History::bytes)
    }

    pub fn pollers(&self) -> usize {
        self.pollers.len()
    }

    /// Charge the budget for `want` bytes in all (what this watch holds now); false, with
    /// nothing changed, when that would pass the limit. A closed watch holds nothing.
    pub fn charge(&mut self, budget: &Budget, want: usize) -> bool {
        let want = if self.closed { 0 } else { want };
        if want > budget.share() {
            return false;
        }
        if budget.resize(self.charged, want) {
            self.charged = want;
            true
        } else {
            false
        }
    }

    /// Return everything this watch charged.
    pub fn discharge(&mut self, budget: &Budget) {
        budget.resize(self.charged, 0);
        self.charged = 0;
    }

    pub fn charged(&self) -> usize {
        self.charged
    }

    // -----------------------------------------------------------------------------------
    // Waiting

    /// Run `then` once `until` holds. Returns it back when it holds already (the caller
    /// runs it), or the waiter's id, for its deadline.
    pub fn add_waiter(&mut self, until: Until, then: Waiter) -> Result<u64, Waiter> {
        if self.holds(until) {
            return Err(then);
        }
        self.next_waiter += 1;
        let id = self.next_waiter;
        self.waiters.push(Parked { id, until, then });
        Ok(id)
    }

    pub fn has_waiter(&self, id: u64) -> bool {
        self.waiters.iter().any(|w| w.id == id)
    }

    /// A waiter's deadline passed (or its caller was interrupted): hand it back if it is
    /// still waiting. A passed bound makes later waits pointless until the child answers.
    pub fn expire_waiter(&mut self, id: u64, why: Wake) -> Option<Due> {
        let i = self.waiters.iter().position(|w| w.id == id)?;
        // A readiness bound that passed makes later waits pointless until the child
        // answers; a turn that outlasts a bound says nothing of the kind.
        if why == Wake::Expired && self.waiters[i].until == Until::Ready {
            self.overdue = true;
        }
        Some(Due::Wake(self.waiters.swap_remove(i).then, why))
    }

    /// Register (or replace) the poller of open file `fh`: `notify` runs on every change
    /// of `topic` until [`LiveState::drop_poller`]. Returns whether the topic already moved
    /// past `seen` (the file is readable now).
    pub fn set_poller(&mut self, fh: u64, topic: Topic, seen: u64, notify: Notify) -> bool {
        self.pollers.insert(fh, (topic, notify));
        self.version(topic) > seen || self.closed
    }

    pub fn drop_poller(&mut self, fh: u64) {
        self.pollers.remove(&fh);
    }

    /// An open of `log` inode `ino` (`owned`: no other watch served it since this one
    /// did): whether it may keep the kernel's pages of it ([`KernelPages::open`]), and
    /// what to run once the lock is released (what it runs may lock this state again).
    pub fn keep_pages(
        &mut self,
        ino: u64,
        owned: bool,
        kernel: Arc<dyn PageKernel>,
        deliver: Deliver,
    ) -> (bool, Option<Run>) {
        self.pages.open(ino, owned, kernel, deliver)
    }

    /// Lend bytes `start..end` of the text to an open of `output`.
    pub fn lend(&mut self, start: usize, end: usize) -> Arc<Share> {
        self.shares.lend(start, end)
    }

    /// Ready, and no change of `log`'s text waits to be published: what a `stat` or an
    /// open of `log` waits for (microseconds), so that after `cat output` returned a
    /// reply, `cat log` shows it.
    pub fn log_ready(&self) -> bool {
        self.ready() && !self.pages.publishing()
    }

    /// The size of `log`: the body of the published text.
    pub fn log_len(&self) -> u64 {
        self.pages.published().len
    }

    /// What `log` reads serve: the published text ([`KernelPages`]' first invariant).
    pub fn log_text(&self) -> Option<&str> {
        let text = self.history.as_ref()?.text();
        Some(text.get(..self.pages.published().text_len).unwrap_or(text))
    }

    /// The kernel queue reports back ([`Delivery`]).
    pub fn pages_delivered(&mut self, d: Delivery) -> Vec<Due> {
        self.changing(|st| match d {
            Delivery::Dropped { ino, epoch } => st.pages.dropped(ino, epoch),
            Delivery::Published => {
                let text = st.history.as_ref().map_or("", History::text);
                if let Some(run) = st.pages.delivered(st.text_version, text) {
                    st.runs.push(run);
                }
            }
        })
    }

    // -----------------------------------------------------------------------------------
    // Changes

    fn set_status(&mut self, status: PodStatus) {
        self.changing_status_word(|s| s.status = status);
    }

    fn set_reach(&mut self, reach: Reach) {
        self.changing_status_word(|s| s.reach = reach);
    }

    /// Apply `change`; if the word `status` shows moved, that is a new version of it.
    fn changing_status_word(&mut self, change: impl FnOnce(&mut Self)) {
        let before = self.status_word();
        change(self);
        if self.status_word() != before {
            self.status_version += 1;
            self.status_changed = SystemTime::now();
        }
    }

    /// The text changed; `changed_at` is where its body first differs from the one
    /// before (`None`: it does not extend it).
    fn text_grew(&mut self, changed_at: Option<u64>) {
        self.text_version += 1;
        let text = self.history.as_ref().map_or("", History::text);
        self.shown = text.len();
        if let Some(run) = self
            .pages
            .changed(self.text_version, text, changed_at.is_some())
        {
            self.runs.push(run);
        }
    }

    /// What is due after a change: every waiter once ready, and every poller whose topic
    /// moved since the last call (pollers stay registered).
    fn due(&mut self, status_before: u64, text_before: u64, shown_before: u64) -> Vec<Due> {
        // Invalidations first: the kernel must have them before anyone is told.
        let mut out: Vec<Due> = self.runs.drain(..).map(Due::Run).collect();
        let mut i = 0;
        while i < self.waiters.len() {
            if self.holds(self.waiters[i].until) {
                let w = self.waiters.swap_remove(i);
                out.push(Due::Wake(w.then, Wake::Ready));
            } else {
                i += 1;
            }
        }
        let moved = |topic: Topic| match topic {
            Topic::Status => self.status_version != status_before,
            Topic::Text => self.pages.published().version != shown_before,
            Topic::Output => {
                self.status_version != status_before || self.text_version != text_before
            }
        };
        for (topic, notify) in self.pollers.values() {
            if moved(*topic) || self.closed {
                out.push(Due::Notify(notify.clone()));
            }
        }
        out
    }

    /// Run `change` and return what became due.
    fn changing(&mut self, change: impl FnOnce(&mut Self)) -> Vec<Due> {
        let (status, text) = (self.status_version, self.text_version);
        let shown = self.pages.published().version;
        change(self);
        if self.pages.published().version != shown {
            // `log`'s mtime goes with the size it is shown with: the published text's.
            self.text_changed = SystemTime::now();
        }
        self.due(status, text, shown)
    }

    /// A Snapshot arrived: the history and status are now exactly the child's.
    pub fn snapshot(&mut self, s: Snapshot) -> Vec<Due> {
        let text_changed = self.history.as_ref().map(History::text) != Some(s.history.text());
        let old = self.history.as_ref().map_or("", History::text);
        let changed_at = pages::changed_at(old, s.history.text());
        if changed_at.is_none() {
            // A text that does not extend this one: shares of it keep their bytes.
            self.shares.keep(old);
        }
        self.changing(|st| {
            st.history = Some(s.history);
            st.fresh = true;
            st.overdue = false;
            st.set_reach(Reach::Live);
            st.set_status(s.status);
            if text_changed {
                st.text_grew(changed_at);
            }
        })
    }

    /// The history, for the reactor to apply events to (created empty if there is none).
    pub fn history_mut(&mut self) -> &mut History {
        self.history.get_or_insert_with(History::default)
    }

    /// Events changed the history (already applied through [`LiveState::history_mut`]) or
    /// the status.
    pub fn changed(&mut self, c: &Changes) -> Vec<Due> {
        self.changing(|st| {
            if let Some(status) = c.status {
                st.set_status(status);
            }
            if c.text {
                // Events only append: the text before is the first `shown` bytes.
                let text = st.history.as_ref().map_or("", History::text);
                let changed_at = text
                    .get(..st.shown)
                    .and_then(|old| pages::changed_at(old, text));
                // What `output`'s open snapshots share relies on it, too (`Shares`).
                debug_assert!(changed_at.is_some(), "an event replaced the text");
                st.text_grew(changed_at);
            }
            if c.resync {
                st.fresh = false;
            }
        })
    }

    /// The connection ended; a new one is being made. The last state stays visible, but
    /// readers of the history wait for the new Snapshot (with a bound of their own).
    pub fn reconnecting(&mut self) -> Vec<Due> {
        self.changing(|st| {
            st.fresh = false;
            st.overdue = false;
            if st.reach == Reach::Live {
                st.set_reach(Reach::Pending);
            }
        })
    }

    /// The child could not be reached (`Gone`), did not answer in time (`Silent`), or
    /// podfs cannot follow it (`Failed`).
    pub fn unreachable(&mut self, reach: Reach) -> Vec<Due> {
        self.changing(|st| {
            st.set_reach(reach);
            if matches!(reach, Reach::Failed(Failure::OverBudget)) {
                // What is over the budget goes; the files say why instead. Open
                // snapshots keep theirs (the budget holds them already).
                if let Some(h) = st.history.as_ref() {
                    st.shares.keep(h.text());
                }
                st.history = None;
                st.fresh = false;
                st.text_grew(None);
            }
        })
    }

    /// The watch ends: everyone waiting is answered with the state as it is.
    pub fn close(&mut self) -> Vec<Due> {
        self.changing(|st| st.closed = true)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    // -----------------------------------------------------------------------------------
    // Messages

    /// The write (or close) of open file `fh` to `input` at `now`: the first accepted
    /// write reserves the child for this message, so that no other writer's message (which
    /// the child would refuse as busy once this one arrives) is accepted meanwhile, and
    /// `status` says `running`. Also returns whether this call made the reservation (its
    /// lapse is then to be checked, see [`LiveState::lapse`]).
    ///
    /// A reservation lapses once it has seen no write or close for `hold` (a descriptor
    /// kept open and idle must not hold the child for as long as a shell lives): another
    /// writer may then take the child, and the lapsed open's next write takes it back if
    /// it is still free (its message stays whole) or is refused with `EBUSY` if not.
    pub fn intake(&mut self, fh: u64, now: Instant, hold: Duration) -> (Intake, bool) {
        match self.reach {
            Reach::Live => {}
            Reach::Failed(f) => return (Intake::Failed(f), false),
            _ => return (Intake::Unreachable, false),
        }
        if let Some(r) = self.reservation.as_mut() {
            if r.fh == fh {
                // Ours already; still refused if another client started a turn meanwhile.
                r.last = now;
                let takes = if self.status.takes_runs() {
                    Intake::Takes
                } else {
                    Intake::Busy
                };
                return (takes, false);
            }
            if now.duration_since(r.last) >= hold {
                self.changing_status_word(|s| s.reservation = None);
            }
        }
        if self.ours_running() || !self.status.takes_runs() {
            return (Intake::Busy, false);
        }
        self.changing_status_word(|s| s.reservation = Some(Reservation { fh, last: now }));
        (Intake::Takes, true)
    }

    /// The close of `fh` at `now`, its message complete: whether the child is still
    /// reserved for it (or free to be reserved again after a lapse). A turn of another
    /// client does not refuse it here: the message then waits for the child's next idle
    /// moment. Also returns whether this call made the reservation.
    pub fn keep_reservation(&mut self, fh: u64, now: Instant) -> (bool, bool) {
        match self.reservation.as_mut() {
            Some(r) if r.fh == fh => {
                r.last = now;
                (true, false)
            }
            Some(_) => (false, false),
            None if self.pending_runs > 0 => (false, false),
            None => {
                self.changing_status_word(|s| s.reservation = Some(Reservation { fh, last: now }));
                (true, true)
            }
        }
    }

    /// The hold bound of `fh`'s reservation may have passed at `now`: lapse it if it saw no
    /// write or close for `hold`, and say what became due; otherwise when to look again.
    pub fn lapse(&mut self, fh: u64, now: Instant, hold: Duration) -> (Vec<Due>, Option<Instant>) {
        match self.reservation {
            Some(r) if r.fh == fh && now.duration_since(r.last) >= hold => {
                let due = self.changing(|st| st.changing_status_word(|s| s.reservation = None));
                (due, None)
            }
            Some(r) if r.fh == fh => (Vec::new(), Some(r.last + hold)),
            _ => (Vec::new(), None),
        }
    }

    /// The message of `fh` will not be sent (refused, empty, or its writer was killed):
    /// free the child for others.
    pub fn release_intake(&mut self, fh: u64) -> Vec<Due> {
        if self.reservation.map(|r| r.fh) != Some(fh) {
            return Vec::new();
        }
        self.changing(|st| st.changing_status_word(|s| s.reservation = None))
    }

    /// The message of `fh` is handed to the reactor for delivery: the reservation becomes
    /// a pending run, in one step, so the child never looks free in between.
    pub fn hand_over(&mut self, fh: u64) {
        self.changing_status_word(|s| {
            if s.reservation.map(|r| r.fh) == Some(fh) {
                s.reservation = None;
            }
            s.pending_runs += 1;
        });
    }

    /// The child accepted one of our messages: it is running now, whatever order its
    /// `status` event comes in.
    pub fn run_accepted(&mut self) -> Vec<Due> {
        self.changing(|st| {
            st.changing_status_word(|s| s.pending_runs = s.pending_runs.saturating_sub(1));
            if st.reach == Reach::Live {
                st.set_status(PodStatus::Running);
            }
        })
    }

    /// One of our messages could not be delivered.
    pub fn run_failed(&mut self) -> Vec<Due> {
        self.changing(|st| {
            st.changing_status_word(|s| s.pending_runs = s.pending_runs.saturating_sub(1))
        })
    }

    /// Whether the child, by its own word, would take a run now (for a held message).
    pub fn child_takes_runs(&self) -> bool {
        self.reach == Reach::Live && self.status.takes_runs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counter() -> (Arc<AtomicUsize>, impl Fn() -> Waiter) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (n, move || {
            let m = m.clone();
            Box::new(move |_| {
                m.fetch_add(1, Ordering::SeqCst);
            })
        })
    }

    fn notifier() -> (Arc<AtomicUsize>, Notify) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (
            n,
            Arc::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            }),
        )
    }

    const HOLD: Duration = Duration::from_secs(10);

    fn run(due: Vec<Due>) {
        for d in due {
            d.run();
        }
    }

    fn snap(text: &[&str], status: PodStatus) -> Snapshot {
        let mut history = History::default();
        history.push_entries(1);
        history.push_message(text);
        Snapshot { history, status }
    }

    /// A kernel queue that delivers when told to.
    #[derive(Default)]
    struct Later(crate::sync::Mutex<Vec<Run>>);

    impl PageKernel for Later {
        fn drop_pages(&self, _ino: u64, _from: u64) {}
        fn after(&self, then: Run) {
            self.0.lock().push(then);
        }
    }

    #[test]
    fn a_grown_log_is_shown_and_told_only_once_published() {
        let mut s = LiveState::new(Instant::now());
        run(s.snapshot(snap(&["one"], PodStatus::Idle)));
        let kernel = Arc::new(Later::default());
        let delivered = Arc::new(crate::sync::Mutex::new(Vec::new()));
        let d = delivered.clone();
        let deliver: Deliver = Arc::new(move |x| d.lock().push(x));
        let deliver_all = |s: &mut LiveState| {
            for then in std::mem::take(&mut *kernel.0.lock()) {
                then();
            }
            for x in std::mem::take(&mut *delivered.lock()) {
                run(s.pages_delivered(x));
            }
        };
        let (keep, drop) = s.keep_pages(9, true, kernel.clone(), deliver);
        assert!(!keep);
        drop.unwrap()();
        deliver_all(&mut s);
        let (polled, notify) = notifier();
        let seen = s.version(Topic::Text);
        assert!(!s.set_poller(1, Topic::Text, seen, notify));
        run(s.snapshot(snap(&["one", "two"], PodStatus::Idle)));
        assert_eq!(
            s.log_text(),
            Some("one\n\ntwo"),
            "published at once: nothing waits"
        );
        assert_eq!(polled.load(Ordering::SeqCst), 1);
        assert!(!s.log_ready(), "its invalidation is on its way");
        // A turn meanwhile: neither shown nor told until that has been delivered.
        run(s.snapshot(snap(&["one", "two", "three"], PodStatus::Idle)));
        assert_eq!(s.log_text(), Some("one\n\ntwo"));
        assert_eq!(s.log_len(), pages::body_len("one\n\ntwo"));
        assert_eq!(polled.load(Ordering::SeqCst), 1);
        let (woken, cb) = counter();
        assert!(s.add_waiter(Until::Published, cb()).is_ok());
        deliver_all(&mut s);
        assert_eq!(s.log_text(), Some("one\n\ntwo\n\nthree"));
        assert_eq!(polled.load(Ordering::SeqCst), 2);
        assert_eq!(
            woken.load(Ordering::SeqCst),
            0,
            "the newest is on its way now"
        );
        deliver_all(&mut s);
        assert!(s.log_ready());
        assert_eq!(woken.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn waiters_run_once_ready_and_pollers_on_every_change() {
        let (n, cb) = counter();
        let mut s = LiveState::new(Instant::now());
        assert!(!s.ready());
        let Ok(id) = s.add_waiter(Until::Ready, cb()) else {
            panic!("not ready yet")
        };
        let (status_polls, status_notify) = notifier();
        let (text_polls, text_notify) = notifier();
        assert!(!s.set_poller(1, Topic::Status, 0, status_notify));
        assert!(!s.set_poller(2, Topic::Text, 0, text_notify));
        run(s.snapshot(snap(&["a"], PodStatus::Idle)));
        assert_eq!(n.load(Ordering::SeqCst), 1, "the waiter ran once");
        assert_eq!(status_polls.load(Ordering::SeqCst), 1);
        assert_eq!(text_polls.load(Ordering::SeqCst), 1);
        assert!(
            s.expire_waiter(id, Wake::Expired).is_none(),
            "already answered"
        );
        assert!(
            s.add_waiter(Until::Ready, cb()).is_err(),
            "ready: run it now"
        );
        // The same text again is no change; a status change is, and pollers stay
        // registered: every change notifies again (edge-triggered epoll needs that).
        run(s.snapshot(snap(&["a"], PodStatus::Running)));
        assert_eq!(s.status_word(), PodStatus::Running);
        assert_eq!(status_polls.load(Ordering::SeqCst), 2);
        assert_eq!(text_polls.load(Ordering::SeqCst), 1);
        run(s.snapshot(snap(&["a"], PodStatus::Idle)));
        run(s.snapshot(snap(&["a", "b"], PodStatus::Idle)));
        assert_eq!(status_polls.load(Ordering::SeqCst), 3);
        assert_eq!(text_polls.load(Ordering::SeqCst), 2);
        s.drop_poller(1);
        run(s.snapshot(snap(&["a", "b"], PodStatus::Running)));
        assert_eq!(status_polls.load(Ordering::SeqCst), 3, "dropped at release");
    }

    #[test]
    fn polling_one_file_many_times_keeps_one_registration() {
        let mut s = LiveState::new(Instant::now());
        run(s.snapshot(snap(&["a"], PodStatus::Idle)));
        let seen = s.version(Topic::Status);
        for _ in 0..100_000 {
            let (_, n) = notifier();
            assert!(!s.set_poller(7, Topic::Status, seen, n));
        }
        assert_eq!(s.pollers(), 1);
    }

    #[test]
    fn a_turn_waiter_runs_when_the_turn_is_over_and_only_then() {
        let (n, cb) = counter();
        let mut s = LiveState::new(Instant::now());
        run(s.snapshot(snap(&["a"], PodStatus::Running)));
        let Ok(id) = s.add_waiter(Until::TurnOver, cb()) else {
            panic!("the child runs a turn")
        };
        // Text of the turn arrives: still running.
        run(s.changed(&Changes {
            text: true,
            ..Changes::default()
        }));
        assert_eq!(n.load(Ordering::SeqCst), 0);
        run(s.changed(&Changes {
            status: Some(PodStatus::Idle),
            ..Changes::default()
        }));
        assert_eq!(n.load(Ordering::SeqCst), 1, "the turn is over");
        assert!(
            s.expire_waiter(id, Wake::Expired).is_none(),
            "answered once"
        );
        // Our own message reserved counts as a turn, until it is settled.
        assert_eq!(s.intake(1, Instant::now(), HOLD).0, Intake::Takes);
        assert!(s.add_waiter(Until::TurnOver, cb()).is_ok());
        s.hand_over(1);
        run(s.run_accepted());
        assert_eq!(n.load(Ordering::SeqCst), 1);
        run(s.changed(&Changes {
            status: Some(PodStatus::Idle),
            ..Changes::default()
        }));
        assert_eq!(n.load(Ordering::SeqCst), 2);
        // A turn that outlasts a bound says nothing about the child.
        let mut t = LiveState::new(Instant::now());
        run(t.snapshot(snap(&[], PodStatus::Running)));
        let Ok(id) = t.add_waiter(Until::TurnOver, cb()) else {
            panic!("running")
        };
        assert!(t.expire_waiter(id, Wake::Expired).is_some());
        assert!(t.ready());
        // A child that goes away ends the wait.
        assert!(t.add_waiter(Until::TurnOver, cb()).is_ok());
        run(t.unreachable(Reach::Gone));
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn an_expired_bound_covers_later_operations() {
        let (_, cb) = counter();
        let mut s = LiveState::new(Instant::now());
        let Ok(id) = s.add_waiter(Until::Ready, cb()) else {
            panic!("not ready")
        };
        assert!(!s.ready());
        assert!(matches!(
            s.expire_waiter(id, Wake::Expired),
            Some(Due::Wake(_, Wake::Expired))
        ));
        assert!(s.ready(), "the next operation answers at once");
        assert_eq!(s.status_word(), PodStatus::Unreachable);
        // An interrupted waiter says nothing about the child.
        let mut t = LiveState::new(Instant::now());
        let Ok(id) = t.add_waiter(Until::Ready, cb()) else {
            panic!("not ready")
        };
        assert!(t.expire_waiter(id, Wake::Interrupted).is_some());
        assert!(!t.ready());
    }

    #[test]
    fn unreachable_and_silent_children_are_unreachable_and_keep_their_history() {
        let mut s = LiveState::new(Instant::now());
        s.snapshot(snap(&["kept"], PodStatus::Idle));
        s.reconnecting();
        assert!(!s.ready(), "readers wait for the new Snapshot");
        s.unreachable(Reach::Gone);
        assert!(s.ready());
        assert_eq!(s.status_word(), PodStatus::Unreachable);
        assert_eq!(s.history().unwrap().text(), "kept");
        assert_eq!(s.intake(1, Instant::now(), HOLD).0, Intake::Unreachable);
        let mut t = LiveState::new(Instant::now());
        t.unreachable(Reach::Silent);
        assert_eq!(t.status_word(), PodStatus::Unreachable);
        let mut u = LiveState::new(Instant::now());
        u.snapshot(snap(&["big"], PodStatus::Idle));
        u.unreachable(Reach::Failed(Failure::OverBudget));
        assert!(u.history().is_none(), "what is over the budget is dropped");
        assert_eq!(u.failure(), Some(Failure::OverBudget));
    }

    #[test]
    fn the_first_write_reserves_the_child_until_its_message_is_settled() {
        let mut s = LiveState::new(Instant::now());
        s.snapshot(snap(&[], PodStatus::Idle));
        let v0 = s.version(Topic::Status);
        assert_eq!(s.intake(1, Instant::now(), HOLD).0, Intake::Takes);
        assert_eq!(
            s.status_word(),
            PodStatus::Running,
            "status agrees with input"
        );
        assert!(s.version(Topic::Status) > v0);
        assert_eq!(
            s.intake(1, Instant::now(), HOLD).0,
            Intake::Takes,
            "the owner goes on writing"
        );
        assert_eq!(
            s.intake(2, Instant::now(), HOLD).0,
            Intake::Busy,
            "another writer is refused"
        );
        s.hand_over(1);
        assert_eq!(
            s.intake(2, Instant::now(), HOLD).0,
            Intake::Busy,
            "still busy while on its way"
        );
        run(s.run_accepted());
        assert_eq!(s.status_word(), PodStatus::Running);
        // A refused message frees the child at once.
        let mut t = LiveState::new(Instant::now());
        t.snapshot(snap(&[], PodStatus::Idle));
        assert_eq!(t.intake(3, Instant::now(), HOLD).0, Intake::Takes);
        run(t.release_intake(3));
        assert_eq!(t.status_word(), PodStatus::Idle);
        assert_eq!(t.intake(4, Instant::now(), HOLD).0, Intake::Takes);
        // A delivery that failed frees it too.
        t.hand_over(4);
        run(t.run_failed());
        assert_eq!(t.status_word(), PodStatus::Idle);
        assert_eq!(t.intake(5, Instant::now(), HOLD).0, Intake::Takes);
    }

    #[test]
    fn an_idle_reservation_lapses_and_is_taken_back_only_if_still_free() {
        let t0 = Instant::now();
        let mut s = LiveState::new(t0);
        s.snapshot(snap(&[], PodStatus::Idle));
        assert_eq!(s.intake(1, t0, HOLD), (Intake::Takes, true));
        // Within the bound another writer is refused; the lapse check says when to look.
        assert_eq!(s.intake(2, t0 + HOLD / 2, HOLD).0, Intake::Busy);
        let (due, again) = s.lapse(1, t0 + HOLD / 2, HOLD);
        assert!(due.is_empty());
        assert_eq!(again, Some(t0 + HOLD));
        // A write keeps it: the bound runs from the last one.
        assert_eq!(s.intake(1, t0 + HOLD / 2, HOLD), (Intake::Takes, false));
        assert_eq!(s.lapse(1, t0 + HOLD, HOLD).1, Some(t0 + HOLD / 2 + HOLD));
        // Idle for the whole bound: lapsed, status no longer running, others may take it.
        let (_, again) = s.lapse(1, t0 + HOLD * 2, HOLD);
        assert_eq!(again, None);
        assert_eq!(s.status_word(), PodStatus::Idle);
        assert_eq!(s.intake(2, t0 + HOLD * 2, HOLD), (Intake::Takes, true));
        // The lapsed open's next write finds the child taken: refused.
        assert_eq!(s.intake(1, t0 + HOLD * 2, HOLD).0, Intake::Busy);
        // A reservation idle past the bound lapses for a newcomer even before its check.
        let mut u = LiveState::new(t0);
        u.snapshot(snap(&[], PodStatus::Idle));
        assert_eq!(u.intake(7, t0, HOLD).0, Intake::Takes);
        assert_eq!(u.intake(8, t0 + HOLD, HOLD).0, Intake::Takes);
    }
}
