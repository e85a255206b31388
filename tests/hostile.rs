//! Children that try to cost podfs more than its budget, or to make it lie: they flood,
//! never end a message, send one endless line, send garbage, vanish mid-line. Whatever a
//! child sends, podfs stays under its memory budget plus a fixed 64 MiB, the child that
//! does not fit answers `EFBIG` on its own files, and its siblings are served as before.
//! And podfs's own shortage of descriptors is never reported as a child being gone.
#[macro_use]
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &fuse,
            tests![
                text_announced_without_end_stops_at_the_budget,
                one_endless_event_line_stops_at_the_budget,
                histories_that_grow_forever_under_a_pinned_watch_stop_at_the_budget,
                many_large_children_together_stay_within_the_budget,
                garbage_stalls_and_lines_cut_by_a_disconnect_get_clear_answers,
                three_thousand_live_children_are_all_idle,
                podfs_running_out_of_descriptors_never_calls_a_child_unreachable,
            ],
        )
        .run()
}

/// The budget these tests run with, and what podfs may hold above it.
const BUDGET_MIB: u64 = 32;
const SLACK_MIB: u64 = 64;

fn event(name: &str, data: serde_json::Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({"event": name, "data": data})).unwrap();
    line.push(b'\n');
    line
}

/// Write until the peer stops reading (podfs dropped the connection) or `limit` bytes.
fn pour(mut s: UnixStream, first: &[u8], mut next: impl FnMut() -> Vec<u8>, limit: usize) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
    if s.write_all(first).is_err() {
        return;
    }
    let mut sent = first.len();
    while sent < limit {
        let chunk = next();
        if s.write_all(&chunk).is_err() {
            return;
        }
        sent += chunk.len();
    }
    // Then hold the connection, as a live child would.
    let mut sink = [0u8; 64];
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.read(&mut sink);
}

/// A mount of a home with one well-behaved demo child, `child1`, beside the hostile one.
struct Stage {
    m: Mount,
    _pods: podfs::demo::Pods,
    _fake: FakeChild,
    home: Home,
}

fn stage(name: &str, behave: impl Fn(UnixStream) + Send + Sync + 'static) -> Stage {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let pods = demo_pods(&home, &["child1"]);
    let fake = FakeChild::serve(&home, name, behave);
    let budget = BUDGET_MIB.to_string();
    let m = Mount::quick(&home, &["--memory-budget-mib", &budget]);
    settle(&m, "child1");
    Stage {
        m,
        _pods: pods,
        _fake: fake,
        home,
    }
}

impl Stage {
    fn p(&self) -> String {
        format!("{}/parent", self.m.s())
    }

    /// podfs's peak resident size is within the budget plus the fixed slack, and the
    /// well-behaved sibling answers as before.
    fn check_bounds(&self, what: &str) {
        let peak = peak_rss_mib(self.m.pid());
        eprintln!("{what}: podfs peak RSS {peak} MiB (budget {BUDGET_MIB} MiB)");
        assert!(
            peak <= BUDGET_MIB + SLACK_MIB,
            "{what}: peak RSS {peak} MiB over {BUDGET_MIB} + {SLACK_MIB} MiB"
        );
        let p = self.p();
        assert_eq!(ok(&format!("cat {p}/child1/status")), "idle\n", "{what}");
        assert!(
            ok(&format!("cat {p}/child1/log")).contains("echo: child1"),
            "{what}"
        );
        let _ = &self.home;
    }

    /// The errno a read of `file` of `child` gives (or OK).
    fn errno_of(&self, child: &str, file: &str) -> String {
        py_errno(&format!("open('{}/{child}/{file}').read()", self.p()))
    }
}

fn text_announced_without_end_stops_at_the_budget() {
    // `text_done` after `text_done`, never an `llm_call_end` to log them as a message.
    let chunk = "x".repeat(64 << 10);
    let st = stage("flood", move |s| {
        let first = [
            snapshot_line(&[]),
            event("status", json!({"status": "running"})),
            event("invoke_start", json!({"kind": "user_send"})),
        ]
        .concat();
        let line = event("text_done", json!({"text": chunk}));
        pour(s, &first, || line.clone(), 2 << 30);
    });
    // `tail -f log` pins the watch: it is never evicted, so only the budget can stop it.
    let mut tail = Command::new("tail")
        .args(["-f", &format!("{}/flood/log", st.p())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), || {
        st.m.log().contains("exceeds the memory budget")
    });
    let _ = tail.kill();
    let _ = tail.wait();
    assert_eq!(st.errno_of("flood", "status"), "EFBIG");
    st.check_bounds("text_done without llm_call_end");
}

