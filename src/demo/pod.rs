//! Reference pods: processes that speak the runtime's socket protocol (either generation)
//! faithfully enough to drive every podfs feature. The prelude; `run` with the event
//! sequence and history entries of a real run; `already_running` while busy; `shutdown`
//! with the `shut_down` report to the callback; and, as a parent, the runtime's own
//! remove-and-reclaim on a `shut_down` lifecycle event, and a notification turn for each
//! report. One process can serve many pods (1,000 children for the benchmarks).
//!
//! The "LLM" is deterministic: a turn answers `echo: <input>` after `--turn-ms`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::demo::talk;
use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::name::PodName;
use crate::paths::Paths;
use crate::protocol::wire;
use crate::store::metadata::{self, Metadata, SpawnedChild};
use crate::store::{alloc, mirror};

#[derive(Debug, Args, Clone)]
pub struct PodArgs {
    /// The runtime home (INSOMNIA_HOME / YOI_HOME layout).
    #[arg(long)]
    pub home: PathBuf,
    /// The runtime dir, when it is not `<home>/run` (a desktop's `$XDG_RUNTIME_DIR`).
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// The runtime generation to speak.
    #[arg(long, default_value = "insomnia-5472")]
    pub generation: String,
    /// The pod's name; repeat to serve several pods from this one process.
    #[arg(long = "name", required = true)]
    pub names: Vec<String>,
    /// The socket to report `turn_ended` and `shut_down` to (a spawned child's parent).
    #[arg(long)]
    pub callback: Option<PathBuf>,
    /// A first task to run at start, as a spawned child does (`{name}` is replaced).
    #[arg(long)]
    pub task: Option<String>,
    /// How long one turn takes.
    #[arg(long, default_value_t = 200)]
    pub turn_ms: u64,
    /// Start with a history holding about this many bytes of assistant text.
    #[arg(long, default_value_t = 0)]
    pub history_bytes: usize,
    /// Ignore `shutdown` (a child that will not stop, for EBUSY tests).
    #[arg(long)]
    pub ignore_shutdown: bool,
    /// Ignore lifecycle events (a parent that never confirms, for EIO tests).
    #[arg(long)]
    pub ignore_pod_events: bool,
    /// Keep this file (JSON) up to date with how many Snapshots each pod has served.
    #[arg(long)]
    pub stats: Option<PathBuf>,
}

type Client = Arc<Mutex<UnixStream>>;

