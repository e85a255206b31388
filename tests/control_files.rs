//! Control files under every real writer and reader (contract §2): one test per way a
//! shell or a tool shares, chunks or walks the files, on both runtime generations.
//!
//! A message is checked by what the child answers: the reference pod echoes each run it
//! gets into its history ("echo: <message>"), which `log` shows. That nothing was sent is
//! checked deterministically: a marker message is sent afterwards, and the log must grow
//! by exactly the expected echoes and then the marker's.
#[macro_use]
mod common;

use std::time::Duration;

use common::*;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &fuse,
            both_tests![
                input_from_a_subshell_of_two_cats,
                input_from_a_brace_group,
                input_from_exec_3,
                input_from_a_forked_child,
                input_from_xargs,
                input_through_a_pipe_in_chunks,
                input_from_dd_bs_1,
                input_from_dd_bs_4096,
                input_from_buffered_python_writes,
                input_with_a_character_split_across_writes,
                a_message_over_the_limit_is_refused_whole_through_cat,
                a_message_over_the_limit_is_refused_whole_through_dd,
                printf_of_invalid_utf8_exits_non_zero,
                echo_of_an_empty_line_exits_non_zero,
                a_bad_write_midway_poisons_the_whole_message,
                a_message_cut_mid_character_is_refused_at_close,
                a_turn_started_midway_refuses_the_rest_and_sends_nothing,
                cursor_takes_one_value_per_open,
                stat_of_cursor_follows_its_value,
                a_child_removed_and_listed_again_starts_at_cursor_0,
                concurrent_output_readers_never_share_text,
                cp_r_of_a_child,
                tar_of_a_child,
                rsync_a_of_a_child,
                grep_r_of_a_parent,
                find_exec_cat_of_a_parent,
                python_os_walk_reads_every_file,
            ],
        )
        .add(
            &fuse,
            tests![
                a_silent_child_fails_with_etimedout_not_an_empty_success,
                ordinary_programs_fill_no_log,
                rm_r_of_a_parent_removes_its_children_and_fails_on_the_parent,
                rm_r_of_a_silent_child_is_ebusy_within_the_stop_timeout,
                a_read_only_mount_changes_nothing,
                unsupported_operations_get_pseudo_filesystem_errnos,
            ],
        )
        .run()
}

/// A live demo parent with one live child, mounted, its first task done.
struct Live {
    m: Mount,
    _pods: podfs::demo::Pods,
    _home: Home,
}

impl Live {
    fn new(gen: Gen) -> Live {
        let home = Home::demo(gen, &["child1"]);
        let pods = demo_pods(&home, &["child1"]);
        let m = Mount::quick(&home, &[]);
        settle(&m, "child1");
        Live {
            m,
            _pods: pods,
            _home: home,
        }
    }

    fn c(&self) -> String {
        format!("{}/parent/child1", self.m.s())
    }

    fn log(&self) -> String {
        ok(&format!("cat {}/log", self.c()))
    }

    /// Send a marker and check that since `before` the child received exactly `messages`
    /// (in order) and then the marker.
    fn received_exactly(&self, before: &str, messages: &[&str]) {
        // The message is sent when the last descriptor closes, just after the writer's
        // close returned: wait for its answer before sending the marker.
        if !messages.is_empty() {
            let answered = format!("{}\n\n{}\n", before.trim_end(), echoes(messages));
            let arrived = eventually(Duration::from_secs(10), || self.log() == answered);
            assert!(
                arrived,
                "expected {answered:?}, the log is {:?}",
                self.log()
            );
        }
        settle(&self.m, "child1");
        run_turn(&self.m, "child1", "marker");
        let mut all = messages.to_vec();
        all.push("marker");
        let expected = format!("{}\n\n{}\n", before.trim_end(), echoes(&all));
        assert_eq!(self.log(), expected, "the child received something else");
    }
}

