//! `rm -r <parent>/<child>` (contract §3): stop, then reclaim with the parent live or not,
//! with every tool users remove directories with.
mod common;

use std::time::Duration;

use common::*;

macro_rules! need_fuse {
    () => {
        if !fuse_available() {
            return;
        }
    };
}

/// The offline reclaim of child1 must leave exactly the files the runtime itself left.
fn assert_matches_runtime_after_stop(home: &Home) {
    let h = home.s();
    assert_eq!(
        home.read("pods/parent/metadata.json"),
        fixture_text("after-stop/pods/parent/metadata.json", &h)
    );
    assert_eq!(
        home.read("run/pods.json"),
        fixture_text("after-stop/run/pods.json", &h)
    );
    assert_eq!(
        home.read("run/parent/spawned_pods.json"),
        fixture_text("after-stop/run/parent/spawned_pods.json", &h)
    );
    assert_eq!(
        home.read("pods/child1/metadata.json"),
        fixture_text("after-stop/pods/child1/metadata.json", &h),
        "the child's own file is not touched"
    );
}

fn offline_removal_with(tool: &str) {
    let home = Home::fixture("live");
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child1", m.s());
    ok(&tool
        .replace("{c}", &c)
        .replace("{p}", &format!("{}/parent", m.s())));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child2\nchild3\n");
    assert_eq!(py_errno(&format!("os.stat('{c}')")), "ENOENT");
    assert_matches_runtime_after_stop(&home);
}

#[test]
fn rm_r() {
    need_fuse!();
    offline_removal_with("rm -r {c}");
}

#[test]
fn rm_rf() {
    need_fuse!();
    offline_removal_with("rm -rf {c}");
}

#[test]
fn rmdir() {
    need_fuse!();
    offline_removal_with("rmdir {c}");
}

#[test]
fn find_delete() {
    need_fuse!();
    offline_removal_with("find {c} -delete");
}

#[test]
fn python_shutil_rmtree() {
    need_fuse!();
    offline_removal_with("python3 -c \"import shutil; shutil.rmtree('{c}')\"");
}

#[test]
fn rust_remove_dir_all() {
    need_fuse!();
    let home = Home::fixture("live");
    let m = Mount::quick(&home, &[]);
    std::fs::remove_dir_all(m.p("parent/child1")).unwrap();
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child2\nchild3\n");
    assert_matches_runtime_after_stop(&home);
}

#[test]
fn unlinking_a_control_file_changes_nothing() {
    need_fuse!();
    let home = Home::fixture("live");
    let m = Mount::quick(&home, &[]);
    let before = home.read("pods/parent/metadata.json");
    ok(&format!(
        "rm {}/parent/child1/scope {}/parent/child1/input",
        m.s(),
        m.s()
    ));
    assert!(!ok(&format!("cat {}/parent/child1/scope", m.s())).is_empty());
    assert_eq!(home.read("pods/parent/metadata.json"), before);
    assert_eq!(
        py_errno(&format!("os.unlink('{}/parent/child1/nofile')", m.s())),
        "ENOENT"
    );
}

#[test]
fn missing_children() {
    need_fuse!();
    let home = Home::fixture("live");
    let m = Mount::quick(&home, &[]);
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/nochild')", m.s())),
        "ENOENT"
    );
    ok(&format!("rm -rf {}/parent/nochild", m.s()));
}

#[test]
fn restored_parent_loses_the_deny_layer() {
    need_fuse!();
    // After the crash and restore, parent holds a deny for child3's write rule.
    let home = Home::fixture("after-crash-restore");
    let m = Mount::quick(&home, &[]);
    ok(&format!("rm -r {}/parent/child3", m.s()));
    let table = home.json("run/pods.json");
    let parent = table["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["pod_name"] == "parent")
        .unwrap();
    assert_eq!(parent["scope_deny"], serde_json::json!([]));
    assert_eq!(table["allocations"].as_array().unwrap().len(), 1);
    let meta = home.json("pods/parent/metadata.json");
    assert!(
        meta.get("spawned_children").is_none(),
        "empty list must be omitted"
    );
    let reclaimed: Vec<&str> = meta["reclaimed_children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pod_name"].as_str().unwrap())
        .collect();
    assert_eq!(reclaimed, ["child1", "child2", "child3"]);
}

#[test]
fn pods_json_is_rewritten_in_place() {
    need_fuse!();
    use std::os::unix::fs::MetadataExt;
    let home = Home::fixture("live");
    let ino = std::fs::metadata(home.path().join("run/pods.json"))
        .unwrap()
        .ino();
    let m = Mount::quick(&home, &[]);
    ok(&format!("rm -r {}/parent/child2", m.s()));
    assert_eq!(
        std::fs::metadata(home.path().join("run/pods.json"))
            .unwrap()
            .ino(),
        ino
    );
}

#[test]
fn live_parent_reclaims_itself() {
    need_fuse!();
    let home = Home::demo(&["child1", "child2"]);
    let _pods = demo_pods(&home, &["child1", "child2"]);
    let m = Mount::quick(&home, &[]);
    ok(&format!("rm -r {}/parent/child1", m.s()));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child2\n");
    assert!(
        !home.path().join("run/child1").exists(),
        "child1 must have exited"
    );
    let meta = home.json("pods/parent/metadata.json");
    assert_eq!(meta["reclaimed_children"][0]["pod_name"], "child1");
    assert_eq!(meta["reclaimed_children"].as_array().unwrap().len(), 1);
    assert!(
        m.log().contains("ByParent"),
        "the live parent must do the bookkeeping"
    );
    let names: Vec<String> = home.json("run/pods.json")["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["pod_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["parent", "child2"]);
}