struct Pod {
    name: String,
    args: PodArgs,
    gen: &'static Generation,
    paths: Paths,
    entries: Mutex<Vec<Value>>,
    status: Mutex<&'static str>,
    turns: AtomicU64,
    clients: Mutex<Vec<Client>>,
    /// The parent's in-memory registry, loaded once at start like the runtime's.
    registry: Mutex<Vec<SpawnedChild>>,
    snapshots: AtomicU64,
    stopped: AtomicBool,
    /// Held for every write to the runtime dir: shutdown takes it for good, so a turn
    /// still finishing cannot recreate a file in the directory being removed.
    files: Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn run(args: PodArgs) -> Result<()> {
    let gen = Generation::by_id(&args.generation).ok_or_else(|| {
        Error::Usage(format!(
            "unknown generation {}; one of {}",
            args.generation,
            Generation::ids()
        ))
    })?;
    let mut paths = Paths::for_home(&args.home, gen);
    if let Some(dir) = &args.runtime_dir {
        paths.runtime = dir.clone();
    }
    let mut pods = Vec::new();
    let mut listeners = Vec::new();
    for name in &args.names {
        let (pod, listener) = start(name, &args, gen, &paths)?;
        pods.push(pod);
        listeners.push(listener);
    }
    if let Some(path) = args.stats.clone() {
        let pods = pods.clone();
        let term = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())
            .map_err(|e| Error::io("install signal handler", e))?;
        thread::spawn(move || {
            let mut written = None;
            loop {
                let stopping = term.load(Ordering::SeqCst);
                let counts: serde_json::Map<String, Value> = pods
                    .iter()
                    .map(|p| (p.name.clone(), p.snapshots.load(Ordering::SeqCst).into()))
                    .collect();
                // Rewritten (atomically) whenever a count moves, so a reader can watch it.
                if written.as_ref() != Some(&counts) {
                    let body = Value::Object(counts.clone()).to_string();
                    let _ = crate::store::atomic::replace_file(&path, body.as_bytes(), 0o644);
                    written = Some(counts);
                }
                if stopping {
                    std::process::exit(0);
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
    }
    serve(pods, listeners);
    Ok(())
}

fn start(
    name: &str,
    args: &PodArgs,
    gen: &'static Generation,
    paths: &Paths,
) -> Result<(Arc<Pod>, UnixListener)> {
    let pod_name = PodName::new(name)?;
    let dir = paths.pod_runtime_dir(&pod_name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let meta_path = paths.metadata(&pod_name);
    let meta = match metadata::read_settled(&meta_path, gen) {
        Ok(m) => m,
        Err(Error::NotFound(_)) => {
            let m = Metadata::new(name, gen);
            std::fs::create_dir_all(meta_path.parent().expect("has a parent"))
                .map_err(|e| Error::io("create pod dir", e))?;
            std::fs::write(&meta_path, m.to_bytes()).map_err(|e| Error::io("write metadata", e))?;
            m
        }
        Err(e) => return Err(e),
    };
    let pod = Arc::new(Pod {
        name: name.to_string(),
        registry: Mutex::new(meta.children().unwrap_or_default()),
        args: args.clone(),
        gen,
        paths: paths.clone(),
        entries: Mutex::new(Vec::new()),
        status: Mutex::new("idle"),
        turns: AtomicU64::new(0),
        clients: Mutex::new(Vec::new()),
        snapshots: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        files: Mutex::new(()),
    });
    pod.prefill(args.history_bytes);
    let pid = std::process::id();
    let _ = alloc::update(&paths.alloc_table(), gen, Duration::from_secs(5), |t| {
        (t.set_field(name, "pid", pid.into()), ())
    });
    std::fs::write(dir.join("pid"), pid.to_string()).map_err(|e| Error::io("write pid", e))?;
    pod.write_status();
    pod.write_mirror();
    let sock = paths.socket(&pod_name);
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).map_err(|e| Error::io(format!("bind {}", sock.display()), e))?;
    info!(pod = %name, socket = %sock.display(), generation = gen.id, "reference pod listening");
    if let Some(task) = args.task.clone() {
        pod.start_run(task.replace("{name}", name));
    }
    Ok((pod, listener))
}

/// Accept on every listener from one thread; one thread per connection.
fn serve(pods: Vec<Arc<Pod>>, listeners: Vec<UnixListener>) {
    for l in &listeners {
        let _ = l.set_nonblocking(true);
    }
    loop {
        let mut fds: Vec<nix::poll::PollFd> = listeners
            .iter()
            .map(|l| nix::poll::PollFd::new(l.as_fd(), nix::poll::PollFlags::POLLIN))
            .collect();
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (i, ready) in ready.into_iter().enumerate() {
            if !ready || pods[i].stopped.load(Ordering::SeqCst) {
                continue;
            }
            while let Ok((stream, _)) = listeners[i].accept() {
                let _ = stream.set_nonblocking(false);
                let pod = pods[i].clone();
                let _ = thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || pod.serve(stream));
            }
        }
        if pods.iter().all(|p| p.stopped.load(Ordering::SeqCst)) {
            // Each shutdown holds its pod's file lock until its directory is gone.
            for p in &pods {
                let _done = p.files.lock();
            }
            std::process::exit(0);
        }
    }
}

fn send_line(writer: &Client, event: &Value) -> std::io::Result<()> {
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    let mut w = writer.lock();
    w.write_all(&line)?;
    w.flush()
}

impl Pod {
    fn socket(&self, name: &str) -> Option<PathBuf> {
        let name = PodName::new(name).ok()?;
        Some(self.paths.socket(&name))
    }

    fn write_status(&self) {
        let _files = self.files.lock();
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let dir = self.paths.runtime.join(&self.name);
        let mut line = serde_json::Map::new();
        if self.gen.name_key == "pod_name" {
            line.insert("pod_name".into(), self.name.clone().into());
        }
        line.insert("segment_id".into(), Value::Null);
        line.insert("state".into(), (*self.status.lock()).into());
        if self.gen.name_key != "pod_name" {
            line.insert(self.gen.name_key.into(), self.name.clone().into());
        }
        let tmp = dir.join("status.tmp");
        if std::fs::write(&tmp, Value::Object(line).to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join("status.json"));
        }
    }

    /// The mirror, rewritten from memory via temp + rename.
    fn write_mirror(&self) {
        let _files = self.files.lock();
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let bytes = mirror::render(&self.registry.lock(), self.gen);
        let dir = self.paths.runtime.join(&self.name);
        let tmp = dir.join("spawned.tmp");
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(self.gen.mirror_file));
        }
    }

