//! Events (pod to client) and methods (client to pod) as JSON lines.
//!
//! Each line is parsed as a generic object and dispatched on `event`; unknown events are
//! ignored rather than fatal, so a newer runtime does not blind podfs. The names that differ
//! between runtime generations (the lifecycle method and its name key) come from
//! [`Generation`].

use std::borrow::Cow;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::generation::Generation;

/// One event line, borrowed from the buffer it was read into. `data` stays raw JSON until
/// someone asks for it: a Snapshot can be tens of MiB, and most events need one field of
/// it.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub name: Cow<'a, str>,
    data: &'a RawValue,
}

impl<'a> Event<'a> {
    pub fn parse(line: &'a [u8]) -> Result<Event<'a>> {
        #[derive(Deserialize)]
        struct Line<'a> {
            #[serde(borrow)]
            event: Cow<'a, str>,
            #[serde(default, borrow)]
            data: Option<&'a RawValue>,
        }
        let line: Line = serde_json::from_slice(line)
            .map_err(|e| Error::Protocol(format!("event line does not parse: {e}")))?;
        Ok(Event {
            name: line.event,
            data: line.data.unwrap_or(RawValue::NULL),
        })
    }

    /// The `data` object as JSON text.
    pub fn raw_data(&self) -> &str {
        self.data.get()
    }

    /// The `data` object as a generic value.
    pub fn data(&self) -> Value {
        serde_json::from_str(self.data.get()).unwrap_or(Value::Null)
    }

    /// The `data` object as `T`, or `None` when it does not have that shape.
    pub fn data_as<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.data.get()).ok()
    }

    fn field(&self, key: &str) -> Option<String> {
        let data: Map<String, Value> = self.data_as()?;
        data.get(key)?.as_str().map(str::to_string)
    }

    /// `error` events: (code, message).
    pub fn error(&self) -> Option<(String, String)> {
        if self.name != "error" {
            return None;
        }
        Some((
            self.field("code").unwrap_or_default(),
            self.field("message").unwrap_or_default(),
        ))
    }

    /// `data.kind` (`invoke_start` and lifecycle events).
    pub fn kind(&self) -> Option<String> {
        self.field("kind")
    }

    /// `data.text` (`text_done`).
    pub fn text(&self) -> Option<String> {
        self.field("text")
    }

    /// `data.result` (`run_end`, `turn_end`).
    pub fn result(&self) -> Option<String> {
        self.field("result")
    }

    /// `data.status` of a `status` event.
    pub fn status_word(&self) -> PodStatus {
        PodStatus::from_wire(self.field("status").as_deref())
    }

    /// `data.segments`, as `user_message` echoes a run's input.
    pub fn segments(&self) -> Option<Value> {
        let data: Map<String, Value> = self.data_as()?;
        data.get("segments").cloned()
    }
}

/// The pod's run state as the Snapshot and `status` events report it, plus the state
/// podfs adds for a pod that did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PodStatus {
    Idle,
    Running,
    Paused,
    Unreachable,
}

impl PodStatus {
    /// `idle` when missing, as in the runtime; an unknown word is treated as running so that
    /// podfs never claims a pod is idle when it cannot tell.
    pub fn from_wire(word: Option<&str>) -> PodStatus {
        match word {
            None | Some("idle") => PodStatus::Idle,
            Some("paused") => PodStatus::Paused,
            Some(_) => PodStatus::Running,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PodStatus::Idle => "idle",
            PodStatus::Running => "running",
            PodStatus::Paused => "paused",
            PodStatus::Unreachable => "unreachable",
        }
    }

    /// Whether the pod takes a `run` now (a paused pod starts a fresh turn).
    pub fn takes_runs(self) -> bool {
        matches!(self, PodStatus::Idle | PodStatus::Paused)
    }
}

impl fmt::Display for PodStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"method":"run","params":{"input":[{"kind":"text","content":...}]}}`
pub fn run_method(text: &str) -> Value {
    json!({"method": "run", "params": {"input": run_segments(text)}})
}

/// The segments a `run` with `text` carries, as the pod echoes them in `user_message`.
pub fn run_segments(text: &str) -> Value {
    json!([{"kind": "text", "content": text}])
}

/// Unit methods carry no `params` key.
pub fn shutdown_method() -> Value {
    json!({"method": "shutdown"})
}

/// A lifecycle report (`shut_down`, `turn_ended`) about pod `name`, in `gen`'s names:
/// `pod_event {kind, pod_name}` or `worker_event {kind, worker_name}`.
pub fn lifecycle_method(gen: &Generation, kind: &str, name: &str) -> Value {
    let mut params = Map::new();
    params.insert("kind".into(), kind.into());
    params.insert(gen.name_key.into(), name.into());
    json!({"method": gen.lifecycle_method, "params": params})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{INSOMNIA_5472, YOI_WORKER_485918EB};

    #[test]
    fn methods_have_the_runtime_bytes() {
        assert_eq!(
            run_method("summarise docs/").to_string(),
            r#"{"method":"run","params":{"input":[{"kind":"text","content":"summarise docs/"}]}}"#
        );
        assert_eq!(shutdown_method().to_string(), r#"{"method":"shutdown"}"#);
        assert_eq!(
            lifecycle_method(&INSOMNIA_5472, "shut_down", "reviewer").to_string(),
            r#"{"method":"pod_event","params":{"kind":"shut_down","pod_name":"reviewer"}}"#
        );
        assert_eq!(
            lifecycle_method(&YOI_WORKER_485918EB, "shut_down", "child5").to_string(),
            r#"{"method":"worker_event","params":{"kind":"shut_down","worker_name":"child5"}}"#
        );
    }

    #[test]
    fn events_parse_and_unit_events_have_null_data() {
        let e = Event::parse(br#"{"event":"shutdown"}"#).unwrap();
        assert_eq!(e.name, "shutdown");
        assert!(e.data().is_null());
        assert_eq!(e.kind(), None);
        let e =
            Event::parse(br#"{"event":"error","data":{"code":"already_running","message":"m"}}"#)
                .unwrap();
        assert_eq!(e.error(), Some(("already_running".into(), "m".into())));
        assert!(Event::parse(b"{\"event\":").is_err());
        assert!(Event::parse(b"[1]").is_err());
        assert!(Event::parse(br#"{"data":{}}"#).is_err());
        let e = Event::parse(br#"{"event":"status","data":{"status":"running"}}"#).unwrap();
        assert_eq!(e.status_word(), PodStatus::Running);
    }

    #[test]
    fn every_fixture_transcript_line_parses() {
        for dir in [
            "insomnia-5472/socket",
            "yoi-485918eb/socket",
            "yoi-485918eb/variants/wedged-a/socket",
        ] {
            let path = crate::test_fixtures::root().join(dir);
            for entry in std::fs::read_dir(path).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                for line in text.lines() {
                    let e = Event::parse(line.as_bytes()).unwrap();
                    assert!(!e.name.is_empty(), "{}", path.display());
                }
            }
        }
    }

    #[test]
    fn status_words() {
        assert_eq!(PodStatus::from_wire(None), PodStatus::Idle);
        assert_eq!(PodStatus::from_wire(Some("paused")), PodStatus::Paused);
        assert_eq!(PodStatus::from_wire(Some("running")), PodStatus::Running);
        assert_eq!(PodStatus::from_wire(Some("weird")), PodStatus::Running);
        assert_eq!(PodStatus::Unreachable.to_string(), "unreachable");
        assert!(PodStatus::Paused.takes_runs() && !PodStatus::Running.takes_runs());
    }
}
