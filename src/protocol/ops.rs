//! The conversations podfs has with pods, each bounded and logged step by step (the runtime
//! once stalled for 25 minutes after a spawn and nobody could tell where).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info_span};

use crate::error::{Error, Result};
use crate::protocol::client::{refuses_connections, Connection};
use crate::protocol::wire::{self, PodStatus, Snapshot, Want};
use crate::protocol::Timeouts;

/// Longest podfs keeps reading after a fire-and-forget method, so that the server has read
/// it before podfs closes (write-then-close can lose the method).
const LINGER: Duration = Duration::from_secs(1);

/// Liveness probe: connect, read to the Snapshot, close. The probe bound is short because
/// `status` waits on it.
pub fn probe(socket: &Path, t: &Timeouts) -> Result<Snapshot> {
    let _span = info_span!("probe", socket = %socket.display()).entered();
    let started = Instant::now();
    let result =
        Connection::open(socket, t.connect, t.probe, t.max_line, Want::Status).map(|(_, s)| s);
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        ok = result.is_ok(),
        "probe done"
    );
    result
}

/// The full history, for `output` and `log`.
pub fn snapshot(socket: &Path, t: &Timeouts) -> Result<Snapshot> {
    Connection::open(socket, t.connect, t.prelude, t.max_line, Want::History).map(|(_, s)| s)
}

/// The pod's status word, `unreachable` when the probe failed.
pub fn status(socket: &Path, t: &Timeouts) -> PodStatus {
    match probe(socket, t) {
        Ok(s) => s.status(),
        Err(Error::Busy(_)) => PodStatus::Running,
        Err(_) => PodStatus::Unreachable,
    }
}

/// SendToPod: deliver `text` as one `run` with a single text segment, and wait until the
/// pod confirms it by echoing exactly these segments (events are broadcast without request
/// ids, so another client's `user_message` must not be taken for ours).
pub fn send_run(socket: &Path, text: &str, t: &Timeouts) -> Result<()> {
    let _span = info_span!("send_run", socket = %socket.display(), bytes = text.len()).entered();
    let (mut conn, snapshot) =
        Connection::open(socket, t.connect, t.prelude, t.max_line, Want::Status)?;
    debug!(status = %snapshot.status(), "prelude read");
    if snapshot.status() == PodStatus::Running {
        return Err(Error::Busy(format!(
            "{}: already running a turn; wait for it to finish and retry",
            socket.display()
        )));
    }
    conn.send(&wire::run_method(text), t.answer)?;
    debug!("run written");
    let ours = wire::run_segments(text);
    let deadline = Instant::now() + t.answer;
    loop {
        let Some(event) = conn.next_event(deadline)? else {
            return Err(Error::Unreachable(format!(
                "{}: closed before confirming the run",
                socket.display()
            )));
        };
        match event.name.as_str() {
            "user_message" if event.data().get("segments") == Some(&ours) => {
                debug!("run accepted");
                return Ok(());
            }
            "error" => {
                let (code, message) = event.error().unwrap_or_default();
                return Err(match code.as_str() {
                    "already_running" => Error::Busy(format!(
                        "{}: already running a turn; wait for it to finish and retry",
                        socket.display()
                    )),
                    _ => Error::Rejected(format!("{code}: {message}")),
                });
            }
            _ => {}
        }
    }
}

/// Ask a pod to shut down, reading until it announces `shutdown`, closes, or a short
/// deadline passes. Errors are returned, but the caller decides by `wait_gone` alone.
pub fn request_shutdown(socket: &Path, t: &Timeouts) -> Result<()> {
    let _span = info_span!("request_shutdown", socket = %socket.display()).entered();
    let (mut conn, _) = Connection::open(socket, t.connect, t.prelude, t.max_line, Want::Status)?;
    conn.send(&wire::shutdown_method(), t.answer)?;
    let deadline = Instant::now() + LINGER.min(t.answer);
    loop {
        match conn.next_event(deadline) {
            Ok(Some(e)) if e.name == "shutdown" => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) | Err(Error::Timeout(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Poll until `connect()` is refused (the only proof a pod has stopped), at most `wait`.
pub fn wait_gone(socket: &Path, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if refuses_connections(socket, Duration::from_millis(200)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Tell a live parent that `child` has shut down, so it runs its own remove-and-reclaim.
/// Reads until the parent starts handling the event or a short deadline passes.
pub fn send_shut_down(parent_socket: &Path, child: &str, t: &Timeouts) -> Result<()> {
    let _span = info_span!("send_shut_down", parent = %parent_socket.display(), child).entered();
    let (mut conn, _) = Connection::open(
        parent_socket,
        t.connect,
        t.prelude,
        t.max_line,
        Want::Status,
    )?;
    conn.send(&wire::shut_down_event(child), t.answer)?;
    let deadline = Instant::now() + LINGER.min(t.answer);
    loop {
        match conn.next_event(deadline) {
            Ok(Some(e)) if e.name == "invoke_start" && e.kind().as_deref() == Some("pod_event") => {
                return Ok(())
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(Error::Timeout(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
