//! What the writes of one open file description of `input` or `cursor` add up to.
//!
//! Both files take one value per open file description, however many processes share the
//! descriptor and however the value is chunked: all writes together are the value. Each
//! write is checked as it arrives, and the write that makes the value impossible fails,
//! so a shell builtin (which never sees `close()` errors) exits non-zero. From then on the
//! value is refused as a whole: later writes and closes fail too, and nothing of it takes
//! effect. Pure state, no I/O: the caller supplies the child's state.

use crate::error::{Error, Result};

/// Largest message `input` accepts, in bytes.
pub const INPUT_LIMIT: usize = 64 * 1024;

/// Why a value was refused; it answers every later write and close the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooBig,
    NotUtf8,
    /// A NUL byte: no text a shell user means holds one (glibc's `posix_fallocate`
    /// emulation writes them).
    Nul,
    Empty,
    Busy,
    Unreachable,
    Invalid,
    /// A cursor value past the end of the child's history.
    PastEnd,
    /// The last descriptor closed in the middle of a character.
    Incomplete,
    /// The writer was killed by a signal before it finished (its prefix is not a message).
    Killed,
    /// podfs cannot follow the child (over the memory budget, or out of its own resources).
    Untracked(i32),
}

impl Refusal {
    pub fn error(self) -> Error {
        match self {
            Refusal::TooBig => Error::TooBig {
                size: INPUT_LIMIT + 1,
                limit: INPUT_LIMIT,
            },
            Refusal::NotUtf8 => Error::InvalidValue("input must be UTF-8 text".into()),
            Refusal::Nul => Error::InvalidValue("input must not hold a NUL byte".into()),
            Refusal::Empty => Error::InvalidValue("the message is empty".into()),
            Refusal::Busy => Error::Busy("the child is running a turn".into()),
            Refusal::Unreachable => Error::Unreachable("the child is unreachable".into()),
            Refusal::Invalid => Error::InvalidValue("cursor takes one decimal item index".into()),
            Refusal::PastEnd => {
                Error::InvalidValue("the cursor would point past the end of the history".into())
            }
            Refusal::Incomplete => {
                Error::InvalidValue("input ends in the middle of a character".into())
            }
            Refusal::Killed => Error::Interrupted,
            Refusal::Untracked(libc::EFBIG) => {
                Error::OverBudget("the child's history exceeds the memory budget".into())
            }
            Refusal::Untracked(errno) => Error::io(
                "podfs cannot follow the child",
                std::io::Error::from_raw_os_error(errno),
            ),
        }
    }
}

/// Whether the child can take a message now, as the watch says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    Takes,
    Busy,
    Unreachable,
    /// podfs cannot follow the child; the errno says why.
    Untracked(i32),
}

/// What closing the last descriptor of an `input` open does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Send this text as one run.
    Send(String),
    /// Nothing was written.
    Nothing,
    /// Refused earlier (the writer was told), or ends in the middle of a character.
    Dropped(Refusal),
}

/// The message written through one open of `input`.
#[derive(Debug, Default)]
pub struct Message {
    bytes: Vec<u8>,
    /// How far the bytes are known to be UTF-8 (a character split across writes waits).
    checked: usize,
    refused: Option<Refusal>,
    /// The processes that wrote to it (thread group ids; 0 for one podfs cannot see).
    writers: Vec<u32>,
}

impl Message {
    fn refuse(&mut self, why: Refusal) -> Error {
        self.refused = Some(why);
        self.bytes = Vec::new();
        why.error()
    }

    /// Refuse the whole message now (its writer was killed, or the child went away before
    /// it was sent): nothing of it will be sent.
    pub fn poison(&mut self, why: Refusal) -> Error {
        match self.refused {
            Some(earlier) => earlier.error(),
            None => self.refuse(why),
        }
    }

    /// Whether this message was refused.
    pub fn is_refused(&self) -> bool {
        self.refused.is_some()
    }

    /// Process `writer` wrote to this message (or tried to).
    pub fn written_by(&mut self, writer: u32) {
        if !self.writers.contains(&writer) {
            self.writers.push(writer);
        }
    }

    /// Whether process `who` is one of the writers: only the death of a writer, before its
    /// writes were done, may poison a message, never that of a bystander that only
    /// inherited the descriptor.
    pub fn is_writer(&self, who: u32) -> bool {
        self.writers.contains(&who)
    }

