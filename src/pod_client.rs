//! The pod client: the only code in podfs that opens pod sockets, and the owner of every
//! bound podfs puts on a conversation with a pod.
//!
//! Each conversation is bounded and logged step by step: the runtime once stalled for 25
//! minutes after a spawn and nobody could tell where. Sockets named by a registry entry are
//! only connected to when they lie under the runtime dir ([`SocketPath`]), so an entry cannot
//! steer podfs to an arbitrary socket on the machine.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info_span, warn};

use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::name::PodName;
use crate::paths::Paths;
use crate::protocol::client::{self, refuses_connections, Connection};
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

/// A pod socket podfs may connect to: inside the runtime dir.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketPath(PathBuf);

impl SocketPath {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Longest podfs keeps reading after a fire-and-forget method, so that the server has read
/// it before podfs closes (write-then-close can lose the method).
const LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct PodClient {
    pub timeouts: Timeouts,
    runtime: PathBuf,
    paths: Paths,
}

impl PodClient {
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
            Ok(SocketPath(path))
        } else {
            warn!(socket = %path.display(), runtime = %self.runtime.display(),
                  "registry socket outside the runtime dir; not connecting");
            Err(Error::OutsideRuntimeDir(path))
        }
    }

    /// The socket the runtime itself gives pod `name`.
    pub fn own_socket(&self, name: &PodName) -> SocketPath {
        SocketPath(self.paths.socket(name))
    }

    /// One non-blocking connect for the watch reactor; `Ok(None)`: try again shortly.
    pub fn stream(&self, socket: &SocketPath) -> std::io::Result<Option<UnixStream>> {
        client::connect_nonblocking(socket.path())
    }

    fn open(&self, socket: &SocketPath) -> Result<(Connection, PodStatus)> {
        let t = &self.timeouts;
        Connection::open(socket.path(), t.connect, t.io, t.max_line)
    }

    /// The liveness rule: `connect()` succeeds and a Snapshot arrives in time.
    pub fn is_live(&self, socket: &SocketPath) -> bool {
        let _span = info_span!("probe", socket = %socket.path().display()).entered();
        let started = Instant::now();
        let live = self.open(socket).is_ok();
        debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            live, "probe done"
        );
        live
    }

    /// Whether nobody listens on the socket (ENOENT, ECONNREFUSED): the only proof a pod
    /// has stopped.
    pub fn is_gone(&self, socket: &SocketPath) -> bool {
        refuses_connections(socket.path(), self.timeouts.connect)
    }

    /// Ask a pod to shut down and wait until it is gone, all within `stop_wait`. Errors on
    /// the way are only logged: whether the pod is gone decides.
    pub fn stop(&self, socket: &SocketPath) -> bool {
        let _span = info_span!("stop", socket = %socket.path().display()).entered();
        let deadline = Instant::now() + self.timeouts.stop_wait;
        if self.is_gone(socket) {
            debug!("already gone");
            return true;
        }
        if let Err(e) = self.request_shutdown(socket, deadline) {
            debug!(error = %e, "shutdown request failed; waiting for the socket anyway");
        }
        self.wait_gone(socket, deadline)
    }

    /// Write `shutdown`, then read until the pod announces it, closes, or a short linger
    /// passes, never beyond `deadline`.
    fn request_shutdown(&self, socket: &SocketPath, deadline: Instant) -> Result<()> {
        let t = &self.timeouts;
        let left = |cap: Duration| cap.min(deadline.saturating_duration_since(Instant::now()));
        let (mut conn, _) =
            Connection::open(socket.path(), left(t.connect), left(t.io), t.max_line)?;
        conn.send(&wire::shutdown_method(), left(t.io))?;
        let until = Instant::now() + left(LINGER);
        loop {
            match conn.next_event(until) {
                Ok(Some(e)) if e.name == "shutdown" => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) | Err(Error::Timeout(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Poll until `connect()` is refused, at most until `deadline`. Sleeps: pool only.
    fn wait_gone(&self, socket: &SocketPath, deadline: Instant) -> bool {
        loop {
            if refuses_connections(socket.path(), Duration::from_millis(200)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
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
