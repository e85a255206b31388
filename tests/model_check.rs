//! podfs's shared state machines under a model checker: `shuttle` explores thread
//! interleavings of the very modules podfs runs (compiled here against shuttle's locks and
//! threads, through this crate's `sync` module), and each property must hold in every one.
//!
//! * `output`'s take ([`fs::take::take`]): two readers never both take the same text
//!   while the child adds more, and the memory budget holds exactly what they took.
//! * The live state ([`watch::live`]): a parked operation is answered exactly once,
//!   whether readiness, its deadline or a signal comes first; a poller registered while
//!   the content changes is never missed, and is notified again on every later change;
//!   one message reserves the child, so of two writers exactly one is accepted and
//!   `status` says `running` whenever `input` would refuse.
//! * The cursor gate ([`fs::gate`]): a reader parked behind a closed value is answered
//!   exactly once, by the release or by its expiry.
//! * The pool ([`pool`]): every job runs exactly once, on no more threads than its bound.
//!
//! The included modules' own unit tests are not run here: only the standard harness
//! collects `#[test]` functions, and this binary has its own. They run in the library's
//! unit tests.

#[macro_use]
mod common;

/// The locks and threads the included modules use, backed by shuttle so it can interleave
/// them.
mod sync {
    pub use shuttle::thread;

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

    #[derive(Default)]
    pub struct Condvar(shuttle::sync::Condvar);

    impl Condvar {
        pub fn new() -> Self {
            Condvar(shuttle::sync::Condvar::new())
        }
        pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(guard).expect("not poisoned")
        }
        pub fn notify_one(&self) {
            self.0.notify_one();
        }
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

// podfs's own modules, unchanged, resolved against the module tree of this crate. What
// of them the properties below do not use is dead code here, and so is the rest of their
// unit-test modules once the `#[test]` functions are left out: both are allowed to be.
#[path = "../src/cursors.rs"]
#[allow(dead_code, unused_imports)]
mod cursors;
#[path = "../src/error.rs"]
#[allow(dead_code, unused_imports)]
mod error;
#[path = "../src/fs/body.rs"]
#[allow(dead_code, unused_imports)]
pub mod fs_body;
#[path = "../src/fs/gate.rs"]
#[allow(dead_code, unused_imports)]
pub mod fs_gate;
#[path = "../src/fs/files/output/take.rs"]
#[allow(dead_code, unused_imports)]
pub mod fs_output_take;
#[path = "../src/generation.rs"]
#[allow(dead_code, unused_imports)]
mod generation;
#[path = "../src/pool.rs"]
#[allow(dead_code, unused_imports)]
mod pool;
#[path = "../src/protocol/history.rs"]
#[allow(dead_code, unused_imports)]
pub mod protocol_history;
#[path = "../src/protocol/wire.rs"]
#[allow(dead_code, unused_imports)]
pub mod protocol_wire;
#[path = "../src/watch/budget.rs"]
#[allow(dead_code, unused_imports)]
pub mod watch_budget;
#[path = "../src/watch/leases.rs"]
#[allow(dead_code, unused_imports)]
pub mod watch_leases;
#[path = "../src/watch/live.rs"]
#[allow(dead_code, unused_imports)]
pub mod watch_live;
#[path = "../src/watch/pages.rs"]
#[allow(dead_code, unused_imports)]
pub mod watch_pages;
#[path = "../src/watch/share.rs"]
#[allow(dead_code, unused_imports)]
pub mod watch_share;
mod protocol {
    pub use super::protocol_history as history;
    pub use super::protocol_wire as wire;
}
mod watch {
    pub use super::watch_budget as budget;
    pub use super::watch_leases as leases;
    pub use super::watch_live as live;
    pub use super::watch_pages as pages;
    pub use super::watch_share as share;
}
mod fs {
    pub use super::fs_body as body;
    pub use super::fs_gate as gate;
    pub use super::fs_output_take as take;
}
/// The fixtures the included modules' own unit tests read.
#[allow(dead_code)]
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
    pub fn tempdir() -> tempfile::TempDir {
        podfs::scratch::tempdir("podfs-test-").unwrap()
    }
}

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::harness::{Need, Suite};
use cursors::Cursors;
use fs::gate::Gates;
use fs::take::{take, Take};
use protocol::history::{Changes, History, Snapshot};
use protocol::wire::PodStatus;
use shuttle::thread;
use sync::Mutex;
use watch::budget::Budget;
use watch::live::{Due, Intake, LiveState, Notify, Topic, Waiter, Wake};

