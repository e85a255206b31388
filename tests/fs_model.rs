//! The logic layer driven directly, without FUSE or a mount, against a reference model
//! (as awslabs/mountpoint-s3's `tests/fs.rs` and `reftests` do): random sequences of file
//! operations, child turns, disconnects, compactions, runtime edits of the registry and
//! removals, with every answer compared to what a simple model predicts.
//!
//! The children are fake pods in this process, so each step is deterministic: a turn is
//! played out on the socket before the next operation, and the test waits until podfs's
//! watch has caught up with the child (bounded) before comparing.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use proptest::prelude::*;
use serde_json::{json, Value};

use podfs::error::Error;
use podfs::fs::{inode, Caller, PodFs, Round, Step, Wait};
use podfs::generation::INSOMNIA_5472 as GEN;
use podfs::paths::Paths;
use podfs::pod_client::Timeouts;
use podfs::process::Requester;
use podfs::protocol::history::History;
use podfs::watch::WatchConfig;

use common::harness::{Need, Suite};

fn main() -> std::process::ExitCode {
    Suite::new()
        .add(
            &Need::Met,
            tests![
                the_logic_layer_agrees_with_the_model,
                a_fixed_sequence_covers_every_operation,
                concurrent_callers_keep_the_invariants,
            ],
        )
        .run()
}

const CHILDREN: [&str; 2] = ["a", "b"];

// ---------------------------------------------------------------------------------------
// A fake child pod, driven by the test.

#[derive(Default)]
struct ChildState {
    sock: PathBuf,
    entries: Vec<Value>,
    clients: Vec<UnixStream>,
    received: Vec<String>,
    up: bool,
    stopped: bool,
}

struct FakeChild {
    sock: PathBuf,
    state: Arc<Mutex<ChildState>>,
}

fn send(clients: &mut Vec<UnixStream>, event: &Value) {
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    clients.retain_mut(|c| c.write_all(&line).is_ok());
}

impl FakeChild {
    fn start(sock: PathBuf) -> FakeChild {
        let child = FakeChild {
            state: Arc::new(Mutex::new(ChildState {
                sock: sock.clone(),
                ..ChildState::default()
            })),
            sock,
        };
        child.up();
        child
    }

    fn up(&self) {
        let _ = std::fs::remove_file(&self.sock);
        std::fs::create_dir_all(self.sock.parent().unwrap()).unwrap();
        let listener = UnixListener::bind(&self.sock).unwrap();
        self.state.lock().up = true;
        let state = self.state.clone();
        let sock = self.sock.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let mut s = state.lock();
                if !s.up || !sock.exists() {
                    break;
                }
                let mut w = stream.try_clone().unwrap();
                let snapshot =
                    json!({"event": "snapshot", "data": {"entries": s.entries, "status": "idle"}});
                let mut line = snapshot.to_string().into_bytes();
                line.push(b'\n');
                if w.write_all(&line).is_err() {
                    continue;
                }
                s.clients.push(w);
                drop(s);
                let state = state.clone();
                thread::spawn(move || serve(state, stream));
            }
        });
    }

    fn down(&self) {
        let mut s = self.state.lock();
        s.up = false;
        let _ = std::fs::remove_file(&self.sock);
        for c in s.clients.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn turn(&self, text: &str) {
        turn(&mut self.state.lock(), text, false);
    }

    fn compact(&self) {
        let mut s = self.state.lock();
        let summary = format!("summary of {}", s.entries.len());
        s.entries = vec![json!({"kind": "segment_start", "history": [
            {"kind": "message", "role": "assistant", "content": [{"kind": "text", "text": summary}]}]})];
        send(
            &mut s.clients,
            &json!({"event": "compact_done", "data": {}}),
        );
    }
}

