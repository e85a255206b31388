//! The pod client: the only code in podfs that opens pod sockets, and the owner of every
//! bound podfs puts on a conversation with a pod.
//!
//! Each conversation is bounded and logged step by step: the runtime once stalled for 25
//! minutes after a spawn and nobody could tell where. A socket is only ever reached as a
//! [`Socket`] the home placed in one of its runtime dirs ([`crate::home`]), without
//! following a symlink, and served by the home's owner ([`crate::confine`]).
//!
//! **Invariant: silence is not absence.** Whether a pod is gone is decided here, and only
//! by proof: a [`Gone`] is made only from a refused connection or a missing socket at the
//! path the runtime itself recorded, and only where no live process podfs can see may be
//! that pod (a listener can die while its process still writes). An accepted connection
//! proves the pod present; nothing outweighs it, least of all a pid. Everything else
//! (permission, a symlink, podfs's own shortage, a full backlog) is [`Presence::Unknown`].
//! The edits that need a pod to be gone take a `&Gone`, so they cannot be called on a
//! guess.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info_span};

use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::home::{Home, Socket};
use crate::name::PodName;
use crate::process::{self, Requester};
use crate::protocol::client::Connection;
use crate::protocol::wire::{self, PodStatus};

/// Every bound podfs puts on a conversation with a pod. The runtime uses 5 s per step;
/// podfs is at least as strict, and tests shrink these to keep failures fast.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// `connect()` to a pod socket.
    pub connect: Duration,
    /// How long a `status` read waits for a child that has not answered yet.
    pub status_wait: Duration,
    /// Reading the prelude, and waiting for the answer to a written method; also how long
    /// `output` and `log` wait for a child before `ETIMEDOUT`.
    pub io: Duration,
    /// `rmdir`: asking a child to stop and waiting until it is gone, in all.
    pub stop_wait: Duration,
    /// `rmdir`: waiting for a live parent to record a reclaim in its `metadata.json`.
    pub confirm_wait: Duration,
    /// `rmdir`: waiting for the allocation table's lock.
    pub lock_wait: Duration,
    /// Longest accepted protocol line (Snapshots of tens of MiB are normal).
    pub max_line: usize,
}

impl Timeouts {
    /// Every bound no longer than a third of `limit`, the longest a request may wait (a
    /// removal runs a few of them in a row, and its caller's deadline ends the rest).
    pub fn within(self, limit: Option<Duration>) -> Timeouts {
        let Some(limit) = limit else {
            return self;
        };
        let cap = |d: Duration| d.min(limit / 3);
        Timeouts {
            connect: cap(self.connect),
            status_wait: cap(self.status_wait),
            io: cap(self.io),
            stop_wait: cap(self.stop_wait),
            confirm_wait: cap(self.confirm_wait),
            lock_wait: cap(self.lock_wait),
            max_line: self.max_line,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_millis(500),
            status_wait: Duration::from_millis(1500),
            io: Duration::from_secs(5),
            stop_wait: Duration::from_secs(5),
            confirm_wait: Duration::from_secs(5),
            lock_wait: Duration::from_secs(5),
            max_line: 256 << 20,
        }
    }
}

/// Proof that a pod is gone. Only this module makes one (its field is private), and only
/// from a refusal at the socket the runtime recorded.
#[derive(Debug)]
pub struct Gone {
    proof: &'static str,
}

impl Gone {
    /// What proved it, for the log.
    pub fn proof(&self) -> &'static str {
        self.proof
    }
}

/// What can be proven about a pod right now.
#[derive(Debug)]
pub enum Presence {
    /// It answered: a connection and its Snapshot.
    Live,
    /// Proven gone.
    Gone(Gone),
    /// It accepted a connection but sent no Snapshot in time: present, perhaps busy.
    Silent,
    /// Neither: podfs could not ask (permission, a symlink, its own shortage), or a
    /// process that may be the pod still lives behind a dead listener.
    Unknown(Error),
}

/// How one `connect()` to a socket ended, sorted by what it proves.
#[derive(Debug)]
pub enum Dial {
    Connected(UnixStream),
    /// The listener's backlog is full: try again shortly (non-blocking only).
    Busy,
    /// Nobody listens: the socket (or a directory on its way) is missing, or refuses.
    Absent(io::Error),
    /// podfs's own resources ran out (`EMFILE`, `ENOMEM`, ...): nothing about the pod.
    Shortage(io::Error),
    /// podfs may not reach it: a symlink on the way, another user's file or process,
    /// no `/proc`, a permission the kernel refuses.
    Refused(io::Error),
    /// Anything else; proves nothing.
    Failed(io::Error),
}