fn main() -> std::process::ExitCode {
    Suite::new()
        .add(
            &Need::Met,
            tests![
                two_output_readers_never_take_the_same_text_and_the_budget_holds_what_they_took,
                a_taken_snapshot_reads_what_it_took_across_a_rewrite,
                a_take_that_does_not_fit_leaves_the_cursor_and_the_budget_alone,
                a_parked_operation_is_answered_exactly_once,
                a_poller_is_never_missed_and_is_notified_on_every_later_change,
                one_message_reserves_the_child_and_status_agrees_with_input,
                a_reader_behind_a_closed_cursor_value_is_answered_once,
                gate_waiters_run_at_the_last_release_or_at_their_expiry,
                every_pool_job_runs_once_on_bounded_threads,
                cursors_of_a_new_incarnation_start_at_zero_under_concurrency,
                a_leased_watch_is_never_ended_and_an_ended_one_is_never_leased,
            ],
        )
        .run()
}

/// Enough schedules to cover the small state spaces below many times over.
const ITERATIONS: usize = 2000;

fn check(property: impl Fn() + Send + Sync + 'static) {
    let property = Arc::new(property);
    let p = property.clone();
    shuttle::check_random(move || p(), ITERATIONS);
    shuttle::check_pct(move || property(), ITERATIONS, 3);
}

/// A sequence on one thread, run inside shuttle (its locks work only there).
fn sequence(f: impl Fn() + Send + Sync + 'static) {
    shuttle::check_random(f, 1);
}

fn run(due: Vec<Due>) {
    for d in due {
        d.run();
    }
}

/// A history of `n` entries, each one assistant message `"<i>"`.
fn history(n: u64) -> History {
    let mut h = History::default();
    for i in 0..n {
        h.push_message(&[i.to_string()]);
    }
    h
}

fn snapshot_of(n: u64, status: PodStatus) -> Snapshot {
    Snapshot {
        history: history(n),
        status,
    }
}

fn counting(counter: &Arc<AtomicUsize>) -> Waiter {
    let counter = counter.clone();
    Box::new(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    })
}

fn notifying(counter: &Arc<AtomicUsize>) -> Notify {
    let counter = counter.clone();
    Arc::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
}

fn two_output_readers_never_take_the_same_text_and_the_budget_holds_what_they_took() {
    check(|| {
        let cursors: Arc<Cursors<&'static str>> = Arc::new(Cursors::default());
        let state = Arc::new(Mutex::new(LiveState::new(Instant::now())));
        run(state.lock().snapshot(snapshot_of(3, PodStatus::Idle)));
        let budget = Arc::new(Budget::new(1 << 20));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let reader = || {
            let (cursors, state, budget, taken) = (
                cursors.clone(),
                state.clone(),
                budget.clone(),
                taken.clone(),
            );
            thread::spawn(move || {
                for _ in 0..2 {
                    match take(&cursors, &"child", 0, &state, &budget) {
                        Take::Taken {
                            share,
                            len,
                            before,
                            after,
                        } => {
                            let bytes = share
                                .with_text(state.lock().history().map(|h| h.text()), fs_body::text);
                            assert_eq!(bytes.len(), len);
                            if before != after {
                                taken.lock().push((before..after, bytes));
                            } else {
                                assert!(bytes.is_empty());
                            }
                        }
                        Take::NeedsRoom(n) => panic!("{n} bytes do not fit a 1 MiB budget"),
                    }
                }
            })
        };
        // The reactor: the child's history grows by a Snapshot with two more entries.
        let grower = {
            let state = state.clone();
            thread::spawn(move || {
                let due = state.lock().snapshot(snapshot_of(5, PodStatus::Idle));
                run(due);
            })
        };
        let (a, b) = (reader(), reader());
        a.join().unwrap();
        b.join().unwrap();
        grower.join().unwrap();
        let mut got = taken.lock().clone();
        got.sort_by_key(|(r, _)| r.start);
        let mut next = 0;
        let mut held = 0;
        for (range, bytes) in &got {
            assert_eq!(range.start, next, "text taken twice or skipped: {got:?}");
            let expected = state.lock().history().unwrap().text_from(range.start).len();
            assert!(bytes.len() <= expected + 1);
            held += bytes.len();
            next = range.end;
        }
        assert_eq!(next, cursors.get(&"child", 0));
        assert_eq!(
            budget.used(),
            held,
            "the budget holds exactly the text taken"
        );
    });
}

