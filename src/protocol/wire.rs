//! Events (pod to client) and methods (client to pod) as JSON.
//!
//! Each line is parsed as a generic object and dispatched on `event`; unknown events are
//! ignored rather than fatal, so a newer runtime does not blind podfs.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// One event line. `data` stays raw JSON until someone asks for it: a Snapshot can be tens
/// of MiB, and a status probe needs one word of it.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    data: Box<RawValue>,
}

impl Event {
    pub fn parse(line: &[u8]) -> Result<Event> {
        #[derive(Deserialize)]
        struct Line {
            event: String,
            #[serde(default)]
            data: Option<Box<RawValue>>,
        }
        let line: Line = serde_json::from_slice(line)
            .map_err(|e| Error::Protocol(format!("event line does not parse: {e}")))?;
        let data = match line.data {
            Some(data) => data,
            None => RawValue::from_string("null".into()).expect("null is JSON"),
        };
        Ok(Event {
            name: line.event,
            data,
        })
    }

    /// The `data` object as a generic value.
    pub fn data(&self) -> Value {
        serde_json::from_str(self.data.get()).unwrap_or(Value::Null)
    }

    /// The `data` object as `T`, or `None` when it does not have that shape.
    pub fn data_as<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.data.get()).ok()
    }

    /// `error` events: (code, message).
    pub fn error(&self) -> Option<(String, String)> {
        #[derive(Deserialize)]
        struct ErrorData {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        if self.name != "error" {
            return None;
        }
        let e: ErrorData = self.data_as().unwrap_or(ErrorData {
            code: String::new(),
            message: String::new(),
        });
        Some((e.code, e.message))
    }

    /// `data.kind`, for `invoke_start` and friends.
    pub fn kind(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Kind {
            kind: String,
        }
        self.data_as::<Kind>().map(|k| k.kind)
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

/// How much of a Snapshot to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Only the status word (a probe): the history is scanned, not built.
    Status,
    /// The status and every history entry (output, log).
    History,
}

impl Snapshot {
    pub fn from_event(event: &Event, want: Want) -> Result<Snapshot> {
        #[derive(Deserialize)]
        struct Full {
            #[serde(default)]
            entries: Vec<Value>,
            #[serde(default)]
            status: Option<String>,
        }
        #[derive(Deserialize)]
        struct StatusOnly {
            #[serde(default)]
            status: Option<String>,
        }
        let bad = |e: serde_json::Error| Error::Protocol(format!("snapshot does not parse: {e}"));
        let raw = event.data.get();
        Ok(match want {
            Want::History => {
                let f: Full = serde_json::from_str(raw).map_err(bad)?;
                Snapshot {
                    entries: f.entries,
                    status: f.status,
                }
            }
            Want::Status => {
                let s: StatusOnly = serde_json::from_str(raw).map_err(bad)?;
                Snapshot {
                    entries: Vec::new(),
                    status: s.status,
                }
            }
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
        assert!(e.data().is_null());
        let e =
            Event::parse(br#"{"event":"error","data":{"code":"already_running","message":"m"}}"#)
                .unwrap();
        assert_eq!(e.error(), Some(("already_running".into(), "m".into())));
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