impl Dial {
    fn of(e: io::Error) -> Dial {
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ECONNREFUSED | libc::ENOTDIR) => Dial::Absent(e),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => Dial::Shortage(e),
            Some(libc::EACCES | libc::EPERM | libc::ELOOP) => Dial::Refused(e),
            _ if e.kind() == io::ErrorKind::PermissionDenied => Dial::Refused(e),
            _ => Dial::Failed(e),
        }
    }
}

/// Longest podfs keeps reading after a fire-and-forget method, so that the server has read
/// it before podfs closes (write-then-close can lose the method).
const LINGER: Duration = Duration::from_secs(1);
/// A pid file holds a decimal pid.
const PID_FILE_CAP: usize = 32;

#[derive(Clone)]
pub struct PodClient {
    timeouts: Timeouts,
    home: Arc<Home>,
}

impl PodClient {
    pub fn new(home: Arc<Home>, timeouts: Timeouts) -> Self {
        PodClient { timeouts, home }
    }

    /// The bounds of every exchange with a pod.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub fn home(&self) -> &Arc<Home> {
        &self.home
    }

    pub fn generation(&self) -> &'static Generation {
        self.home.generation()
    }

    /// The socket a registry entry records, if it lies in one of the home's runtime dirs
    /// (`EACCES` otherwise: podfs never connects there).
    pub fn place(&self, recorded: &str) -> Result<Socket> {
        self.home.place(recorded)
    }

    /// One `connect()`, through the home's runtime dir.
    pub fn dial(&self, socket: &Socket, nonblocking: bool) -> Dial {
        let dir = match self.home.pod_runtime_dir(socket) {
            Ok(dir) => dir,
            Err(e) => return Dial::of(e),
        };
        match dir.connect("sock", nonblocking) {
            Ok(Some(stream)) => Dial::Connected(stream),
            Ok(None) => Dial::Busy,
            Err(e) => Dial::of(e),
        }
    }

    /// [`PodClient::dial`] until it connects or proves something, at most `timeout`.
    fn dial_within(&self, socket: &Socket, timeout: Duration) -> Dial {
        let deadline = Instant::now() + timeout;
        loop {
            match self.dial(socket, true) {
                Dial::Busy if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
                Dial::Busy => {
                    return Dial::Failed(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connect timed out (the listener's backlog stayed full)",
                    ))
                }
                other => return other,
            }
        }
    }

    fn open_with(
        &self,
        socket: &Socket,
        connect: Duration,
        io: Duration,
    ) -> Result<(Connection, PodStatus)> {
        let label = socket.path().display().to_string();
        let stream = match self.dial_within(socket, connect) {
            Dial::Connected(s) => s,
            Dial::Absent(e) => return Err(Error::Unreachable(format!("{label}: connect: {e}"))),
            Dial::Busy => unreachable!("dial_within retries a full backlog"),
            Dial::Refused(e) | Dial::Shortage(e) | Dial::Failed(e) => {
                return Err(Error::io(format!("{label}: connect"), e))
            }
        };
        Connection::open(stream, label, io, self.timeouts.max_line)
    }

    /// Whether a live process podfs can see may be the pod whose runtime directory holds
    /// `socket` (its pid file names one): then a dead listener does not prove it gone.
    /// A pid file that cannot be read for any reason but its absence counts as "may be".
    fn process_may_live(&self, socket: &Socket) -> bool {
        let read = self
            .home
            .pod_runtime_dir(socket)
            .and_then(|dir| dir.read_at_most("pid", PID_FILE_CAP));
        match read {
            Ok((bytes, stamp)) => match std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
            {
                Some(pid) => process::may_be_the_recorded_process(pid, stamp.mtime),
                None => false,
            },
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => false,
            Err(_) => true,
        }
    }

    /// Proof that nobody listens on `socket` and no process that may be the pod lives.
    fn gone(&self, socket: &Socket, dial: Dial) -> std::result::Result<Gone, Dial> {
        match dial {
            Dial::Absent(e) if self.process_may_live(socket) => {
                Err(Dial::Failed(io::Error::other(format!(
                    "nobody listens on {} ({e}), but the process its pid file names still \
                     runs",
                    socket.path().display()
                ))))
            }
            Dial::Absent(e) => Ok(Gone {
                proof: if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    "its socket refuses connections"
                } else {
                    "its socket is not there"
                },
            }),
            other => Err(other),
        }
    }

    /// What can be proven about the pod behind `socket` now: live by the runtime's own
    /// rule (a connection and a Snapshot), gone only by proof, present when it accepts.
    pub fn presence(&self, socket: &Socket) -> Presence {
        let _span = info_span!("presence", socket = %socket.path().display()).entered();
        let started = Instant::now();
        let presence = match self.gone(socket, self.dial_within(socket, self.timeouts.connect)) {
            Ok(gone) => Presence::Gone(gone),
            Err(Dial::Connected(stream)) => {
                let label = socket.path().display().to_string();
                match Connection::open(stream, label, self.timeouts.io, self.timeouts.max_line) {
                    Ok(_) => Presence::Live,
                    Err(e) => {
                        debug!(error = %e, "connected, but no Snapshot");
                        Presence::Silent
                    }
                }
            }
            Err(Dial::Refused(e)) => Presence::Unknown(Error::io(
                format!("{}: podfs may not connect", socket.path().display()),
                e,
            )),
            Err(Dial::Absent(e) | Dial::Shortage(e) | Dial::Failed(e)) => Presence::Unknown(
                Error::io(format!("{}: connect", socket.path().display()), e),
            ),
            Err(Dial::Busy) => unreachable!("dial_within retries a full backlog"),
        };
        debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ?presence,
            "presence probed"
        );
        presence
    }

    /// A quick re-check, right before editing an offline pod's files: still proven gone?
    /// No Snapshot is read (a connection alone disproves it).
    pub fn still_gone(&self, socket: &Socket) -> Option<Gone> {
        self.gone(socket, self.dial_within(socket, self.timeouts.connect))
            .ok()
    }

    /// Ask the pod behind `socket` to shut down and wait until it is proven gone, all
    /// within `stop_wait`; `None` when it is not by then. Errors on the way are only
    /// logged: the proof decides. The wait ends early, with `Interrupted`, when `who`
    /// gets a signal.
    ///
    /// The conversation that asked is read until the pod closes it (its process exits),
    /// and only then is the socket checked: every connection makes a pod serialise its
    /// whole history, so podfs does not probe in a loop while the pod shuts down.
    pub fn stop(&self, socket: &Socket, who: Requester) -> Result<Option<Gone>> {
        let _span = info_span!("stop", socket = %socket.path().display()).entered();
        let deadline = Instant::now() + self.timeouts.stop_wait;
        if let Ok(gone) = self.gone(socket, self.dial_within(socket, self.timeouts.connect)) {
            debug!(proof = gone.proof(), "already gone");
            return Ok(Some(gone));
        }
        if let Err(e) = self.request_shutdown(socket, deadline, who) {
            if matches!(e, Error::Interrupted) {
                return Err(e);
            }
            debug!(error = %e, "shutdown request failed; waiting for the socket anyway");
        }
        self.wait_gone(socket, deadline, who)
    }

    /// Write `shutdown`, then read until the pod closes the connection or `deadline`.
    fn request_shutdown(&self, socket: &Socket, deadline: Instant, who: Requester) -> Result<()> {
        let t = &self.timeouts;
        let left = |cap: Duration| cap.min(deadline.saturating_duration_since(Instant::now()));
        let (mut conn, _) = self.open_with(socket, left(t.connect), left(t.io))?;
        conn.send(&wire::shutdown_method(), left(t.io))?;
        loop {
            who.check()?;
            let slice = (Instant::now() + Duration::from_millis(100)).min(deadline);
            match conn.next_event(slice) {
                Ok(None) => return Ok(()),
                Ok(Some(e)) if e.name == "shutdown" => debug!("the pod announced its shutdown"),
                Ok(Some(_)) => {}
                Err(Error::Timeout(_)) if Instant::now() < deadline => {}
                Err(Error::Timeout(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Check until the pod is proven gone, at most until `deadline`. Sleeps: pool only.
    fn wait_gone(
        &self,
        socket: &Socket,
        deadline: Instant,
        who: Requester,
    ) -> Result<Option<Gone>> {
        loop {
            if let Ok(gone) =
                self.gone(socket, self.dial_within(socket, Duration::from_millis(200)))
            {
                return Ok(Some(gone));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            who.check()?;
            thread::sleep(
                Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    /// Tell a live parent that `child` has shut down (the runtime's `shut_down` lifecycle
    /// event), so it runs its own remove-and-reclaim. Reads until the parent starts handling
    /// the event or a short linger passes.
    pub fn send_shut_down(&self, parent: &Socket, child: &PodName) -> Result<()> {
        let gen = self.generation();
        let _span =
            info_span!("send_shut_down", parent = %parent.path().display(), %child).entered();
        let (mut conn, _) = self.open_with(parent, self.timeouts.connect, self.timeouts.io)?;
        conn.send(
            &wire::lifecycle_method(gen, "shut_down", child),
            self.timeouts.io,
        )?;
        let until = Instant::now() + LINGER.min(self.timeouts.io);
        loop {
            match conn.next_event(until) {
                Ok(Some(e))
                    if e.name == "invoke_start"
                        && e.kind().as_deref() == Some(gen.lifecycle_method) =>
                {
                    return Ok(())
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(Error::Timeout(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}
