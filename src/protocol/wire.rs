//! Events (pod to client) and methods (client to pod) as JSON.
//!
//! Each line is parsed as a generic object and dispatched on `event`; unknown events are
//! ignored rather than fatal, so a newer runtime does not blind podfs.

use std::fmt;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// One event line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

impl Event {
    pub fn parse(line: &[u8]) -> Result<Event> {
        let value: Value = serde_json::from_slice(line)
            .map_err(|e| Error::Protocol(format!("event line is not JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(Error::Protocol("event line is not a JSON object".into()));
        };
        let name = match map.remove("event") {
            Some(Value::String(name)) => name,
            _ => return Err(Error::Protocol("event line has no \"event\" name".into())),
        };
        let data = map.remove("data").unwrap_or(Value::Null);
        Ok(Event { name, data })
    }

    /// `error` events: (code, message).
    pub fn error(&self) -> Option<(&str, &str)> {
        (self.name == "error").then(|| {
            (
                self.data["code"].as_str().unwrap_or(""),
                self.data["message"].as_str().unwrap_or(""),
            )
        })
    }

    pub fn kind(&self) -> Option<&str> {
        self.data["kind"].as_str()
    }
}

/// The pod's run state as the Snapshot and `status` events report it, plus the state
/// podfs adds for a pod that did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl fmt::Display for PodStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Snapshot that ends every prelude. `greeting` is not modelled: podfs never needs it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub entries: Vec<Value>,
    pub status: Option<String>,
}

impl Snapshot {
    pub fn from_event(event: &Event) -> Result<Snapshot> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            entries: Vec<Value>,
            #[serde(default)]
            status: Option<String>,
        }
        let raw = Raw::deserialize(&event.data)
            .map_err(|e| Error::Protocol(format!("snapshot does not parse: {e}")))?;
        Ok(Snapshot {
            entries: raw.entries,
            status: raw.status,
        })
    }

    pub fn status(&self) -> PodStatus {
        PodStatus::from_wire(self.status.as_deref())
    }
}

/// `{"method":"run","params":{"input":[{"kind":"text","content":...}]}}`
pub fn run_method(text: &str) -> Value {
    json!({"method": "run", "params": {"input": [{"kind": "text", "content": text}]}})
}

/// Unit methods carry no `params` key.
pub fn shutdown_method() -> Value {
    json!({"method": "shutdown"})
}

pub fn shut_down_event(child: &str) -> Value {
    json!({"method": "pod_event", "params": {"kind": "shut_down", "pod_name": child}})
}

/// The segments a `run` with `text` carries, as the pod echoes them in `user_message`.
pub fn run_segments(text: &str) -> Value {
    json!([{"kind": "text", "content": text}])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_have_the_runtime_bytes() {
        assert_eq!(
            run_method("summarise docs/").to_string(),
            r#"{"method":"run","params":{"input":[{"kind":"text","content":"summarise docs/"}]}}"#
        );
        assert_eq!(shutdown_method().to_string(), r#"{"method":"shutdown"}"#);
        assert_eq!(
            shut_down_event("reviewer").to_string(),
            r#"{"method":"pod_event","params":{"kind":"shut_down","pod_name":"reviewer"}}"#
        );
    }

    #[test]
    fn events_parse_and_unit_events_have_null_data() {
        let e = Event::parse(br#"{"event":"shutdown"}"#).unwrap();
        assert_eq!(e.name, "shutdown");
        assert!(e.data.is_null());
        let e =
            Event::parse(br#"{"event":"error","data":{"code":"already_running","message":"m"}}"#)
                .unwrap();
        assert_eq!(e.error(), Some(("already_running", "m")));
        assert!(Event::parse(b"{\"event\":").is_err());
        assert!(Event::parse(b"[1]").is_err());
        assert!(Event::parse(br#"{"data":{}}"#).is_err());
    }

    #[test]
    fn status_words() {
        assert_eq!(PodStatus::from_wire(None), PodStatus::Idle);
        assert_eq!(PodStatus::from_wire(Some("paused")), PodStatus::Paused);
        assert_eq!(PodStatus::from_wire(Some("running")), PodStatus::Running);
        assert_eq!(PodStatus::Unreachable.to_string(), "unreachable");
    }
}
