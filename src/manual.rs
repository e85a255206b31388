//! Manual pages, generated from the command-line definition (so every option and its
//! default is always current), plus the sections a command line cannot describe: the files
//! and their errnos, the exit status, the environment, and the mount(8) helper.
//!
//! The command line is handed in ([`write`], [`pages`]): this module documents whatever
//! [`crate::cli`] defines, and does not depend on it.

use std::io::Write;
use std::path::Path;

use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

use crate::error::{Error, Result};

/// One line per control file: name, mode, what it holds, the errnos it gives.
pub(crate) const FILES: &[(&str, &str)] = &[
    ("socket", "The child's Unix socket path, newline-terminated. Read-only (EACCES on write)."),
    ("scope", "The delegated scope, one rule per line: <read|write> <recursive|exact> <target>. Read-only."),
    ("cursor", "The mount's read position (an item index into the child's history). Write a decimal number: all writes of one open are one value, checked as they arrive (EINVAL at the write that makes it impossible, and the cursor stays unchanged); it takes effect at close."),
    ("output", "New assistant text since the cursor; opening it moves the cursor past that text (a consuming file, like tracefs's trace_pipe). ETIMEDOUT when the child does not answer in the I/O bound; empty for an unreachable child."),
    ("log", "All assistant text of the child's current history, growing live (tail -f works; poll wakes on change). Non-consuming. ETIMEDOUT for a child that does not answer; the last history seen for an unreachable one."),
    ("input", "Write a message: everything written through one open file description is one run, sent when the last descriptor is closed. EFBIG past 64 KiB, EINVAL for bytes that are not UTF-8 or an empty message, EBUSY while the child runs a turn, EHOSTDOWN when it is unreachable; once a write is refused nothing of the message is sent. Reads return nothing."),
    ("status", "idle, running, paused or unreachable, kept current from the child's own events; poll wakes when it changes."),
    ("callback", "The callback address recorded for the child (may be empty). Read-only."),
];

fn page(cmd: clap::Command, extra: impl FnOnce(&mut Roff)) -> std::io::Result<Vec<u8>> {
    let listed = cmd.clone();
    let versioned = cmd.get_version().is_some();
    let has_subcommands = cmd.get_subcommands().any(|c| !c.is_hide_set());
    let man = Man::new(cmd).source(format!("podfs {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = Roff::default();
    if has_subcommands {
        commands_section(&mut roff, &listed);
    }
    extra(&mut roff);
    roff.to_writer(&mut out)?;
    if versioned {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// The commands, each with the page that documents it (clap's own section would name a
/// page for `help` too, which no manual has).
fn commands_section(roff: &mut Roff, cli: &clap::Command) {
    roff.control("SH", ["COMMANDS"]);
    for sub in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = sub.get_name();
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        tagged(
            roff,
            &format!("podfs {name}"),
            &format!("{about}. See podfs-{name}(1)."),
        );
    }
    tagged(
        roff,
        "podfs help [COMMAND]",
        "The help of podfs or of one command (also --help).",
    );
}

fn paragraph(roff: &mut Roff, text: impl Into<Vec<Inline>>) {
    roff.control("PP", []).text(text);
}

fn tagged(roff: &mut Roff, tag: &str, text: &str) {
    roff.control("TP", []).text([bold(tag)]).text([roman(text)]);
}

fn exit_status(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    tagged(roff, "0", "Success.");
    tagged(roff, "1", "A command the user can fix: bad arguments, a missing or non-empty mount point, a path that is already mounted, a runtime home that cannot be found or is ambiguous.");
    tagged(roff, "2", "Any other failure of the system or of a pod.");
    tagged(
        roff,
        "32",
        "The mount itself failed (the kernel or fusermount3 refused it).",
    );
}

fn main_page(cli: &clap::Command) -> std::io::Result<Vec<u8>> {
    page(cli.clone(), |roff| {
        roff.control("SH", ["FILES"]);
        paragraph(roff, [roman("The mount shows one directory per pod of the runtime's durable store, and in it one directory per child in that pod's registry, whether or not the child is reachable. Each child directory holds:")]);
        for (name, what) in FILES {
            tagged(roff, name, what);
        }
        paragraph(roff, [
            bold("rm -r"),
            roman(" (or rmdir) of a child stops it and reclaims its delegated scope: through the parent when it is live, by editing the runtime's files when it is not. EBUSY when the child does not stop within the stop timeout, ENOTEMPTY when it has children of its own, EIO when a live parent does not confirm. "),
            bold("rm -r"),
            roman(" of a parent removes every child and then fails with EPERM on the parent itself; mount with "),
            bold("-o ro"),
            roman(" for a look-only mount. mkdir is EPERM; creating files is EACCES; ioctl is ENOTTY."),
        ]);
        exit_status(roff);
        roff.control("SH", ["ENVIRONMENT"]);
        paragraph(roff, [roman("The home is found as the runtime finds it: INSOMNIA_HOME, INSOMNIA_DATA_DIR, INSOMNIA_RUNTIME_DIR for insomnia; YOI_HOME, YOI_DATA_DIR, YOI_RUNTIME_DIR for yoi; then XDG_DATA_HOME, XDG_RUNTIME_DIR and HOME. RUST_LOG overrides --log-level.")]);
        roff.control("SH", ["SEE ALSO"]);
        paragraph(roff, [roman("podfs-mount(1), podfs-demo(1), podfs-unmount(1), podfs-completions(1), podfs-man(1), mount.fuse.podfs(8), fusermount3(1)")]);
    })
}

fn sub_page(
    cli: &clap::Command,
    name: &str,
    extra: impl FnOnce(&mut Roff),
) -> std::io::Result<Vec<u8>> {
    let mut root = cli.clone();
    root.build();
    let cmd = root.find_subcommand(name).cloned().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no command {name} to document"),
        )
    })?;
    page(cmd, extra)
}