/// The log after `messages` were received, compared by their echoes.
fn echoes(messages: &[&str]) -> String {
    messages
        .iter()
        .map(|m| format!("echo: {m}"))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Check, after `action`, that exactly `messages` arrived.
fn sends(gen: Gen, action: &str, messages: &[&str]) {
    let live = Live::new(gen);
    let before = live.log();
    ok(&action.replace("{c}", &live.c()));
    live.received_exactly(&before, messages);
}

/// Check that `action` fails (non-zero exit) and nothing arrives.
fn refuses(gen: Gen, action: &str) {
    let live = Live::new(gen);
    let before = live.log();
    fails(&action.replace("{c}", &live.c()));
    live.received_exactly(&before, &[]);
}

// ---------------------------------------------------------------------------------------
// input: one message per open file description, however it is shared or chunked.

fn subshell(gen: Gen) {
    sends(
        gen,
        "d=$(mktemp -d) && printf 'head ' > $d/h && printf 'body\\n' > $d/b && (cat $d/h; cat $d/b) > {c}/input; s=$?; rm -rf $d; exit $s",
        &["head body"],
    );
}
both!(input_from_a_subshell_of_two_cats, subshell);

fn brace_group(gen: Gen) {
    sends(
        gen,
        "{ echo a; /bin/echo b; echo c; } > {c}/input",
        &["a\nb\nc"],
    );
}
both!(input_from_a_brace_group, brace_group);

fn exec_descriptor(gen: Gen) {
    sends(
        gen,
        "exec 3>{c}/input; echo one >&3; sleep 0.2; echo two >&3; exec 3>&-",
        &["one\ntwo"],
    );
}
both!(input_from_exec_3, exec_descriptor);

fn forked_child(gen: Gen) {
    sends(
        gen,
        "python3 -c \"
import os
fd = os.open('{c}/input', os.O_WRONLY)
pid = os.fork()
if pid == 0:
    os.write(fd, b'from the child '); os.close(fd); os._exit(0)
os.waitpid(pid, 0)
os.write(fd, b'and the parent\\n'); os.close(fd)
\"",
        &["from the child and the parent"],
    );
}
both!(input_from_a_forked_child, forked_child);

fn xargs(gen: Gen) {
    sends(
        gen,
        "printf 'x\\ny\\nz\\n' | xargs -n1 echo > {c}/input",
        &["x\ny\nz"],
    );
}
both!(input_from_xargs, xargs);

fn pipe_chunks(gen: Gen) {
    sends(
        gen,
        "(printf 'slow '; sleep 0.2; printf 'pipe\\n') | cat > {c}/input",
        &["slow pipe"],
    );
}
both!(input_through_a_pipe_in_chunks, pipe_chunks);

fn dd_bytes(gen: Gen) {
    sends(
        gen,
        "printf 'byte by byte\\n' | dd of={c}/input bs=1 status=none",
        &["byte by byte"],
    );
}
both!(input_from_dd_bs_1, dd_bytes);

fn dd_blocks(gen: Gen) {
    let expected = "b".repeat(20000);
    sends(
        gen,
        "head -c 20000 /dev/zero | tr '\\0' b | dd of={c}/input bs=4096 status=none",
        &[&expected],
    );
}
both!(input_from_dd_bs_4096, dd_blocks);

fn buffered_python(gen: Gen) {
    let expected = format!("{}!", "p".repeat(10000));
    sends(
        gen,
        "python3 -c \"f = open('{c}/input', 'w'); f.write('p' * 10000); f.flush(); f.write('!'); f.close()\"",
        &[&expected],
    );
}
both!(input_from_buffered_python_writes, buffered_python);

fn split_character(gen: Gen) {
    sends(
        gen,
        "python3 -c \"
import os
fd = os.open('{c}/input', os.O_WRONLY)
e = 'é'.encode()
os.write(fd, b'caf' + e[:1]); os.write(fd, e[1:] + b' au lait'); os.close(fd)
\"",
        &["café au lait"],
    );
}
both!(input_with_a_character_split_across_writes, split_character);

// ---------------------------------------------------------------------------------------
// input: all or nothing, and failures the writer sees.

fn too_big_through_cat(gen: Gen) {
    refuses(
        gen,
        "head -c 70000 /dev/zero | tr '\\0' a | cat > {c}/input",
    );
}
both!(
    a_message_over_the_limit_is_refused_whole_through_cat,
    too_big_through_cat
);

fn too_big_through_dd(gen: Gen) {
    refuses(
        gen,
        "head -c 70000 /dev/zero | tr '\\0' a | dd of={c}/input bs=4096 status=none",
    );
}
both!(
    a_message_over_the_limit_is_refused_whole_through_dd,
    too_big_through_dd
);

fn not_utf8(gen: Gen) {
    refuses(gen, "printf '\\xff' > {c}/input");
}
both!(printf_of_invalid_utf8_exits_non_zero, not_utf8);

fn empty(gen: Gen) {
    refuses(gen, "echo > {c}/input");
}
both!(echo_of_an_empty_line_exits_non_zero, empty);

fn poisoned_midway(gen: Gen) {
    refuses(
        gen,
        "{ echo 'a good start'; printf '\\xff'; echo 'and more'; } > {c}/input",
    );
}
both!(
    a_bad_write_midway_poisons_the_whole_message,
    poisoned_midway
);

fn cut_at_close(gen: Gen) {
    let live = Live::new(gen);
    let before = live.log();
    let c = live.c();
    // The last descriptor closes in the middle of a character: close fails, nothing sent.
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/input', os.O_WRONLY); os.write(fd, b'half \\xc3'); os.close(fd)"
        )),
        "EINVAL"
    );
    live.received_exactly(&before, &[]);
    assert!(
        live.m.log().contains("middle of a character"),
        "no error logged"
    );
}
both!(
    a_message_cut_mid_character_is_refused_at_close,
    cut_at_close
);

