//! Messages through `input`, through a real mount: written to the child once, only when
//! it takes runs by its own word, confirmed only by the echo of their own segments (never
//! by a broadcast error), kept across a resync and a slow Snapshot; a reservation that
//! sees no write lapses; only a writer killed midway poisons its message, never a
//! bystander that merely inherited the descriptor; NUL bytes (and so a `posix_fallocate`)
//! send nothing.
#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &fuse,
            both_tests![
                a_third_clients_refusal_is_not_taken_for_ours_and_nothing_runs_twice,
                a_message_waiting_for_a_busy_child_is_sent_when_a_resync_shows_it_idle,
                a_killed_bystander_does_not_poison_the_message,
            ],
        )
        .add(
            &fuse,
            tests![
                an_idle_reservation_lapses_after_the_hold_bound,
                a_message_closed_during_a_slow_resnapshot_is_delivered,
                posix_fallocate_on_input_sends_nothing,
                an_exec_that_closes_an_inherited_input_delivers_its_message,
            ],
        )
        .run()
}

// ---------------------------------------------------------------------------------------
// A scripted child

/// One protocol line: `{"event": name, "data": data}`.
fn event(name: &str, data: Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({"event": name, "data": data})).unwrap();
    line.push(b'\n');
    line
}

/// A Snapshot of an empty history with the child's `status`.
fn snapshot(status: &str) -> Vec<u8> {
    event("snapshot", json!({"entries": [], "status": status}))
}

/// What the runtime broadcasts for a run of `segments` that answers `reply`: the echo of
/// the segments, `running`, one short turn, `run_end` and `idle` again.
fn a_turn(segments: &Value, reply: &str) -> Vec<u8> {
    [
        event("user_message", json!({"segments": segments})),
        event("status", json!({"status": "running"})),
        event("invoke_start", json!({"kind": "user_send"})),
        event("turn_start", json!({"turn": 1})),
        event("llm_call_start", json!({"llm_call": 1})),
        event("text_done", json!({"text": reply})),
        event("llm_call_end", json!({"llm_call": 1})),
        event("turn_end", json!({"turn": 1, "result": "finished"})),
        event("run_end", json!({"result": "finished"})),
        event("status", json!({"status": "idle"})),
    ]
    .concat()
}

/// What a scripted child shared with its test.
#[derive(Default)]
struct Shared {
    /// Connections accepted so far.
    conns: AtomicUsize,
    /// Every `run` received: the number of the connection it came on, and its text.
    runs: Mutex<Vec<(usize, String)>>,
    /// The newest connection, for the test to write events to or hang up.
    current: Mutex<Option<UnixStream>>,
}

/// A child played by the test (see [`FakeChild`]): its `n`th connection (from 1) gets,
/// after `prelude(n)`'s delay, `prelude(n)`'s Snapshot line; every method line is read,
/// each `run` recorded and answered by `on_run(stream, segments, text)`.
struct Scripted {
    _fake: FakeChild,
    shared: Arc<Shared>,
}