    /// One `write()`; `child` is the child's state at this moment.
    pub fn write(&mut self, data: &[u8], child: Child) -> Result<usize> {
        if let Some(why) = self.refused {
            return Err(why.error());
        }
        if data.contains(&0) {
            return Err(self.refuse(Refusal::Nul));
        }
        match child {
            Child::Takes => {}
            Child::Busy => return Err(self.refuse(Refusal::Busy)),
            Child::Unreachable => return Err(self.refuse(Refusal::Unreachable)),
            Child::Untracked(errno) => return Err(self.refuse(Refusal::Untracked(errno))),
        }
        if self.bytes.len() + data.len() > INPUT_LIMIT {
            return Err(self.refuse(Refusal::TooBig));
        }
        self.bytes.extend_from_slice(data);
        match std::str::from_utf8(&self.bytes[self.checked..]) {
            Ok(_) => self.checked = self.bytes.len(),
            // Only the end is incomplete: the next write may finish the character.
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(self.refuse(Refusal::NotUtf8)),
        }
        if self.bytes == b"\n" {
            return Err(self.refuse(Refusal::Empty));
        }
        Ok(data.len())
    }

    /// A `close()` of one descriptor (others may still be open).
    pub fn at_close(&self) -> Result<()> {
        if let Some(why) = self.refused {
            return Err(why.error());
        }
        if self.checked < self.bytes.len() {
            return Err(Error::InvalidValue(
                "input ends in the middle of a character".into(),
            ));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The last descriptor closed: what to deliver. One trailing newline is stripped.
    pub fn finish(&mut self) -> Delivery {
        if let Some(why) = self.refused {
            return Delivery::Dropped(why);
        }
        if self.bytes.is_empty() {
            return Delivery::Nothing;
        }
        let bytes = std::mem::take(&mut self.bytes);
        let Ok(mut text) = String::from_utf8(bytes) else {
            self.refused = Some(Refusal::Incomplete);
            return Delivery::Dropped(Refusal::Incomplete);
        };
        if text.ends_with('\n') {
            text.pop();
        }
        Delivery::Send(text)
    }
}

/// The value written through one open of `cursor`: decimal digits, at most one newline
/// at the end, nothing else, and never past the end of the child's history.
#[derive(Debug, Default, Clone)]
pub struct CursorValue {
    value: u64,
    digits: usize,
    newline: bool,
    refused: Option<Refusal>,
}

impl CursorValue {
    /// One `write()`. `end` is the length of the child's history when podfs knows it:
    /// digits only make the value grow, so the write that takes it past `end` is refused.
    pub fn write(&mut self, data: &[u8], end: Option<u64>) -> Result<usize> {
        if let Some(why) = self.refused {
            return Err(why.error());
        }
        for &b in data {
            let ok = match b {
                _ if self.newline => false,
                b'0'..=b'9' => match self
                    .value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                {
                    Some(v) => {
                        self.value = v;
                        self.digits += 1;
                        true
                    }
                    None => false,
                },
                b'\n' if self.digits > 0 => {
                    self.newline = true;
                    true
                }
                _ => false,
            };
            if !ok {
                self.refused = Some(Refusal::Invalid);
                return Err(Refusal::Invalid.error());
            }
        }
        if end.is_some_and(|end| self.value > end) {
            self.refused = Some(Refusal::PastEnd);
            return Err(Refusal::PastEnd.error());
        }
        Ok(data.len())
    }

    /// The value written so far (0 before any digit).
    pub fn value(&self) -> u64 {
        self.value
    }

    /// Refuse the value as a whole (its writer was killed midway).
    pub fn poison(&mut self, why: Refusal) -> Error {
        self.refused.get_or_insert(why).error()
    }

    /// At `close()`: the value to set, `None` when nothing was written.
    pub fn at_close(&self) -> Result<Option<u64>> {
        if let Some(why) = self.refused {
            return Err(why.error());
        }
        Ok((self.digits > 0).then_some(self.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(r: Result<usize>) -> i32 {
        r.unwrap_err().errno()
    }

    #[test]
    fn chunks_and_split_characters_add_up_to_one_message() {
        let mut m = Message::default();
        let text = "héllo wörld\n".as_bytes();
        for b in text {
            m.write(std::slice::from_ref(b), Child::Takes).unwrap();
        }
        m.at_close().unwrap();
        assert_eq!(m.finish(), Delivery::Send("héllo wörld".into()));
    }

    #[test]
    fn a_character_cut_at_close_is_reported_there() {
        let mut m = Message::default();
        m.write("é".as_bytes()[..1].as_ref(), Child::Takes).unwrap();
        assert_eq!(m.at_close().unwrap_err().errno(), libc::EINVAL);
        assert_eq!(m.finish(), Delivery::Dropped(Refusal::Incomplete));
    }

    #[test]
    fn a_refused_write_poisons_the_whole_message() {
        let mut m = Message::default();
        m.write(b"first part ", Child::Takes).unwrap();
        assert_eq!(errno(m.write(b"\xff", Child::Takes)), libc::EINVAL);
        assert_eq!(errno(m.write(b"more", Child::Takes)), libc::EINVAL);
        assert_eq!(m.at_close().unwrap_err().errno(), libc::EINVAL);
        assert_eq!(m.finish(), Delivery::Dropped(Refusal::NotUtf8));

        let mut m = Message::default();
        let big = vec![b'a'; 4096];
        let mut sent = 0;
        let err = loop {
            match m.write(&big, Child::Takes) {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.errno(), libc::EFBIG);
        assert_eq!(sent, INPUT_LIMIT);
        assert_eq!(m.finish(), Delivery::Dropped(Refusal::TooBig));

        for (child, errno_) in [
            (Child::Busy, libc::EBUSY),
            (Child::Unreachable, libc::EHOSTDOWN),
        ] {
            let mut m = Message::default();
            m.write(b"a", Child::Takes).unwrap();
            assert_eq!(errno(m.write(b"b", child)), errno_);
            assert_eq!(errno(m.write(b"c", Child::Takes)), errno_);
            assert!(matches!(m.finish(), Delivery::Dropped(_)));
        }
    }

    #[test]
    fn an_empty_message_is_refused_at_its_write() {
        let mut m = Message::default();
        assert_eq!(errno(m.write(b"\n", Child::Takes)), libc::EINVAL);
        let mut m = Message::default();
        assert_eq!(m.finish(), Delivery::Nothing);
        let mut m = Message::default();
        m.write(b"\n\n", Child::Takes).unwrap();
        assert_eq!(m.finish(), Delivery::Send("\n".into()));
    }

    #[test]
    fn cursor_values_are_checked_as_they_arrive() {
        let mut c = CursorValue::default();
        for b in b"12\n" {
            c.write(std::slice::from_ref(b), None).unwrap();
        }
        assert_eq!(c.at_close().unwrap(), Some(12));
        assert_eq!(CursorValue::default().at_close().unwrap(), None);
        let mut c = CursorValue::default();
        c.write(b"18446744073709551615", None).unwrap();
        assert_eq!(c.at_close().unwrap(), Some(u64::MAX));
        for bad in [
            &b"abc"[..],
            b"-1",
            b"1 2",
            b"\n",
            b"12\n\n",
            b" 12",
            b"+1",
            b"18446744073709551616",
            b"1\x00",
        ] {
            let mut c = CursorValue::default();
            let mut failed = false;
            for b in bad {
                if c.write(std::slice::from_ref(b), None).is_err() {
                    failed = true;
                    break;
                }
            }
            assert!(failed, "{bad:?} was accepted byte by byte");
            assert_eq!(c.at_close().unwrap_err().errno(), libc::EINVAL, "{bad:?}");
            assert_eq!(c.write(b"5", None).unwrap_err().errno(), libc::EINVAL);
        }
        // `printf '5\n\n'`: the second newline is refused at its write, and 5 is not set.
        let mut c = CursorValue::default();
        assert_eq!(errno(c.write(b"5\n\n", None)), libc::EINVAL);
        assert!(c.at_close().is_err());
    }

    #[test]
    fn a_cursor_past_the_end_of_the_history_is_refused_at_its_write() {
        let mut c = CursorValue::default();
        c.write(b"7", Some(7)).unwrap();
        assert_eq!(c.at_close().unwrap(), Some(7));
        let mut c = CursorValue::default();
        c.write(b"0", Some(7)).unwrap();
        c.write(b"0", Some(7)).unwrap();
        c.write(b"7\n", Some(7)).unwrap();
        assert_eq!(c.at_close().unwrap(), Some(7), "leading zeros are fine");
        let mut c = CursorValue::default();
        c.write(b"1", Some(7)).unwrap();
        assert_eq!(errno(c.write(b"2", Some(7))), libc::EINVAL, "12 > 7");
        assert!(c.at_close().is_err());
        let mut c = CursorValue::default();
        assert_eq!(errno(c.write(b"999\n", Some(7))), libc::EINVAL);
        // Unknown history: anything that parses.
        let mut c = CursorValue::default();
        c.write(b"999\n", None).unwrap();
        assert_eq!(c.at_close().unwrap(), Some(999));
    }

    #[test]
    fn a_nul_byte_poisons_the_whole_message() {
        let mut m = Message::default();
        m.write(b"text", Child::Takes).unwrap();
        assert_eq!(errno(m.write(b"\0", Child::Takes)), libc::EINVAL);
        assert_eq!(errno(m.write(b"more", Child::Takes)), libc::EINVAL);
        assert_eq!(m.finish(), Delivery::Dropped(Refusal::Nul));
        let mut m = Message::default();
        assert_eq!(errno(m.write(b"a\0b", Child::Takes)), libc::EINVAL);
    }

    #[test]
    fn writers_are_known_by_process() {
        let mut m = Message::default();
        m.written_by(10);
        m.written_by(10);
        m.written_by(11);
        assert!(m.is_writer(10) && m.is_writer(11));
        assert!(!m.is_writer(12));
    }

    #[test]
    fn a_killed_writer_poisons_its_message() {
        let mut m = Message::default();
        m.write(b"half a mess", Child::Takes).unwrap();
        assert_eq!(m.poison(Refusal::Killed).errno(), libc::EINTR);
        assert!(m.at_close().is_err());
        assert_eq!(m.finish(), Delivery::Dropped(Refusal::Killed));
    }
}