fn busy_midway(gen: Gen) {
    let home = Home::demo(gen, &["child1"]);
    let _parent = PodProcess::start(&home, "parent", &[]);
    let cb = PodProcess::callback(&home, "parent");
    // The turn is long enough that a loaded machine cannot let it end before the script
    // below sees `running`; the script says if it did not, rather than testing nothing.
    let _child = PodProcess::start(&home, "child1", &["--callback", &cb, "--turn-ms", "6000"]);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    let other = other_client(&home);
    let sock = home.path().join("run/child1/sock");
    // Writer A starts a message while the child is idle; another client's message starts
    // a turn; A's next write is refused, and A's message never arrives.
    let out = ok(&format!(
        "python3 -c \"
import errno, os, subprocess, time
a = os.open('{c}/input', os.O_WRONLY)
os.write(a, b'first half ')
subprocess.run(['python3', '{other}', '{sock}'], check=True)
deadline = time.time() + 5
while open('{c}/status').read() != 'running\\n' and time.time() < deadline:
    time.sleep(0.02)
if open('{c}/status').read() != 'running\\n':
    print('never running')
try:
    os.write(a, b'second half'); print('written')
except OSError as e:
    print(errno.errorcode[e.errno])
try:
    os.close(a); print('closed')
except OSError as e:
    print(errno.errorcode[e.errno])
\"",
        other = other.display(),
        sock = sock.display()
    ));
    assert_eq!(out, "EBUSY\nEBUSY\n");
    settle(&m, "child1");
    std::thread::sleep(Duration::from_millis(500));
    settle(&m, "child1");
    let log = ok(&format!("cat {c}/log"));
    assert!(log.ends_with("echo: other\n"), "{log}");
    assert!(!log.contains("half"), "{log}");
}
both!(
    a_turn_started_midway_refuses_the_rest_and_sends_nothing,
    busy_midway
);

