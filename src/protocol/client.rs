//! One connection to a pod, with a deadline on every step.
//!
//! The server writes its prelude (zero or more `alert`s, then exactly one `snapshot`) before
//! it reads anything, so [`Connection::open`] always drains it first: clients that wrote
//! first lost messages while the server blocked writing a large Snapshot nobody read.

use std::io::{self, ErrorKind, Write};
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
use crate::protocol::lines::LineBuffer;
use crate::protocol::wire::{Event, PodStatus};

/// An open conversation whose prelude has been read.
pub struct Connection {
    stream: UnixStream,
    lines: LineBuffer,
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

/// A non-blocking, close-on-exec Unix stream socket.
fn unix_socket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?)
}

/// `connect()` with a deadline. A Unix socket whose backlog is full makes a non-blocking
/// connect fail with EAGAIN, and a blocking one hang; podfs retries until the deadline.
pub fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    loop {
        let fd = unix_socket()?;
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

/// One non-blocking `connect()` attempt, for the watch reactor: `Ok(None)` when the
/// listener's backlog is full (try again shortly), the stream (left non-blocking) otherwise.
pub fn connect_nonblocking(path: &Path) -> io::Result<Option<UnixStream>> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd = unix_socket()?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Ok(Some(UnixStream::from(fd))),
        // A Unix socket never connects asynchronously, but be exact about it anyway.
        Err(Errno::EINPROGRESS) => {
            wait_writable(&fd, Instant::now() + Duration::from_millis(100))?;
            match socket::getsockopt(&fd, socket::sockopt::SocketError)? {
                0 => Ok(Some(UnixStream::from(fd))),
                err => Err(io::Error::from_raw_os_error(err)),
            }
        }
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(None),
        Err(e) => Err(e.into()),
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
    /// Connect and read the prelude up to and including the Snapshot, of which only the
    /// status word is decoded (blocking callers never need the history).
    pub fn open(
        path: &Path,
        connect_timeout: Duration,
        prelude_timeout: Duration,
        max_line: usize,
    ) -> Result<(Connection, PodStatus)> {
        let label = path.display().to_string();
        let stream = connect(path, connect_timeout)
            .map_err(|e| Error::Unreachable(format!("{label}: connect: {e}")))?;
        let mut conn = Connection {
            stream,
            lines: LineBuffer::new(max_line),
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
                    #[derive(serde::Deserialize)]
                    struct StatusOnly {
                        #[serde(default)]
                        status: Option<String>,
                    }
                    let s: StatusOnly = serde_json::from_str(event.raw_data())
                        .map_err(|e| Error::Protocol(format!("snapshot does not parse: {e}")))?;
                    return Ok((conn, PodStatus::from_wire(s.status.as_deref())));
                }
                "alert" => tracing::debug!(pod = %conn.label, alert = %event.raw_data(), "alert"),
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
            while let Some(line) = self.lines.next_line()? {
                let trimmed = line.trim_ascii();
                if !trimmed.is_empty() {
                    return Event::parse(trimmed).map(Some);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(format!("{}: read", self.label)));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| Error::io("set read timeout", e))?;
            match self.lines.read_from(&mut self.stream) {
                Ok(0) if self.lines.has_partial() => {
                    return Err(Error::Protocol(format!(
                        "{}: connection closed mid-line",
                        self.label
                    )))
                }
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                        return Err(Error::Timeout(format!("{}: read", self.label)))
                    }
                    ErrorKind::Interrupted => {}
                    ErrorKind::ConnectionReset => return Ok(None),
                    _ => return Err(Error::io(format!("{}: read", self.label), e)),
                },
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

    fn open(path: &Path) -> Result<(Connection, PodStatus)> {
        Connection::open(
            path,
            Duration::from_millis(500),
            Duration::from_millis(500),
            1 << 20,
        )
    }

    #[test]
    fn every_fixture_prelude_parses_after_alerts() {
        for rel in [
            "insomnia-5472/socket/child1-prelude.jsonl",
            "insomnia-5472/socket/parent-fresh-prelude.jsonl",
            "yoi-485918eb/socket/child2-prelude.jsonl",
            "yoi-485918eb/socket/parent-restored-prelude.jsonl",
        ] {
            let text = crate::test_fixtures::read(rel, "/h");
            let alert = br#"{"event":"alert","data":{"level":"warn","source":"pod","message":"m","timestamp_ms":1}}"#;
            let (_d, path) = serve(vec![alert.to_vec(), b"\n".to_vec(), text.into_bytes()]);
            let (_c, status) = open(&path).unwrap();
            assert_eq!(status, PodStatus::Idle, "{rel}");
        }
    }

    #[test]
    fn split_lines_are_reassembled() {
        let snap = br#"{"event":"snapshot","data":{"entries":[],"status":"paused"}}"#;
        let (a, b) = snap.split_at(10);
        let (_d, path) = serve(vec![a.to_vec(), b.to_vec(), b"\n".to_vec()]);
        let (_c, s) = open(&path).unwrap();
        assert_eq!(s, PodStatus::Paused);
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
        assert!(connect_nonblocking(&path).is_err());
        let (_d, live) = serve(vec![]);
        assert!(connect_nonblocking(&live).unwrap().is_some());
    }
}