    /// A long history: turns whose replies add up to `bytes` of assistant text.
    fn prefill(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let reply = "x".repeat(4000);
        let mut entries = self.entries.lock();
        let mut total = 0;
        let ts = now_ms();
        entries.push(json!({"kind": "segment_start", "ts": ts, "session_id": "demo", "system_prompt": null, "config": {}, "history": []}));
        while total < bytes {
            entries.push(json!({"kind": "invoke", "ts": ts, "trigger": "user_send"}));
            entries.push(json!({"kind": "user_input", "ts": ts, "segments": [{"kind": "text", "content": "more"}]}));
            entries.push(json!({"kind": "assistant_item", "ts": ts, "item": {"kind": "message", "role": "assistant", "content": [{"kind": "text", "text": reply}]}}));
            entries.push(json!({"kind": "turn_end", "ts": ts, "turn_count": 1}));
            entries.push(
                json!({"kind": "llm_usage", "ts": ts, "input_total_tokens": 5, "output_tokens": 3}),
            );
            entries.push(json!({"kind": "run_completed", "ts": ts, "interrupted": false, "result": "finished"}));
            total += reply.len();
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
            let mut greeting = serde_json::Map::new();
            greeting.insert(self.gen.name_key.into(), self.name.clone().into());
            greeting.insert("cwd".into(), "/".into());
            greeting.insert("provider".into(), "demo".into());
            greeting.insert("model".into(), "echo".into());
            let snapshot = json!({"event": "snapshot", "data": {
                "entries": *self.entries.lock(),
                "greeting": greeting,
                "status": *self.status.lock(),
            }});
            self.snapshots.fetch_add(1, Ordering::SeqCst);
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
        self.clients.lock().retain(|c| !Arc::ptr_eq(c, &writer));
    }

    fn broadcast(&self, event: Value) {
        self.clients.lock().retain(|c| send_line(c, &event).is_ok());
    }

    fn dispatch(self: Arc<Self>, method: &Value, sender: &Client) {
        let params = &method["params"];
        let name = method["method"].as_str().unwrap_or("");
        match name {
            "run" => {
                let text: Vec<&str> = params["input"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s["content"].as_str()).collect())
                    .unwrap_or_default();
                let busy = *self.status.lock() == "running";
                if busy {
                    self.broadcast(json!({"event": "error", "data": {"code": "already_running", "message": "a turn is already running"}}));
                } else {
                    self.start_run(text.join("\n"));
                }
            }
            "shutdown" if !self.args.ignore_shutdown => self.shutdown(),
            "compact" => self.compact(),
            _ if name == self.gen.lifecycle_method && !self.args.ignore_pod_events => {
                let child = params[self.gen.name_key].as_str().unwrap_or("").to_string();
                match params["kind"].as_str() {
                    Some("shut_down") => {
                        self.remove_child(&child);
                        self.notice(&child, "shut_down");
                    }
                    Some("turn_ended") => self.notice(&child, "turn_ended"),
                    _ => {}
                }
            }
            "shutdown" => debug!("shutdown ignored by configuration"),
            _ if name == self.gen.lifecycle_method => {
                debug!("lifecycle event ignored by configuration")
            }
            other => {
                let _ = send_line(
                    sender,
                    &json!({"event": "error", "data": {"code": "invalid_request", "message": format!("unsupported method {other}")}}),
                );
            }
        }
    }

