//! Watching instead of probing, seen through a real mount (contract §5): one Snapshot per
//! watched child, `poll` that wakes, registry changes pushed into the kernel's caches,
//! watches that end and give their memory back, an inode table that shrinks, and a
//! bounded number of threads however many children are watched.
//!
//! The numbers come from the mount's own report (`kill -USR1`) and from the reference
//! pods' `--stats` file, which counts the Snapshots each pod served.
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &fuse,
            both_tests![
                one_snapshot_per_watch,
                poll_wakes_on_a_status_change,
                select_wakes_on_a_status_change,
                epoll_wakes_on_new_log_text,
                poll_wakes_when_output_has_text,
                removed_children_vanish_at_once,
                stat_fallback_without_inotify,
            ],
        )
        .add(
            &fuse,
            tests![
                a_watch_ends_after_the_idle_period_and_a_new_look_starts_another,
                the_text_budget_drops_the_least_recently_used_watches,
                three_hundred_watched_children_cost_no_thread_each,
                a_child_larger_than_the_whole_budget_fails_alone_and_never_loops,
            ],
        )
        // Only root can make the kernel drop its caches, and so forget what it looked up.
        .add(
            &fuse.and(Need::root("dropping the kernel's caches")),
            tests![lookups_of_missing_names_leave_nothing_behind_and_forget_shrinks_the_table],
        )
        .run()
}

/// Reference pods for `names`, all served by one process that keeps `stats` up to date.
/// Readiness is read from the stats file (written once every socket listens), not by
/// connecting: every connection costs a pod one Snapshot, and those are what is counted.
fn pods_with_stats(home: &Home, names: &[&str], stats: &Path, extra: &[&str]) -> PodProcess {
    let mut cmd = PodProcess::command(home);
    cmd.arg("--stats").arg(stats).args(extra);
    for n in names {
        cmd.args(["--name", n]);
    }
    let pods = PodProcess(cmd.spawn().unwrap());
    wait_for(Duration::from_secs(20), || {
        snapshots(stats).len() == names.len()
    });
    assert!(snapshots(stats).values().all(|n| *n == 0));
    pods
}

/// Snapshots each pod has served so far.
fn snapshots(stats: &Path) -> BTreeMap<String, u64> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stats).unwrap_or_default()).unwrap_or_default();
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// One Snapshot per watch.

fn a_watched_child_serialises_its_history_once(gen: Gen) {
    let names = ["child1", "child2", "child3"];
    let home = Home::demo(gen, &names);
    let stats = home.path().join("stats.json");
    let _pods = pods_with_stats(&home, &names, &stats, &["--history-bytes", "20000"]);
    let m = Mount::quick(&home, &[]);
    let p = format!("{}/parent", m.s());
    for _ in 0..10 {
        ok(&format!(
            "cat {p}/*/status > /dev/null; stat {p}/*/log {p}/*/output > /dev/null; \
             cat {p}/*/log {p}/*/output > /dev/null"
        ));
    }
    // A turn, then more reads: the turn's events keep the watch current.
    run_turn(&m, "child1", "one more line");
    assert_eq!(
        ok(&format!("cat {p}/child1/output")),
        "echo: one more line\n"
    );
    for _ in 0..10 {
        ok(&format!("cat {p}/*/status {p}/*/log > /dev/null"));
    }
    let served = snapshots(&stats);
    for n in names {
        assert_eq!(served.get(n), Some(&1), "{n}: {served:?}\n{}", m.log());
    }
    let r = m.report();
    assert_eq!(r["snapshots"], 3, "{r:?}");
    assert_eq!(r["watches"], 3, "{r:?}");
}
both!(
    one_snapshot_per_watch,
    a_watched_child_serialises_its_history_once
);

// ---------------------------------------------------------------------------------------
// poll, select and epoll wake when the content changes.

const WAITER: &str = r#"
import os, select, sys
path, api, inp = sys.argv[1], sys.argv[2], sys.argv[3]
f = os.open(path, os.O_RDONLY)
while os.read(f, 65536):
    pass
def ready(secs):
    if api == 'poll':
        p = select.poll(); p.register(f, select.POLLIN)
        return bool(p.poll(int(secs * 1000)))
    if api == 'epoll':
        e = select.epoll(); e.register(f, select.EPOLLIN)
        r = e.poll(secs); e.close(); return bool(r)
    return bool(select.select([f], [], [], secs)[0])
print('before', ready(0.3))
w = os.open(inp, os.O_WRONLY); os.write(w, b'wake up\n'); os.close(w)
print('after', ready(20))
"#;

fn waiter(gen: Gen, file: &str, api: &str) {
    let home = Home::demo(gen, &["child1"]);
    let _pods = demo_pods(&home, &["child1"]);
    let m = Mount::quick(&home, &[]);
    settle(&m, "child1");
    let c = format!("{}/parent/child1", m.s());
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            WAITER,
            &format!("{c}/{file}"),
            api,
            &format!("{c}/input"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "before False\nafter True\n",
        "{file} with {api}"
    );
}

