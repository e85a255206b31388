//! The abnormal cases a reviewer and an attacker found, each reproduced through a real
//! mount: a running parent that is slow to answer, two mounts removing one child, panics,
//! messages raced by their own writer, a writer killed midway, edge-triggered epoll,
//! signals while podfs waits, shutdown under waiting readers, symlinks under the runtime
//! dir, another user reading `output`, a `dup`'d cursor, a registry torn for a while, a
//! silent child's cost per directory, and registry entries that lie about their shape.
#[macro_use]
mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    let nobody = fuse.and(Need::root("acting as another user (nobody)"));
    Suite::new()
        .add(
            &fuse,
            both_tests![
                a_silent_parent_is_never_taken_for_an_offline_one,
                a_parent_that_accepts_connections_is_present_whatever_its_pid_says,
            ],
        )
        .add(
            &fuse,
            tests![
                two_mounts_of_one_home_reclaim_a_child_once,
                an_allocation_no_number_can_hold_fails_the_removal_and_nothing_else,
                a_panicking_removal_is_answered_and_never_wedges_the_next,
                a_panic_in_the_watch_reactor_answers_its_readers_and_the_rest_goes_on,
                back_to_back_messages_are_delivered_or_refused_never_dropped,
                while_a_message_is_written_status_says_running_and_other_writers_are_busy,
                a_message_closed_while_another_client_runs_a_turn_is_delivered_after_it,
                fstat_of_an_open_output_is_its_own_snapshot,
                a_writer_killed_midway_sends_nothing_and_one_that_exits_sends_its_message,
                edge_triggered_epoll_wakes_on_every_change,
                polling_an_unchanged_file_registers_once,
                ctrl_c_ends_a_read_or_a_removal_that_waits_for_a_child,
                sigterm_ends_podfs_at_once_whatever_readers_wait_for,
                a_symlinked_child_directory_is_never_connected_to,
                a_symlinked_allocation_table_or_runtime_dir_is_never_written_through,
                a_duplicated_cursor_descriptor_sets_nothing_until_the_last_close,
                a_torn_registry_is_served_from_the_last_good_parse_until_the_grace_runs_out,
                a_silent_child_costs_one_bound_per_directory_not_per_file,
                one_malformed_entry_hides_itself_not_its_siblings,
                a_mount_point_lives_in_a_private_directory_of_its_own,
                a_podfs_killed_with_an_invalidation_stuck_on_a_removal_dies_without_help,
                a_registry_watcher_that_dies_falls_back_to_stat,
                a_table_replaced_while_podfs_waits_for_its_lock_is_edited_not_the_orphan,
                a_stop_or_a_restarting_signal_does_not_end_a_wait,
                two_mounts_remove_a_child_of_a_live_parent_once,
                two_opens_of_output_in_one_process_read_their_own_snapshots,
            ],
        )
        .add(
            &fuse.and(Need::root("mounting a small tmpfs")),
            tests![a_table_that_cannot_grow_on_a_full_disk_is_left_whole],
        )
        // Without the fusectl filesystem only root can abort a FUSE connection (a forced
        // unmount); an ordinary user's mount would stay wedged until root does.
        .add(
            &fuse.and(Need::root("aborting a FUSE connection by a forced unmount")),
            tests![
                a_podfs_killed_with_an_invalidation_stuck_on_a_removal_is_cleaned_up_by_its_guard
            ],
        )
        .add(
            &fuse.and(Need::root("serving a socket as another user (nobody)")),
            tests![a_socket_served_by_another_user_is_refused],
        )
        .add(
            &nobody,
            tests![another_user_cannot_consume_output_through_allow_other],
        )
        .run()
}

/// A socket that accepts connections and never says a word (a parent busy or stuck),
/// holding them until dropped.
struct Silent {
    stop: Arc<AtomicBool>,
}

