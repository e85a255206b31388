//! The one thread that serves every watch: non-blocking connections to the children in an
//! epoll set, the JSON-lines framing, the prelude, events, reconnection with backoff,
//! message delivery, the deadlines of everyone waiting, and the memory budget.
//!
//! The server drops a reader that lags behind its broadcast buffer, so this thread only
//! ever reads, parses and updates memory: it never blocks on anything but `epoll_wait`.
//! No child can monopolise it (a connection is read at most [`READ_SLICE`] per round) or
//! make it hold more than the budget allows (what a connection holds is charged as it
//! grows, and a child whose data does not fit fails alone). A panic while handling one
//! child ends that child's watch, answering its waiters; the thread serves the others on.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{ErrorKind, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;
use serde_json::Value;
use tracing::{debug, error, info, warn};

use super::budget::Budget;
use super::live::{Due, Failure, Reach, Wake};
use super::{RunDone, Stats, Watch, WatchConfig, Watches};
use crate::error::Error;
use crate::pod_client::{Dial, PodClient};
use crate::process::Requester;
use crate::protocol::history::{History, Tracker};
use crate::protocol::lines::LineBuffer;
use crate::protocol::wire::{self, Event};

/// epoll data of the wake-up eventfd; watch ids start at 1.
const WAKE: u64 = 0;
/// First pause before reconnecting to a child that went away.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How often idle watches and the memory budget are checked.
const SWEEP: Duration = Duration::from_secs(1);
/// Pause between connect attempts while the child's listen backlog is full.
const BACKLOG_RETRY: Duration = Duration::from_millis(5);
/// How often the callers of parked operations are checked for signals.
const SIGNALS: Duration = Duration::from_millis(50);
/// Most bytes read from one connection per round: a flooding child cannot starve the
/// others (epoll is level-triggered; the rest is read next round).
const READ_SLICE: usize = 1 << 20;

type Call = Box<dyn FnOnce() + Send + 'static>;

pub(super) enum Command {
    Start(Arc<Watch>),
    End(Arc<Watch>),
    Send {
        watch: Arc<Watch>,
        text: String,
        done: RunDone,
    },
    Deadline {
        watch: Weak<Watch>,
        waiter: u64,
        at: Instant,
        who: Requester,
    },
    Call {
        at: Instant,
        then: Call,
    },
    Shutdown,
}

/// How other threads reach the reactor.
#[derive(Clone)]
pub(super) struct ReactorHandle {
    queue: Arc<Mutex<Vec<Command>>>,
    wake: Arc<EventFd>,
}

impl ReactorHandle {
    pub(super) fn send(&self, command: Command) {
        self.queue.lock().push(command);
        if let Err(e) = self.wake.write(1) {
            warn!(error = %e, "cannot wake the watch reactor");
        }
    }
}

enum Timer {
    Waiter(Weak<Watch>, u64),
    Connect(u64, u64),
    Prelude(u64, u64),
    Acks(u64),
    Sweep,
    Signals,
    Call(Call),
}

