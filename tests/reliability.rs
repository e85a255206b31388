//! Faults: podfs killed mid-reclaim, concurrent load with a runtime-style writer, hostile
//! children, bad input through the mount, and access control.
//!
//! Quick variants run in `cargo test`; the long ones (500 kills, 60 s of load) run with
//! `cargo test --release --test reliability -- --ignored`.
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    let crash = fuse.and(Need::dead_connections_abortable(
        "killing podfs in the middle of removals",
    ));
    Suite::new()
        .add(
            &fuse,
            tests![
                concurrent_load_with_a_runtime_writer,
                hostile_children_get_bounded_clear_errors,
                a_zombie_pid_is_no_proof_of_life,
                random_writes_to_cursor_are_all_or_nothing,
                corrupt_pods_json_fails_the_reclaim_and_changes_nothing,
                sockets_outside_the_runtime_dir_are_never_connected_to,
                files_podfs_creates_get_the_runtime_modes,
                random_writes_to_input_are_one_run_or_nothing,
            ],
        )
        .add(&crash, tests![crash_during_offline_reclaims])
        .add_long(
            "500 kills",
            &crash,
            tests![crash_during_offline_reclaims_500],
        )
        .add_long(
            "60 s of load",
            &fuse,
            tests![concurrent_load_with_a_runtime_writer_60s],
        )
        .add(
            &fuse.and(Need::root("acting as another user (nobody)")),
            tests![
                the_mount_is_private_by_default,
                allow_other_applies_honest_modes,
            ],
        )
        .run()
}

/// A small deterministic generator (no dependency, reproducible runs).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------
// Crash: SIGKILL at random points during offline reclaims.

const CHILDREN: usize = 6;

fn child(i: usize) -> String {
    format!("k{i}")
}

fn write_rule(home: &str, i: usize) -> Value {
    json!({"target": format!("{home}/work/k{i}"), "permission": "write", "recursive": true})
}

/// A restored parent (not running) with CHILDREN unreachable children; each child's write
/// rule has a deny layer in the parent, and child k0's layer is stacked twice, so a
/// doubled reclaim would show.
fn crash_home() -> Home {
    let home = Home::fixture(&INSOMNIA, "live");
    let h = home.s();
    let _ = std::fs::remove_dir_all(home.path().join("pods/child1"));
    let mut kids = Vec::new();
    let mut allocations = vec![];
    let mut denies = vec![write_rule(&h, 0)];
    for i in 0..CHILDREN {
        let rules = json!([write_rule(&h, i), {"target": format!("{h}/work"), "permission": "read", "recursive": true}]);
        kids.push(
            json!({"pod_name": child(i), "socket_path": format!("{h}/run/k{i}/sock"),
            "scope_delegated": rules, "callback_address": format!("{h}/run/parent/sock")}),
        );
        allocations.push(json!({"pod_name": child(i), "pid": 0, "socket": format!("{h}/run/k{i}/sock"),
            "scope_allow": rules, "scope_deny": [], "delegated_from": "parent", "segment_id": null}));
        denies.push(write_rule(&h, i));
    }
    allocations.insert(
        0,
        json!({"pod_name": "parent", "pid": 0, "socket": format!("{h}/run/parent/sock"),
        "scope_allow": [{"target": format!("{h}/work"), "permission": "write", "recursive": true}],
        "scope_deny": denies, "delegated_from": null, "segment_id": null}),
    );
    let meta = json!({"pod_name": "parent", "spawned_children": kids});
    std::fs::write(
        home.path().join("pods/parent/metadata.json"),
        serde_json::to_vec_pretty(&meta).unwrap(),
    )
    .unwrap();
    std::fs::write(
        home.path().join("run/pods.json"),
        serde_json::to_vec_pretty(&json!({"allocations": allocations})).unwrap(),
    )
    .unwrap();
    let _ = std::fs::remove_file(home.path().join("run/parent/spawned_pods.json"));
    home
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum State {
    Present,
    Pending,
    Reclaimed,
    /// The kill tore the allocation table's in-place write.
    Torn,
}

/// Check the invariants of the durable state; panics with the reason when one fails.
fn child_states(home: &Home) -> Vec<State> {
    let h = home.s();
    let meta: Value = serde_json::from_str(&home.read("pods/parent/metadata.json"))
        .expect("metadata.json must parse");
    let table: Value =
        serde_json::from_str(&home.read("run/pods.json")).expect("pods.json must parse");
    let journal: Option<Value> = std::fs::read(home.path().join("pods/parent/podfs-reclaim.json"))
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("journal must parse"));
    let listed = |name: &str| {
        meta["spawned_children"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["pod_name"] == name))
    };
    let reclaimed = |name: &str| {
        meta["reclaimed_children"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|c| c["pod_name"] == name).count())
    };
    let allocs = table["allocations"].as_array().unwrap();
    let parent = allocs
        .iter()
        .find(|a| a["pod_name"] == "parent")
        .expect("parent allocation");
    (0..CHILDREN)
        .map(|i| {
            let name = child(i);
            let has_alloc = allocs.iter().any(|a| a["pod_name"] == name.as_str());
            let layers = parent["scope_deny"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| **d == write_rule(&h, i))
                .count();
            let full_layers = if i == 0 { 2 } else { 1 };
            let n = reclaimed(&name);
            assert!(n <= 1, "{name} reclaimed {n} times");
            match (listed(&name), has_alloc, layers == full_layers, n) {
                (true, true, true, 0) => State::Present,
                (false, false, false, 1) if layers == full_layers - 1 => State::Reclaimed,
                (true, false, false, 0) if layers == full_layers - 1 => {
                    let j = journal
                        .as_ref()
                        .unwrap_or_else(|| panic!("{name}: half-reclaimed without a journal"));
                    assert_eq!(j["child"], name.as_str(), "journal names another child");
                    State::Pending
                }
                other => panic!(
                    "{name}: inconsistent state {other:?} (layers {layers})\n{meta}\n{table}"
                ),
            }
        })
        .collect()
}

