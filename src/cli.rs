//! The command line: `podfs mount`, `podfs demo`, `podfs unmount`, `podfs man`,
//! `podfs completions`, and the hidden `podfs pod` that runs reference pods (used by the
//! demo and by the tests).
//!
//! Exit status, in the spirit of mount(8): 0 success; 1 a command the user can fix (bad
//! arguments, mount point or home); 2 any other failure; 32 the mount itself failed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::demo::DemoArgs;
use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::mount::{self, MountSettings};
use crate::paths::Overrides;
use crate::pod_client::Timeouts;
use crate::watch::WatchConfig;

#[derive(Debug, Parser)]
#[command(
    name = "podfs",
    version,
    override_usage = "podfs [--log-level LEVEL] [--log-file PATH] COMMAND",
    about = "Browse and steer an agent runtime's spawned child pods as files",
    long_about = "podfs mounts the registry of spawned child pods of the insomnia/yoi agent \
                  runtime as a filesystem: one directory per parent pod, one per child, with \
                  control files (socket, scope, cursor, output, log, input, status, callback). \
                  `rm -r` of a child stops it and reclaims its delegated scope."
)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG wins.
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
    /// Append logs to this file instead of standard error.
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log level and file: `--log-level` and `--log-file`, or for a mount, the
    /// `-o log_level=` and `-o log_file=` options that mount(8) and fstab can pass.
    pub fn log_settings(&self) -> (String, Option<PathBuf>) {
        let option = |key: &str| match &self.command {
            Command::Mount(m) => m
                .mount
                .options
                .iter()
                .rev()
                .find_map(|o| o.trim().strip_prefix(key).map(str::to_string)),
            _ => None,
        };
        let level = option("log_level=").unwrap_or_else(|| self.log_level.clone());
        let file = self
            .log_file
            .clone()
            .or_else(|| option("log_file=").map(PathBuf::from));
        (level, file)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a runtime home; stays in the foreground until unmounted or interrupted.
    #[command(
        override_usage = "podfs mount MOUNTPOINT [--home DIR | --data-dir DIR --runtime-dir DIR] \
                          [--generation NAME] [--daemon] [--allow-other] [-o OPTIONS] [OPTIONS]"
    )]
    Mount(MountArgs),
    /// Start a throw-away home with live demo pods and mount it.
    #[command(override_usage = "podfs demo [MOUNTPOINT] [--children N] [--generation NAME]")]
    Demo(DemoArgs),
    /// Unmount a podfs mount point.
    #[command(override_usage = "podfs unmount MOUNTPOINT")]
    Unmount {
        /// The mount point (relative paths and trailing slashes are fine).
        mountpoint: PathBuf,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to standard output.
    #[command(override_usage = "podfs completions SHELL")]
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages: podfs(1) to standard output, or every page into DIR.
    #[command(override_usage = "podfs man [--dir DIR]")]
    Man {
        /// Write every page (podfs.1, one per command, mount.fuse.podfs.8) into this
        /// directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Run reference pods that speak the runtime's socket protocol (for demo and tests).
    #[command(hide = true)]
    Pod(crate::demo::pod::PodArgs),
    /// Clean up after a podfs that dies without doing so (started by podfs itself).
    #[command(hide = true)]
    Guard,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount (an existing, empty directory).
    pub mountpoint: PathBuf,
    /// The runtime home (like INSOMNIA_HOME or YOI_HOME): data in DIR, runtime files in
    /// DIR/run. Default: found like the runtime finds it (the variables of each generation,
    /// then their default directories).
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// The data dir (pods/<name>/metadata.json or workers/<name>/metadata.json); overrides
    /// --home.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The runtime dir (the allocation table and sockets live here); overrides --home.
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// The runtime generation to serve, instead of reading it off the home's layout.
    #[arg(long, value_name = "NAME", value_parser = Generation::value_parser())]
    pub generation: Option<&'static Generation>,
    /// Return once the mount is ready and keep serving in the background (logging to
    /// --log-file, else to the system log).
    #[arg(long)]
    pub daemon: bool,
    #[command(flatten)]
    pub mount: MountFlags,
    #[command(flatten)]
    pub timeouts: TimeoutFlags,
    #[command(flatten)]
    pub watch: WatchFlags,
}

#[derive(Debug, Args, Clone)]
pub struct MountFlags {
    /// Let other users use the mount (needs user_allow_other in /etc/fuse.conf unless root);
    /// the kernel then enforces the file modes (default_permissions).
    #[arg(long)]
    pub allow_other: bool,
    /// Mount options, comma-separated (e.g. -o ro for a look-only mount; log_file=PATH and
    /// log_level=LEVEL set the log, as mount(8) and fstab pass them).
    #[arg(short = 'o', value_delimiter = ',', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// FUSE request threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Threads that run removals (stopping children, editing files); more removals wait.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Mount through fusermount3 even when a direct mount would be allowed.
    #[arg(long, hide = true)]
    pub fusermount: bool,
    /// Find registry changes by stat instead of inotify.
    #[arg(long, hide = true)]
    pub no_inotify: bool,
}

/// Every bound, in milliseconds, for tests and slow machines.
#[derive(Debug, Args, Clone)]
pub struct TimeoutFlags {
    /// connect() to a pod socket.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub connect_timeout_ms: u64,
    /// How long a `status` read waits for a child that has not answered yet.
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    pub status_timeout_ms: u64,
    /// Each step of a conversation with a pod; `output` and `log` of a child that does not
    /// answer fail with ETIMEDOUT after this.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub io_timeout_ms: u64,
    /// rmdir: how long a child may take to stop before EBUSY.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub stop_timeout_ms: u64,
    /// rmdir: how long a live parent may take to record the reclaim before EIO.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub confirm_timeout_ms: u64,
    /// rmdir: how long to wait for the allocation table's lock.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub lock_timeout_ms: u64,
    /// The kernel's FUSE request timeout, past which it aborts the whole mount (Linux 6.14
    /// and later; 0 for none). Every wait in podfs ends safely before it. Default: read from
    /// /proc/sys/fs/fuse (default_request_timeout, capped by max_request_timeout).
    #[arg(long, value_name = "SECS")]
    pub request_timeout_secs: Option<u64>,
}

impl TimeoutFlags {
    /// The kernel's request timeout: as given, else as the kernel is configured.
    pub fn kernel_request_timeout(&self) -> Option<Duration> {
        match self.request_timeout_secs {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => crate::fs::kernel_request_timeout(),
        }
    }

    pub fn timeouts(&self) -> Timeouts {
        let ms = Duration::from_millis;
        Timeouts {
            connect: ms(self.connect_timeout_ms),
            status_wait: ms(self.status_timeout_ms),
            io: ms(self.io_timeout_ms),
            stop_wait: ms(self.stop_timeout_ms),
            confirm_wait: ms(self.confirm_timeout_ms),
            lock_wait: ms(self.lock_timeout_ms),
            ..Timeouts::default()
        }
    }
}

/// How long children stay watched and how much of their text podfs keeps.
#[derive(Debug, Args, Clone)]
pub struct WatchFlags {
    /// A watched child nobody has looked at for this long is no longer watched.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub watch_idle_secs: u64,
    /// What all watches may hold (histories, lines being read, open output snapshots);
    /// least recently used idle watches are dropped first, and a child whose data does
    /// not fit answers EFBIG.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub memory_budget_mib: usize,
    /// How long a message whose writer was told it was accepted waits for a child busy
    /// with another client's turn.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub delivery_timeout_secs: u64,
    /// How long an open of `input` that wrote part of a message keeps the child reserved
    /// without another write or a close; after that another writer may take the child.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub input_hold_secs: u64,
}

impl WatchFlags {
    pub fn config(&self) -> WatchConfig {
        WatchConfig {
            idle: Duration::from_secs(self.watch_idle_secs),
            budget: self.memory_budget_mib << 20,
            delivery_wait: Duration::from_secs(self.delivery_timeout_secs),
            input_hold: Duration::from_secs(self.input_hold_secs),
            ..WatchConfig::default()
        }
    }
}

/// Options that belong to mount(8) and /etc/fstab, or to podfs itself (its log), not to
/// the kernel: dropped, as mount.fuse3 drops the former.
fn fstab_only(option: &str) -> bool {
    matches!(
        option,
        "" | "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "users"
            | "nouser"
            | "nofail"
            | "_netdev"
            | "rw"
    ) || option.starts_with("x-")
        || option.starts_with("comment=")
        || option.starts_with("log_file=")
        || option.starts_with("log_level=")
}

impl MountFlags {
    pub fn settings(&self, fsname: String) -> MountSettings {
        let options: Vec<String> = self
            .options
            .iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !fstab_only(o))
            .collect();
        let allow_other = self.allow_other || options.iter().any(|o| o == "allow_other");
        MountSettings {
            allow_other,
            options: options.into_iter().filter(|o| o != "allow_other").collect(),
            threads: self.threads,
            fsname,
            force_fusermount: self.fusermount,
        }
    }
}