impl Silent {
    fn at(sock: &Path) -> Silent {
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(sock);
        let listener = UnixListener::bind(sock).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Silent { stop }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The runtime's three files of `home`'s parent, to prove nothing changed.
fn files(home: &Home) -> Vec<String> {
    [home.meta("parent"), home.table(), home.mirror("parent")]
        .iter()
        .map(|rel| std::fs::read_to_string(home.path().join(rel)).unwrap_or_default())
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. A running parent that is slow to answer is not offline.

fn silent_parent(gen: Gen) {
    let home = Home::fixture(gen, "live");
    let _parent = Silent::at(&home.path().join("run/parent/sock"));
    // Its pid file names a live process, written now.
    std::fs::write(
        home.path().join("run/parent/pid"),
        std::process::id().to_string(),
    )
    .unwrap();
    let before = files(&home);
    let m = Mount::quick(&home, &[]);
    let started = Instant::now();
    let errno = py_errno(&format!("os.rmdir('{}/parent/child1')", m.s()));
    eprintln!(
        "rmdir beside a silent parent: {errno} in {:?}",
        started.elapsed()
    );
    assert_eq!(errno, "EBUSY");
    assert_eq!(
        files(&home),
        before,
        "a parent that may be running was edited"
    );
    assert!(ok(&format!("ls {}/parent", m.s())).contains("child1"));
}
both!(
    a_silent_parent_is_never_taken_for_an_offline_one,
    silent_parent
);

fn silent_parent_with_a_dead_pid(gen: Gen) {
    let home = Home::fixture(gen, "live");
    // Whatever its pid file says, something accepts connections on the parent's socket:
    // it is present, and nothing of it is edited.
    let _socket = Silent::at(&home.path().join("run/parent/sock"));
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(home.path().join("run/parent/pid"), pid.to_string()).unwrap();
    let before = files(&home);
    let m = Mount::quick(&home, &[]);
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/child1')", m.s())),
        "EBUSY"
    );
    assert_eq!(files(&home), before, "a parent that accepts was edited");
}
both!(
    a_parent_that_accepts_connections_is_present_whatever_its_pid_says,
    silent_parent_with_a_dead_pid
);

// ---------------------------------------------------------------------------------------
// 2. Two mounts of one home remove one child once.

/// A restored parent (not running) whose deny layer for child3 is stacked twice: a
/// doubled reclaim would take both.
fn doubled_layer_home() -> Home {
    let home = Home::fixture(&INSOMNIA, "after-crash-restore");
    let mut table = home.json("run/pods.json");
    let parent = table["allocations"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| a["pod_name"] == "parent")
        .unwrap();
    let layer = parent["scope_deny"][0].clone();
    parent["scope_deny"].as_array_mut().unwrap().push(layer);
    home.write_json("run/pods.json", &table);
    home
}

fn two_mounts_of_one_home_reclaim_a_child_once() {
    for round in 0..12 {
        let home = doubled_layer_home();
        let (a, b) = (Mount::quick(&home, &[]), Mount::quick(&home, &[]));
        let script = |m: &Mount| {
            format!(
                "import errno, os\ntry:\n    os.rmdir('{}/parent/child3'); print('OK')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n",
                m.s()
            )
        };
        let spawn = |m: &Mount| {
            Command::new("python3")
                .args(["-c", &script(m)])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (pa, pb) = (spawn(&a), spawn(&b));
        let mut answers: Vec<String> = [pa, pb]
            .into_iter()
            .map(|p| String::from_utf8(p.wait_with_output().unwrap().stdout).unwrap())
            .map(|s| s.trim().to_string())
            .collect();
        answers.sort();
        assert_eq!(answers, ["ENOENT", "OK"], "round {round}");
        let table = home.json("run/pods.json");
        let deny = table["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["pod_name"] == "parent")
            .unwrap()["scope_deny"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(deny, 1, "round {round}: exactly one layer goes");
        let meta = home.json("pods/parent/metadata.json");
        let reclaimed = meta["reclaimed_children"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["pod_name"] == "child3")
            .count();
        assert_eq!(reclaimed, 1, "round {round}");
    }
}

// ---------------------------------------------------------------------------------------
// 3. Panics answer their request and leave podfs serving.

fn an_allocation_no_number_can_hold_fails_the_removal_and_nothing_else() {
    let home = Home::fixture(&INSOMNIA, "live");
    // A grandchild of child1, whose allocation must be rewritten when child1 goes; it
    // carries a number no float holds.
    let mut table = home.json("run/pods.json");
    table["allocations"].as_array_mut().unwrap().push(json!({
        "pod_name": "grandchild", "pid": 0, "socket": "", "scope_allow": [], "scope_deny": [],
        "delegated_from": "child1", "segment_id": null, "weight": "@BIG@"}));
    let text = serde_json::to_string_pretty(&table)
        .unwrap()
        .replace("\"@BIG@\"", "1e400");
    std::fs::write(home.path().join("run/pods.json"), &text).unwrap();
    let before = files(&home);
    let m = Mount::quick(&home, &["--workers", "1"]);
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/child1')", m.s())),
        "EIO"
    );
    assert_eq!(files(&home), before, "a failed removal changed a file");
    // The one worker is still there: the next removal works.
    ok(&format!("rmdir {}/parent/child2", m.s()));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child1\nchild3\n");
    assert!(!m.log().contains("panicked"), "{}", m.log());
}

fn a_panicking_removal_is_answered_and_never_wedges_the_next() {
    let home = Home::fixture(&INSOMNIA, "live");
    let before = files(&home);
    let m = Mount::started(
        &home,
        Command::new(BIN),
        &["--workers", "2"],
        &[(podfs::failpoint::VARIABLE, "remove")],
    );
    let p = format!("{}/parent", m.s());
    // More removals than workers: every one answered, none left in D state.
    let started = Instant::now();
    let rms: Vec<_> = (0..6)
        .map(|i| {
            Command::new("python3")
                .args([
                    "-c",
                    &format!(
                        "import errno, os\ntry:\n    os.rmdir('{p}/child{}')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n",
                        1 + i % 3
                    ),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for rm in rms {
        let out = rm.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EIO");
    }
    eprintln!("6 panicking removals answered in {:?}", started.elapsed());
    assert_eq!(files(&home), before);
    assert_eq!(ok(&format!("ls {p}")), "child1\nchild2\nchild3\n");
    assert!(m.log().contains("panic contained"), "{}", m.log());
    // podfs still stops cleanly: nothing waits on a dead thread.
    let mut m = m;
    assert!(m.stop().success());
}

fn a_panic_in_the_watch_reactor_answers_its_readers_and_the_rest_goes_on() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _pods = demo_pods(&home, &["child1"]);
    let m = Mount::started(
        &home,
        Command::new(BIN),
        &["--status-timeout-ms", "3000"],
        &[(podfs::failpoint::VARIABLE, "event")],
    );
    let c = format!("{}/parent/child1", m.s());
    // The first line the child sends panics the handling: the reader hears EIO.
    assert_eq!(py_errno(&format!("open('{c}/status').read()")), "EIO");
    assert!(
        m.log().contains("panic in the watch reactor"),
        "{}",
        m.log()
    );
    // Everything that does not need the child still works, and so does a removal.
    assert!(ok(&format!("cat {c}/scope")).starts_with("write"));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child1\n");
}

// ---------------------------------------------------------------------------------------
// 3. A message whose writer was told "success" at every call is delivered.

/// A child that answers at once, for message races.
fn quick_child(home: &Home) -> PodProcess {
    PodProcess::start(home, "child1", &["--turn-ms", "1"])
}

fn back_to_back_messages_are_delivered_or_refused_never_dropped() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _child = quick_child(&home);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    // write;close;write;close, sixty times: the second open's write meets the first
    // message before the kernel has even told podfs the first was closed.
    let script = format!(
        r#"
import errno, os, time
ok = []
for i in range(60):
    for tag in ("a", "b"):
        try:
            fd = os.open("{c}/input", os.O_WRONLY)
            os.write(fd, ("%s%d" % (tag, i)).encode())
            os.close(fd)
            ok.append("%s%d" % (tag, i))
        except OSError as e:
            assert e.errno == errno.EBUSY, e
    deadline = time.time() + 10
    while open("{c}/status").read() != "idle\n" and time.time() < deadline:
        time.sleep(0.005)
print(" ".join(ok))
"#
    );
    let delivered_claims = ok(&format!("python3 -c '{script}'"));
    let claims: Vec<&str> = delivered_claims.split_whitespace().collect();
    assert!(claims.len() >= 60, "{claims:?}");
    settle(&m, "child1");
    let log = ok(&format!("cat {c}/log"));
    for msg in &claims {
        assert!(
            log.contains(&format!("echo: {msg}\n")),
            "{msg} was accepted at every call but never delivered"
        );
    }
    eprintln!("{} messages accepted, all delivered", claims.len());
}

fn while_a_message_is_written_status_says_running_and_other_writers_are_busy() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _child = quick_child(&home);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let out = ok(&format!(
        r#"python3 -c '
import errno, os
a = os.open("{c}/input", os.O_WRONLY)
os.write(a, b"held")
print(open("{c}/status").read().strip())
try:
    b = os.open("{c}/input", os.O_WRONLY); os.write(b, b"other"); print("written")
except OSError as e:
    print(errno.errorcode[e.errno])
os.close(a)
'"#
    ));
    assert_eq!(out, "running\nEBUSY\n");
    settle(&m, "child1");
    let log = ok(&format!("cat {c}/log"));
    assert!(
        log.contains("echo: held\n") && !log.contains("other"),
        "{log}"
    );
}

fn a_message_closed_while_another_client_runs_a_turn_is_delivered_after_it() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _child = PodProcess::start(&home, "child1", &["--turn-ms", "1500"]);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let other = other_client(&home);
    let sock = home.path().join("run/child1/sock");
    // The message is written, then another client starts a turn, then the message's
    // writer closes: every call succeeded, so the message must arrive.
    let out = ok(&format!(
        r#"python3 -c '
import os, subprocess
a = os.open("{c}/input", os.O_WRONLY)
os.write(a, b"mine")
subprocess.run(["python3", "{other}", "{sock}"], check=True)
os.close(a)
print("closed")
'"#,
        other = other.display(),
        sock = sock.display()
    ));
    assert_eq!(out, "closed\n");
    wait_for(Duration::from_secs(15), || {
        let log = ok(&format!("cat {c}/log"));
        log.contains("echo: other\n") && log.contains("echo: mine\n")
    });
    let log = ok(&format!("cat {c}/log"));
    assert!(
        log.find("echo: other").unwrap() < log.find("echo: mine").unwrap(),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. fstat of an open output is that open's size.

fn fstat_of_an_open_output_is_its_own_snapshot() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _pods = demo_pods(&home, &["child1"]);
    let m = Mount::quick(&home, &[]);
    settle(&m, "child1");
    let c = format!("{}/parent/child1", m.s());
    // This process opens output and takes the text; another then opens it too (and
    // gets nothing) and holds it open; `fstat` here still says what this open holds.
    let out = ok(&format!(
        r#"python3 -c '
import os, subprocess, time
a = os.open("{c}/output", os.O_RDONLY)
other = subprocess.Popen(["python3", "-c", "import os, time; fd = os.open(\"{c}/output\", os.O_RDONLY); print(os.fstat(fd).st_size, flush=True); time.sleep(3)"], stdout=subprocess.PIPE)
theirs = other.stdout.readline().decode().strip()
text = os.read(a, 1 << 20)
print(len(text) > 0, os.fstat(a).st_size == len(text), theirs)
other.kill()
'"#
    ));
    assert_eq!(out, "True True 0\n");
}

// ---------------------------------------------------------------------------------------
// 5. A writer killed midway sends nothing.

fn writer_dies(home: &Home, m: &Mount, how: &str) {
    let c = format!("{}/parent/child1", m.s());
    let _ = home;
    let status = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import os, signal\nfd = os.open('{c}/input', os.O_WRONLY)\nos.write(fd, b'{how} writer')\n{}\n",
                if how == "killed" {
                    "os.kill(os.getpid(), signal.SIGKILL)"
                } else {
                    "os._exit(0)"
                }
            ),
        ])
        .status()
        .unwrap();
    assert_eq!(status.success(), how != "killed");
}

fn a_writer_killed_midway_sends_nothing_and_one_that_exits_sends_its_message() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _child = quick_child(&home);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    settle(&m, "child1");
    writer_dies(&home, &m, "killed");
    std::thread::sleep(Duration::from_millis(300));
    settle(&m, "child1");
    assert!(!ok(&format!("cat {c}/log")).contains("killed writer"));
    assert!(m.log().contains("killed by a signal"), "{}", m.log());
    // Exiting without closing is a close like any other.
    writer_dies(&home, &m, "exiting");
    wait_for(Duration::from_secs(10), || {
        ok(&format!("cat {c}/log")).contains("echo: exiting writer")
    });
}

// ---------------------------------------------------------------------------------------
// 7, 11. Edge-triggered epoll wakes on every change; polling never piles up.

fn edge_triggered_epoll_wakes_on_every_change() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _child = PodProcess::start(&home, "child1", &["--turn-ms", "300"]);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    settle(&m, "child1");
    let script = format!(
        r#"
import os, select, subprocess, time
fd = os.open("{c}/status", os.O_RDONLY)
os.pread(fd, 64, 0)
ep = select.epoll()
ep.register(fd, select.EPOLLIN | select.EPOLLET)
wakes = 0
for turn in range(3):
    subprocess.run(["bash", "-c", "echo turn%d > {c}/input" % turn], check=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        if ep.poll(0.2):
            wakes += 1
            os.pread(fd, 64, 0)
        if open("{c}/status").read() == "idle\n" and wakes >= 2 * (turn + 1):
            break
print(wakes)
"#
    );
    let wakes: u32 = ok(&format!("python3 -c '{script}'"))
        .trim()
        .parse()
        .unwrap();
    // Each turn moves the status to running and back: two changes, two wake-ups.
    assert!(wakes >= 6, "{wakes} wake-ups for 6 changes");
}

fn polling_an_unchanged_file_registers_once() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _pods = demo_pods(&home, &["child1"]);
    let m = Mount::quick(&home, &[]);
    settle(&m, "child1");
    let c = format!("{}/parent/child1", m.s());
    // 20,000 polls of one open file, which then stays open until told.
    let mut poller = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import os, select, sys\nfd = os.open('{c}/status', os.O_RDONLY)\nos.read(fd, 64)\np = select.poll()\np.register(fd, select.POLLIN)\nfor _ in range(20000):\n    p.poll(0)\nprint('polled', flush=True)\nsys.stdin.read()\n"
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(poller.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "polled\n");
    assert_eq!(
        m.report()["pollers"],
        1,
        "one registration for one open file"
    );
    drop(poller.stdin.take());
    poller.wait().unwrap();
    wait_for(Duration::from_secs(5), || m.report()["pollers"] == 0);
}