fn crash_rounds(rounds: usize) -> BTreeMap<State, usize> {
    let mut rng = Lcg(0x5eed);
    let mut seen = BTreeMap::new();
    for round in 0..rounds {
        let home = crash_home();
        let mut m = Mount::quick(&home, &[]);
        let names: Vec<String> = (0..CHILDREN).map(child).collect();
        let script = format!(
            "for c in {}; do rm -r {}/parent/$c 2>/dev/null; done",
            names.join(" "),
            m.s()
        );
        let mut rm = Command::new("bash").arg("-c").arg(script).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(40_000)));
        m.kill();
        let _ = rm.kill();
        let _ = rm.wait();
        force_unmount(m.path());
        // A SIGKILL in the middle of the allocation table's in-place write can tear it
        // across a page (the kernel ends a write between pages for a fatal signal; the
        // runtime's own in-place save has the same exposure, and the table cannot be
        // renamed into place). Then podfs must refuse to touch it, and change nothing.
        if serde_json::from_str::<Value>(&home.read("run/pods.json")).is_err() {
            *seen.entry(State::Torn).or_default() += CHILDREN;
            drop(m);
            let before = (
                home.read("run/pods.json"),
                home.read("pods/parent/metadata.json"),
            );
            let m = Mount::quick(&home, &[]);
            for name in (0..CHILDREN).map(child) {
                // Refused (EIO), unless the kill came after that child was reclaimed.
                let errno = py_errno(&format!("os.rmdir('{}/parent/{name}')", m.s()));
                assert!(
                    errno == "EIO" || errno == "ENOENT",
                    "round {round}: a torn table must be refused, got {errno}"
                );
            }
            let after = (
                home.read("run/pods.json"),
                home.read("pods/parent/metadata.json"),
            );
            assert_eq!(before, after, "round {round}: a torn table was edited");
            continue;
        }
        for s in child_states(&home) {
            *seen.entry(s).or_default() += 1;
        }
        // Remount and repeat: everything ends fully reclaimed, exactly once.
        drop(m);
        let m = Mount::quick(&home, &[]);
        for name in &names {
            ok(&format!("rm -rf {}/parent/{name}", m.s()));
        }
        let end = child_states(&home);
        assert!(
            end.iter().all(|s| *s == State::Reclaimed),
            "round {round}: {end:?}"
        );
        // A journal may outlive a crash after the metadata step, but then it names a
        // completed reclaim (and the next rmdir on this parent removes it).
        if let Ok(bytes) = std::fs::read(home.path().join("pods/parent/podfs-reclaim.json")) {
            let j: Value = serde_json::from_slice(&bytes).unwrap();
            let named = j["child"].as_str().unwrap();
            let i: usize = named.trim_start_matches('k').parse().unwrap();
            assert_eq!(
                end[i],
                State::Reclaimed,
                "journal names {named}, which is not reclaimed"
            );
        }
        let table = home.json("run/pods.json");
        assert_eq!(table["allocations"].as_array().unwrap().len(), 1);
        assert_eq!(
            table["allocations"][0]["scope_deny"],
            json!([write_rule(&home.s(), 0)])
        );
    }
    eprintln!("crash: {rounds} kills, child states right after the kills: {seen:?}");
    seen
}