fn one_endless_event_line_stops_at_the_budget() {
    // A 200 MB line and more: a Snapshot whose one assistant text never ends.
    let st = stage("endless", |s| {
        let head = br#"{"event":"snapshot","data":{"entries":[{"kind":"assistant_item","ts":1,"item":{"kind":"message","role":"assistant","content":[{"kind":"text","text":""#;
        let chunk = vec![b'y'; 1 << 20];
        pour(s, head, || chunk.clone(), 200 << 20);
    });
    assert_eq!(st.errno_of("endless", "output"), "EFBIG");
    assert_eq!(st.errno_of("endless", "status"), "EFBIG");
    st.check_bounds("a 200 MB line");
}

fn histories_that_grow_forever_under_a_pinned_watch_stop_at_the_budget() {
    // Whole messages this time, each logged: the history itself grows.
    let text = "z".repeat(256 << 10);
    let st = stage("grower", move |s| {
        let first = [
            snapshot_line(&["start"]),
            event("status", json!({"status": "running"})),
            event("invoke_start", json!({"kind": "user_send"})),
        ]
        .concat();
        let turn = [
            event("text_done", json!({"text": text})),
            event("llm_call_end", json!({})),
        ]
        .concat();
        pour(s, &first, || turn.clone(), 1 << 30);
    });
    let mut tail = Command::new("tail")
        .args(["-f", &format!("{}/grower/log", st.p())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), || {
        st.m.log().contains("exceeds the memory budget")
    });
    let _ = tail.kill();
    let _ = tail.wait();
    assert_eq!(st.errno_of("grower", "log"), "EFBIG");
    st.check_bounds("a history that grows forever");
}

fn many_large_children_together_stay_within_the_budget() {
    // Twenty children of 4 MB each: more than the budget together; each alone fits.
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let pods = demo_pods(&home, &["child1"]);
    let text = "w".repeat(4 << 20);
    let line = std::sync::Arc::new(snapshot_line(&[&text]));
    let fakes: Vec<FakeChild> = (0..20)
        .map(|i| {
            let line = line.clone();
            FakeChild::serve(&home, &format!("big{i}"), move |s| {
                pour(s, &line, Vec::new, 0);
            })
        })
        .collect();
    let budget = BUDGET_MIB.to_string();
    let m = Mount::quick(&home, &["--memory-budget-mib", &budget]);
    settle(&m, "child1");
    let p = format!("{}/parent", m.s());
    for i in 0..20 {
        // Each is served in full when asked (older idle watches make room).
        let log = ok(&format!("cat {p}/big{i}/log"));
        assert_eq!(log.len(), text.len() + 1, "big{i}");
    }
    let peak = peak_rss_mib(m.pid());
    eprintln!("20 children of 4 MB: podfs peak RSS {peak} MiB (budget {BUDGET_MIB} MiB)");
    assert!(peak <= BUDGET_MIB + SLACK_MIB, "peak RSS {peak} MiB");
    let r = m.report();
    assert!(r["evicted_for_memory"] > 0, "{r:?}");
    assert!(r["budget_used"] <= BUDGET_MIB << 20, "{r:?}");
    assert_eq!(ok(&format!("cat {p}/child1/status")), "idle\n");
    drop(fakes);
    drop(pods);
}

fn garbage_stalls_and_lines_cut_by_a_disconnect_get_clear_answers() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _pods = demo_pods(&home, &["child1"]);
    let _garbage = FakeChild::serve(&home, "garbage", |mut s| {
        let _ = s.write_all(b"\x00\xff not json at all\n{\"half\":\n");
        std::thread::sleep(Duration::from_secs(30));
    });
    let _stall = FakeChild::serve(&home, "stall", |s| {
        std::thread::sleep(Duration::from_secs(30));
        drop(s);
    });
    let _cut = FakeChild::serve(&home, "cut", |mut s| {
        let line = snapshot_line(&["never whole"]);
        let _ = s.write_all(&line[..line.len() / 2]);
    });
    let m = Mount::quick(&home, &[]);
    settle(&m, "child1");
    let p = format!("{}/parent", m.s());
    for name in ["garbage", "stall", "cut"] {
        assert_eq!(
            ok(&format!("cat {p}/{name}/status")),
            "unreachable\n",
            "{name}"
        );
    }
    // The silent one times out, the ones that broke the protocol are gone: never an empty
    // success pretending to be text.
    assert_eq!(
        py_errno(&format!("open('{p}/stall/output').read()")),
        "ETIMEDOUT"
    );
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{p}/cut/input', os.O_WRONLY); os.write(fd, b'x')"
        )),
        "EHOSTDOWN"
    );
    assert_eq!(ok(&format!("cat {p}/child1/status")), "idle\n");
}