// ---------------------------------------------------------------------------------------
// cursor: one value per open file description, checked as it arrives.

fn cursor_values(gen: Gen) {
    let live = Live::new(gen);
    let c = live.c();
    // child1's history holds 7 entries: values from 0 to 7.
    ok(&format!("echo 06 | dd of={c}/cursor bs=1 status=none"));
    assert_eq!(ok(&format!("cat {c}/cursor")), "6\n");
    ok(&format!("(printf 0; printf 4) > {c}/cursor"));
    assert_eq!(ok(&format!("cat {c}/cursor")), "4\n");
    // The second newline is refused at its write; the cursor stays.
    fails(&format!("printf '5\\n\\n' > {c}/cursor"));
    assert_eq!(ok(&format!("cat {c}/cursor")), "4\n");
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/cursor', os.O_WRONLY); os.write(fd, b'7'); os.write(fd, b' 8')"
        )),
        "EINVAL"
    );
    assert_eq!(ok(&format!("cat {c}/cursor")), "4\n");
    // Past the end of the history: refused at the write that gets there.
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/cursor', os.O_WRONLY); os.write(fd, b'999')"
        )),
        "EINVAL"
    );
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{c}/cursor', os.O_WRONLY); os.write(fd, b'1'); os.write(fd, b'2')"
        )),
        "EINVAL"
    );
    fails(&format!("echo 999 > {c}/cursor"));
    assert_eq!(ok(&format!("cat {c}/cursor")), "4\n");
    ok(&format!("echo 7 > {c}/cursor"));
    assert_eq!(ok(&format!("cat {c}/cursor {c}/output")), "7\n");
    // An open closed without a write changes nothing.
    ok(&format!(": > {c}/cursor"));
    assert_eq!(ok(&format!("cat {c}/cursor")), "7\n");
    ok(&format!("echo 0 > {c}/cursor"));
    assert_eq!(
        ok(&format!("cat {c}/output")),
        "echo: child1 task: describe your work directory\n"
    );
}
both!(cursor_takes_one_value_per_open, cursor_values);

/// `stat` of `cursor` is cached like any file's, so podfs must drop the kernel's copy
/// whenever the value changes: the size `stat` reports is always the size `cat` reads.
fn cursor_size(gen: Gen) {
    let live = Live::new(gen);
    let c = live.c();
    let size = || {
        ok(&format!("stat -c %s {c}/cursor"))
            .trim()
            .parse::<usize>()
            .unwrap()
    };
    let read = || ok(&format!("cat {c}/cursor")).len();
    assert_eq!(size(), read());
    // A turn takes the history to 13 entries; reading output moves the cursor there: from
    // two bytes to three, without a write to `cursor`.
    run_turn(&live.m, "child1", "grow");
    ok(&format!("cat {c}/output > /dev/null"));
    assert_eq!(ok(&format!("cat {c}/cursor")), "13\n");
    assert_eq!(size(), 3);
    assert_eq!(size(), read());
    ok(&format!("echo 5 > {c}/cursor"));
    assert_eq!(size(), 2);
    assert_eq!(size(), read());
}
both!(stat_of_cursor_follows_its_value, cursor_size);