fn crash_during_offline_reclaims() {
    crash_rounds(12);
}

fn crash_during_offline_reclaims_500() {
    let seen = crash_rounds(500);
    assert!(
        seen.get(&State::Pending).copied().unwrap_or(0) > 0,
        "no kill landed mid-reclaim: {seen:?}"
    );
    // A torn table needs a kill inside one write system call: rare, never common.
    let torn = seen.get(&State::Torn).copied().unwrap_or(0) / CHILDREN;
    assert!(torn <= 5, "{torn} of 500 kills tore the table: {seen:?}");
}

// ---------------------------------------------------------------------------------------
// Concurrency: 8 processes of mixed operations while a runtime-style writer rewrites
// another parent's metadata.json in place.

const WORKER: &str = r#"
import os, random, sys, time
mnt, seed, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rnd = random.Random(seed)
ops = errors = 0
end = time.time() + secs
while time.time() < end:
    parent = rnd.choice(["parent", "busy"])
    try:
        kids = os.listdir(f"{mnt}/{parent}")
        ops += 1
        if not kids:
            continue
        c = f"{mnt}/{parent}/{rnd.choice(kids)}"
        op = rnd.randrange(6)
        if op == 0:
            open(f"{c}/scope").read()
        elif op == 1:
            with open(f"{c}/cursor", "w") as f:
                f.write(str(rnd.randrange(100)))
        elif op == 2:
            open(f"{c}/output").read()
        elif op == 3:
            open(f"{c}/status").read()
        elif op == 4 and parent == "parent" and rnd.random() < 0.05:
            os.rmdir(c)
        else:
            os.stat(f"{c}/socket")
        ops += 1
    except OSError:
        errors += 1
print(ops, errors)
"#;

