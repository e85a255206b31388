//! The one thread that serves every watch: non-blocking connections to the children in an
//! epoll set, the JSON-lines framing, the prelude, events, reconnection with backoff,
//! message delivery, and the deadlines of everyone waiting.
//!
//! The server drops a reader that lags behind its broadcast buffer, so this thread only
//! ever reads, parses and updates memory: it never blocks on anything but `epoll_wait`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{ErrorKind, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::live::{Callback, Reach};
use super::{RunDone, Stats, Watch, WatchConfig, Watches};
use crate::error::Error;
use crate::pod_client::PodClient;
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

/// A message written to the child, waiting for its echo.
struct Ack {
    segments: Value,
    deadline: Instant,
    done: RunDone,
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

/// The reactor's record of one watch.
struct Link {
    watch: Arc<Watch>,
    conn: Option<Conn>,
    /// Bumped whenever the connection is replaced, so stale timers are ignored.
    generation: u64,
    /// When the current round of connect attempts began (the connect bound runs from it).
    connecting_since: Option<Instant>,
    backoff: Duration,
    /// Messages waiting for the connection to be live.
    queued: Vec<(String, Instant, RunDone)>,
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
    config: WatchConfig,
    /// Sweep at the end of this round: the periodic timer fired, or a Snapshot arrived
    /// (checking the budget at once keeps a burst of new watches from overshooting it).
    sweep_due: bool,
}

type Due = Vec<Callback>;

impl Reactor {
    pub(super) fn new(
        client: Arc<PodClient>,
        stats: Arc<Stats>,
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
                config,
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
                    warn!(error = %e, "epoll_wait failed; watches stop");
                    return;
                }
            };
            let mut due: Due = Vec::new();
            for ev in &events[..n] {
                if ev.data() == WAKE {
                    let _ = self.wake.read();
                    let commands = std::mem::take(&mut *self.queue.lock());
                    for command in commands {
                        if let Command::Shutdown = command {
                            self.shutdown();
                            return;
                        }
                        self.command(command, &mut due);
                    }
                } else {
                    self.io(ev.data(), ev.events(), &mut due);
                }
            }
            self.fire_timers(&mut due);
            // Callbacks run with no lock held: they may read the state again.
            for f in due {
                f();
            }
            // After the callbacks: the reader a Snapshot was just taken for has read it
            // by now, so even a child that alone exceeds the budget is not ended under a
            // reader that would only start its watch again.
            if std::mem::take(&mut self.sweep_due) {
                if let Some(watches) = watches.upgrade() {
                    let mut due = Vec::new();
                    for w in watches.sweep(Instant::now()) {
                        self.end(w.id, &mut due);
                    }
                    for f in due {
                        f();
                    }
                }
            }
        }
    }

    fn shutdown(&mut self) {
        let links: Vec<u64> = self.links.keys().copied().collect();
        let mut due = Vec::new();
        for id in links {
            self.end(id, &mut due);
        }
        for f in due {
            f();
        }
        debug!("watch reactor stopped");
    }

    fn command(&mut self, command: Command, due: &mut Due) {
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
                        queued: Vec::new(),
                    },
                );
                self.connect(id, due);
            }
            Command::End(watch) => self.end(watch.id, due),
            Command::Send { watch, text, done } => self.send(watch, text, done, due),
            Command::Deadline { watch, waiter, at } => {
                self.schedule(at, Timer::Waiter(watch, waiter))
            }
            Command::Shutdown => unreachable!("handled by the loop"),
        }
    }

    fn end(&mut self, id: u64, due: &mut Due) {
        let Some(mut link) = self.links.remove(&id) else {
            return;
        };
        Self::close_conn(&self.epoll, &mut link);
        for (_, _, done) in link.queued.drain(..) {
            link.watch.state().run_failed();
            fail(
                done,
                Error::Unreachable("the watch ended before delivery".into()),
            );
        }
        due.extend(link.watch.state().close());
        self.stats.ended.fetch_add(1, Ordering::Relaxed);
        debug!(socket = %link.watch.socket.path().display(), "watch ended");
    }

    /// Drop the connection, failing the messages that wait for their echo on it.
    fn close_conn(epoll: &Epoll, link: &mut Link) {
        if let Some(conn) = link.conn.take() {
            let _ = epoll.delete(conn.stream.as_fd());
            for ack in conn.acks {
                link.watch.state().run_failed();
                fail(
                    ack.done,
                    Error::Unreachable("the connection closed before the child confirmed".into()),
                );
            }
        }
        link.generation += 1;
    }

    fn connect(&mut self, id: u64, due: &mut Due) {
        let now = Instant::now();
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let since = *link.connecting_since.get_or_insert(now);
        let socket = link.watch.socket.clone();
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        match self.client.stream(&socket) {
            Ok(Some(stream)) => {
                let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, id);
                if let Err(e) = self.epoll.add(stream.as_fd(), event) {
                    warn!(error = %e, "cannot watch a connection");
                    return self.failed(id, due);
                }
                let link = self.links.get_mut(&id).expect("looked up above");
                link.connecting_since = None;
                link.generation += 1;
                let generation = link.generation;
                link.conn = Some(Conn {
                    stream,
                    lines: LineBuffer::new(self.client.timeouts.max_line),
                    out: Vec::new(),
                    phase: Phase::Prelude,
                    tracker: Tracker::default(),
                    acks: VecDeque::new(),
                    want_write: false,
                });
                self.schedule(
                    now + self.client.timeouts.io,
                    Timer::Prelude(id, generation),
                );
            }
            Ok(None) if now.duration_since(since) < self.client.timeouts.connect => {
                let generation = link.generation;
                self.schedule(now + BACKLOG_RETRY, Timer::Connect(id, generation));
            }
            Ok(None) => {
                debug!(socket = %socket.path().display(), "connect timed out");
                self.failed(id, due);
            }
            Err(e) => {
                debug!(socket = %socket.path().display(), error = %e, "unreachable");
                self.failed(id, due);
            }
        }
    }

    /// The child cannot be reached now: say so, fail what waits for it, try again later.
    fn failed(&mut self, id: u64, due: &mut Due) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        link.connecting_since = None;
        due.extend(link.watch.state().unreachable(Reach::Gone));
        for (_, _, done) in link.queued.drain(..) {
            link.watch.state().run_failed();
            fail(done, Error::Unreachable("the child is unreachable".into()));
        }
        let generation = link.generation;
        let at = Instant::now() + link.backoff;
        link.backoff = (link.backoff * 2).min(self.config.max_backoff);
        self.schedule(at, Timer::Connect(id, generation));
    }

    fn disconnect(&mut self, id: u64, why: Ended, due: &mut Due) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        Self::close_conn(&self.epoll, link);
        if why == Ended::Failed {
            self.failed(id, due);
        } else {
            link.watch.state().reconnecting();
            self.connect(id, due);
        }
    }

    fn send(&mut self, watch: Arc<Watch>, text: String, done: RunDone, due: &mut Due) {
        let id = watch.id;
        let deadline = Instant::now() + self.client.timeouts.io;
        let Some(link) = self.links.get_mut(&id) else {
            watch.state().run_failed();
            return fail(done, Error::Unreachable("the watch has ended".into()));
        };
        let live = matches!(
            link.conn,
            Some(Conn {
                phase: Phase::Live,
                ..
            })
        );
        if live {
            self.write_run(id, text, done, deadline, due);
            return;
        }
        let reach = link.watch.state().reach;
        if link.conn.is_none() && reach == Reach::Gone {
            link.watch.state().run_failed();
            return fail(done, Error::Unreachable("the child is unreachable".into()));
        }
        link.queued.push((text, deadline, done));
        self.schedule(deadline, Timer::Acks(id));
    }

    fn write_run(
        &mut self,
        id: u64,
        text: String,
        done: RunDone,
        deadline: Instant,
        due: &mut Due,
    ) {
        let Some(conn) = self.links.get_mut(&id).and_then(|l| l.conn.as_mut()) else {
            return;
        };
        let mut line = serde_json::to_vec(&wire::run_method(&text)).expect("methods serialise");
        line.push(b'\n');
        conn.out.extend_from_slice(&line);
        conn.acks.push_back(Ack {
            segments: wire::run_segments(&text),
            deadline,
            done,
        });
        debug!(bytes = text.len(), "run written");
        self.schedule(deadline, Timer::Acks(id));
        self.flush(id, due);
    }

    fn flush(&mut self, id: u64, due: &mut Due) {
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
                    return self.disconnect(id, Ended::Closed, due);
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

    fn io(&mut self, id: u64, flags: EpollFlags, due: &mut Due) {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush(id, due);
        }
        // Read everything there is, then handle the lines: a lagging reader gets dropped.
        let mut eof = false;
        loop {
            let Some(conn) = self.links.get_mut(&id).and_then(|l| l.conn.as_mut()) else {
                return;
            };
            match conn.lines.read_from(&mut conn.stream) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {
                    if !self.lines(id, due) {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(error = %e, "read failed");
                    eof = true;
                    break;
                }
            }
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
            self.disconnect(id, why, due);
        }
    }

    /// Handle every complete line; false when the connection was dropped meanwhile.
    fn lines(&mut self, id: u64, due: &mut Due) -> bool {
        loop {
            let Some(conn) = self.links.get_mut(&id).and_then(|l| l.conn.as_mut()) else {
                return false;
            };
            let line = match conn.lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return true,
                Err(e) => {
                    warn!(error = %e, "dropping a connection");
                    self.disconnect(id, Ended::Failed, due);
                    return false;
                }
            };
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            let event = match Event::parse(trimmed) {
                Ok(event) => event,
                Err(e) => {
                    warn!(error = %e, "dropping a connection");
                    self.disconnect(id, Ended::Failed, due);
                    return false;
                }
            };
            if let Some(why) = self.event(id, event, due) {
                self.disconnect(id, why, due);
                return false;
            }
        }
    }

    /// One event; `Some` when the connection must end.
    fn event(&mut self, id: u64, event: Event, due: &mut Due) -> Option<Ended> {
        let mut release = Vec::new();
        let ended = self.apply(id, &event, &mut release, due);
        // Messages that waited for the connection go out once the Snapshot is in.
        for (text, deadline, done) in release {
            self.write_run(id, text, done, deadline, due);
        }
        ended
    }

    fn apply(
        &mut self,
        id: u64,
        event: &Event,
        release: &mut Vec<(String, Instant, RunDone)>,
        due: &mut Due,
    ) -> Option<Ended> {
        let link = self.links.get_mut(&id)?;
        let conn = link.conn.as_mut()?;
        tracing::trace!(socket = %link.watch.socket.path().display(), event = %event.name, "event");
        if let Phase::Prelude = conn.phase {
            return match event.name.as_str() {
                "snapshot" => match History::from_snapshot(event.raw_data()) {
                    Ok(snapshot) => {
                        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
                        self.sweep_due = true;
                        if snapshot.history.malformed > 0 {
                            warn!(
                                socket = %link.watch.socket.path().display(),
                                malformed = snapshot.history.malformed,
                                "history entries did not parse; output may be incomplete"
                            );
                        }
                        conn.tracker = Tracker::after_snapshot(snapshot.status);
                        conn.phase = Phase::Live;
                        link.backoff = FIRST_BACKOFF;
                        due.extend(link.watch.state().snapshot(snapshot));
                        release.append(&mut link.queued);
                        None
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
        // Our own messages are confirmed by the echo of exactly their segments (events
        // carry no request ids; another client's run must not be taken for ours).
        if let Some(ack) = conn.acks.front() {
            let verdict = match event.name.as_str() {
                "user_message" if event.segments().as_ref() == Some(&ack.segments) => Some(Ok(())),
                "error" => {
                    let (code, message) = event.error().unwrap_or_default();
                    Some(Err(match code.as_str() {
                        "already_running" => Error::Busy("the child started a turn first".into()),
                        _ => Error::Rejected(format!("{code}: {message}")),
                    }))
                }
                _ => None,
            };
            if let Some(verdict) = verdict {
                let done = conn.acks.pop_front().expect("front exists").done;
                match verdict {
                    Ok(()) => due.extend(link.watch.state().run_accepted()),
                    Err(_) => link.watch.state().run_failed(),
                }
                due.push(Box::new(move || done(verdict)));
            }
        }
        let changes = {
            let mut state = link.watch.state();
            let history = state.history.get_or_insert_with(History::default);
            let changes = conn.tracker.apply(history, event);
            due.extend(state.changed(&changes));
            changes
        };
        if changes.resync {
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            debug!(event = %event.name, "history changed shape; taking a fresh Snapshot");
            return Some(Ended::Resync);
        }
        if event.name == "shutdown" {
            info!(socket = %link.watch.socket.path().display(), "child is shutting down");
        }
        None
    }

    fn fire_timers(&mut self, due: &mut Due) {
        let now = Instant::now();
        while let Some(Reverse(next)) = self.timers.peek() {
            if next.at > now {
                break;
            }
            let Reverse(s) = self.timers.pop().expect("peeked");
            match s.timer {
                Timer::Waiter(watch, waiter) => {
                    if let Some(w) = watch.upgrade() {
                        let expired = w.state().expire_waiter(waiter);
                        due.extend(expired);
                    }
                }
                Timer::Connect(id, generation) => {
                    let current = self
                        .links
                        .get(&id)
                        .map(|l| (l.generation, l.conn.is_some()));
                    if current == Some((generation, false)) {
                        self.connect(id, due);
                    }
                }
                Timer::Prelude(id, generation) => {
                    if let Some(link) = self.links.get_mut(&id) {
                        let waiting = link.generation == generation
                            && matches!(
                                link.conn,
                                Some(Conn {
                                    phase: Phase::Prelude,
                                    ..
                                })
                            );
                        if waiting {
                            // Keep the connection: a slow child may still answer. Readers
                            // are told it did not, now.
                            debug!(socket = %link.watch.socket.path().display(), "no Snapshot in time");
                            due.extend(link.watch.state().unreachable(Reach::Silent));
                            for (_, _, done) in link.queued.drain(..) {
                                link.watch.state().run_failed();
                                fail(done, Error::Timeout("the child did not answer".into()));
                            }
                        }
                    }
                }
                Timer::Acks(id) => self.expire_acks(id, now),
                Timer::Sweep => {
                    self.sweep_due = true;
                    self.schedule(now + SWEEP, Timer::Sweep);
                }
            }
        }
    }

    fn expire_acks(&mut self, id: u64, now: Instant) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let mut expired = Vec::new();
        if let Some(conn) = link.conn.as_mut() {
            while conn.acks.front().is_some_and(|a| a.deadline <= now) {
                expired.push(conn.acks.pop_front().expect("front exists").done);
            }
        }
        let (late, keep): (Vec<_>, Vec<_>) = link
            .queued
            .drain(..)
            .partition(|(_, deadline, _)| *deadline <= now);
        link.queued = keep;
        expired.extend(late.into_iter().map(|(_, _, done)| done));
        for done in expired {
            link.watch.state().run_failed();
            fail(
                done,
                Error::Timeout("the child did not confirm the message".into()),
            );
        }
    }
}

fn fail(done: RunDone, e: Error) {
    done(Err(e));
}
