//! The live files against reference pods over a real mount (contract §2), on both runtime
//! generations: output, input, status, log, and a hung child that must not slow anything
//! else down.
#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::*;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &fuse,
            both_tests![
                output_moves_the_cursor,
                output_starts_over,
                input_is_one_run,
                input_refusals,
                unreachable_children,
                status_follows_the_child,
                log_follows,
            ],
        )
        .add(&fuse, tests![a_hung_child_does_not_slow_anything_else,])
        .run()
}

/// A live demo parent with one live child, `child1`, mounted, its first task finished.
/// Fields drop in order: unmount, stop the pods, then remove the home.
struct Live {
    m: Mount,
    _pods: podfs::demo::Pods,
    home: Home,
}

fn live_child1(gen: Gen) -> Live {
    let home = Home::demo(gen, &["child1"]);
    let pods = demo_pods(&home, &["child1"]);
    let m = Mount::quick(&home, &[]);
    settle(&m, "child1");
    Live {
        m,
        _pods: pods,
        home,
    }
}

fn output_is_a_snapshot_per_open_and_moves_the_cursor(gen: Gen) {
    let Live { m, .. } = &live_child1(gen);
    let c = format!("{}/parent/child1", m.s());
    assert_eq!(
        ok(&format!("cat {c}/output")),
        "echo: child1 task: describe your work directory\n"
    );
    assert_eq!(ok(&format!("cat {c}/cursor")), "7\n");
    assert_eq!(ok(&format!("cat {c}/output")), "", "nothing new");
    run_turn(m, "child1", "hello");
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
both!(
    output_moves_the_cursor,
    output_is_a_snapshot_per_open_and_moves_the_cursor
);

fn output_starts_over_after_the_history_shrinks(gen: Gen) {
    let Live { m, home, .. } = &live_child1(gen);
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
    // The watch takes a fresh Snapshot on compaction.
    wait_for(Duration::from_secs(5), || {
        ok(&format!("cat {c}/log")) == "summary of 7 entries\n"
    });
    // The cursor (7) is past the new end (1): start over rather than skip the summary.
    assert_eq!(ok(&format!("cat {c}/output")), "summary of 7 entries\n");
    assert_eq!(ok(&format!("cat {c}/cursor")), "1\n");
}
both!(
    output_starts_over,
    output_starts_over_after_the_history_shrinks
);

fn input_sends_everything_written_before_close_as_one_run(gen: Gen) {
    let Live { m, .. } = &live_child1(gen);
    let c = format!("{}/parent/child1", m.s());
    ok(&format!("cat {c}/output"));
    run_turn(m, "child1", "line one");
    assert_eq!(ok(&format!("cat {c}/output")), "echo: line one\n");
    // Several write() calls on one descriptor are one message, too.
    assert_eq!(
        py_errno(&format!("fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'a'); os.write(fd, b'b\\n'); os.close(fd)")),
        "OK"
    );
    wait_for(Duration::from_secs(10), || {
        ok(&format!("cat {c}/log")).ends_with("echo: ab\n")
    });
    settle(m, "child1");
    assert_eq!(ok(&format!("cat {c}/output")), "echo: ab\n");
    // An empty message is refused at its write, and nothing is sent.
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'\\n')"
        )),
        "EINVAL"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ok(&format!("cat {c}/status")), "idle\n");
    assert_eq!(ok(&format!("cat {c}/output")), "");
}
both!(
    input_is_one_run,
    input_sends_everything_written_before_close_as_one_run
);

fn input_errors(gen: Gen) {
    let home = Home::demo(gen, &["slow"]);
    let _parent = PodProcess::start(&home, "parent", &[]);
    let cb = PodProcess::callback(&home, "parent");
    let _slow = PodProcess::start(&home, "slow", &["--callback", &cb, "--turn-ms", "4000"]);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/slow", m.s());
    // Too big: refused at the write that crosses the limit, and nothing is sent.
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'a' * 70000)"
        )),
        "EFBIG"
    );
    assert_eq!(ok(&format!("cat {c}/status")), "idle\n");
    ok(&format!("echo first > {c}/input"));
    wait_for(Duration::from_secs(5), || {
        ok(&format!("cat {c}/status")) == "running\n"
    });
    // Busy: the write fails, and so does the shell command.
    fails(&format!("printf 'second' > {c}/input"));
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'x')"
        )),
        "EBUSY"
    );
}
both!(input_refusals, input_errors);

