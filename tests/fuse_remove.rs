//! `rm -r <parent>/<child>` (contract §3): stop, then reclaim with the parent live or not,
//! with every tool users remove directories with, on both runtime generations.
#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &fuse,
            both_tests![
                rm_r_offline,
                rm_rf_offline,
                rmdir_offline,
                find_delete_offline,
                shutil_rmtree_offline,
                unlink_changes_nothing,
                restored_parent,
                table_in_place,
                parent_left_the_table,
                live_parent,
                live_parent_gets_the_event,
                stubborn_child,
                unconfirmed_reclaim,
                grandchildren_first,
                repeated_removal,
            ],
        )
        .add(
            &fuse,
            tests![
                rust_remove_dir_all,
                missing_children,
                concurrent_removals_reclaim_once,
            ],
        )
        .run()
}

/// The offline reclaim of child1 must leave exactly the files the runtime itself left.
fn assert_matches_runtime_after_stop(home: &Home) {
    let (h, g) = (home.s(), home.gen);
    for rel in [home.meta("parent"), home.table(), home.mirror("parent")] {
        assert_eq!(
            home.read(&rel),
            fixture_text(g, &format!("after-stop/{rel}"), &h),
            "{rel}"
        );
    }
    assert_eq!(
        home.read(&home.meta("child1")),
        fixture_text(g, &format!("after-stop/{}", home.meta("child1")), &h),
        "the child's own file is not touched"
    );
}

fn offline_removal_with(gen: Gen, tool: &str) {
    let home = Home::fixture(gen, "live");
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    ok(&tool
        .replace("{c}", &c)
        .replace("{p}", &format!("{}/parent", m.s())));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child2\nchild3\n");
    assert_eq!(py_errno(&format!("os.stat('{c}')")), "ENOENT");
    assert_matches_runtime_after_stop(&home);
}

fn rm_r(gen: Gen) {
    offline_removal_with(gen, "rm -r {c}");
}
both!(rm_r_offline, rm_r);

fn rm_rf(gen: Gen) {
    offline_removal_with(gen, "rm -rf {c}");
}
both!(rm_rf_offline, rm_rf);

fn rmdir(gen: Gen) {
    offline_removal_with(gen, "rmdir {c}");
}
both!(rmdir_offline, rmdir);

fn find_delete(gen: Gen) {
    offline_removal_with(gen, "find {c} -delete");
}
both!(find_delete_offline, find_delete);

fn python_shutil_rmtree(gen: Gen) {
    offline_removal_with(gen, "python3 -c \"import shutil; shutil.rmtree('{c}')\"");
}
both!(shutil_rmtree_offline, python_shutil_rmtree);

fn rust_remove_dir_all() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::quick(&home, &[]);
    std::fs::remove_dir_all(m.p("parent/child1")).unwrap();
    assert_matches_runtime_after_stop(&home);
}

fn unlinking_a_control_file_changes_nothing(gen: Gen) {
    let home = Home::fixture(gen, "live");
    let m = Mount::quick(&home, &[]);
    let before = home.read(&home.meta("parent"));
    ok(&format!(
        "rm {0}/parent/child1/scope {0}/parent/child1/cursor",
        m.s()
    ));
    assert!(!ok(&format!("cat {}/parent/child1/scope", m.s())).is_empty());
    assert_eq!(home.read(&home.meta("parent")), before);
    assert_eq!(
        py_errno(&format!("os.unlink('{}/parent/child1/nofile')", m.s())),
        "ENOENT"
    );
}
both!(
    unlink_changes_nothing,
    unlinking_a_control_file_changes_nothing
);

fn missing_children() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::quick(&home, &[]);
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/nochild')", m.s())),
        "ENOENT"
    );
    ok(&format!("rm -rf {}/parent/nochild", m.s()));
}

fn restored_parent_loses_the_deny_layer(gen: Gen) {
    // After the crash and restore, parent holds a deny for child3's write rule.
    let home = Home::fixture(gen, "after-crash-restore");
    let m = Mount::quick(&home, &[]);
    ok(&format!("rm -r {}/parent/child3", m.s()));
    let table = home.json(&home.table());
    let allocations = table["allocations"].as_array().unwrap();
    let parent = allocations
        .iter()
        .find(|a| a[home.key()] == "parent")
        .unwrap();
    assert_eq!(parent["scope_deny"], serde_json::json!([]));
    assert_eq!(allocations.len(), 1);
    let meta = home.json(&home.meta("parent"));
    assert!(
        meta.get("spawned_children").is_none(),
        "empty list must be omitted"
    );
    assert_eq!(
        home.names(&meta["reclaimed_children"]),
        ["child1", "child2", "child3"]
    );
}
both!(restored_parent, restored_parent_loses_the_deny_layer);

