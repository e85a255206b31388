//! Watches: the live state of the children somebody looks at.
//!
//! A child whose `status`, `output` or `log` is read or stat'ed, whose `input` is written,
//! or that is polled, gets one connection held by podfs. Its Snapshot is read once; from
//! then on the child's own events keep the status and the history current
//! ([`crate::protocol::history::Tracker`]), so reads are answered from memory and a child's
//! history is serialised once per watch instead of once per `cat`. A dropped connection is
//! re-made with backoff (and one fresh Snapshot). A watch ends after a period without
//! interest, and the text all watches hold is bounded by a memory budget: least recently
//! used watches are dropped first.
//!
//! Every connection is served by one reactor thread ([`reactor`]); 1,000 watches cost that
//! one thread and 1,000 file descriptors.

pub mod live;
mod reactor;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::error::Result;
use crate::pod_client::{PodClient, SocketPath};
use crate::sync::{Mutex, MutexGuard};
use live::{Callback, LiveState, Topic};
use reactor::{Command, ReactorHandle};

/// Called with the outcome of delivering a message.
pub type RunDone = Box<dyn FnOnce(Result<()>) + Send + 'static>;

#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// A watch without interest for this long ends.
    pub idle: Duration,
    /// The assistant text all watches may hold, in bytes.
    pub budget: usize,
    /// Longest pause between reconnection attempts to a child that went away.
    pub max_backoff: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            idle: Duration::from_secs(60),
            budget: 256 << 20,
            max_backoff: Duration::from_secs(2),
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
}

/// One watched child.
pub struct Watch {
    pub socket: SocketPath,
    id: u64,
    state: Mutex<LiveState>,
    reactor: ReactorHandle,
}

impl Watch {
    /// The live state, locked. Keep the guard short: the reactor waits for it.
    pub fn state(&self) -> MutexGuard<'_, LiveState> {
        self.state.lock()
    }

    /// The live state, locked, if the child's state is known, or whatever it is when `now`
    /// (the second round of an operation, which may not wait again). `None`: wait with
    /// [`Watch::when_ready`].
    pub fn state_if_ready(&self, now: bool) -> Option<MutexGuard<'_, LiveState>> {
        let s = self.state.lock();
        (s.ready() || now).then_some(s)
    }

    /// Run `then` once the child's state is known (or at the latest after `bound`).
    pub fn when_ready(self: &Arc<Self>, bound: Duration, then: Callback) {
        let added = self.state.lock().add_waiter(then);
        match added {
            Err(now) => now(),
            Ok(id) => self.reactor.send(Command::Deadline {
                watch: Arc::downgrade(self),
                waiter: id,
                at: Instant::now() + bound,
            }),
        }
    }

    /// Run `then` when `topic` moves past `seen`; false (and `then` dropped) when it
    /// already has, so the caller can answer "ready" at once.
    pub fn when_changed(&self, topic: Topic, seen: u64, then: Callback) -> bool {
        self.state.lock().add_poller(topic, seen, then).is_none()
    }

    /// Deliver `text` as one `run`; `done` learns whether the child took it. The child
    /// counts as busy for new messages until then.
    pub fn send_run(self: &Arc<Self>, text: String, done: RunDone) {
        self.state.lock().pending_runs += 1;
        self.reactor.send(Command::Send {
            watch: self.clone(),
            text,
            done,
        });
    }

    /// An open handle keeps the watch from ending.
    pub fn pin(&self) {
        let mut s = self.state.lock();
        s.pins += 1;
        s.last_interest = Instant::now();
    }

    pub fn unpin(&self) {
        let mut s = self.state.lock();
        s.pins = s.pins.saturating_sub(1);
        s.last_interest = Instant::now();
    }
}

pub struct Watches {
    map: Mutex<HashMap<SocketPath, Arc<Watch>>>,
    reactor: ReactorHandle,
    config: WatchConfig,
    pub stats: Arc<Stats>,
    next_id: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Watches {
    /// Start the reactor thread.
    pub fn start(client: Arc<PodClient>, config: WatchConfig) -> std::io::Result<Arc<Watches>> {
        let stats = Arc::new(Stats::default());
        let (reactor, handle) = reactor::Reactor::new(client, stats.clone(), config.clone())?;
        let watches = Arc::new(Watches {
            map: Mutex::new(HashMap::new()),
            reactor: handle,
            config,
            stats,
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

    /// The watch of the child behind `socket`, started if there is none. Counts as
    /// interest: the watch will not end for lack of it for a while.
    pub fn watch(&self, socket: &SocketPath) -> Arc<Watch> {
        let mut map = self.map.lock();
        if let Some(w) = map.get(socket) {
            w.state.lock().last_interest = Instant::now();
            return w.clone();
        }
        let w = Arc::new(Watch {
            socket: socket.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(LiveState::new(Instant::now())),
            reactor: self.reactor.clone(),
        });
        map.insert(socket.clone(), w.clone());
        drop(map);
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        debug!(socket = %socket.path().display(), "watch started");
        self.reactor.send(Command::Start(w.clone()));
        w
    }

    /// End the watch of a child that is gone for good (after `rm -r`).
    pub fn end(&self, socket: &SocketPath) {
        let removed = self.map.lock().remove(socket);
        if let Some(w) = removed {
            self.reactor.send(Command::End(w));
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Text held by all watches, in bytes.
    pub fn text_bytes(&self) -> usize {
        self.map
            .lock()
            .values()
            .map(|w| w.state().text_bytes())
            .sum()
    }

    /// Watches to end now: those without interest for the idle period, then, while the
    /// text held exceeds the budget, the least recently used unpinned ones. Removed from
    /// the map under its lock, so nobody can be handed a watch that is ending.
    fn sweep(&self, now: Instant) -> Vec<Arc<Watch>> {
        let mut map = self.map.lock();
        let mut ending = Vec::new();
        let mut total = 0usize;
        let mut candidates = Vec::new();
        map.retain(|_, w| {
            let s = w.state.lock();
            if s.is_idle() && now.duration_since(s.last_interest) >= self.config.idle {
                ending.push(w.clone());
                return false;
            }
            total += s.text_bytes();
            if s.is_idle() {
                candidates.push((s.last_interest, s.text_bytes(), w.socket.clone()));
            }
            true
        });
        if total > self.config.budget {
            candidates.sort_by_key(|c| c.0);
            for (_, bytes, socket) in candidates {
                if total <= self.config.budget {
                    break;
                }
                if let Some(w) = map.remove(&socket) {
                    total -= bytes;
                    self.stats
                        .evicted_for_memory
                        .fetch_add(1, Ordering::Relaxed);
                    ending.push(w);
                }
            }
        }
        ending
    }

    /// Stop the reactor and close every connection (at unmount).
    pub fn shutdown(&self) {
        self.reactor.send(Command::Shutdown);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}
