//! Scope rules: their two JSON shapes and the text form of the `scope` file.
//!
//! The runtime has two rule types with the same bytes on disk but different defaults: the
//! wire/allocation rule reads a missing `recursive` as `true`, the rule stored in
//! `metadata.json` requires it. Keeping two types makes a mix-up a compile error.

use std::fmt;

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

/// One line of the `scope` file: `<read|write> <recursive|exact> <target>`.
impl fmt::Display for StoredRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let depth = if self.recursive { "recursive" } else { "exact" };
        write!(f, "{} {} {}", self.permission, depth, self.target)
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

/// The whole `scope` file: one rule per line, each newline-terminated.
pub fn render_scope<R: fmt::Display>(rules: &[R]) -> String {
    let mut out = String::new();
    for rule in rules {
        out.push_str(&rule.to_string());
        out.push('\n');
    }
    out
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
    let target = parts.next()?;
    if !matches!(permission, "read" | "write") || target.is_empty() {
        return None;
    }
    Some(StoredRule::new(target, permission, recursive))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = render_scope(&rules);
        assert_eq!(text, "write recursive /w/sub1\nread exact /w/with space\n");
        let back: Vec<_> = text.lines().map(|l| parse_scope_line(l).unwrap()).collect();
        assert_eq!(back, rules);
        assert!(parse_scope_line("admin recursive /x").is_none());
        assert!(parse_scope_line("read deep /x").is_none());
    }
}