// ---------------------------------------------------------------------------------------
// 6. A podfs killed while its invalidation thread waits on a directory that an unanswered
// request holds cannot finish dying by itself; its guard ends the deadlock.

/// Whether a thread of process `pid` is in uninterruptible sleep.
fn a_thread_in_d_state(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|s| Some(s[s.rfind(')')? + 2..].starts_with('D')))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

fn a_podfs_killed_with_an_invalidation_stuck_on_a_removal_is_cleaned_up_by_its_guard() {
    let home = Home::fixture(&INSOMNIA, "live");
    let mut m = Mount::started(
        &home,
        Command::new(BIN),
        &[],
        &[(podfs::failpoint::VARIABLE, podfs::fs::RACED_RMDIR)],
    );
    let mut rm = Command::new("rmdir")
        .arg(format!("{}/parent/child1", m.s()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // podfs's invalidation thread now waits for the directory the rmdir holds.
    let pid = m.pid();
    wait_for(Duration::from_secs(20), || a_thread_in_d_state(pid));
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    // The guard sees podfs exiting with its pipe still open, and aborts the connection:
    // the rmdir fails, podfs finishes dying, the mount goes.
    let ended = eventually(Duration::from_secs(15), || rm.try_wait().unwrap().is_some());
    if !ended {
        // End the deadlock by hand, so the failure is reported rather than hung.
        let _ = nix::mount::umount2(m.path(), nix::mount::MntFlags::MNT_FORCE);
        panic!("the guard left the killed podfs and the rmdir waiting for each other");
    }
    assert!(!rm.wait().unwrap().success());
    wait_for(Duration::from_secs(15), || !m.is_mounted());
    eprintln!("deadlock ended {:?} after the kill", killed.elapsed());
    m.kill();
    assert!(!a_thread_in_d_state(pid));
}

fn a_podfs_killed_with_an_invalidation_stuck_on_a_removal_dies_without_help() {
    // The invalidation thread writes through a clone of the device in a file table of
    // its own: once the rest of podfs is gone the kernel ends the rmdir it held, and the
    // thread can die too. The guard is kept from aborting the connection, so nothing but
    // that can end the deadlock (the clone needs /dev/fuse open to this user, as every
    // mount test does).
    let home = Home::fixture(&INSOMNIA, "live");
    let armed = format!("{},guard-cannot-abort", podfs::fs::RACED_RMDIR);
    let mut m = Mount::started(
        &home,
        Command::new(BIN),
        &[],
        &[(podfs::failpoint::VARIABLE, armed.as_str())],
    );
    let connection = m.connection();
    let mut rm = Command::new("rmdir")
        .arg(format!("{}/parent/child1", m.s()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = m.pid();
    wait_for(Duration::from_secs(20), || a_thread_in_d_state(pid));
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    let ended = eventually(Duration::from_secs(15), || rm.try_wait().unwrap().is_some());
    if !ended {
        abort_fuse_connection(connection);
        panic!("the killed podfs and the rmdir waited for each other");
    }
    assert!(!rm.wait().unwrap().success());
    eprintln!("deadlock ended {:?} after the kill", killed.elapsed());
    m.kill();
    wait_for(Duration::from_secs(15), || !m.is_mounted());
    assert!(!a_thread_in_d_state(pid));
}

// ---------------------------------------------------------------------------------------
// 8, 9. A signal ends podfs's waits; shutdown does not wait for any child.

fn ctrl_c_ends_a_read_or_a_removal_that_waits_for_a_child() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _hung = Silent::at(&home.path().join("run/hung/sock"));
    home.add_child("parent", "hung", &home.path().join("run/hung/sock"));
    let _stubborn = PodProcess::start(&home, "child1", &["--ignore-shutdown"]);
    let m = Mount::with_args(
        &home,
        &[
            "--io-timeout-ms",
            "30000",
            "--status-timeout-ms",
            "30000",
            "--stop-timeout-ms",
            "30000",
        ],
    );
    let p = format!("{}/parent", m.s());
    for cmd in [format!("cat {p}/hung/output"), format!("rmdir {p}/child1")] {
        let mut child = like_a_foreground_job(Command::new("bash").args(["-c", &cmd]))
            .spawn()
            .unwrap();
        // `bash -c` execs the one command: wait until it waits inside podfs.
        wait_in_syscall(
            child.id(),
            &[
                libc::SYS_openat,
                libc::SYS_open,
                libc::SYS_rmdir,
                libc::SYS_unlinkat,
            ],
        );
        assert!(child.try_wait().unwrap().is_none(), "{cmd} should wait");
        let started = Instant::now();
        signal(child.id(), nix::sys::signal::Signal::SIGINT);
        let status = child.wait().unwrap();
        let took = started.elapsed();
        eprintln!("{cmd}: ended {took:?} after SIGINT ({status})");
        assert!(!status.success());
        assert!(took < Duration::from_secs(10), "{cmd}: {took:?}");
    }
    // The interrupted removal changed nothing.
    assert!(ok(&format!("ls {p}")).contains("child1"));
}

fn sigterm_ends_podfs_at_once_whatever_readers_wait_for() {
    let home = Home::fixture(&INSOMNIA, "live");
    let _hung = Silent::at(&home.path().join("run/hung/sock"));
    home.add_child("parent", "hung", &home.path().join("run/hung/sock"));
    let mut m = Mount::with_args(
        &home,
        &["--io-timeout-ms", "30000", "--status-timeout-ms", "30000"],
    );
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let file = ["output", "log", "status", "input"][i % 4];
            let cmd = if file == "input" {
                format!("echo x > {}/parent/hung/input", m.s())
            } else {
                format!("cat {}/parent/hung/{file}", m.s())
            };
            Command::new("bash")
                .args(["-c", &cmd])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = m.stop();
    let took = started.elapsed();
    eprintln!("SIGTERM with 8 readers waiting on a silent child: exited in {took:?}");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    for mut r in readers {
        let _ = r.wait();
    }
}

// ---------------------------------------------------------------------------------------
// 13. Nothing under the runtime dir is reached through a symlink.

fn a_symlinked_child_directory_is_never_connected_to() {
    let home = Home::fixture(&INSOMNIA, "live");
    let outside = tempdir();
    let foreign = UnixListener::bind(outside.path().join("sock")).unwrap();
    foreign.set_nonblocking(true).unwrap();
    std::os::unix::fs::symlink(outside.path(), home.path().join("run/evil")).unwrap();
    home.add_child("parent", "evil", &home.path().join("run/evil/sock"));
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/evil", m.s());
    // podfs may not reach it, and says why (ELOOP), never `unreachable` (which would
    // say the child is down).
    assert_eq!(py_errno(&format!("open('{c}/status').read()")), "ELOOP");
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'x')"
        )),
        "ELOOP"
    );
    // rm -r cannot prove it stopped (it will not connect to find out): EBUSY, nothing sent.
    fails(&format!("rmdir {c}"));
    assert!(
        foreign.accept().is_err(),
        "podfs connected through a symlink"
    );
}

