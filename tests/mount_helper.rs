//! Fitting the FUSE ecosystem: `mount -t fuse.podfs`, an fstab line, `--daemon`, the install
//! script, the manual page and completions.
#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &fuse.and_then(Helper::can_install),
            tests![mount_t_fuse_podfs_and_fstab_lines_work],
        )
        .add(&fuse, tests![daemon_returns_once_the_mount_is_ready])
        .add(
            &Need::Met,
            tests![
                install_script_stages_binary_helper_units_man_page_and_completions,
                man_page_and_completions_come_from_the_cli_definition,
            ],
        )
        .run()
}

const HELPER: &str = "/sbin/mount.fuse.podfs";

/// Put mount-scripts/mount.fuse.podfs in place for mount(8), pointing at the binary under
/// test, and remove it again afterwards.
struct Helper;

impl Helper {
    /// Whether the helper can be put in place: only root may write /sbin, and a helper
    /// already there (a real installation?) is not replaced.
    fn can_install() -> Need {
        Need::root("installing the mount helper into /sbin").and_then(|| {
            if Path::new(HELPER).exists() {
                Need::unmet(
                    "a mount helper is installed already",
                    format!("{HELPER} exists (a real installation?); not replacing it"),
                )
            } else {
                Need::Met
            }
        })
    }

    fn install() -> Helper {
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-scripts/mount.fuse.podfs"),
        )
        .unwrap()
        .replace("@BINDIR@/podfs", BIN);
        std::fs::write(HELPER, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(HELPER, std::fs::Permissions::from_mode(0o755)).unwrap();
        Helper
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER);
    }
}

fn mount_t_fuse_podfs_and_fstab_lines_work() {
    let _helper = Helper::install();
    let home = Home::fixture(&INSOMNIA, "live");
    let mnt = tempdir();
    let m = mnt.path().display().to_string();
    let _guard = Unmount(mnt.path().to_path_buf());

    // mount(8) with the type on the command line; it returns once the mount is ready.
    ok(&format!(
        "mount -t fuse.podfs {} {m} -o allow_other,nofail,_netdev",
        home.s()
    ));
    assert_eq!(ok(&format!("ls {m}/parent")), "child1\nchild2\nchild3\n");
    assert!(ok("cat /proc/mounts").contains(&format!("podfs:{} {m} fuse.podfs", home.s())));
    ok(&format!("umount {m}"));
    wait_for(Duration::from_secs(5), || !is_mounted(mnt.path()));

    // An fstab line (mount -T reads an fstab of our own instead of /etc/fstab).
    let fstab = temp_file();
    std::fs::write(
        fstab.path(),
        format!("{} {m} fuse.podfs defaults,nofail,ro 0 0\n", home.s()),
    )
    .unwrap();
    ok(&format!("mount -T {} {m}", fstab.path().display()));
    assert_eq!(ok(&format!("cat {m}/parent/child1/cursor")), "0\n");
    fails(&format!("echo 1 > {m}/parent/child1/cursor"));
    assert_eq!(
        py_errno(&format!("open('{m}/parent/child1/cursor', 'w')")),
        "EROFS"
    );
    ok(&format!("umount {m}"));
    wait_for(Duration::from_secs(5), || !is_mounted(mnt.path()));
}

fn daemon_returns_once_the_mount_is_ready() {
    let home = Home::fixture(&INSOMNIA, "live");
    let mnt = tempdir();
    let _guard = Unmount(mnt.path().to_path_buf());
    let m = mnt.path().display().to_string();
    let logs = tempdir();
    let log = logs.path().join("daemon.log");
    let out = Command::new(BIN)
        .args([
            "--log-file",
            log.to_str().unwrap(),
            "mount",
            "--daemon",
            &m,
            "--home",
            &home.s(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No waiting: the mount is there when --daemon returns.
    assert_eq!(ok(&format!("ls {m}")), "parent\n");
    ok(&format!("{BIN} unmount {m}"));
    wait_for(Duration::from_secs(5), || !is_mounted(mnt.path()));
    // The background podfs noticed and logged it to --log-file.
    wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("unmounted from outside")
    });

    // A failing daemon mount reports the real error and a non-zero exit.
    std::fs::write(mnt.path().join("x"), b"").unwrap();
    let out = Command::new(BIN)
        .args(["mount", "--daemon", &m, "--home", &home.s()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a non-empty mount point is the user's to fix"
    );
}

/// Run mount-scripts/install.sh with the binary under test; it must succeed.
fn install(args: &[&str], env: (&str, &Path)) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-scripts/install.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .args(["--bin", BIN])
        .env(env.0, env.1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn install_script_stages_binary_helper_units_man_page_and_completions() {
    let stage = tempdir();
    install(&[], ("DESTDIR", stage.path()));
    let read = |rel: &str| {
        std::fs::read_to_string(stage.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    assert!(stage.path().join("usr/local/bin/podfs").exists());
    assert!(read("usr/local/share/man/man1/podfs.1").contains(".TH podfs 1"));
    for page in ["podfs-mount.1", "podfs-demo.1", "podfs-unmount.1"] {
        assert!(read(&format!("usr/local/share/man/man1/{page}")).contains(".TH"));
    }
    assert!(read("usr/local/share/man/man8/mount.fuse.podfs.8").contains("fstab"));
    assert!(read("usr/local/share/bash-completion/completions/podfs").contains("podfs"));
    assert!(read("usr/local/share/zsh/site-functions/_podfs").contains("#compdef podfs"));
    assert!(read("usr/local/share/fish/vendor_completions.d/podfs.fish").contains("podfs"));
    assert!(read("sbin/mount.fuse.podfs").contains("/usr/local/bin/podfs"));
    let unit = read("etc/systemd/system/podfs@.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/podfs --log-level info mount ${PODFS_MOUNTPOINT}"),
        "{unit}"
    );
    assert!(!unit.contains("@BINDIR@"));

    let home = tempdir();
    install(&["--user"], ("HOME", home.path()));
    let unit =
        std::fs::read_to_string(home.path().join(".config/systemd/user/podfs.service")).unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart={}/.local/bin/podfs",
            home.path().display()
        )),
        "{unit}"
    );
    assert!(home.path().join(".local/share/man/man1/podfs.1").exists());
}

fn man_page_and_completions_come_from_the_cli_definition() {
    let man = ok(&format!("{BIN} man"));
    for word in ["podfs", "mount", "demo", "unmount", "completions"] {
        assert!(man.contains(word), "man page lacks {word}");
    }
    let mount_help = ok(&format!("{BIN} mount --help"));
    assert!(
        mount_help.contains("--daemon") && mount_help.contains("--allow-other"),
        "{mount_help}"
    );
    for shell in ["bash", "zsh", "fish"] {
        assert!(
            ok(&format!("{BIN} completions {shell}")).contains("podfs"),
            "{shell}"
        );
    }
    assert_eq!(fails(&format!("{BIN} completions tcsh")), 1);
}
