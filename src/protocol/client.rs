//! One conversation with a pod over a connected stream, with a deadline on every step.
//! (Connecting is the pod client's: it alone knows which sockets podfs may open.)
//!
//! The server writes its prelude (zero or more `alert`s, then exactly one `snapshot`) before
//! it reads anything, so [`Connection::open`] always drains it first: clients that wrote
//! first lost messages while the server blocked writing a large Snapshot nobody read.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

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

impl Connection {
    /// Read the prelude of a freshly connected `stream` up to and including the Snapshot,
    /// of which only the status word is decoded (blocking callers never need the history).
    pub fn open(
        stream: UnixStream,
        label: String,
        prelude_timeout: Duration,
        max_line: usize,
    ) -> Result<(Connection, PodStatus)> {
        stream
            .set_nonblocking(false)
            .map_err(|e| Error::io("make a pod connection blocking", e))?;
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
            match &*event.name {
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
                "alert" => tracing::debug!(alert = %event.raw_data(), "alert"),
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
    pub fn next_event(&mut self, deadline: Instant) -> Result<Option<Event<'_>>> {
        let line = loop {
            if let Some(line) = self.next_nonblank()? {
                break line;
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
        };
        Event::parse(self.lines.slice(line).trim_ascii()).map(Some)
    }

    /// The next line that is not blank, if one is complete.
    fn next_nonblank(&mut self) -> Result<Option<std::ops::Range<usize>>> {
        while let Some(line) = self.lines.next_line()? {
            if !self.lines.slice(line.clone()).trim_ascii().is_empty() {
                return Ok(Some(line));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::path::Path;
    use std::thread;

    fn serve(lines: Vec<Vec<u8>>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = crate::test_fixtures::tempdir();
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

    fn open_for(path: &Path, prelude: Duration) -> Result<(Connection, PodStatus)> {
        let stream = UnixStream::connect(path).unwrap();
        Connection::open(stream, path.display().to_string(), prelude, 1 << 20)
    }

    fn open(path: &Path) -> Result<(Connection, PodStatus)> {
        open_for(path, Duration::from_millis(500))
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
        let err = open_for(&path, Duration::from_secs(2)).err().unwrap();
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
}