fn a_symlinked_allocation_table_or_runtime_dir_is_never_written_through() {
    for what in ["table", "mirror dir"] {
        let home = Home::fixture(&INSOMNIA, "live");
        let outside = tempdir();
        let (link, target) = match what {
            "table" => ("run/pods.json", outside.path().join("pods.json")),
            _ => ("run/parent", outside.path().join("parent")),
        };
        std::fs::rename(home.path().join(link), &target).unwrap();
        std::os::unix::fs::symlink(&target, home.path().join(link)).unwrap();
        let snapshot = |p: &Path| -> Vec<u8> {
            if p.is_dir() {
                std::fs::read(p.join("spawned_pods.json")).unwrap()
            } else {
                std::fs::read(p).unwrap()
            }
        };
        let outside_before = snapshot(&target);
        let meta_before = home.read("pods/parent/metadata.json");
        let m = Mount::quick(&home, &[]);
        assert_eq!(
            py_errno(&format!("os.rmdir('{}/parent/child1')", m.s())),
            "ELOOP",
            "{what}"
        );
        assert_eq!(
            snapshot(&target),
            outside_before,
            "{what}: written through a symlink"
        );
        assert_eq!(
            home.read("pods/parent/metadata.json"),
            meta_before,
            "{what}"
        );
    }
}

