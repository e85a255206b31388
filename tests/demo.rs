//! The reference pods speak the runtime's protocol, and `podfs demo` sets up, mounts and
//! cleans up after itself.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

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
fn connect(sock: &std::path::Path) -> (UnixStream, BufReader<UnixStream>, Value) {
    let stream = UnixStream::connect(sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    (stream, reader, serde_json::from_str(&first).unwrap())
}

#[test]
fn a_run_produces_the_runtime_event_sequence() {
    let home = Home::demo(&["child1"]);
    let _pod = PodProcess::start(&home, "child1", &["--turn-ms", "50"]);
    let sock = home.path().join("run/child1/sock");
    let (stream, mut reader, snapshot) = connect(&sock);
    assert_eq!(snapshot["event"], "snapshot");
    assert_eq!(snapshot["data"]["status"], "idle");
    assert_eq!(snapshot["data"]["entries"], Value::Array(vec![]));
    (&stream)
        .write_all(br#"{"method":"run","params":{"input":[{"kind":"text","content":"hello from podfs"}]}}"#)
        .unwrap();
    (&stream).write_all(b"\n").unwrap();
    let got = events_until_idle(&mut reader);
    let expected: Vec<Value> = fixture_text("socket/child1-run.jsonl", "/h")
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

#[test]
fn a_busy_pod_answers_already_running() {
    let home = Home::demo(&["child1"]);
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

#[test]
fn shutdown_reports_to_the_parent_which_reclaims() {
    let home = Home::demo(&["child1", "child2"]);
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
        home.json("pods/parent/metadata.json")["reclaimed_children"][0]["pod_name"] == "child1"
    });
    let meta = home.json("pods/parent/metadata.json");
    assert_eq!(meta["spawned_children"].as_array().unwrap().len(), 1);
    let table = home.json("run/pods.json");
    let names: Vec<&str> = table["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["pod_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["parent", "child2"]);
    let mirror = home.json("run/parent/spawned_pods.json");
    assert_eq!(mirror.as_array().unwrap().len(), 1);
    drop(pods);
}

#[test]
fn podfs_demo_mounts_and_cleans_up() {
    if !fuse_available() {
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let mnt = parent.path().join("pods");
    let mut demo = Command::new(BIN)
        .args(["--log-level", "warn", "demo"])
        .arg(&mnt)
        .args(["--children", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(demo.stdout.take().unwrap());
    let mut banner = String::new();
    out.read_line(&mut banner).unwrap();
    assert!(banner.contains("mounted at"), "{banner}");
    let m = mnt.display().to_string();
    let guard = scopeguard(&mnt, demo.id());
    assert_eq!(ok(&format!("ls {m}/parent")), "child1\nchild2\n");
    let home_line = {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        l
    };
    let home = home_line
        .trim()
        .strip_prefix("(home: ")
        .and_then(|s| s.split(';').next())
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&home).exists());
    wait_for(Duration::from_secs(5), || {
        sh(&format!("cat {m}/parent/child1/status")).1 == "idle\n"
    });
    assert!(ok(&format!("cat {m}/parent/child1/output")).starts_with("echo: child1 task"));
    signal(demo.id(), nix::sys::signal::Signal::SIGINT);
    assert!(demo.wait().unwrap().success());
    assert!(!is_mounted(&mnt));
    assert!(
        !mnt.exists(),
        "the demo created the mount point and must remove it"
    );
    assert!(
        !std::path::Path::new(&home).exists(),
        "demo home left behind"
    );
    drop(guard);
}

/// Stop the demo and unmount `path` on drop, in case an assertion fails while mounted.
fn scopeguard(path: &std::path::Path, pid: u32) -> impl Drop + '_ {
    struct G<'a>(&'a std::path::Path, u32);
    impl Drop for G<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                signal(self.1, nix::sys::signal::Signal::SIGINT);
                std::thread::sleep(Duration::from_secs(2));
                signal(self.1, nix::sys::signal::Signal::SIGKILL);
            }
            force_unmount(self.0);
        }
    }
    G(path, pid)
}
