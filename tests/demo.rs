//! The reference pods speak each generation's protocol as the real runtime does, and
//! `podfs demo` sets up, mounts and cleans up after itself, however its pods behave.
#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &Need::Met,
            tests![
                the_event_sequence_of_insomnia,
                the_event_sequence_of_yoi_workers,
                a_busy_pod_answers_already_running,
                shutdown_reaches_an_insomnia_parent,
                shutdown_reaches_a_yoi_parent,
            ],
        )
        .add(
            &fuse,
            tests![
                podfs_demo_mounts_and_cleans_up,
                podfs_demo_without_a_mount_point_uses_a_temporary_one,
                the_demo_ends_with_a_stopped_child_and_reaps_removed_ones,
                a_second_interrupt_skips_the_wait,
            ],
        )
        .run()
}

fn events_until_idle(reader: &mut BufReader<UnixStream>) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "pod closed early");
        let v: Value = serde_json::from_str(&line).unwrap();
        let idle = v["event"] == "status" && v["data"]["status"] == "idle";
        out.push(v);
        if idle {
            return out;
        }
    }
}

/// Connect to a pod and read its prelude's Snapshot line, as every client must first.
fn connect(sock: &Path) -> (UnixStream, BufReader<UnixStream>, Value) {
    let stream = UnixStream::connect(sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    (stream, reader, serde_json::from_str(&first).unwrap())
}

fn a_run_produces_the_runtime_event_sequence(gen: Gen) {
    let home = Home::demo(gen, &["child1"]);
    let _pod = PodProcess::start(&home, "child1", &["--turn-ms", "50"]);
    let sock = home.path().join("run/child1/sock");
    let (stream, mut reader, snapshot) = connect(&sock);
    assert_eq!(snapshot["event"], "snapshot");
    assert_eq!(snapshot["data"]["status"], "idle");
    assert_eq!(snapshot["data"]["entries"], Value::Array(vec![]));
    assert_eq!(snapshot["data"]["greeting"][gen.name_key], "child1");
    (&stream)
        .write_all(br#"{"method":"run","params":{"input":[{"kind":"text","content":"hello from podfs"}]}}"#)
        .unwrap();
    (&stream).write_all(b"\n").unwrap();
    let got = events_until_idle(&mut reader);
    let expected: Vec<Value> = fixture_text(gen, "socket/child1-run.jsonl", "/h")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Same events, same data, in the same order as the real runtime's run.
    assert_eq!(got, expected);
    // The history grew like the runtime's (one turn: segment_start then 6 entries).
    let (_, _, snap) = connect(&sock);
    let kinds: Vec<&str> = snap["data"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "segment_start",
            "invoke",
            "user_input",
            "assistant_item",
            "turn_end",
            "llm_usage",
            "run_completed"
        ]
    );
}

fn the_event_sequence_of_insomnia() {
    a_run_produces_the_runtime_event_sequence(&INSOMNIA);
}

fn the_event_sequence_of_yoi_workers() {
    a_run_produces_the_runtime_event_sequence(&YOI);
}

fn a_busy_pod_answers_already_running() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _pod = PodProcess::start(&home, "child1", &["--turn-ms", "2000"]);
    let (stream, mut reader, _) = connect(&home.path().join("run/child1/sock"));
    let mut line = String::new();
    let run =
        b"{\"method\":\"run\",\"params\":{\"input\":[{\"kind\":\"text\",\"content\":\"a\"}]}}\n";
    (&stream).write_all(run).unwrap();
    (&stream).write_all(run).unwrap();
    let mut saw_busy = false;
    for _ in 0..10 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "error" {
            assert_eq!(v["data"]["code"], "already_running");
            saw_busy = true;
            break;
        }
    }
    assert!(saw_busy);
}