fn a_socket_served_by_another_user_is_refused() {
    let home = Home::fixture(&INSOMNIA, "live");
    let dir = home.path().join("run/other");
    std::fs::create_dir_all(&dir).unwrap();
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for d in [home.path(), &home.path().join("run")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sock = dir.join("sock");
    let server = format!(
        "import socket, time\ns = socket.socket(socket.AF_UNIX)\ns.bind('{}')\ns.listen(8)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'{{\"event\":\"snapshot\",\"data\":{{\"entries\":[],\"status\":\"idle\"}}}}\\n')\n",
        sock.display()
    );
    let mut nobody = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            system_python(),
            "-c",
            &server,
        ])
        // podfs hangs up on it, as it should: the server's BrokenPipeError is expected.
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || sock.exists());
    home.add_child("parent", "other", &sock);
    let m = Mount::quick(&home, &[]);
    assert_eq!(
        py_errno(&format!("open('{}/parent/other/status').read()", m.s())),
        "EACCES"
    );
    let _ = nobody.kill();
    let _ = nobody.wait();
}

// ---------------------------------------------------------------------------------------
// 14. Reading output moves the cursor: it takes the permission to write it.

fn another_user_cannot_consume_output_through_allow_other() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _pods = demo_pods(&home, &["child1"]);
    let m = Mount::quick(&home, &["--allow-other"]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(m.base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    settle(&m, "child1");
    let c = format!("{}/parent/child1", m.s());
    let script = format!(
        "import errno\ntry:\n    open('{c}/output').read(); print('OK')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
    );
    let (code, out, err) = sh(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups -- {} -c \"{script}\"",
        system_python()
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "EACCES");
    assert_eq!(
        ok(&format!("cat {c}/cursor")),
        "0\n",
        "the owner's cursor moved"
    );
    assert!(ok(&format!("cat {c}/output")).contains("echo: child1"));
}

// ---------------------------------------------------------------------------------------
// 15. A cursor value takes effect at the last close, not at a dup's.

fn a_duplicated_cursor_descriptor_sets_nothing_until_the_last_close() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _pods = demo_pods(&home, &["child1"]);
    let m = Mount::quick(&home, &[]);
    settle(&m, "child1");
    let c = format!("{}/parent/child1", m.s());
    ok(&format!("echo 7 > {c}/cursor"));
    let out = ok(&format!(
        "exec 3>{c}/cursor; (printf 0 >&3); cat {c}/cursor; printf 5 >&3; cat {c}/cursor; exec 3>&-; cat {c}/cursor"
    ));
    assert_eq!(out, "7\n7\n5\n");
}

