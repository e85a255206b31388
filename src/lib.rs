//! podfs: the spawned-pod registry of the insomnia runtime, as a filesystem.

pub mod cli;
pub mod daemon;
pub mod demo;
pub mod error;
pub mod follow;
pub mod fs;
#[cfg(test)]
mod fuzz;
pub mod mount;
pub mod paths;
pub mod protocol;
pub mod reclaim;
pub mod registry;
pub mod scope;
pub mod store;
