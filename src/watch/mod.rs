//! Watches: the live state of the children somebody looks at.
//!
//! A child whose `status`, `output` or `log` is read or stat'ed, whose `input` is written,
//! or that is polled, gets one connection held by podfs. Its Snapshot is read once; from
//! then on the child's own events keep the status and the history current
//! ([`crate::protocol::history::Tracker`]), so reads are answered from memory and a child's
//! history is serialised once per watch instead of once per `cat`. A dropped connection is
//! re-made with backoff (and one fresh Snapshot). A watch ends after a period without
//! interest, and everything all watches hold is bounded by a memory budget ([`budget`]):
//! least recently used idle watches are dropped first, and a child whose data would still
//! not fit is the one that fails (its files answer `EFBIG`), never a sibling.
//!
//! Every connection is served by one reactor thread ([`reactor`]); 1,000 watches cost that
//! one thread and 1,000 file descriptors.

pub mod budget;
pub mod leases;
pub mod live;
pub mod pages;
mod reactor;
pub mod share;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::error::Result;
use crate::home::Socket;
use crate::pod_client::PodClient;
use crate::process::Requester;
use crate::sync::{Mutex, MutexGuard};
use budget::Budget;
use live::{Intake, LiveState, Notify, Topic, Until, Waiter};
use reactor::{Command, ReactorHandle};

/// Called with the outcome of delivering a message.
pub type RunDone = Box<dyn FnOnce(Result<()>) + Send + 'static>;

#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// A watch without interest for this long ends.
    pub idle: Duration,
    /// What all watches may hold together, in bytes.
    pub budget: usize,
    /// Longest pause between reconnection attempts to a child that went away.
    pub max_backoff: Duration,
    /// How long a message whose writer was told it was accepted waits for a child that is
    /// busy with another client's turn, before podfs gives up on it (and logs an error).
    pub delivery_wait: Duration,
    /// How long an `input` reservation lasts without a write or close.
    pub input_hold: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            idle: Duration::from_secs(60),
            budget: 256 << 20,
            max_backoff: Duration::from_secs(2),
            delivery_wait: Duration::from_secs(600),
            input_hold: Duration::from_secs(10),
        }
    }
}

/// Counters for benchmarks and the log.
#[derive(Debug, Default)]
pub struct Stats {
    pub started: AtomicU64,
    pub ended: AtomicU64,
    pub connects: AtomicU64,
    pub snapshots: AtomicU64,
    pub resyncs: AtomicU64,
    pub evicted_for_memory: AtomicU64,
    pub over_budget: AtomicU64,
}

/// One watched child.
pub struct Watch {
    socket: Socket,
    id: u64,
    state: Mutex<LiveState>,
    reactor: ReactorHandle,
    input_hold: Duration,
}

impl Watch {
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The kernel queue delivered what `log`'s page cache asked for: publish, tell
    /// pollers, send the next.
    pub fn pages_delivered(&self, d: crate::watch::pages::Delivery) {
        let due = self.state.lock().pages_delivered(d);
        for d in due {
            d.run();
        }
    }

