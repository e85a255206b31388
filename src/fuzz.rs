//! Property tests over every parser of outside input: control-file writes, runtime files,
//! protocol lines and history entries. None may panic; each accepts exactly its grammar.
//!
//! `cargo test --lib fuzz` runs 256 cases per property; the long run sets
//! `PROPTEST_CASES` (see docs/reliability.md), e.g. 125,000 × 8 properties = 1,000,000.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::fs::files::{parse_cursor, parse_input, INPUT_LIMIT};
use crate::protocol::history::{extract, window};
use crate::protocol::wire::{Event, Snapshot, Want};
use crate::scope::{parse_scope_line, StoredRule};
use crate::store::metadata::Metadata;
use crate::store::pods_table::PodsTable;
use crate::store::spawned;

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z_]{0,12}".prop_map(Value::String),
        Just(json!("write")),
        Just(json!("read")),
        Just(json!("assistant")),
        Just(json!("message")),
        Just(json!("text")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Keys the parsers look for, mixed with noise, so generated objects reach deep paths.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("pod_name".to_string()),
        Just("spawned_children".to_string()),
        Just("reclaimed_children".to_string()),
        Just("scope_delegated".to_string()),
        Just("socket_path".to_string()),
        Just("callback_address".to_string()),
        Just("target".to_string()),
        Just("permission".to_string()),
        Just("recursive".to_string()),
        Just("allocations".to_string()),
        Just("kind".to_string()),
        Just("item".to_string()),
        Just("role".to_string()),
        Just("content".to_string()),
        Just("text".to_string()),
        Just("history".to_string()),
        Just("event".to_string()),
        Just("data".to_string()),
        Just("entries".to_string()),
        Just("status".to_string()),
        "[a-z]{1,6}",
    ]
}

fn rule() -> impl Strategy<Value = StoredRule> {
    (
        "/[a-z/ ]{0,12}",
        prop_oneof![Just("read"), Just("write")],
        any::<bool>(),
    )
        .prop_map(|(t, p, r)| StoredRule::new(&t, p, r))
}

proptest! {
    #[test]
    fn fuzz_cursor_accepts_exactly_its_grammar(data in prop::collection::vec(any::<u8>(), 0..32)) {
        let body = data.strip_suffix(b"\n").unwrap_or(&data);
        let valid = !body.is_empty()
            && body.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(body).unwrap().parse::<u64>().is_ok();
        match parse_cursor(&data) {
            Ok(v) => {
                prop_assert!(valid);
                prop_assert_eq!(v, std::str::from_utf8(body).unwrap().parse::<u64>().unwrap());
            }
            Err(e) => {
                prop_assert!(!valid);
                prop_assert_eq!(e.errno(), libc::EINVAL);
            }
        }
    }

    #[test]
    fn fuzz_input_never_panics_and_respects_the_limit(
        data in prop::collection::vec(any::<u8>(), 0..256),
        pad in 0usize..2,
    ) {
        let mut data = data;
        if pad == 1 {
            data.resize(INPUT_LIMIT + 1, b'a');
        }
        match parse_input(&data) {
            Ok(text) => {
                prop_assert!(data.len() <= INPUT_LIMIT);
                prop_assert!(!text.is_empty());
                prop_assert!(data.starts_with(text.as_bytes()));
            }
            Err(e) => prop_assert!([libc::EINVAL, libc::EFBIG].contains(&e.errno())),
        }
    }

    #[test]
    fn fuzz_event_lines(bytes in prop::collection::vec(any::<u8>(), 0..64), value in json_value()) {
        let _ = Event::parse(&bytes);
        let line = serde_json::to_vec(&json!({"event": "snapshot", "data": value})).unwrap();
        if let Ok(event) = Event::parse(&line) {
            let _ = event.error();
            let _ = event.kind();
            for want in [Want::Status, Want::History] {
                if let Ok(s) = Snapshot::from_event(&event, want) {
                    let _ = s.status();
                    let _ = extract(&s.entries);
                }
            }
        }
    }

    #[test]
    fn fuzz_history_extraction(entries in prop::collection::vec(json_value(), 0..12), cursor in any::<u64>()) {
        let x = extract(&entries);
        prop_assert!(x.malformed <= entries.iter().map(|e| 1 + e.get("history").and_then(Value::as_array).map_or(0, Vec::len)).sum::<usize>());
        let r = window(entries.len(), cursor);
        prop_assert!(r.start <= r.end && r.end == entries.len());
    }

    #[test]
    fn fuzz_metadata(bytes in prop::collection::vec(any::<u8>(), 0..64), value in json_value(), name in "[a-z0-9]{1,6}") {
        let _ = Metadata::parse(&bytes);
        let text = serde_json::to_vec(&value).unwrap();
        if let Ok(mut meta) = Metadata::parse(&text) {
            // What parses survives a rewrite unchanged, and a reclaim never panics.
            let again = Metadata::parse(&meta.to_bytes()).unwrap();
            prop_assert_eq!(&again, &meta);
            let listed = meta.child(&name).is_some();
            let before = meta.reclaimed_children.len();
            let reclaimed = meta.reclaim_child(&name);
            prop_assert_eq!(reclaimed.is_some(), listed);
            prop_assert!(meta.child(&name).is_none());
            prop_assert_eq!(meta.reclaimed_children.len(), before + usize::from(listed));
        }
    }

    #[test]
    fn fuzz_pods_table(bytes in prop::collection::vec(any::<u8>(), 0..64), value in json_value(),
                       rules in prop::collection::vec(rule(), 0..4)) {
        let _ = PodsTable::parse(&bytes);
        if let Ok(mut table) = PodsTable::parse(&serde_json::to_vec(&value).unwrap()) {
            let again = PodsTable::parse(&table.to_bytes()).unwrap();
            prop_assert_eq!(&again, &table);
            let n = table.allocations.len();
            let report = table.reclaim_delegated_scope("pod_name", "x", &rules);
            prop_assert!(table.allocations.len() + usize::from(report.child_allocation_removed) == n);
        }
    }

    #[test]
    fn fuzz_spawned_pods(bytes in prop::collection::vec(any::<u8>(), 0..64), value in json_value()) {
        let _ = spawned::parse(&bytes);
        let _ = spawned::parse(&serde_json::to_vec(&value).unwrap());
    }

    #[test]
    fn fuzz_scope_lines(line in ".{0,40}", rule in rule()) {
        if let Some(parsed) = parse_scope_line(&line) {
            prop_assert_eq!(parsed.to_string(), line);
        }
        prop_assert_eq!(parse_scope_line(&rule.to_string()), Some(rule));
    }
}