fn cursor_of_a_readded_child(gen: Gen) {
    let home = Home::fixture(gen, "live");
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child2", m.s());
    ok(&format!("echo 5 > {c}/cursor"));
    assert_eq!(ok(&format!("cat {c}/cursor")), "5\n");
    // The runtime removes child2 (moves it to reclaimed_children), then lists it again.
    let meta_rel = home.meta("parent");
    let original = home.json(&meta_rel);
    let mut removed = original.clone();
    let entry = removed["spawned_children"]
        .as_array_mut()
        .unwrap()
        .remove(1);
    let mut reclaimed = serde_json::Map::new();
    reclaimed.insert(home.key().into(), "child2".into());
    reclaimed.insert("scope_delegated".into(), entry["scope_delegated"].clone());
    removed["reclaimed_children"] = serde_json::json!([reclaimed]);
    home.write_json(&meta_rel, &removed);
    wait_for(Duration::from_secs(3), || {
        !ok(&format!("ls {}/parent", m.s())).contains("child2")
    });
    let mut readded = removed.clone();
    readded["spawned_children"]
        .as_array_mut()
        .unwrap()
        .push(entry);
    home.write_json(&meta_rel, &readded);
    wait_for(Duration::from_secs(3), || {
        ok(&format!("ls {}/parent", m.s())).contains("child2")
    });
    assert_eq!(ok(&format!("cat {c}/cursor")), "0\n");
}
both!(
    a_child_removed_and_listed_again_starts_at_cursor_0,
    cursor_of_a_readded_child
);

// ---------------------------------------------------------------------------------------
// output: consuming, atomic with its cursor; no silent empty reads.

fn concurrent_readers(gen: Gen) {
    let live = Live::new(gen);
    let c = live.c();
    let dir = tempdir();
    let d = dir.path().display();
    for round in 0..3 {
        ok(&format!("echo 0 > {c}/cursor"));
        let out = ok(&format!(
            "for i in $(seq 16); do cat {c}/output > {d}/out-$i & done; wait; cat {d}/out-*; rm -f {d}/out-*"
        ));
        assert_eq!(
            out, "echo: child1 task: describe your work directory\n",
            "round {round}: the text was received more or less than once"
        );
    }
}
both!(
    concurrent_output_readers_never_share_text,
    concurrent_readers
);

