//! The read side over a real mount of a staged fixture home (contract §1, §2, §4).
#[macro_use]
mod common;

use std::time::Duration;

use common::*;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &fuse,
            tests![
                root_lists_parents_and_parent_lists_every_child,
                value_files_hold_the_registry,
                stat_sizes_match_what_cat_returns,
                standard_tools_see_whole_files,
                cursor_writes_are_strict,
                read_only_files_and_refused_operations,
                inode_numbers_are_stable,
                runtime_changes_appear_within_a_second,
                corrupt_metadata_gives_eio_for_that_parent_only,
                invalid_names_are_refused,
                sigterm_unmounts_cleanly,
                sigint_unmounts_cleanly,
            ],
        )
        .run()
}

fn root_lists_parents_and_parent_lists_every_child() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    // child1 has its own metadata.json but never had a child: listed under its parent
    // only, and still reachable by name.
    assert_eq!(ok(&format!("ls {}", m.s())), "parent\n");
    // All three children, although none of them is reachable.
    assert_eq!(
        ok(&format!("ls {}/parent", m.s())),
        "child1\nchild2\nchild3\n"
    );
    assert_eq!(ok(&format!("ls {}/child1", m.s())), "");
    assert_eq!(
        ok(&format!("ls {}/parent/child1", m.s())),
        "callback\ncursor\ninput\nlog\noutput\nscope\nsocket\nstatus\n"
    );
    // A removed child does not linger at the top; the parent, which had children, stays.
    ok(&format!("rm -r {}/parent/child1", m.s()));
    assert_eq!(ok(&format!("ls {}", m.s())), "parent\n");
    assert_eq!(ok(&format!("ls {}/parent", m.s())), "child2\nchild3\n");
}

fn value_files_hold_the_registry() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    let c1 = format!("{}/parent/child1", m.s());
    let h = home.s();
    assert_eq!(
        ok(&format!("cat {c1}/socket")),
        format!("{h}/run/child1/sock\n")
    );
    assert_eq!(
        ok(&format!("cat {c1}/scope")),
        format!("write recursive {h}/work/sub1\nread recursive {h}/work\n")
    );
    assert_eq!(ok(&format!("cat {c1}/cursor")), "0\n");
    assert_eq!(
        ok(&format!("cat {c1}/callback")),
        format!("{h}/run/parent/sock\n")
    );
    assert_eq!(ok(&format!("cat {c1}/status")), "unreachable\n");
    assert_eq!(
        ok(&format!("cat {}/parent/child2/scope", m.s())),
        format!("read recursive {h}/work\n")
    );
    // Unreachable: output is empty and the cursor stays.
    assert_eq!(ok(&format!("cat {c1}/output")), "");
    assert_eq!(ok(&format!("cat {c1}/cursor")), "0\n");
}

fn stat_sizes_match_what_cat_returns() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    for file in [
        "socket", "scope", "cursor", "callback", "status", "log", "output", "input",
    ] {
        let path = format!("{}/parent/child3/{file}", m.s());
        let size: usize = ok(&format!("stat -c %s {path}")).trim().parse().unwrap();
        let content = ok(&format!("cat {path}"));
        assert_eq!(size, content.len(), "{file}");
    }
    let modes = ok(&format!(
        "stat -c '%n %A' {}/parent/child3/* | sed 's|.*/||'",
        m.s()
    ));
    assert!(modes.contains("cursor -rw-r--r--"), "{modes}");
    assert!(modes.contains("input -rw-r--r--"), "{modes}");
    assert!(modes.contains("socket -r--r--r--"), "{modes}");
}

fn standard_tools_see_whole_files() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    let h = home.s();
    let copy = tempdir();
    ok(&format!(
        "cp {}/parent/child1/scope {}/scope",
        m.s(),
        copy.path().display()
    ));
    assert_eq!(
        std::fs::read_to_string(copy.path().join("scope")).unwrap(),
        format!("write recursive {h}/work/sub1\nread recursive {h}/work\n")
    );
    let grep = ok(&format!(
        "grep -r --include=socket sock {}/parent | sort",
        m.s()
    ));
    assert_eq!(grep.lines().count(), 3, "{grep}");
    let py = ok(&format!(
        "python3 -c \"print(open('{}/parent/child3/scope').read(), end='')\"",
        m.s()
    ));
    assert_eq!(
        py,
        format!("write recursive {h}/work/sub3\nread recursive {h}/work\n")
    );
    let found = ok(&format!("cd {} && find . -name scope | sort", m.s()));
    assert_eq!(
        found,
        "./parent/child1/scope\n./parent/child2/scope\n./parent/child3/scope\n"
    );
    let tree = ok(&format!("cd {} && find . | wc -l", m.s()));
    // root, 1 parent, 3 children, 3 × 8 files.
    assert_eq!(tree.trim(), "29");
}

fn cursor_writes_are_strict() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    let cursor = format!("{}/parent/child2/cursor", m.s());
    ok(&format!("echo 12 > {cursor}"));
    assert_eq!(ok(&format!("cat {cursor}")), "12\n");
    ok(&format!("printf 7 > {cursor}"));
    assert_eq!(ok(&format!("cat {cursor}")), "7\n");
    for bad in ["abc", "-1", "1 2", "99999999999999999999999", " 3"] {
        assert_eq!(
            py_errno(&format!(
                "fd = os.open('{cursor}', os.O_WRONLY); os.write(fd, b'{bad}\\n')"
            )),
            "EINVAL",
            "{bad}"
        );
        fails(&format!("echo '{bad}' > {cursor}"));
        assert_eq!(
            ok(&format!("cat {cursor}")),
            "7\n",
            "{bad} changed the cursor"
        );
    }
    // An open closed without writing changes nothing (O_TRUNC included).
    assert_eq!(
        py_errno(&format!(
            "fd = os.open('{cursor}', os.O_WRONLY | os.O_TRUNC); os.write(fd, b''); os.close(fd)"
        )),
        "OK"
    );
    assert_eq!(ok(&format!("cat {cursor}")), "7\n");
    // Cursors are per child.
    assert_eq!(ok(&format!("cat {}/parent/child1/cursor", m.s())), "0\n");
}

