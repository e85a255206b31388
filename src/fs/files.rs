//! The control files of a child directory, their modes, and the pure parsing of writes.

use crate::error::{Error, Result};

/// One control file inside `<parent>/<child>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Socket,
    Scope,
    Cursor,
    Output,
    Log,
    Input,
    Status,
    Callback,
}

impl FileKind {
    /// Directory order of `ls`.
    pub const ALL: [FileKind; 8] = [
        FileKind::Socket,
        FileKind::Scope,
        FileKind::Cursor,
        FileKind::Output,
        FileKind::Log,
        FileKind::Input,
        FileKind::Status,
        FileKind::Callback,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FileKind::Socket => "socket",
            FileKind::Scope => "scope",
            FileKind::Cursor => "cursor",
            FileKind::Output => "output",
            FileKind::Log => "log",
            FileKind::Input => "input",
            FileKind::Status => "status",
            FileKind::Callback => "callback",
        }
    }

    pub fn from_name(name: &str) -> Option<FileKind> {
        FileKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// 1-based code used in inode numbers (0 is the directory itself).
    pub fn code(self) -> u64 {
        FileKind::ALL.iter().position(|&k| k == self).unwrap() as u64 + 1
    }

    pub fn from_code(code: u64) -> Option<FileKind> {
        FileKind::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    /// Honest permission bits: what a write or read would actually be allowed to do.
    pub fn perm(self) -> u16 {
        match self {
            FileKind::Cursor => 0o644,
            FileKind::Input => 0o200,
            _ => 0o444,
        }
    }

    pub fn readable(self) -> bool {
        self != FileKind::Input
    }

    pub fn writable(self) -> bool {
        matches!(self, FileKind::Cursor | FileKind::Input)
    }
}

/// Largest message accepted by `input` in one write. It fits in one FUSE write request on
/// every kernel, so a message is never split across two runs.
pub const INPUT_LIMIT: usize = 64 * 1024;

/// `echo 12 > cursor`: decimal digits with at most one trailing newline, nothing else.
pub fn parse_cursor(data: &[u8]) -> Result<u64> {
    let digits = data.strip_suffix(b"\n").unwrap_or(data);
    let invalid = || {
        Error::InvalidValue(format!(
            "cursor takes a decimal item index, got {:?}",
            String::from_utf8_lossy(data)
        ))
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(invalid)
}

/// `echo "do X" > input`: UTF-8 text, one trailing newline stripped, within the limit.
pub fn parse_input(data: &[u8]) -> Result<String> {
    if data.len() > INPUT_LIMIT {
        return Err(Error::TooBig {
            size: data.len(),
            limit: INPUT_LIMIT,
        });
    }
    let text = std::str::from_utf8(data)
        .map_err(|_| Error::InvalidValue("input must be UTF-8 text".into()))?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Err(Error::InvalidValue("input is empty".into()));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for kind in FileKind::ALL {
            assert_eq!(FileKind::from_name(kind.name()), Some(kind));
            assert_eq!(FileKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(FileKind::from_code(0), None);
        assert_eq!(FileKind::from_code(9), None);
        assert_eq!(FileKind::from_name("sock"), None);
    }

    #[test]
    fn cursor_accepts_digits_with_one_optional_newline() {
        assert_eq!(parse_cursor(b"12\n").unwrap(), 12);
        assert_eq!(parse_cursor(b"0").unwrap(), 0);
        assert_eq!(parse_cursor(b"18446744073709551615").unwrap(), u64::MAX);
        for bad in [
            &b"abc"[..],
            b"-1",
            b"1 2",
            b"",
            b"\n",
            b"12\n\n",
            b" 12",
            b"+1",
            b"18446744073709551616",
            b"1\x00",
        ] {
            let err = parse_cursor(bad).unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL, "{bad:?}");
        }
    }

    #[test]
    fn input_strips_one_newline_and_enforces_the_limit() {
        assert_eq!(parse_input(b"do X\n").unwrap(), "do X");
        assert_eq!(parse_input(b"two\n\n").unwrap(), "two\n");
        assert_eq!(parse_input(b"x").unwrap(), "x");
        assert_eq!(parse_input(b"\n").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(parse_input(b"\xff").unwrap_err().errno(), libc::EINVAL);
        let big = vec![b'a'; INPUT_LIMIT + 1];
        assert_eq!(parse_input(&big).unwrap_err().errno(), libc::EFBIG);
        assert!(parse_input(&big[..INPUT_LIMIT]).is_ok());
    }
}
