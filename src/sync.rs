//! The locks the shared state machines use, named in one place.
//!
//! Modules that hold state shared between FUSE threads, the watch reactor and the worker
//! pool ([`crate::cursors`], [`crate::watch::live`]) take their locks from here, so that the
//! model-checking test (`tests/model_check.rs`) can compile those same modules against
//! `shuttle`'s locks and explore their interleavings.

pub use parking_lot::{Mutex, MutexGuard};