struct Scheduled {
    at: Instant,
    seq: u64,
    timer: Timer,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

enum Phase {
    Prelude,
    Live,
}

/// A message on its way to the child.
struct Outgoing {
    text: String,
    /// Its delivery bound: how long it may wait for the child to take runs.
    deadline: Instant,
    done: RunDone,
}

/// A message written to the child, waiting for its echo.
struct Ack {
    segments: Value,
    /// When it was written: the echo is awaited for the I/O bound from then (longer while
    /// the child runs a turn, which may be this very message's).
    written: Instant,
    msg: Outgoing,
}

struct Conn {
    stream: UnixStream,
    lines: LineBuffer,
    out: Vec<u8>,
    phase: Phase,
    tracker: Tracker,
    acks: VecDeque<Ack>,
    /// Whether EPOLLOUT is in the interest set.
    want_write: bool,
}

impl Conn {
    /// What this connection holds beyond the history.
    fn held(&self) -> usize {
        self.lines.held() + self.out.capacity() + self.tracker.pending_bytes()
    }
}

/// The reactor's record of one watch.
struct Link {
    watch: Arc<Watch>,
    conn: Option<Conn>,
    /// Bumped whenever the connection is replaced, so stale timers are ignored.
    generation: u64,
    /// When the current round of connect attempts began (the connect bound runs from it).
    connecting_since: Option<Instant>,
    backoff: Duration,
    /// Messages whose writers closed, in order, waiting for the child to take runs.
    outbox: VecDeque<Outgoing>,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The child closed it (or reset it): reconnect at once to learn why.
    Closed,
    /// The events could not keep the history exact: reconnect for a fresh Snapshot.
    Resync,
    /// The child broke the protocol or refused us: back off.
    Failed,
    /// What it sent does not fit the memory budget: stop following it.
    OverBudget,
}

pub(super) struct Reactor {
    epoll: Epoll,
    wake: Arc<EventFd>,
    queue: Arc<Mutex<Vec<Command>>>,
    links: HashMap<u64, Link>,
    timers: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    client: Arc<PodClient>,
    stats: Arc<Stats>,
    budget: Arc<Budget>,
    config: WatchConfig,
    watches: Weak<Watches>,
    /// Parked operations whose callers are checked for signals.
    interruptible: Vec<(Weak<Watch>, u64, Requester)>,
    signals_scheduled: bool,
    /// Sweep at the end of this round: the periodic timer fired, or a Snapshot arrived
    /// (checking the budget at once keeps a burst of new watches from overshooting it).
    sweep_due: bool,
}

/// Run what became due: no lock is held, so a woken operation may read the state again.
fn run(due: Vec<Due>) {
    for d in due {
        d.run();
    }
}

impl Reactor {
    pub(super) fn new(
        client: Arc<PodClient>,
        stats: Arc<Stats>,
        budget: Arc<Budget>,
        config: WatchConfig,
    ) -> std::io::Result<(Reactor, ReactorHandle)> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        let queue = Arc::new(Mutex::new(Vec::new()));
        let handle = ReactorHandle {
            queue: queue.clone(),
            wake: wake.clone(),
        };
        Ok((
            Reactor {
                epoll,
                wake,
                queue,
                links: HashMap::new(),
                timers: BinaryHeap::new(),
                seq: 0,
                client,
                stats,
                budget,
                config,
                watches: Weak::new(),
                interruptible: Vec::new(),
                signals_scheduled: false,
                sweep_due: false,
            },
            handle,
        ))
    }

    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        self.timers.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            timer,
        }));
    }

    pub(super) fn run(mut self, watches: Weak<Watches>) {
        self.watches = watches;
        self.schedule(Instant::now() + SWEEP, Timer::Sweep);
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            let timeout = match self.timers.peek() {
                // Rounded up, so a timer is never polled for early; capped at a minute.
                Some(Reverse(next)) => {
                    let left = next.at.saturating_duration_since(Instant::now());
                    EpollTimeout::from(left.as_micros().div_ceil(1000).min(60_000) as u16)
                }
                None => EpollTimeout::NONE,
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => {
                    error!(error = %e, "epoll_wait failed; watches stop");
                    self.shutdown();
                    return;
                }
            };
            for ev in &events[..n] {
                if ev.data() == WAKE {
                    let _ = self.wake.read();
                    let commands = std::mem::take(&mut *self.queue.lock());
                    for command in commands {
                        if let Command::Shutdown = command {
                            self.shutdown();
                            return;
                        }
                        self.contained(None, |r| r.command(command));
                    }
                } else {
                    let id = ev.data();
                    let flags = ev.events();
                    self.contained(Some(id), |r| r.io(id, flags));
                }
            }
            self.fire_timers();
            // After the wake-ups: the reader a Snapshot was just taken for has read it by
            // now, so even a child that alone fills the budget is not ended under a reader
            // that would only start its watch again.
            if std::mem::take(&mut self.sweep_due) {
                if let Some(watches) = self.watches.upgrade() {
                    for w in watches.sweep(Instant::now()) {
                        self.end(w.id);
                    }
                }
            }
        }
    }

    /// Run `f`; a panic in it is logged, and ends the watch it was about (if any), which
    /// answers that watch's waiters. The reactor serves the others on.
    fn contained(&mut self, id: Option<u64>, f: impl FnOnce(&mut Self)) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(self))) {
            let e = Error::from_panic(&*payload);
            error!(error = %e, watch = ?id, "panic in the watch reactor; that watch ends");
            if let Some(id) = id {
                if let Some(link) = self.links.get(&id) {
                    // Its readers hear EIO: podfs no longer knows the child's state.
                    let due = link
                        .watch
                        .state()
                        .unreachable(Reach::Failed(Failure::Internal));
                    let _ = catch_unwind(AssertUnwindSafe(|| run(due)));
                    if let Some(watches) = self.watches.upgrade() {
                        watches.end(link.watch.socket());
                    }
                }
                let _ = catch_unwind(AssertUnwindSafe(|| self.end(id)));
            }
        }
    }

    fn shutdown(&mut self) {
        let links: Vec<u64> = self.links.keys().copied().collect();
        for id in links {
            self.end(id);
        }
        // Parked operations that were never registered with a watch (gates) run now.
        while let Some(Reverse(s)) = self.timers.pop() {
            if let Timer::Call(then) = s.timer {
                then();
            }
        }
        debug!("watch reactor stopped");
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Start(watch) => {
                let id = watch.id;
                self.links.insert(
                    id,
                    Link {
                        watch,
                        conn: None,
                        generation: 0,
                        connecting_since: None,
                        backoff: FIRST_BACKOFF,
                        outbox: VecDeque::new(),
                    },
                );
                self.connect(id);
            }
            Command::End(watch) => self.end(watch.id),
            Command::Send { watch, text, done } => self.send(watch, text, done),
            Command::Deadline {
                watch,
                waiter,
                at,
                who,
            } => {
                if who != Requester::NOBODY {
                    self.interruptible.push((watch.clone(), waiter, who));
                    if !self.signals_scheduled {
                        self.signals_scheduled = true;
                        self.schedule(Instant::now() + SIGNALS, Timer::Signals);
                    }
                }
                self.schedule(at, Timer::Waiter(watch, waiter))
            }
            Command::Call { at, then } => self.schedule(at, Timer::Call(then)),
            Command::Shutdown => unreachable!("handled by the loop"),
        }
    }

    fn end(&mut self, id: u64) {
        let Some(mut link) = self.links.remove(&id) else {
            return;
        };
        let mut due = Self::close_conn(&self.epoll, &mut link);
        let failed: Vec<Outgoing> = link.outbox.drain(..).collect();
        for msg in failed {
            due.extend(link.watch.state().run_failed());
            fail(
                msg.done,
                Error::Unreachable("the watch ended before delivery".into()),
            );
        }
        {
            let mut s = link.watch.state();
            due.extend(s.close());
            s.discharge(&self.budget);
        }
        run(due);
        self.stats.ended.fetch_add(1, Ordering::Relaxed);
        debug!(socket = %link.watch.socket().path().display(), "watch ended");
    }

    /// Drop the connection, failing the messages that wait for their echo on it: whether
    /// the child read them cannot be told, so they are never written again (a message
    /// must not run twice).
    fn close_conn(epoll: &Epoll, link: &mut Link) -> Vec<Due> {
        let mut due = Vec::new();
        if let Some(conn) = link.conn.take() {
            let _ = epoll.delete(conn.stream.as_fd());
            for ack in conn.acks {
                due.extend(link.watch.state().run_failed());
                fail(
                    ack.msg.done,
                    Error::NotConfirmed(
                        "the connection closed before the child confirmed the message; it \
                         may or may not have run, and is not sent again"
                            .into(),
                    ),
                );
            }
        }
        link.generation += 1;
        due
    }

    fn connect(&mut self, id: u64) {
        let now = Instant::now();
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let since = *link.connecting_since.get_or_insert(now);
        let socket = link.watch.socket().clone();
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        match self.client.dial(&socket, true) {
            Dial::Connected(stream) => {
                let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, id);
                if let Err(e) = self.epoll.add(stream.as_fd(), event) {
                    warn!(error = %e, "cannot watch a connection");
                    return self.local_failure(id, Failure::Local(e as i32));
                }
                let Some(link) = self.links.get_mut(&id) else {
                    return;
                };
                link.connecting_since = None;
                link.generation += 1;
                let generation = link.generation;
                link.conn = Some(Conn {
                    stream,
                    lines: LineBuffer::new(self.client.timeouts().max_line),
                    out: Vec::new(),
                    phase: Phase::Prelude,
                    tracker: Tracker::default(),
                    acks: VecDeque::new(),
                    want_write: false,
                });
                self.schedule(
                    now + self.client.timeouts().io,
                    Timer::Prelude(id, generation),
                );
            }
            Dial::Busy if now.duration_since(since) < self.client.timeouts().connect => {
                let generation = link.generation;
                self.schedule(now + BACKLOG_RETRY, Timer::Connect(id, generation));
            }
            Dial::Busy => {
                debug!(socket = %socket.path().display(), "connect timed out");
                self.failed(id);
            }
            Dial::Shortage(e) => {
                warn!(socket = %socket.path().display(), error = %e,
                      "cannot connect for lack of podfs's own resources; not a fact about the child");
                self.local_failure(id, Failure::Local(e.raw_os_error().unwrap_or(libc::EIO)));
            }
            Dial::Refused(e) => {
                warn!(socket = %socket.path().display(), error = %e,
                      "podfs may not connect to this child's socket; its files answer EACCES");
                self.local_failure(
                    id,
                    Failure::Refused(e.raw_os_error().unwrap_or(libc::EACCES)),
                );
            }
            Dial::Absent(_) => self.failed(id),
            Dial::Failed(e) => {
                debug!(socket = %socket.path().display(), error = %e, "cannot connect");
                self.failed(id);
            }
        }
    }

    /// podfs itself ran short (descriptors, memory), or may not connect: its readers get
    /// that errno, never a state of the child; try again shortly.
    fn local_failure(&mut self, id: u64, failure: Failure) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        link.connecting_since = None;
        let due = link.watch.state().unreachable(Reach::Failed(failure));
        let generation = link.generation;
        let at = Instant::now() + link.backoff;
        link.backoff = (link.backoff * 2).min(self.config.max_backoff);
        self.schedule(at, Timer::Connect(id, generation));
        run(due);
    }

    /// The child cannot be reached now: say so, fail what waits for it, try again later.
    fn failed(&mut self, id: u64) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        link.connecting_since = None;
        let mut due = link.watch.state().unreachable(Reach::Gone);
        for msg in link.outbox.drain(..) {
            due.extend(link.watch.state().run_failed());
            fail(
                msg.done,
                Error::Unreachable("the child is unreachable".into()),
            );
        }
        let generation = link.generation;
        let at = Instant::now() + link.backoff;
        link.backoff = (link.backoff * 2).min(self.config.max_backoff);
        self.schedule(at, Timer::Connect(id, generation));
        run(due);
    }

    fn disconnect(&mut self, id: u64, why: Ended) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let due = Self::close_conn(&self.epoll, link);
        run(due);
        match why {
            Ended::Failed => self.failed(id),
            Ended::OverBudget => self.over_budget(id),
            Ended::Closed | Ended::Resync => {
                let due = link_state_reconnecting(self.links.get(&id));
                run(due);
                self.connect(id);
            }
        }
    }

    /// This child's data does not fit the memory budget: stop following it. Its files
    /// answer `EFBIG` until the watch ends; nothing of a sibling is touched.
    fn over_budget(&mut self, id: u64) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let mut due = Self::close_conn(&self.epoll, link);
        for msg in link.outbox.drain(..) {
            due.extend(link.watch.state().run_failed());
            fail(
                msg.done,
                Error::OverBudget("the child's data exceeds the memory budget".into()),
            );
        }
        {
            let mut s = link.watch.state();
            due.extend(s.unreachable(Reach::Failed(Failure::OverBudget)));
            s.discharge(&self.budget);
        }
        self.stats.over_budget.fetch_add(1, Ordering::Relaxed);
        warn!(socket = %link.watch.socket().path().display(), budget = self.budget.limit(),
              "a child's data exceeds the memory budget; its files answer EFBIG (raise --memory-budget-mib to follow it)");
        run(due);
    }

    /// A message whose writer closed: into the outbox, written when the child takes runs.
    fn send(&mut self, watch: Arc<Watch>, text: String, done: RunDone) {
        let id = watch.id;
        let deadline = Instant::now() + self.config.delivery_wait;
        let msg = Outgoing {
            text,
            deadline,
            done,
        };
        let Some(link) = self.links.get_mut(&id) else {
            let due = watch.state().run_failed();
            run(due);
            return fail(msg.done, Error::Unreachable("the watch has ended".into()));
        };
        let reach = link.watch.state().reach();
        if link.conn.is_none() && matches!(reach, Reach::Gone | Reach::Failed(_)) {
            let due = link.watch.state().run_failed();
            run(due);
            return fail(
                msg.done,
                Error::Unreachable("the child is unreachable".into()),
            );
        }
        link.outbox.push_back(msg);
        self.schedule(deadline, Timer::Acks(id));
        self.pump(id);
    }

    /// Write the next message of the outbox once the child takes it: the connection is
    /// live, no message of ours awaits its echo, and the child is idle or paused by its
    /// own word. Called after every change of what the child said, so a message waits for
    /// the child's state, never for one kind of event (a resync, a Snapshot and a
    /// `status` event all free it alike).
    ///
    /// **Invariant: a message is written at most once.** The protocol has no request ids
    /// and the runtime broadcasts every error, so a refusal cannot be told for ours: only
    /// the echo of its own segments confirms a message, and an unconfirmed one is given
    /// up on (and logged), never written again.
    fn pump(&mut self, id: u64) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(conn) = link.conn.as_ref() else {
            return;
        };
        if !matches!(conn.phase, Phase::Live) || !conn.acks.is_empty() || link.outbox.is_empty() {
            return;
        }
        if !link.watch.state().child_takes_runs() {
            return;
        }
        if let Some(msg) = link.outbox.pop_front() {
            self.write_run(id, msg);
        }
    }

    fn write_run(&mut self, id: u64, msg: Outgoing) {
        let Some(conn) = self.links.get_mut(&id).and_then(|l| l.conn.as_mut()) else {
            return;
        };
        let mut line = wire::run_method(&msg.text).to_string().into_bytes();
        line.push(b'\n');
        conn.out.extend_from_slice(&line);
        let written = Instant::now();
        conn.acks.push_back(Ack {
            segments: wire::run_segments(&msg.text),
            written,
            msg,
        });
        debug!("run written");
        self.schedule(written + self.client.timeouts().io, Timer::Acks(id));
        self.flush(id);
    }

    fn flush(&mut self, id: u64) {
        let Some(conn) = self.links.get_mut(&id).and_then(|l| l.conn.as_mut()) else {
            return;
        };
        while !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(error = %e, "write failed");
                    return self.disconnect(id, Ended::Closed);
                }
            }
        }
        let want = !conn.out.is_empty();
        if want != conn.want_write {
            conn.want_write = want;
            let mut flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if want {
                flags |= EpollFlags::EPOLLOUT;
            }
            let _ = self
                .epoll
                .modify(conn.stream.as_fd(), &mut EpollEvent::new(flags, id));
        }
    }

    /// Bytes the line buffer of `id` may hold in all, from what the budget leaves it.
    fn line_room(&self, id: u64) -> usize {
        let Some(link) = self.links.get(&id) else {
            return 0;
        };
        let Some(conn) = link.conn.as_ref() else {
            return 0;
        };
        let charged = link.watch.state().charged();
        let others_of_mine = charged.saturating_sub(conn.lines.held());
        self.budget
            .room_for(charged)
            .saturating_sub(others_of_mine)
            .min(self.client.timeouts().max_line)
    }

    /// End idle watches of others (least recently used first) until `need` more bytes fit;
    /// whether any was ended.
    fn evict_for(&mut self, id: u64, need: usize) -> bool {
        let Some(watches) = self.watches.upgrade() else {
            return false;
        };
        let Some(own) = self.links.get(&id).map(|l| l.watch.socket().clone()) else {
            return false;
        };
        let ended = watches.evict(need, Some(&own));
        let any = !ended.is_empty();
        for w in ended {
            self.end(w.id);
        }
        any
    }

    /// Charge what watch `id` holds now; false when it does not fit, even after ending
    /// idle watches of others.
    fn recharge(&mut self, id: u64) -> bool {
        let Some(link) = self.links.get(&id) else {
            return true;
        };
        let held = link.conn.as_ref().map_or(0, Conn::held);
        let watch = link.watch.clone();
        let mut s = watch.state();
        let want = held + s.text_bytes();
        if s.charge(&self.budget, want) {
            return true;
        }
        if want > self.budget.share() {
            return false;
        }
        let need = want.saturating_sub(s.charged());
        drop(s);
        self.evict_for(id, need);
        let charged = watch.state().charge(&self.budget, want);
        charged
    }

    fn io(&mut self, id: u64, flags: EpollFlags) {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush(id);
        }
        // Read what there is, up to a slice per round; a lagging reader gets dropped by
        // the server, a flooding child must not starve the others.
        let mut read = 0;
        let mut eof = false;
        while read < READ_SLICE {
            let room = self.line_room(id);
            let Some(conn) = self.links.get_mut(&id).and_then(|l| l.conn.as_mut()) else {
                return;
            };
            match conn.lines.read_within(&mut conn.stream, room) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    read += n;
                    if !self.recharge(id) {
                        return self.disconnect(id, Ended::OverBudget);
                    }
                    if !self.lines(id) {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::OutOfMemory => {
                    let pending = self
                        .links
                        .get(&id)
                        .and_then(|l| l.conn.as_ref())
                        .map_or(0, |c| c.lines.pending());
                    // Idle watches of others go first; then this child is what does not fit.
                    if self.evict_for(id, pending.max(64 << 10)) {
                        continue;
                    }
                    debug!(error = %e, "line over the budget");
                    return self.disconnect(id, Ended::OverBudget);
                }
                Err(e) => {
                    debug!(error = %e, "read failed");
                    eof = true;
                    break;
                }
            }
        }
        if !self.recharge(id) {
            return self.disconnect(id, Ended::OverBudget);
        }
        if eof {
            // Closed after its Snapshot: the child may be restarting, look again at once.
            // Closed before it, or in the middle of a line: it broke the protocol.
            let clean = self
                .links
                .get(&id)
                .and_then(|l| l.conn.as_ref())
                .is_some_and(|c| matches!(c.phase, Phase::Live) && !c.lines.has_partial());
            debug!(clean, "connection closed by the child");
            let why = if clean { Ended::Closed } else { Ended::Failed };
            self.disconnect(id, why);
        }
    }

    /// Handle every complete line, each parsed where it lies in the buffer; false when
    /// the connection was dropped meanwhile.
    fn lines(&mut self, id: u64) -> bool {
        let Some(conn) = self.links.get_mut(&id).and_then(|l| l.conn.as_mut()) else {
            return false;
        };
        // Taken out of the connection while its lines are handled (handling needs the
        // reactor), put back afterwards if the connection is still the same one.
        let mut lines = std::mem::replace(&mut conn.lines, LineBuffer::new(0));
        let generation = self.links.get(&id).map(|l| l.generation);
        let mut alive = true;
        loop {
            let line = match lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "dropping a connection");
                    self.disconnect(id, Ended::Failed);
                    alive = false;
                    break;
                }
            };
            let trimmed = lines.slice(line).trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            crate::failpoint::point("event");
            let ended = match Event::parse(trimmed) {
                Ok(event) => self.event(id, &event),
                Err(e) => {
                    warn!(error = %e, "dropping a connection");
                    Some(Ended::Failed)
                }
            };
            if let Some(why) = ended {
                self.disconnect(id, why);
                alive = false;
                break;
            }
        }
        match self.links.get_mut(&id) {
            Some(link) if alive && Some(link.generation) == generation => {
                if let Some(conn) = link.conn.as_mut() {
                    lines.release_consumed();
                    conn.lines = lines;
                }
                true
            }
            _ => false,
        }
    }

    /// One event; `Some` when the connection must end.
    fn event(&mut self, id: u64, event: &Event) -> Option<Ended> {
        let mut room_made = false;
        loop {
            let mut due = Vec::new();
            let ended = self.apply(id, event, &mut due);
            // What the event made due runs now, before the next line can change the
            // state again: a reader woken by a Snapshot is answered from that Snapshot.
            run(due);
            match ended {
                // A Snapshot whose history does not fit: idle watches of others go first,
                // then it is tried once more.
                Some(Ended::OverBudget) if !room_made => {
                    room_made = true;
                    // Building a history from a Snapshot holds its text twice for a moment.
                    let need = event.raw_data().len().saturating_mul(2) + (64 << 10);
                    if !self.evict_for(id, need) {
                        return Some(Ended::OverBudget);
                    }
                }
                Some(why) => return Some(why),
                None => {
                    self.pump(id);
                    return None;
                }
            }
        }
    }

    fn apply(&mut self, id: u64, event: &Event, due: &mut Vec<Due>) -> Option<Ended> {
        let link = self.links.get_mut(&id)?;
        // What this watch may hold as history: its room in the budget, less what it holds
        // besides (the line being handled among it).
        let text_room = {
            let s = link.watch.state();
            let besides = s.charged().saturating_sub(s.text_bytes());
            self.budget.room_for(s.charged()).saturating_sub(besides)
        };
        let conn = link.conn.as_mut()?;
        tracing::trace!(socket = %link.watch.socket().path().display(), event = %event.name, "event");
        if let Phase::Prelude = conn.phase {
            return match &*event.name {
                "snapshot" => match History::from_snapshot_within(event.raw_data(), text_room) {
                    Ok(snapshot) => {
                        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
                        self.sweep_due = true;
                        if snapshot.history.malformed > 0 {
                            warn!(
                                socket = %link.watch.socket().path().display(),
                                malformed = snapshot.history.malformed,
                                "history entries did not parse; output may be incomplete"
                            );
                        }
                        conn.tracker = Tracker::after_snapshot(snapshot.status);
                        conn.phase = Phase::Live;
                        link.backoff = FIRST_BACKOFF;
                        due.extend(link.watch.state().snapshot(snapshot));
                        None
                    }
                    Err(Error::OverBudget(what)) => {
                        debug!(what, "snapshot over the budget");
                        Some(Ended::OverBudget)
                    }
                    Err(e) => {
                        warn!(error = %e, "dropping a connection");
                        Some(Ended::Failed)
                    }
                },
                "alert" => {
                    debug!(alert = %event.raw_data(), "alert");
                    None
                }
                // An `error` before the Snapshot: the pod refused the connection.
                "error" => Some(Ended::Failed),
                _ => None,
            };
        }
        // Our own message is confirmed by the echo of exactly its segments on our
        // connection, in order. An `error` proves nothing: errors are broadcast and carry
        // no request id, so another client's refused run looks the same as ours.
        if event.name == "user_message" {
            if let Some(ack) = conn.acks.front() {
                if event.segments().as_ref() == Some(&ack.segments) {
                    if let Some(ack) = conn.acks.pop_front() {
                        due.extend(link.watch.state().run_accepted());
                        let done = ack.msg.done;
                        due.push(Due::Wake(Box::new(move |_| done(Ok(()))), Wake::Ready));
                    }
                }
            }
        } else if event.name == "error" && !conn.acks.is_empty() {
            debug!(error = %event.raw_data(), "an error while a message of ours awaits its echo; not taken for ours");
        }
        let changes = {
            let mut state = link.watch.state();
            let changes = conn.tracker.apply(state.history_mut(), event);
            due.extend(state.changed(&changes));
            changes
        };
        if changes.resync {
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            debug!(event = %event.name, "history changed shape; taking a fresh Snapshot");
            return Some(Ended::Resync);
        }
        if event.name == "shutdown" {
            info!(socket = %link.watch.socket().path().display(), "child is shutting down");
        }
        None
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse(next)) = self.timers.peek() {
            if next.at > now {
                break;
            }
            let Some(Reverse(s)) = self.timers.pop() else {
                break;
            };
            match s.timer {
                Timer::Waiter(watch, waiter) => {
                    if let Some(w) = watch.upgrade() {
                        let expired = w.state().expire_waiter(waiter, Wake::Expired);
                        if let Some(d) = expired {
                            d.run();
                        }
                    }
                }
                Timer::Signals => self.check_signals(now),
                Timer::Call(then) => {
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(then)) {
                        error!(error = %Error::from_panic(&*payload), "panic in a timed call");
                    }
                }
                Timer::Connect(id, generation) => {
                    let current = self
                        .links
                        .get(&id)
                        .map(|l| (l.generation, l.conn.is_some()));
                    if current == Some((generation, false)) {
                        self.contained(Some(id), |r| r.connect(id));
                    }
                }
                Timer::Prelude(id, generation) => self.prelude_overdue(id, generation),
                Timer::Acks(id) => self.expire_acks(id, now),
                Timer::Sweep => {
                    self.sweep_due = true;
                    self.schedule(now + SWEEP, Timer::Sweep);
                }
            }
        }
    }

    /// Parked operations whose caller got a signal are answered now.
    fn check_signals(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.interruptible.retain(|(watch, waiter, who)| {
            let Some(w) = watch.upgrade() else {
                return false;
            };
            if !w.state().has_waiter(*waiter) {
                return false;
            }
            if who.interrupted() {
                due.extend(w.state().expire_waiter(*waiter, Wake::Interrupted));
                return false;
            }
            true
        });
        run(due);
        if self.interruptible.is_empty() {
            self.signals_scheduled = false;
        } else {
            self.schedule(now + SIGNALS, Timer::Signals);
        }
    }

    fn prelude_overdue(&mut self, id: u64, generation: u64) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let waiting = link.generation == generation
            && matches!(
                link.conn,
                Some(Conn {
                    phase: Phase::Prelude,
                    ..
                })
            );
        if !waiting {
            return;
        }
        // Keep the connection: a slow child may still answer. Readers are told it did
        // not, now.
        debug!(socket = %link.watch.socket().path().display(), "no Snapshot in time");
        // Messages in the outbox keep waiting for the connection, up to their own
        // delivery bound (a child slow to send a fresh Snapshot is not refusing them).
        let due = link.watch.state().unreachable(Reach::Silent);
        run(due);
    }

    /// Messages past their bounds: one in the outbox past its delivery bound (the child
    /// never took runs in time), and one awaiting its echo for longer than the I/O bound
    /// while the child is not running a turn (a turn may be this very message's, whose
    /// echo can come late), or past its delivery bound.
    fn expire_acks(&mut self, id: u64, now: Instant) {
        let io = self.client.timeouts().io;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let running = !link.watch.state().child_takes_runs();
        let mut late = Vec::new();
        let mut unconfirmed = Vec::new();
        let mut again = None;
        if let Some(conn) = link.conn.as_mut() {
            while let Some(a) = conn.acks.front() {
                let waited = now.duration_since(a.written) >= io;
                if a.msg.deadline <= now || (waited && !running) {
                    if let Some(a) = conn.acks.pop_front() {
                        unconfirmed.push(a.msg);
                    }
                } else {
                    again = Some(if waited { now + io } else { a.written + io });
                    break;
                }
            }
        }
        while let Some(pos) = link.outbox.iter().position(|m| m.deadline <= now) {
            if let Some(m) = link.outbox.remove(pos) {
                late.push(m);
            }
        }
        let mut due = Vec::new();
        for msg in unconfirmed {
            due.extend(link.watch.state().run_failed());
            fail(
                msg.done,
                Error::NotConfirmed(
                    "the child did not confirm the message (another client may have started a \
                     turn at the same moment); it is not sent again, so it cannot run twice"
                        .into(),
                ),
            );
        }
        for msg in late {
            due.extend(link.watch.state().run_failed());
            fail(
                msg.done,
                Error::Timeout(format!(
                    "the child did not take runs within the delivery bound ({:?})",
                    self.config.delivery_wait
                )),
            );
        }
        run(due);
        if let Some(at) = again {
            self.schedule(at, Timer::Acks(id));
        }
        self.pump(id);
    }
}

fn link_state_reconnecting(link: Option<&Link>) -> Vec<Due> {
    link.map(|l| l.watch.state().reconnecting())
        .unwrap_or_default()
}

fn fail(done: RunDone, e: Error) {
    done(Err(e));
}
