//! The runtime's socket protocol: JSON lines over a Unix stream socket.
//!
//! * [`wire`]: events and methods as JSON.
//! * [`history`]: ReadPodOutput's text extraction over snapshot entries.
//! * [`client`]: a connection with a deadline on every step and the mandatory prelude.
//! * [`ops`]: the conversations podfs has with pods (probe, run, shutdown, pod events).

pub mod client;
pub mod history;
pub mod ops;
pub mod wire;

use std::time::Duration;

/// Every bound podfs puts on a conversation with a pod. The runtime uses 5 s per step;
/// podfs is at least as strict, and tests shrink these to keep failures fast.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// `connect()` to a pod socket.
    pub connect: Duration,
    /// Reading the Alert*/Snapshot prelude for a status probe.
    pub probe: Duration,
    /// Reading the prelude when podfs needs the history (output, log) or will write.
    pub prelude: Duration,
    /// Waiting for the answer to a written method.
    pub answer: Duration,
    /// Waiting for a child to stop accepting connections after `shutdown`.
    pub stop_wait: Duration,
    /// Waiting for a live parent to record a reclaim in its `metadata.json`.
    pub confirm_wait: Duration,
    /// Waiting for the `pods.json` lock.
    pub lock_wait: Duration,
    /// Longest accepted protocol line (Snapshots of tens of MiB are normal).
    pub max_line: usize,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_millis(500),
            probe: Duration::from_millis(1500),
            prelude: Duration::from_secs(5),
            answer: Duration::from_secs(5),
            stop_wait: Duration::from_secs(5),
            confirm_wait: Duration::from_secs(5),
            lock_wait: Duration::from_secs(5),
            max_line: 256 << 20,
        }
    }
}