    fn begin(&self, trigger: &str) -> Option<u64> {
        {
            let mut status = self.status.lock();
            if *status == "running" {
                return None;
            }
            *status = "running";
        }
        self.write_status();
        let turn = self.turns.fetch_add(1, Ordering::SeqCst) + 1;
        let ts = now_ms();
        let mut entries = self.entries.lock();
        if entries.is_empty() {
            entries.push(json!({"kind": "segment_start", "ts": ts, "session_id": "demo", "system_prompt": null, "config": {}, "history": []}));
        }
        entries.push(json!({"kind": "invoke", "ts": ts, "trigger": trigger}));
        Some(turn)
    }

    /// A `run`: the event order of the generation (yoi announces the status first).
    fn start_run(self: &Arc<Self>, text: String) {
        let Some(turn) = self.begin("user_send") else {
            return;
        };
        self.entries.lock().push(
            json!({"kind": "user_input", "ts": now_ms(), "segments": wire::run_segments(&text)}),
        );
        let user_message =
            json!({"event": "user_message", "data": {"segments": wire::run_segments(&text)}});
        let running = json!({"event": "status", "data": {"status": "running"}});
        let invoke = json!({"event": "invoke_start", "data": {"kind": "user_send"}});
        if self.gen.name_key == "pod_name" {
            self.broadcast(user_message);
            self.broadcast(running);
            self.broadcast(invoke);
        } else {
            self.broadcast(running);
            self.broadcast(invoke);
            self.broadcast(user_message);
        }
        self.broadcast(json!({"event": "turn_start", "data": {"turn": turn}}));
        let pod = self.clone();
        thread::spawn(move || pod.finish(format!("echo: {text}"), turn, true));
    }

    /// A lifecycle report is shown to the "LLM": an idle pod starts a short turn about it.
    fn notice(self: &Arc<Self>, child: &str, kind: &str) {
        let Some(turn) = self.begin(self.gen.lifecycle_method) else {
            return;
        };
        let body = if self.gen.name_key == "pod_name" {
            match kind {
                "shut_down" => format!("Pod `{child}` has stopped."),
                _ => format!("Pod `{child}` finished a turn."),
            }
        } else {
            match kind {
                "shut_down" => format!("[Notification]\nworker `{child}` shut down"),
                _ => format!("[Notification]\nworker `{child}` finished a turn"),
            }
        };
        let mut event = serde_json::Map::new();
        event.insert("kind".into(), kind.into());
        event.insert(self.gen.name_key.into(), child.into());
        let item = json!({"kind": self.gen.lifecycle_method, "event": event, "body": body});
        self.entries
            .lock()
            .push(json!({"kind": "system_item", "ts": now_ms(), "item": item}));
        self.broadcast(json!({"event": "status", "data": {"status": "running"}}));
        self.broadcast(
            json!({"event": "invoke_start", "data": {"kind": self.gen.lifecycle_method}}),
        );
        self.broadcast(json!({"event": "turn_start", "data": {"turn": turn}}));
        self.broadcast(json!({"event": "system_item", "data": {"item": item}}));
        let pod = self.clone();
        let reply = "echo: [Notification]".to_string();
        thread::spawn(move || pod.finish(reply, turn, false));
    }