fn load(seconds: f64) -> (usize, usize) {
    let home = Home::fixture(&INSOMNIA, "live");
    let h = home.s();
    // An offline parent with many children for rm -r, and a "busy" parent whose file a
    // runtime-like writer keeps rewriting in place, adding and removing a child.
    let mut kids = Vec::new();
    for i in 0..40 {
        kids.push(json!({"pod_name": format!("w{i}"), "socket_path": format!("{h}/run/w{i}/sock"),
            "scope_delegated": [{"target": format!("{h}/work/w{i}"), "permission": "write", "recursive": true}],
            "callback_address": ""}));
    }
    std::fs::write(
        home.path().join("pods/parent/metadata.json"),
        serde_json::to_vec_pretty(&json!({"pod_name": "parent", "spawned_children": kids}))
            .unwrap(),
    )
    .unwrap();
    std::fs::create_dir_all(home.path().join("pods/busy")).unwrap();
    let busy_a =
        json!({"pod_name": "busy", "spawned_children": [kids[0].clone(), kids[1].clone()]});
    let busy_b = json!({"pod_name": "busy", "spawned_children": [kids[1].clone()], "active": {"session_id": "x"}});
    let busy_path = home.path().join("pods/busy/metadata.json");
    std::fs::write(&busy_path, serde_json::to_vec_pretty(&busy_a).unwrap()).unwrap();
    let m = Mount::quick(&home, &[]);
    let stop = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, path) = (stop.clone(), busy_path.clone());
        let versions = [
            serde_json::to_vec_pretty(&busy_a).unwrap(),
            serde_json::to_vec_pretty(&busy_b).unwrap(),
        ];
        std::thread::spawn(move || {
            let mut n = 0usize;
            while stop.load(Ordering::SeqCst) == 0 {
                // Truncating write in place, in two pieces: readers can see it torn.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .unwrap();
                let v = &versions[n % 2];
                f.write_all(&v[..v.len() / 2]).unwrap();
                std::thread::sleep(Duration::from_micros(200));
                f.write_all(&v[v.len() / 2..]).unwrap();
                drop(f);
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };
    let workers: Vec<_> = (0..8)
        .map(|i| {
            Command::new("python3")
                .args(["-c", WORKER, &m.s(), &i.to_string(), &seconds.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = 0;
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "a worker failed");
        let text = String::from_utf8_lossy(&out.stdout);
        total += text
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap();
    }
    stop.store(1, Ordering::SeqCst);
    let rewrites = writer.join().unwrap();
    // Still responsive, nothing panicked, and the invariants hold.
    assert!(ok(&format!("ls {}", m.s())).contains("parent"));
    assert!(!m.log().contains("panicked"), "{}", m.log());
    let meta = home.json("pods/parent/metadata.json");
    let listed: Vec<&str> = meta["spawned_children"].as_array().map_or(vec![], |a| {
        a.iter().map(|c| c["pod_name"].as_str().unwrap()).collect()
    });
    let reclaimed: Vec<&str> = meta["reclaimed_children"].as_array().map_or(vec![], |a| {
        a.iter().map(|c| c["pod_name"].as_str().unwrap()).collect()
    });
    for i in 0..40 {
        let name = format!("w{i}");
        let (l, r) = (
            listed.contains(&name.as_str()),
            reclaimed.iter().filter(|n| **n == name).count(),
        );
        assert!(
            (l && r == 0) || (!l && r == 1),
            "{name}: listed {l}, reclaimed {r} times"
        );
    }
    let listing = ok(&format!("ls {}/parent", m.s()));
    assert_eq!(listing.lines().count(), listed.len());
    eprintln!("load: {seconds} s, 8 processes, {total} operations, {rewrites} in-place rewrites, {} children reclaimed", reclaimed.len());
    (total, reclaimed.len())
}

fn concurrent_load_with_a_runtime_writer() {
    let (ops, _) = load(4.0);
    assert!(ops > 100, "only {ops} operations ran");
}

fn concurrent_load_with_a_runtime_writer_60s() {
    load(60.0);
}

// ---------------------------------------------------------------------------------------
// Hostile children.

/// Serve `reply` to every connection, then hold it open for a while.
fn serve(home: &Home, name: &str, reply: Vec<u8>) -> std::path::PathBuf {
    let sock = home.path().join("run").join(name).join("sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let reply = reply.clone();
            std::thread::spawn(move || {
                let _ = s.write_all(&reply);
                std::thread::sleep(Duration::from_secs(2));
            });
        }
    });
    home.add_child("parent", name, &sock);
    sock
}

fn time_it<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn hostile_children_get_bounded_clear_errors() {
    let home = Home::fixture(&INSOMNIA, "live");
    // 50 MB snapshot: 200,000 entries, the assistant text in the last one.
    let mut entries = Vec::with_capacity(200_001);
    let filler = "x".repeat(220);
    for _ in 0..200_000 {
        entries.push(json!({"kind": "llm_usage", "ts": 1, "note": filler}));
    }
    entries.push(json!({"kind": "assistant_item", "ts": 2, "item": {"kind": "message", "role": "assistant", "content": [{"kind": "text", "text": "after fifty megabytes"}]}}));
    let mut big = serde_json::to_vec(
        &json!({"event": "snapshot", "data": {"entries": entries, "status": "idle"}}),
    )
    .unwrap();
    big.push(b'\n');
    assert!(big.len() > 50_000_000);
    serve(&home, "huge", big);
    serve(&home, "garbage", b"this is not json\n".to_vec());
    serve(
        &home,
        "torn",
        b"{\"event\":\"snapshot\",\"data\":{\"entr".to_vec(),
    );
    // Bounds generous enough for a debug build on a loaded machine: the point is that every
    // answer is bounded and clear, not how fast a 50 MB parse is (see docs/benchmarks.md).
    let m = Mount::with_args(
        &home,
        &["--status-timeout-ms", "10000", "--io-timeout-ms", "15000"],
    );
    let p = format!("{}/parent", m.s());

    let (status, took) = time_it(|| ok(&format!("cat {p}/huge/status")));
    eprintln!("50 MB snapshot: status in {took:?}");
    assert_eq!(status, "idle\n");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        ok(&format!("cat {p}/huge/output")),
        "after fifty megabytes\n"
    );
    assert_eq!(ok(&format!("cat {p}/huge/cursor")), "200001\n");

    for name in ["garbage", "torn"] {
        let (status, took) = time_it(|| ok(&format!("cat {p}/{name}/status")));
        assert_eq!(status, "unreachable\n", "{name}");
        assert!(took < Duration::from_secs(10), "{name}: {took:?}");
        assert_eq!(ok(&format!("cat {p}/{name}/output")), "");
        let errno = py_errno(&format!(
            "fd = os.open('{p}/{name}/input', os.O_WRONLY); os.write(fd, b'x')"
        ));
        assert_eq!(errno, "EHOSTDOWN", "{name}");
    }
    assert!(
        m.log().contains("protocol error") || m.log().contains("does not parse"),
        "no clear log line"
    );
    // Nothing else was held up.
    assert_eq!(
        ok(&format!("ls {p}")),
        "child1\nchild2\nchild3\ngarbage\nhuge\ntorn\n"
    );
}

