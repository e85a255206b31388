//! A reference pod that speaks the runtime's socket protocol faithfully enough to drive
//! every podfs feature: the prelude, `run` with the event sequence of a real run,
//! `already_running` while busy, `shutdown` with the `shut_down` report to the callback,
//! and, as a parent, the runtime's own remove-and-reclaim on a `shut_down` pod event.
//!
//! The "LLM" is deterministic: a turn answers `echo: <input>` after `--turn-ms`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::paths::Paths;
use crate::protocol::client::Connection;
use crate::protocol::wire::Want;
use crate::store::metadata::{self, Metadata, ReclaimedChild, SpawnedChild};
use crate::store::{pods_table, spawned, to_runtime_json};

#[derive(Debug, Args, Clone)]
pub struct PodArgs {
    /// The insomnia home (INSOMNIA_HOME layout).
    #[arg(long)]
    pub home: PathBuf,
    /// This pod's name.
    #[arg(long)]
    pub name: String,
    /// The socket to report `turn_ended` and `shut_down` to (a spawned child's parent).
    #[arg(long)]
    pub callback: Option<PathBuf>,
    /// A first task to run at start, as a spawned child does.
    #[arg(long)]
    pub task: Option<String>,
    /// How long one turn takes.
    #[arg(long, default_value_t = 200)]
    pub turn_ms: u64,
    /// Ignore `shutdown` (a child that will not stop, for EBUSY tests).
    #[arg(long)]
    pub ignore_shutdown: bool,
    /// Ignore `shut_down` pod events (a parent that never confirms, for EIO tests).
    #[arg(long)]
    pub ignore_pod_events: bool,
}

struct Pod {
    args: PodArgs,
    paths: Paths,
    entries: Mutex<Vec<Value>>,
    status: Mutex<&'static str>,
    turns: Mutex<u64>,
    clients: Mutex<Vec<Arc<Mutex<UnixStream>>>>,
    /// The parent's in-memory registry, loaded once at start like the runtime's.
    registry: Mutex<Vec<SpawnedChild>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn run(args: PodArgs) -> Result<()> {
    let paths = Paths::for_home(&args.home);
    let dir = paths.pod_runtime_dir(&args.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let meta_path = paths.metadata(&args.name);
    let meta = match metadata::read(&meta_path) {
        Ok(m) => m,
        Err(Error::NotFound(_)) => {
            let m = Metadata::new(&args.name);
            std::fs::create_dir_all(meta_path.parent().unwrap())
                .map_err(|e| Error::io("create pod dir", e))?;
            std::fs::write(&meta_path, m.to_bytes()).map_err(|e| Error::io("write metadata", e))?;
            m
        }
        Err(e) => return Err(e),
    };
    let pod = Arc::new(Pod {
        registry: Mutex::new(meta.spawned_children.clone()),
        args: args.clone(),
        paths: paths.clone(),
        entries: Mutex::new(Vec::new()),
        status: Mutex::new("idle"),
        turns: Mutex::new(0),
        clients: Mutex::new(Vec::new()),
    });
    let pid = std::process::id();
    let _ = pods_table::update(&paths.pods_json(), Duration::from_secs(5), |t| {
        match t.allocations.iter_mut().find(|a| a.pod_name == args.name) {
            Some(a) => {
                a.pid = pid;
                (true, ())
            }
            None => (false, ()),
        }
    });
    std::fs::write(dir.join("pid"), pid.to_string()).map_err(|e| Error::io("write pid", e))?;
    pod.write_status();
    pod.write_mirror();
    let sock = paths.socket(&args.name);
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).map_err(|e| Error::io(format!("bind {}", sock.display()), e))?;
    info!(pod = %args.name, socket = %sock.display(), "demo pod listening");
    if let Some(task) = args.task.clone() {
        pod.start_turn(task);
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let pod = pod.clone();
        thread::spawn(move || pod.serve(stream));
    }
    Ok(())
}

impl Pod {
    fn write_status(&self) {
        let dir = self.paths.pod_runtime_dir(&self.args.name);
        let line =
            json!({"pod_name": self.args.name, "segment_id": null, "state": *self.status.lock()});
        let tmp = dir.join("status.tmp");
        if std::fs::write(&tmp, line.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join("status.json"));
        }
    }

