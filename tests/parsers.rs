//! Property tests over everything podfs parses from outside: control-file writes however
//! they are chunked, the runtime's files, protocol lines, history entries, and the event
//! stream that keeps a history current. Each property states what must hold.
//!
//! `cargo test --test parsers` runs 256 cases per property; `PROPTEST_CASES` raises it.

#[macro_use]
mod common;

use common::cursor_grammar;
use common::harness::{Need, Suite};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use podfs::fs::writes::{Child, CursorValue, Delivery, Message, INPUT_LIMIT};
use podfs::generation::{Generation, INSOMNIA_5472, YOI_WORKER_485918EB};
use podfs::protocol::history::{effective_cursor, History, Tracker};
use podfs::protocol::wire::{Event, PodStatus};
use podfs::scope::{parse_scope_line, StoredRule};
use podfs::store::alloc::AllocTable;
use podfs::store::metadata::{parse_registry, Metadata, SpawnedChild};
use podfs::store::mirror;

fn main() -> std::process::ExitCode {
    Suite::new()
        .add(
            &Need::Met,
            tests![
                cursor_writes_accept_exactly_the_grammar_however_chunked,
                a_message_is_the_same_however_it_is_chunked_or_nothing,
                a_busy_or_unreachable_child_refuses_the_whole_message,
                event_lines_never_panic,
                a_snapshot_and_generic_entries_give_the_same_history,
                events_count_the_entries_the_runtime_logs,
                metadata_survives_rewrites_and_reclaims,
                the_allocation_table_survives_rewrites_and_reclaims,
                mirrors_parse_or_fail_cleanly,
                scope_lines_round_trip,
                store_parsers_meet_serde_edge_cases_with_errors_not_panics,
            ],
        )
        .run()
}

/// Any JSON value, a few levels deep, biased toward the keys the parsers look for.
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

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("pod_name".to_string()),
        Just("worker_name".to_string()),
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

fn generation() -> impl Strategy<Value = &'static Generation> {
    prop_oneof![Just(&INSOMNIA_5472), Just(&YOI_WORKER_485918EB)]
}

/// Cut `data` at the given points (sorted, deduplicated, within bounds).
fn chunks(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.push(0);
    points.push(data.len());
    points.sort();
    points.dedup();
    points
        .windows(2)
        .map(|w| data[w[0]..w[1]].to_vec())
        .filter(|c| !c.is_empty())
        .collect()
}

/// What one message should deliver, restated: the bytes as one text, one trailing newline
/// stripped; refused if too long, not UTF-8, or empty after the strip.
fn input_grammar(data: &[u8]) -> Option<String> {
    if data.is_empty() || data.len() > INPUT_LIMIT {
        return None;
    }
    let text = std::str::from_utf8(data).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    (!text.is_empty()).then(|| text.to_string())
}

