//! A conversation from the shell: `echo q > input; cat output` prints the reply, because
//! `output` waits for a running turn the way a pipe's reader waits for a writer that has
//! not closed yet (contract §2). What a pipe's users expect of that wait: it does not
//! happen for an idle child or with `O_NONBLOCK`; `poll` says readable when the turn is
//! over; a signal ends it with nothing consumed; a child that goes away, a removal and an
//! unmount end it at once; it costs no thread and no round trip per waiter; it never
//! outlives the kernel's own request timeout; and `log` never waits.
#[macro_use]
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &fuse,
            both_tests![
                echo_then_cat_prints_the_reply,
                a_loop_of_questions_is_a_conversation,
            ],
        )
        .add(
            &fuse,
            tests![
                an_idle_or_paused_childs_output_answers_at_once,
                o_nonblock_takes_what_there_is_without_waiting,
                poll_says_readable_when_the_turn_is_over,
                a_signal_ends_the_wait_and_nothing_is_consumed,
                a_child_that_goes_away_ends_the_wait_at_once,
                a_removal_or_an_unmount_ends_the_wait_at_once,
                waiting_readers_cost_no_thread_and_no_connection,
                a_wait_ends_before_the_kernels_request_timeout,
                log_never_waits,
            ],
        )
        .run()
}

/// A demo home with one live child whose turns take `turn_ms`.
fn child(gen: Gen, turn_ms: u64) -> (Home, PodProcess) {
    let home = Home::demo(gen, &["child1"]);
    let pod = PodProcess::start(&home, "child1", &["--turn-ms", &turn_ms.to_string()]);
    (home, pod)
}

/// The README's first example, verbatim: its commands, up to the `cat output` that waits
/// for the reply, run against a demo home with a child whose turn takes a while, print
/// exactly what the README shows. The README is read at build time, so editing its example
/// without keeping it true fails here.
fn reply_of_one_question(gen: Gen) {
    let home = Home::demo(gen, &["child1", "child2", "child3"]);
    let _pod = PodProcess::start(
        &home,
        "child1",
        &["--turn-ms", "300", "--task", podfs::demo::CHILD_TASK],
    );
    let m = Mount::quick(&home, &[]);
    // As in the demo, the child has run its first task by the time anyone looks.
    settle(&m, "child1");
    let steps = readme_example();
    assert!(
        steps.iter().any(|(cmd, _)| cmd.contains("/input")),
        "the README's example asks nothing: {steps:?}"
    );
    for (cmd, shown) in steps {
        let cmd = cmd.replace("/mnt/pods", &m.s());
        let mut got = ok(&cmd);
        if cmd.starts_with("ls ") {
            // `ls` prints columns to a terminal and lines to a pipe: compare the names.
            got = got.split_whitespace().collect::<Vec<_>>().join("  ") + "\n";
        }
        assert_eq!(got, shown, "`{cmd}` does not print what the README shows");
    }
}

/// The README's first code block as (command, what it prints), through the first command
/// that waits for the reply. Comments after a command are dropped.
fn readme_example() -> Vec<(String, String)> {
    let readme = include_str!("../README.md");
    let block = readme
        .split("```\n")
        .nth(1)
        .expect("the README has a code block");
    let mut steps: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            if steps
                .last()
                .is_some_and(|(c, _)| c.contains("waits for the reply"))
            {
                break;
            }
            steps.push((cmd.to_string(), String::new()));
        } else if let Some((_, out)) = steps.last_mut() {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        steps
            .last()
            .is_some_and(|(c, _)| c.contains("waits for the reply")),
        "the README's example no longer reads the reply"
    );
    steps
        .into_iter()
        .map(|(cmd, out)| {
            let cmd = match cmd.find("  #") {
                Some(at) => cmd[..at].trim_end().to_string(),
                None => cmd,
            };
            (cmd, out)
        })
        .collect()
}
both!(echo_then_cat_prints_the_reply, reply_of_one_question);

/// `for q in a b c; do echo "$q" > input; cat output; done` is a conversation.
fn three_questions_in_a_loop(gen: Gen) {
    let (home, _pod) = child(gen, 150);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let _ = ok(&format!("cat {c}/output"));
    let out = ok(&format!(
        "cd {c} && for q in a b c; do echo \"$q\" > input; cat output; done"
    ));
    assert_eq!(out, "echo: a\necho: b\necho: c\n");
}
both!(
    a_loop_of_questions_is_a_conversation,
    three_questions_in_a_loop
);

