//! Test-only fault injection: `PODFS_FAILPOINTS=name,name` makes the named points panic,
//! so tests can check that a panic in podfs still answers the request that hit it and
//! leaves the mount serving; a few named races are staged the same way ([`is_armed`]).
//!
//! The usual tool, the `fail` crate, compiles its points in only under a cargo feature,
//! and the mount tests run the very binary `cargo test` builds; a feature would need a
//! second build and a different test command. These points sit on cold paths (one per
//! removal, one per event line read from a child) and cost one load of a flag that is
//! false unless the variable was set when podfs started.

use std::sync::OnceLock;

/// The variable that names the points to trigger.
pub const VARIABLE: &str = "PODFS_FAILPOINTS";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(VARIABLE)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Whether the test asked for the point `name` (for the points that stage a race rather
/// than panic).
pub fn is_armed(name: &str) -> bool {
    let armed = armed();
    !armed.is_empty() && armed.iter().any(|a| a == name)
}

/// Panic here if the test asked for it.
pub fn point(name: &str) {
    let armed = armed();
    if !armed.is_empty() && armed.iter().any(|a| a == name) {
        panic!("failpoint {name} triggered");
    }
}
