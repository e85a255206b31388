//! Scope rules: their two JSON shapes and the text form of the `scope` file.
//!
//! The runtime has two rule types with the same bytes on disk but different defaults: the
//! wire/allocation rule reads a missing `recursive` as `true`, the rule stored in
//! `metadata.json` requires it. Keeping two types makes a mix-up a compile error.

use std::fmt;

use crate::octal::{escape, unescape};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

fn yes() -> bool {
    true
}

/// A rule as it travels on the socket and sits in `pods.json` / `spawned_pods.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopeRule {
    pub target: String,
    pub permission: String,
    #[serde(default = "yes")]
    pub recursive: bool,
    /// Fields podfs does not model; kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A rule as `metadata.json` stores it: `recursive` is required there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRule {
    pub target: String,
    pub permission: String,
    pub recursive: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StoredRule {
    pub fn new(target: &str, permission: &str, recursive: bool) -> Self {
        StoredRule {
            target: target.into(),
            permission: permission.into(),
            recursive,
            extra: Map::new(),
        }
    }

    pub fn is_write(&self) -> bool {
        self.permission == "write"
    }

    /// The runtime compares deny layers by exact target, permission and recursion.
    pub fn same_rule(&self, other: &ScopeRule) -> bool {
        self.target == other.target
            && self.permission == other.permission
            && self.recursive == other.recursive
    }

    pub fn to_wire(&self) -> ScopeRule {
        ScopeRule {
            target: self.target.clone(),
            permission: self.permission.clone(),
            recursive: self.recursive,
            extra: self.extra.clone(),
        }
    }
}

impl From<ScopeRule> for StoredRule {
    fn from(r: ScopeRule) -> Self {
        StoredRule {
            target: r.target,
            permission: r.permission,
            recursive: r.recursive,
            extra: r.extra,
        }
    }
}

/// One line of the `scope` file: `<read|write> <recursive|exact> <target>`, with the
/// target escaped ([`escape`], octal as in `/proc/self/mountinfo`) so that one rule is
/// always one line.
impl fmt::Display for StoredRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let depth = if self.recursive { "recursive" } else { "exact" };
        write!(f, "{} {} {}", self.permission, depth, escape(&self.target))
    }
}

/// A rule as podfs keeps it for serving: the registry view is read-only, so it carries no
/// unknown fields and stores its strings compactly (a parent may have 10,000 children).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Rule {
    pub target: Box<str>,
    pub permission: Box<str>,
    pub recursive: bool,
}

impl Rule {
    pub fn to_stored(&self) -> StoredRule {
        StoredRule::new(&self.target, &self.permission, self.recursive)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_stored().fmt(f)
    }
}

/// Parse the text form back (used by tests and by anyone scripting against `scope`).
pub fn parse_scope_line(line: &str) -> Option<StoredRule> {
    let mut parts = line.splitn(3, ' ');
    let permission = parts.next()?;
    let recursive = match parts.next()? {
        "recursive" => true,
        "exact" => false,
        _ => return None,
    };
    let target = unescape(parts.next()?);
    if !matches!(permission, "read" | "write") || target.is_empty() {
        return None;
    }
    Some(StoredRule::new(&target, permission, recursive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_with_a_newline_stays_on_its_line_and_reads_back() {
        let tricky = "/w/a\nwrite recursive /etc\\x\ty";
        let rule = StoredRule::new(tricky, "write", true);
        let text = String::from_utf8(crate::fs::body::lines(std::slice::from_ref(&rule))).unwrap();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert_eq!(
            text,
            "write recursive /w/a\\012write recursive /etc\\134x\\011y\n"
        );
        assert_eq!(parse_scope_line(text.trim_end()).unwrap(), rule);
        // Plain targets are shown as they are.
        assert_eq!(escape("/home/a b/c"), "/home/a b/c");
    }

    #[test]
    fn wire_rule_defaults_recursive_to_true() {
        let r: ScopeRule = serde_json::from_str(r#"{"target":"/a","permission":"read"}"#).unwrap();
        assert!(r.recursive);
    }

    #[test]
    fn stored_rule_requires_recursive() {
        let r: Result<StoredRule, _> =
            serde_json::from_str(r#"{"target":"/a","permission":"read"}"#);
        assert!(r.is_err());
    }

    #[test]
    fn bytes_match_the_runtime_order_and_unknown_fields_survive() {
        let text = r#"{"target":"/a","permission":"write","recursive":false,"why":"x"}"#;
        let r: StoredRule = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
    }

    #[test]
    fn text_form_round_trips() {
        let rules = vec![
            StoredRule::new("/w/sub1", "write", true),
            StoredRule::new("/w/with space", "read", false),
        ];
        let text = String::from_utf8(crate::fs::body::lines(&rules)).unwrap();
        assert_eq!(text, "write recursive /w/sub1\nread exact /w/with space\n");
        let back: Vec<_> = text.lines().map(|l| parse_scope_line(l).unwrap()).collect();
        assert_eq!(back, rules);
        assert!(parse_scope_line("admin recursive /x").is_none());
        assert!(parse_scope_line("read deep /x").is_none());
    }
}
