//! The bounded pool that runs blocking work (removals, which stop children and take file
//! locks), so that no FUSE request thread ever sleeps or waits on a socket.
//!
//! Threads start on demand up to the configured size and then stay. When all are busy,
//! jobs wait in an unbounded queue: nothing is dropped and nothing fails for lack of a
//! thread, and no request ever gets a thread of its own. A job that panics is contained:
//! its thread lives on to run the next job (jobs answer their own requests, see
//! [`crate::error::contain`]), so no panic can leave the queue without a thread.

use std::collections::VecDeque;
use std::sync::Arc;

use tracing::error;

use crate::error::Error;
use crate::sync::{thread, Condvar, Mutex};

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
                    if let Some(job) = q.jobs.pop_back() {
                        drop(q);
                        run(job);
                    }
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
            run(job);
            q = inner.queue.lock();
            continue;
        }
        if q.closed {
            q.threads -= 1;
            return;
        }
        q.idle += 1;
        q = inner.ready.wait(q);
        q.idle -= 1;
    }
}

/// One job, with its panic (if any) logged instead of ending the thread.
fn run(job: Job) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
        let e = Error::from_panic(&*payload);
        error!(error = %e, "a pool job panicked; the thread goes on");
    }
}

// Tested with real threads in `tests/pool.rs`, and under the model checker in
// `tests/model_check.rs`, which compiles this very file against shuttle's locks (so it
// holds no unit tests of its own: they would run there outside shuttle).
