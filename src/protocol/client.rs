//! One connection to a pod, with a deadline on every step.
//!
//! The server writes its prelude (zero or more `alert`s, then exactly one `snapshot`) before
//! it reads anything, so [`Connection::open`] always drains it first: clients that wrote
//! first lost messages while the server blocked writing a large Snapshot nobody read.

use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::wire::{Event, Snapshot, Want};

/// An open conversation whose prelude has been read.
pub struct Connection {
    stream: UnixStream,
    pending: Vec<u8>,
    start: usize,
    max_line: usize,
    label: String,
}

/// Whether a `connect()` failed because nobody listens (the pod is gone) or for another
/// reason; only the former proves a pod has stopped.
pub fn refuses_connections(path: &Path, timeout: Duration) -> bool {
    match connect(path, timeout) {
        Ok(_) => false,
        Err(e) => matches!(
            e.raw_os_error(),
            Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::ENOTDIR)
        ),
    }
}

/// `connect()` with a deadline. A Unix socket whose backlog is full makes a non-blocking
/// connect fail with EAGAIN, and a blocking one hang; podfs retries until the deadline.
pub fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    loop {
        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return finish(fd),
            Err(Errno::EINPROGRESS) => {
                wait_writable(&fd, deadline)?;
                match socket::getsockopt(&fd, socket::sockopt::SocketError)? {
                    0 => return finish(fd),
                    err => return Err(io::Error::from_raw_os_error(err)),
                }
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(ErrorKind::TimedOut, "connect timed out"));
                }
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn finish(fd: OwnedFd) -> io::Result<UnixStream> {
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn wait_writable(fd: &OwnedFd, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(ErrorKind::TimedOut, "connect timed out"));
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(fd),
            PollFlags::POLLOUT,
        )];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

impl Connection {
    /// Connect and read the prelude up to and including the Snapshot.
    pub fn open(
        path: &Path,
        connect_timeout: Duration,
        prelude_timeout: Duration,
        max_line: usize,
        want: Want,
    ) -> Result<(Connection, Snapshot)> {
        let label = path.display().to_string();
        let stream = connect(path, connect_timeout)
            .map_err(|e| Error::Unreachable(format!("{label}: connect: {e}")))?;
        let mut conn = Connection {
            stream,
            pending: Vec::new(),
            start: 0,
            max_line,
            label,
        };
        let deadline = Instant::now() + prelude_timeout;
        loop {
            let event = match conn.next_event(deadline) {
                Ok(Some(event)) => event,
                Ok(None) => {
                    return Err(Error::Unreachable(format!(
                        "{}: closed before the snapshot",
                        conn.label
                    )))
                }
                Err(Error::Timeout(what)) => {
                    return Err(Error::Unreachable(format!("{what} (no snapshot)")))
                }
                Err(e) => return Err(e),
            };
            match event.name.as_str() {
                "snapshot" => {
                    let snapshot = Snapshot::from_event(&event, want)?;
                    return Ok((conn, snapshot));
                }
                "alert" => tracing::debug!(pod = %conn.label, alert = %event.data(), "alert"),
                // An `error` before the Snapshot means the pod refused the connection.
                "error" => {
                    let (code, message) = event.error().unwrap_or_default();
                    return Err(match code.as_str() {
                        "already_running" => Error::Busy(message),
                        _ => Error::Rejected(format!("{code}: {message}")),
                    });
                }
                _ => {}
            }
        }
    }