fn allocation_table_is_rewritten_in_place(gen: Gen) {
    use std::os::unix::fs::MetadataExt;
    let home = Home::fixture(gen, "live");
    let table = home.path().join(home.table());
    let ino = std::fs::metadata(&table).unwrap().ino();
    let m = Mount::quick(&home, &[]);
    ok(&format!("rm -r {}/parent/child2", m.s()));
    assert_eq!(std::fs::metadata(&table).unwrap().ino(), ino);
    assert!(!home
        .names(&home.json(&home.table())["allocations"])
        .contains(&"child2".to_string()));
}
both!(table_in_place, allocation_table_is_rewritten_in_place);

fn a_parent_that_left_the_table(gen: Gen) {
    // The parent shut down cleanly: its own allocation left the table, and its running
    // children kept theirs with `delegated_from: null`.
    let home = Home::fixture(gen, "live");
    let mut table = home.json(&home.table());
    let list = table["allocations"].as_array_mut().unwrap();
    list.retain(|a| a[home.key()] != "parent");
    for a in list.iter_mut() {
        a["delegated_from"] = serde_json::Value::Null;
    }
    home.write_json(&home.table(), &table);
    let _ = std::fs::remove_file(home.path().join(home.mirror("parent")));
    let m = Mount::quick(&home, &[]);
    ok(&format!("rm -r {}/parent/child1", m.s()));
    let after = home.json(&home.table());
    assert_eq!(home.names(&after["allocations"]), ["child2", "child3"]);
    let meta = home.json(&home.meta("parent"));
    assert_eq!(home.names(&meta["reclaimed_children"]), ["child1"]);
    assert_eq!(home.names(&meta["spawned_children"]), ["child2", "child3"]);
    assert!(
        !home.path().join(home.mirror("parent")).exists(),
        "a missing mirror stays missing"
    );
}
both!(parent_left_the_table, a_parent_that_left_the_table);

fn live_parent_reclaims_itself(gen: Gen) {
    let home = Home::demo(gen, &["child1", "child2"]);
    let _pods = demo_pods(&home, &["child1", "child2"]);
    let m = Mount::quick(&home, &[]);
    ok(&format!("rm -r {}/parent/child1", m.s()));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child2\n");
    assert!(
        eventually(Duration::from_secs(5), || !home
            .path()
            .join("run/child1")
            .exists()),
        "child1 must have exited"
    );
    let meta = home.json(&home.meta("parent"));
    assert_eq!(home.names(&meta["reclaimed_children"]), ["child1"]);
    assert!(
        m.log().contains("ByParent"),
        "the live parent must do the bookkeeping"
    );
    assert_eq!(
        home.names(&home.json(&home.table())["allocations"]),
        ["parent", "child2"]
    );
}
both!(live_parent, live_parent_reclaims_itself);

fn live_parent_without_the_childs_report_gets_the_event_from_podfs(gen: Gen) {
    // A child with no callback never reports shut_down; podfs must send it to the parent.
    let home = Home::demo(gen, &["orphan"]);
    let _parent = PodProcess::start(&home, "parent", &[]);
    let _child = PodProcess::start(&home, "orphan", &[]);
    let m = Mount::quick(&home, &[]);
    ok(&format!("rm -r {}/parent/orphan", m.s()));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "");
    assert!(m.log().contains("shut_down event sent"), "{}", m.log());
    let meta = home.json(&home.meta("parent"));
    assert_eq!(home.names(&meta["reclaimed_children"]), ["orphan"]);
}
both!(
    live_parent_gets_the_event,
    live_parent_without_the_childs_report_gets_the_event_from_podfs
);

fn a_child_that_will_not_stop_is_ebusy_and_nothing_changes(gen: Gen) {
    let home = Home::demo(gen, &["stubborn"]);
    let _child = PodProcess::start(&home, "stubborn", &["--ignore-shutdown"]);
    let before_meta = home.read(&home.meta("parent"));
    let before_table = home.read(&home.table());
    let m = Mount::quick(&home, &[]);
    let started = Instant::now();
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/stubborn')", m.s())),
        "EBUSY"
    );
    // Within the stop timeout plus a margin (generous: a loaded machine is slow).
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500 + 1500),
        "EBUSY after {took:?}"
    );
    assert_eq!(home.read(&home.meta("parent")), before_meta);
    assert_eq!(home.read(&home.table()).len(), before_table.len());
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "stubborn\n");
}
both!(
    stubborn_child,
    a_child_that_will_not_stop_is_ebusy_and_nothing_changes
);