#[test]
fn live_parent_without_the_childs_report_gets_the_event_from_podfs() {
    need_fuse!();
    // A child with no callback never reports shut_down; podfs must send it to the parent.
    let home = Home::demo(&["orphan"]);
    let _parent = PodProcess::start(&home, "parent", &[]);
    let _child = PodProcess::start(&home, "orphan", &[]);
    let m = Mount::quick(&home, &[]);
    ok(&format!("rm -r {}/parent/orphan", m.s()));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "");
    assert!(m.log().contains("shut_down event sent"), "{}", m.log());
    assert_eq!(
        home.json("pods/parent/metadata.json")["reclaimed_children"][0]["pod_name"],
        "orphan"
    );
}

#[test]
fn a_child_that_will_not_stop_is_ebusy_and_nothing_changes() {
    need_fuse!();
    let home = Home::demo(&["stubborn"]);
    let _child = PodProcess::start(&home, "stubborn", &["--ignore-shutdown"]);
    let before_meta = home.read("pods/parent/metadata.json");
    let before_table = home.read("run/pods.json");
    let m = Mount::quick(&home, &[]);
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/stubborn')", m.s())),
        "EBUSY"
    );
    assert_eq!(home.read("pods/parent/metadata.json"), before_meta);
    assert_eq!(home.read("run/pods.json").len(), before_table.len());
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "stubborn\n");
}

#[test]
fn a_live_parent_that_does_not_confirm_is_eio_and_its_files_are_untouched() {
    need_fuse!();
    let home = Home::demo(&["child1"]);
    let _parent = PodProcess::start(&home, "parent", &["--ignore-pod-events"]);
    let cb = home.path().join("run/parent/sock").display().to_string();
    let _child = PodProcess::start(&home, "child1", &["--callback", &cb]);
    let m = Mount::quick(&home, &[]);
    let before = home.read("pods/parent/metadata.json");
    assert_eq!(
        py_errno(&format!("os.rmdir('{}/parent/child1')", m.s())),
        "EIO"
    );
    assert_eq!(home.read("pods/parent/metadata.json"), before);
    assert!(m.log().contains("did not confirm"), "{}", m.log());
}

#[test]
fn a_child_with_children_is_not_empty() {
    need_fuse!();
    let home = Home::fixture("live");
    // child1 spawned a grandchild of its own.
    let h = home.s();
    let grand = format!(
        r#"{{"pod_name":"child1","spawned_children":[{{"pod_name":"g","socket_path":"{h}/run/g/sock","scope_delegated":[{{"target":"{h}/work/sub1/g","permission":"write","recursive":true}}],"callback_address":"{h}/run/child1/sock"}}]}}"#
    );
    std::fs::write(home.path().join("pods/child1/metadata.json"), grand).unwrap();
    let m = Mount::quick(&home, &[]);
    let err = fails(&format!("rm -r {}/parent/child1", m.s()));
    assert!(err.contains("Directory not empty"), "{err}");
    assert!(home
        .json("pods/parent/metadata.json")
        .get("reclaimed_children")
        .is_none());
    // Bottom-up works: first the grandchild, then the child.
    ok(&format!("rm -r {}/child1/g", m.s()));
    ok(&format!("rm -r {}/parent/child1", m.s()));
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child2\nchild3\n");
}

#[test]
fn a_repeated_removal_reclaims_once() {
    need_fuse!();
    let home = Home::fixture("after-crash-restore");
    // Give the parent two identical deny layers: a double reclaim would remove both.
    let path = home.path().join("run/pods.json");
    let mut table: serde_json::Value = serde_json::from_str(&home.read("run/pods.json")).unwrap();
    let deny = table["allocations"][1]["scope_deny"][0].clone();
    table["allocations"][1]["scope_deny"]
        .as_array_mut()
        .unwrap()
        .push(deny);
    std::fs::write(&path, serde_json::to_vec_pretty(&table).unwrap()).unwrap();
    let m = Mount::quick(&home, &[]);
    let c = format!("{}/parent/child3", m.s());
    assert_eq!(py_errno(&format!("os.rmdir('{c}')")), "OK");
    assert_eq!(py_errno(&format!("os.rmdir('{c}')")), "ENOENT");
    let table = home.json("run/pods.json");
    assert_eq!(
        table["allocations"][0]["scope_deny"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{table}"
    );
    let meta = home.json("pods/parent/metadata.json");
    let n = meta["reclaimed_children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pod_name"] == "child3")
        .count();
    assert_eq!(n, 1);
}

#[test]
fn concurrent_removals_reclaim_once() {
    need_fuse!();
    for _ in 0..5 {
        let home = Home::fixture("live");
        let m = Mount::quick(&home, &[]);
        let c = format!("{}/parent/child2", m.s());
        let spawn = || {
            std::process::Command::new("rm")
                .args(["-r", &c])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        assert!(a.status.success() || b.status.success());
        for out in [&a, &b] {
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("No such file"), "{err}");
            }
        }
        let meta = home.json("pods/parent/metadata.json");
        let reclaimed = meta["reclaimed_children"].as_array().unwrap();
        assert_eq!(reclaimed.len(), 1, "{meta}");
        assert_eq!(ok(&format!("ls {}/parent", m.s())), "child1\nchild3\n");
        drop(m);
        std::thread::sleep(Duration::from_millis(10));
    }
}
