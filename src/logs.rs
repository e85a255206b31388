//! Where podfs's log goes: standard error; a file (`--log-file`, or `-o log_file=PATH` for
//! mounts made by mount(8) and fstab, which pass only `-o` options); or, for a mount that
//! went to the background without a log file, the system log (`/dev/log`: syslog, and the
//! journal on systems with systemd), since its standard error is gone.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The system log's socket.
const SYSLOG: &str = "/dev/log";
/// syslog's "daemon" facility.
const FACILITY_DAEMON: u8 = 3;

static TO_SYSTEM_LOG: AtomicBool = AtomicBool::new(false);

/// From now on, lines that would go to standard error go to the system log (a mount that
/// has gone to the background, whose standard error is about to be closed).
pub fn to_system_log() {
    TO_SYSTEM_LOG.store(true, Ordering::SeqCst);
}

/// Install the log: `filter` (RUST_LOG wins), into `file` when given. Returns an error
/// message when the file cannot be opened.
pub fn init(level: &str, file: Option<&Path>) -> Result<(), String> {
    // fuser warns when its own unmount finds the mount already gone, which is how podfs
    // ends every session; keep that out of the log.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},fuser::mnt=error")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let file = match file {
        Some(path) => Some(Arc::new(parking_lot::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?,
        ))),
        None => None,
    };
    use std::io::IsTerminal;
    // Colour only for a terminal: a file or the system log gets plain text.
    let ansi = file.is_none() && std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(Sink { file })
        .init();
    Ok(())
}

/// Chooses, per line, where it goes.
struct Sink {
    file: Option<Arc<parking_lot::Mutex<std::fs::File>>>,
}

impl Sink {
    fn line(&self, severity: u8) -> Line {
        let to = match &self.file {
            Some(f) => To::File(f.clone()),
            None if TO_SYSTEM_LOG.load(Ordering::Relaxed) => {
                To::System(PathBuf::from(SYSLOG), severity)
            }
            None => To::Stderr,
        };
        Line {
            to,
            buf: Vec::new(),
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        self.line(severity(Level::INFO))
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        self.line(severity(*meta.level()))
    }
}

fn severity(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

enum To {
    Stderr,
    File(Arc<parking_lot::Mutex<std::fs::File>>),
    /// The system log's socket, and the severity of this line.
    System(PathBuf, u8),
}

/// One log line, written where it goes when complete.
pub struct Line {
    to: To,
    buf: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.buf);
        let _ = match &self.to {
            To::Stderr => io::stderr().write_all(&line),
            To::File(f) => f.lock().write_all(&line),
            To::System(socket, severity) => send_to_system_log(socket, *severity, &line),
        };
    }
}

/// One syslog datagram: `<PRI>podfs[PID]: message`. Lost silently when nothing listens
/// (there is nowhere else left to say so).
fn send_to_system_log(socket: &Path, severity: u8, line: &[u8]) -> io::Result<()> {
    let pri = FACILITY_DAEMON * 8 + severity;
    let mut msg = format!("<{pri}>podfs[{}]: ", std::process::id()).into_bytes();
    msg.extend_from_slice(line.strip_suffix(b"\n").unwrap_or(line));
    let sock = UnixDatagram::unbound()?;
    sock.send_to(&msg, socket).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_for_the_system_log_is_one_datagram_with_its_priority() {
        let dir = crate::test_fixtures::tempdir();
        let path = dir.path().join("log");
        let listener = UnixDatagram::bind(&path).unwrap();
        {
            let mut line = Line {
                to: To::System(path.clone(), severity(Level::WARN)),
                buf: Vec::new(),
            };
            line.write_all(b"WARN podfs: something\n").unwrap();
        }
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert_eq!(
            got,
            format!("<28>podfs[{}]: WARN podfs: something", std::process::id())
        );
    }
}
