//! Pod names, checked once where they enter podfs (a kernel request, a registry file, the
//! command line) so that every layer below takes a [`PodName`] and never validates again.

use std::borrow::Borrow;
use std::ffi::OsStr;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A name the runtime accepts for a pod: not empty, not `.` or `..`, without `/` or NUL,
/// and valid UTF-8 (the runtime cannot represent anything else). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodName(Arc<str>);

impl PodName {
    pub fn new(name: &str) -> Result<PodName> {
        if is_valid(name) {
            Ok(PodName(Arc::from(name)))
        } else {
            Err(Error::InvalidName(name.to_string()))
        }
    }

    /// A name from the kernel, which may not be UTF-8.
    pub fn from_os(name: &OsStr) -> Result<PodName> {
        let text = name
            .to_str()
            .ok_or_else(|| Error::InvalidName(name.to_string_lossy().into_owned()))?;
        PodName::new(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The runtime's rule, the only place it is written down.
pub fn is_valid(name: &str) -> bool {
    !(name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']))
}

impl Deref for PodName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for PodName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for PodName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for PodName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for PodName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_rule() {
        for bad in ["", ".", "..", "a/b", "a\0b", "/"] {
            assert_eq!(
                PodName::new(bad).unwrap_err().errno(),
                libc::EINVAL,
                "{bad:?}"
            );
        }
        for good in ["child1", "a b", "...", ".hidden", "ünï"] {
            assert_eq!(PodName::new(good).unwrap().as_str(), good);
        }
        use std::os::unix::ffi::OsStrExt;
        let not_utf8 = OsStr::from_bytes(b"a\xffb");
        assert_eq!(
            PodName::from_os(not_utf8).unwrap_err().errno(),
            libc::EINVAL
        );
    }
}
