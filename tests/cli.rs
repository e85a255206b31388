//! Command-line behaviour: exit statuses in the spirit of mount(8) (1: a command to fix,
//! 2: a failure, 32: the mount failed), relative paths, "already mounted", stale-mount
//! recovery. Only exit statuses are checked, never message text (locale-proof).
#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn main() -> std::process::ExitCode {
    Suite::new()
        .add(
            &Need::Met,
            tests![
                a_missing_or_empty_home_is_a_usage_error,
                bad_arguments_are_usage_errors_and_version_and_help_succeed,
                runtime_failures_exit_2,
                a_test_that_cannot_run_is_counted_as_not_run_and_fails_under_ci,
            ],
        )
        .add(
            &Need::fuse(),
            tests![
                a_missing_mount_point_is_a_usage_error,
                a_non_empty_mount_point_is_refused,
                a_stale_mount_is_detected_and_recovered,
                a_podfs_killed_as_soon_as_its_mount_answers_leaves_no_mount,
                unmount_takes_relative_paths_and_trailing_slashes,
                a_second_mount_on_a_podfs_mount_is_refused,
                a_mount_with_a_bad_option_fails_as_a_mount,
                each_generation_is_mounted_from_its_own_environment_variable,
                a_background_mount_logs_where_its_options_say,
            ],
        )
        .run()
}

fn podfs(args: &[&str]) -> i32 {
    podfs_in(args, None)
}

fn podfs_in(args: &[&str], dir: Option<&std::path::Path>) -> i32 {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().unwrap();
    out.status.code().unwrap_or(-1)
}

fn a_missing_mount_point_is_a_usage_error() {
    let home = Home::fixture(&INSOMNIA, "live");
    assert_eq!(
        podfs(&["mount", "/nonexistent/podfs-mnt", "--home", &home.s()]),
        1
    );
}

fn a_non_empty_mount_point_is_refused() {
    let home = Home::fixture(&INSOMNIA, "live");
    let dir = tempdir();
    std::fs::write(dir.path().join("x"), b"").unwrap();
    assert_eq!(
        podfs(&["mount", dir.path().to_str().unwrap(), "--home", &home.s()]),
        1
    );
}

fn a_missing_or_empty_home_is_a_usage_error() {
    let dir = tempdir();
    let mnt = dir.path().to_str().unwrap();
    assert_eq!(podfs(&["mount", mnt, "--home", "/nonexistent/home"]), 1);
    let empty = tempdir();
    assert_eq!(
        podfs(&["mount", mnt, "--home", empty.path().to_str().unwrap()]),
        1
    );
}

