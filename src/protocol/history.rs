//! ReadPodOutput's text extraction, with strict parsing of the entry kinds that carry text.
//!
//! The runtime once went blind silently: it parsed an obsolete entry layout, skipped every
//! `assistant_item`, and reported "no new assistant text" forever. podfs therefore counts
//! entries of a known kind that do not have the expected shape, so "nothing parsed" can be
//! told apart from "nothing new" (and is logged by the caller).

use serde_json::Value;

/// The result of extracting assistant text from a slice of history entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extraction {
    /// Assistant message text, parts joined by a blank line.
    pub text: String,
    /// Entries of a text-carrying kind that did not have the expected shape.
    pub malformed: usize,
}

/// Extract the text of `entries` exactly as the runtime's ReadPodOutput does: an
/// `assistant_item` contributes its item, a `segment_start` each item of its `history`;
/// of those, only `message` items with role `assistant` and their `text` parts count.
pub fn extract(entries: &[Value]) -> Extraction {
    let mut out = Extraction::default();
    for entry in entries {
        let items: Option<Vec<&Value>> = match entry.get("kind").and_then(Value::as_str) {
            Some("assistant_item") => entry.get("item").map(|i| vec![i]),
            Some("segment_start") => entry
                .get("history")
                .and_then(Value::as_array)
                .map(|h| h.iter().collect()),
            Some(_) => continue,
            None => None,
        };
        let Some(items) = items else {
            out.malformed += 1;
            continue;
        };
        for item in items {
            if append_item(item, &mut out.text).is_none() {
                out.malformed += 1;
            }
        }
    }
    out
}

/// Append one LoggedItem's assistant text; `None` when the item is not shaped as expected.
fn append_item(item: &Value, out: &mut String) -> Option<()> {
    let kind = item.get("kind")?.as_str()?;
    if kind != "message" {
        return Some(());
    }
    let role = item.get("role")?.as_str()?;
    let content = item.get("content")?.as_array()?;
    if role != "assistant" {
        return Some(());
    }
    // Validate every part before appending any, so a bad part adds nothing half-way.
    let mut texts = Vec::new();
    for part in content {
        match part.get("kind")?.as_str()? {
            "text" => texts.push(part.get("text")?.as_str()?),
            _ => continue,
        }
    }
    for text in texts {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(text);
    }
    Some(())
}

/// The slice ReadPodOutput would read from `cursor`, and the new cursor, with podfs's one
/// deviation: if the history shrank below the cursor (compaction, rewind), start again
/// from the beginning instead of skipping text.
pub fn window(len: usize, cursor: u64) -> std::ops::Range<usize> {
    let start = usize::try_from(cursor).unwrap_or(usize::MAX);
    if start > len {
        0..len
    } else {
        start..len
    }
}

/// `text` as a file body: newline-terminated like every value file, empty stays empty.
pub fn as_file_text(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::{Event, Snapshot, Want};
    use crate::store::fixtures;
    use serde_json::json;

    fn snapshot(rel: &str) -> Snapshot {
        let text = fixtures::read(rel, "/h");
        let line = text.lines().next().unwrap();
        Snapshot::from_event(&Event::parse(line.as_bytes()).unwrap(), Want::History).unwrap()
    }

    #[test]
    fn fixture_histories() {
        let s = snapshot("socket/child1-prelude.jsonl");
        assert_eq!(s.entries.len(), 7);
        let x = extract(&s.entries);
        assert_eq!(x.text, "echo: child1 task: describe the files under sub1");
        assert_eq!(x.malformed, 0);
        let s = snapshot("socket/child2-prelude.jsonl");
        assert_eq!(
            extract(&s.entries).text,
            "echo: child2 task: review the work directory"
        );
        let s = snapshot("socket/parent-fresh-prelude.jsonl");
        assert!(s.entries.is_empty());
        assert_eq!(extract(&s.entries), Extraction::default());
    }

    #[test]
    fn the_reference_example() {
        let entries: Vec<Value> = [
            json!({"kind":"invoke","ts":1,"trigger":"user_send"}),
            json!({"kind":"user_input","ts":2,"segments":[{"kind":"text","content":"summarise docs/"}]}),
            json!({"kind":"assistant_item","ts":3,"item":{"kind":"tool_call","call_id":"c1","name":"Read","arguments":"{}"}}),
            json!({"kind":"tool_result","ts":4,"item":{"kind":"tool_result","call_id":"c1","summary":"read"}}),
            json!({"kind":"assistant_item","ts":5,"item":{"kind":"message","role":"assistant","content":[{"kind":"text","text":"Docs cover setup."},{"kind":"refusal","refusal":"no"},{"kind":"text","text":"Nothing is missing."}]}}),
            json!({"kind":"turn_end","ts":6,"turn_count":1}),
        ]
        .into();
        let x = extract(&entries);
        assert_eq!(x.text, "Docs cover setup.\n\nNothing is missing.");
        assert_eq!(x.malformed, 0);
    }

    #[test]
    fn segment_start_history_contributes_assistant_messages_only() {
        let entries = vec![json!({"kind":"segment_start","history":[
            {"kind":"message","role":"user","content":[{"kind":"text","text":"q"}]},
            {"kind":"message","role":"assistant","content":[{"kind":"text","text":"a1"}]},
            {"kind":"reasoning","text":"hidden"},
            {"kind":"message","role":"assistant","content":[{"kind":"text","text":"a2"}]}
        ]})];
        assert_eq!(extract(&entries).text, "a1\n\na2");
    }

    #[test]
    fn an_obsolete_layout_is_counted_not_silently_skipped() {
        let entries = vec![
            json!({"kind":"assistant_item","message":{"text":"old layout"}}),
            json!({"kind":"assistant_item","item":{"kind":"message","role":"assistant","content":[{"kind":"text"}]}}),
            json!({"ts":1}),
            json!({"kind":"some_future_kind","x":1}),
        ];
        let x = extract(&entries);
        assert_eq!(x.text, "");
        assert_eq!(x.malformed, 3);
    }

    #[test]
    fn window_restarts_after_shrink() {
        assert_eq!(window(7, 0), 0..7);
        assert_eq!(window(7, 7), 7..7);
        assert_eq!(window(7, 5), 5..7);
        assert_eq!(window(3, 5), 0..3, "history shrank below the cursor");
        assert_eq!(window(3, u64::MAX), 0..3);
    }
}