// ---------------------------------------------------------------------------------------
// 16. A registry torn after a quiet spell is served from its last good parse for a while.

fn a_torn_registry_is_served_from_the_last_good_parse_until_the_grace_runs_out() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::quick(&home, &[]);
    let p = format!("{}/parent", m.s());
    assert!(ok(&format!("cat {p}/child1/scope")).starts_with("write"));
    // Long enough for the last good parse to be older than the grace.
    std::thread::sleep(podfs::parents::CORRUPT_GRACE + Duration::from_millis(500));
    let meta = home.path().join("pods/parent/metadata.json");
    let good = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &good[..good.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(ok(&format!("ls {}", m.s())).contains("parent"));
    assert!(ok(&format!("cat {p}/child1/scope")).starts_with("write"));
    // Torn for longer than the grace: EIO, said at once.
    wait_for(Duration::from_secs(10), || {
        py_errno(&format!("os.listdir('{p}')")) == "EIO"
    });
    std::fs::write(&meta, &good).unwrap();
    wait_for(Duration::from_secs(10), || sh(&format!("ls {p}")).0 == 0);
}

// ---------------------------------------------------------------------------------------
// 17. One bound covers a silent child's whole directory.

fn a_silent_child_costs_one_bound_per_directory_not_per_file() {
    let home = Home::fixture(&INSOMNIA, "live");
    let _hung = Silent::at(&home.path().join("run/hung/sock"));
    home.add_child("parent", "hung", &home.path().join("run/hung/sock"));
    let m = Mount::with_args(
        &home,
        &["--status-timeout-ms", "2000", "--io-timeout-ms", "20000"],
    );
    let c = format!("{}/parent/hung", m.s());
    let started = Instant::now();
    ok(&format!("ls -l {c}/ > /dev/null"));
    assert_eq!(ok(&format!("cat {c}/status")), "unreachable\n");
    ok(&format!("stat {c}/log {c}/output > /dev/null"));
    let took = started.elapsed();
    eprintln!("a silent child: ls -l, cat status, stat log output in {took:?}");
    // Three live files, each once in ls -l, then status and two stats: one bound (2 s)
    // in all, not one per file (which would be at least 12 s).
    assert!(took < Duration::from_secs(7), "{took:?}");
}

// ---------------------------------------------------------------------------------------
// 18. Entries that lie about their shape, and targets that hold a newline.

fn one_malformed_entry_hides_itself_not_its_siblings() {
    let home = Home::fixture(&INSOMNIA, "live");
    let mut meta = home.json("pods/parent/metadata.json");
    let list = meta["spawned_children"].as_array_mut().unwrap();
    list.insert(1, json!({"pod_name": "broken", "socket_path": 42}));
    let mut tricky = list[0].clone();
    tricky["pod_name"] = "tricky".into();
    tricky["scope_delegated"] =
        json!([{"target": "/w/a\nwrite recursive /etc", "permission": "write", "recursive": true}]);
    list.push(tricky);
    home.write_json("pods/parent/metadata.json", &meta);
    let m = Mount::quick(&home, &[]);
    let p = format!("{}/parent", m.s());
    assert_eq!(ok(&format!("ls {p}")), "child1\nchild2\nchild3\ntricky\n");
    assert!(m.log().contains("not shown"), "{}", m.log());
    // One rule, one line: the newline cannot forge a second rule.
    assert_eq!(
        ok(&format!("cat {p}/tricky/scope")),
        "write recursive /w/a\\012write recursive /etc\n"
    );
    // The bad entry survives a removal of a sibling untouched.
    ok(&format!("rmdir {p}/child2"));
    let after: Value = home.json("pods/parent/metadata.json");
    assert!(after["spawned_children"]
        .as_array()
        .unwrap()
        .contains(&json!({"pod_name": "broken", "socket_path": 42})));
}

