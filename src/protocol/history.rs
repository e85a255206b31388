//! A child's history as podfs keeps it: how many entries the current segment has, and the
//! assistant text those entries carry, with the entry each text part belongs to.
//!
//! It is built once from a Snapshot ([`History::from_snapshot`]) and then kept current from
//! the child's event stream ([`Tracker`]), because the child serialises its whole history
//! on every connect: asking again per read would cost it (and podfs) megabytes per `cat`.
//!
//! The text extraction is ReadPodOutput's: an `assistant_item` contributes its item, a
//! `segment_start` each item of its `history`; of those, only `message` items with role
//! `assistant` and their `text` parts count, joined by a blank line. The runtime once went
//! blind silently (it parsed an obsolete layout and reported "no new assistant text"
//! forever), so entries of a text-carrying kind that do not have the expected shape are
//! counted in [`History::malformed`] and logged by the caller.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::wire::{Event, PodStatus};

/// Separator between text parts, as in ReadPodOutput.
const JOIN: &str = "\n\n";

/// One text part: the entry it belongs to and where it starts in [`History::text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    entry: u64,
    start: usize,
    /// An empty part adds no text, and no separator before the next part if nothing came
    /// before it.
    empty: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    len: u64,
    text: String,
    parts: Vec<Part>,
    /// Entries of a text-carrying kind that did not have the expected shape.
    pub malformed: usize,
}

/// What a Snapshot says.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub history: History,
    pub status: PodStatus,
}

impl History {
    /// The number of entries in the current segment (the cursor's unit).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All assistant text of the current segment, parts joined by a blank line.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text of the entries from `cursor` on: what ReadPodOutput returns for that cursor.
    /// It starts at the first non-empty part: ReadPodOutput puts a separator before a part
    /// only when its own output is not empty yet.
    pub fn text_from(&self, cursor: u64) -> &str {
        let first = self.parts.partition_point(|p| p.entry < cursor);
        match self.parts[first..].iter().find(|p| !p.empty) {
            Some(p) => &self.text[p.start..],
            None => "",
        }
    }

    /// The text a reader whose cursor is `cursor` has not read: what the next open of
    /// `output` takes ([`effective_cursor`]'s rule applied).
    pub fn unread(&self, cursor: u64) -> &str {
        self.text_from(effective_cursor(self.len(), cursor))
    }

    /// Memory held, for the watches' budget.
    pub fn bytes(&self) -> usize {
        self.text.capacity() + self.parts.capacity() * std::mem::size_of::<Part>()
    }

    fn push_text(&mut self, entry: u64, text: &str) {
        if !self.text.is_empty() {
            self.text.push_str(JOIN);
        }
        self.parts.push(Part {
            entry,
            start: self.text.len(),
            empty: text.is_empty(),
        });
        self.text.push_str(text);
    }

    /// `n` entries that carry no assistant text.
    pub fn push_entries(&mut self, n: u64) {
        self.len += n;
    }

    /// One assistant message entry with these text parts.
    pub fn push_message<S: AsRef<str>>(&mut self, parts: &[S]) {
        let entry = self.len;
        for part in parts {
            self.push_text(entry, part.as_ref());
        }
        self.len += 1;
    }

    /// Build from generic entries (tests, reference pods).
    pub fn from_entries(entries: &[Value]) -> History {
        let mut h = History::default();
        for entry in entries {
            h.push_entry_value(entry);
        }
        h
    }

    fn push_entry_value(&mut self, entry: &Value) {
        let index = self.len;
        self.len += 1;
        let items: Option<Vec<&Value>> = match entry.get("kind").and_then(Value::as_str) {
            Some("assistant_item") => entry.get("item").map(|i| vec![i]),
            Some("segment_start") => entry
                .get("history")
                .and_then(Value::as_array)
                .map(|h| h.iter().collect()),
            Some(_) => return,
            None => None,
        };
        let Some(items) = items else {
            self.malformed += 1;
            return;
        };
        for item in items {
            match assistant_texts(item) {
                Some(texts) => {
                    for t in texts {
                        self.push_text(index, t);
                    }
                }
                None => self.malformed += 1,
            }
        }
    }

    /// Parse a Snapshot's `data`. Only entries that can carry assistant text are decoded
    /// into values; the rest are skipped after reading their `kind`, so a 10 MB history of
    /// tool output costs little more than a scan.
    pub fn from_snapshot(data: &str) -> Result<Snapshot> {
        Self::from_snapshot_within(data, usize::MAX)
    }

