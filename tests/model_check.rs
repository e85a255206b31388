//! The cursor and watch state machines under a model checker: `shuttle` explores thread
//! interleavings of the very modules podfs runs (compiled here against shuttle's locks,
//! through this crate's `sync` module), and each property must hold in every one.
//!
//! * Two readers of `output` never both take the same text, while the child adds more.
//! * A reader waiting for a watch is answered exactly once, whether readiness, the reader
//!   or the waiter's deadline comes first.
//! * A `poll` registered while the content changes is never lost.

#![allow(dead_code)]

/// The locks the included modules use, backed by shuttle so it can interleave them.
mod sync {
    pub struct Mutex<T>(shuttle::sync::Mutex<T>);
    pub type MutexGuard<'a, T> = shuttle::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Mutex(shuttle::sync::Mutex::new(value))
        }
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0
                .lock()
                .expect("no test thread panics while holding a lock")
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Mutex::new(T::default())
        }
    }
}

// podfs's own modules, unchanged, resolved against the module tree of this crate.
#[path = "../src/cursors.rs"]
mod cursors;
#[path = "../src/error.rs"]
mod error;
#[path = "../src/generation.rs"]
mod generation;
#[path = "../src/protocol/history.rs"]
pub mod protocol_history;
#[path = "../src/protocol/wire.rs"]
pub mod protocol_wire;
#[path = "../src/watch/live.rs"]
pub mod watch_live;
mod protocol {
    pub use super::protocol_history as history;
    pub use super::protocol_wire as wire;
}
mod watch {
    pub use super::watch_live as live;
}
/// The fixtures the included modules' own unit tests read.
mod test_fixtures {
    use std::path::{Path, PathBuf};
    pub fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }
    pub fn read(rel: &str, home: &str) -> String {
        std::fs::read_to_string(root().join(rel))
            .unwrap()
            .replace("@HOME@", home)
    }
}

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cursors::Cursors;
use protocol::history::{Changes, History, Snapshot};
use protocol::wire::PodStatus;
use shuttle::thread;
use sync::Mutex;
use watch::live::{Callback, LiveState, Topic};

/// Enough schedules to cover the small state spaces below many times over.
const ITERATIONS: usize = 2000;

#[test]
fn two_output_readers_never_take_the_same_text() {
    let property = || {
        let cursors: Arc<Cursors<&'static str>> = Arc::new(Cursors::default());
        // The child's history length, growing while the readers read.
        let history = Arc::new(Mutex::new(3u64));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let reader = || {
            let (cursors, history, taken) = (cursors.clone(), history.clone(), taken.clone());
            thread::spawn(move || {
                for _ in 0..2 {
                    // take_output: the cursor locked, then the history read, then advanced.
                    let range = cursors.update(&"child", 0, |cursor| {
                        let len = *history.lock();
                        let range = *cursor..len;
                        *cursor = len;
                        range
                    });
                    if !range.is_empty() {
                        taken.lock().push(range);
                    }
                }
            })
        };
        let grower = {
            let history = history.clone();
            thread::spawn(move || {
                *history.lock() += 2;
            })
        };
        let (a, b) = (reader(), reader());
        a.join().unwrap();
        b.join().unwrap();
        grower.join().unwrap();
        let mut ranges = taken.lock().clone();
        ranges.sort_by_key(|r| r.start);
        let mut next = 0;
        for r in &ranges {
            assert_eq!(r.start, next, "text taken twice or skipped: {ranges:?}");
            next = r.end;
        }
        assert_eq!(next, cursors.get(&"child", 0));
    };
    shuttle::check_random(property, ITERATIONS);
    shuttle::check_pct(property, ITERATIONS, 3);
}

fn snapshot() -> Snapshot {
    let mut history = History::default();
    history.push_entries(1);
    history.push_message(&["hello"]);
    Snapshot {
        history,
        status: PodStatus::Idle,
    }
}