/// A whole turn, played out at once: the events of a run and the entries it logs.
fn turn(s: &mut ChildState, text: &str, user: bool) {
    let reply = format!("echo: {text}");
    let segments = json!([{"kind": "text", "content": text}]);
    let events = [
        json!({"event": "user_message", "data": {"segments": segments}}),
        json!({"event": "status", "data": {"status": "running"}}),
        json!({"event": "invoke_start", "data": {"kind": if user { "user_send" } else { "notify" }}}),
        json!({"event": "turn_start", "data": {"turn": 1}}),
        json!({"event": "text_done", "data": {"text": reply}}),
        json!({"event": "usage", "data": {"input_tokens": 1, "output_tokens": 1}}),
        json!({"event": "llm_call_end", "data": {"llm_call": 1}}),
        json!({"event": "turn_end", "data": {"turn": 1, "result": "finished"}}),
        json!({"event": "run_end", "data": {"result": "finished"}}),
        json!({"event": "status", "data": {"status": "idle"}}),
    ];
    if s.entries.is_empty() {
        s.entries
            .push(json!({"kind": "segment_start", "history": []}));
    }
    s.entries.push(json!({"kind": "invoke"}));
    s.entries
        .push(json!({"kind": "user_input", "segments": segments}));
    s.entries.push(json!({"kind": "assistant_item", "item": {"kind": "message", "role": "assistant", "content": [{"kind": "text", "text": reply}]}}));
    s.entries.push(json!({"kind": "turn_end"}));
    s.entries.push(json!({"kind": "llm_usage"}));
    s.entries.push(json!({"kind": "run_completed"}));
    for e in &events {
        send(&mut s.clients, e);
    }
}