    /// [`History::from_snapshot`], holding at most `limit` bytes while it builds: what
    /// the history keeps, plus the entry being decoded (whose text exists twice for a
    /// moment). Past it, `OverBudget`, with nothing kept.
    pub fn from_snapshot_within(data: &str, limit: usize) -> Result<Snapshot> {
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(borrow, default)]
            entries: Vec<&'a RawValue>,
            #[serde(default)]
            status: Option<String>,
        }
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(borrow, default)]
            kind: Option<Cow<'a, str>>,
        }
        let bad = |e: serde_json::Error| Error::Protocol(format!("snapshot does not parse: {e}"));
        let data: Data = serde_json::from_str(data).map_err(bad)?;
        let mut h = History::default();
        for raw in &data.entries {
            // Only an object has a kind (serde would read a struct from an array, too).
            let object = raw.get().trim_start().starts_with('{');
            let head: Head = match object {
                true => serde_json::from_str(raw.get()).unwrap_or(Head { kind: None }),
                false => Head { kind: None },
            };
            match head.kind.as_deref() {
                Some("assistant_item") | Some("segment_start") | None => {
                    let held = h.text.capacity() + h.parts.capacity() * std::mem::size_of::<Part>();
                    if held.saturating_add(raw.get().len().saturating_mul(2)) > limit {
                        return Err(Error::OverBudget(format!(
                            "the Snapshot's assistant text exceeds {limit} bytes"
                        )));
                    }
                    let value: Value = serde_json::from_str(raw.get()).map_err(bad)?;
                    h.push_entry_value(&value);
                }
                Some(_) => h.len += 1,
            }
        }
        // Held for as long as the child is watched: no spare capacity from the doubling.
        h.text.shrink_to_fit();
        h.parts.shrink_to_fit();
        Ok(Snapshot {
            history: h,
            status: PodStatus::from_wire(data.status.as_deref()),
        })
    }
}

/// The assistant text parts of one LoggedItem; `None` when it is not shaped as expected.
/// A bad part makes the whole item malformed, so nothing is appended half-way.
fn assistant_texts(item: &Value) -> Option<Vec<&str>> {
    let kind = item.get("kind")?.as_str()?;
    if kind != "message" {
        return Some(Vec::new());
    }
    let role = item.get("role")?.as_str()?;
    let content = item.get("content")?.as_array()?;
    if role != "assistant" {
        return Some(Vec::new());
    }
    let mut texts = Vec::new();
    for part in content {
        if part.get("kind")?.as_str()? == "text" {
            texts.push(part.get("text")?.as_str()?);
        }
    }
    Some(texts)
}

/// The slice ReadPodOutput would read from `cursor`, with podfs's one deviation: if the
/// history shrank below the cursor (compaction, rewind), start again from the beginning
/// instead of skipping text.
pub fn effective_cursor(len: u64, cursor: u64) -> u64 {
    if cursor > len {
        0
    } else {
        cursor
    }
}

/// What one event changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub status: Option<PodStatus>,
    /// The number of entries changed (the cursor's unit).
    pub len: bool,
    /// The assistant text grew.
    pub text: bool,
    /// The events cannot keep the history exact: take a fresh Snapshot.
    pub resync: bool,
}

/// Keeps a [`History`] current from the event stream.
///
/// The runtime logs a run as: `invoke`, `user_input`, `system_item`s, per LLM call the tool
/// calls and their results followed by the assistant message, then **one** `turn_end`, one
/// `llm_usage` per call, and `run_completed`. The events announce the same things in their
/// own order (`usage` during each call, a `turn_end` per step), so the entries that are
/// logged at the end of a run are counted at `run_end`. Checked against the real transcripts
/// in the golden fixtures (tests below).
///
/// What events cannot describe exactly (compaction, rewind, a new segment, a rolled-back or
/// interrupted run, a retried or continued LLM call, reasoning items, a run already under
/// way when the watch started) is answered with [`Changes::resync`]: one fresh Snapshot on
/// exactly those events.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    message: Vec<String>,
    usages: u64,
    turn_ended: bool,
    in_run: bool,
    unsure: bool,
}