fn a_mount_point_lives_in_a_private_directory_of_its_own() {
    // Tests that open a mount to other users change that directory, never a shared one
    // (the system's temporary directory once lost its mode this way).
    use std::os::unix::fs::PermissionsExt;
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::quick(&home, &[]);
    let parent = m.path().parent().unwrap();
    assert_eq!(parent, m.base.path());
    let mode = std::fs::metadata(parent).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

// ---------------------------------------------------------------------------------------
// The registry watcher, the allocation table's lock, job control, two mounts of a live
// parent, and fstat of two opens in one process.

/// A registry watcher that dies (its read fails) leaves podfs revalidating by `stat`: a
/// change the runtime makes afterwards still reaches `ls`. (Before, the cache trusted
/// "no event" forever and showed the removed child for good.)
fn a_registry_watcher_that_dies_falls_back_to_stat() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::started(
        &home,
        Command::new(BIN),
        &[],
        &[(podfs::failpoint::VARIABLE, "inotify-read")],
    );
    let p = format!("{}/parent", m.s());
    assert!(ok(&format!("ls {p}")).contains("child1"));
    // The runtime's own in-place rewrite: the first event kills the watcher.
    let after = fixture_text(&INSOMNIA, "after-stop/pods/parent/metadata.json", &home.s());
    std::fs::write(home.path().join("pods/parent/metadata.json"), after).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !ok(&format!("ls {p}"))
            .contains("child1")),
        "the removed child stayed listed after the watcher died"
    );
    assert!(m.log().contains("found by stat from now on"), "{}", m.log());
}

/// The allocation table replaced while podfs waits for its lock: podfs edits the table
/// the runtime dir names once it holds the lock, not the orphan it first opened (which
/// nobody would ever read again).
fn a_table_replaced_while_podfs_waits_for_its_lock_is_edited_not_the_orphan() {
    let home = Home::fixture(&INSOMNIA, "live");
    let table = home.path().join("run/pods.json");
    let ready = home.path().join("locked");
    let release = home.path().join("release");
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import fcntl, os, sys, time\nf = open(sys.argv[1], 'r+')\nfcntl.flock(f, fcntl.LOCK_EX)\nopen(sys.argv[2], 'w').close()\nwhile not os.path.exists(sys.argv[3]):\n    time.sleep(0.01)\n",
        ])
        .arg(&table)
        .arg(&ready)
        .arg(&release)
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || ready.exists());
    let m = Mount::quick(&home, &["--lock-timeout-ms", "10000"]);
    let c = format!("{}/parent/child1", m.s());
    let mut rm = Command::new("rmdir").arg(&c).spawn().unwrap();
    // podfs now waits for the lock on the old inode; the table is replaced meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    let fresh = home.path().join("run/pods.json.new");
    std::fs::copy(&table, &fresh).unwrap();
    std::fs::rename(&fresh, &table).unwrap();
    std::fs::write(&release, b"").unwrap();
    holder.wait().unwrap();
    assert!(rm.wait().unwrap().success());
    let names = home.names(&home.json("run/pods.json")["allocations"]);
    assert!(
        !names.contains(&"child1".to_string()),
        "the table the runtime dir names still holds child1: the orphan was edited"
    );
}