fn a_silent_child_fails_with_etimedout_not_an_empty_success() {
    let home = Home::fixture(&INSOMNIA, "live");
    let sock = home.path().join("run/silent/sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    home.add_child("parent", "silent", &sock);
    let m = Mount::with_args(
        &home,
        &["--io-timeout-ms", "1000", "--status-timeout-ms", "500"],
    );
    let c = format!("{}/parent/silent", m.s());
    assert_eq!(py_errno(&format!("open('{c}/output').read()")), "ETIMEDOUT");
    assert_eq!(py_errno(&format!("open('{c}/log').read()")), "ETIMEDOUT");
    fails(&format!("cat {c}/output"));
    fails(&format!("cat {c}/log"));
    assert_eq!(ok(&format!("cat {c}/status")), "unreachable\n");
    drop(listener);
}

// ---------------------------------------------------------------------------------------
// Tree-walking tools, on a child and on a parent.

/// Every file a tool copied equals what `cat` reads, except `output`, which the copy
/// consumed: it holds the text that was new before, and is empty afterwards.
fn check_copy(live: &Live, copy: &std::path::Path, pending: &str) {
    let c = live.c();
    for file in ["socket", "scope", "log", "input", "status", "callback"] {
        let copied =
            std::fs::read_to_string(copy.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(copied, ok(&format!("cat {c}/{file}")), "{file}");
    }
    // The cursor was copied before or after output moved it.
    let cursor = std::fs::read_to_string(copy.join("cursor")).unwrap();
    assert!(
        cursor == "0\n" || cursor == ok(&format!("cat {c}/cursor")),
        "{cursor}"
    );
    assert_eq!(
        std::fs::read_to_string(copy.join("output")).unwrap(),
        pending
    );
    assert_eq!(
        ok(&format!("cat {c}/output")),
        "",
        "the copy consumed output"
    );
}

const PENDING: &str = "echo: child1 task: describe your work directory\n";

fn cp_r(gen: Gen) {
    let live = Live::new(gen);
    let dst = tempdir();
    ok(&format!("cp -r {} {}/copy", live.c(), dst.path().display()));
    check_copy(&live, &dst.path().join("copy"), PENDING);
}
both!(cp_r_of_a_child, cp_r);

fn tar(gen: Gen) {
    let live = Live::new(gen);
    let dst = tempdir();
    let d = dst.path().display();
    // tar trusts stat sizes: a size that lies makes it fail or store the wrong bytes.
    ok(&format!(
        "tar -cf {d}/x.tar -C {}/parent child1",
        live.m.s()
    ));
    ok(&format!("mkdir {d}/out && tar -xf {d}/x.tar -C {d}/out"));
    check_copy(&live, &dst.path().join("out/child1"), PENDING);
}
both!(tar_of_a_child, tar);

fn rsync(gen: Gen) {
    let live = Live::new(gen);
    let dst = tempdir();
    ok(&format!(
        "rsync -a {}/ {}/copy/",
        live.c(),
        dst.path().display()
    ));
    check_copy(&live, &dst.path().join("copy"), PENDING);
}
both!(rsync_a_of_a_child, rsync);

fn grep_r(gen: Gen) {
    let live = Live::new(gen);
    let out = ok(&format!("grep -r 'task: describe' {}/parent", live.m.s()));
    // Found in log and in output (which grep consumed); no errors from any file.
    assert!(out.contains("/child1/log:"), "{out}");
    // input reads as empty: no match (1), not an error (2).
    let (code, out, _) = sh(&format!("grep -c x {}/parent/child1/input", live.m.s()));
    assert_eq!((code, out.as_str()), (1, "0\n"));
}
both!(grep_r_of_a_parent, grep_r);

fn find_exec_cat(gen: Gen) {
    let live = Live::new(gen);
    let out = ok(&format!(
        "find {}/parent -type f -exec cat {{}} +",
        live.m.s()
    ));
    assert!(out.contains("task: describe"), "{out}");
}
both!(find_exec_cat_of_a_parent, find_exec_cat);

fn os_walk(gen: Gen) {
    let live = Live::new(gen);
    let out = ok(&format!(
        "python3 -c \"
import os
n = 0
for root, dirs, files in os.walk('{}'):
    for f in files:
        data = open(os.path.join(root, f)).read()
        assert len(data) == os.stat(os.path.join(root, f)).st_size or f == 'output', f
        n += 1
print(n)
\"",
        live.m.s()
    ));
    // parent/child1's eight files and child1's own (empty) registry.
    assert_eq!(out, "8\n");
}
both!(python_os_walk_reads_every_file, os_walk);

// ---------------------------------------------------------------------------------------
// Quiet about what ordinary programs do.

fn ordinary_programs_fill_no_log() {
    let live = Live::new(&INSOMNIA);
    let c = live.c();
    ok(&format!(
        "python3 -c \"
import os, select
for f in ['socket', 'scope', 'cursor', 'status', 'log', 'output']:
    h = open('{c}/' + f); h.read(); h.close()
s = open('{c}/status')
select.select([s], [], [], 0.2)
p = select.poll(); p.register(s, select.POLLIN); p.poll(200)
os.isatty(s.fileno())
\""
    ));
    ok(&format!(
        "stat {c}/log; ls -l {c} > /dev/null; cp {c}/scope /dev/null"
    ));
    let log = live.m.log();
    for noise in ["Not Implemented", " WARN ", " ERROR "] {
        assert!(!log.contains(noise), "the log has {noise}:\n{log}");
    }
    assert_eq!(
        py_errno(&format!("import fcntl, termios; fcntl.ioctl(open('{c}/status'), termios.TIOCGWINSZ, b'\\0' * 8)")),
        "ENOTTY"
    );
}

// ---------------------------------------------------------------------------------------
// Removal.

fn rm_r_of_a_parent_removes_its_children_and_fails_on_the_parent() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::quick(&home, &[]);
    let status = fails(&format!("rm -r {}/parent", m.s()));
    assert_eq!(status, 1);
    assert_eq!(py_errno(&format!("os.rmdir('{}/parent')", m.s())), "EPERM");
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "");
    let meta = home.json(&home.meta("parent"));
    assert_eq!(
        home.names(&meta["reclaimed_children"]),
        ["child1", "child2", "child3"]
    );
}

