//! JSON-lines framing shared by the blocking client and the watch reactor: bytes in,
//! complete lines out, with a bound on the line length (a Snapshot of tens of MiB is
//! normal; an endless line is not).
//!
//! Lines are handed out as ranges of the buffer, never copied: a Snapshot line of 50 MB is
//! held once, parsed in place, and dropped.

use std::io::{self, Read};
use std::ops::Range;

use crate::error::{Error, Result};

/// How much to read at a time.
const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte.
    start: usize,
    /// Everything before this offset (from `start`) is known to hold no newline, so a long
    /// line arriving in small chunks is scanned once, not once per chunk.
    scanned: usize,
    max_line: usize,
}

impl LineBuffer {
    pub fn new(max_line: usize) -> Self {
        LineBuffer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_line,
        }
    }

    /// One `read` into the buffer; `Ok(0)` is end of stream.
    pub fn read_from(&mut self, source: &mut impl Read) -> io::Result<usize> {
        self.read_within(source, usize::MAX)
    }

    /// One `read`, holding at most `limit` bytes of unfinished line afterwards (the
    /// memory budget's share of this connection). An unfinished line that already fills
    /// `limit` is an `OutOfMemory` error: it cannot be held.
    pub fn read_within(&mut self, source: &mut impl Read, limit: usize) -> io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scanned = 0;
            // A watch lives long and a Snapshot line can be tens of MiB: keep no more
            // than a few chunks of capacity once it has been consumed.
            if self.buf.capacity() > 4 * CHUNK {
                self.buf = Vec::new();
            }
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        let pending = self.buf.len() - self.start;
        if pending >= limit {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("an unfinished line of {pending} bytes fills this connection's share of the memory budget"),
            ));
        }
        let want = CHUNK.min(limit - pending);
        let old = self.buf.len();
        if self.buf.capacity() < old + want {
            // Grow by doubling, but never past what the limit allows: the capacity is what
            // the budget pays for.
            let doubled = self.buf.capacity().saturating_mul(2).max(old + want);
            let cap = doubled.min(self.start + limit.max(want)).max(old + want);
            self.buf.reserve_exact(cap - old);
        }
        self.buf.resize(old + want, 0);
        let result = source.read(&mut self.buf[old..]);
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        result
    }

    /// The next complete line (without its newline), if one has arrived, as a range for
    /// [`LineBuffer::slice`]; valid until the next read.
    pub fn next_line(&mut self) -> Result<Option<Range<usize>>> {
        let from = self.scanned.max(self.start);
        match self.buf[from..].iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let end = from + pos;
                let line = self.start..end;
                self.start = end + 1;
                self.scanned = self.start;
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() - self.start > self.max_line {
                    return Err(Error::Protocol(format!(
                        "line longer than {} bytes",
                        self.max_line
                    )));
                }
                Ok(None)
            }
        }
    }

    /// Give back a large buffer once every line in it has been handled: a watch lives
    /// long, and a Snapshot line can be tens of MiB that the budget should not keep paying
    /// for until the child next speaks.
    pub fn release_consumed(&mut self) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scanned = 0;
            if self.buf.capacity() > 4 * CHUNK {
                self.buf = Vec::new();
            }
        }
    }

    /// Bytes of the line not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes of an unfinished line (at EOF this means the peer closed mid-line).
    pub fn has_partial(&self) -> bool {
        self.buf.len() > self.start
    }

    /// The bytes of a line [`LineBuffer::next_line`] returned.
    pub fn slice(&self, line: Range<usize>) -> &[u8] {
        &self.buf[line]
    }

    /// Bytes held, for memory accounting: what was read and not yet given back. (Large
    /// buffers are mapped pages, resident only as far as they are written, so this, not
    /// the capacity, is what the process holds.)
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chunks(Vec<Vec<u8>>);
    impl Read for Chunks {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let chunk = self.0.remove(0);
            let n = chunk.len().min(out.len());
            out[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.0.insert(0, chunk[n..].to_vec());
            }
            Ok(n)
        }
    }

    fn lines_of(chunks: Vec<&[u8]>, max: usize) -> (Vec<String>, bool) {
        let mut src = Chunks(chunks.into_iter().map(<[u8]>::to_vec).collect());
        let mut b = LineBuffer::new(max);
        let mut out = Vec::new();
        while b.read_from(&mut src).unwrap() > 0 {
            while let Some(l) = b.next_line().unwrap() {
                out.push(String::from_utf8(b.slice(l).to_vec()).unwrap());
            }
        }
        (out, b.has_partial())
    }

    #[test]
    fn split_and_joined_lines_come_out_whole() {
        let (lines, partial) = lines_of(vec![b"ab", b"c\nde", b"\n\nf\n"], 100);
        assert_eq!(lines, ["abc", "de", "", "f"]);
        assert!(!partial);
        let (lines, partial) = lines_of(vec![b"x\ny"], 100);
        assert_eq!(lines, ["x"]);
        assert!(partial);
    }

    #[test]
    fn a_long_line_in_small_chunks_is_reassembled_and_bounded() {
        let big = vec![b'x'; 300_000];
        let chunks: Vec<&[u8]> = big.chunks(1000).chain([&b"\n"[..]]).collect();
        let (lines, _) = lines_of(chunks, 1 << 20);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), 300_000);
        let mut src = Chunks(vec![big.clone()]);
        let mut b = LineBuffer::new(1000);
        let mut err = None;
        while b.read_from(&mut src).unwrap() > 0 {
            if let Err(e) = b.next_line() {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(Error::Protocol(_))));
    }

    #[test]
    fn a_line_longer_than_its_share_of_the_budget_is_refused_and_never_held() {
        let big = vec![b'x'; 1 << 20];
        let mut src = Chunks(vec![big]);
        let mut b = LineBuffer::new(usize::MAX);
        let limit = 200_000;
        let err = loop {
            match b.read_within(&mut src, limit) {
                Ok(0) => panic!("ended before the limit"),
                Ok(_) => assert!(b.capacity() <= limit + CHUNK, "grew to {}", b.capacity()),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
        assert!(b.capacity() <= limit + CHUNK);
    }
}