/// An idle child's `output` answers at once: empty when nothing is new. So does a
/// paused one's (a fake child whose Snapshot says `paused`).
fn an_idle_or_paused_childs_output_answers_at_once() {
    let (home, _pod) = child(&INSOMNIA, 100);
    let _paused = FakeChild::serve(&home, "paused", |mut s| {
        use std::io::Write;
        let line = String::from_utf8(snapshot_line(&["kept"]))
            .unwrap()
            .replace("\"idle\"", "\"paused\"");
        let _ = s.write_all(line.as_bytes());
        let mut sink = [0u8; 256];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    settle(&m, "child1");
    let _ = ok(&format!("cat {c}/output"));
    let started = Instant::now();
    assert_eq!(ok(&format!("cat {c}/output")), "");
    let p = format!("{}/parent/paused", m.s());
    assert_eq!(ok(&format!("cat {p}/status")), "paused\n");
    assert_eq!(ok(&format!("cat {p}/output")), "kept\n");
    eprintln!("idle and paused output answered in {:?}", started.elapsed());
}

/// A Python script that starts a turn with `q`, waits until it runs, and then runs `code`
/// with `out` the path of `output`; prints what `code` prints.
fn during_a_turn(c: &str, code: &str) -> String {
    let script = format!(
        "import os, select, time, errno\nc = '{c}'\nout = c + '/output'\nopen(out).read()\nwith open(c + '/input', 'w') as f: f.write('q\\n')\nwhile open(c + '/status').read() != 'running\\n':\n    time.sleep(0.01)\n{code}\n"
    );
    ok(&format!("python3 -c \"$(cat <<'EOF'\n{script}\nEOF\n)\""))
}

/// `O_NONBLOCK` never waits: an open during a turn takes what there is at once (here
/// nothing, the reply is not there yet), and the reply is left for the next reader.
fn o_nonblock_takes_what_there_is_without_waiting() {
    let (home, _pod) = child(&INSOMNIA, 3000);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let out = during_a_turn(
        &c,
        "t = time.monotonic()\nfd = os.open(out, os.O_RDONLY | os.O_NONBLOCK)\ntext = os.read(fd, 1000)\nprint(repr(text), time.monotonic() - t < 1.5, open(c + '/status').read().strip())",
    );
    assert_eq!(out, "b'' True running\n");
    assert_eq!(ok(&format!("cat {c}/output")), "echo: q\n");
}

/// `poll` on an open `output` says readable once the turn is over (and there is text),
/// not while it runs.
fn poll_says_readable_when_the_turn_is_over() {
    let (home, _pod) = child(&INSOMNIA, 1500);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let out = during_a_turn(
        &c,
        "fd = os.open(out, os.O_RDONLY | os.O_NONBLOCK)\np = select.poll()\np.register(fd, select.POLLIN)\nearly = p.poll(300)\nstatus = open(c + '/status').read().strip()\nlate = p.poll(10000)\nprint(len(early), status, len(late), open(c + '/status').read().strip())\nprint(open(out).read(), end='')",
    );
    assert_eq!(out, "0 running 1 idle\necho: q\n");
}

/// Ctrl-C (SIGINT) ends a `cat output` waiting for a turn at once, and nothing is
/// consumed: the next reader gets the reply.
fn a_signal_ends_the_wait_and_nothing_is_consumed() {
    let (home, _pod) = child(&INSOMNIA, 4000);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let _ = ok(&format!("cat {c}/output"));
    ok(&format!("echo q > {c}/input"));
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c}/status")).1 == "running\n"
    });
    let mut cat = like_a_foreground_job(Command::new("cat").arg(format!("{c}/output")))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_in_syscall(cat.id(), &[libc::SYS_openat, libc::SYS_open]);
    let signalled = Instant::now();
    signal(cat.id(), nix::sys::signal::Signal::SIGINT);
    let status = cat.wait().unwrap();
    assert!(!status.success());
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the wait outlived the signal: {:?}",
        signalled.elapsed()
    );
    assert_eq!(ok(&format!("cat {c}/output")), "echo: q\n");
}