impl Tracker {
    /// Bytes of assistant text announced (`text_done`) but not yet logged as a message.
    pub fn pending_bytes(&self) -> usize {
        self.message.iter().map(String::capacity).sum::<usize>()
            + self.message.capacity() * std::mem::size_of::<String>()
    }

    /// A tracker for a history whose Snapshot said `status`: a run already under way is
    /// only known from its end on, so its end asks for a fresh Snapshot.
    pub fn after_snapshot(status: PodStatus) -> Tracker {
        let running = status == PodStatus::Running;
        Tracker {
            unsure: running,
            in_run: running,
            ..Tracker::default()
        }
    }

    /// The first event of a run, whichever lane it comes on (insomnia announces the user
    /// message before `invoke_start`, yoi after): `segment_start` is written lazily, before
    /// the first run's entries.
    fn run_starts(&mut self, h: &mut History) {
        if !self.in_run {
            self.in_run = true;
            self.message.clear();
            self.usages = 0;
            self.turn_ended = false;
            if h.len == 0 {
                h.push_entries(1);
            }
        }
    }

    pub fn apply(&mut self, h: &mut History, event: &Event) -> Changes {
        let mut c = Changes::default();
        match &*event.name {
            "status" => c.status = Some(event.status_word()),
            "invoke_start" | "user_message" | "system_item" | "tool_call_done" | "tool_result" => {
                self.run_starts(h);
                h.push_entries(1);
                c.len = true;
            }
            "text_done" => {
                self.run_starts(h);
                match event.text() {
                    Some(text) => self.message.push(text),
                    None => self.unsure = true,
                }
            }
            "llm_call_end" if !self.message.is_empty() => {
                h.push_message(&self.message);
                self.message.clear();
                c.len = true;
                c.text = true;
            }
            "usage" => self.usages += 1,
            "turn_end" => self.turn_ended = true,
            "run_end" => {
                if event.result().as_deref() != Some("finished") || !self.message.is_empty() {
                    self.unsure = true;
                }
                h.push_entries(u64::from(self.turn_ended) + self.usages + 1);
                c.len = true;
                c.resync = std::mem::take(&mut self.unsure);
                self.message.clear();
                self.usages = 0;
                self.turn_ended = false;
                self.in_run = false;
            }
            "thinking_done" | "llm_retry" | "llm_continuation" => self.unsure = true,
            "error" => {
                let code = event.error().map(|(code, _)| code).unwrap_or_default();
                if !matches!(
                    code.as_str(),
                    "already_running" | "not_running" | "not_paused" | "invalid_request"
                ) {
                    self.unsure = true;
                }
            }
            "segment_rotated" | "compact_done" | "rewind_applied" => c.resync = true,
            _ => {}
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures as fixtures;
    use serde_json::json;

    /// A transcript's events; the text lives as long as the test (events borrow it).
    fn events(rel: &str) -> Vec<Event<'static>> {
        let text: &'static str = Box::leak(fixtures::read(rel, "/h").into_boxed_str());
        text.lines()
            .map(|l| Event::parse(l.as_bytes()).unwrap())
            .collect()
    }

    fn ev(line: &str) -> Event<'static> {
        let line: &'static str = Box::leak(line.to_string().into_boxed_str());
        Event::parse(line.as_bytes()).unwrap()
    }

    fn snapshot(rel: &str) -> Snapshot {
        let e = events(rel)
            .into_iter()
            .find(|e| e.name == "snapshot")
            .unwrap();
        History::from_snapshot(e.raw_data()).unwrap()
    }

    #[test]
    fn fixture_histories() {
        for gen in ["insomnia-5472", "yoi-485918eb"] {
            let s = snapshot(&format!("{gen}/socket/child1-prelude.jsonl"));
            assert_eq!(s.history.len(), 7);
            assert_eq!(s.status, PodStatus::Idle);
            assert_eq!(
                s.history.text(),
                "echo: child1 task: describe the files under sub1"
            );
            assert_eq!(s.history.malformed, 0);
            let s = snapshot(&format!("{gen}/socket/child2-prelude.jsonl"));
            assert_eq!(
                s.history.text(),
                "echo: child2 task: review the work directory"
            );
            let s = snapshot(&format!("{gen}/socket/parent-fresh-prelude.jsonl"));
            assert_eq!(s.history, History::default());
        }
    }

