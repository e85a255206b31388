//! The live state of one watched child, as readers see it, and the rules by which the
//! reactor changes it. No I/O here: the reactor feeds it Snapshots, events and failures;
//! readers register to be called back when it is ready or when a file's content changes.
//!
//! Callbacks are returned to the caller rather than run under the lock, so a callback may
//! freely read this state again (the FUSE adapter re-runs the operation that waited).

use std::time::{Instant, SystemTime};

use crate::protocol::history::{Changes, History, Snapshot};
use crate::protocol::wire::PodStatus;

pub type Callback = Box<dyn FnOnce() + Send + 'static>;

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
}

/// Which content a poller waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Status,
    Text,
}

struct Waiter {
    id: u64,
    then: Callback,
}

struct Poller {
    topic: Topic,
    seen: u64,
    then: Callback,
}

pub struct LiveState {
    pub reach: Reach,
    /// The child's own word while live.
    pub status: PodStatus,
    /// The last history seen; kept when the child goes away (`log` shows it).
    pub history: Option<History>,
    /// Whether `history` is current: false while a fresh Snapshot is being fetched.
    pub fresh: bool,
    pub status_version: u64,
    pub text_version: u64,
    /// When the assistant text last changed (`log`'s mtime).
    pub text_changed: SystemTime,
    pub status_changed: SystemTime,
    /// Messages handed to the child and not yet confirmed: a second writer must not be told
    /// the child is idle meanwhile.
    pub pending_runs: u32,
    /// Open handles and registered pollers: a pinned watch is never evicted.
    pub pins: u32,
    pub last_interest: Instant,
    /// Set once the watch has been ended; nothing will change any more.
    pub closed: bool,
    waiters: Vec<Waiter>,
    pollers: Vec<Poller>,
    next_waiter: u64,
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
            pins: 0,
            last_interest: now,
            closed: false,
            waiters: Vec::new(),
            pollers: Vec::new(),
            next_waiter: 0,
        }
    }

    /// Whether readers can be answered: the child's state is known, and if it is live, the
    /// history is current.
    pub fn ready(&self) -> bool {
        self.closed
            || match self.reach {
                Reach::Pending => false,
                Reach::Live => self.fresh,
                Reach::Gone | Reach::Silent => true,
            }
    }

    /// The word `status` shows.
    pub fn status_word(&self) -> PodStatus {
        match self.reach {
            Reach::Live => self.status,
            // A child that accepts connections and never answers is not live by the
            // runtime's rule (connect and a Snapshot).
            Reach::Gone | Reach::Silent => PodStatus::Unreachable,
            Reach::Pending if self.history.is_some() => self.status,
            Reach::Pending => PodStatus::Unreachable,
        }
    }

    /// Whether a new message may be sent now (no turn running, none of ours on the way).
    pub fn takes_input(&self) -> bool {
        self.reach == Reach::Live && self.status.takes_runs() && self.pending_runs == 0
    }

    pub fn is_idle(&self) -> bool {
        self.waiters.is_empty()
            && self.pollers.is_empty()
            && self.pins == 0
            && self.pending_runs == 0
    }

    pub fn text_bytes(&self) -> usize {
        self.history.as_ref().map_or(0, History::bytes)
    }

    /// Call `then` once ready. Returns it back when ready already (the caller runs it), or
    /// the waiter's id, for its deadline.
    pub fn add_waiter(&mut self, then: Callback) -> Result<u64, Callback> {
        if self.ready() {
            return Err(then);
        }
        self.next_waiter += 1;
        let id = self.next_waiter;
        self.waiters.push(Waiter { id, then });
        Ok(id)
    }

    /// A waiter's deadline passed: hand it back if it is still waiting.
    pub fn expire_waiter(&mut self, id: u64) -> Option<Callback> {
        let i = self.waiters.iter().position(|w| w.id == id)?;
        Some(self.waiters.swap_remove(i).then)
    }

    /// Wake `then` when `topic`'s version passes `seen`. Returns it back when it already has.
    pub fn add_poller(&mut self, topic: Topic, seen: u64, then: Callback) -> Option<Callback> {
        if self.version(topic) > seen || self.closed {
            return Some(then);
        }
        self.pollers.push(Poller { topic, seen, then });
        None
    }

    pub fn version(&self, topic: Topic) -> u64 {
        match topic {
            Topic::Status => self.status_version,
            Topic::Text => self.text_version,
        }
    }

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

    fn text_grew(&mut self) {
        self.text_version += 1;
        self.text_changed = SystemTime::now();
    }

    /// Callbacks that are due after a change: every waiter once ready, and the pollers
    /// whose topic moved.
    fn due(&mut self) -> Vec<Callback> {
        let mut out = Vec::new();
        if self.ready() {
            out.extend(self.waiters.drain(..).map(|w| w.then));
        }
        let (status, text) = (self.status_version, self.text_version);
        let mut i = 0;
        while i < self.pollers.len() {
            let p = &self.pollers[i];
            let moved = match p.topic {
                Topic::Status => status > p.seen,
                Topic::Text => text > p.seen,
            };
            if moved || self.closed {
                out.push(self.pollers.swap_remove(i).then);
            } else {
                i += 1;
            }
        }
        out
    }

    /// A Snapshot arrived: the history and status are now exactly the child's.
    pub fn snapshot(&mut self, s: Snapshot) -> Vec<Callback> {
        let text_changed = self.history.as_ref().map(History::text) != Some(s.history.text());
        self.history = Some(s.history);
        self.fresh = true;
        self.set_reach(Reach::Live);
        self.set_status(s.status);
        if text_changed {
            self.text_grew();
        }
        self.due()
    }

    /// Events changed the history (already applied to `self.history`) or the status.
    pub fn changed(&mut self, c: &Changes) -> Vec<Callback> {
        if let Some(status) = c.status {
            self.set_status(status);
        }
        if c.text {
            self.text_grew();
        }
        if c.resync {
            self.fresh = false;
        }
        self.due()
    }

    /// The connection ended; a new one is being made. The last state stays visible, but
    /// readers of the history wait for the new Snapshot.
    pub fn reconnecting(&mut self) {
        self.fresh = false;
        if self.reach == Reach::Live {
            self.reach = Reach::Pending;
        }
    }

    /// The child could not be reached (`Gone`) or did not answer in time (`Silent`).
    pub fn unreachable(&mut self, reach: Reach) -> Vec<Callback> {
        self.set_reach(reach);
        self.due()
    }

    /// The watch ends: everyone waiting is answered with the state as it is.
    pub fn close(&mut self) -> Vec<Callback> {
        self.closed = true;
        self.due()
    }

    /// The child accepted one of our messages: it is running now, whatever order its
    /// `status` event comes in.
    pub fn run_accepted(&mut self) -> Vec<Callback> {
        self.pending_runs = self.pending_runs.saturating_sub(1);
        if self.reach == Reach::Live {
            self.set_status(PodStatus::Running);
        }
        self.due()
    }

    pub fn run_failed(&mut self) {
        self.pending_runs = self.pending_runs.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counter() -> (Arc<AtomicUsize>, impl Fn() -> Callback) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (n, move || {
            let m = m.clone();
            Box::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            })
        })
    }

    fn snap(text: &[&str], status: PodStatus) -> Snapshot {
        let mut history = History::default();
        history.push_entries(1);
        history.push_message(text);
        Snapshot { history, status }
    }

    #[test]
    fn waiters_run_once_ready_and_pollers_when_their_topic_moves() {
        let (n, cb) = counter();
        let mut s = LiveState::new(Instant::now());
        assert!(!s.ready());
        let Ok(id) = s.add_waiter(cb()) else {
            panic!("not ready yet")
        };
        assert!(s.add_poller(Topic::Status, 0, cb()).is_none());
        assert!(s.add_poller(Topic::Text, 0, cb()).is_none());
        for f in s.snapshot(snap(&["a"], PodStatus::Idle)) {
            f();
        }
        assert_eq!(
            n.load(Ordering::SeqCst),
            3,
            "waiter, status poller, text poller"
        );
        assert!(s.expire_waiter(id).is_none(), "already answered");
        assert!(s.add_waiter(cb()).is_err(), "ready: run it now");
        // The same text again is no change; a status change is.
        assert!(s.add_poller(Topic::Text, s.text_version, cb()).is_none());
        assert!(s.snapshot(snap(&["a"], PodStatus::Running)).is_empty());
        assert_eq!(s.status_word(), PodStatus::Running);
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
        assert_eq!(s.history.as_ref().unwrap().text(), "kept");
        assert!(!s.takes_input());
        let mut t = LiveState::new(Instant::now());
        t.unreachable(Reach::Silent);
        assert_eq!(t.status_word(), PodStatus::Unreachable);
    }

    #[test]
    fn a_pending_message_makes_the_child_busy_until_confirmed() {
        let mut s = LiveState::new(Instant::now());
        s.snapshot(snap(&[], PodStatus::Idle));
        assert!(s.takes_input());
        s.pending_runs += 1;
        assert!(!s.takes_input());
        s.run_accepted();
        assert_eq!(s.status_word(), PodStatus::Running);
        assert!(!s.takes_input());
    }
}