fn poll_status(gen: Gen) {
    waiter(gen, "status", "poll");
}
fn select_status(gen: Gen) {
    waiter(gen, "status", "select");
}
fn epoll_log(gen: Gen) {
    waiter(gen, "log", "epoll");
}
fn poll_output(gen: Gen) {
    waiter(gen, "output", "poll");
}
both!(poll_wakes_on_a_status_change, poll_status);
both!(select_wakes_on_a_status_change, select_status);
both!(epoll_wakes_on_new_log_text, epoll_log);
both!(poll_wakes_when_output_has_text, poll_output);

// ---------------------------------------------------------------------------------------
// Registry changes pushed into the kernel's caches.

/// Remove `child` from the parent's metadata.json the runtime's way (rewritten in place)
/// or by rename.
fn runtime_removes(home: &Home, child: &str, by_rename: bool) {
    let rel = home.meta("parent");
    let mut v = home.json(&rel);
    let key = home.key();
    v["spawned_children"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c[key] != child);
    let bytes = serde_json::to_vec_pretty(&v).unwrap();
    if by_rename {
        let tmp = home.path().join(format!("{rel}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(tmp, home.path().join(rel)).unwrap();
    } else {
        std::fs::write(home.path().join(rel), bytes).unwrap();
    }
}

/// The kernel caches a child's entry for the entry TTL (1 s): after a runtime change,
/// a `stat` within that second only fails if podfs pushed the invalidation. Attempts that
/// take longer than the TTL prove nothing and are not counted; at least one must count.
fn removed_children_vanish_from_the_kernel_cache(gen: Gen) {
    let home = Home::fixture(gen, "live");
    let m = Mount::quick(&home, &[]);
    let p = format!("{}/parent", m.s());
    let mut conclusive = 0;
    for (child, by_rename) in [("child1", false), ("child2", true), ("child3", false)] {
        let shown = ok(&format!("ls {p}"));
        assert!(shown.contains(child), "{shown}");
        let cached = Instant::now();
        ok(&format!("stat {p}/{child} > /dev/null"));
        runtime_removes(&home, child, by_rename);
        let marker = format!("\"{child}\")");
        wait_for(Duration::from_secs(10), || {
            m.log()
                .lines()
                .any(|l| l.contains("kernel cache invalidated") && l.contains(&marker))
        });
        let gone = py_errno(&format!("os.stat('{p}/{child}')"));
        let listed = ok(&format!("ls {p}"));
        if cached.elapsed() < Duration::from_millis(800) {
            conclusive += 1;
            assert_eq!(
                gone, "ENOENT",
                "{child} still resolves from the kernel cache"
            );
            assert!(!listed.contains(child), "{child} still listed: {listed}");
        } else {
            eprintln!(
                "{child}: the change took {:?} to arrive; not counted",
                cached.elapsed()
            );
        }
    }
    assert!(conclusive > 0, "no attempt finished within the entry TTL");
}
both!(
    removed_children_vanish_at_once,
    removed_children_vanish_from_the_kernel_cache
);

/// Without inotify, a `stat` of metadata.json at most every 100 ms stands in for it:
/// additions and removals still show, within the entry TTL.
fn changes_show_without_inotify(gen: Gen) {
    let home = Home::fixture(gen, "live");
    let m = Mount::quick(&home, &["--no-inotify"]);
    let p = format!("{}/parent", m.s());
    assert!(ok(&format!("ls {p}")).contains("child2"));
    runtime_removes(&home, "child2", false);
    home.add_child("parent", "late", &home.path().join("run/late/sock"));
    wait_for(Duration::from_secs(10), || {
        let listed = sh(&format!("ls {p}")).1;
        listed.contains("late") && !listed.contains("child2")
    });
    assert_eq!(ok(&format!("cat {p}/late/cursor")), "0\n");
}
both!(stat_fallback_without_inotify, changes_show_without_inotify);

// ---------------------------------------------------------------------------------------
// Memory: the inode table, watches that end, the text budget.

fn lookups_of_missing_names_leave_nothing_behind_and_forget_shrinks_the_table() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::quick(&home, &[]);
    let base = m.report();
    ok(&format!(
        "python3 -c \"
import os
for i in range(20000):
    for d in ['{0}', '{0}/parent', '{0}/parent/child1']:
        try:
            os.stat(d + '/missing' + str(i))
        except FileNotFoundError:
            pass
        else:
            raise SystemExit('missing' + str(i) + ' exists')
\"",
        m.s()
    ));
    let after = m.report();
    assert!(
        after["inodes"] <= base["inodes"] + 3,
        "missing names grew the table: {base:?} -> {after:?}"
    );
    // A walk makes the kernel hold every node; once it lets go, podfs does too.
    ok(&format!("find {} > /dev/null", m.s()));
    // (One entry per pod and per child directory; a child's files share it.)
    let walked = m.report()["inodes"];
    assert!(
        walked >= base["inodes"] + 4,
        "the walk should be remembered: {base:?} -> {walked}"
    );
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    wait_for(Duration::from_secs(10), || {
        m.report()["inodes"] <= base["inodes"] + 1
    });
    assert_eq!(m.report()["handles"], 0);
    // Everything still resolves afterwards.
    assert_eq!(ok(&format!("cat {}/parent/child1/cursor", m.s())), "0\n");
}

fn a_watch_ends_after_the_idle_period_and_a_new_look_starts_another() {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let stats = home.path().join("stats.json");
    let _pods = pods_with_stats(&home, &["child1"], &stats, &[]);
    let m = Mount::quick(&home, &["--watch-idle-secs", "1"]);
    let c = format!("{}/parent/child1", m.s());
    assert_eq!(ok(&format!("cat {c}/status")), "idle\n");
    assert_eq!(m.report()["watches"], 1);
    wait_for(Duration::from_secs(15), || m.report()["watches"] == 0);
    assert_eq!(m.report()["text_bytes"], 0);
    assert_eq!(snapshots(&stats)["child1"], 1);
    // Looking again starts a new watch, with one fresh Snapshot.
    assert_eq!(ok(&format!("cat {c}/status")), "idle\n");
    wait_for(Duration::from_secs(10), || snapshots(&stats)["child1"] == 2);
    assert_eq!(m.report()["watches"], 1);
}

fn the_text_budget_drops_the_least_recently_used_watches() {
    let names = ["child1", "child2", "child3", "child4", "child5"];
    let home = Home::demo(&INSOMNIA, &names);
    let stats = home.path().join("stats.json");
    let _pods = pods_with_stats(&home, &names, &stats, &["--history-bytes", "900000"]);
    let m = Mount::quick(&home, &["--memory-budget-mib", "4"]);
    let p = format!("{}/parent", m.s());
    for n in names {
        assert_eq!(ok(&format!("cat {p}/{n}/status")), "idle\n");
    }
    // Five histories of about 900 kB do not fit 4 MiB: the oldest go first.
    wait_for(Duration::from_secs(15), || {
        let r = m.report();
        r["text_bytes"] <= 4 << 20 && r["evicted_for_memory"] >= 1
    });
    assert!(m.report()["watches"] < 5);
    // A dropped watch is only a cache: reading the child again works in full.
    let log = ok(&format!("cat {p}/child1/log"));
    assert!(log.len() >= 900_000, "{}", log.len());
    let output = ok(&format!("cat {p}/child1/output"));
    assert_eq!(output, log);
}

// ---------------------------------------------------------------------------------------
// Threads: a handful, however many children are watched.

fn three_hundred_watched_children_cost_no_thread_each() {
    let names: Vec<String> = (0..300).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let home = Home::demo(&INSOMNIA, &refs);
    let stats = home.path().join("stats.json");
    let _pods = pods_with_stats(&home, &refs, &stats, &[]);
    let m = Mount::quick(&home, &[]);
    let statuses = ok(&format!("cat {}/parent/*/status", m.s()));
    assert_eq!(statuses, "idle\n".repeat(300));
    let r = m.report();
    assert_eq!(r["watches"], 300, "{r:?}");
    // Two FUSE threads, four workers at most, the watch reactor, inotify, the kernel
    // notifier, the main thread: well under twenty.
    assert!(r["threads"] < 20, "{r:?}");
    let served = snapshots(&stats);
    assert!(served.values().all(|n| *n == 1), "{served:?}");
}

fn a_child_larger_than_the_whole_budget_fails_alone_and_never_loops() {
    let home = Home::demo(&INSOMNIA, &["huge", "small"]);
    let stats = home.path().join("stats.json");
    let _huge = pods_with_stats(&home, &["huge"], &stats, &["--history-bytes", "1500000"]);
    let small_stats = home.path().join("small-stats.json");
    let _small = pods_with_stats(&home, &["small"], &small_stats, &[]);
    let m = Mount::quick(&home, &["--memory-budget-mib", "1"]);
    let p = format!("{}/parent", m.s());
    // What does not fit the budget answers EFBIG on its own files...
    for file in ["status", "log", "output"] {
        assert_eq!(
            py_errno(&format!("open('{p}/huge/{file}').read()")),
            "EFBIG",
            "{file}"
        );
    }
    // ...and nothing of its sibling's.
    assert_eq!(ok(&format!("cat {p}/small/status")), "idle\n");
    ok(&format!("cat {p}/small/log"));
    assert!(m.log().contains("exceeds the memory budget"), "{}", m.log());
    // Each look asked for the Snapshot at most once more: no loop of reconnects.
    let served = snapshots(&stats)["huge"];
    assert!((1..=2).contains(&served), "{served} Snapshots");
}
