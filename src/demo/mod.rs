//! `podfs demo`: a throw-away home with a live demo parent and live demo children, mounted,
//! with a short tour printed, and everything removed again on Ctrl-C.

pub mod home;
pub mod pod;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::DemoArgs;
use crate::error::{Error, Result};
use crate::fs::PodFs;
use crate::mount::{self, MountSettings};
use crate::paths::Paths;
use crate::protocol::{ops, Timeouts};
use crate::registry::Registry;

/// Demo pod processes, stopped when dropped.
pub struct Pods {
    children: Vec<Child>,
}

impl Pods {
    /// Start `podfs pod` processes for `parent` and its `children` in `home` and wait until
    /// every socket answers.
    pub fn start(exe: &Path, home: &Path, parent: &str, children: &[String]) -> Result<Pods> {
        let paths = Paths::for_home(home);
        let mut pods = Pods {
            children: Vec::new(),
        };
        let spawn = |args: Vec<String>| -> Result<Child> {
            Command::new(exe)
                .arg("--log-level")
                .arg("warn")
                .arg("pod")
                .arg("--home")
                .arg(home)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| Error::io(format!("start demo pod with {}", exe.display()), e))
        };
        pods.children
            .push(spawn(vec!["--name".into(), parent.into()])?);
        for child in children {
            pods.children.push(spawn(vec![
                "--name".into(),
                child.clone(),
                "--callback".into(),
                paths.socket(parent).display().to_string(),
                "--task".into(),
                format!("{child} task: describe your work directory"),
            ])?);
        }
        let t = Timeouts::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        for name in std::iter::once(&parent.to_string()).chain(children) {
            while ops::probe(&paths.socket(name), &t).is_err() {
                if Instant::now() > deadline {
                    return Err(Error::Timeout(format!("demo pod {name} did not start")));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(pods)
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

pub fn run(args: &DemoArgs) -> Result<()> {
    // Before anything is started, so Ctrl-C at any moment cleans up.
    let signals = mount::StopSignals::install()?;
    let home = tempfile::Builder::new()
        .prefix("podfs-demo-")
        .tempdir()
        .map_err(|e| Error::io("create demo home", e))?;
    let mountpoint: PathBuf = args.mountpoint.clone();
    let created_mountpoint = !mountpoint.exists();
    if created_mountpoint {
        std::fs::create_dir_all(&mountpoint)
            .map_err(|e| Error::io(format!("create {}", mountpoint.display()), e))?;
    }
    let children: Vec<String> = (1..=args.children).map(|i| format!("child{i}")).collect();
    home::create(home.path(), "parent", &children)?;
    let exe = std::env::current_exe().map_err(|e| Error::io("locate the podfs binary", e))?;
    let pods = Pods::start(&exe, home.path(), "parent", &children)?;

    let reg = Arc::new(Registry::new(
        Paths::for_home(home.path()),
        Timeouts::default(),
    ));
    let fs = Arc::new(PodFs::new(reg));
    let settings = MountSettings {
        fsname: "podfs:demo".into(),
        ..Default::default()
    };
    let mounted = mount::mount(fs, &mountpoint, &settings)?;
    let m = mountpoint.display();
    let first = children.first().map_or("child1", String::as_str);
    println!(
        "podfs demo: a live parent with {n} live children, mounted at {m}\n\
         (home: {h}; everything is removed on Ctrl-C)\n\n\
         Try, in another shell:\n  \
         ls {m}/parent\n  \
         cat {m}/parent/{first}/scope {m}/parent/{first}/status\n  \
         cat {m}/parent/{first}/output      # new assistant text; moves the cursor\n  \
         cat {m}/parent/{first}/cursor\n  \
         echo 'hello' > {m}/parent/{first}/input && sleep 1 && cat {m}/parent/{first}/output\n  \
         tail -f {m}/parent/{first}/log     # follow the child live\n  \
         rm -r {m}/parent/{first}           # stop it and reclaim its scope\n",
        n = children.len(),
        h = home.path().display(),
    );
    let result = signals.serve(mounted);
    drop(pods);
    drop(home);
    if created_mountpoint {
        let _ = std::fs::remove_dir(&mountpoint);
    }
    println!("podfs demo: unmounted and cleaned up");
    result
}