fn helper_page() -> Vec<u8> {
    let mut roff = Roff::default();
    roff.control(
        "TH",
        [
            "mount.fuse.podfs",
            "8",
            "",
            &format!("podfs {}", env!("CARGO_PKG_VERSION")),
        ],
    );
    roff.control("SH", ["NAME"]);
    roff.text([roman("mount.fuse.podfs - mount(8) helper for podfs")]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([
        bold("mount -t fuse.podfs "),
        italic("HOME MOUNTPOINT"),
        roman(" ["),
        bold("-o "),
        italic("OPTIONS"),
        roman("]"),
    ]);
    roff.control("SH", ["DESCRIPTION"]);
    paragraph(&mut roff, [roman("mount(8) runs this helper for the filesystem type fuse.podfs (and fuse3's mount.fuse3 runs podfs itself the same way). It starts "), bold("podfs mount --daemon --home "), italic("HOME MOUNTPOINT"), roman(" and returns once the mount is ready; errors are reported with podfs's exit status.")]);
    roff.control("SH", ["OPTIONS"]);
    tagged(
        &mut roff,
        "ro",
        "A look-only mount: no cursor writes, no messages, no removals.",
    );
    tagged(&mut roff, "allow_other", "Let other users in; the kernel then checks the file modes (default_permissions). Needs user_allow_other in /etc/fuse.conf when not mounted by root.");
    tagged(
        &mut roff,
        "noauto, nofail, _netdev, user, users, defaults, x-*",
        "fstab-only options; dropped before mounting.",
    );
    tagged(
        &mut roff,
        "dev, suid, exec",
        "Ignored: podfs always mounts nodev, nosuid, noexec.",
    );
    roff.control("SH", ["FILES"]);
    tagged(
        &mut roff,
        "/etc/fstab",
        "For example: /home/ada/.insomnia /mnt/pods fuse.podfs noauto,user 0 0",
    );
    exit_status(&mut roff);
    roff.control("SH", ["SEE ALSO"]);
    paragraph(
        &mut roff,
        [roman("podfs(1), podfs-mount(1), mount(8), fstab(5)")],
    );
    roff.render().into_bytes()
}

/// Every page of the command line `cli`: (file name, roff).
pub fn pages(cli: &clap::Command) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = vec![("podfs.1".to_string(), main_page(cli)?)];
    for sub in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = sub.get_name();
        pages.push((format!("podfs-{name}.1"), sub_page(cli, name, exit_status)?));
    }
    pages.push(("mount.fuse.podfs.8".into(), helper_page()));
    Ok(pages)
}

/// `podfs man`: podfs(1) of the command line `cli` to standard output, or every page
/// into `dir`.
pub fn write(dir: Option<&Path>, cli: &clap::Command) -> Result<()> {
    let pages = pages(cli).map_err(|e| Error::io("render the manual pages", e))?;
    match dir {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&pages[0].1)
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("write the manual page", e))
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
            for (name, bytes) in pages {
                std::fs::write(dir.join(&name), bytes)
                    .map_err(|e| Error::io(format!("write {name}"), e))?;
            }
            Ok(())
        }
    }
}