impl Scripted {
    fn serve(
        home: &Home,
        name: &str,
        prelude: impl Fn(usize) -> (Duration, Vec<u8>) + Send + Sync + 'static,
        on_run: impl Fn(&mut UnixStream, &Value, &str) + Send + Sync + 'static,
    ) -> Scripted {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let fake = FakeChild::serve(home, name, move |stream| {
            let n = theirs.conns.fetch_add(1, Ordering::SeqCst) + 1;
            let (delay, snap) = prelude(n);
            std::thread::sleep(delay);
            let mut out = stream;
            if out.write_all(&snap).is_err() {
                return;
            }
            let Ok(reader) = out.try_clone() else {
                return;
            };
            if let Ok(w) = out.try_clone() {
                *theirs.current.lock().unwrap() = Some(w);
            }
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["method"] != "run" {
                    continue;
                }
                let segments = v["params"]["input"].clone();
                let text = segments[0]["content"].as_str().unwrap_or("").to_string();
                theirs.runs.lock().unwrap().push((n, text.clone()));
                on_run(&mut out, &segments, &text);
            }
        });
        Scripted {
            _fake: fake,
            shared,
        }
    }

    fn runs(&self) -> Vec<(usize, String)> {
        self.shared.runs.lock().unwrap().clone()
    }

    fn conns(&self) -> usize {
        self.shared.conns.load(Ordering::SeqCst)
    }

    /// Broadcast `lines` on the newest connection.
    fn send(&self, lines: &[u8]) {
        let mut current = self.shared.current.lock().unwrap();
        current
            .as_mut()
            .expect("a connection")
            .write_all(lines)
            .unwrap();
    }

    /// Close the newest connection, as a child restarting its server would.
    fn hang_up(&self) {
        if let Some(s) = self.shared.current.lock().unwrap().take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn status_of(m: &Mount, child: &str) -> String {
    sh(&format!("cat {}/parent/{child}/status", m.s())).1
}

fn wait_status(m: &Mount, child: &str, word: &str) {
    let want = format!("{word}\n");
    wait_for(Duration::from_secs(15), || status_of(m, child) == want);
}

// ---------------------------------------------------------------------------------------
// 11. A broadcast error is not ours; nothing is written twice.

/// The child broadcasts an `already_running` error (another client's run refused) right
/// before it takes ours: podfs does not take the error for its own, waits for the echo of
/// its segments, and never writes the message again. Exactly one run arrives, also two
/// seconds after the child is idle again.
fn refusal_of_a_third_client(gen: Gen) {
    let home = Home::demo(gen, &[]);
    let fake = Scripted::serve(
        &home,
        "fake",
        |_| (Duration::ZERO, snapshot("idle")),
        |out, segments, text| {
            let refusal = event(
                "error",
                json!({"code": "already_running", "message": "a run is already in progress"}),
            );
            let _ = out.write_all(&[refusal, a_turn(segments, &format!("echo: {text}"))].concat());
        },
    );
    let m = Mount::quick(&home, &[]);
    wait_status(&m, "fake", "idle");
    ok(&format!("printf 'once\\n' > {}/parent/fake/input", m.s()));
    wait_for(Duration::from_secs(15), || !fake.runs().is_empty());
    wait_status(&m, "fake", "idle");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fake.runs(),
        [(1, "once".to_string())],
        "the message ran twice"
    );
    assert!(ok(&format!("cat {}/parent/fake/log", m.s())).contains("echo: once"));
}
both!(
    a_third_clients_refusal_is_not_taken_for_ours_and_nothing_runs_twice,
    refusal_of_a_third_client
);

// ---------------------------------------------------------------------------------------
// 12. A held message survives a resync.

/// A message is written while the child is idle; before its writer closes, another
/// client's turn starts (`input` refuses a first write while the child runs, so the
/// message must have begun before). It waits; the child then ends that turn `paused`
/// and drops the connection (a resync), and its next Snapshot says `paused`: the message
/// is written then, within ten seconds, on the new connection.
fn held_across_a_resync(gen: Gen) {
    let home = Home::demo(gen, &[]);
    let fake = Scripted::serve(
        &home,
        "fake",
        |n| {
            let status = if n == 1 { "idle" } else { "paused" };
            (Duration::ZERO, snapshot(status))
        },
        |out, segments, text| {
            let _ = out.write_all(&a_turn(segments, &format!("echo: {text}")));
        },
    );
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/fake", m.s());
    wait_status(&m, "fake", "idle");
    let mut input = Writer::open(&format!("{c}/input"));
    assert_eq!(input.write("held"), "OK");
    // Another client's turn, seen by podfs (its text shows in `log`) before the close.
    let other = json!([{"kind": "text", "content": "other"}]);
    fake.send(
        &[
            event("status", json!({"status": "running"})),
            event("user_message", json!({"segments": other})),
            event("invoke_start", json!({"kind": "user_send"})),
            event("text_done", json!({"text": "the other client's turn"})),
            event("llm_call_end", json!({"llm_call": 1})),
        ]
        .concat(),
    );
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c}/log"))
            .1
            .contains("the other client's turn")
    });
    assert_eq!(
        input.close(),
        "OK",
        "the close of a message held for a busy child"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fake.runs(), [], "written while the child ran another turn");
    fake.send(&event("run_end", json!({"result": "paused"})));
    fake.hang_up();
    let written = eventually(Duration::from_secs(10), || !fake.runs().is_empty());
    assert!(written, "the held message was never written:\n{}", m.log());
    assert_eq!(fake.runs(), [(2, "held".to_string())]);
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c}/log")).1.contains("echo: held")
    });
}
both!(
    a_message_waiting_for_a_busy_child_is_sent_when_a_resync_shows_it_idle,
    held_across_a_resync
);

// ---------------------------------------------------------------------------------------
// 13. A reservation lapses.

