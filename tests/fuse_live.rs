//! The live files against demo pods over a real mount (contract §2): output, input, status,
//! log, and a hung child that must not slow anything else down.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::*;

macro_rules! need_fuse {
    () => {
        if !fuse_available() {
            return;
        }
    };
}

/// A live demo parent with one live child, `child1`, mounted, its first task finished.
/// Fields drop in order: unmount, stop the pods, then remove the home.
struct Live {
    m: Mount,
    _pods: podfs::demo::Pods,
    home: Home,
}

fn live_child1() -> Live {
    let home = Home::demo(&["child1"]);
    let pods = demo_pods(&home, &["child1"]);
    let m = Mount::quick(&home, &[]);
    settle(&m, "child1");
    Live {
        m,
        _pods: pods,
        home,
    }
}

/// Wait until `child`'s first task has finished (its reply is in the history).
fn settle(m: &Mount, child: &str) {
    let status = format!("{}/parent/{child}/status", m.s());
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {status}")).1 == "idle\n"
    });
}

#[test]
fn output_is_a_snapshot_per_open_and_moves_the_cursor() {
    need_fuse!();
    let Live { m, .. } = &live_child1();
    let c = format!("{}/parent/child1", m.s());
    assert_eq!(
        ok(&format!("cat {c}/output")),
        "echo: child1 task: describe your work directory\n"
    );
    assert_eq!(ok(&format!("cat {c}/cursor")), "7\n");
    assert_eq!(ok(&format!("cat {c}/output")), "", "nothing new");
    ok(&format!("echo hello > {c}/input"));
    settle(m, "child1");
    // Re-reading the same descriptor gives the same snapshot; a new open gives nothing new.
    let script = format!(
        "f = open('{c}/output'); a = f.read(); f.seek(0); b = f.read(); print(repr(a), a == b); print(repr(open('{c}/output').read()))"
    );
    assert_eq!(
        ok(&format!("python3 -c \"{script}\"")),
        "'echo: hello\\n' True\n''\n"
    );
    assert_eq!(ok(&format!("cat {c}/cursor")), "13\n");
    ok(&format!("echo 0 > {c}/cursor"));
    assert_eq!(
        ok(&format!("cat {c}/output")),
        "echo: child1 task: describe your work directory\n\necho: hello\n"
    );
}

#[test]
fn output_starts_over_after_the_history_shrinks() {
    need_fuse!();
    let Live { m, home, .. } = &live_child1();
    let c = format!("{}/parent/child1", m.s());
    ok(&format!("cat {c}/output"));
    assert_eq!(ok(&format!("cat {c}/cursor")), "7\n");
    // Compact the child: its history becomes one segment_start carrying a summary.
    let mut s = UnixStream::connect(home.path().join("run/child1/sock")).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"snapshot\""));
    s.write_all(b"{\"method\":\"compact\"}\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("compact_done"), "{line}");
    // The cursor (7) is past the new end (1): start over rather than skip the summary.
    assert_eq!(ok(&format!("cat {c}/output")), "summary of 7 entries\n");
    assert_eq!(ok(&format!("cat {c}/cursor")), "1\n");
}

#[test]
fn input_sends_everything_written_before_close_as_one_run() {
    need_fuse!();
    let Live { m, .. } = &live_child1();
    let c = format!("{}/parent/child1", m.s());
    ok(&format!("cat {c}/output"));
    ok(&format!("printf 'line one\\nline two\\n' > {c}/input"));
    settle(m, "child1");
    assert_eq!(ok(&format!("cat {c}/output")), "echo: line one\nline two\n");
    // Several write() calls on one descriptor are one message, too.
    assert_eq!(
        py_errno(&format!("fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'a'); os.write(fd, b'b\\n'); os.close(fd)")),
        "OK"
    );
    settle(m, "child1");
    assert_eq!(ok(&format!("cat {c}/output")), "echo: ab\n");
    // An empty message is refused at close, and nothing is sent.
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'\\n'); os.close(fd)"
        )),
        "EINVAL"
    );
    assert_eq!(ok(&format!("cat {c}/status")), "idle\n");
}

#[test]
fn input_errors() {
    need_fuse!();
    let home = Home::demo(&["slow"]);
    let _parent = PodProcess::start(&home, "parent", &[]);
    let cb = home.path().join("run/parent/sock").display().to_string();
    let _slow = PodProcess::start(&home, "slow", &["--callback", &cb, "--turn-ms", "4000"]);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/slow", m.s());
    ok(&format!("echo first > {c}/input"));
    assert_eq!(ok(&format!("cat {c}/status")), "running\n");
    // Busy: the write fails, and so does the shell command.
    let err = fails(&format!("printf 'second' > {c}/input"));
    assert!(err.contains("Device or resource busy"), "{err}");
    assert_eq!(
        py_errno(&format!(
            "f = open('{c}/input', 'w'); f.write('x'); f.close()"
        )),
        "EBUSY"
    );
    // Too big: nothing is sent.
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'a' * 70000)"
        )),
        "EFBIG"
    );
}