    #[test]
    fn the_reference_example() {
        let entries = vec![
            json!({"kind":"invoke","ts":1,"trigger":"user_send"}),
            json!({"kind":"user_input","ts":2,"segments":[{"kind":"text","content":"summarise docs/"}]}),
            json!({"kind":"assistant_item","ts":3,"item":{"kind":"tool_call","call_id":"c1","name":"Read","arguments":"{}"}}),
            json!({"kind":"tool_result","ts":4,"item":{"kind":"tool_result","call_id":"c1","summary":"read"}}),
            json!({"kind":"assistant_item","ts":5,"item":{"kind":"message","role":"assistant","content":[{"kind":"text","text":"Docs cover setup."},{"kind":"refusal","refusal":"no"},{"kind":"text","text":"Nothing is missing."}]}}),
            json!({"kind":"turn_end","ts":6,"turn_count":1}),
        ];
        let h = History::from_entries(&entries);
        assert_eq!(h.text(), "Docs cover setup.\n\nNothing is missing.");
        assert_eq!(h.len(), 6);
        assert_eq!(h.text_from(4), h.text());
        assert_eq!(h.text_from(5), "");
        let raw = json!({"entries": entries, "status": "running"}).to_string();
        let s = History::from_snapshot(&raw).unwrap();
        assert_eq!(s.history, h);
        assert_eq!(s.status, PodStatus::Running);
    }

    #[test]
    fn text_from_a_cursor_is_the_text_of_the_later_entries() {
        let mut h = History::default();
        h.push_entries(2);
        h.push_message(&["a", "b"]);
        h.push_entries(3);
        h.push_message(&["c"]);
        assert_eq!(h.text(), "a\n\nb\n\nc");
        assert_eq!(h.text_from(0), "a\n\nb\n\nc");
        assert_eq!(h.text_from(2), "a\n\nb\n\nc");
        assert_eq!(h.text_from(3), "c");
        assert_eq!(h.text_from(6), "c");
        assert_eq!(h.text_from(7), "");
        assert_eq!(h.len(), 7);
    }

    #[test]
    fn segment_start_history_contributes_assistant_messages_only() {
        let entries = vec![json!({"kind":"segment_start","history":[
            {"kind":"message","role":"user","content":[{"kind":"text","text":"q"}]},
            {"kind":"message","role":"assistant","content":[{"kind":"text","text":"a1"}]},
            {"kind":"reasoning","text":"hidden"},
            {"kind":"message","role":"assistant","content":[{"kind":"text","text":"a2"}]}
        ]})];
        assert_eq!(History::from_entries(&entries).text(), "a1\n\na2");
    }

    #[test]
    fn an_obsolete_layout_is_counted_not_silently_skipped() {
        let entries = vec![
            json!({"kind":"assistant_item","message":{"text":"old layout"}}),
            json!({"kind":"assistant_item","item":{"kind":"message","role":"assistant","content":[{"kind":"text"}]}}),
            json!({"ts":1}),
            json!({"kind":"some_future_kind","x":1}),
        ];
        let h = History::from_entries(&entries);
        assert_eq!(h.text(), "");
        assert_eq!(h.malformed, 3);
        assert_eq!(h.len(), 4);
        let raw = json!({ "entries": entries }).to_string();
        assert_eq!(History::from_snapshot(&raw).unwrap().history, h);
    }

    #[test]
    fn cursor_restarts_after_shrink() {
        assert_eq!(effective_cursor(7, 5), 5);
        assert_eq!(effective_cursor(7, 7), 7);
        assert_eq!(effective_cursor(3, 5), 0);
        assert_eq!(effective_cursor(3, u64::MAX), 0);
    }

    /// Replays `run` after `before` and checks the count and text against `after`, the
    /// Snapshot the real runtime gave after that run.
    fn replay(before: &History, run: &[Event]) -> (History, Vec<Changes>) {
        let mut h = before.clone();
        let mut t = Tracker::after_snapshot(PodStatus::Idle);
        let changes = run.iter().map(|e| t.apply(&mut h, e)).collect();
        (h, changes)
    }

