//! Command-line behaviour: clear errors with a non-zero exit, and stale-mount recovery.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn podfs(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_mount_point_is_explained() {
    let home = Home::fixture("live");
    let (code, err) = podfs(&["mount", "/nonexistent/podfs-mnt", "--home", &home.s()]);
    assert_ne!(code, 0);
    if fuse_available() {
        assert!(
            err.contains("does not exist") && err.contains("mkdir -p"),
            "{err}"
        );
    }
}

#[test]
fn non_empty_mount_point_is_refused() {
    if !fuse_available() {
        return;
    }
    let home = Home::fixture("live");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x"), b"").unwrap();
    let (code, err) = podfs(&["mount", dir.path().to_str().unwrap(), "--home", &home.s()]);
    assert_eq!(code, 2);
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn missing_home_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = podfs(&[
        "mount",
        dir.path().to_str().unwrap(),
        "--home",
        "/nonexistent/home",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("does not exist") && err.contains("--home"),
        "{err}"
    );
}

#[test]
fn bad_arguments_fail_with_usage() {
    let (code, err) = podfs(&["mount"]);
    assert_eq!(code, 2);
    assert!(err.contains("MOUNTPOINT"), "{err}");
    let (code, _) = podfs(&["frobnicate"]);
    assert_eq!(code, 2);
    let (code, err) = podfs(&["unmount", "/tmp"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a FUSE mount"), "{err}");
}

#[test]
fn stale_mount_is_detected_and_recovered() {
    if !fuse_available() {
        return;
    }
    let home = Home::fixture("live");
    let mut m = Mount::new(&home);
    m.kill();
    // The kernel mount outlives its server: "Transport endpoint is not connected".
    assert!(m.is_mounted());
    let errno = py_errno(&format!("os.listdir('{}')", m.s()));
    assert_eq!(errno, "ENOTCONN", "{}", m.log());
    let mnt = m.s();
    let mut again = Command::new(BIN)
        .args(["mount", &mnt, "--home", &home.s()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || {
        sh(&format!("ls {mnt}")).1 == "child1\nparent\n"
    });
    signal(again.id(), nix::sys::signal::Signal::SIGTERM);
    assert!(again.wait().unwrap().success());
    assert!(!is_mounted(m.path()));
}

#[test]
fn unmount_command_unmounts() {
    if !fuse_available() {
        return;
    }
    let home = Home::fixture("live");
    let m = Mount::new(&home);
    let (code, err) = podfs(&["unmount", &m.s()]);
    assert_eq!(code, 0, "{err}");
    wait_for(Duration::from_secs(5), || !m.is_mounted());
}