#[test]
fn unreachable_children_refuse_input_and_give_empty_output() {
    need_fuse!();
    let home = Home::fixture("live");
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let err = fails(&format!("printf 'x' > {c}/input"));
    assert!(err.contains("Host is down"), "{err}");
    assert_eq!(
        py_errno(&format!(
            "f = open('{c}/input', 'w'); f.write('hi'); f.close()"
        )),
        "EHOSTDOWN"
    );
    assert_eq!(ok(&format!("cat {c}/output")), "");
    assert_eq!(ok(&format!("cat {c}/cursor")), "0\n");
    assert_eq!(ok(&format!("cat {c}/log")), "");
}

#[test]
fn status_tells_idle_running_and_unreachable() {
    need_fuse!();
    let home = Home::demo(&["slow", "gone"]);
    let _parent = PodProcess::start(&home, "parent", &[]);
    let _slow = PodProcess::start(&home, "slow", &["--turn-ms", "3000"]);
    let m = Mount::quick(&home, &[]);
    let p = format!("{}/parent", m.s());
    assert_eq!(ok(&format!("cat {p}/slow/status")), "idle\n");
    assert_eq!(ok(&format!("cat {p}/gone/status")), "unreachable\n");
    ok(&format!("echo go > {p}/slow/input"));
    // The status cache lasts one second.
    wait_for(Duration::from_secs(3), || {
        sh(&format!("cat {p}/slow/status")).1 == "running\n"
    });
}

#[test]
fn log_follows_the_child_live() {
    need_fuse!();
    let Live { m, .. } = &live_child1();
    let c = format!("{}/parent/child1", m.s());
    let first = "echo: child1 task: describe your work directory\n";
    assert_eq!(ok(&format!("cat {c}/log")), first);
    // tail -f sees the text a later run adds, through the descriptor it keeps open.
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut tail = std::process::Command::new("tail")
        .args(["-n", "+1", "-s", "0.2", "-f"])
        .arg(format!("{c}/log"))
        .stdout(out.reopen().unwrap())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(out.path()).unwrap() == first
    });
    ok(&format!("echo followed > {c}/input"));
    let grown = format!("{first}\necho: followed\n");
    let seen = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::fs::read_to_string(out.path()).unwrap() == grown {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })();
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(
        seen,
        "tail -f saw {:?}",
        std::fs::read_to_string(out.path()).unwrap()
    );
    // Reading log never moves the cursor.
    assert_eq!(ok(&format!("cat {c}/cursor")), "0\n");
}

/// A child whose socket accepts connections and never answers.
fn hung_child(home: &Home) -> (UnixListener, std::thread::JoinHandle<()>) {
    let path = home.path().join("pods/parent/metadata.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut hung = v["spawned_children"][0].clone();
    let sock = home.path().join("run/hung/sock");
    hung["pod_name"] = "hung".into();
    hung["socket_path"] = sock.display().to_string().into();
    v["spawned_children"].as_array_mut().unwrap().push(hung);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let listener = UnixListener::bind(&sock).unwrap();
    let l2 = listener.try_clone().unwrap();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l2.incoming() {
            match s {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
            if held.len() > 64 {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    (listener, holder)
}

#[test]
fn a_hung_child_does_not_slow_anything_else() {
    need_fuse!();
    let home = Home::fixture("live");
    let (_listener, _holder) = hung_child(&home);
    // Generous per-step bounds, so the hung conversations outlast the checks below.
    let m = Mount::with_args(
        &home,
        &["--io-timeout-ms", "10000", "--probe-timeout-ms", "10000"],
    );
    let p = format!("{}/parent", m.s());
    // Start conversations with the hung child in the background.
    let mut hung = Vec::new();
    for file in ["status", "output", "log", "status"] {
        hung.push(
            std::process::Command::new("cat")
                .arg(format!("{p}/hung/{file}"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let mut input = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("echo hi > {p}/hung/input"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        hung.iter_mut().all(|c| c.try_wait().unwrap().is_none()),
        "hung reads should still wait"
    );
    // Meanwhile everything else answers at once.
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(ok(&format!("ls {p}")), "child1\nchild2\nchild3\nhung\n");
        ok(&format!(
            "cat {p}/child1/scope {p}/child2/cursor {p}/hung/socket {p}/hung/scope"
        ));
        ok(&format!("stat {p}/hung/status {p}/hung/output"));
        assert_eq!(ok(&format!("cat {p}/child3/status")), "unreachable\n");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "other requests were slowed down: {took:?}"
    );
    // And the hung conversations end with a bounded, clear answer.
    for mut c in hung {
        let status = c.wait().unwrap();
        assert!(status.success());
    }
    assert_eq!(ok(&format!("cat {p}/hung/status")), "unreachable\n");
    assert!(
        !input.wait().unwrap().success(),
        "input to a hung child must fail"
    );
}