/// A writer that wrote `first part` of a message and then went quiet keeps the child
/// reserved only for the hold bound (`--input-hold-secs 1`): `status` goes back to `idle`
/// and another writer's `echo second > input` succeeds. The quiet writer's next write, or
/// its close, then fails with `EBUSY` (the child is busy with `second`), and the child's
/// history has `second` and never `first part`.
fn an_idle_reservation_lapses_after_the_hold_bound() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _child = PodProcess::start(&home, "child1", &["--turn-ms", "5000"]);
    let m = Mount::quick(&home, &["--input-hold-secs", "1"]);
    let c = format!("{}/parent/child1", m.s());
    settle(&m, "child1");
    let mut quiet = Writer::open(&format!("{c}/input"));
    assert_eq!(quiet.write("first part"), "OK");
    let wrote = Instant::now();
    wait_status(&m, "child1", "idle");
    let past_the_bound = Duration::from_millis(1500);
    if let Some(left) = past_the_bound.checked_sub(wrote.elapsed()) {
        std::thread::sleep(left);
    }
    ok(&format!("echo second > {c}/input"));
    // While the child runs `second` (a five-second turn).
    let answers = [quiet.write(" and the rest"), quiet.close()];
    assert!(
        answers.iter().any(|a| a == "EBUSY") && answers.iter().all(|a| a == "EBUSY" || a == "OK"),
        "the quiet writer's write and close: {answers:?}"
    );
    wait_for(Duration::from_secs(15), || {
        sh(&format!("cat {c}/log")).1.contains("echo: second")
    });
    settle(&m, "child1");
    let history = history_line(&home.path().join("run/child1/sock"));
    assert!(history.contains("second"), "{history}");
    assert!(!history.contains("first part"), "{history}");
    assert!(!ok(&format!("cat {c}/log")).contains("first part"));
}

/// A python process holding `input` open: each [`Writer::write`] and [`Writer::close`]
/// is one system call, and answers its errno name (or `OK`). The test process itself
/// never holds a descriptor of the mount: a process it spawns meanwhile would inherit it
/// (see `an_exec_that_closes_an_inherited_input_delivers_its_message`).
struct Writer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const WRITER: &str = r#"
import errno, json, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
print('open', flush=True)
for line in sys.stdin:
    cmd, _, arg = line.rstrip('\n').partition(' ')
    try:
        if cmd == 'write':
            os.write(fd, json.loads(arg).encode())
        else:
            os.close(fd)
        print('OK', flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
"#;

impl Writer {
    fn open(input: &str) -> Writer {
        let mut child = Command::new("python3")
            .args(["-c", WRITER, input])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut w = Writer {
            child,
            stdin,
            stdout,
        };
        assert_eq!(w.line(), "open\n");
        w
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.line().trim().to_string()
    }

    /// One `write()` of `text`.
    fn write(&mut self, text: &str) -> String {
        self.ask(&format!("write {}", json!(text)))
    }

    /// The `close()`.
    fn close(&mut self) -> String {
        self.ask("close")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Snapshot line a pod sends on a fresh connection: its whole history, as text.
fn history_line(sock: &Path) -> String {
    let s = UnixStream::connect(sock).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// The number of entries in a pod's history, from its Snapshot.
fn history_len(sock: &Path) -> usize {
    let v: Value = serde_json::from_str(&history_line(sock)).unwrap();
    v["data"]["entries"].as_array().unwrap().len()
}

// ---------------------------------------------------------------------------------------
// 14. A message closed while the child is slow to send a fresh Snapshot.

/// A message is written while the idle child is followed; the child then drops the
/// connection and, on the next one, takes 3 s to send its Snapshot, three times the I/O
/// bound (`--io-timeout-ms 1000`). The message's writer closes while podfs waits for that
/// Snapshot: the close succeeds, and the message is written on the new connection once
/// its Snapshot arrives.
fn a_message_closed_during_a_slow_resnapshot_is_delivered() {
    let home = Home::demo(&INSOMNIA, &[]);
    let snapshot_sent = Arc::new(Mutex::new(None::<Instant>));
    let sent = snapshot_sent.clone();
    let fake = Scripted::serve(
        &home,
        "fake",
        move |n| {
            if n == 1 {
                (Duration::ZERO, snapshot("idle"))
            } else {
                // The delay runs before the line is written: note when it will be.
                *sent.lock().unwrap() = Some(Instant::now() + Duration::from_secs(3));
                (Duration::from_secs(3), snapshot("idle"))
            }
        },
        |out, segments, text| {
            let _ = out.write_all(&a_turn(segments, &format!("echo: {text}")));
        },
    );
    let m = Mount::with_args(&home, &["--io-timeout-ms", "1000"]);
    let c = format!("{}/parent/fake", m.s());
    wait_status(&m, "fake", "idle");
    let mut input = Writer::open(&format!("{c}/input"));
    assert_eq!(input.write("late\n"), "OK");
    fake.hang_up();
    // podfs reconnects at once; the close comes while it waits for the slow Snapshot.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.conns() < 2 {
        assert!(Instant::now() < deadline, "podfs did not reconnect");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        input.close(),
        "OK",
        "the close of a message written while the child was followed"
    );
    let written = eventually(Duration::from_secs(15), || !fake.runs().is_empty());
    assert!(written, "the message was never written:\n{}", m.log());
    assert_eq!(fake.runs(), [(2, "late".to_string())]);
    let snapshot_at = snapshot_sent.lock().unwrap().expect("a second connection");
    assert!(Instant::now() >= snapshot_at, "written before the Snapshot");
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c}/log")).1.contains("echo: late")
    });
    assert!(!m.log().contains("message not delivered"), "{}", m.log());
}