fn a_zombie_pid_is_no_proof_of_life() {
    let home = Home::fixture(&INSOMNIA, "live");
    // A process that has exited but was never reaped: kill(pid, 0) still succeeds.
    let zombie = Command::new("true").spawn().unwrap();
    let pid = zombie.id();
    std::thread::sleep(Duration::from_millis(200));
    assert!(std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .contains(") Z "));
    let path = home.path().join("run/pods.json");
    let mut t: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    t["allocations"][1]["pid"] = pid.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
    // child1's socket file exists but nobody listens (the runtime after SIGKILL).
    let sock = home.path().join("run/child1/sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(UnixListener::bind(&sock).unwrap());
    let m = Mount::quick(&home, &[]);
    assert_eq!(
        ok(&format!("cat {}/parent/child1/status", m.s())),
        "unreachable\n"
    );
    ok(&format!("rm -r {}/parent/child1", m.s()));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child2\nchild3\n");
    drop(zombie);
}

// ---------------------------------------------------------------------------------------
// Bad input through the mount.

fn random_writes_to_cursor_are_all_or_nothing() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::quick(&home, &[]);
    let cursor = m.p("parent/child2/cursor");
    let mut rng = Lcg(7);
    let mut current = 0u64;
    let (mut accepted, mut rejected) = (0, 0);
    for i in 0..400 {
        let len = rng.below(24) as usize;
        let alphabet: &[u8] = if i % 2 == 0 {
            b"0123456789\n"
        } else {
            b"0123456789\n -+xa\x00\xff"
        };
        let data: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
            .collect();
        let expect = cursor_grammar(&data);
        let result = write_and_close(&cursor, &data);
        let now: u64 = std::fs::read_to_string(&cursor)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        match expect {
            Some(v) => {
                assert!(result.is_ok(), "{data:?} should be accepted");
                current = v.unwrap_or(current);
                accepted += 1;
            }
            None => {
                assert!(result.is_err(), "{data:?} should be refused");
                rejected += 1;
            }
        }
        assert_eq!(now, current, "after {data:?}");
    }
    eprintln!("cursor fuzz through the mount: {accepted} accepted, {rejected} refused, none changed anything");
}