/// `output`'s snapshot is a range of the live text: a Snapshot that replaces the text
/// (here with a shorter history) at any moment of a take and its reads leaves what was
/// taken readable, the same at every read, and as long as was charged.
fn a_taken_snapshot_reads_what_it_took_across_a_rewrite() {
    check(|| {
        let cursors: Arc<Cursors<&'static str>> = Arc::new(Cursors::default());
        let state = Arc::new(Mutex::new(LiveState::new(Instant::now())));
        run(state.lock().snapshot(snapshot_of(3, PodStatus::Idle)));
        let long = fs_body::text(state.lock().history().unwrap().text());
        let short = fs_body::text(history(1).text());
        let budget = Arc::new(Budget::new(1 << 20));
        let reader = {
            let (state, budget) = (state.clone(), budget.clone());
            thread::spawn(move || {
                let Take::Taken { share, len, .. } = take(&cursors, &"c", 0, &state, &budget)
                else {
                    panic!("a 1 MiB budget holds it");
                };
                let read =
                    || share.with_text(state.lock().history().map(|h| h.text()), fs_body::text);
                let first = read();
                thread::yield_now();
                (first, read(), len)
            })
        };
        let rewriter = {
            let state = state.clone();
            thread::spawn(move || run(state.lock().snapshot(snapshot_of(1, PodStatus::Idle))))
        };
        let (first, second, len) = reader.join().unwrap();
        rewriter.join().unwrap();
        assert!(first == long || first == short, "{first:?}");
        assert_eq!(first, second, "a snapshot never changes");
        assert_eq!(first.len(), len);
        assert_eq!(budget.used(), len);
    });
}

fn a_take_that_does_not_fit_leaves_the_cursor_and_the_budget_alone() {
    check(|| {
        let cursors: Arc<Cursors<&'static str>> = Arc::new(Cursors::default());
        let state = Arc::new(Mutex::new(LiveState::new(Instant::now())));
        run(state.lock().snapshot(snapshot_of(4, PodStatus::Idle)));
        // Room for one reader's text only ("0\n\n1\n\n2\n\n3\n" is 11 bytes).
        let budget = Arc::new(Budget::new(12));
        let outcomes: Vec<_> = (0..2)
            .map(|_| {
                let (cursors, state, budget) = (cursors.clone(), state.clone(), budget.clone());
                thread::spawn(move || take(&cursors, &"c", 0, &state, &budget))
            })
            .collect();
        let outcomes: Vec<Take> = outcomes.into_iter().map(|t| t.join().unwrap()).collect();
        let fits = outcomes
            .iter()
            .filter(|t| matches!(t, Take::Taken { len, .. } if *len > 0))
            .count();
        assert_eq!(fits, 1, "{outcomes:?}");
        assert_eq!(cursors.get(&"c", 0), 4);
        assert_eq!(budget.used(), 11);
    });
}

fn a_parked_operation_is_answered_exactly_once() {
    check(|| {
        let state = Arc::new(Mutex::new(LiveState::new(Instant::now())));
        let answered = Arc::new(AtomicUsize::new(0));
        let interrupted = Arc::new(AtomicUsize::new(0));
        let id = Arc::new(Mutex::new(None));
        // The operation parks, as Watch::when_ready does (wake-ups run outside the lock).
        let reader = {
            let (state, answered, interrupted, id) = (
                state.clone(),
                answered.clone(),
                interrupted.clone(),
                id.clone(),
            );
            thread::spawn(move || {
                let waiter: Waiter = Box::new(move |why| {
                    answered.fetch_add(1, Ordering::SeqCst);
                    if why == Wake::Interrupted {
                        interrupted.fetch_add(1, Ordering::SeqCst);
                    }
                });
                let added = state.lock().add_waiter(watch_live::Until::Ready, waiter);
                match added {
                    Err(now) => now(Wake::Ready),
                    Ok(waiter) => *id.lock() = Some(waiter),
                }
            })
        };
        // The reactor: the Snapshot arrives.
        let reactor = {
            let state = state.clone();
            thread::spawn(move || {
                let due = state.lock().snapshot(snapshot_of(1, PodStatus::Idle));
                run(due);
            })
        };
        // The deadline, and the caller's signal.
        let expiries: Vec<_> = [Wake::Expired, Wake::Interrupted]
            .into_iter()
            .map(|why| {
                let (state, id) = (state.clone(), id.clone());
                thread::spawn(move || {
                    let waiter = *id.lock();
                    if let Some(waiter) = waiter {
                        let due = state.lock().expire_waiter(waiter, why);
                        if let Some(d) = due {
                            d.run();
                        }
                    }
                })
            })
            .collect();
        reader.join().unwrap();
        reactor.join().unwrap();
        for e in expiries {
            e.join().unwrap();
        }
        assert_eq!(answered.load(Ordering::SeqCst), 1);
        assert!(interrupted.load(Ordering::SeqCst) <= 1);
    });
}