/// A compact table that a reclaim would make longer, on a disk with no room for it:
/// the rewrite fails before its first byte changes (`ENOSPC`), the table still parses
/// and is unchanged, and `metadata.json` is untouched. (Before, the write stopped
/// halfway and left the table unparsable for every runtime.)
fn a_table_that_cannot_grow_on_a_full_disk_is_left_whole() {
    let home = Home::fixture(&INSOMNIA, "live");
    let run = home.path().join("run");
    let saved = tempdir();
    let keep = saved.path().join("run");
    std::fs::rename(&run, &keep).unwrap();
    std::fs::create_dir(&run).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(&run)
        .status()
        .unwrap();
    assert!(mounted.success());
    let _tmpfs = Unmount(run.clone());
    // The runtime's table, compact, with allocations of grandchildren under child1:
    // reclaiming child1 moves them up a level, and the rewritten ones take the runtime's
    // pretty form, longer. A filler field puts the file just below a page, so the longer
    // table needs a page the disk does not have.
    let mut table: Value =
        serde_json::from_str(&std::fs::read_to_string(keep.join("pods.json")).unwrap()).unwrap();
    let child = table["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["pod_name"] == "child1")
        .unwrap()
        .clone();
    for i in 0..8 {
        let mut g = child.clone();
        g["pod_name"] = format!("grandchild{i}").into();
        g["delegated_from"] = "child1".into();
        table["allocations"].as_array_mut().unwrap().push(g);
    }
    table["padding"] = "".into();
    let len = serde_json::to_vec(&table).unwrap().len();
    let pad = (4096 - len % 4096).saturating_sub(16);
    table["padding"] = "x".repeat(pad).into();
    let compact = serde_json::to_vec(&table).unwrap();
    std::fs::write(run.join("pods.json"), &compact).unwrap();
    // Fill the disk, leaving no block to spare.
    let mut filler = std::fs::File::create(run.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    let meta = home.read("pods/parent/metadata.json");
    let m = Mount::quick(&home, &[]);
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/child1')", m.s())),
        "ENOSPC"
    );
    let after = std::fs::read(run.join("pods.json")).unwrap();
    assert!(
        after == compact,
        "the table changed ({} bytes now)",
        after.len()
    );
    assert_eq!(home.read("pods/parent/metadata.json"), meta);
}

/// A child that answers its Snapshot `delay` after each connection.
fn slow_child(home: &Home, name: &str, delay: Duration) -> FakeChild {
    FakeChild::serve(home, name, move |mut s| {
        use std::io::{Read, Write};
        std::thread::sleep(delay);
        let _ = s.write_all(&snapshot_line(&["slow"]));
        let mut sink = [0u8; 256];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    })
}

/// Job control and signals a program handles with `SA_RESTART` do not end a wait: a
/// `cat output` stopped with SIGTSTP and resumed with SIGCONT, and a Python open that
/// gets a SIGWINCH it handles, both wait on and read the text once the child answers.
/// (Before, any pending signal ended the wait with EINTR.)
fn a_stop_or_a_restarting_signal_does_not_end_a_wait() {
    let home = Home::fixture(&INSOMNIA, "live");
    let _slow = slow_child(&home, "slow", Duration::from_secs(3));
    let m = Mount::with_args(
        &home,
        &["--io-timeout-ms", "20000", "--status-timeout-ms", "20000"],
    );
    let out = format!("{}/parent/slow/output", m.s());
    let cat = like_a_foreground_job(Command::new("cat").arg(&out))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_in_syscall(cat.id(), &[libc::SYS_openat, libc::SYS_open]);
    signal(cat.id(), nix::sys::signal::Signal::SIGTSTP);
    std::thread::sleep(Duration::from_millis(200));
    signal(cat.id(), nix::sys::signal::Signal::SIGCONT);
    let done = cat.wait_with_output().unwrap();
    assert!(done.status.success(), "cat failed after Ctrl-Z and fg");
    assert_eq!(String::from_utf8_lossy(&done.stdout), "slow\n");
    // A fresh child for the second case: its watch has not answered yet either.
    let _slow2 = slow_child(&home, "slow2", Duration::from_secs(3));
    let script = format!(
        "import os, signal\nsignal.signal(signal.SIGWINCH, lambda *a: None)\nsignal.siginterrupt(signal.SIGWINCH, False)\nfd = os.open('{}/parent/slow2/output', os.O_RDONLY)\nprint(os.read(fd, 100).decode(), end='')\n",
        m.s()
    );
    let py = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_in_syscall(py.id(), &[libc::SYS_openat, libc::SYS_open]);
    signal(py.id(), nix::sys::signal::Signal::SIGWINCH);
    let done = py.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "the open ended on a SIGWINCH it handles"
    );
    assert_eq!(String::from_utf8_lossy(&done.stdout), "slow\n");
}

/// How often the reference parent at `sock` was told `child` has stopped (each telling
/// is a notice in its history, shown to its LLM).
fn stop_notices(sock: &Path, child: &str) -> usize {
    use std::io::BufRead;
    let s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    let wanted = format!("Pod `{child}` has stopped.");
    v["data"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["item"]["body"].as_str() == Some(wanted.as_str()))
        .count()
}

/// Two mounts remove the same child of a live parent at the same moment: one succeeds,
/// the other gets `ENOENT`, and the parent is told once. (The child here has no callback,
/// as a restored child has none, so each removal would tell the parent itself; before,
/// both did, and the parent ran its removal and told its LLM twice.)
fn two_mounts_remove_a_child_of_a_live_parent_once() {
    for round in 0..4 {
        let home = Home::demo(&INSOMNIA, &["child1"]);
        let _parent = PodProcess::start(&home, "parent", &[]);
        let _child = PodProcess::start(&home, "child1", &[]);
        let (a, b) = (Mount::quick(&home, &[]), Mount::quick(&home, &[]));
        let spawn = |m: &Mount| {
            let script = format!(
                "import errno, os\ntry:\n    os.rmdir('{}/parent/child1'); print('OK')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n",
                m.s()
            );
            Command::new("python3")
                .args(["-c", &script])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (pa, pb) = (spawn(&a), spawn(&b));
        let mut answers: Vec<String> = [pa, pb]
            .into_iter()
            .map(|p| String::from_utf8(p.wait_with_output().unwrap().stdout).unwrap())
            .map(|s| s.trim().to_string())
            .collect();
        answers.sort();
        assert_eq!(answers, ["ENOENT", "OK"], "round {round}");
        let sock = home.path().join("run/parent/sock");
        // The parent's notice turns take a moment; a second telling would come within it.
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(stop_notices(&sock, "child1"), 1, "round {round}");
    }
}

/// Two opens of `output` in one process: each read returns that open's own snapshot,
/// and `fstat` of either reports the newest open's size, because the kernel does not
/// say which open file an `fstat` is about (it sends no handle with it); the newest is
/// what `tar`, `rsync` and `cp` read, one file at a time.
fn two_opens_of_output_in_one_process_read_their_own_snapshots() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _pods = demo_pods(&home, &["child1"]);
    let m = Mount::quick(&home, &[]);
    settle(&m, "child1");
    let c = format!("{}/parent/child1", m.s());
    let out = ok(&format!(
        r#"python3 -c '
import os, time
older = os.open("{c}/output", os.O_RDONLY)
taken = os.fstat(older).st_size
with open("{c}/input", "w") as f: f.write("more\n")
while open("{c}/status").read() != "idle\n" or "echo: more" not in open("{c}/log").read():
    time.sleep(0.05)
newer = os.open("{c}/output", os.O_RDONLY)
a, b = os.read(older, 1 << 20), os.read(newer, 1 << 20)
print(taken == len(a), len(a) != len(b), os.fstat(older).st_size == len(b), os.fstat(newer).st_size == len(b))
'"#
    ));
    assert_eq!(out, "True True True True\n");
}