/// Open for writing, write `data`, and close, reporting an error from any step; `close()`
/// matters here (an empty cursor write and an input message are judged there), and
/// `File`'s drop would swallow its error.
fn write_and_close(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(data)?;
    let fd = f.into_raw_fd();
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn corrupt_pods_json_fails_the_reclaim_and_changes_nothing() {
    let home = Home::fixture(&INSOMNIA, "live");
    std::fs::write(home.path().join("run/pods.json"), b"{\"allocations\": [").unwrap();
    let before = home.read("pods/parent/metadata.json");
    let m = Mount::quick(&home, &[]);
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/child1')", m.s())),
        "EIO"
    );
    assert_eq!(home.read("pods/parent/metadata.json"), before);
    assert_eq!(home.read("run/pods.json"), "{\"allocations\": [");
    assert_eq!(
        ok(&format!("ls {}/parent", m.s())),
        "child1\nchild2\nchild3\n"
    );
    assert!(m.log().contains("corrupt"), "{}", m.log());
}

// ---------------------------------------------------------------------------------------
// Security.

fn as_nobody(cmd: &str) -> (i32, String, String) {
    sh(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups -- bash -c {}",
        shell_quote(cmd)
    ))
}

/// The errno name of a python operation run as user nobody.
fn as_nobody_errno(code: &str) -> String {
    let script = format!(
        "import errno, os\ntry:\n    {code}\n    print('OK')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
    );
    let (status, out, err) = as_nobody(&format!("python3 -c {}", shell_quote(&script)));
    assert_eq!(status, 0, "{err}");
    out.trim().to_string()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn open_to_all(m: &Mount) {
    use std::os::unix::fs::PermissionsExt;
    // The mount point's own directory must be reachable, or the test proves nothing. It
    // is the mount's private directory: nothing outside the test's own directories changes.
    let parent = m.path().parent().unwrap();
    assert_eq!(parent, m.base.path());
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn the_mount_is_private_by_default() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::quick(&home, &[]);
    open_to_all(&m);
    assert_eq!(
        as_nobody_errno(&format!("os.listdir('{}')", m.s())),
        "EACCES"
    );
    // Control: the same user can list an ordinary directory next to it.
    let (code, _, err) = as_nobody(&format!("ls {}", m.path().parent().unwrap().display()));
    assert_eq!(code, 0, "{err}");
}

fn allow_other_applies_honest_modes() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::quick(&home, &["--allow-other"]);
    open_to_all(&m);
    let c = format!("{}/parent/child2", m.s());
    let (code, out, err) = as_nobody(&format!("ls {}/parent && cat {c}/scope {c}/cursor", m.s()));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("child1\nchild2\nchild3\n"), "{out}");
    for op in [
        format!("open('{c}/cursor', 'w')"),
        format!("open('{c}/input', 'w')"),
        format!("os.rmdir('{c}')"),
    ] {
        assert_eq!(as_nobody_errno(&op), "EACCES", "{op}");
    }
    assert_eq!(ok(&format!("cat {c}/cursor")), "0\n");
    assert!(
        home.json("pods/parent/metadata.json")["spawned_children"]
            .as_array()
            .unwrap()
            .len()
            == 3
    );
}