fn bad_arguments_are_usage_errors_and_version_and_help_succeed() {
    assert_eq!(podfs(&["mount"]), 1);
    assert_eq!(podfs(&["frobnicate"]), 1);
    assert_eq!(podfs(&["mount", "/tmp", "--generation", "nope"]), 1);
    assert_eq!(podfs(&["unmount", "/tmp"]), 1, "not a mount point");
    assert_eq!(podfs(&["unmount", "/proc"]), 1, "not a podfs mount");
    assert_eq!(podfs(&["--version"]), 0);
    assert_eq!(podfs(&["--help"]), 0);
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("podfs {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A command that was right but could not be carried out is a failure (2), never a panic
/// and never a silent success.
fn runtime_failures_exit_2() {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    for args in [&["completions", "bash"][..], &["man"][..]] {
        // The message about the full disk is provoked on purpose: kept from the run's
        // output, shown only should the status be wrong.
        let out = Command::new(BIN)
            .args(args)
            .stdout(full())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let status = out.status;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
    }
    assert_eq!(
        podfs(&["man", "--dir", "/proc/podfs-cannot-create-this"]),
        2
    );
}

fn a_stale_mount_is_detected_and_recovered() {
    let home = Home::fixture(&INSOMNIA, "live");
    let mut m = Mount::new(&home);
    // podfs and its guard both killed (as when a whole cgroup is): nothing unmounts, and
    // the mount outlives its server: "Transport endpoint is not connected".
    let guard = m.guard_pid().expect("every mount has a guard");
    signal(guard, nix::sys::signal::Signal::SIGKILL);
    wait_for(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{guard}/cmdline")).exists()
            || std::fs::read(format!("/proc/{guard}/cmdline")).is_ok_and(|c| c.is_empty())
    });
    m.kill();
    assert!(m.is_mounted());
    assert_eq!(
        py_errno(&format!("os.listdir('{}')", m.s())),
        "ENOTCONN",
        "{}",
        m.log()
    );
    let mnt = m.s();
    let mut again = Command::new(BIN)
        .args(["mount", &mnt, "--home", &home.s()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || {
        sh(&format!("ls {mnt}")).1 == "parent\n"
    });
    signal(again.id(), nix::sys::signal::Signal::SIGTERM);
    assert!(again.wait().unwrap().success());
    assert!(!is_mounted(m.path()));
}

/// Killed the moment its mount first answers, podfs leaves no mount behind: its guard is
/// told of the mount before the session serves a single request. (The guard used to be
/// started just after serving began, and a podfs killed in between left a dead mount.)
fn a_podfs_killed_as_soon_as_its_mount_answers_leaves_no_mount() {
    let home = Home::fixture(&INSOMNIA, "live");
    for round in 0..20 {
        let base = tempdir();
        let mnt = base.path().join("m");
        std::fs::create_dir(&mnt).unwrap();
        let _unmount = Unmount(mnt.clone());
        let mut podfs = Command::new(BIN)
            .arg("mount")
            .arg(&mnt)
            .arg("--home")
            .arg(home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The first answer: `parent` is found only through the mount.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::symlink_metadata(mnt.join("parent")).is_err() {
            assert!(podfs.try_wait().unwrap().is_none(), "podfs exited early");
            assert!(std::time::Instant::now() < deadline, "never mounted");
            std::thread::yield_now();
        }
        signal(podfs.id(), nix::sys::signal::Signal::SIGKILL);
        podfs.wait().unwrap();
        assert!(
            eventually(Duration::from_secs(20), || !is_mounted(&mnt)),
            "round {round}: the mount outlived a podfs killed as it began to serve"
        );
    }
}

fn unmount_takes_relative_paths_and_trailing_slashes() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    let parent = m.path().parent().unwrap();
    let name = m.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(podfs_in(&["unmount", &format!("{name}/")], Some(parent)), 0);
    wait_for(Duration::from_secs(5), || !m.is_mounted());
}

fn a_second_mount_on_a_podfs_mount_is_refused() {
    let home = Home::fixture(&INSOMNIA, "live");
    let m = Mount::new(&home);
    assert_eq!(podfs(&["mount", &m.s(), "--home", &home.s()]), 1);
    // Whatever the home holds, even an empty one (an empty mount looks like an empty dir).
    let empty = Home::fixture(&INSOMNIA, "live");
    std::fs::remove_dir_all(empty.path().join("pods")).unwrap();
    std::fs::create_dir_all(empty.path().join("pods")).unwrap();
    let first = Mount::new(&empty);
    assert_eq!(podfs(&["mount", &first.s(), "--home", &empty.s()]), 1);
    assert_eq!(
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some(&first.s()))
            .count(),
        1,
        "nothing was stacked"
    );
    drop(m);
}

fn a_mount_with_a_bad_option_fails_as_a_mount() {
    let home = Home::fixture(&INSOMNIA, "live");
    let dir = tempdir();
    let code = podfs(&[
        "mount",
        dir.path().to_str().unwrap(),
        "--home",
        &home.s(),
        "-o",
        "no_such_option=1",
    ]);
    force_unmount(dir.path());
    assert_eq!(code, 32);
}

/// The home is found through each generation's own variable, the generation is read off
/// the disk, and the first log line says which one is served.
fn each_generation_is_mounted_from_its_own_environment_variable() {
    for (gen, var) in [(&INSOMNIA, "INSOMNIA_HOME"), (&YOI, "YOI_HOME")] {
        let home = Home::fixture(gen, "live");
        let mnt = tempdir();
        let log = temp_file();
        let mut podfs = Command::new(BIN)
            .args(["--log-file", log.path().to_str().unwrap(), "mount"])
            .arg(mnt.path())
            .env_remove("INSOMNIA_HOME")
            .env_remove("YOI_HOME")
            .env(var, home.path())
            .env("HOME", "/nonexistent")
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(10), || is_mounted(mnt.path()));
        let listed = ok(&format!("ls {}/parent", mnt.path().display()));
        signal(podfs.id(), nix::sys::signal::Signal::SIGTERM);
        assert!(podfs.wait().unwrap().success());
        assert_eq!(listed, "child1\nchild2\nchild3\n", "{var}");
        let first = std::fs::read_to_string(log.path()).unwrap();
        let first = first.lines().next().unwrap_or_default().to_string();
        assert!(first.contains(gen.id) && first.contains(var), "{first}");
    }
}

/// mount(8) and fstab pass only `-o` options: the log file and level come that way too.
fn a_background_mount_logs_where_its_options_say() {
    let home = Home::fixture(&INSOMNIA, "live");
    let mnt = tempdir();
    let logs = tempdir();
    let log = logs.path().join("podfs.log");
    let code = podfs(&[
        "mount",
        "--daemon",
        mnt.path().to_str().unwrap(),
        "--home",
        &home.s(),
        "-o",
        &format!("ro,log_level=debug,log_file={}", log.display()),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        ok(&format!("ls {}/parent", mnt.path().display())),
        "child1\nchild2\nchild3\n"
    );
    assert_eq!(podfs(&["unmount", mnt.path().to_str().unwrap()]), 0);
    wait_for(Duration::from_secs(10), || !is_mounted(mnt.path()));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("serving insomnia-5472"), "{text}");
    assert!(text.contains("DEBUG"), "log_level=debug was not applied");
}

/// The harness's own promise, through this very binary: a test whose need is unmet is
/// reported as ignored and counted in the closing line, never as passed; under `CI=true`
/// it fails. (The machine output of the test harness is checked, not a message of podfs.)
fn a_test_that_cannot_run_is_counted_as_not_run_and_fails_under_ci() {
    let me = std::env::current_exe().unwrap();
    let run = |ci: bool| {
        let mut cmd = Command::new(&me);
        cmd.args(["a_missing_mount_point_is_a_usage_error", "--exact"])
            .env(PRETEND_NO_FUSE, "1")
            .env_remove("CI");
        if ci {
            cmd.env("CI", "true");
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, out) = run(false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 passed; 0 failed; 1 ignored"), "{out}");
    let closing = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        closing.starts_with("not run in this test binary: 1 (no usable /dev/fuse: 1)"),
        "{closing}"
    );
    let (code, out) = run(true);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("0 passed; 1 failed; 0 ignored"), "{out}");
}