fn a_live_parent_that_does_not_confirm_is_eio_and_its_files_are_untouched(gen: Gen) {
    let home = Home::demo(gen, &["child1"]);
    let _parent = PodProcess::start(&home, "parent", &["--ignore-pod-events"]);
    let cb = PodProcess::callback(&home, "parent");
    let _child = PodProcess::start(&home, "child1", &["--callback", &cb]);
    let m = Mount::quick(&home, &[]);
    let before = home.read(&home.meta("parent"));
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/child1')", m.s())),
        "EIO"
    );
    assert_eq!(home.read(&home.meta("parent")), before);
    assert!(m.log().contains("did not confirm"), "{}", m.log());
}
both!(
    unconfirmed_reclaim,
    a_live_parent_that_does_not_confirm_is_eio_and_its_files_are_untouched
);

fn a_child_with_children_is_not_empty(gen: Gen) {
    let home = Home::fixture(gen, "live");
    // child1 spawned a grandchild of its own.
    let grand = home.path().join("run/g/sock");
    home.add_child("child1", "g", &grand);
    let m = Mount::quick(&home, &[]);
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/child1')", m.s())),
        "ENOTEMPTY"
    );
    assert!(home
        .json(&home.meta("parent"))
        .get("reclaimed_children")
        .is_none());
    // Bottom-up works: first the grandchild, then the child.
    ok(&format!("rm -r {}/child1/g", m.s()));
    ok(&format!("rm -r {}/parent/child1", m.s()));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child2\nchild3\n");
}
both!(grandchildren_first, a_child_with_children_is_not_empty);

fn a_repeated_removal_reclaims_once(gen: Gen) {
    let home = Home::fixture(gen, "after-crash-restore");
    // Give the parent two identical deny layers: a double reclaim would remove both.
    let mut table = home.json(&home.table());
    let list = table["allocations"].as_array_mut().unwrap();
    let parent = list.iter_mut().find(|a| a[home.key()] == "parent").unwrap();
    let deny = parent["scope_deny"][0].clone();
    parent["scope_deny"].as_array_mut().unwrap().push(deny);
    home.write_json(&home.table(), &table);
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child3", m.s());
    assert_eq!(py_errno(&format!("os.rmdir('{c}')")), "OK");
    assert_eq!(py_errno(&format!("os.rmdir('{c}')")), "ENOENT");
    let table = home.json(&home.table());
    let parent = table["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a[home.key()] == "parent")
        .unwrap()
        .clone();
    assert_eq!(parent["scope_deny"].as_array().unwrap().len(), 1, "{table}");
    let meta = home.json(&home.meta("parent"));
    let n = home
        .names(&meta["reclaimed_children"])
        .iter()
        .filter(|c| *c == "child3")
        .count();
    assert_eq!(n, 1);
}
both!(repeated_removal, a_repeated_removal_reclaims_once);

fn concurrent_removals_reclaim_once() {
    for _ in 0..5 {
        let home = Home::fixture(&INSOMNIA, "live");
        let m = Mount::quick(&home, &[]);
        let c = format!("{}/parent/child2", m.s());
        let spawn = || {
            std::process::Command::new("python3")
                .args(["-c", &format!("import os\ntry:\n    os.rmdir('{c}'); print('OK')\nexcept OSError as e:\n    print(e.errno)")])
                .output()
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(spawn);
            let b = s.spawn(spawn);
            (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
        });
        let mut answers = [
            String::from_utf8_lossy(&a.stdout).trim().to_string(),
            String::from_utf8_lossy(&b.stdout).trim().to_string(),
        ];
        answers.sort();
        assert_eq!(
            answers,
            ["2".to_string(), "OK".to_string()],
            "one removes, one finds ENOENT"
        );
        let meta = home.json("pods/parent/metadata.json");
        assert_eq!(
            home.names(&meta["reclaimed_children"]),
            ["child2"],
            "{meta}"
        );
        assert_eq!(ok(&format!("ls {}/parent", m.s())), "child1\nchild3\n");
    }
}
