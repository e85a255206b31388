//! The layout docs/architecture.md describes, checked where a test can check it: owners
//! expose operations, not fields; only the adapter knows `fuser`; the modules named there
//! do not import each other in circles. And the test files' own layout: each runs under
//! the suite's harness.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::harness::{Need, Suite};

fn main() -> std::process::ExitCode {
    Suite::new()
        .add(
            &Need::Met,
            tests![
                owners_expose_operations_not_fields,
                only_the_adapter_knows_fuser,
                no_module_imports_one_that_imports_it,
                every_test_file_runs_under_the_suites_harness,
            ],
        )
        .run()
}

fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &mut out);
    out.sort();
    assert!(out.len() > 40, "only {} source files found", out.len());
    out
}

/// The code of a file: without its `#[cfg(test)]` module (tests may reach anything),
/// comments, or the contents of one-line string literals.
fn code(text: &str) -> String {
    let text = text.split("\n#[cfg(test)]\nmod ").next().unwrap();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.split("//").next().unwrap();
        for (i, part) in line.split('"').enumerate() {
            if i % 2 == 0 {
                out.push_str(part);
            }
        }
        out.push('\n');
    }
    out
}

/// The fields of `struct name { ... }` in `text`, one line each.
fn fields<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let start = text.lines().position(|l| {
        let l = l.trim_start();
        let l = l
            .strip_prefix("pub(crate) ")
            .or(l.strip_prefix("pub "))
            .unwrap_or(l);
        l.starts_with(&format!("struct {name} {{")) || l.starts_with(&format!("struct {name}<"))
    })?;
    Some(
        text.lines()
            .skip(start + 1)
            .take_while(|l| !l.starts_with('}'))
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect(),
    )
}

/// The types that own state other modules work with.
const OWNERS: &[&str] = &[
    "PodFs",
    "Context",
    "ParentCache",
    "ParentView",
    "Watches",
    "Watch",
    "LiveState",
    "PodClient",
    "Home",
    "Cursors",
    "Gates",
    "KernelQueue",
    "Inodes",
    "Pool",
    "Budget",
    "Mounted",
    "Session",
    "StopSignals",
];

fn owners_expose_operations_not_fields() {
    let sources = sources();
    let mut found = BTreeSet::new();
    for owner in OWNERS {
        for (path, text) in &sources {
            let Some(lines) = fields(text, owner) else {
                continue;
            };
            found.insert(*owner);
            for line in lines {
                assert!(
                    !line.trim_start().starts_with("pub"),
                    "{}: {owner} has a public field: {}",
                    path.display(),
                    line.trim()
                );
            }
        }
    }
    let missing: Vec<_> = OWNERS.iter().filter(|o| !found.contains(*o)).collect();
    assert!(missing.is_empty(), "owner types not found: {missing:?}");
}

fn only_the_adapter_knows_fuser() {
    for (path, text) in sources() {
        if path.ends_with("fs/adapter.rs") {
            assert!(
                text.contains("fuser::"),
                "the adapter no longer uses fuser?"
            );
            continue;
        }
        for line in code(&text).lines() {
            assert!(
                !line.contains("fuser::") && !line.contains("use fuser"),
                "{}: fuser outside the adapter: {line}",
                path.display(),
            );
        }
    }
}

/// `crate::a::...` paths used by each top-level module (outside its tests).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let rel = path.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        for part in code(&text).split("crate::").skip(1) {
            let used: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !used.is_empty() && used != module {
                graph.entry(module.clone()).or_default().insert(used);
            }
        }
    }
    graph
}

fn no_module_imports_one_that_imports_it() {
    let graph = imports();
    assert!(graph.get("fs").is_some_and(|u| u.contains("watch")));
    let mut circles = Vec::new();
    for (a, uses) in &graph {
        for b in uses {
            if a < b && graph.get(b).is_some_and(|u| u.contains(a)) {
                circles.push(format!("{a} <-> {b}"));
            }
        }
    }
    // Known and accepted: none.
    assert!(circles.is_empty(), "import circles: {circles:?}");
}

/// Every test file has a `[[test]]` entry with `harness = false` in Cargo.toml and lists its
/// tests in its `main` (tests/common/harness.rs), where the compiler names any function it
/// forgot. A `#[test]` function in such a file would be left out without a word: only the
/// standard harness collects those.
fn every_test_file_runs_under_the_suites_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy();
        assert!(
            manifest.contains(&format!("[[test]]\nname = \"{name}\"\nharness = false\n")),
            "Cargo.toml has no `[[test]] name = \"{name}\" harness = false` entry"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("fn main() -> std::process::ExitCode {"),
            "tests/{name}.rs has no main listing its tests"
        );
        for (i, line) in text.lines().enumerate() {
            assert!(
                !line.trim_start().starts_with("#[test]"),
                "tests/{name}.rs:{}: a #[test] function, which this harness never runs; \
                 list it in main instead",
                i + 1
            );
        }
        checked += 1;
    }
    assert!(checked > 10, "only {checked} test files found");
}
