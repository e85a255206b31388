//! The pod client: the only code in podfs that opens pod sockets, and the owner of every
//! bound podfs puts on a conversation with a pod.
//!
//! Each conversation is bounded and logged step by step: the runtime once stalled for 25
//! minutes after a spawn and nobody could tell where. Sockets named by a registry entry are
//! only connected to when they lie under the runtime dir ([`SocketPath`]), are reached
//! without following a symlink, and are served by the owner of the runtime dir
//! ([`crate::confine`]), so an entry cannot steer podfs to another socket on the machine.
//!
//! Whether a pod is gone is decided by proof only ([`PodClient::presence`]): nobody
//! listens on its socket, or the pid it recorded is no longer that process. A pod that
//! accepts a connection and stays silent is present.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info_span, warn};

use crate::confine::Dir;
use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::name::PodName;
use crate::paths::Paths;
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

/// A pod socket podfs may connect to: inside the runtime dir, named relative to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketPath {
    path: PathBuf,
    /// The same path relative to the runtime dir: only plain names.
    rel: PathBuf,
}

impl SocketPath {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What can be proven about a pod right now.
#[derive(Debug)]
pub enum Presence {
    /// It answered: a connection and its Snapshot.
    Live,
    /// Proven gone; the proof, for the log.
    Gone(&'static str),
    /// Something accepts connections (or its process lives) but no Snapshot came in time.
    Silent,
    /// Neither proven gone nor live (podfs could not even ask: permission, podfs's own
    /// resource shortage, a symlink where the socket should be).
    Unknown(Error),
}

/// Whether a failed `connect()` proves that nobody listens: the socket (or its directory)
/// does not exist, or exists with nobody bound to it.
pub fn proves_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::ENOTDIR)
    )
}

/// Longest podfs keeps reading after a fire-and-forget method, so that the server has read
/// it before podfs closes (write-then-close can lose the method).
const LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct PodClient {
    timeouts: Timeouts,
    runtime: PathBuf,
    paths: Paths,
}

