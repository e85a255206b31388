//! podfs: the spawned-pod registry of the insomnia/yoi agent runtime, as a filesystem.
//!
//! Layers, from the kernel down:
//! * [`fs::adapter`]: the only code that knows `fuser`.
//! * [`fs`]: the tree, attributes, handles, and the meaning of every operation.
//! * State, one owner each: [`parents`] (the durable registry files), [`cursors`] (the
//!   mount's read positions), [`watch`] (the live state of watched children), [`pod_client`]
//!   (the only code that opens pod sockets), [`reclaim`] (stop and reclaim), [`pool`]
//!   (blocking work).
//! * The runtime's formats and protocol: [`store`], [`scope`], [`protocol`], described per
//!   generation by [`generation`] and located by [`paths`].
//! * The command line: [`cli`], [`mount`] (with [`mountinfo`] and [`guard`]), [`daemon`],
//!   [`demo`], [`manual`].

pub mod cli;
pub mod confine;
pub mod cursors;
pub mod daemon;
pub mod demo;
pub mod error;
pub mod failpoint;
pub mod fs;
pub mod generation;
pub mod guard;
pub mod home;
pub mod logs;
pub mod manual;
pub mod mount;
pub mod mountinfo;
pub mod name;
pub mod octal;
pub mod parents;
pub mod paths;
pub mod pod_client;
pub mod pool;
pub mod process;
pub mod protocol;
pub mod reclaim;
pub mod scope;
pub mod scratch;
pub mod store;
pub mod sync;
#[cfg(test)]
mod test_fixtures;
pub mod watch;
