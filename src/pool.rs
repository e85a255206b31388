//! The bounded pool that runs blocking work (removals, which stop children and take file
//! locks), so that no FUSE request thread ever sleeps or waits on a socket.
//!
//! Threads start on demand up to the configured size and then stay. When all are busy,
//! jobs wait in an unbounded queue: nothing is dropped and nothing fails for lack of a
//! thread, and no request ever gets a thread of its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread;

use parking_lot::{Condvar, Mutex};
use tracing::error;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
    closed: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    ready: Condvar,
    max: usize,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    pub fn new(max: usize) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                queue: Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                    closed: false,
                }),
                ready: Condvar::new(),
                max: max.max(1),
            }),
        }
    }

    /// Queue `job`; a thread picks it up as soon as one is free.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let span = tracing::Span::current();
        let job: Job = Box::new(move || span.in_scope(job));
        let mut q = self.inner.queue.lock();
        q.jobs.push_back(job);
        if q.idle == 0 && q.threads < self.inner.max {
            q.threads += 1;
            let inner = self.inner.clone();
            let spawned = thread::Builder::new()
                .name("podfs-pool".into())
                .spawn(move || work(&inner));
            if let Err(e) = spawned {
                q.threads -= 1;
                // The job stays queued for the threads that exist; with none, it runs
                // here rather than never.
                error!(error = %e, "cannot start a pool thread");
                if q.threads == 0 {
                    let job = q.jobs.pop_back().expect("just queued");
                    drop(q);
                    job();
                }
                return;
            }
        }
        drop(q);
        self.inner.ready.notify_one();
    }

    /// Threads started so far (for tests and benchmarks).
    pub fn threads(&self) -> usize {
        self.inner.queue.lock().threads
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.inner.queue.lock().jobs.len()
    }

    /// Let the threads finish what is queued and exit.
    pub fn close(&self) {
        self.inner.queue.lock().closed = true;
        self.inner.ready.notify_all();
    }
}

fn work(inner: &Inner) {
    let mut q = inner.queue.lock();
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            job();
            q = inner.queue.lock();
            continue;
        }
        if q.closed {
            q.threads -= 1;
            return;
        }
        q.idle += 1;
        inner.ready.wait(&mut q);
        q.idle -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
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
}