/// mount(8) runs `mount.fuse` for `-t fuse.podfs`, which runs `podfs SOURCE MOUNTPOINT -o
/// OPTIONS` and expects it to return once mounted (as sshfs does). Translate that calling
/// convention into `podfs mount --daemon --home SOURCE MOUNTPOINT -o OPTIONS`.
pub fn from_mount_helper_convention(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use std::ffi::OsString;
    let known = [
        "mount",
        "demo",
        "unmount",
        "completions",
        "man",
        "pod",
        "guard",
        "help",
    ];
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let looks_like_path =
        |a: Option<&OsString>| a.and_then(|a| a.to_str()).is_some_and(|a| a.contains('/'));
    if args.len() < 3
        || first.starts_with('-')
        || known.contains(&first)
        || !looks_like_path(args.get(2))
    {
        return args;
    }
    let mut out: Vec<OsString> = vec![
        args[0].clone(),
        "mount".into(),
        "--daemon".into(),
        "--home".into(),
    ];
    out.push(args[1].clone());
    out.push(args[2].clone());
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            // mount(8) passes these to helpers; none means anything to podfs.
            Some("-n" | "-s" | "-f" | "-v") => {}
            Some("-t" | "-N") => {
                rest.next();
            }
            _ => out.push(arg.clone()),
        }
    }
    out
}