    /// Which watch this is: another watch of the same socket is another.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The live state, locked. Keep the guard short: the reactor waits for it.
    pub fn state(&self) -> MutexGuard<'_, LiveState> {
        self.state.lock()
    }

    /// The lock itself, for operations that take it in a fixed order with others
    /// ([`crate::fs::files::output::take::take`]).
    pub fn state_lock(&self) -> &Mutex<LiveState> {
        &self.state
    }

    /// The live state, locked, if the child's state is known, or whatever it is when `now`
    /// (the second round of an operation, which may not wait again). `None`: wait with
    /// [`Watch::when_ready`].
    pub fn state_if_ready(&self, now: bool) -> Option<MutexGuard<'_, LiveState>> {
        let s = self.state.lock();
        (s.ready() || now).then_some(s)
    }

    /// Run `then` once `until` holds (the child's state is known, or its turn is over), at
    /// the latest after `bound`, or as soon as `who` gets a signal.
    pub fn when(self: &Arc<Self>, until: Until, bound: Duration, who: Requester, then: Waiter) {
        let added = self.state.lock().add_waiter(until, then);
        match added {
            Err(now) => now(live::Wake::Ready),
            Ok(id) => self.reactor.send(Command::Deadline {
                watch: Arc::downgrade(self),
                waiter: id,
                at: Instant::now() + bound,
                who,
            }),
        }
    }

    /// Register the poller of open file `fh` (replacing its earlier one): `notify` runs on
    /// every change of `topic` until [`Watch::drop_poller`]. True when the topic already
    /// moved past `seen`.
    pub fn set_poller(&self, fh: u64, topic: Topic, seen: u64, notify: Notify) -> bool {
        self.state.lock().set_poller(fh, topic, seen, notify)
    }

    pub fn drop_poller(&self, fh: u64) {
        self.state.lock().drop_poller(fh);
    }

    /// `input` handle `fh` writes (or closes) now: whether the child takes its message.
    /// The first accepted write reserves the child ([`LiveState::intake`]); the
    /// reservation's lapse is then checked on the reactor's thread.
    pub fn intake(self: &Arc<Self>, fh: u64) -> Intake {
        let now = Instant::now();
        let (intake, reserved) = self.state.lock().intake(fh, now, self.input_hold);
        if reserved {
            self.check_lapse(fh, now + self.input_hold);
        }
        intake
    }

    /// The close of `input` handle `fh`: whether the child is still reserved for its
    /// message ([`LiveState::keep_reservation`]).
    pub fn keep_reservation(self: &Arc<Self>, fh: u64) -> bool {
        let now = Instant::now();
        let (kept, reserved) = self.state.lock().keep_reservation(fh, now);
        if reserved {
            self.check_lapse(fh, now + self.input_hold);
        }
        kept
    }

    fn check_lapse(self: &Arc<Self>, fh: u64, at: Instant) {
        let watch = Arc::downgrade(self);
        self.reactor.send(Command::Call {
            at,
            then: Box::new(move || {
                let Some(w) = watch.upgrade() else { return };
                let (due, again) = w.state.lock().lapse(fh, Instant::now(), w.input_hold);
                for d in due {
                    d.run();
                }
                if let Some(at) = again {
                    w.check_lapse(fh, at);
                }
            }),
        });
    }

    /// Deliver the message of `input` handle `fh` as one `run`; `done` learns whether the
    /// child took it. The child counts as busy for new messages until then.
    pub fn send_run(self: &Arc<Self>, fh: u64, text: String, done: RunDone) {
        self.state.lock().hand_over(fh);
        self.reactor.send(Command::Send {
            watch: self.clone(),
            text,
            done,
        });
    }
}

impl leases::Leasable for Watch {
    fn live(&self) -> &Mutex<LiveState> {
        &self.state
    }
}

/// A watch in use (see [`leases`]): an open file holds its lease until it is released, a
/// parked operation until it runs again.
pub type Lease = leases::Lease<Watch>;

