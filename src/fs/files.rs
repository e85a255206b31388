//! The control files of a child directory and their modes.

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
        FileKind::ALL
            .iter()
            .position(|&k| k == self)
            .expect("listed") as u64
            + 1
    }

    pub fn from_code(code: u64) -> Option<FileKind> {
        FileKind::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    /// Honest permission bits: what a read or write is actually allowed to do. `input`
    /// reads as empty (so tree-walking tools copy it without an error) and takes writes.
    pub fn perm(self) -> u16 {
        match self {
            FileKind::Cursor | FileKind::Input => 0o644,
            _ => 0o444,
        }
    }

    pub fn writable(self) -> bool {
        matches!(self, FileKind::Cursor | FileKind::Input)
    }

    /// Files whose content comes from the child itself (its watch), not from the registry.
    pub fn is_live(self) -> bool {
        matches!(self, FileKind::Status | FileKind::Log | FileKind::Output)
    }
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
    fn modes_say_what_is_allowed() {
        for kind in FileKind::ALL {
            assert_eq!(kind.perm() & 0o200 != 0, kind.writable(), "{kind:?}");
            assert_ne!(kind.perm() & 0o444, 0, "{kind:?} reads");
        }
    }
}