fn read_only_files_and_refused_operations() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    let c = format!("{}/parent/child1", m.s());
    for file in ["socket", "scope", "status", "callback", "output", "log"] {
        assert_eq!(
            py_errno(&format!("open('{c}/{file}', 'w')")),
            "EACCES",
            "{file}"
        );
    }
    // Reading input returns nothing, so tree-walking tools do not fail on it.
    assert_eq!(ok(&format!("cat {c}/input")), "");
    assert_eq!(
        py_errno(&format!("os.mkdir('{}/parent/newchild')", m.s())),
        "EPERM"
    );
    assert_eq!(py_errno(&format!("open('{c}/newfile', 'w')")), "EACCES");
    assert_eq!(
        py_errno(&format!("os.rename('{c}/socket', '{c}/sock2')")),
        "EPERM"
    );
    assert_eq!(
        py_errno(&format!("os.stat('{}/parent/nochild')", m.s())),
        "ENOENT"
    );
    assert_eq!(py_errno(&format!("os.stat('{c}/nofile')")), "ENOENT");
    assert_eq!(py_errno(&format!("os.stat('{}/nopod')", m.s())), "ENOENT");
    assert_eq!(py_errno(&format!("os.rmdir('{}/parent')", m.s())), "EPERM");
    assert_eq!(ok(&format!("test -w {c}/socket || echo ro")), "ro\n");
    assert_eq!(ok(&format!("test -w {c}/cursor && echo rw")), "rw\n");
}

fn inode_numbers_are_stable() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    let cmd = format!(
        "stat -c %i {0}/parent {0}/parent/child1 {0}/parent/child1/cursor {0}/parent/child2/cursor",
        m.s()
    );
    let first = ok(&cmd);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(ok(&cmd), first);
    let inos: std::collections::HashSet<&str> = first.lines().collect();
    assert_eq!(inos.len(), 4, "inode numbers must be distinct: {first}");
}

fn runtime_changes_appear_within_a_second() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    assert_eq!(
        ok(&format!("ls {}/parent", m.s())),
        "child1\nchild2\nchild3\n"
    );
    // The runtime rewrites metadata.json in place (truncating write, same inode).
    let after = fixture_text(&INSOMNIA, "after-stop/pods/parent/metadata.json", &home.s());
    std::fs::write(home.path().join("pods/parent/metadata.json"), after).unwrap();
    wait_for(Duration::from_secs(2), || {
        ok(&format!("ls {}/parent", m.s())) == "child2\nchild3\n"
    });
    wait_for(Duration::from_millis(1500), || {
        sh(&format!("stat {}/parent/child1", m.s())).0 != 0
    });
    // And a new parent appears in the root.
    std::fs::create_dir_all(home.path().join("pods/newpod")).unwrap();
    std::fs::write(
        home.path().join("pods/newpod/metadata.json"),
        br#"{"pod_name":"newpod","spawned_children":[{"pod_name":"k","socket_path":"/s","scope_delegated":[],"callback_address":""}]}"#,
    )
    .unwrap();
    wait_for(Duration::from_millis(1500), || {
        ok(&format!("ls {}", m.s())).contains("newpod")
    });
}

fn corrupt_metadata_gives_eio_for_that_parent_only() {
    let home = Home::fixture(&INSOMNIA, "live");
    std::fs::write(
        home.path().join("pods/child1/metadata.json"),
        b"{\"pod_name\": ",
    )
    .unwrap();
    let m = Mount::new(&home);
    assert_eq!(py_errno(&format!("os.listdir('{}/child1')", m.s())), "EIO");
    assert_eq!(
        ok(&format!("ls {}/parent", m.s())),
        "child1\nchild2\nchild3\n"
    );
    assert!(
        m.log().contains("metadata.json unreadable"),
        "no warning logged"
    );
}

fn invalid_names_are_refused() {
    let home = Home::fixture(&INSOMNIA, "live");
    // A registry entry with a name the runtime would refuse never appears.
    let path = home.path().join("pods/parent/metadata.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut bad = v["spawned_children"][0].clone();
    bad["pod_name"] = "a/b".into();
    v["spawned_children"].as_array_mut().unwrap().push(bad);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let m = Mount::new(&home);
    assert_eq!(
        ok(&format!("ls {}/parent", m.s())),
        "child1\nchild2\nchild3\n"
    );
    assert_eq!(
        py_errno(&format!("os.stat('{}/parent/' + 'x' * 300)", m.s())),
        "ENOENT"
    );
    // A name that is not UTF-8 cannot be a pod name.
    assert_eq!(
        py_errno(&format!("os.stat(b'{}/parent/\\xff')", m.s())),
        "EINVAL"
    );
}

fn sigterm_unmounts_cleanly() {
    let home = Home::fixture(&INSOMNIA, "live");
    let mut m = Mount::new(&home);
    assert!(m.is_mounted());
    let status = m.stop();
    assert!(status.success(), "{status}: {}", m.log());
    assert!(!m.is_mounted());
    assert_eq!(ok(&format!("ls -A {}", m.s())), "");
}

fn sigint_unmounts_cleanly() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    signal(m.pid(), nix::sys::signal::Signal::SIGINT);
    wait_for(Duration::from_secs(5), || !m.is_mounted());
}