pub struct Watches {
    map: leases::Leases<Socket, Watch>,
    reactor: ReactorHandle,
    config: WatchConfig,
    stats: Arc<Stats>,
    budget: Arc<Budget>,
    next_id: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Watches {
    /// Start the reactor thread.
    pub fn start(client: Arc<PodClient>, config: WatchConfig) -> std::io::Result<Arc<Watches>> {
        let stats = Arc::new(Stats::default());
        let budget = Arc::new(Budget::new(config.budget));
        let (reactor, handle) =
            reactor::Reactor::new(client, stats.clone(), budget.clone(), config.clone())?;
        let watches = Arc::new(Watches {
            map: leases::Leases::default(),
            reactor: handle,
            config,
            stats,
            budget,
            next_id: AtomicU64::new(1),
            thread: Mutex::new(None),
        });
        let weak: Weak<Watches> = Arc::downgrade(&watches);
        let thread = std::thread::Builder::new()
            .name("podfs-watch".into())
            .spawn(move || reactor.run(weak))?;
        *watches.thread.lock() = Some(thread);
        Ok(watches)
    }

    /// A lease on the watch of the child behind `socket`, started if there is none. Counts
    /// as interest: the watch will not end for lack of it for a while after the lease.
    pub fn lease(&self, socket: &Socket) -> Lease {
        let (lease, made) = self.map.lease(socket, || Watch {
            socket: socket.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(LiveState::new(Instant::now())),
            reactor: self.reactor.clone(),
            input_hold: self.config.input_hold,
        });
        if made {
            self.stats.started.fetch_add(1, Ordering::Relaxed);
            debug!(socket = %socket.path().display(), "watch started");
            self.reactor.send(Command::Start(lease.entry().clone()));
        }
        lease
    }

    /// End the watch of a child that is gone for good (after `rm -r`).
    pub fn end(&self, socket: &Socket) {
        if let Some(w) = self.map.remove(socket) {
            self.reactor.send(Command::End(w));
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Pollers registered with all watches (one per polled open file).
    pub fn pollers(&self) -> usize {
        self.map.entries().iter().map(|w| w.state().pollers()).sum()
    }

    /// Text held by all watches, in bytes.
    pub fn text_bytes(&self) -> usize {
        self.map
            .entries()
            .iter()
            .map(|w| w.state().text_bytes())
            .sum()
    }

    /// Run `then` at `at`, on the reactor's thread (for waits that are not a watch's).
    pub fn at(&self, at: Instant, then: Box<dyn FnOnce() + Send + 'static>) {
        self.reactor.send(Command::Call { at, then });
    }

    /// Watches to end now: those without interest for the idle period, then, while more
    /// than the budget is held, the least recently used unused ones.
    fn sweep(&self, now: Instant) -> Vec<Arc<Watch>> {
        let idle = self.config.idle;
        let mut ending = self.map.end(|unused| {
            unused
                .into_iter()
                .filter(|u| now.duration_since(u.last_interest) >= idle)
                .map(|u| u.key)
                .collect()
        });
        for w in &ending {
            w.state.lock().discharge(&self.budget);
        }
        if self.budget.used() > self.budget.limit() {
            ending.extend(self.evict(0, None));
        }
        ending
    }

    /// Free room for `need` more bytes by ending unused watches, least recently used
    /// first, never `except`. Their charges are returned at once; the reactor closes
    /// their connections. Returns the watches ended.
    fn evict(&self, need: usize, except: Option<&Socket>) -> Vec<Arc<Watch>> {
        let (used, limit) = (self.budget.used(), self.budget.limit());
        if used.saturating_add(need) <= limit {
            return Vec::new();
        }
        let ended = self.map.end(|mut unused| {
            unused.retain(|u| u.charged > 0 && Some(&u.key) != except);
            unused.sort_by_key(|u| u.last_interest);
            let mut held = used;
            let mut chosen = Vec::new();
            for u in unused {
                if held.saturating_add(need) <= limit {
                    break;
                }
                held = held.saturating_sub(u.charged);
                chosen.push(u.key);
            }
            chosen
        });
        for w in &ended {
            w.state.lock().discharge(&self.budget);
            self.stats
                .evicted_for_memory
                .fetch_add(1, Ordering::Relaxed);
        }
        ended
    }

    /// [`Watches::evict`] from outside the reactor: the reactor closes what was ended.
    pub fn make_room(&self, need: usize) -> bool {
        for w in self.evict(need, None) {
            self.reactor.send(Command::End(w));
        }
        self.budget.used().saturating_add(need) <= self.budget.limit()
    }

    /// Stop the reactor and close every connection (at unmount): everyone still waiting
    /// is answered. Bounded: a reactor that does not stop in time is left to the exit.
    pub fn shutdown(&self) {
        self.reactor.send(Command::Shutdown);
        let Some(t) = self.thread.lock().take() else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        let joiner = std::thread::Builder::new()
            .name("podfs-watch-join".into())
            .spawn(move || {
                let _ = t.join();
                let _ = tx.send(());
            });
        if joiner.is_ok() && rx.recv_timeout(Duration::from_millis(300)).is_err() {
            warn!("the watch reactor did not stop in time; leaving it to the exit");
        }
    }
}