// ---------------------------------------------------------------------------------------
// 15. Only a writer killed midway poisons its message.

/// Through a live reference child: a message whose descriptor a process inherited and
/// never wrote to, which is then killed (SIGKILL) before or after the writer closes, is
/// delivered: `{ printf 'kept\n'; timeout -s KILL 0.5 sleep 5; } > input`, and an `exec
/// 3>input` whose last holder is a killed background `sleep`. A writer killed midway,
/// before it closed, still sends nothing.
fn killed_bystanders(gen: Gen) {
    let home = Home::demo(gen, &["child1"]);
    let _child = PodProcess::start(&home, "child1", &["--turn-ms", "1"]);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let log = || sh(&format!("cat {c}/log")).1;
    settle(&m, "child1");

    // The sleep inherits the descriptor from the group and is killed while it holds it.
    let _ = sh(&format!(
        "{{ printf 'kept\\n'; timeout -s KILL 0.5 sleep 5; }} > {c}/input"
    ));
    let delivered = eventually(Duration::from_secs(15), || log().contains("echo: kept\n"));
    assert!(
        delivered,
        "a killed bystander poisoned the message:\n{}",
        m.log()
    );
    settle(&m, "child1");

    // The killed sleep holds the last descriptor.
    ok(&format!(
        "exec 3>{c}/input; printf 'last holder killed\\n' >&3; sleep 30 & holder=$!; \
         exec 3>&-; kill -KILL $holder; wait $holder || true"
    ));
    let delivered = eventually(Duration::from_secs(15), || {
        log().contains("echo: last holder killed\n")
    });
    assert!(
        delivered,
        "a killed last holder poisoned the message:\n{}",
        m.log()
    );
    settle(&m, "child1");

    // A real writer killed before it closed: nothing of its message is sent.
    let status = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import os, signal\nfd = os.open('{c}/input', os.O_WRONLY)\nos.write(fd, b'half of a mess')\nos.kill(os.getpid(), signal.SIGKILL)\n"
            ),
        ])
        .status()
        .unwrap();
    assert!(!status.success());
    settle(&m, "child1");
    // A message after it goes through, and is the only new text.
    run_turn(&m, "child1", "after");
    assert!(!log().contains("half of a mess"), "{}", log());
    let history = history_line(&home.path().join("run/child1/sock"));
    assert!(!history.contains("half of a mess"), "{history}");
}
both!(
    a_killed_bystander_does_not_poison_the_message,
    killed_bystanders
);

// ---------------------------------------------------------------------------------------
// 16. NUL bytes send nothing.