fn assistant(text: &str) -> Value {
    json!({"kind": "assistant_item", "ts": 1, "item": {"kind": "message", "role": "assistant", "content": [{"kind": "text", "text": text}]}})
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: common::regressions_beside_the_test(),
        .. ProptestConfig::default()
    })]

    fn cursor_writes_accept_exactly_the_grammar_however_chunked(
        data in prop::collection::vec(prop_oneof![Just(b'1'), Just(b'0'), Just(b'\n'), Just(b' '), any::<u8>()], 0..24),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut value = CursorValue::default();
        let mut refused_at = None;
        for (i, chunk) in chunks(&data, &cuts).iter().enumerate() {
            if value.write(chunk, None).is_err() {
                refused_at = Some(i);
                break;
            }
        }
        match cursor_grammar(&data) {
            Some(expected) => {
                prop_assert_eq!(refused_at, None);
                prop_assert_eq!(value.at_close().unwrap(), expected);
            }
            None => {
                // Refused at some write or at close, and then for good.
                let closed = value.at_close();
                prop_assert!(refused_at.is_some() || closed.is_err() || data.is_empty());
                if let Err(e) = closed {
                    prop_assert_eq!(e.errno(), libc::EINVAL);
                }
                prop_assert!(value.write(b"1", None).is_err() || refused_at.is_none());
            }
        }
    }

    fn a_message_is_the_same_however_it_is_chunked_or_nothing(
        data in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'\n'), Just(0xc3u8), Just(0xa9u8), any::<u8>()], 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        pad in 0usize..3,
    ) {
        let mut data = data;
        if pad == 2 {
            data.resize(INPUT_LIMIT + 1, b'a');
        }
        let mut message = Message::default();
        let mut refused = None;
        let pieces = chunks(&data, &cuts);
        // A first write of a lone newline would be an empty message if the writer closed
        // there (`echo > input`); it is refused at that write, whatever might follow.
        let lone_newline_first = pieces.first().is_some_and(|c| c == b"\n");
        for chunk in pieces {
            if let Err(e) = message.write(&chunk, Child::Takes) {
                refused = Some(e.errno());
                break;
            }
        }
        let closed = message.at_close();
        let delivery = message.finish();
        match input_grammar(&data).filter(|_| !lone_newline_first) {
            Some(text) => {
                prop_assert_eq!(refused, None);
                prop_assert!(closed.is_ok());
                prop_assert_eq!(delivery, Delivery::Send(text));
            }
            None if data.is_empty() => prop_assert_eq!(delivery, Delivery::Nothing),
            None => {
                // Refused at a write or at close, never sent.
                prop_assert!(refused.is_some() || closed.is_err(), "{:?}", data);
                for errno in refused.into_iter().chain(closed.err().map(|e| e.errno())) {
                    prop_assert!([libc::EINVAL, libc::EFBIG].contains(&errno));
                }
                prop_assert!(matches!(delivery, Delivery::Dropped(_)));
            }
        }
    }

    fn a_busy_or_unreachable_child_refuses_the_whole_message(
        parts in prop::collection::vec("[a-z]{1,5}", 1..5),
        fail_at in any::<prop::sample::Index>(),
        busy in any::<bool>(),
    ) {
        let at = fail_at.index(parts.len());
        let mut message = Message::default();
        let state = if busy { Child::Busy } else { Child::Unreachable };
        let errno = if busy { libc::EBUSY } else { libc::EHOSTDOWN };
        for (i, p) in parts.iter().enumerate() {
            let child = if i >= at { state } else { Child::Takes };
            let r = message.write(p.as_bytes(), child);
            prop_assert_eq!(r.is_err(), i >= at);
            if let Err(e) = r {
                prop_assert_eq!(e.errno(), errno);
            }
        }
        prop_assert_eq!(message.at_close().unwrap_err().errno(), errno);
        prop_assert!(matches!(message.finish(), Delivery::Dropped(_)));
    }

    fn event_lines_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), value in json_value()) {
        let parsed = Event::parse(&bytes);
        prop_assert!(parsed.is_ok() || parsed.is_err());
        let line = serde_json::to_vec(&json!({"event": "snapshot", "data": value})).unwrap();
        let event = Event::parse(&line).unwrap();
        prop_assert_eq!(&*event.name, "snapshot");
        if let Ok(s) = History::from_snapshot(event.raw_data()) {
            prop_assert!(s.history.len() <= 1 + line.len() as u64);
        }
    }

    fn a_snapshot_and_generic_entries_give_the_same_history(
        entries in prop::collection::vec(prop_oneof![
            json_value(),
            "[a-z ]{0,10}".prop_map(|t| assistant(&t)),
            Just(json!({"kind": "turn_end", "ts": 1, "turn_count": 1})),
        ], 0..12),
        cursor in 0u64..16,
    ) {
        let h = History::from_entries(&entries);
        let s = History::from_snapshot(&json!({"entries": entries, "status": "idle"}).to_string()).unwrap();
        prop_assert_eq!(&s.history, &h);
        prop_assert_eq!(s.status, PodStatus::Idle);
        prop_assert_eq!(h.len(), entries.len() as u64);
        // The text from a cursor is the text the entries from there on carry.
        let start = effective_cursor(h.len(), cursor) as usize;
        let tail = History::from_entries(&entries[start..]);
        prop_assert_eq!(h.text_from(start as u64), tail.text());
    }

    /// Runs shaped like the runtime logs them (section 9.1 of the reference): the events a
    /// run broadcasts, and the entries it commits. The tracker's count must be the runtime's.
    fn events_count_the_entries_the_runtime_logs(
        runs in prop::collection::vec((
            any::<bool>(),                                   // a user message (else a notification)
            0usize..3,                                       // system items
            any::<bool>(),                                   // insomnia's order (user message first)
            prop::collection::vec((0usize..3, prop::collection::vec("[a-z]{1,4}", 0..3)), 1..4),
        ), 1..5),
        fresh in any::<bool>(),
    ) {
        let mut history = History::default();
        let mut entries: Vec<Value> = Vec::new();
        if !fresh {
            history.push_entries(1);
            entries.push(json!({"kind": "segment_start", "history": []}));
        }
        let mut tracker = Tracker::after_snapshot(PodStatus::Idle);
        // Lines as the reactor gets them; each event is parsed where it lies when applied.
        let ev = |line: Value| line.to_string();
        for (user, items, insomnia_order, calls) in runs {
            let mut events = Vec::new();
            if user && insomnia_order {
                events.push(ev(json!({"event": "user_message", "data": {"segments": []}})));
            }
            events.push(ev(json!({"event": "status", "data": {"status": "running"}})));
            events.push(ev(json!({"event": "invoke_start", "data": {"kind": "user_send"}})));
            if entries.is_empty() {
                entries.push(json!({"kind": "segment_start", "history": []}));
            }
            entries.push(json!({"kind": "invoke"}));
            if user {
                if !insomnia_order {
                    events.push(ev(json!({"event": "user_message", "data": {"segments": []}})));
                }
                entries.push(json!({"kind": "user_input"}));
            }
            for _ in 0..items {
                events.push(ev(json!({"event": "system_item", "data": {"item": {}}})));
                entries.push(json!({"kind": "system_item"}));
            }
            for (i, (tools, texts)) in calls.iter().enumerate() {
                events.push(ev(json!({"event": "turn_start", "data": {"turn": i}})));
                events.push(ev(json!({"event": "llm_call_start", "data": {"llm_call": i}})));
                for t in texts {
                    events.push(ev(json!({"event": "text_delta", "data": {"text": t}})));
                    events.push(ev(json!({"event": "text_done", "data": {"text": t}})));
                }
                for _ in 0..*tools {
                    events.push(ev(json!({"event": "tool_call_done", "data": {"id": "c", "name": "Read", "arguments": "{}"}})));
                    entries.push(json!({"kind": "assistant_item", "item": {"kind": "tool_call"}}));
                }
                events.push(ev(json!({"event": "usage", "data": {"input_tokens": 1, "output_tokens": 1}})));
                events.push(ev(json!({"event": "llm_call_end", "data": {"llm_call": i}})));
                if !texts.is_empty() {
                    let content: Vec<Value> = texts.iter().map(|t| json!({"kind": "text", "text": t})).collect();
                    entries.push(json!({"kind": "assistant_item", "item": {"kind": "message", "role": "assistant", "content": content}}));
                }
                events.push(ev(json!({"event": "turn_end", "data": {"turn": i, "result": "finished"}})));
                for _ in 0..*tools {
                    events.push(ev(json!({"event": "tool_result", "data": {"id": "c", "summary": "", "is_error": false}})));
                    entries.push(json!({"kind": "tool_result", "item": {"kind": "tool_result"}}));
                }
            }
            entries.push(json!({"kind": "turn_end"}));
            for _ in &calls {
                entries.push(json!({"kind": "llm_usage"}));
            }
            entries.push(json!({"kind": "run_completed"}));
            events.push(ev(json!({"event": "run_end", "data": {"result": "finished"}})));
            events.push(ev(json!({"event": "status", "data": {"status": "idle"}})));
            for line in &events {
                let e = Event::parse(line.as_bytes()).unwrap();
                let c = tracker.apply(&mut history, &e);
                prop_assert!(!c.resync, "a plain run must not need a Snapshot");
            }
            let logged = History::from_entries(&entries);
            prop_assert_eq!(history.len(), logged.len());
            prop_assert_eq!(history.text(), logged.text());
        }
    }

    fn metadata_survives_rewrites_and_reclaims(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        value in json_value(),
        name in "[a-z0-9]{1,6}",
        gen in generation(),
    ) {
        prop_assert!(Metadata::parse(&bytes, gen).is_err() || !bytes.is_empty());
        let text = serde_json::to_vec(&value).unwrap();
        match Metadata::parse(&text, gen) {
            Ok(mut meta) => {
                // The lean view serves exactly the well-formed entries, and counts the rest.
                let lean = parse_registry(&text, gen).unwrap();
                let list = value["spawned_children"].as_array().cloned().unwrap_or_default();
                let wellformed: Vec<String> = list
                    .iter()
                    .filter_map(|c| SpawnedChild::from_value(c, gen).ok())
                    .map(|c| c.name)
                    .collect();
                let served: Vec<String> = lean.spawned.iter().map(|c| c.name.to_string()).collect();
                prop_assert_eq!(served, wellformed);
                // What parses survives a rewrite unchanged, and a reclaim never panics.
                let again = Metadata::parse(&meta.to_bytes(), gen).unwrap();
                prop_assert_eq!(&again, &meta);
                let named = list.iter().any(|c| c.get(gen.name_key).and_then(Value::as_str) == Some(name.as_str()));
                let before = meta.times_reclaimed(&name);
                prop_assert_eq!(meta.reclaim_child(&name), named);
                prop_assert!(meta.child(&name).is_none());
                prop_assert_eq!(meta.times_reclaimed(&name), before + usize::from(named));
            }
            Err(_) => prop_assert!(parse_registry(&text, gen).is_err() || value.get(gen.name_key).is_some()),
        }
    }

    fn the_allocation_table_survives_rewrites_and_reclaims(
        value in json_value(),
        rules in prop::collection::vec(rule(), 0..4),
        gen in generation(),
    ) {
        if let Ok(mut table) = AllocTable::parse(&serde_json::to_vec(&value).unwrap(), gen) {
            let again = AllocTable::parse(&table.to_bytes(), gen).unwrap();
            prop_assert_eq!(&again, &table);
            let n = table.names().len();
            // Generated values fit a float: nothing makes an allocation unwritable here.
            let report = table.reclaim_delegated_scope("parent", "x", &rules).unwrap();
            prop_assert_eq!(table.names().len() + usize::from(report.child_allocation_removed), n);
            prop_assert!(!table.contains("x"));
        }
    }

    fn mirrors_parse_or_fail_cleanly(value in json_value(), gen in generation()) {
        if let Ok(records) = mirror::parse(&serde_json::to_vec(&value).unwrap(), gen) {
            prop_assert!(records.iter().all(|r| r.get(gen.name_key).is_some_and(Value::is_string)));
        }
    }

    fn scope_lines_round_trip(line in ".{0,40}", rule in rule()) {
        if let Some(parsed) = parse_scope_line(&line) {
            prop_assert_eq!(parsed.to_string(), line);
        }
        prop_assert_eq!(parse_scope_line(&rule.to_string()), Some(rule));
    }
}

