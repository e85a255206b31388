//! The manual pages and `--help` texts against the program they describe: every page the
//! build writes has the sections a reader looks for, names only options its command has,
//! and is the one the user guide lists; the mount helper's page documents every option the
//! user guide's own fstab line passes. Texts are matched by structure (sections, option
//! names), never by their prose.
#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

fn main() -> std::process::ExitCode {
    Suite::new()
        .add(
            &Need::Met,
            tests![
                every_page_has_a_synopsis_without_empty_placeholders_and_examples,
                the_user_guide_lists_every_page_the_build_writes,
                help_texts_name_only_options_of_their_own_command,
                the_helper_page_documents_every_option_of_the_guides_fstab_line,
                usage_errors_about_the_home_are_short_lines,
            ],
        )
        .run()
}

/// Every manual page, as (file name, text), written by `podfs man --dir`.
fn pages() -> Vec<(String, String)> {
    let dir = tempdir();
    let _ = ok(&format!("{BIN} man --dir {}", dir.path().display()));
    let mut pages: Vec<(String, String)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read_to_string(e.path()).unwrap())
        })
        .collect();
    pages.sort();
    assert!(pages.len() >= 2, "podfs man --dir wrote {pages:?}");
    pages
}

/// The lines of one `.SH` section of a roff page.
fn section<'a>(page: &'a str, name: &str) -> Vec<&'a str> {
    let mut lines = page.lines().skip_while(|l| {
        l.strip_prefix(".SH ")
            .map(|h| h.trim_matches('"'))
            .is_none_or(|h| h != name)
    });
    lines.next();
    lines.take_while(|l| !l.starts_with(".SH ")).collect()
}

fn every_page_has_a_synopsis_without_empty_placeholders_and_examples() {
    for (name, page) in pages() {
        let synopsis = section(&page, "SYNOPSIS").join("\n");
        assert!(!synopsis.trim().is_empty(), "{name} has no SYNOPSIS");
        // An option whose value has no name renders as `[-o ]` or `<>`.
        let plain = synopsis
            .replace("\\fB", "")
            .replace("\\fI", "")
            .replace("\\fR", "");
        for empty in ["[-o ]", "<>", "[ ]", " ]"] {
            assert!(
                !plain.contains(empty),
                "{name}'s synopsis has an empty placeholder {empty:?}: {plain}"
            );
        }
        let examples = section(&page, "EXAMPLES");
        assert!(
            examples.iter().any(|l| l.starts_with("\\fB")),
            "{name} has no EXAMPLES with a command in them"
        );
    }
}

fn the_user_guide_lists_every_page_the_build_writes() {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/user-guide.md"))
            .unwrap();
    for (name, _) in pages() {
        // `podfs-mount.1` is `podfs-mount(1)` to a reader.
        let (stem, section) = name.rsplit_once('.').unwrap();
        let reference = format!("`{stem}({section})`");
        assert!(
            guide.contains(&reference),
            "docs/user-guide.md does not list {reference}"
        );
    }
}

/// The long options one option line of a `--help` text offers: its leading words, before
/// the description (`-o <OPTIONS>`, `    --home <HOME>`).
fn offered(line: &str) -> Vec<String> {
    line.split_whitespace()
        .take_while(|w| w.starts_with('-') || w.starts_with('<') || w.starts_with('['))
        .map(|w| w.trim_end_matches(','))
        .filter(|w| w.starts_with("--"))
        .map(str::to_string)
        .collect()
}

/// Every `--option` a help text mentions, in its prose too.
fn mentioned(help: &str) -> BTreeSet<String> {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

fn help_texts_name_only_options_of_their_own_command() {
    let top = ok(&format!("{BIN} --help"));
    let commands: Vec<String> = section_of_help(&top, "Commands:")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    assert!(commands.iter().any(|c| c == "mount"), "{top}");
    for command in commands {
        let help = ok(&format!("{BIN} {command} --help"));
        let offered: BTreeSet<String> = section_of_help(&help, "Options:")
            .iter()
            .flat_map(|l| offered(l))
            .collect();
        for option in mentioned(&help) {
            assert!(
                offered.contains(&option),
                "`podfs {command} --help` mentions {option}, which `podfs {command}` does not \
                 take; it offers {offered:?}"
            );
        }
    }
}

/// The lines of a clap help section (`Options:`, `Commands:`), up to the next heading.
fn section_of_help<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = help.lines().skip_while(|l| *l != heading);
    lines.next();
    lines
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn the_helper_page_documents_every_option_of_the_guides_fstab_line() {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/user-guide.md"))
            .unwrap();
    let fstab = guide
        .lines()
        .find(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() == 6 && fields[2] == "fuse.podfs"
        })
        .expect("the user guide has an fstab line");
    let options = fstab
        .split_whitespace()
        .nth(3)
        .expect("fstab's fourth field");
    let (_, helper) = pages()
        .into_iter()
        .find(|(n, _)| n.ends_with(".8"))
        .expect("a section-8 page for the mount helper");
    let documented = section(&helper, "OPTIONS").join("\n");
    for option in options.split(',') {
        let key = option.split_once('=').map_or(option, |(k, _)| k);
        assert!(
            documented.contains(key),
            "mount.fuse.podfs(8) does not document {key}, which the user guide's fstab line uses"
        );
    }
}

/// A usage error about the home is read in a terminal: no line wider than one, and the
/// flag that would fix it named once, not once per choice.
fn usage_errors_about_the_home_are_short_lines() {
    let empty = tempdir();
    let mnt = tempdir();
    let (empty, mnt) = (
        empty.path().display().to_string(),
        mnt.path().display().to_string(),
    );
    let cases = [
        vec!["mount", &mnt, "--home", "/nonexistent/home"],
        vec!["mount", &mnt, "--home", &empty],
        // No home anywhere podfs looks by default.
        vec!["mount", &mnt],
    ];
    for args in cases {
        let out = std::process::Command::new(BIN)
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        for line in err.lines() {
            assert!(
                line.chars().count() <= 160,
                "a line of {} characters: {line}",
                line.chars().count()
            );
        }
        assert_eq!(err.matches("--generation").count(), 1, "{err}");
    }
}
