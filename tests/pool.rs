//! The worker pool with real threads: bounded, queueing, and proof against panicking jobs.
//! (Its interleavings are explored in `tests/model_check.rs`.)

#[macro_use]
mod common;

use std::sync::Arc;

use parking_lot::Mutex;
use podfs::pool::Pool;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::harness::{Need, Suite};

fn main() -> std::process::ExitCode {
    Suite::new()
        .add(
            &Need::Met,
            tests![
                a_busy_pool_queues_instead_of_growing,
                panicking_jobs_never_use_up_the_threads,
            ],
        )
        .run()
}

fn a_busy_pool_queues_instead_of_growing() {
    let pool = Pool::new(2);
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let (rx, done) = (release_rx.clone(), done.clone());
        pool.submit(move || {
            let _ = rx.lock().recv_timeout(Duration::from_secs(10));
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    assert_eq!(pool.threads(), 2, "never more threads than the bound");
    assert!(pool.queued() >= 7);
    for _ in 0..10 {
        release_tx.send(()).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while done.load(Ordering::SeqCst) < 10 {
        assert!(std::time::Instant::now() < deadline, "jobs were lost");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(pool.threads(), 2);
    pool.close();
}

fn panicking_jobs_never_use_up_the_threads() {
    let pool = Pool::new(2);
    let done = Arc::new(AtomicUsize::new(0));
    for i in 0..20 {
        let done = done.clone();
        pool.submit(move || {
            if i % 2 == 0 {
                panic!("job {i} fails");
            }
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while done.load(Ordering::SeqCst) < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "jobs after a panic never ran"
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(pool.threads(), 2);
    pool.close();
}