fn counting(counter: &Arc<AtomicUsize>) -> Callback {
    let counter = counter.clone();
    Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
}

#[test]
fn a_waiting_reader_is_answered_exactly_once() {
    let property = || {
        let state = Arc::new(Mutex::new(LiveState::new(Instant::now())));
        let answered = Arc::new(AtomicUsize::new(0));
        let id = Arc::new(Mutex::new(None));
        // The reader: as Watch::when_ready does (callbacks run outside the lock).
        let reader = {
            let (state, answered, id) = (state.clone(), answered.clone(), id.clone());
            thread::spawn(move || {
                let added = state.lock().add_waiter(counting(&answered));
                match added {
                    Err(now) => now(),
                    Ok(waiter) => *id.lock() = Some(waiter),
                }
            })
        };
        // The reactor: the Snapshot arrives.
        let reactor = {
            let state = state.clone();
            thread::spawn(move || {
                let due = state.lock().snapshot(snapshot());
                for f in due {
                    f();
                }
            })
        };
        // The waiter's deadline.
        let timer = {
            let (state, id) = (state.clone(), id.clone());
            thread::spawn(move || {
                let waiter = *id.lock();
                if let Some(waiter) = waiter {
                    let expired = state.lock().expire_waiter(waiter);
                    if let Some(f) = expired {
                        f();
                    }
                }
            })
        };
        reader.join().unwrap();
        reactor.join().unwrap();
        timer.join().unwrap();
        assert_eq!(answered.load(Ordering::SeqCst), 1);
    };
    shuttle::check_random(property, ITERATIONS);
    shuttle::check_pct(property, ITERATIONS, 3);
}

#[test]
fn a_poll_registered_during_a_change_is_never_lost() {
    let property = || {
        let state = Arc::new(Mutex::new(LiveState::new(Instant::now())));
        state.lock().snapshot(snapshot());
        let woken = Arc::new(AtomicUsize::new(0));
        // The poller saw version `seen` when it read, then registers (as fs::poll does).
        let seen = state.lock().version(Topic::Status);
        let poller = {
            let (state, woken) = (state.clone(), woken.clone());
            thread::spawn(move || {
                let ready_now = state
                    .lock()
                    .add_poller(Topic::Status, seen, counting(&woken));
                if let Some(now) = ready_now {
                    now();
                }
            })
        };
        // The child changes status meanwhile.
        let reactor = {
            let state = state.clone();
            thread::spawn(move || {
                let changes = Changes {
                    status: Some(PodStatus::Running),
                    ..Changes::default()
                };
                let due = state.lock().changed(&changes);
                for f in due {
                    f();
                }
            })
        };
        poller.join().unwrap();
        reactor.join().unwrap();
        // The status moved past what the poller saw: it must have been woken, once.
        assert!(state.lock().version(Topic::Status) > seen);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
    };
    shuttle::check_random(property, ITERATIONS);
    shuttle::check_pct(property, ITERATIONS, 3);
}

#[test]
fn cursors_of_a_new_incarnation_start_at_zero_under_concurrency() {
    let property = || {
        let cursors: Arc<Cursors<&'static str>> = Arc::new(Cursors::default());
        cursors.set(&"c", 0, 9);
        let a = {
            let cursors = cursors.clone();
            thread::spawn(move || cursors.update(&"c", 1, |c| *c))
        };
        let b = {
            let cursors = cursors.clone();
            thread::spawn(move || cursors.update(&"c", 0, |c| *c))
        };
        let seen_new = a.join().unwrap();
        let seen_old = b.join().unwrap();
        // The new incarnation never sees the old one's value; the old one sees 9 unless
        // the new one replaced it first (then it starts over at 0 too).
        assert_eq!(seen_new, 0);
        assert!(seen_old == 9 || seen_old == 0);
    };
    shuttle::check_random(property, ITERATIONS);
}
