//! File bodies: the one place that decides how a value or a text becomes the bytes a read
//! returns. Every body is newline-terminated, so `cat` leaves the prompt on a line of its
//! own and `read` in a shell sees a complete line; an empty text stays empty, so an empty
//! file means "nothing".

use std::fmt::Display;

use crate::protocol::wire::PodStatus;

/// One value as a one-line body: `42\n`.
pub fn line(value: impl Display) -> Vec<u8> {
    format!("{value}\n").into_bytes()
}

/// Values one per line: `scope`'s rules.
pub fn lines<T: Display>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        out.extend_from_slice(&line(v));
    }
    out
}

/// `status`'s body.
pub fn status(word: PodStatus) -> Vec<u8> {
    line(word)
}

/// `cursor`'s body.
pub fn cursor(value: u64) -> Vec<u8> {
    line(value)
}

/// The length of `text` as a body: a text without a final newline gets one.
pub fn text_len(text: &str) -> u64 {
    // One rule for every file: `log`'s page cache (`watch::pages`) counts with it too.
    crate::watch::pages::body_len(text)
}

/// `text` as a body ([`text_len`] bytes).
pub fn text(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 1);
    out.extend_from_slice(text.as_bytes());
    if !text.is_empty() && !text.ends_with('\n') {
        out.push(b'\n');
    }
    out
}

/// `size` bytes from `offset` of `text`'s body, without making the whole body, appended
/// to `out`.
pub fn text_slice(text: &str, offset: u64, size: u32, out: &mut Vec<u8>) {
    let total = text_len(text) as usize;
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
    let end = start.saturating_add(size as usize).min(total);
    out.reserve(end - start);
    let body = text.as_bytes();
    if start < body.len() {
        out.extend_from_slice(&body[start..end.min(body.len())]);
    }
    // The newline a body without one gets sits at `body.len()`.
    if (start..end).contains(&body.len()) {
        out.push(b'\n');
    }
}

/// `size` bytes from `offset` of a body already made, appended to `out`.
pub fn slice(bytes: &[u8], offset: u64, size: u32, out: &mut Vec<u8>) {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = start.saturating_add(size as usize).min(bytes.len());
    out.extend_from_slice(&bytes[start..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_end_in_a_newline_and_slices_agree() {
        assert_eq!(text("a"), b"a\n");
        assert_eq!(text("a\n"), b"a\n");
        assert_eq!(text(""), b"");
        for t in ["", "a", "a\n", "ab\ncd", "ab\ncd\n"] {
            let whole = text(t);
            assert_eq!(text_len(t), whole.len() as u64);
            for offset in 0..=whole.len() as u64 + 1 {
                for size in 0..=whole.len() as u32 + 1 {
                    let (mut a, mut b) = (vec![b'x'], vec![b'x']);
                    text_slice(t, offset, size, &mut a);
                    slice(&whole, offset, size, &mut b);
                    assert_eq!(a, b, "{t:?} {offset} {size}");
                }
            }
        }
        assert_eq!(cursor(7), b"7\n");
        assert_eq!(status(PodStatus::Idle), b"idle\n");
    }
}
