//! `podfs demo`: a throw-away home with a live demo parent and live demo children, mounted,
//! with a short tour printed, and everything removed again on Ctrl-C.
//!
//! The demo must end however its pods behave: Ctrl-C asks every pod to stop (SIGTERM),
//! kills what has not stopped after a bound, reaps every process it started (children
//! removed with `rm -r` during the demo are reaped as they exit), removes the home and
//! exits. A second Ctrl-C skips the wait.

pub mod home;
pub mod pod;
mod talk;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::mount::{self, MountSettings};
use crate::name::PodName;
use crate::paths::Paths;
use crate::pod_client::Timeouts;

/// The first task each demo child runs at start, as a spawned child does (`{name}` is its
/// name): its reply is what the first `cat output` of the README's example shows.
pub const CHILD_TASK: &str = "{name} task: describe your work directory";

/// How long pods get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to mount (created if missing; must be empty). Default: a new temporary
    /// directory, removed again at exit.
    pub mountpoint: Option<PathBuf>,
    /// How many live demo children the demo parent has.
    #[arg(long, default_value_t = 3)]
    pub children: usize,
    /// The runtime generation the demo pods speak and the home is laid out for.
    #[arg(long, default_value = "insomnia-5472", value_parser = Generation::value_parser())]
    pub generation: &'static Generation,
}

/// Reference pod processes, stopped and reaped when dropped.
pub struct Pods {
    children: Vec<(String, Child)>,
}

impl Pods {
    /// Start one `podfs pod` process for `parent` and one per child in `home`, and wait
    /// until every socket answers.
    pub fn start(
        exe: &Path,
        home: &Path,
        gen: &'static Generation,
        parent: &str,
        children: &[String],
    ) -> Result<Pods> {
        Self::start_with(exe, home, gen, parent, children, &[])
    }