    /// Write one method line.
    pub fn send(&mut self, method: &Value, timeout: Duration) -> Result<()> {
        let mut line = serde_json::to_vec(method).expect("methods serialise");
        line.push(b'\n');
        self.stream
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
            .and_then(|()| self.stream.write_all(&line))
            .and_then(|()| self.stream.flush())
            .map_err(|e| match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                    Error::Timeout(format!("{}: write", self.label))
                }
                _ => Error::io(format!("{}: write", self.label), e),
            })
    }

    /// The next event, `Ok(None)` on a clean EOF at a line boundary.
    pub fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>> {
        loop {
            let Some(line) = self.read_line(deadline)? else {
                return Ok(None);
            };
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            return Event::parse(trimmed).map(Some);
        }
    }

    fn read_line(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>> {
        let mut scanned = self.start;
        loop {
            if let Some(pos) = self.pending[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + pos;
                let line = self.pending[self.start..end].to_vec();
                self.start = end + 1;
                if self.start == self.pending.len() {
                    self.pending.clear();
                    self.start = 0;
                }
                return Ok(Some(line));
            }
            scanned = self.pending.len();
            if scanned - self.start > self.max_line {
                return Err(Error::Protocol(format!(
                    "{}: line longer than {} bytes",
                    self.label, self.max_line
                )));
            }
            if self.start > 0 {
                self.pending.drain(..self.start);
                scanned -= self.start;
                self.start = 0;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(format!("{}: read", self.label)));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| Error::io("set read timeout", e))?;
            let old = self.pending.len();
            self.pending.resize(old + 64 * 1024, 0);
            let read = self.stream.read(&mut self.pending[old..]);
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    self.pending.truncate(old);
                    match e.kind() {
                        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                            return Err(Error::Timeout(format!("{}: read", self.label)))
                        }
                        ErrorKind::Interrupted => continue,
                        ErrorKind::ConnectionReset => 0,
                        _ => return Err(Error::io(format!("{}: read", self.label), e)),
                    }
                }
            };
            self.pending.truncate(old + n);
            if n == 0 {
                if self.pending.len() > self.start {
                    return Err(Error::Protocol(format!(
                        "{}: connection closed mid-line",
                        self.label
                    )));
                }
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve(lines: Vec<Vec<u8>>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path).unwrap();
        thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                for l in lines {
                    let _ = s.write_all(&l);
                }
                thread::sleep(Duration::from_millis(300));
            }
        });
        (dir, path)
    }

    fn open(path: &Path) -> Result<(Connection, Snapshot)> {
        Connection::open(
            path,
            Duration::from_millis(500),
            Duration::from_millis(500),
            1 << 20,
            Want::History,
        )
    }

    #[test]
    fn every_fixture_prelude_parses() {
        for rel in [
            "socket/child1-prelude.jsonl",
            "socket/child2-prelude.jsonl",
            "socket/parent-fresh-prelude.jsonl",
        ] {
            let text = crate::store::fixtures::read(rel, "/h");
            let alert = br#"{"event":"alert","data":{"level":"warn","source":"pod","message":"m","timestamp_ms":1}}"#;
            let (_d, path) = serve(vec![alert.to_vec(), b"\n".to_vec(), text.into_bytes()]);
            let (_c, snap) = open(&path).unwrap();
            assert_eq!(
                snap.status(),
                crate::protocol::wire::PodStatus::Idle,
                "{rel}"
            );
        }
    }

    #[test]
    fn run_transcript_events_parse() {
        let text = crate::store::fixtures::read("socket/child1-run.jsonl", "/h");
        let names: Vec<String> = text
            .lines()
            .map(|l| Event::parse(l.as_bytes()).unwrap().name)
            .collect();
        assert_eq!(names.first().unwrap(), "user_message");
        assert_eq!(names.last().unwrap(), "status");
        assert!(names.contains(&"run_end".to_string()));
    }

    #[test]
    fn split_lines_are_reassembled() {
        let snap = br#"{"event":"snapshot","data":{"entries":[],"status":"paused"}}"#;
        let (a, b) = snap.split_at(10);
        let (_d, path) = serve(vec![a.to_vec(), b.to_vec(), b"\n".to_vec()]);
        let (_c, s) = open(&path).unwrap();
        assert_eq!(s.status.as_deref(), Some("paused"));
    }

    #[test]
    fn a_silent_server_times_out_as_unreachable() {
        let (_d, path) = serve(vec![]);
        let started = Instant::now();
        let err = open(&path).err().unwrap();
        assert!(matches!(err, Error::Unreachable(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn mid_line_close_and_garbage_are_protocol_errors() {
        let (_d, path) = serve(vec![b"{\"event\":\"snap".to_vec()]);
        // The server sleeps then closes; the partial line must not be taken as an event.
        let err = Connection::open(
            &path,
            Duration::from_millis(500),
            Duration::from_secs(2),
            1 << 20,
            Want::History,
        )
        .err()
        .unwrap();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
        let (_d2, path2) = serve(vec![b"not json\n".to_vec()]);
        assert!(matches!(open(&path2).err().unwrap(), Error::Protocol(_)));
    }

    #[test]
    fn oversized_lines_are_refused() {
        let big = vec![b'x'; 3 << 20];
        let (_d, path) = serve(vec![big]);
        let err = open(&path).err().unwrap();
        assert!(
            matches!(err, Error::Protocol(_) | Error::Unreachable(_)),
            "{err}"
        );
    }

    #[test]
    fn nobody_listening_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(refuses_connections(
            &dir.path().join("none"),
            Duration::from_millis(100)
        ));
        let path = dir.path().join("dead");
        drop(UnixListener::bind(&path).unwrap());
        assert!(refuses_connections(&path, Duration::from_millis(100)));
    }
}
