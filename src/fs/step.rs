//! How an operation answers: at once, or "ask me again once this is ready". Nothing in the
//! logic layer blocks a request thread; an operation that needs a child's state it does
//! not have yet says what it waits for, and [`super::PodFs::answer`] parks the reply on it.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::Requester;
use crate::watch::Lease;

use super::files::CursorKey;

/// What a parked operation waits for.
pub enum Wait {
    /// The child's state, from its watch (leased until the operation runs again).
    Watch(Lease),
    /// The end of the turn the child runs (an `output` reader, like a pipe's, waits for
    /// the writer to finish).
    TurnOver(Lease),
    /// A cursor value closed but not yet applied (see [`super::gate`]).
    Cursor(CursorKey),
    /// `log`'s newest text to be published (see [`crate::watch::pages`]).
    Published(Lease),
}

impl Wait {
    /// Which round the operation runs in once this wait is over.
    pub fn next_round(&self) -> Round {
        match self {
            Wait::TurnOver(_) => Round::Last,
            Wait::Watch(_) | Wait::Cursor(_) | Wait::Published(_) => Round::Again,
        }
    }
}

/// Which round of an operation this is: what it may still wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// The first: it may wait for the child's state, a cursor value, or a turn.
    First,
    /// After waiting for the child's state or a cursor value: it may still wait for a
    /// turn to end, nothing else.
    Again,
    /// After waiting for a turn to end: it answers with what there is.
    Last,
}

impl Round {
    /// Whether this round must answer without waiting for the child's state (`now` of
    /// the kinds that wait for nothing else).
    pub fn now(self) -> bool {
        self != Round::First
    }

    /// Whether this round may still wait for a running turn to end.
    pub fn may_wait_for_a_turn(self) -> bool {
        self != Round::Last
    }
}

/// An operation's answer.
pub enum Step<T> {
    Ready(Result<T>),
    /// Ask again once this is ready, or after the bound.
    Wait(Wait, Duration),
}

impl<T> Step<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Step<U> {
        match self {
            Step::Ready(r) => Step::Ready(r.map(f)),
            Step::Wait(w, b) => Step::Wait(w, b),
        }
    }

    pub(crate) fn watch(w: &Lease, bound: Duration) -> Step<T> {
        Step::Wait(Wait::Watch(w.clone()), bound)
    }

    pub(crate) fn published(w: &Lease, bound: Duration) -> Step<T> {
        Step::Wait(Wait::Published(w.clone()), bound)
    }

    pub(crate) fn turn(w: &Lease, bound: Duration) -> Step<T> {
        Step::Wait(Wait::TurnOver(w.clone()), bound)
    }

    /// The answer of a second round, which may not wait again.
    pub fn into_result(self) -> Result<T> {
        match self {
            Step::Ready(r) => r,
            Step::Wait(..) => Err(Error::Timeout("the child did not answer in time".into())),
        }
    }
}

impl<T> From<Result<T>> for Step<T> {
    fn from(r: Result<T>) -> Self {
        Step::Ready(r)
    }
}

/// The value of a `Result`, or a ready error from the enclosing function returning a
/// [`Step`].
macro_rules! ready {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $crate::fs::step::Step::Ready(Err(e)),
        }
    };
}
pub(crate) use ready;

/// Who asks, as the kernel tells it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    /// The calling thread (0 when it is outside podfs's pid namespace).
    pub pid: u32,
}

impl Caller {
    /// podfs itself, or a test: may do anything, never interrupted.
    pub const INTERNAL: Caller = Caller { uid: 0, pid: 0 };

    pub fn requester(&self) -> Requester {
        Requester::new(self.pid)
    }
}
