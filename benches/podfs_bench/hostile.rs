//! Children that try to make podfs hold more than its budget, wait longer than its bounds,
//! or outlive a shutdown, with podfs's default settings (a 256 MiB budget). Each figure is
//! the bound it holds: peak RSS against the budget plus the 64 MiB podfs may add, and the
//! time a waiting caller or a shutdown takes against the child's own silence.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Server, GEN};

const BUDGET_MIB: u64 = 256;

fn line(value: serde_json::Value) -> Vec<u8> {
    let mut l = serde_json::to_vec(&value).unwrap();
    l.push(b'\n');
    l
}

fn snapshot(texts: &[&str]) -> Vec<u8> {
    let entries: Vec<_> = texts
        .iter()
        .map(|t| json!({"kind": "assistant_item", "ts": 1, "item": {"kind": "message", "role": "assistant", "content": [{"kind": "text", "text": t}]}}))
        .collect();
    line(json!({"event": "snapshot", "data": {"entries": entries, "status": "idle"}}))
}

/// A home whose `parent` lists `names`, each at `run/<name>/sock`.
fn home(names: &[String]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("podfs-bench-hostile-")
        .tempdir()
        .unwrap();
    podfs::demo::home::create(dir.path(), &GEN, "parent", &[]).unwrap();
    let h = dir.path().display().to_string();
    let kids: Vec<_> = names
        .iter()
        .map(|n| json!({"pod_name": n, "socket_path": format!("{h}/run/{n}/sock"), "scope_delegated": [], "callback_address": ""}))
        .collect();
    std::fs::write(
        dir.path().join("pods/parent/metadata.json"),
        serde_json::to_vec_pretty(&json!({"pod_name": "parent", "spawned_children": kids}))
            .unwrap(),
    )
    .unwrap();
    dir
}

/// Serve `name` in `home` with `behave` per connection, on threads of this process.
fn serve(home: &Path, name: &str, behave: impl Fn(UnixStream) + Send + Sync + 'static) {
    let sock = home.join("run").join(name).join("sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let listener = UnixListener::bind(&sock).unwrap();
    let behave = std::sync::Arc::new(behave);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let behave = behave.clone();
            std::thread::spawn(move || behave(s));
        }
    });
}

/// Write `first`, then `next()` until the peer stops reading or `limit` bytes.
fn pour(mut s: UnixStream, first: &[u8], next: impl Fn() -> Vec<u8>, limit: usize) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(60)));
    if s.write_all(first).is_err() {
        return;
    }
    let mut sent = first.len();
    while sent < limit {
        let c = next();
        if s.write_all(&c).is_err() {
            return;
        }
        sent += c.len();
    }
    std::thread::sleep(Duration::from_secs(60));
}

fn mount(home: &Path, extra: &[&str], log: &Path) -> Server {
    Server::podfs_logged(home, extra, log)
}