fn serve(state: Arc<Mutex<ChildState>>, stream: UnixStream) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let Ok(method) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let mut s = state.lock();
        match method["method"].as_str() {
            Some("run") => {
                let text = method["params"]["input"][0]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                s.received.push(text.clone());
                turn(&mut s, &text, true);
            }
            Some("shutdown") => {
                send(&mut s.clients, &json!({"event": "shutdown"}));
                // The runtime removes its socket as it exits.
                s.stopped = true;
                s.up = false;
                let _ = std::fs::remove_file(&s.sock);
                for c in s.clients.drain(..) {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
                break;
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Driving the logic layer.

struct World {
    _home: tempfile::TempDir,
    home: PathBuf,
    fs: PodFs,
    children: HashMap<&'static str, FakeChild>,
    paths: Paths,
}

/// Run an operation that may ask to wait: park it as the adapter does, then ask again in
/// the round that follows (an `output` open after waiting for the child's state may wait
/// once more, for a turn to end; a turn here is played out at once, so that wait is short).
fn settle<T: Send + 'static>(
    fs: &PodFs,
    first: Step<T>,
    again: impl Fn(Round) -> Step<T>,
) -> Result<T, Error> {
    let mut step = first;
    loop {
        match step {
            Step::Ready(r) => return r,
            Step::Wait(w, bound) => {
                let round = w.next_round();
                let bound = bound.min(Duration::from_secs(30));
                let (tx, rx) = mpsc::channel();
                fs.park(
                    w,
                    bound,
                    Requester::NOBODY,
                    Box::new(move |_| {
                        let _ = tx.send(());
                    }),
                );
                rx.recv_timeout(bound + Duration::from_secs(5))
                    .expect("the wait never ended");
                step = again(round);
                if round == Round::Last || !matches!(step, Step::Wait(Wait::TurnOver(_), _)) {
                    return step.into_result();
                }
            }
        }
    }
}

impl World {
    fn new() -> World {
        if let Ok(filter) = std::env::var("PODFS_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
        }
        let dir = podfs::scratch::tempdir("podfs-test-").unwrap();
        let home = dir.path().to_path_buf();
        let names: Vec<String> = CHILDREN.iter().map(|s| s.to_string()).collect();
        podfs::demo::home::create(&home, &GEN, "parent", &names).unwrap();
        let paths = Paths::for_home(&home, &GEN);
        let children = CHILDREN
            .iter()
            .map(|c| (*c, FakeChild::start(home.join("run").join(c).join("sock"))))
            .collect();
        let timeouts = Timeouts {
            io: Duration::from_secs(2),
            status_wait: Duration::from_secs(2),
            stop_wait: Duration::from_secs(2),
            confirm_wait: Duration::from_millis(500),
            ..Timeouts::default()
        };
        let fs = podfs::fs::build(
            std::sync::Arc::new(podfs::home::Home::for_home(&home, &GEN).unwrap()),
            timeouts,
            WatchConfig::default(),
            &podfs::fs::Settings::default(),
            true,
        )
        .unwrap();
        World {
            _home: dir,
            home,
            fs,
            children,
            paths,
        }
    }

    /// Whether the watch of the child in `dir` has caught up with `entries`: its whole
    /// text in `log`, and `status` back to idle (bounded wait).
    fn caught_up(&self, dir: &str, entries: &[Value]) -> bool {
        let expected = text_of(entries, 0);
        eventually(|| self.cat(&format!("{dir}log")) == Ok(expected.clone()))
            && eventually(|| self.cat(&format!("{dir}status")) == Ok("idle\n".into()))
    }

    fn ino(&self, path: &str) -> Result<u64, i32> {
        let mut ino = inode::ROOT;
        for part in path.split('/') {
            ino = self
                .fs
                .lookup(ino, OsStr::new(part))
                .map_err(|e| e.errno())?
                .ino;
        }
        Ok(ino)
    }

    fn open(&self, path: &str, write: bool) -> Result<u64, i32> {
        let ino = self.ino(path)?;
        settle(
            &self.fs,
            self.fs
                .open(ino, write, false, &Caller::INTERNAL, Round::First),
            |round| self.fs.open(ino, write, false, &Caller::INTERNAL, round),
        )
        .map(|o| {
            // Only `log` goes through the page cache; every other file, `output` (one
            // open's snapshot) above all, is read in direct I/O.
            assert_eq!(
                o.pages != podfs::fs::Pages::Direct,
                path.ends_with("/log"),
                "{path}: {:?}",
                o.pages
            );
            o.fh
        })
        .map_err(|e| e.errno())
    }

    fn cat(&self, path: &str) -> Result<String, i32> {
        let fh = self.open(path, false)?;
        let mut out = Vec::new();
        loop {
            let mut chunk = Vec::new();
            self.fs
                .read(fh, out.len() as u64, 7, &mut chunk)
                .map_err(|e| e.errno())?;
            if chunk.is_empty() {
                break;
            }
            out.extend(chunk);
        }
        self.fs.release(fh);
        Ok(String::from_utf8(out).unwrap())
    }

    /// Write `chunks` through one open, then close; the first errno, if any.
    fn write(&self, path: &str, chunks: &[&[u8]]) -> Result<(), i32> {
        let fh = self.open(path, true)?;
        let mut result = Ok(());
        for chunk in chunks {
            let r = settle(
                &self.fs,
                self.fs.write(fh, chunk, &Caller::INTERNAL, false),
                |_| self.fs.write(fh, chunk, &Caller::INTERNAL, true),
            );
            if let Err(e) = r {
                result = Err(e.errno());
            }
        }
        let closed = self.fs.flush(fh, &Caller::INTERNAL);
        self.fs.release(fh);
        match (result, closed) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e.errno()),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    fn ls(&self, path: &str) -> Vec<String> {
        let fh = self.fs.opendir(self.ino(path).unwrap()).unwrap();
        let mut names = Vec::new();
        self.fs
            .readdir(fh, 0, false, |_, e| {
                names.push(e.name.to_string());
                false
            })
            .unwrap();
        self.fs.releasedir(fh);
        names.retain(|n| n != "." && n != "..");
        names
    }

    fn rmdir(&self, child: &str) -> Result<(), i32> {
        let parent = self.ino("parent").unwrap();
        self.fs
            .rmdir(parent, OsStr::new(child), &Caller::INTERNAL, None)
            .map_err(|e| e.errno())
    }

    fn meta_path(&self) -> PathBuf {
        self.home.join("pods/parent/metadata.json")
    }

    /// The runtime edits the registry: remove `child` (to reclaimed_children) or list it
    /// again.
    fn runtime_edit(&self, child: &str, listed: bool) {
        let path = self.meta_path();
        let mut meta = podfs::store::metadata::read(&path, &GEN).unwrap();
        let mut children = meta.children().unwrap();
        if listed {
            children.push(podfs::demo::home::spawned_child(
                &Paths::for_home(&self.home, &GEN),
                "parent",
                child,
            ));
            meta.set_children(&children);
        } else {
            meta.reclaim_child(child);
        }
        std::fs::write(&path, meta.to_bytes()).unwrap();
        let _ = &self.paths;
    }
}

/// Poll `f` until it returns true, at most a few seconds.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
enum Op {
    ReadCursor(usize),
    WriteCursor(usize, Vec<Vec<u8>>),
    ReadOutput(usize),
    ReadLog(usize),
    ReadStatus(usize),
    WriteInput(usize, Vec<Vec<u8>>),
    ChildTurn(usize, String),
    Compact(usize),
    Down(usize),
    Up(usize),
    RuntimeRemove(usize),
    RuntimeAdd(usize),
    Rmdir(usize),
    List,
}

#[derive(Debug, Default, Clone)]
struct ChildModel {
    entries: Vec<Value>,
    cursor: u64,
    up: bool,
    listed: bool,
    /// podfs has looked at it (its watch holds the history seen).
    watched: bool,
    /// The history podfs last saw while the child was up.
    seen: Vec<Value>,
    /// Whether podfs ever saw a history of it (a watch while it was up).
    seen_any: bool,
    removed: bool,
}

fn op() -> impl Strategy<Value = Op> {
    let child = 0..CHILDREN.len();
    let text = "[a-z]{1,6}";
    let chunks = |bytes: BoxedStrategy<Vec<u8>>| prop::collection::vec(bytes, 1..4);
    prop_oneof![
        3 => child.clone().prop_map(Op::ReadCursor),
        3 => (child.clone(), chunks(prop_oneof![Just(b"1".to_vec()), Just(b"0".to_vec()), Just(b"\n".to_vec()), Just(b"x".to_vec())].boxed())).prop_map(|(c, v)| Op::WriteCursor(c, v)),
        4 => child.clone().prop_map(Op::ReadOutput),
        2 => child.clone().prop_map(Op::ReadLog),
        2 => child.clone().prop_map(Op::ReadStatus),
        3 => (child.clone(), chunks(prop_oneof![text.prop_map(String::into_bytes), Just(b"\n".to_vec()), Just(vec![0xffu8])].boxed())).prop_map(|(c, v)| Op::WriteInput(c, v)),
        3 => (child.clone(), text).prop_map(|(c, t)| Op::ChildTurn(c, t)),
        1 => child.clone().prop_map(Op::Compact),
        1 => child.clone().prop_map(Op::Down),
        2 => child.clone().prop_map(Op::Up),
        1 => child.clone().prop_map(Op::RuntimeRemove),
        1 => child.clone().prop_map(Op::RuntimeAdd),
        1 => child.clone().prop_map(Op::Rmdir),
        1 => Just(Op::List),
    ]
}

fn text_of(entries: &[Value], from: u64) -> String {
    let h = History::from_entries(entries);
    let start = podfs::protocol::history::effective_cursor(h.len(), from);
    let text = h.text_from(start);
    if text.is_empty() || text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

fn cursor_value(chunks: &[Vec<u8>]) -> Option<Option<u64>> {
    let data: Vec<u8> = chunks.concat();
    if data.is_empty() {
        return Some(None);
    }
    let body = data.strip_suffix(b"\n").unwrap_or(&data);
    if body.is_empty() || !body.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(body).ok()?.parse().ok().map(Some)
}

fn input_value(chunks: &[Vec<u8>]) -> Option<String> {
    if chunks.first().is_some_and(|c| c == b"\n") {
        return None;
    }
    let data: Vec<u8> = chunks.concat();
    let text = String::from_utf8(data).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(&text).to_string();
    (!text.is_empty()).then_some(text)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let world = World::new();
    let mut model: Vec<ChildModel> = CHILDREN
        .iter()
        .map(|_| ChildModel {
            up: true,
            listed: true,
            ..ChildModel::default()
        })
        .collect();
    let path = |i: usize, file: &str| format!("parent/{}/{file}", CHILDREN[i]);
    for op in ops {
        // Operations on a removed or unlisted child: the files are gone.
        let absent = |m: &ChildModel| m.removed || !m.listed;
        match op {
            Op::ReadCursor(i) => {
                let got = world.cat(&path(i, "cursor"));
                if absent(&model[i]) {
                    prop_assert_eq!(got, Err(libc::ENOENT));
                } else {
                    prop_assert_eq!(got, Ok(format!("{}\n", model[i].cursor)), "{:?}", op);
                }
            }
            Op::WriteCursor(i, ref chunks) => {
                let slices: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                let got = world.write(&path(i, "cursor"), &slices);
                if absent(&model[i]) {
                    prop_assert_eq!(got, Err(libc::ENOENT));
                    continue;
                }
                // A value is checked against the end of the history podfs knows: the
                // child's own if it is up (the write waits for its watch), else the last
                // one podfs saw, else none.
                // Opening `cursor` for writing starts the child's watch.
                let m = &mut model[i];
                m.watched = true;
                if m.up {
                    m.seen = m.entries.clone();
                }
                let end = (m.up || m.seen_any).then_some(m.seen.len() as u64);
                match cursor_value(chunks) {
                    Some(Some(v)) if end.is_some_and(|end| v > end) => {
                        prop_assert_eq!(got, Err(libc::EINVAL), "{:?} past {:?}", op, end)
                    }
                    Some(v) => {
                        prop_assert_eq!(got, Ok(()), "{:?}", op);
                        if let Some(v) = v {
                            m.cursor = v;
                        }
                    }
                    None => prop_assert_eq!(got, Err(libc::EINVAL), "{:?}", op),
                }
                // Only a value above 0 waits for the watch (`echo 0 > cursor` never does):
                // after any other, podfs has the history only once the Snapshot is in.
                if !matches!(cursor_value(chunks), Some(Some(v)) if v > 0) && m.up && m.listed {
                    prop_assert!(world.caught_up(&path(i, ""), &m.entries), "{:?}", op);
                }
            }
            Op::ReadOutput(i) => {
                let got = world.cat(&path(i, "output"));
                let m = &mut model[i];
                if absent(m) {
                    prop_assert_eq!(got, Err(libc::ENOENT));
                    continue;
                }
                m.watched = true;
                if m.up {
                    m.seen = m.entries.clone();
                    let len = m.entries.len() as u64;
                    let expected = text_of(&m.entries, m.cursor);
                    m.cursor = len;
                    prop_assert_eq!(got, Ok(expected), "{:?}", op);
                } else {
                    prop_assert_eq!(got, Ok(String::new()), "{:?}", op);
                }
            }
            Op::ReadLog(i) => {
                let got = world.cat(&path(i, "log"));
                let m = &mut model[i];
                if absent(m) {
                    prop_assert_eq!(got, Err(libc::ENOENT));
                    continue;
                }
                m.watched = true;
                if m.up {
                    m.seen = m.entries.clone();
                }
                prop_assert_eq!(got, Ok(text_of(&m.seen, 0)), "{:?}", op);
            }
            Op::ReadStatus(i) => {
                let got = world.cat(&path(i, "status"));
                let m = &mut model[i];
                if absent(m) {
                    prop_assert_eq!(got, Err(libc::ENOENT));
                    continue;
                }
                m.watched = true;
                if m.up {
                    m.seen = m.entries.clone();
                }
                let word = if m.up { "idle\n" } else { "unreachable\n" };
                prop_assert_eq!(got, Ok(word.to_string()), "{:?}", op);
            }
            Op::WriteInput(i, ref chunks) => {
                let slices: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                let before = world.children[CHILDREN[i]].state.lock().received.len();
                let got = world.write(&path(i, "input"), &slices);
                let m = &mut model[i];
                if absent(m) {
                    prop_assert_eq!(got, Err(libc::ENOENT));
                    continue;
                }
                m.watched = true;
                if m.up {
                    m.seen = m.entries.clone();
                }
                if !m.up {
                    prop_assert_eq!(got, Err(libc::EHOSTDOWN), "{:?}", op);
                    continue;
                }
                match input_value(chunks) {
                    Some(text) => {
                        prop_assert_eq!(got, Ok(()), "{:?}", op);
                        // Delivered after the last close: wait for the child to have it.
                        let child = &world.children[CHILDREN[i]];
                        prop_assert!(eventually(|| child.state.lock().received.len() > before));
                        prop_assert_eq!(
                            child.state.lock().received.last().cloned(),
                            Some(text.clone())
                        );
                        m.entries = child.state.lock().entries.clone();
                        m.seen = m.entries.clone();
                        // Let the watch see the whole turn before the next write.
                        let expected = text_of(&m.entries, 0);
                        prop_assert!(eventually(
                            || world.cat(&path(i, "log")) == Ok(expected.clone())
                        ));
                        prop_assert!(eventually(
                            || world.cat(&path(i, "status")) == Ok("idle\n".into())
                        ));
                    }
                    None => {
                        prop_assert_eq!(got, Err(libc::EINVAL), "{:?}", op);
                        thread::sleep(Duration::from_millis(20));
                        prop_assert_eq!(
                            world.children[CHILDREN[i]].state.lock().received.len(),
                            before
                        );
                    }
                }
            }
            Op::ChildTurn(i, ref text) => {
                let m = &mut model[i];
                if m.removed || !m.up {
                    continue;
                }
                let child = &world.children[CHILDREN[i]];
                child.turn(text);
                m.entries = child.state.lock().entries.clone();
                if m.watched {
                    // The watch follows without being asked, listed or not.
                    m.seen = m.entries.clone();
                }
                if m.watched && m.listed {
                    // Wait until it has: the reply, then the end of the turn.
                    prop_assert!(world.caught_up(&path(i, ""), &m.entries), "{:?}", op);
                }
            }
            Op::Compact(i) => {
                let m = &mut model[i];
                // A watched child that is not listed cannot be looked at to see the
                // watch's fresh Snapshot arrive; a Down right after would race it.
                if m.removed || !m.up || (m.watched && !m.listed) {
                    continue;
                }
                let child = &world.children[CHILDREN[i]];
                child.compact();
                m.entries = child.state.lock().entries.clone();
                if m.watched {
                    m.seen = m.entries.clone();
                }
                if m.watched && m.listed {
                    prop_assert!(world.caught_up(&path(i, ""), &m.entries), "{:?}", op);
                }
            }
            Op::Down(i) => {
                if model[i].removed || !model[i].up {
                    continue;
                }
                world.children[CHILDREN[i]].down();
                model[i].up = false;
                if model[i].watched && model[i].listed {
                    prop_assert!(eventually(
                        || world.cat(&path(i, "status")) == Ok("unreachable\n".into())
                    ));
                }
            }
            Op::Up(i) => {
                if model[i].removed || model[i].up {
                    continue;
                }
                world.children[CHILDREN[i]].up();
                model[i].up = true;
                if model[i].watched && model[i].listed {
                    model[i].seen = model[i].entries.clone();
                    prop_assert!(eventually(
                        || world.cat(&path(i, "status")) == Ok("idle\n".into())
                    ));
                }
            }
            Op::RuntimeRemove(i) => {
                if model[i].removed || !model[i].listed {
                    continue;
                }
                world.runtime_edit(CHILDREN[i], false);
                model[i].listed = false;
                model[i].cursor = 0;
                let name = CHILDREN[i].to_string();
                prop_assert!(eventually(|| !world.ls("parent").contains(&name)));
            }
            Op::RuntimeAdd(i) => {
                if model[i].removed || model[i].listed {
                    continue;
                }
                world.runtime_edit(CHILDREN[i], true);
                model[i].listed = true;
                let name = CHILDREN[i].to_string();
                prop_assert!(eventually(|| world.ls("parent").contains(&name)));
                let m = &model[i];
                if m.watched && m.up {
                    let expected = text_of(&m.seen, 0);
                    prop_assert!(eventually(
                        || world.cat(&path(i, "log")) == Ok(expected.clone())
                    ));
                }
            }
            Op::Rmdir(i) => {
                let got = world.rmdir(CHILDREN[i]);
                let m = &mut model[i];
                if absent(m) {
                    prop_assert_eq!(got, Err(libc::ENOENT));
                    continue;
                }
                prop_assert_eq!(got, Ok(()), "{:?}", op);
                m.removed = true;
                m.up = false;
            }
            Op::List => {
                let expected: Vec<String> = {
                    // The registry keeps its order: a re-added child goes to the end.
                    let meta = podfs::store::metadata::read(&world.meta_path(), &GEN).unwrap();
                    meta.children()
                        .unwrap()
                        .into_iter()
                        .map(|c| c.name)
                        .collect()
                };
                let listed: Vec<&str> = CHILDREN
                    .iter()
                    .zip(&model)
                    .filter(|(_, m)| !m.removed && m.listed)
                    .map(|(c, _)| *c)
                    .collect();
                let mut sorted = expected.clone();
                sorted.sort();
                prop_assert_eq!(sorted, listed);
                prop_assert!(eventually(|| world.ls("parent") == expected));
            }
        }
        // A watch of a child that is up has its history (the operations above waited for
        // it): from then on podfs knows a history of that child.
        for m in model.iter_mut() {
            if m.up && m.watched {
                m.seen_any = true;
            }
        }
    }
    world.fs.shutdown();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        max_shrink_iters: 200,
        failure_persistence: common::regressions_beside_the_test(),
        .. ProptestConfig::default()
    })]

    fn the_logic_layer_agrees_with_the_model(ops in prop::collection::vec(op(), 1..30)) {
        run(ops)?;
    }
}