    /// `spawned_pods.json`, rewritten from memory via temp + rename.
    fn write_mirror(&self) {
        let records: Vec<spawned::SpawnedRecord> =
            self.registry.lock().iter().map(Into::into).collect();
        let dir = self.paths.pod_runtime_dir(&self.args.name);
        let tmp = dir.join("spawned_pods.tmp");
        if std::fs::write(&tmp, to_runtime_json(&records)).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join("spawned_pods.json"));
        }
    }

    fn serve(self: Arc<Self>, stream: UnixStream) {
        let Ok(writer) = stream.try_clone() else {
            return;
        };
        let _ = writer.set_write_timeout(Some(Duration::from_secs(5)));
        let writer = Arc::new(Mutex::new(writer));
        {
            // Snapshot and registration under one lock: no event falls between them.
            let mut clients = self.clients.lock();
            let snapshot = json!({"event": "snapshot", "data": {
                "entries": *self.entries.lock(),
                "greeting": {"pod_name": self.args.name, "cwd": "/", "provider": "demo", "model": "echo",
                             "scope_summary": "", "tools": [], "context_window": 200000, "context_tokens": 0},
                "status": *self.status.lock(),
            }});
            if send_line(&writer, &snapshot).is_err() {
                return;
            }
            clients.push(writer.clone());
        }
        let reader = BufReader::new(stream);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(method) => self.clone().dispatch(&method, &writer),
                Err(e) => {
                    let _ = send_line(
                        &writer,
                        &json!({"event": "error", "data": {"code": "invalid_request", "message": e.to_string()}}),
                    );
                }
            }
        }
    }

    fn broadcast(&self, event: Value) {
        self.clients.lock().retain(|c| send_line(c, &event).is_ok());
    }

    fn dispatch(self: Arc<Self>, method: &Value, sender: &Arc<Mutex<UnixStream>>) {
        let params = &method["params"];
        match method["method"].as_str().unwrap_or("") {
            "run" => {
                let text: Vec<&str> = params["input"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s["content"].as_str()).collect())
                    .unwrap_or_default();
                let text = text.join("\n");
                let busy = *self.status.lock() == "running";
                if busy {
                    self.broadcast(json!({"event": "error", "data": {"code": "already_running", "message": "a turn is already running"}}));
                } else {
                    self.start_turn(text);
                }
            }
            "shutdown" if !self.args.ignore_shutdown => self.shutdown(),
            "pod_event" if !self.args.ignore_pod_events => {
                let child = params["pod_name"].as_str().unwrap_or("").to_string();
                match params["kind"].as_str() {
                    Some("shut_down") => {
                        self.remove_child(&child);
                        self.notice(format!("Pod `{child}` has stopped."));
                    }
                    Some("turn_ended") => self.notice(format!("Pod `{child}` finished a turn.")),
                    _ => {}
                }
            }
            "compact" => self.compact(),
            "shutdown" | "pod_event" => debug!("ignored by configuration"),
            other => {
                let _ = send_line(
                    sender,
                    &json!({"event": "error", "data": {"code": "invalid_request", "message": format!("unsupported method {other}")}}),
                );
            }
        }
    }

    fn start_turn(self: &Arc<Self>, text: String) {
        *self.status.lock() = "running";
        self.write_status();
        let turn = {
            let mut t = self.turns.lock();
            *t += 1;
            *t
        };
        self.broadcast(json!({"event": "user_message", "data": {"segments": [{"kind": "text", "content": text}]}}));
        self.broadcast(json!({"event": "status", "data": {"status": "running"}}));
        self.broadcast(json!({"event": "invoke_start", "data": {"kind": "user_send"}}));
        self.broadcast(json!({"event": "turn_start", "data": {"turn": turn}}));
        let pod = self.clone();
        thread::spawn(move || pod.finish_turn(text, "user_send", turn));
    }

    fn finish_turn(self: Arc<Self>, text: String, trigger: &str, turn: u64) {
        thread::sleep(Duration::from_millis(self.args.turn_ms));
        let reply = format!("echo: {text}");
        self.broadcast(json!({"event": "llm_call_start", "data": {"llm_call": 1}}));
        self.broadcast(json!({"event": "text_delta", "data": {"text": reply}}));
        self.broadcast(json!({"event": "text_done", "data": {"text": reply}}));
        self.broadcast(json!({"event": "usage", "data": {"input_tokens": 5, "output_tokens": 3}}));
        self.broadcast(json!({"event": "llm_call_end", "data": {"llm_call": 1}}));
        self.commit_turn(&text, &reply, trigger, turn);
        self.broadcast(json!({"event": "turn_end", "data": {"turn": turn, "result": "finished"}}));
        self.broadcast(json!({"event": "run_end", "data": {"result": "finished"}}));
        *self.status.lock() = "idle";
        self.write_status();
        self.broadcast(json!({"event": "status", "data": {"status": "idle"}}));
        if trigger == "user_send" {
            if let Some(cb) = &self.args.callback {
                let _ = report(
                    cb,
                    &json!({"method": "pod_event", "params": {"kind": "turn_ended", "pod_name": self.args.name}}),
                );
            }
        }
    }

    fn commit_turn(&self, text: &str, reply: &str, trigger: &str, turn: u64) {
        let ts = now_ms();
        let mut entries = self.entries.lock();
        if entries.is_empty() {
            entries.push(json!({"kind": "segment_start", "ts": ts, "session_id": "demo", "system_prompt": null, "config": {}, "history": []}));
        }
        entries.push(json!({"kind": "invoke", "ts": ts, "trigger": trigger}));
        entries.push(json!({"kind": "user_input", "ts": ts, "segments": [{"kind": "text", "content": text}]}));
        entries.push(json!({"kind": "assistant_item", "ts": ts, "item": {"kind": "message", "role": "assistant", "content": [{"kind": "text", "text": reply}]}}));
        entries.push(json!({"kind": "turn_end", "ts": ts, "turn_count": turn}));
        entries.push(
            json!({"kind": "llm_usage", "ts": ts, "input_total_tokens": 5, "output_tokens": 3}),
        );
        entries.push(
            json!({"kind": "run_completed", "ts": ts, "interrupted": false, "result": "finished"}),
        );
    }

    /// Compaction replaces the history with a new segment whose `history` carries a summary,
    /// so the entry list becomes shorter than any cursor that was at its end.
    fn compact(&self) {
        let summary = {
            let mut entries = self.entries.lock();
            let summary = format!("summary of {} entries", entries.len());
            *entries = vec![
                json!({"kind": "segment_start", "ts": now_ms(), "session_id": "demo",
                "system_prompt": null, "config": {}, "compacted_from": "demo",
                "history": [{"kind": "message", "role": "assistant", "content": [{"kind": "text", "text": summary}]}]}),
            ];
            summary
        };
        self.broadcast(json!({"event": "compact_done", "data": {"summary": summary}}));
    }

    /// A pod event is shown to the "LLM": an idle pod starts a short turn about it.
    fn notice(self: &Arc<Self>, message: String) {
        if *self.status.lock() != "idle" {
            return;
        }
        *self.status.lock() = "running";
        self.broadcast(json!({"event": "status", "data": {"status": "running"}}));
        self.broadcast(json!({"event": "invoke_start", "data": {"kind": "pod_event"}}));
        let turn = {
            let mut t = self.turns.lock();
            *t += 1;
            *t
        };
        let pod = self.clone();
        thread::spawn(move || pod.finish_turn(message, "pod_event", turn));
    }

    /// The runtime's `registry.remove(name)`: memory, mirror, metadata, pods.json, in its
    /// order and with its plain truncating writes.
    fn remove_child(&self, child: &str) {
        let record = {
            let mut reg = self.registry.lock();
            let pos = reg.iter().position(|c| c.pod_name == child);
            pos.map(|i| reg.remove(i))
        };
        self.write_mirror();
        let path = self.paths.metadata(&self.args.name);
        let in_memory = self.registry.lock().clone();
        let mut meta = metadata::read(&path).unwrap_or_else(|_| Metadata::new(&self.args.name));
        meta.spawned_children = in_memory;
        let _ = std::fs::write(&path, meta.to_bytes());
        let Some(record) = record else { return };
        let _ = pods_table::update(&self.paths.pods_json(), Duration::from_secs(5), |t| {
            (
                true,
                t.reclaim_delegated_scope(&self.args.name, child, &record.scope_delegated),
            )
        });
        let mut meta = metadata::read(&path).unwrap_or_else(|_| Metadata::new(&self.args.name));
        meta.spawned_children.retain(|c| c.pod_name != child);
        meta.reclaimed_children.push(ReclaimedChild {
            pod_name: record.pod_name,
            scope_delegated: record.scope_delegated,
            extra: Default::default(),
        });
        let _ = std::fs::write(&path, meta.to_bytes());
        info!(child, "child removed and reclaimed");
    }

    fn shutdown(&self) {
        self.broadcast(json!({"event": "shutdown"}));
        if let Some(cb) = &self.args.callback {
            if let Err(e) = report(
                cb,
                &json!({"method": "pod_event", "params": {"kind": "shut_down", "pod_name": self.args.name}}),
            ) {
                warn!(error = %e, "shut_down report failed");
            }
        }
        let _ = pods_table::update(&self.paths.pods_json(), Duration::from_secs(5), |t| {
            (t.release_pod(&self.args.name), ())
        });
        let _ = std::fs::remove_file(self.paths.socket(&self.args.name));
        let _ = std::fs::remove_dir_all(self.paths.pod_runtime_dir(&self.args.name));
        info!(pod = %self.args.name, "demo pod shut down");
        std::process::exit(0);
    }
}

fn send_line(writer: &Arc<Mutex<UnixStream>>, event: &Value) -> std::io::Result<()> {
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    let mut w = writer.lock();
    w.write_all(&line)?;
    w.flush()
}

/// Send a method to another pod the careful way: prelude first, linger after.
fn report(socket: &Path, method: &Value) -> Result<()> {
    let (mut conn, _) = Connection::open(
        socket,
        Duration::from_secs(5),
        Duration::from_secs(5),
        256 << 20,
        Want::Status,
    )?;
    conn.send(method, Duration::from_secs(5))?;
    let deadline = std::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Some(_)) = conn.next_event(deadline) {}
    Ok(())
}