    #[test]
    fn events_keep_the_history_exact_for_a_real_run() {
        // child1's prelude, then the run podfs sent: the runtime's own history afterwards
        // is the prelude plus the entries the demo and tests rely on.
        for gen in ["insomnia-5472", "yoi-485918eb"] {
            let before = snapshot(&format!("{gen}/socket/child1-prelude.jsonl")).history;
            let run = events(&format!("{gen}/socket/child1-run.jsonl"));
            let (h, changes) = replay(&before, &run);
            assert_eq!(
                h.len(),
                13,
                "{gen}: invoke, user_input, message, turn_end, usage, run_completed"
            );
            assert_eq!(h.text_from(7), "echo: hello from podfs");
            assert!(changes.iter().all(|c| !c.resync), "{gen}");
            assert_eq!(changes.last().unwrap().status, Some(PodStatus::Idle));
        }
    }

    #[test]
    fn the_first_run_of_a_fresh_pod_counts_its_segment_start_in_either_order() {
        for gen in ["insomnia-5472", "yoi-485918eb"] {
            let run = events(&format!("{gen}/socket/child1-run.jsonl"));
            let (h, _) = replay(&History::default(), &run);
            // segment_start, invoke, user_input, message, turn_end, usage, run_completed.
            assert_eq!(h.len(), 7, "{gen}");
            assert_eq!(h.text(), "echo: hello from podfs");
        }
    }

    #[test]
    fn events_match_the_runtimes_own_snapshot_after_a_tool_turn() {
        // The parent's stop turn (a tool call, its result, a message; two LLM calls) was
        // recorded live, and the parent's Snapshot right after it is in the fixtures.
        let after = snapshot("yoi-485918eb/socket/parent-after-stop-prelude.jsonl").history;
        let run = events("yoi-485918eb/socket/parent-stop-child1.jsonl");
        let mut before = after.clone();
        // The Snapshot before the run is the one after it, minus that run's 9 entries.
        before.len -= 9;
        let keep = after.parts.partition_point(|p| p.entry < before.len);
        before.parts.truncate(keep);
        let cut = match after.parts.get(keep) {
            Some(p) if keep > 0 => p.start - JOIN.len(),
            Some(_) => 0,
            None => after.text.len(),
        };
        before.text.truncate(cut);
        let (h, changes) = replay(&before, &run);
        assert_eq!(h, after);
        assert!(changes.iter().all(|c| !c.resync));
        // Notification turns add invoke, system_item, message, turn_end, usage, run_completed.
        for rel in [
            "yoi-485918eb/socket/parent-on-child1-turn-ended.jsonl",
            "yoi-485918eb/socket/parent-external-shut-down.jsonl",
        ] {
            let run = events(rel);
            let items = run.iter().filter(|e| e.name == "system_item").count() as u64;
            let (h, _) = replay(&after, &run);
            assert_eq!(h.len(), after.len() + 5 + items, "{rel}");
            assert_eq!(h.text_from(after.len()), "echo: [Notification]");
        }
    }

    #[test]
    fn structure_changes_and_unsure_runs_ask_for_a_snapshot() {
        let mut h = History::default();
        let mut t = Tracker::after_snapshot(PodStatus::Idle);
        for name in ["segment_rotated", "compact_done", "rewind_applied"] {
            let c = t.apply(&mut h, &ev(&format!(r#"{{"event":"{name}","data":{{}}}}"#)));
            assert!(c.resync, "{name}");
        }
        // A run that was rolled back, or already under way at the Snapshot.
        t.apply(
            &mut h,
            &ev(r#"{"event":"invoke_start","data":{"kind":"user_send"}}"#),
        );
        let c = t.apply(
            &mut h,
            &ev(r#"{"event":"run_end","data":{"result":"rolled_back"}}"#),
        );
        assert!(c.resync);
        let mut t = Tracker::after_snapshot(PodStatus::Running);
        let c = t.apply(
            &mut h,
            &ev(r#"{"event":"run_end","data":{"result":"finished"}}"#),
        );
        assert!(c.resync);
        // ...but a busy answer to someone's run changes nothing.
        let mut t = Tracker::after_snapshot(PodStatus::Idle);
        t.apply(
            &mut h,
            &ev(r#"{"event":"error","data":{"code":"already_running","message":"m"}}"#),
        );
        t.apply(
            &mut h,
            &ev(r#"{"event":"invoke_start","data":{"kind":"user_send"}}"#),
        );
        let c = t.apply(
            &mut h,
            &ev(r#"{"event":"run_end","data":{"result":"finished"}}"#),
        );
        assert!(!c.resync);
    }
}