fn a_fixed_sequence_covers_every_operation() {
    use Op::*;
    let ops = vec![
        ReadStatus(0),
        ReadOutput(0),
        ReadCursor(0),
        WriteInput(0, vec![b"hel".to_vec(), b"lo\n".to_vec()]),
        ReadOutput(0),
        ChildTurn(0, "later".into()),
        ReadLog(0),
        WriteCursor(0, vec![b"0".to_vec(), b"\n".to_vec()]),
        ReadOutput(0),
        Compact(0),
        ReadOutput(0),
        WriteInput(0, vec![vec![0xff]]),
        WriteInput(0, vec![b"\n".to_vec()]),
        Down(0),
        ReadStatus(0),
        ReadLog(0),
        ReadOutput(0),
        WriteInput(0, vec![b"x".to_vec()]),
        Up(0),
        ReadStatus(0),
        RuntimeRemove(1),
        List,
        ReadCursor(1),
        RuntimeAdd(1),
        List,
        ReadCursor(1),
        Rmdir(0),
        List,
        ReadOutput(0),
    ];
    run(ops).unwrap();
}

// ---------------------------------------------------------------------------------------
// Several callers at once, against the same invariants.

/// One reader's `output`, split into the replies it holds (each reply is one line).
fn replies(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Readers of `output`, writers of `input` and the child's own turns on child `a`, and
/// three removers and a reader of `status` on child `b`, all at once: the readers together
/// take every reply exactly once, every message whose writes and close succeeded arrives
/// exactly once (and no refused one), exactly one remover wins, and `status` only ever
/// says a status word. Whatever the interleaving; nothing is paced by sleeps.
fn concurrent(seed: u64) -> Result<(), TestCaseError> {
    let world = World::new();
    let a = &world.children["a"];
    let taken: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let sent: Mutex<Vec<(String, Result<(), i32>)>> = Mutex::new(Vec::new());
    let removed: Mutex<Vec<Result<(), i32>>> = Mutex::new(Vec::new());
    let statuses: Mutex<Vec<Result<String, i32>>> = Mutex::new(Vec::new());
    thread::scope(|s| {
        for r in 0..2 {
            let (world, taken) = (&world, &taken);
            s.spawn(move || {
                for _ in 0..6 + r {
                    if let Ok(text) = world.cat("parent/a/output") {
                        taken.lock().extend(replies(&text));
                    }
                }
            });
        }
        for w in 0..2 {
            let (world, sent) = (&world, &sent);
            s.spawn(move || {
                for i in 0..4 {
                    // A busy child is asked again (each refused message is recorded too).
                    for attempt in 0..50 {
                        let text = format!("m{seed}w{w}i{i}a{attempt}");
                        let got = world.write("parent/a/input", &[text.as_bytes()]);
                        let busy = got == Err(libc::EBUSY);
                        sent.lock().push((text, got));
                        if !busy {
                            break;
                        }
                        thread::yield_now();
                    }
                }
            });
        }
        s.spawn(move || {
            for t in 0..3 {
                a.turn(&format!("own{seed}t{t}"));
            }
        });
        for _ in 0..3 {
            let (world, removed) = (&world, &removed);
            s.spawn(move || removed.lock().push(world.rmdir("b")));
        }
        let (world, statuses) = (&world, &statuses);
        s.spawn(move || {
            for _ in 0..5 {
                statuses.lock().push(world.cat("parent/b/status"));
            }
        });
    });
    // Messages: each accepted one arrives exactly once; refused ones never.
    let sent = sent.into_inner();
    let delivered = |text: &str| {
        a.state
            .lock()
            .received
            .iter()
            .filter(|r| *r == text)
            .count()
    };
    for (text, got) in &sent {
        match got {
            Ok(()) => prop_assert!(
                eventually(|| delivered(text) == 1),
                "{text} accepted but delivered {} times",
                delivered(text)
            ),
            Err(e) => {
                prop_assert_eq!(*e, libc::EBUSY, "{}", text);
                prop_assert_eq!(delivered(text), 0, "{} refused but delivered", text);
            }
        }
    }
    // Output: once the watch has the whole history, one more read takes the rest; then
    // every reply was taken once, none twice.
    let entries = a.state.lock().entries.clone();
    prop_assert!(world.caught_up("parent/a/", &entries));
    if let Ok(rest) = world.cat("parent/a/output") {
        taken.lock().extend(replies(&rest));
    }
    let mut taken = taken.into_inner();
    let expected = replies(&text_of(&entries, 0));
    taken.sort();
    let mut all = expected.clone();
    all.sort();
    prop_assert_eq!(taken, all, "replies taken twice or never");
    // Removal: exactly one winner.
    let mut removed = removed.into_inner();
    removed.sort();
    prop_assert_eq!(removed, vec![Ok(()), Err(libc::ENOENT), Err(libc::ENOENT)]);
    for s in statuses.into_inner() {
        match s {
            Ok(word) => prop_assert!(
                ["idle\n", "running\n", "paused\n", "unreachable\n"].contains(&word.as_str()),
                "{word:?}"
            ),
            Err(e) => prop_assert_eq!(e, libc::ENOENT),
        }
    }
    world.fs.shutdown();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(6),
        max_shrink_iters: 20,
        failure_persistence: common::regressions_beside_the_test(),
        .. ProptestConfig::default()
    })]

    fn concurrent_callers_keep_the_invariants(seed in any::<u64>()) {
        concurrent(seed)?;
    }
}