fn rm_r_of_a_silent_child_is_ebusy_within_the_stop_timeout() {
    let home = Home::fixture(&INSOMNIA, "live");
    let sock = home.path().join("run/silent/sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    home.add_child("parent", "silent", &sock);
    let m = Mount::with_args(&home, &["--stop-timeout-ms", "2000"]);
    let started = std::time::Instant::now();
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/silent')", m.s())),
        "EBUSY"
    );
    let took = started.elapsed();
    eprintln!("EBUSY after {took:?} (stop timeout 2 s)");
    // The bound is the stop timeout plus a margin, generous for a loaded machine.
    assert!(took < Duration::from_millis(2000 + 1500), "{took:?}");
    assert!(ok(&format!("ls {}/parent", m.s())).contains("silent"));
    drop(listener);
}

/// `-o ro` is the look-only mount the documentation offers next to the `rm -r` warning:
/// everything reads, nothing changes.
fn a_read_only_mount_changes_nothing() {
    let home = Home::fixture(&INSOMNIA, "live");
    let before = home.read(&home.meta("parent"));
    let m = Mount::quick(&home, &["-o", "ro"]);
    let p = format!("{}/parent", m.s());
    assert_eq!(ok(&format!("cat {p}/child1/cursor")), "0\n");
    assert!(ok(&format!("cat {p}/child1/scope")).starts_with("write"));
    for op in [
        format!("os.rmdir('{p}/child1')"),
        format!("os.unlink('{p}/child1/scope')"),
        format!("open('{p}/child1/input', 'w')"),
        format!("open('{p}/child1/cursor', 'w')"),
    ] {
        assert_eq!(py_errno(&op), "EROFS", "{op}");
    }
    assert_ne!(fails(&format!("rm -r {p}")), 0);
    assert_eq!(ok(&format!("ls {p}")), "child1\nchild2\nchild3\n");
    assert_eq!(home.read(&home.meta("parent")), before);
}

/// What podfs does not support fails the way a Linux pseudo-filesystem does.
fn unsupported_operations_get_pseudo_filesystem_errnos() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    for (op, errno) in [
        (format!("os.getxattr('{c}/scope', 'user.x')"), "ENOTSUP"),
        (
            format!("os.setxattr('{c}/scope', 'user.x', b'1')"),
            "ENOTSUP",
        ),
        // fallocate(2) itself: glibc's posix_fallocate would fall back to writing zeros.
        (
            format!(
                "import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
                 fd = os.open('{c}/cursor', os.O_WRONLY); \
                 r = libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(10)); \
                 e = ctypes.get_errno(); os.close(fd); \
                 assert r == -1; raise OSError(e, 'fallocate')"
            ),
            "ENOTSUP",
        ),
        (format!("os.symlink('/tmp', '{c}/link')"), "EPERM"),
        (format!("os.link('{c}/scope', '{c}/hard')"), "EPERM"),
        (format!("os.rename('{c}/scope', '{c}/other')"), "EPERM"),
        (format!("os.readlink('{c}/scope')"), "EINVAL"),
        (format!("os.mkdir('{c}/sub')"), "EPERM"),
        (format!("open('{c}/new', 'w')"), "EACCES"),
        (format!("os.mkfifo('{c}/fifo')"), "EACCES"),
    ] {
        assert_eq!(py_errno(&op), errno, "{op}");
    }
    // SEEK_DATA gets the kernel's own answer: the whole file is data.
    assert_eq!(
        ok(&format!(
            "python3 -c \"import os; fd = os.open('{c}/scope', os.O_RDONLY); print(os.lseek(fd, 0, os.SEEK_DATA))\""
        )),
        "0\n"
    );
}