pub fn run(cli: Cli) -> Result<()> {
    let logs_to_file = cli.log_settings().1.is_some();
    match cli.command {
        Command::Mount(args) => run_mount(args, logs_to_file),
        Command::Demo(args) => crate::demo::run(&args),
        Command::Unmount { mountpoint } => mount::unmount_path(&mountpoint),
        Command::Completions { shell } => {
            // Rendered first: clap_complete panics on a failed write (a full disk, a
            // closed pipe); podfs reports it as a failure.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut visible_command(), "podfs", &mut script);
            let mut out = std::io::stdout().lock();
            out.write_all(&script)
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("write the completions", e))
        }
        Command::Man { dir } => crate::manual::write(dir.as_deref(), &Cli::command()),
        Command::Pod(args) => crate::demo::pod::run(args),
        Command::Guard => crate::guard::run(),
    }
}

/// The command line as users see it: without the hidden commands podfs runs itself
/// (`pod`, `guard`), which completions must not offer.
pub fn visible_command() -> clap::Command {
    let full = Cli::command();
    let mut visible = clap::Command::new("podfs")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned());
    for sub in full.get_subcommands().filter(|c| !c.is_hide_set()) {
        visible = visible.subcommand(sub.clone());
    }
    visible
}

fn run_mount(args: MountArgs, logs_to_file: bool) -> Result<()> {
    let overrides = Overrides {
        home: args.home.clone(),
        data_dir: args.data_dir.clone(),
        runtime_dir: args.runtime_dir.clone(),
        generation: args.generation,
    };
    let located = crate::paths::locate_from_env(&overrides)?;
    let watch = args.watch.config();
    let home = Arc::new(crate::home::Home::open(
        &located,
        crate::home::read_cap(watch.budget),
    )?);
    // Checked before daemonising, so the caller sees the error and its exit status.
    let mountpoint = mount::absolute(&args.mountpoint)?;
    refuse_a_mount_over_the_home(&mountpoint, &home)?;
    mount::preflight(&mountpoint)?;
    if args.daemon && std::env::var_os(crate::daemon::CHILD_ENV).is_none() {
        return crate::daemon::start_in_background();
    }
    let generation = home.generation();
    let kernel_timeout = args.timeouts.kernel_request_timeout();
    let limit = kernel_timeout.map(crate::fs::request_limit);
    tracing::info!(
        generation = generation.id,
        versions = generation.versions,
        home = %home.data_path().display(),
        owner = home.owner(),
        found_by = %located.source,
        kernel_request_timeout_secs = kernel_timeout.map(|t| t.as_secs()),
        every_wait_ends_within_ms = limit.map(|l| l.as_millis() as u64),
        "serving {}{}", generation.id,
        match limit {
            Some(l) => format!(
                "; the kernel aborts FUSE requests after {} s, so every wait ends within {} ms \
                 (a reader waiting for a turn then gets EAGAIN)",
                kernel_timeout.map_or(0, |t| t.as_secs()),
                l.as_millis()
            ),
            None => String::new(),
        }
    );
    for (dir, rule) in home.runtime_dirs() {
        tracing::info!(runtime = %dir.display(), chosen_by = %rule, "runtime dir");
    }
    if !crate::confine::proc_fd_works() {
        tracing::error!(
            "/proc is not mounted: podfs connects to pod sockets only through /proc/self/fd, \
             so every child's files answer EACCES until it is"
        );
    }
    let signals = mount::StopSignals::install()?;
    let fsname = format!("podfs:{}", home.data_path().display());
    let fs = Arc::new(crate::fs::build(
        home,
        args.timeouts.timeouts().within(limit),
        watch,
        &crate::fs::Settings {
            pool_threads: args.mount.workers,
            request_limit: limit,
            ..crate::fs::Settings::default()
        },
        !args.mount.no_inotify,
    )?);
    fs.survey();
    let mounted = mount::mount(fs.clone(), &mountpoint, &args.mount.settings(fsname))?;
    if args.daemon {
        crate::daemon::report_ready(logs_to_file);
    } else {
        eprintln!(
            "podfs: mounted at {}; Ctrl-C to unmount",
            mountpoint.display()
        );
    }
    signals.serve(mounted, || fs.report())
}

