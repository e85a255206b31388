//! podfs: the spawned-pod registry of the insomnia runtime, as a filesystem.

pub mod error;
pub mod paths;
pub mod protocol;
pub mod scope;
pub mod store;