fn unreachable_children_refuse_input_and_give_empty_output(gen: Gen) {
    let home = Home::fixture(gen, "live");
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    fails(&format!("printf 'x' > {c}/input"));
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'hi')"
        )),
        "EHOSTDOWN"
    );
    assert_eq!(ok(&format!("cat {c}/output")), "");
    assert_eq!(ok(&format!("cat {c}/cursor")), "0\n");
    assert_eq!(ok(&format!("cat {c}/log")), "");
    assert_eq!(ok(&format!("cat {c}/status")), "unreachable\n");
}
both!(
    unreachable_children,
    unreachable_children_refuse_input_and_give_empty_output
);

fn status_tells_idle_running_and_unreachable(gen: Gen) {
    let home = Home::demo(gen, &["slow", "gone"]);
    let _parent = PodProcess::start(&home, "parent", &[]);
    let _slow = PodProcess::start(&home, "slow", &["--turn-ms", "1500"]);
    let m = Mount::quick(&home, &[]);
    let p = format!("{}/parent", m.s());
    assert_eq!(ok(&format!("cat {p}/slow/status")), "idle\n");
    assert_eq!(ok(&format!("cat {p}/gone/status")), "unreachable\n");
    ok(&format!("echo go > {p}/slow/input"));
    wait_for(Duration::from_secs(3), || {
        sh(&format!("cat {p}/slow/status")).1 == "running\n"
    });
    wait_for(Duration::from_secs(5), || {
        sh(&format!("cat {p}/slow/status")).1 == "idle\n"
    });
}
both!(
    status_follows_the_child,
    status_tells_idle_running_and_unreachable
);

fn log_follows_the_child_live(gen: Gen) {
    let Live { m, .. } = &live_child1(gen);
    let c = format!("{}/parent/child1", m.s());
    let first = "echo: child1 task: describe your work directory\n";
    assert_eq!(ok(&format!("cat {c}/log")), first);
    // tail -f sees the text a later run adds.
    let out = temp_file();
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
    let seen = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(out.path()).unwrap() == grown
    });
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
both!(log_follows, log_follows_the_child_live);

/// A child whose socket accepts connections and never answers.
pub fn hung_child(home: &Home) -> (UnixListener, std::thread::JoinHandle<()>) {
    let sock = home.path().join("run/hung/sock");
    home.add_child("parent", "hung", &sock);
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

fn a_hung_child_does_not_slow_anything_else() {
    let home = Home::fixture(&INSOMNIA, "live");
    let (_listener, _holder) = hung_child(&home);
    // Generous per-step bounds, so the hung conversations outlast the checks below.
    let m = Mount::with_args(
        &home,
        &["--io-timeout-ms", "6000", "--status-timeout-ms", "6000"],
    );
    let p = format!("{}/parent", m.s());
    // Start conversations with the hung child in the background: many readers of it.
    let mut hung = Vec::new();
    for _ in 0..16 {
        for file in ["status", "output", "log"] {
            hung.push(
                std::process::Command::new("cat")
                    .arg(format!("{p}/hung/{file}"))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
    }
    let mut input = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("echo hi > {p}/hung/input"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        hung.iter_mut().all(|c| c.try_wait().unwrap().is_none()),
        "hung reads should still wait"
    );
    // Waiting readers hold no threads: podfs runs a handful, whatever waits.
    let threads = std::fs::read_dir(format!("/proc/{}/task", m.pid()))
        .unwrap()
        .count();
    assert!(threads < 16, "{threads} threads for 48 waiting readers");
    // Meanwhile everything else answers at once.
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(ok(&format!("ls {p}")), "child1\nchild2\nchild3\nhung\n");
        ok(&format!(
            "cat {p}/child1/scope {p}/child2/cursor {p}/hung/socket {p}/hung/scope"
        ));
        // A shell redirection (an O_CREAT open) beside the waiting readers.
        ok(&format!("echo 0 > {p}/hung/cursor"));
        assert_eq!(ok(&format!("cat {p}/child3/status")), "unreachable\n");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "other requests were slowed down: {took:?}"
    );
    // The hung conversations end with a bounded, clear answer: status says unreachable,
    // output and log fail with ETIMEDOUT, never an empty success.
    for mut c in hung {
        c.wait().unwrap();
    }
    assert_eq!(ok(&format!("cat {p}/hung/status")), "unreachable\n");
    assert_eq!(
        py_errno(&format!("open('{p}/hung/log').read()")),
        "ETIMEDOUT"
    );
    assert_eq!(
        py_errno(&format!("open('{p}/hung/output').read()")),
        "ETIMEDOUT"
    );
    assert!(
        !input.wait().unwrap().success(),
        "input to a hung child must fail"
    );
}
