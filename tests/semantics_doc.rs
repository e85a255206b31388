//! docs/semantics.md stays honest: every test it names exists.

#[macro_use]
mod common;

use std::path::Path;

use common::harness::{Need, Suite};

fn main() -> std::process::ExitCode {
    Suite::new()
        .add(
            &Need::Met,
            tests![every_test_named_in_the_semantics_document_exists,],
        )
        .run()
}

fn every_test_named_in_the_semantics_document_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/semantics.md")).unwrap();
    let mut checked = 0;
    for row in doc
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| claim"))
    {
        let refs: Vec<&str> = row.split('`').filter(|s| s.contains(".rs::")).collect();
        assert!(!refs.is_empty(), "a claim without a test: {row}");
        for r in refs {
            let (file, name) = r.split_once("::").unwrap();
            let source = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("{file} (named in docs/semantics.md): {e}"));
            assert!(
                source.contains(&format!("fn {name}(")),
                "docs/semantics.md names {file}::{name}, which does not exist"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 50,
        "only {checked} references found; is the table format intact?"
    );
}