/// A child that is killed mid-turn ends the wait at once: its `output` is then what an
/// unreachable child's is (empty, the cursor left alone).
fn a_child_that_goes_away_ends_the_wait_at_once() {
    let (home, mut pod) = child(&INSOMNIA, 20_000);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let _ = ok(&format!("cat {c}/output"));
    ok(&format!("echo q > {c}/input"));
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c}/status")).1 == "running\n"
    });
    let cat = Command::new("cat")
        .arg(format!("{c}/output"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_in_syscall(cat.id(), &[libc::SYS_openat, libc::SYS_open]);
    let killed = Instant::now();
    let _ = pod.0.kill();
    let _ = pod.0.wait();
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(ok(&format!("cat {c}/status")), "unreachable\n");
}

/// A removal of the child (`rm -r` from another shell) and an unmount each end a wait at
/// once, with an error: the child is gone (`ENOENT`), the mount is gone.
fn a_removal_or_an_unmount_ends_the_wait_at_once() {
    let (home, _pod) = child(&INSOMNIA, 20_000);
    let mut m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let _ = ok(&format!("cat {c}/output"));
    let waiting = |m: &Mount| {
        let c = format!("{}/parent/child1", m.s());
        ok(&format!("echo q > {c}/input"));
        wait_for(Duration::from_secs(10), || {
            sh(&format!("cat {c}/status")).1 == "running\n"
        });
        let script = format!(
            "import errno, os\ntry:\n    fd = os.open('{c}/output', os.O_RDONLY); print('OK', len(os.read(fd, 1000)))\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
        );
        let py = Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_in_syscall(py.id(), &[libc::SYS_openat, libc::SYS_open]);
        py
    };
    let py = waiting(&m);
    let removed = Instant::now();
    ok(&format!("rm -r {c}"));
    let out = py.wait_with_output().unwrap();
    // The removal stops the child first, so the reader may be answered as a reader of
    // a child that went away (nothing), or, once it is reclaimed, as one of a child that
    // is gone (ENOENT): either way at once, and never with the reply.
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(answer == "ENOENT\n" || answer == "OK 0\n", "{answer}");
    assert!(removed.elapsed() < Duration::from_secs(10));
    // A new child for the unmount: the demo's own parent is not running.
    let _pod2 = PodProcess::start(&home, "child2", &["--turn-ms", "20000"]);
    home.add_child("parent", "child2", &home.path().join("run/child2/sock"));
    let c2 = format!("{}/parent/child2", m.s());
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c2}/status")).1 == "idle\n"
    });
    ok(&format!("echo q > {c2}/input"));
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c2}/status")).1 == "running\n"
    });
    let script = format!(
        "import errno, os\ntry:\n    os.open('{c2}/output', os.O_RDONLY); print('OK')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
    );
    let py = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_in_syscall(py.id(), &[libc::SYS_openat, libc::SYS_open]);
    let stopped = Instant::now();
    m.stop();
    let out = py.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ENOTCONN\n");
    assert!(stopped.elapsed() < Duration::from_secs(10));
}

/// A hundred readers waiting for one turn cost podfs no thread and no connection each:
/// its thread count and its connects stay where they were, and every reader gets the
/// reply's text once (one of them; the others get nothing, as two readers never share).
fn waiting_readers_cost_no_thread_and_no_connection() {
    let (home, _pod) = child(&INSOMNIA, 3000);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let _ = ok(&format!("cat {c}/output"));
    ok(&format!("echo q > {c}/input"));
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c}/status")).1 == "running\n"
    });
    let before = m.report();
    let script = format!(
        "import os, threading\nout = []\ndef read():\n    fd = os.open('{c}/output', os.O_RDONLY)\n    out.append(os.read(fd, 1000))\n    os.close(fd)\nts = [threading.Thread(target=read) for _ in range(100)]\n[t.start() for t in ts]\nimport time; time.sleep(1)\nprint('waiting', flush=True)\n[t.join() for t in ts]\nprint(len(out), sum(1 for o in out if o), b''.join(out).decode(), end='')\n"
    );
    let mut py = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = py.stdout.take().unwrap();
    let mut first = [0u8; 8];
    stdout.read_exact(&mut first).unwrap();
    let during = m.report();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    py.wait().unwrap();
    assert_eq!(rest, "100 1 echo: q\n");
    eprintln!(
        "100 waiting readers: threads {} -> {}, connects {} -> {}",
        before["threads"], during["threads"], before["connects"], during["connects"]
    );
    assert!(during["threads"] <= before["threads"] + 1);
    assert_eq!(during["connects"], before["connects"]);
}

/// With a kernel request timeout (given to podfs directly, as `--request-timeout-secs`,
/// rather than changing the host's sysctl), a wait for a longer turn ends before it with
/// `EAGAIN`, the mount stays, and its first log line says so; the reader may read again.
fn a_wait_ends_before_the_kernels_request_timeout() {
    let (home, _pod) = child(&INSOMNIA, 8000);
    let m = Mount::quick(&home, &["--request-timeout-secs", "3"]);
    let first = m.log().lines().next().unwrap_or_default().to_string();
    assert!(first.contains("every_wait_ends_within_ms"), "{first}");
    let c = format!("{}/parent/child1", m.s());
    let out = during_a_turn(
        &c,
        "t = time.monotonic()\ntry:\n    os.open(out, os.O_RDONLY); print('OK')\nexcept OSError as e:\n    print(errno.errorcode[e.errno], time.monotonic() - t < 3)",
    );
    assert_eq!(out, "EAGAIN True\n");
    assert!(m.is_mounted());
    assert_eq!(ok(&format!("cat {c}/status")), "running\n");
}

/// `log` never waits: read during a turn, it returns at once with the text so far.
fn log_never_waits() {
    let (home, _pod) = child(&INSOMNIA, 4000);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let out = during_a_turn(
        &c,
        "t = time.monotonic()\nopen(c + '/log').read()\nprint(time.monotonic() - t < 1.5)",
    );
    assert_eq!(out, "True\n");
}