/// `os.posix_fallocate` on an open `input` fails (`EINVAL` or `EOPNOTSUPP`: FUSE has no
/// fallocate here, and glibc's emulation writes NUL bytes, which `input` refuses) and,
/// after the close, nothing was sent; so does `printf 'a\0b' > input` (`EINVAL`). Checked
/// by the log and by the child's own history: the next message adds exactly one run's
/// entries and its echo.
fn posix_fallocate_on_input_sends_nothing() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _child = PodProcess::start(&home, "child1", &["--turn-ms", "1"]);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let sock = home.path().join("run/child1/sock");
    let log = || ok(&format!("cat {c}/log"));
    settle(&m, "child1");
    // How many entries one run adds (not the first: it also starts the history's segment).
    run_turn(&m, "child1", "first");
    let start = history_len(&sock);
    run_turn(&m, "child1", "calibration");
    let per_run = history_len(&sock) - start;

    // After `what`, the next message is the only thing the child got.
    let nothing_sent_by = |what: &str, marker: &str| {
        settle(&m, "child1");
        let (log_before, len_before) = (log(), history_len(&sock));
        run_turn(&m, "child1", marker);
        let added = log()
            .strip_prefix(&log_before)
            .map(str::to_string)
            .unwrap_or_default();
        assert_eq!(
            added.trim(),
            format!("echo: {marker}"),
            "{what} sent something"
        );
        assert_eq!(
            history_len(&sock),
            len_before + per_run,
            "{what} sent a run"
        );
    };

    let out = ok(&format!(
        r#"python3 -c '
import errno, os
fd = os.open("{c}/input", os.O_WRONLY)
answers = []
for step in (lambda: os.posix_fallocate(fd, 0, 16), lambda: os.close(fd)):
    try:
        step()
        answers.append("OK")
    except OSError as e:
        answers.append(errno.errorcode[e.errno])
print(" ".join(answers))
'"#
    ));
    let fallocate = out.split_whitespace().next().unwrap_or("").to_string();
    assert!(
        fallocate == "EINVAL" || fallocate == "EOPNOTSUPP",
        "posix_fallocate: {out}"
    );
    nothing_sent_by("posix_fallocate", "after fallocate");

    let (code, _, _) = sh(&format!("printf 'a\\0b' > {c}/input"));
    assert_ne!(code, 0, "printf 'a\\0b' > input succeeded");
    nothing_sent_by("printf 'a\\0b'", "after printf");
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'a\\x00b')"
        )),
        "EINVAL"
    );
    nothing_sent_by("a write of a NUL", "after the write");
}

// ---------------------------------------------------------------------------------------
// A descriptor closed by execve.

/// A process that wrote to `input` through a close-on-exec descriptor (what Python's
/// `os.open` and Rust's `File::open` make) and then spawns a program without closing its
/// descriptors first (`subprocess.run(..., close_fds=False)`, `std::process::Command`):
/// the kernel closes the descriptor inside `execve`, holding the exec'ing process's
/// `exec_update_lock`, and sends podfs a FLUSH for it. A flush that read
/// `/proc/<pid>/stat` of that process to see whether a signal killed it would wait for
/// that same lock, and the exec for the flush, for good (found by this suite; podfs now
/// gives that read a tenth of a second). The message is delivered, and the spawn returns.
fn an_exec_that_closes_an_inherited_input_delivers_its_message() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _child = PodProcess::start(&home, "child1", &["--turn-ms", "1"]);
    let mut m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    settle(&m, "child1");
    let mut spawner = Command::new("python3")
        .args([
            "-c",
            "import os, subprocess, sys\n\
             fd = os.open(sys.argv[1], os.O_WRONLY)\n\
             os.write(fd, b'from a spawner')\n\
             subprocess.run(['true'], close_fds=False)\n\
             os.close(fd)\n",
        ])
        .arg(format!("{c}/input"))
        .spawn()
        .unwrap();
    let ended = eventually(Duration::from_secs(20), || {
        spawner.try_wait().unwrap().is_some()
    });
    if !ended {
        // Only the end of podfs frees the exec'ing process (and so the spawner).
        m.kill();
        let _ = spawner.kill();
        let _ = spawner.wait();
        panic!(
            "the spawn's execve and podfs's flush of input deadlocked (podfs was killed to \
             end it)"
        );
    }
    assert!(spawner.wait().unwrap().success());
    wait_for(Duration::from_secs(10), || {
        sh(&format!("cat {c}/log"))
            .1
            .contains("echo: from a spawner")
    });
    // `cursor` checks its closer the same way.
    let mut spawner = Command::new("python3")
        .args([
            "-c",
            "import os, subprocess, sys\n\
             fd = os.open(sys.argv[1], os.O_WRONLY)\n\
             os.write(fd, b'0')\n\
             subprocess.run(['true'], close_fds=False)\n\
             os.close(fd)\n",
        ])
        .arg(format!("{c}/cursor"))
        .spawn()
        .unwrap();
    let ended = eventually(Duration::from_secs(20), || {
        spawner.try_wait().unwrap().is_some()
    });
    if !ended {
        m.kill();
        let _ = spawner.kill();
        let _ = spawner.wait();
        panic!("the spawn's execve and podfs's flush of cursor deadlocked");
    }
    assert!(spawner.wait().unwrap().success());
    assert_eq!(ok(&format!("cat {c}/cursor")), "0\n");
}
