//! The runtime's socket protocol: JSON lines over a Unix stream socket.
//!
//! * [`wire`]: events and methods as JSON.
//! * [`lines`]: the framing, shared by the blocking client and the watch reactor.
//! * [`history`]: the history podfs keeps (entry count and assistant text), built from a
//!   Snapshot and kept current from events.
//! * [`client`]: a blocking connection with a deadline on every step and the prelude
//!   drained first. Only [`crate::pod_client`] uses it.

pub mod client;
pub mod history;
pub mod lines;
pub mod wire;
