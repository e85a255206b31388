//! Live feeds of a child's assistant text, for `log` (so that `tail -f log` follows it).
//!
//! One follower thread per child socket while any `log` handle is open. It keeps a
//! connection to the child and takes a fresh Snapshot whenever an event says the history
//! changed (the runtime sends no log entries on the socket during a run).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::error::Error;
use crate::protocol::client::Connection;
use crate::protocol::history::{self, as_file_text};
use crate::protocol::wire::{Snapshot, Want};
use crate::protocol::Timeouts;

/// Events after which the history has (or may have) new entries.
const REFRESH_ON: &[&str] = &[
    "run_end",
    "turn_end",
    "status",
    "segment_rotated",
    "system_item",
    "compact_done",
    "rewind_applied",
];
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct LogText {
    pub text: Arc<String>,
    pub mtime: SystemTime,
}

pub struct Feed {
    state: Mutex<LogText>,
    readers: AtomicUsize,
}

impl Feed {
    pub fn current(&self) -> LogText {
        self.state.lock().clone()
    }

    fn publish(&self, snapshot: &Snapshot) {
        let extraction = history::extract(&snapshot.entries);
        if extraction.malformed > 0 {
            warn!(
                malformed = extraction.malformed,
                "history entries did not parse"
            );
        }
        let text = as_file_text(extraction.text);
        let mut state = self.state.lock();
        if *state.text != text {
            state.text = Arc::new(text);
            state.mtime = SystemTime::now();
        }
    }
}

#[derive(Default)]
pub struct Followers {
    feeds: Mutex<HashMap<PathBuf, Arc<Feed>>>,
}

impl Followers {
    /// Start (or join) the feed of `socket`, with its text filled from `first` if new.
    pub fn subscribe(&self, socket: &Path, first: Option<&Snapshot>, t: &Timeouts) -> Arc<Feed> {
        let mut feeds = self.feeds.lock();
        if let Some(feed) = feeds.get(socket) {
            feed.readers.fetch_add(1, Ordering::SeqCst);
            if let Some(s) = first {
                feed.publish(s);
            }
            return feed.clone();
        }
        let feed = Arc::new(Feed {
            state: Mutex::new(LogText {
                text: Arc::new(String::new()),
                mtime: SystemTime::now(),
            }),
            readers: AtomicUsize::new(1),
        });
        if let Some(s) = first {
            feed.publish(s);
        }
        feeds.insert(socket.to_path_buf(), feed.clone());
        let (socket, t, f) = (socket.to_path_buf(), t.clone(), feed.clone());
        let spawned = thread::Builder::new()
            .name("podfs-follow".into())
            .spawn(move || follow(&socket, &t, &f));
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start log follower; log will not grow");
        }
        feed
    }

    pub fn unsubscribe(&self, socket: &Path, feed: &Arc<Feed>) {
        if feed.readers.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut feeds = self.feeds.lock();
            if feeds.get(socket).is_some_and(|f| Arc::ptr_eq(f, feed)) {
                feeds.remove(socket);
            }
        }
    }

    /// The feed's text if one is running (for `stat log`).
    pub fn peek(&self, socket: &Path) -> Option<LogText> {
        self.feeds.lock().get(socket).map(|f| f.current())
    }
}

fn follow(socket: &Path, t: &Timeouts, feed: &Feed) {
    debug!(socket = %socket.display(), "log follower started");
    while feed.readers.load(Ordering::SeqCst) > 0 {
        let (mut conn, snapshot) =
            match Connection::open(socket, t.connect, t.prelude, t.max_line, Want::History) {
                Ok(open) => open,
                Err(_) => {
                    thread::sleep(RETRY);
                    continue;
                }
            };
        feed.publish(&snapshot);
        loop {
            if feed.readers.load(Ordering::SeqCst) == 0 {
                break;
            }
            match conn.next_event(Instant::now() + RETRY) {
                Ok(Some(e)) if REFRESH_ON.contains(&e.name.as_str()) => break,
                Ok(Some(_)) | Err(Error::Timeout(_)) => {}
                Ok(None) | Err(_) => {
                    thread::sleep(RETRY);
                    break;
                }
            }
        }
    }
    debug!(socket = %socket.display(), "log follower stopped");
}