fn a_poller_is_never_missed_and_is_notified_on_every_later_change() {
    check(|| {
        let state = Arc::new(Mutex::new(LiveState::new(Instant::now())));
        run(state.lock().snapshot(snapshot_of(1, PodStatus::Idle)));
        let woken = Arc::new(AtomicUsize::new(0));
        let readable = Arc::new(AtomicUsize::new(0));
        // The descriptor saw version `seen` when it read, then polls (as fs::poll does),
        // twice: an edge-triggered epoll re-arms the same file.
        let seen = state.lock().version(Topic::Status);
        let poller = {
            let (state, woken, readable) = (state.clone(), woken.clone(), readable.clone());
            thread::spawn(move || {
                for _ in 0..2 {
                    let ready = state
                        .lock()
                        .set_poller(1, Topic::Status, seen, notifying(&woken));
                    if ready {
                        readable.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        // The child changes status twice meanwhile.
        let reactor = {
            let state = state.clone();
            thread::spawn(move || {
                for status in [PodStatus::Running, PodStatus::Idle] {
                    let changes = Changes {
                        status: Some(status),
                        ..Changes::default()
                    };
                    let due = state.lock().changed(&changes);
                    run(due);
                }
            })
        };
        poller.join().unwrap();
        reactor.join().unwrap();
        let s = state.lock();
        assert_eq!(s.pollers(), 1, "one registration per open file");
        assert_eq!(s.version(Topic::Status), seen + 2);
        drop(s);
        let w = woken.load(Ordering::SeqCst);
        let r = readable.load(Ordering::SeqCst);
        // Each change after the first registration notified; each poll after a change
        // said readable. No change went unseen by both.
        assert!(w + r >= 2, "woken {w}, readable {r}");
        // A third change after both polls wakes it again.
        let due = state.lock().changed(&Changes {
            status: Some(PodStatus::Running),
            ..Changes::default()
        });
        run(due);
        assert_eq!(woken.load(Ordering::SeqCst), w + 1);
    });
}

/// A reservation's hold bound, longer than any schedule runs.
const HOLD: std::time::Duration = std::time::Duration::from_secs(3600);

fn one_message_reserves_the_child_and_status_agrees_with_input() {
    check(|| {
        let state = Arc::new(Mutex::new(LiveState::new(Instant::now())));
        run(state.lock().snapshot(snapshot_of(1, PodStatus::Idle)));
        let accepted = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|fh| {
                let (state, accepted) = (state.clone(), accepted.clone());
                thread::spawn(move || {
                    let intake = state.lock().intake(fh, Instant::now(), HOLD).0;
                    {
                        let s = state.lock();
                        // Whoever holds the reservation, status says running.
                        assert_eq!(s.status_word(), PodStatus::Running);
                    }
                    match intake {
                        Intake::Takes => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            // The last close hands it over; the child confirms.
                            state.lock().hand_over(fh);
                            assert_eq!(
                                state.lock().intake(3, Instant::now(), HOLD).0,
                                Intake::Busy
                            );
                            let due = state.lock().run_accepted();
                            run(due);
                        }
                        Intake::Busy => {}
                        other => panic!("{other:?}"),
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "exactly one message accepted"
        );
        assert_eq!(state.lock().status_word(), PodStatus::Running);
    });
}

fn a_reader_behind_a_closed_cursor_value_is_answered_once() {
    check(|| {
        let gates: Arc<Gates<&'static str>> = Arc::default();
        gates.hold(&"c");
        let answered = Arc::new(AtomicUsize::new(0));
        let expire = Arc::new(Mutex::new(None));
        let reader = {
            let (gates, answered, expire) = (gates.clone(), answered.clone(), expire.clone());
            thread::spawn(move || {
                *expire.lock() = gates.park(&"c", counting(&answered));
            })
        };
        let release = {
            let gates = gates.clone();
            thread::spawn(move || gates.release(&"c"))
        };
        let timer = {
            let expire = expire.clone();
            thread::spawn(move || {
                let e = expire.lock().take();
                if let Some(e) = e {
                    e();
                }
            })
        };
        reader.join().unwrap();
        release.join().unwrap();
        timer.join().unwrap();
        let e = expire.lock().take();
        if let Some(e) = e {
            e();
        }
        assert_eq!(answered.load(Ordering::SeqCst), 1);
        assert!(!gates.is_held(&"c"));
    });
}

fn gate_waiters_run_at_the_last_release_or_at_their_expiry() {
    sequence(|| {
        let gates: Arc<Gates<&str>> = Arc::default();
        let ran = Arc::new(AtomicUsize::new(0));
        assert!(
            gates.park(&"c", counting(&ran)).is_none(),
            "nothing held: at once"
        );
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        gates.hold(&"c");
        gates.hold(&"c");
        let expire = gates.park(&"c", counting(&ran)).unwrap();
        gates.release(&"c");
        assert_eq!(
            ran.load(Ordering::SeqCst),
            1,
            "one value is still on its way"
        );
        gates.release(&"c");
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        expire();
        assert_eq!(ran.load(Ordering::SeqCst), 2, "answered once");
        gates.hold(&"c");
        let expire = gates.park(&"c", counting(&ran)).unwrap();
        expire();
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        gates.release(&"c");
        assert_eq!(ran.load(Ordering::SeqCst), 3);
    });
}

fn every_pool_job_runs_once_on_bounded_threads() {
    check(|| {
        let pool = pool::Pool::new(2);
        let ran = Arc::new(AtomicUsize::new(0));
        let submitters: Vec<_> = (0..2)
            .map(|_| {
                let (pool, ran) = (pool.clone(), ran.clone());
                thread::spawn(move || {
                    for _ in 0..2 {
                        let ran = ran.clone();
                        pool.submit(move || {
                            ran.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                })
            })
            .collect();
        for s in submitters {
            s.join().unwrap();
        }
        assert!(pool.threads() <= 2);
        // Closing lets the threads finish what is queued and exit.
        pool.close();
        while ran.load(Ordering::SeqCst) < 4 {
            thread::yield_now();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 4);
    });
}

fn cursors_of_a_new_incarnation_start_at_zero_under_concurrency() {
    check(|| {
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
    });
}

/// A watch as the map of watches sees it.
struct Entry {
    state: Mutex<LiveState>,
}

impl watch::leases::Leasable for Entry {
    fn live(&self) -> &Mutex<LiveState> {
        &self.state
    }
}

/// Eviction and the end of idle watches race a reader taking a lease (`watch::leases`):
/// in every interleaving, a reader holding a lease holds a watch that is still in the
/// map, and an ended watch was unused when it ended (a lease taken afterwards starts a
/// new one).
fn a_leased_watch_is_never_ended_and_an_ended_one_is_never_leased() {
    use watch::leases::Leases;
    check(|| {
        let map: Arc<Leases<u32, Entry>> = Arc::new(Leases::default());
        let fresh = || Entry {
            state: Mutex::new(LiveState::new(Instant::now())),
        };
        // A watch someone looked at once: in the map, unused.
        drop(map.lease(&1, fresh).0);
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let map = map.clone();
                thread::spawn(move || {
                    let (lease, _) = map.lease(&1, fresh);
                    let in_map = map.entries().iter().any(|e| Arc::ptr_eq(e, lease.entry()));
                    assert!(in_map, "a lease on a watch that was ended");
                    assert!(!lease.state.lock().is_idle(), "a leased watch looks unused");
                })
            })
            .collect();
        let sweeper = {
            let map = map.clone();
            thread::spawn(move || map.end(|unused| unused.into_iter().map(|u| u.key).collect()))
        };
        for r in readers {
            r.join().unwrap();
        }
        for ended in sweeper.join().unwrap() {
            assert!(ended.state.lock().is_idle(), "a watch ended while in use");
        }
    });
}