fn sockets_outside_the_runtime_dir_are_never_connected_to() {
    let home = Home::fixture(&INSOMNIA, "live");
    let elsewhere = tempdir();
    let sock = elsewhere.path().join("sock");
    let listener = UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    home.add_child("parent", "stray", &sock);
    let before = home.read(&home.meta("parent"));
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/stray", m.s());
    // podfs may not reach it: every live file says so (EACCES), and `rm -r` neither stops
    // nor reclaims it (a socket podfs may not look at proves nothing).
    for f in ["status", "output", "log"] {
        assert_eq!(
            py_errno(&format!("open('{c}/{f}').read()")),
            "EACCES",
            "{f}"
        );
    }
    assert_eq!(
        py_errno(&format!("os.open('{c}/input', os.O_WRONLY)")),
        "EACCES"
    );
    assert_eq!(py_errno(&format!("os.rmdir('{c}')")), "EACCES");
    assert_eq!(
        home.read(&home.meta("parent")),
        before,
        "reclaimed on a guess"
    );
    let mut accepted = 0;
    while listener.accept().is_ok() {
        accepted += 1;
    }
    assert_eq!(
        accepted, 0,
        "podfs connected to a socket outside the runtime dir"
    );
    assert!(
        m.log().contains("not a runtime dir of this home"),
        "{}",
        m.log()
    );
}

fn files_podfs_creates_get_the_runtime_modes() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::fixture(&INSOMNIA, "live");
    // A runtime dir with no allocation table: podfs makes one the way the runtime does.
    std::fs::remove_file(home.path().join("run/pods.json")).unwrap();
    let m = Mount::quick(&home, &[]);
    ok(&format!("rm -r {}/parent/child1", m.s()));
    let mode = |rel: &str| {
        std::fs::metadata(home.path().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("run/pods.json"), 0o600);
    assert_eq!(home.json("run/pods.json"), json!({"allocations": []}));
    // metadata.json keeps the mode it had.
    assert_eq!(mode("pods/parent/metadata.json"), 0o644);
    // No runtime dir at all holds no allocation: podfs reclaims without making one.
    std::fs::remove_dir_all(home.path().join("run")).unwrap();
    ok(&format!("rm -r {}/parent/child2", m.s()));
    assert!(!home.path().join("run").exists(), "a runtime dir was made");
}

/// History length of a demo pod, read straight from its socket.
fn history_len(sock: &Path) -> usize {
    use std::io::BufRead;
    let s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    v["data"]["entries"].as_array().unwrap().len()
}

fn random_writes_to_input_are_one_run_or_nothing() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let _child = PodProcess::start(&home, "child1", &["--turn-ms", "1"]);
    let m = Mount::quick(&home, &[]);
    let input = m.p("parent/child1/input");
    let sock = home.path().join("run/child1/sock");
    let mut rng = Lcg(11);
    let (mut runs, mut refused) = (0, 0);
    for i in 0..120 {
        let len = rng.below(12) as usize;
        let data: Vec<u8> = if i % 3 == 0 {
            (0..len).map(|_| rng.below(256) as u8).collect()
        } else {
            (0..len)
                .map(|_| b"ab \n\xc3\xa9"[rng.below(6) as usize])
                .collect()
        };
        let text = std::str::from_utf8(&data).ok();
        let valid = text.is_some_and(|t| !t.strip_suffix('\n').unwrap_or(t).is_empty());
        let before = history_len(&sock);
        let log = m.p("parent/child1/log");
        let log_before = std::fs::read(&log).unwrap();
        let result = write_and_close(&input, &data);
        if data.is_empty() {
            // No write reached podfs at all: nothing to send, nothing sent.
            assert!(result.is_ok());
        } else if valid {
            assert!(result.is_ok(), "{data:?}: {result:?}");
            runs += 1;
            // The run lands in the history (one turn: 6 entries, plus segment_start once).
            wait_for(Duration::from_secs(5), || history_len(&sock) > before);
            // ... and podfs has followed it: its reply is in `log` (the child's history
            // can be ahead of podfs's watch, which would still say idle from before).
            wait_for(Duration::from_secs(5), || {
                std::fs::read(&log).unwrap() != log_before
            });
            settle(&m, "child1");
        } else {
            let err = result.expect_err("invalid input must be refused");
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{data:?}");
            refused += 1;
            assert_eq!(history_len(&sock), before, "a refused write started a run");
        }
    }
    eprintln!("input fuzz through the mount: {runs} runs delivered, {refused} writes refused with nothing sent");
    assert!(runs > 10 && refused > 10, "{runs} runs, {refused} refused");
}
