//! JSON-lines framing shared by the blocking client and the watch reactor: bytes in,
//! complete lines out, with a bound on the line length (a Snapshot of tens of MiB is
//! normal; an endless line is not).

use std::io::{self, Read};

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
        let old = self.buf.len();
        self.buf.resize(old + CHUNK, 0);
        let result = source.read(&mut self.buf[old..]);
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        result
    }

    /// The next complete line (without its newline), if one has arrived.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        let from = self.scanned.max(self.start);
        match self.buf[from..].iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let end = from + pos;
                let line = self.buf[self.start..end].to_vec();
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

    /// Bytes of an unfinished line (at EOF this means the peer closed mid-line).
    pub fn has_partial(&self) -> bool {
        self.buf.len() > self.start
    }

    /// Bytes held, for memory accounting.
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
                out.push(String::from_utf8(l).unwrap());
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
}