impl PodClient {
    /// The bounds of every exchange with a pod.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub fn new(paths: &Paths, timeouts: Timeouts) -> Self {
        PodClient {
            timeouts,
            runtime: paths.runtime.clone(),
            paths: paths.clone(),
        }
    }

    pub fn generation(&self) -> &'static Generation {
        self.paths.generation
    }

    /// The socket a registry entry names, if podfs may connect to it.
    pub fn socket(&self, registered: &str) -> Result<SocketPath> {
        let path = PathBuf::from(registered);
        if self.paths.socket_is_allowed(&path) {
            if let Ok(rel) = path.strip_prefix(&self.runtime) {
                if crate::confine::names_of(rel).is_ok() {
                    let rel = rel.to_path_buf();
                    return Ok(SocketPath { path, rel });
                }
            }
        }
        warn!(socket = %path.display(), runtime = %self.runtime.display(),
              "registry socket outside the runtime dir; not connecting");
        Err(Error::OutsideRuntimeDir(path))
    }

    /// The socket the runtime itself gives pod `name`.
    pub fn own_socket(&self, name: &PodName) -> SocketPath {
        let path = self.paths.socket(name);
        let rel = PathBuf::from(name.as_str()).join("sock");
        SocketPath { path, rel }
    }

    /// One `connect()` through [`crate::confine`]; `Ok(None)` when non-blocking and the
    /// listener's backlog is full.
    fn connect_once(
        &self,
        socket: &SocketPath,
        nonblocking: bool,
    ) -> io::Result<Option<UnixStream>> {
        let base = Dir::base(&self.runtime)?;
        let (owner, _) = base.owner()?;
        let mut dir = base;
        let names = crate::confine::names_of(&socket.rel)?;
        let (name, dirs) = names
            .split_last()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        for d in dirs {
            dir = dir.sub(d)?;
        }
        dir.connect(name, nonblocking, owner)
    }

    /// `connect()` with a deadline. A Unix socket whose backlog is full refuses a
    /// non-blocking connect with EAGAIN (and hangs a blocking one): retry until then.
    pub fn connect(&self, socket: &SocketPath, timeout: Duration) -> io::Result<UnixStream> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(stream) = self.connect_once(socket, true)? {
                return Ok(stream);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// One non-blocking connect for the watch reactor; `Ok(None)`: try again shortly.
    pub fn stream(&self, socket: &SocketPath) -> io::Result<Option<UnixStream>> {
        self.connect_once(socket, true)
    }

    fn open_with(
        &self,
        socket: &SocketPath,
        connect: Duration,
        io: Duration,
    ) -> Result<(Connection, PodStatus)> {
        let label = socket.path().display().to_string();
        let stream = self.connect(socket, connect).map_err(|e| {
            if proves_gone(&e) {
                Error::Unreachable(format!("{label}: connect: {e}"))
            } else {
                Error::io(format!("{label}: connect"), e)
            }
        })?;
        Connection::open(stream, label, io, self.timeouts.max_line)
    }

    fn open(&self, socket: &SocketPath) -> Result<(Connection, PodStatus)> {
        self.open_with(socket, self.timeouts.connect, self.timeouts.io)
    }

    /// Whether the pod answers now (connect and a Snapshot), for callers that only wait
    /// for a pod to come up (the demo).
    pub fn is_live(&self, socket: &SocketPath) -> bool {
        self.open(socket).is_ok()
    }

    /// Whether nobody listens on the socket (ENOENT, ECONNREFUSED): the only proof a pod
    /// has stopped.
    pub fn is_gone(&self, socket: &SocketPath) -> bool {
        matches!(self.connect(socket, self.timeouts.connect), Err(e) if proves_gone(&e))
    }

    /// Whether pod `name`'s recorded pid (`<runtime>/<name>/pid`) proves it is gone.
    fn pid_proves_gone(&self, name: &PodName) -> bool {
        let read = Dir::base(&self.runtime)
            .and_then(|run| run.sub(name.as_str()))
            .and_then(|dir| dir.read("pid"));
        let Ok((bytes, stamp)) = read else {
            return false;
        };
        let Some(pid) = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            return false;
        };
        process::recorded_pid_is_gone(pid, stamp.mtime)
    }

    /// What can be proven about pod `name` now, by the runtime's own rule (a connection
    /// and a Snapshot) for "live", and only by proof for "gone".
    pub fn presence(&self, name: &PodName) -> Presence {
        let socket = self.own_socket(name);
        let _span = info_span!("presence", socket = %socket.path().display()).entered();
        let started = Instant::now();
        let presence = match self.connect(&socket, self.timeouts.connect) {
            Err(e) if proves_gone(&e) => Presence::Gone("nothing listens on its socket"),
            Err(_) if self.pid_proves_gone(name) => Presence::Gone("its recorded pid is gone"),
            Err(e) => Presence::Unknown(Error::io(
                format!("{}: connect", socket.path().display()),
                e,
            )),
            Ok(stream) => {
                let label = socket.path().display().to_string();
                match Connection::open(stream, label, self.timeouts.io, self.timeouts.max_line) {
                    Ok(_) => Presence::Live,
                    Err(_) if self.pid_proves_gone(name) => {
                        Presence::Gone("its recorded pid is gone")
                    }
                    Err(e) => {
                        debug!(error = %e, "connected, but no Snapshot");
                        Presence::Silent
                    }
                }
            }
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
    pub fn still_gone(&self, name: &PodName) -> bool {
        match self.connect(&self.own_socket(name), self.timeouts.connect) {
            Err(e) if proves_gone(&e) => true,
            _ => self.pid_proves_gone(name),
        }
    }

    /// Ask a pod to shut down and wait until it is gone, all within `stop_wait`. Errors on
    /// the way are only logged: whether the pod is gone decides. The wait ends early, with
    /// `Interrupted`, when `who` gets a signal.
    ///
    /// The conversation that asked is read until the pod closes it (its process exits),
    /// and only then is the socket checked: every connection makes a pod serialise its
    /// whole history, so podfs does not probe in a loop while the pod shuts down.
    pub fn stop(&self, socket: &SocketPath, who: Requester) -> Result<bool> {
        let _span = info_span!("stop", socket = %socket.path().display()).entered();
        let deadline = Instant::now() + self.timeouts.stop_wait;
        if self.is_gone(socket) {
            debug!("already gone");
            return Ok(true);
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
    fn request_shutdown(
        &self,
        socket: &SocketPath,
        deadline: Instant,
        who: Requester,
    ) -> Result<()> {
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

    /// Check until `connect()` is refused, at most until `deadline`. Sleeps: pool only.
    fn wait_gone(&self, socket: &SocketPath, deadline: Instant, who: Requester) -> Result<bool> {
        loop {
            match self.connect(socket, Duration::from_millis(200)) {
                Err(e) if proves_gone(&e) => return Ok(true),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            who.check()?;
            thread::sleep(
                Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    /// Write one method the careful way (prelude first, a short linger after), for the
    /// reference pods' reports to their parent.
    pub fn report(&self, socket: &SocketPath, method: &serde_json::Value) -> Result<()> {
        let (mut conn, _) = self.open(socket)?;
        conn.send(method, self.timeouts.io)?;
        let until = Instant::now() + Duration::from_millis(300);
        while let Ok(Some(_)) = conn.next_event(until) {}
        Ok(())
    }

    /// Tell a live parent that `child` has shut down (the runtime's `shut_down` lifecycle
    /// event), so it runs its own remove-and-reclaim. Reads until the parent starts handling
    /// the event or a short linger passes.
    pub fn send_shut_down(&self, parent: &SocketPath, child: &PodName) -> Result<()> {
        let gen = self.generation();
        let _span =
            info_span!("send_shut_down", parent = %parent.path().display(), %child).entered();
        let (mut conn, _) = self.open(parent)?;
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
