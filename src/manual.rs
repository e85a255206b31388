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
    ("output", "New assistant text since the cursor; opening it moves the cursor past that text (a consuming file, like tracefs's trace_pipe): one open takes all of it, so head -c 3 output consumes everything new. While the child runs a turn, an open waits for the turn to end, like a pipe's reader for its writer (O_NONBLOCK does not wait; a signal ends the wait with nothing taken; EAGAIN where the kernel's FUSE request timeout would come first). ETIMEDOUT when the child does not answer in the I/O bound; empty for an unreachable child."),
    ("log", "All assistant text of the child's current history, growing live (tail -f works). Non-consuming, never waits. ETIMEDOUT for a child that does not answer; the last history seen for an unreachable one."),
    ("input", "Write a message: everything written through one open file description is one run, sent when the last descriptor is closed. EFBIG past 64 KiB, EINVAL for bytes that are not UTF-8 or an empty message, EBUSY while the child runs a turn, EHOSTDOWN when it is unreachable; once a write is refused nothing of the message is sent. Reads return nothing."),
    ("status", "idle, running, paused or unreachable, kept current from the child's own events. poll, select and epoll wake on every change of status, log and output; inotify never fires on these files (nothing writes them: the content comes from the child)."),
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

/// One-liners in the spirit of sysfs's and tracefs's pages: ask, read, watch, remove.
const MAIN_EXAMPLES: &[(&str, &str)] = &[
    ("ls /mnt/pods/lead", "The children of the parent pod lead."),
    ("cat /mnt/pods/lead/*/status", "What each child is doing."),
    ("echo \"summarise docs/\" > /mnt/pods/lead/reviewer/input; cat /mnt/pods/lead/reviewer/output", "Ask a child something and read its reply (output waits for the turn to end)."),
    ("tail -f /mnt/pods/lead/reviewer/log", "Follow a child's text as it writes it."),
    ("grep -r --exclude output error /mnt/pods/lead", "Search every child's text without consuming output."),
    ("rm -r /mnt/pods/lead/reviewer", "Stop a child and reclaim its delegated scope."),
];

const MOUNT_EXAMPLES: &[(&str, &str)] = &[
    (
        "podfs mount ~/pods",
        "Mount the home the runtime uses, in the foreground; Ctrl-C unmounts.",
    ),
    (
        "podfs mount ~/pods --home ~/.insomnia --daemon",
        "Name the home, and return once mounted.",
    ),
    ("podfs mount ~/pods -o ro", "A look-only mount."),
];

const DEMO_EXAMPLES: &[(&str, &str)] = &[
    (
        "podfs demo",
        "A live demo parent with three children, mounted in a temporary directory.",
    ),
    (
        "podfs demo ~/pods --children 5",
        "Five children, mounted at ~/pods.",
    ),
];

fn examples(roff: &mut Roff, list: &[(&str, &str)]) {
    roff.control("SH", ["EXAMPLES"]);
    for (command, what) in list {
        tagged(roff, command, what);
    }
}

fn main_page(cli: &clap::Command) -> std::io::Result<Vec<u8>> {
    page(cli.clone(), |roff| {
        roff.control("SH", ["FILES"]);
        paragraph(roff, [roman("The top of the mount lists the parents: every pod of the runtime's durable store that has children, or had some (any other pod is reachable by name, and empty). Each parent holds one directory per child in its registry, whether or not the child is reachable. Each child directory holds:")]);
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
        examples(roff, MAIN_EXAMPLES);
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
    tagged(
        &mut roff,
        "log_file=PATH",
        "Where the mount (which runs in the background) logs; without it, the system log.",
    );
    tagged(
        &mut roff,
        "log_level=LEVEL",
        "The log filter (error, warn, info, debug, trace); info without it.",
    );
    roff.control("SH", ["FILES"]);
    tagged(
        &mut roff,
        "/etc/fstab",
        "For example: /home/ada/.insomnia /mnt/pods fuse.podfs noauto,user 0 0",
    );
    exit_status(&mut roff);
    examples(
        &mut roff,
        &[
            ("mount -t fuse.podfs /home/ada/.insomnia /mnt/pods -o allow_other", "Mount ada's home for everyone to look at."),
            ("/home/ada/.insomnia /mnt/pods fuse.podfs defaults,allow_other,nofail,log_file=/var/log/podfs.log 0 0", "The same as an /etc/fstab line, logging to a file."),
        ],
    );
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
        let list: &[(&str, &str)] = match name {
            "mount" => MOUNT_EXAMPLES,
            "demo" => DEMO_EXAMPLES,
            "unmount" => &[("podfs unmount ~/pods", "Unmount a podfs mount.")],
            "completions" => &[(
                "podfs completions bash > ~/.local/share/bash-completion/completions/podfs",
                "Install bash completions for yourself.",
            )],
            "man" => &[(
                "podfs man --dir /tmp/podfs-man && man -l /tmp/podfs-man/podfs.1",
                "Write every page and read one.",
            )],
            _ => &[],
        };
        pages.push((
            format!("podfs-{name}.1"),
            sub_page(cli, name, |roff| {
                exit_status(roff);
                if !list.is_empty() {
                    examples(roff, list);
                }
            })?,
        ));
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