/// A mount point that is the home, one of its directories, or lies inside or above one
/// would make podfs read the home through its own mount (every request thread then waits
/// for itself), or hide the home from the runtime: refused, with where to mount instead.
fn refuse_a_mount_over_the_home(mountpoint: &Path, home: &crate::home::Home) -> Result<()> {
    let mp = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    for dir in home.dirs() {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let how = if mp == dir {
            "is"
        } else if mp.starts_with(&dir) {
            "lies inside"
        } else if dir.starts_with(&mp) {
            "lies above"
        } else {
            continue;
        };
        return Err(Error::Usage(format!(
            "mount point {} {how} {}, a directory of the runtime home podfs serves: podfs \
             would read the home through its own mount. Mount it elsewhere, e.g. ~/pods",
            mp.display(),
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn mount_helper_convention_becomes_a_daemon_mount() {
        let got = from_mount_helper_convention(args(&[
            "podfs",
            "/home/a/.insomnia",
            "/mnt/pods",
            "-n",
            "-o",
            "allow_other,nofail",
            "-t",
            "fuse.podfs",
        ]));
        assert_eq!(
            got,
            args(&[
                "podfs",
                "mount",
                "--daemon",
                "--home",
                "/home/a/.insomnia",
                "/mnt/pods",
                "-o",
                "allow_other,nofail"
            ])
        );
        let normal = args(&["podfs", "mount", "/mnt/pods", "--home", "/h"]);
        assert_eq!(from_mount_helper_convention(normal.clone()), normal);
        let demo = args(&["podfs", "demo", "/tmp/x"]);
        assert_eq!(from_mount_helper_convention(demo.clone()), demo);
    }

    #[test]
    fn fstab_options_are_dropped_and_allow_other_is_understood() {
        let flags = MountFlags {
            allow_other: false,
            options: vec![
                "defaults".into(),
                "nofail".into(),
                "_netdev".into(),
                "x-systemd.automount".into(),
                "allow_other".into(),
                "ro".into(),
            ],
            threads: 2,
            workers: 4,
            fusermount: false,
            no_inotify: false,
        };
        let s = flags.settings("podfs".into());
        assert!(s.allow_other);
        assert_eq!(s.options, ["ro"]);
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_offer_the_visible_commands_and_the_generation_names() {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut visible_command(),
            "podfs",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("mount") && script.contains("demo"));
        assert!(!script.contains("guard"), "a hidden command is offered");
        assert!(!script.contains(" pod "), "a hidden command is offered");
        assert!(script.contains("insomnia-5472 yoi-pod yoi-worker-485918eb"));
    }
}

#[cfg(test)]
mod manual_tests {
    use super::Cli;
    use crate::manual::{pages as all_pages, FILES};
    use clap::CommandFactory;

    fn pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
        all_pages(&Cli::command())
    }

    #[test]
    fn every_page_names_its_options_and_defaults() {
        let pages = pages().unwrap();
        let text = |name: &str| {
            String::from_utf8(pages.iter().find(|p| p.0 == name).unwrap().1.clone()).unwrap()
        };
        let main = text("podfs.1");
        for file in FILES {
            assert!(main.contains(file.0), "FILES lists {}", file.0);
        }
        assert!(main.contains("EXIT STATUS") && main.contains("ETIMEDOUT"));
        let mount = text("podfs-mount.1");
        for option in [
            "\\-\\-home",
            "\\-\\-generation",
            "\\-\\-io\\-timeout\\-ms",
            "\\-\\-memory\\-budget\\-mib",
            "default: 5000",
        ] {
            assert!(mount.contains(option), "podfs-mount(1) lacks {option}");
        }
        assert!(text("podfs-demo.1").contains("\\-\\-children"));
        assert!(text("mount.fuse.podfs.8").contains("fstab"));
    }

    #[test]
    fn every_page_a_page_names_is_written() {
        let pages = pages().unwrap();
        let written: Vec<String> = pages
            .iter()
            .map(|(name, _)| {
                let (stem, section) = name.rsplit_once('.').unwrap();
                format!("{}({section})", stem.replace('-', "\\-"))
            })
            .collect();
        for (name, bytes) in &pages {
            let text = String::from_utf8(bytes.clone()).unwrap();
            for word in text.split(|c: char| c.is_whitespace() || c == ',') {
                let named = word.trim_end_matches('.');
                let ours = named.starts_with("podfs") || named.starts_with("mount.fuse.podfs");
                if ours && named.ends_with(')') && named.contains('(') {
                    assert!(
                        written.iter().any(|w| w == named),
                        "{name} names {named}, which is not written"
                    );
                }
            }
        }
    }
}