    fn finish(self: Arc<Self>, reply: String, turn: u64, report: bool) {
        thread::sleep(Duration::from_millis(self.args.turn_ms));
        self.broadcast(json!({"event": "llm_call_start", "data": {"llm_call": turn}}));
        self.broadcast(json!({"event": "text_delta", "data": {"text": reply}}));
        self.broadcast(json!({"event": "text_done", "data": {"text": reply}}));
        self.broadcast(json!({"event": "usage", "data": {"input_tokens": 5, "output_tokens": 3}}));
        let ts = now_ms();
        self.entries.lock().push(json!({"kind": "assistant_item", "ts": ts, "item": {"kind": "message", "role": "assistant", "content": [{"kind": "text", "text": reply}]}}));
        self.broadcast(json!({"event": "llm_call_end", "data": {"llm_call": turn}}));
        self.broadcast(json!({"event": "turn_end", "data": {"turn": turn, "result": "finished"}}));
        {
            let mut entries = self.entries.lock();
            entries.push(json!({"kind": "turn_end", "ts": ts, "turn_count": turn}));
            entries.push(
                json!({"kind": "llm_usage", "ts": ts, "input_total_tokens": 5, "output_tokens": 3}),
            );
            entries.push(json!({"kind": "run_completed", "ts": ts, "interrupted": false, "result": "finished"}));
        }
        self.broadcast(json!({"event": "run_end", "data": {"result": "finished"}}));
        *self.status.lock() = "idle";
        self.write_status();
        self.broadcast(json!({"event": "status", "data": {"status": "idle"}}));
        if report {
            if let Some(cb) = self.callback() {
                let method = wire::lifecycle_method(self.gen, "turn_ended", &self.name);
                let _ = talk::report(&cb, &method);
            }
        }
    }

    fn callback(&self) -> Option<PathBuf> {
        let path = self.args.callback.as_ref()?;
        let parent = path.parent()?.file_name()?.to_str()?;
        self.socket(parent)
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

    /// The runtime's `registry.remove(name)`: memory, mirror, metadata, allocation table, in
    /// its order and with its plain truncating writes.
    fn remove_child(&self, child: &str) {
        let record = {
            let mut reg = self.registry.lock();
            let pos = reg.iter().position(|c| c.name == child);
            pos.map(|i| reg.remove(i))
        };
        self.write_mirror();
        let Ok(own) = PodName::new(&self.name) else {
            return;
        };
        let path = self.paths.metadata(&own);
        let mut meta = metadata::read_settled(&path, self.gen)
            .unwrap_or_else(|_| Metadata::new(&self.name, self.gen));
        meta.set_children(&self.registry.lock());
        let _ = std::fs::write(&path, meta.to_bytes());
        let Some(record) = record else { return };
        let _ = alloc::update(
            &self.paths.alloc_table(),
            self.gen,
            Duration::from_secs(5),
            |t| {
                (
                    true,
                    t.reclaim_delegated_scope(&self.name, child, &record.scope_delegated),
                )
            },
        );
        let mut meta = metadata::read_settled(&path, self.gen)
            .unwrap_or_else(|_| Metadata::new(&self.name, self.gen));
        meta.set_children(&self.registry.lock());
        meta.push_reclaimed(&record.name, &record.scope_delegated);
        let _ = std::fs::write(&path, meta.to_bytes());
        info!(child, "child removed and reclaimed");
    }

    fn shutdown(&self) {
        self.broadcast(json!({"event": "shutdown"}));
        if let Some(cb) = self.callback() {
            let method = wire::lifecycle_method(self.gen, "shut_down", &self.name);
            if let Err(e) = talk::report(&cb, &method) {
                warn!(error = %e, "shut_down report failed");
            }
        }
        let _ = alloc::update(
            &self.paths.alloc_table(),
            self.gen,
            Duration::from_secs(5),
            |t| (t.release(&self.name), ()),
        );
        let files = self.files.lock();
        self.stopped.store(true, Ordering::SeqCst);
        for c in self.clients.lock().drain(..) {
            let _ = c.lock().shutdown(std::net::Shutdown::Both);
        }
        let dir = self.paths.runtime.join(&self.name);
        let _ = std::fs::remove_file(dir.join("sock"));
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            warn!(pod = %self.name, error = %e, "cannot remove the runtime dir");
        }
        info!(pod = %self.name, "reference pod shut down");
        if self.args.names.len() == 1 {
            // With the file lock held: nothing of this pod writes again.
            std::process::exit(0);
        }
        drop(files);
    }
}
