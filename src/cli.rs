//! The command line: `podfs mount`, `podfs demo`, `podfs unmount`, and the hidden
//! `podfs pod` that runs one reference pod (used by the demo and by the tests).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::{Error, Result};
use crate::fs::PodFs;
use crate::mount::{self, MountSettings};
use crate::paths::{Overrides, Paths};
use crate::protocol::Timeouts;
use crate::registry::Registry;

#[derive(Debug, Parser)]
#[command(
    name = "podfs",
    version,
    about = "Browse and steer an insomnia pod's spawned children as files",
    long_about = "podfs mounts the registry of spawned child pods of the insomnia runtime as a \
                  filesystem: one directory per parent pod, one per child, with control files \
                  (socket, scope, cursor, output, log, input, status, callback). `rm -r` of a \
                  child stops it and reclaims its delegated scope."
)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG wins.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount an insomnia home; stays in the foreground until unmounted or interrupted.
    Mount(MountArgs),
    /// Start a throw-away home with live demo pods and mount it.
    Demo(DemoArgs),
    /// Unmount a podfs mount point.
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Run one reference pod that speaks the runtime's socket protocol (for demo and tests).
    #[command(hide = true)]
    Pod(crate::demo::pod::PodArgs),
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount (an existing, empty directory).
    pub mountpoint: PathBuf,
    /// The insomnia home (like INSOMNIA_HOME): data in DIR, runtime files in DIR/run.
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// The data dir (pods/<name>/metadata.json live here); overrides --home.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The runtime dir (pods.json and sockets live here); overrides --home.
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    #[command(flatten)]
    pub mount: MountFlags,
    #[command(flatten)]
    pub timeouts: TimeoutFlags,
}

#[derive(Debug, Args, Clone)]
pub struct MountFlags {
    /// Let other users use the mount (needs user_allow_other in /etc/fuse.conf unless root);
    /// the kernel then enforces the file modes (default_permissions).
    #[arg(long)]
    pub allow_other: bool,
    /// Mount options, comma-separated, passed through (e.g. -o ro,allow_other).
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// FUSE request threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Every bound, in milliseconds, for tests and slow machines.
#[derive(Debug, Args, Clone)]
pub struct TimeoutFlags {
    /// connect() to a pod socket.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub connect_timeout_ms: u64,
    /// Status probe: reading the prelude up to the Snapshot.
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    pub probe_timeout_ms: u64,
    /// Each read or write of a conversation with a pod.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub io_timeout_ms: u64,
    /// rmdir: how long a child may take to stop before EBUSY.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub stop_timeout_ms: u64,
    /// rmdir: how long a live parent may take to record the reclaim before EIO.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub confirm_timeout_ms: u64,
    /// rmdir: how long to wait for the pods.json lock.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub lock_timeout_ms: u64,
}

impl TimeoutFlags {
    pub fn timeouts(&self) -> Timeouts {
        let ms = Duration::from_millis;
        Timeouts {
            connect: ms(self.connect_timeout_ms),
            probe: ms(self.probe_timeout_ms),
            prelude: ms(self.io_timeout_ms),
            answer: ms(self.io_timeout_ms),
            stop_wait: ms(self.stop_timeout_ms),
            confirm_wait: ms(self.confirm_timeout_ms),
            lock_wait: ms(self.lock_timeout_ms),
            ..Timeouts::default()
        }
    }
}

impl MountFlags {
    pub fn settings(&self, fsname: String) -> MountSettings {
        let allow_other =
            self.allow_other || self.options.iter().any(|o| o.trim() == "allow_other");
        MountSettings {
            allow_other,
            options: self.options.clone(),
            threads: self.threads,
            fsname,
        }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to mount (created if missing; must be empty).
    pub mountpoint: PathBuf,
    /// How many live demo children the demo parent has.
    #[arg(long, default_value_t = 3)]
    pub children: usize,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Mount(args) => run_mount(args),
        Command::Demo(args) => crate::demo::run(&args),
        Command::Unmount { mountpoint } => mount::unmount_path(&mountpoint),
        Command::Pod(args) => crate::demo::pod::run(args),
    }
}

fn run_mount(args: MountArgs) -> Result<()> {
    let overrides = Overrides {
        home: args.home.clone(),
        data_dir: args.data_dir.clone(),
        runtime_dir: args.runtime_dir.clone(),
    };
    let paths = Paths::from_env(&overrides)?;
    if !paths.data.is_dir() {
        return Err(Error::Usage(format!(
            "insomnia home {} does not exist; pass --home DIR (or --data-dir) pointing at a home \
             with pods/<name>/metadata.json",
            paths.data.display()
        )));
    }
    let fsname = format!("podfs:{}", paths.data.display());
    let reg = Arc::new(Registry::new(paths, args.timeouts.timeouts()));
    let fs = Arc::new(PodFs::new(reg));
    let mounted = mount::mount(fs, &args.mountpoint, &args.mount.settings(fsname))?;
    eprintln!(
        "podfs: mounted at {}; Ctrl-C to unmount",
        args.mountpoint.display()
    );
    mount::serve_until_signalled(mounted)
}