/// JSON texts with the edge cases serde meets in files written by others: numbers no
/// float holds, `-0`, repeated keys, a byte-order mark, deep nesting, invalid UTF-8.
fn edgy_text() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        Just("1e400"),
        Just("-1e400"),
        Just("1e-400"),
        Just("-0"),
        Just("-0.0"),
        Just("18446744073709551616"),
        Just("-9223372036854775809"),
        Just("0.1e999999999"),
        Just("4"),
    ];
    let piece = prop_oneof![
        number.prop_map(|n| n.to_string()),
        Just("\"\\ud800\"".to_string()),
        Just("\"a\\u0000b\"".to_string()),
        (1usize..300).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
        Just("{\"k\":1,\"k\":2}".to_string()),
    ];
    (
        prop::collection::vec(piece, 1..4),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just("pod_name"), Just("worker_name")],
    )
        .prop_map(|(pieces, bom, bad_utf8, key)| {
            let extra = pieces.join(",");
            let mut text = Vec::new();
            if bom {
                text.extend_from_slice("\u{feff}".as_bytes());
            }
            text.extend_from_slice(
                format!(
                    r#"{{"{key}":"p","{key}":"p","weight":[{extra}],"spawned_children":[{{"{key}":"c","socket_path":"/s","callback_address":"","scope_delegated":[],"x":[{extra}]}}],"allocations":[{{"{key}":"p","pid":1,"scope_deny":[],"delegated_from":null,"n":[{extra}]}},{{"{key}":"c","pid":2,"delegated_from":"p","weight":[{extra}]}},{{"{key}":"g","delegated_from":"c","n":[{extra}]}}]}}"#
                )
                .as_bytes(),
            );
            if bad_utf8 {
                let at = text.len() / 2;
                text.insert(at, 0xff);
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: common::regressions_beside_the_test(),
        .. ProptestConfig::default()
    })]

    fn store_parsers_meet_serde_edge_cases_with_errors_not_panics(text in edgy_text(), gen in generation()) {
        // Whatever parses is used; whatever does not is an error. Nothing panics.
        let lean = parse_registry(&text, gen);
        if let Ok(mut meta) = Metadata::parse(&text, gen) {
            prop_assert!(lean.is_ok());
            meta.reclaim_child("c");
            let _ = Metadata::parse(&meta.to_bytes(), gen);
        }
        if let Ok(mut table) = AllocTable::parse(&text, gen) {
            let rules = [StoredRule::new("/w", "write", true)];
            let before = table.to_bytes();
            // Moving g up a level rewrites it: with a number no value holds, the reclaim
            // fails and leaves the table as it was.
            if table.reclaim_delegated_scope("p", "c", &rules).is_err() {
                prop_assert_eq!(table.to_bytes(), before);
            }
        }
        let _ = mirror::parse(&text, gen);
        let line = [br#"{"event":"snapshot","data":{"entries":["#.as_slice(), &text, b"]}}"].concat();
        if let Ok(event) = Event::parse(&line) {
            let _ = History::from_snapshot(event.raw_data());
        }
    }
}