fn wait_for_log(log: &Path, text: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(text)
    {
        if started.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn peak_line(what: &str, server: &Server, took: Duration) -> String {
    let (_, peak_kib) = server.rss_kib();
    let peak = peak_kib / 1024;
    let held = if peak <= BUDGET_MIB + 64 {
        "held"
    } else {
        "BROKEN"
    };
    format!(
        "| {what} | {peak} MiB | {} MiB | {held} | {:.1} s |",
        BUDGET_MIB + 64,
        took.as_secs_f64()
    )
}

pub fn run(quick: bool) -> Vec<String> {
    let mut out = vec![
        format!("Hostile children, default budget ({BUDGET_MIB} MiB):"),
        String::new(),
        "| behaviour | podfs peak RSS | bound | | until cut off |".into(),
        "|---|---|---|---|---|".into(),
    ];
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("podfs.log");

    // `text_done` forever, never an `llm_call_end`, under `tail -f log`.
    {
        let dir = home(&["flood".into()]);
        let chunk = "x".repeat(1 << 20);
        serve(dir.path(), "flood", move |s| {
            let first = [
                snapshot(&[]),
                line(json!({"event": "status", "data": {"status": "running"}})),
            ]
            .concat();
            let ev = line(json!({"event": "text_done", "data": {"text": chunk}}));
            pour(s, &first, || ev.clone(), 4 << 30);
        });
        let server = mount(dir.path(), &[], &log);
        let mut tail = Command::new("tail")
            .arg("-f")
            .arg(server.path().join("parent/flood/log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let took = wait_for_log(&log, "exceeds the memory budget", Duration::from_secs(120));
        let _ = tail.kill();
        let _ = tail.wait();
        out.push(peak_line(
            "`text_done` without `llm_call_end`, pinned by `tail -f`",
            &server,
            took,
        ));
    }

    // One event line of 1 GB (quick: 400 MB).
    {
        let dir = home(&["endless".into()]);
        let size = if quick { 400 << 20 } else { 1 << 30 };
        serve(dir.path(), "endless", move |s| {
            let head = br#"{"event":"snapshot","data":{"entries":[{"kind":"assistant_item","ts":1,"item":{"kind":"message","role":"assistant","content":[{"kind":"text","text":""#;
            let chunk = vec![b'y'; 1 << 20];
            pour(s, head, || chunk.clone(), size);
        });
        let server = mount(dir.path(), &[], &log);
        let started = Instant::now();
        let _ = std::fs::read(server.path().join("parent/endless/status"));
        out.push(peak_line(
            &format!("one event line of {} MB", size >> 20),
            &server,
            started.elapsed(),
        ));
    }

    // Sixty children of 8 MB each: 480 MB together, each fits alone.
    {
        let n = if quick { 40 } else { 60 };
        let names: Vec<String> = (0..n).map(|i| format!("big{i}")).collect();
        let dir = home(&names);
        let text = "w".repeat(8 << 20);
        let snap = std::sync::Arc::new(snapshot(&[&text]));
        for name in &names {
            let snap = snap.clone();
            serve(dir.path(), name, move |s| pour(s, &snap, Vec::new, 0));
        }
        let server = mount(dir.path(), &[], &log);
        let started = Instant::now();
        for name in &names {
            let _ = std::fs::read(server.path().join("parent").join(name).join("log"));
        }
        out.push(peak_line(
            &format!("{n} children of 8 MB read one after another"),
            &server,
            started.elapsed(),
        ));
    }

    out.push(String::new());
    out.push(
        "Waits on a silent child (accepts, never answers; status bound 1.5 s, I/O bound 5 s):"
            .into(),
    );
    out.push(String::new());
    out.push("| what | took | the child's own bound |".into());
    out.push("|---|---|---|".into());
    let dir = home(&["silent".into(), "silent2".into()]);
    for name in ["silent", "silent2"] {
        serve(dir.path(), name, |s| {
            std::thread::sleep(Duration::from_secs(120));
            drop(s);
        });
    }
    {
        let server = mount(dir.path(), &[], &log);
        let c = server.path().join("parent/silent");
        let started = Instant::now();
        let _ = Command::new("ls").arg("-l").arg(&c).output();
        let _ = std::fs::read(c.join("status"));
        let _ = std::fs::metadata(c.join("log"));
        out.push(format!(
            "| `ls -l`, `cat status`, `stat log` of one silent child | {:.2} s | 1.5 s per file before |",
            started.elapsed().as_secs_f64()
        ));
        // Ctrl-C on a read that waits for a child nobody asked before.
        let mut cat = Command::new("cat")
            .arg(server.path().join("parent/silent2/output"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(cat.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = cat.wait();
        out.push(format!(
            "| Ctrl-C on `cat output` waiting for it | {:.0} ms | 5 s |",
            started.elapsed().as_secs_f64() * 1000.0
        ));
    }
    {
        // SIGTERM with sixteen readers waiting for it.
        let mut server = mount(dir.path(), &["--io-timeout-ms", "60000"], &log);
        let readers: Vec<_> = (0..16)
            .map(|i| {
                Command::new("cat")
                    .arg(
                        server
                            .path()
                            .join("parent/silent")
                            .join(["output", "log"][i % 2]),
                    )
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        server.stop();
        out.push(format!(
            "| SIGTERM with 16 readers waiting | {:.0} ms to exit | 60 s |",
            started.elapsed().as_secs_f64() * 1000.0
        ));
        for mut r in readers {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
    out
}