/// Serve `names`' sockets under `run/` from one thread of this process: each answers its
/// connections with an idle, empty Snapshot and keeps them open.
fn serve_many(home: &Home, names: &[String]) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    let mut listeners = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let sock = home.path().join("run").join(n).join("sock");
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let l = UnixListener::bind(&sock).unwrap();
        l.set_nonblocking(true).unwrap();
        epoll
            .add(l.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .unwrap();
        listeners.push(l);
    }
    let line = snapshot_line(&[]);
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let mut events = vec![EpollEvent::empty(); 256];
        while !flag.load(Ordering::SeqCst) {
            let n = epoll
                .wait(&mut events, EpollTimeout::from(100u16))
                .unwrap_or(0);
            for ev in &events[..n] {
                while let Ok((mut s, _)) = listeners[ev.data() as usize].accept() {
                    let _ = s.write_all(&line);
                    held.push(s);
                }
            }
        }
    });
    stop
}

fn raise_own_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// A parent with these children, each at `run/<name>/sock`.
fn parent_of(home: &Home, names: &[String]) {
    let h = home.s();
    let kids: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            json!({"pod_name": n, "socket_path": format!("{h}/run/{n}/sock"),
            "scope_delegated": [], "callback_address": ""})
        })
        .collect();
    home.write_json(
        "pods/parent/metadata.json",
        &json!({"pod_name": "parent", "spawned_children": kids}),
    );
}

fn three_thousand_live_children_are_all_idle() {
    raise_own_descriptor_limit();
    let home = Home::demo(&INSOMNIA, &[]);
    let names: Vec<String> = (0..3000).map(|i| format!("c{i}")).collect();
    parent_of(&home, &names);
    let stop = serve_many(&home, &names);
    let m = Mount::with_args(
        &home,
        &["--status-timeout-ms", "20000", "--io-timeout-ms", "20000"],
    );
    let started = Instant::now();
    let statuses = ok(&format!("cat {}/parent/*/status", m.s()));
    eprintln!(
        "3,000 live children: cat */status in {:?}",
        started.elapsed()
    );
    let words: std::collections::BTreeMap<&str, usize> =
        statuses.lines().fold(Default::default(), |mut acc, w| {
            *acc.entry(w).or_default() += 1;
            acc
        });
    assert_eq!(words.get("idle"), Some(&3000), "{words:?}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn podfs_running_out_of_descriptors_never_calls_a_child_unreachable() {
    let home = Home::demo(&INSOMNIA, &[]);
    let names: Vec<String> = (0..150).map(|i| format!("c{i}")).collect();
    parent_of(&home, &names);
    let stop = serve_many(&home, &names);
    // podfs may raise its soft limit only to the hard one: 64 descriptors in all.
    let mut limited = Command::new("prlimit");
    limited.args(["--nofile=64:64", "--"]);
    let m = Mount::started(&home, limited, &["--status-timeout-ms", "3000"], &[]);
    let p = format!("{}/parent", m.s());
    let script = format!(
        "import errno, os\nfor i in range(150):\n    try:\n        print(open('{p}/c%d/status' % i).read().strip())\n    except OSError as e:\n        print(errno.errorcode[e.errno])\n"
    );
    let out = ok(&format!("python3 -c \"{script}\""));
    let words: std::collections::BTreeMap<&str, usize> =
        out.lines().fold(Default::default(), |mut acc, w| {
            *acc.entry(w).or_default() += 1;
            acc
        });
    eprintln!("150 children, 64 descriptors: {words:?}");
    assert!(!words.contains_key("unreachable"), "{words:?}");
    assert!(
        words
            .keys()
            .all(|w| ["idle", "EMFILE", "ENFILE"].contains(w)),
        "{words:?}"
    );
    assert!(words.get("idle").copied().unwrap_or(0) > 0, "{words:?}");
    assert!(words.get("EMFILE").copied().unwrap_or(0) > 0, "{words:?}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
}