    /// [`Pods::start`] with extra arguments for the children (`--turn-ms`, ...).
    pub fn start_with(
        exe: &Path,
        home: &Path,
        gen: &'static Generation,
        parent: &str,
        children: &[String],
        child_args: &[&str],
    ) -> Result<Pods> {
        let paths = Paths::for_home(home, gen);
        let mut pods = Pods {
            children: Vec::new(),
        };
        let spawn = |args: Vec<String>| -> Result<Child> {
            Command::new(exe)
                .args([
                    "--log-level",
                    "warn",
                    "pod",
                    "--generation",
                    gen.id,
                    "--home",
                ])
                .arg(home)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| Error::io(format!("start demo pod with {}", exe.display()), e))
        };
        pods.children.push((
            parent.to_string(),
            spawn(vec!["--name".into(), parent.into()])?,
        ));
        let parent_name = PodName::new(parent)?;
        for child in children {
            let mut args = vec![
                "--name".to_string(),
                child.clone(),
                "--callback".into(),
                paths.socket(&parent_name).display().to_string(),
                "--task".into(),
                CHILD_TASK.into(),
            ];
            args.extend(child_args.iter().map(|s| s.to_string()));
            pods.children.push((child.clone(), spawn(args)?));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for name in std::iter::once(&parent.to_string()).chain(children) {
            let socket = paths.socket(&PodName::new(name)?);
            while !talk::is_live(&socket) {
                if Instant::now() > deadline {
                    return Err(Error::Timeout(format!("demo pod {name} did not start")));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(pods)
    }

    /// The process id of pod `name` (tests stop or kill single pods).
    /// The pids of the pods still running.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Reap pods that have exited (a child removed with `rm -r` exits); returns how many
    /// are still running.
    pub fn reap(&mut self) -> usize {
        self.children
            .retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
        self.children.len()
    }

    /// SIGTERM every pod, SIGKILL what is left after the grace period (or at once when
    /// `hurry` says so), and reap them all.
    pub fn stop(&mut self, hurry: impl Fn() -> bool) {
        for (_, c) in &self.children {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while self.reap() > 0 && Instant::now() < deadline && !hurry() {
            thread::sleep(Duration::from_millis(20));
        }
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.stop(|| false);
    }
}

/// Where the demo may put its throw-away files: `$XDG_RUNTIME_DIR` if set and writable
/// (memory, and private to the user), else what [`crate::scratch::base`] finds.
fn scratch_base() -> Result<PathBuf> {
    crate::scratch::base_preferring(std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
}

pub fn run(args: &DemoArgs) -> Result<()> {
    // Before anything is started, so Ctrl-C at any moment cleans up.
    let signals = mount::StopSignals::install()?;
    // Started first and told of each thing as it is made: a demo killed at any moment
    // leaves no pod, home or mount behind.
    let mut guard = mount::start_guard();
    let gen = args.generation;
    let base = scratch_base()?;
    let home = tempfile::Builder::new()
        .prefix("podfs-demo-home-")
        .tempdir_in(&base)
        .map_err(|e| Error::io(format!("create the demo home in {}", base.display()), e))?;
    if let Some(g) = &mut guard {
        g.also_remove(home.path());
    }
    let (mountpoint, temp_mount) = match &args.mountpoint {
        Some(m) => (m.clone(), None),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("podfs-demo-")
                .tempdir_in(&base)
                .map_err(|e| Error::io(format!("create a mount point in {}", base.display()), e))?;
            (dir.path().to_path_buf(), Some(dir))
        }
    };
    let created_mountpoint = !mountpoint.exists();
    if created_mountpoint {
        std::fs::create_dir_all(&mountpoint)
            .map_err(|e| Error::io(format!("create {}", mountpoint.display()), e))?;
    }
    let children: Vec<String> = (1..=args.children).map(|i| format!("child{i}")).collect();
    home::create(home.path(), gen, "parent", &children)?;
    let exe = std::env::current_exe().map_err(|e| Error::io("locate the podfs binary", e))?;
    let mut pods = Pods::start(&exe, home.path(), gen, "parent", &children)?;
    if let Some(g) = &mut guard {
        for pid in pods.pids() {
            g.also_stop(pid);
        }
        if created_mountpoint || temp_mount.is_some() {
            g.also_rmdir(&mountpoint);
        }
    }

    let fs = Arc::new(crate::fs::build(
        Arc::new(crate::home::Home::for_home(home.path(), gen)?),
        Timeouts::default(),
        crate::watch::WatchConfig::default(),
        &crate::fs::Settings::default(),
        true,
    )?);
    let settings = MountSettings {
        fsname: "podfs:demo".into(),
        ..Default::default()
    };
    let mut mounted = mount::mount_guarded(fs.clone(), &mountpoint, &settings, guard)?;
    // The demo dismisses the guard itself, once the pods and the home are gone too.
    let guard = mounted.take_guard();
    let m = mounted.mountpoint().display().to_string();
    let first = children.first().map_or("child1", String::as_str);
    println!(
        "podfs demo: a live parent with {n} live children ({g}), mounted at\n  {m}\n\
         (home: {h}; everything is removed on Ctrl-C)\n\n\
         Try, in another shell:\n  \
         ls {m}                             # the parents: pods that have (or had) children\n  \
         ls {m}/parent                      # its children\n  \
         cat {m}/parent/{first}/scope {m}/parent/{first}/status\n  \
         cat {m}/parent/{first}/output      # new assistant text; reading it moves the cursor\n  \
         cat {m}/parent/{first}/cursor\n  \
         echo 'hello' > {m}/parent/{first}/input; cat {m}/parent/{first}/output  # waits for the reply\n  \
         tail -f {m}/parent/{first}/log     # follow the child live; never consumed\n  \
         rm -r {m}/parent/{first}           # stop it and reclaim its scope\n\n\
         Mind: reading output consumes it (give log to grep -r, cp -r, tar); rm of a file\n\
         inside a child does nothing (rm -r of the child does it all); rm -r of a parent\n\
         removes every child it has.\n",
        n = children.len(),
        g = gen.id,
        h = home.path().display(),
    );
    while !signals.received() && !mounted.finished() {
        pods.reap();
        // The reference pods are reaped at this pace; signals and the end wake it at once.
        signals.wait(&mounted, Some(Duration::from_millis(100)));
        if signals.report_requested() {
            fs.report();
        }
    }
    signals.reset();
    eprintln!("podfs demo: stopping (Ctrl-C again to skip waiting for the pods)");
    mounted.unmount();
    pods.stop(|| signals.received());
    drop(home);
    if created_mountpoint || temp_mount.is_some() {
        let _ = std::fs::remove_dir(&mountpoint);
    }
    drop(temp_mount);
    if let Some(g) = guard {
        g.dismiss();
    }
    println!("podfs demo: unmounted and cleaned up");
    Ok(())
}