fn shutdown_reports_to_the_parent_which_reclaims(gen: Gen) {
    let home = Home::demo(gen, &["child1", "child2"]);
    let pods = demo_pods(&home, &["child1", "child2"]);
    let (stream, mut reader, _) = connect(&home.path().join("run/child1/sock"));
    (&stream).write_all(b"{\"method\":\"shutdown\"}\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), r#"{"event":"shutdown"}"#);
    wait_for(Duration::from_secs(5), || {
        !home.path().join("run/child1").exists()
    });
    wait_for(Duration::from_secs(5), || {
        home.names(&home.json(&home.meta("parent"))["reclaimed_children"]) == ["child1"]
    });
    let meta = home.json(&home.meta("parent"));
    assert_eq!(home.names(&meta["spawned_children"]), ["child2"]);
    assert_eq!(
        home.names(&home.json(&home.table())["allocations"]),
        ["parent", "child2"]
    );
    assert_eq!(home.names(&home.json(&home.mirror("parent"))), ["child2"]);
    drop(pods);
}

fn shutdown_reaches_an_insomnia_parent() {
    shutdown_reports_to_the_parent_which_reclaims(&INSOMNIA);
}

fn shutdown_reaches_a_yoi_parent() {
    shutdown_reports_to_the_parent_which_reclaims(&YOI);
}

/// A running `podfs demo`, stopped and unmounted on drop whatever happens.
struct Demo {
    child: Option<Child>,
    out: BufReader<std::process::ChildStdout>,
    mnt: PathBuf,
    home: PathBuf,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(BIN)
            .args(["--log-level", "warn", "demo"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        for _ in 0..3 {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            lines.push(l);
        }
        assert!(lines[0].contains("podfs demo"), "{lines:?}");
        let mnt = PathBuf::from(lines[1].trim());
        let home = lines[2]
            .trim()
            .strip_prefix("(home: ")
            .and_then(|s| s.split(';').next())
            .map(PathBuf::from)
            .unwrap();
        Demo {
            child: Some(child),
            out,
            mnt,
            home,
        }
    }

    fn m(&self) -> String {
        self.mnt.display().to_string()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Wait for the demo to exit; its status and how long it took.
    fn wait(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                panic!("the demo did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGINT);
            std::thread::sleep(Duration::from_secs(1));
            let _ = child.kill();
            let _ = child.wait();
        }
        force_unmount(&self.mnt);
        let _ = &self.out;
    }
}

/// The pods among the processes whose parent is `pid` (not the demo's cleanup guard, nor
/// the fusermount3 that an ordinary user's mount keeps running), with their states.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    processes()
        .into_iter()
        .filter(|p| p.ppid == pid && p.has_arg("pod"))
        .map(|p| (p.pid, p.state))
        .collect()
}

fn podfs_demo_mounts_and_cleans_up() {
    let parent = tempdir();
    let mnt = parent.path().join("pods");
    let mut demo = Demo::start(&[mnt.to_str().unwrap(), "--children", "2"]);
    let m = demo.m();
    assert_eq!(ok(&format!("ls {m}/parent")), "child1\nchild2\n");
    assert!(demo.home.exists());
    wait_for(Duration::from_secs(5), || {
        sh(&format!("cat {m}/parent/child1/status")).1 == "idle\n"
    });
    assert!(ok(&format!("cat {m}/parent/child1/output")).starts_with("echo: child1 task"));
    signal(demo.pid(), nix::sys::signal::Signal::SIGINT);
    assert!(demo.wait(Duration::from_secs(10)).0.success());
    assert!(!is_mounted(&mnt));
    assert!(
        !mnt.exists(),
        "the demo created the mount point and must remove it"
    );
    assert!(!demo.home.exists(), "demo home left behind");
}

fn podfs_demo_without_a_mount_point_uses_a_temporary_one() {
    let mut demo = Demo::start(&["--children", "1", "--generation", "yoi-worker-485918eb"]);
    let m = demo.m();
    assert!(is_mounted(&demo.mnt));
    assert_eq!(ok(&format!("ls {m}/parent")), "child1\n");
    assert!(demo.home.join("workers/parent/metadata.json").exists());
    signal(demo.pid(), nix::sys::signal::Signal::SIGTERM);
    assert!(demo.wait(Duration::from_secs(10)).0.success());
    assert!(!demo.mnt.exists() && !demo.home.exists());
}

fn the_demo_ends_with_a_stopped_child_and_reaps_removed_ones() {
    let mut demo = Demo::start(&["--children", "3"]);
    let m = demo.m();
    let pods = children_of(demo.pid());
    assert_eq!(pods.len(), 4, "{pods:?}");
    // A child removed with rm -r exits, and the demo reaps it: no zombie.
    ok(&format!("rm -r {m}/parent/child3"));
    wait_for(Duration::from_secs(5), || {
        children_of(demo.pid()).len() == 3
    });
    assert!(children_of(demo.pid())
        .iter()
        .all(|(_, state)| state != "Z"));
    // A stopped child ignores SIGTERM; the demo kills it after its grace period.
    let stopped = children_of(demo.pid())[0].0;
    signal(stopped, nix::sys::signal::Signal::SIGSTOP);
    let pid = demo.pid();
    signal(pid, nix::sys::signal::Signal::SIGINT);
    let (status, took) = demo.wait(Duration::from_secs(15));
    assert!(status.success());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(children_of(pid).is_empty());
    assert!(
        eventually(Duration::from_secs(2), || !Path::new(&format!(
            "/proc/{stopped}"
        ))
        .exists()),
        "the stopped child was left behind"
    );
    assert!(!demo.home.exists());
}

fn a_second_interrupt_skips_the_wait() {
    let mut demo = Demo::start(&["--children", "1"]);
    let stopped = children_of(demo.pid())
        .into_iter()
        .map(|c| c.0)
        .collect::<Vec<_>>();
    for p in &stopped {
        signal(*p, nix::sys::signal::Signal::SIGSTOP);
    }
    signal(demo.pid(), nix::sys::signal::Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    signal(demo.pid(), nix::sys::signal::Signal::SIGINT);
    let (status, took) = demo.wait(Duration::from_secs(15));
    assert!(status.success());
    // Well under the three-second grace the first interrupt grants.
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(!is_mounted(&demo.mnt));
    assert!(!demo.home.exists());
}
