//! The harness every test binary runs under (`libtest-mimic`, `harness = false` in
//! Cargo.toml), so that a test that did not run is never reported as passed.
//!
//! Each file lists its test functions in its `main`, with what each needs from the machine
//! (`Need`), decided once before the trials are listed:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     let fuse = Need::fuse();
//!     Suite::new()
//!         .add(&Need::Met, tests![a_plain_test])
//!         .add(&fuse, tests![a_mount_test])
//!         .add(&fuse, both_tests![a_test_both_made])
//!         .add(&fuse.and(Need::root("acting as another user")), tests![a_root_test])
//!         .run()
//! }
//! ```
//!
//! A listed function is called, so the compiler's dead-code lint names any test function
//! a file forgot to list. A test whose need is not met is *ignored*, with its reason:
//! cargo's own `test result:` line counts it, and the closing lines say why. Under
//! `CI=true` it is not ignored but fails, since CI is set up to run everything.
//!
//! Cargo runs the test binaries one after another as children of one process. Each binary
//! adds its tests that did not run to a record kept for that parent, and prints, as its
//! last line, how many did not run so far, with the reasons: the last binary's last line
//! is the whole run's.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::{Arguments, Completion, Failed, FormatSetting, Trial};

/// A test function with the name cargo shows for it.
pub type Test = (&'static str, fn());

/// `tests![a, b, m::c]`: the test functions `a`, `b` and `m::c`, each named by its path
/// as the standard harness would name it.
#[macro_export]
macro_rules! tests {
    ($($first:ident $(:: $rest:ident)*),* $(,)?) => {
        vec![$((
            concat!(stringify!($first) $(, "::", stringify!($rest))*),
            $first $(:: $rest)* as fn(),
        )),*]
    };
}

/// `both_tests![a, b]`: the `a::insomnia`, `a::yoi`, `b::insomnia` and `b::yoi` tests
/// that `both!` made.
#[macro_export]
macro_rules! both_tests {
    ($($name:ident),* $(,)?) => {
        vec![$(
            (concat!(stringify!($name), "::insomnia"), $name::insomnia as fn()),
            (concat!(stringify!($name), "::yoi"), $name::yoi as fn()),
        )*]
    };
}

/// Why a test cannot run here: `why` is shared by every test kept from running for the
/// same cause (the closing line counts by it), `detail` says what exactly.
#[derive(Clone, Debug)]
pub struct NotRun {
    pub why: String,
    pub detail: String,
}

impl fmt::Display for NotRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.why)
        } else {
            write!(f, "{}: {}", self.why, self.detail)
        }
    }
}

/// What the machine gives the tests that need something of it.
#[derive(Clone, Debug)]
pub enum Need {
    /// Given: the tests run.
    Met,
    /// Not given: the tests are reported as ignored, with the reason (under `CI=true`
    /// they fail).
    Unmet(NotRun),
    /// Finding out went wrong (a probe that should have worked panicked): the tests
    /// fail with this message, since what they check may be what broke.
    Broken(String),
}

/// The variable that makes [`Need::fuse`] unmet.
pub const PRETEND_NO_FUSE: &str = "PODFS_TEST_PRETEND_NO_FUSE";

impl Need {
    pub fn unmet(why: &str, detail: impl Into<String>) -> Need {
        Need::Unmet(NotRun {
            why: why.into(),
            detail: detail.into(),
        })
    }

    /// This need and then `next`: the first one not met decides.
    pub fn and(&self, next: Need) -> Need {
        self.and_then(|| next)
    }

    /// Like [`Need::and`], finding out about `next` only when this one is met (for
    /// probes that cost something or need what this one checks).
    pub fn and_then(&self, next: impl FnOnce() -> Need) -> Need {
        match self {
            Need::Met => next(),
            unmet_or_broken => unmet_or_broken.clone(),
        }
    }

    /// A `/dev/fuse` this user can open, as every mount needs (an ordinary user's
    /// `fusermount3` opens it with the user's own permissions).
    ///
    /// `PODFS_TEST_PRETEND_NO_FUSE=1` makes it unmet, so that the harness's own report of a
    /// test that cannot run can itself be tested (`tests/cli.rs`).
    pub fn fuse() -> Need {
        use std::io::ErrorKind;
        use std::os::unix::fs::MetadataExt;
        if std::env::var_os(PRETEND_NO_FUSE).is_some() {
            return Need::unmet("no usable /dev/fuse", format!("{PRETEND_NO_FUSE} is set"));
        }
        let Err(e) = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
        else {
            return Need::Met;
        };
        let mode = std::fs::metadata("/dev/fuse").map_or(0, |m| m.mode() & 0o777);
        let detail = match e.kind() {
            ErrorKind::NotFound => "/dev/fuse is missing".to_string(),
            ErrorKind::PermissionDenied => {
                format!("/dev/fuse (mode {mode:o}) is not open to this user")
            }
            kind => format!("/dev/fuse cannot be opened: {kind}"),
        };
        Need::unmet("no usable /dev/fuse", detail)
    }

    /// Root, for `what` (installing into /sbin, acting as another user, dropping caches).
    pub fn root(what: &str) -> Need {
        if nix::unistd::geteuid().is_root() {
            Need::Met
        } else {
            Need::unmet("needs root", what)
        }
    }

    /// That a podfs killed while the kernel waits on it can be cleaned up here. A request
    /// podfs read but never answered can hold a directory lock that podfs's own
    /// invalidation thread waits for inside the kernel. podfs writes invalidations
    /// through a clone of the FUSE device in a file table of their own, so the kernel
    /// ends that request once the rest of podfs is gone; the clone needs `/dev/fuse` open
    /// to this user. Without it, only an abort of the connection ends the wait: root's
    /// forced unmount, or the FUSE control filesystem (fusectl).
    pub fn dead_connections_abortable(what: &str) -> Need {
        let fusectl = podfs::mountinfo::mount_type(Path::new("/sys/fs/fuse/connections"))
            .is_some_and(|t| t == "fusectl");
        let clone = matches!(Need::fuse(), Need::Met);
        if nix::unistd::geteuid().is_root() || fusectl || clone {
            return Need::Met;
        }
        Need::unmet(
            "a dead FUSE connection cannot be aborted",
            format!(
                "{what}: not root and no fusectl at /sys/fs/fuse/connections, so a killed \
                 podfs can leave a request the kernel waits on for good (docs/reliability.md)"
            ),
        )
    }

    /// What `find_out` says, or, should it panic, a broken need naming `what` it was
    /// finding out.
    pub fn probe(what: &str, find_out: impl FnOnce() -> Need) -> Need {
        catch_unwind(AssertUnwindSafe(find_out)).unwrap_or_else(|payload| {
            Need::Broken(format!(
                "finding out whether {what} failed: {}",
                panic_message(&*payload)
            ))
        })
    }
}

/// Whether cargo only asks for the list of tests (`--list`): then a probe that costs
/// something (creating a user, mounting) is not worth making.
pub fn only_listing() -> bool {
    Arguments::from_args().list
}

/// The trials of one test binary.
#[derive(Default)]
pub struct Suite {
    planned: Vec<Planned>,
    finally: Option<Box<dyn FnOnce() -> Result<(), String>>>,
}

struct Planned {
    name: &'static str,
    body: fn(),
    need: Need,
    /// Run only when asked for (`--ignored`): why.
    long: Option<&'static str>,
}

impl Suite {
    pub fn new() -> Suite {
        Suite::default()
    }

    /// `tests`, each of which needs `need`.
    pub fn add(mut self, need: &Need, tests: Vec<Test>) -> Suite {
        self.plan(need, None, tests);
        self
    }

    /// Tests too long for every run (`what` says how long): ignored unless asked for with
    /// `--ignored`, as `#[ignore]` does.
    pub fn add_long(mut self, what: &'static str, need: &Need, tests: Vec<Test>) -> Suite {
        self.plan(need, Some(what), tests);
        self
    }

    /// `cleanup` runs once every trial has finished (to remove what the binary created
    /// for its tests); if it fails, so does the binary.
    pub fn finally(mut self, cleanup: impl FnOnce() -> Result<(), String> + 'static) -> Suite {
        self.finally = Some(Box::new(cleanup));
        self
    }

    fn plan(&mut self, need: &Need, long: Option<&'static str>, tests: Vec<Test>) {
        for (name, body) in tests {
            self.planned.push(Planned {
                name,
                body,
                need: need.clone(),
                long,
            });
        }
    }

    /// Run the trials cargo's arguments select, then print which did not run and why.
    pub fn run(self) -> ExitCode {
        let mut args = Arguments::from_args();
        // The standard harness reads this too; libtest-mimic only knows --test-threads.
        if args.test_threads.is_none() {
            args.test_threads = std::env::var("RUST_TEST_THREADS")
                .ok()
                .and_then(|n| n.parse().ok());
        }
        if !args.nocapture {
            held_panics::install();
        }
        let in_ci = std::env::var("CI").as_deref() == Ok("true");
        let mut planned = self.planned;
        // The standard harness's order, so that runs and lists read the same as before.
        planned.sort_by_key(|p| p.name);
        let found_at_run_time = NotRunList::default();
        let mut not_run = Vec::new();
        let mut trials = Vec::new();
        for p in planned {
            let name = p.name;
            let (trial, ignored_because) = p.into_trial(in_ci, &found_at_run_time);
            if let Some(reason) = ignored_because {
                if !args.is_filtered_out(&trial) && args.is_ignored(&trial) {
                    not_run.push((name.to_string(), reason));
                }
            }
            trials.push(trial);
        }
        let conclusion = libtest_mimic::run(&args, trials);
        let mut code = conclusion.exit_code();
        if let Some(Err(e)) = self.finally.map(|cleanup| cleanup()) {
            eprintln!("the cleanup after the tests did not work: {e}");
            code = ExitCode::FAILURE;
        }
        if args.list || args.bench {
            return code;
        }
        not_run.extend(found_at_run_time.lock().unwrap().drain(..));
        not_run.sort_by(|a, b| a.0.cmp(&b.0));
        let so_far = record::add(&not_run);
        if args.format != Some(FormatSetting::Json) {
            closing_lines(&not_run, &so_far);
        }
        code
    }
}

/// Tests that did not run, by name, as trials find out while they run.
type NotRunList = Arc<Mutex<Vec<(String, NotRun)>>>;

impl Planned {
    /// The trial, and why it is ignored unless asked for, if it is.
    fn into_trial(self, in_ci: bool, found_at_run_time: &NotRunList) -> (Trial, Option<NotRun>) {
        let (name, body) = (self.name, self.body);
        let long = self.long.map(|what| NotRun {
            why: "long, run with --ignored".into(),
            detail: what.into(),
        });
        match self.need {
            Need::Met => (
                Trial::test(name, move || run_body(name, body)).with_ignored_flag(long.is_some()),
                long,
            ),
            Need::Unmet(reason) if in_ci => {
                let msg = format!(
                    "CANNOT RUN here: {reason}; CI=true makes a test that cannot run a failure"
                );
                (
                    Trial::test(name, move || Err(msg.into())).with_ignored_flag(long.is_some()),
                    long,
                )
            }
            Need::Unmet(reason) => {
                // Asked for all the same (`--ignored`), it still cannot run: it says so.
                let found = found_at_run_time.clone();
                let said = reason.clone();
                let trial = Trial::ignorable_test(name, move || {
                    found.lock().unwrap().push((name.to_string(), said.clone()));
                    Ok(Completion::ignored_with(said))
                });
                (trial.with_ignored_flag(true), Some(reason))
            }
            Need::Broken(msg) => (
                Trial::test(name, move || Err(msg.into())).with_ignored_flag(long.is_some()),
                long,
            ),
        }
    }
}

/// Run `body` on a thread named after the test, as the standard harness does, so that a
/// panic message says which test panicked. Should the test fail, its failure also tells
/// of the panics held back while it ran (see [`held_panics`]).
fn run_body(name: &str, body: fn()) -> Result<(), Failed> {
    let first_held = held_panics::count();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            held_panics::on_a_test_thread();
            body()
        })
        .map_err(|e| format!("the test's thread did not start: {e}"))?;
    thread.join().map_err(|payload| {
        let mut msg = format!("test panicked: {}", panic_message(&*payload));
        let held = held_panics::since(first_held);
        if !held.is_empty() {
            msg.push_str("\n\npanics on other threads while it ran:\n");
            msg.push_str(&held.join("\n"));
        }
        msg.into()
    })
}

/// Panics on threads a test started (a worker pool whose jobs fail on purpose, a server
/// thread) are held back instead of printed: the standard harness captures them with the
/// test's output and shows them only if the test fails; libtest-mimic captures nothing.
/// A test thread's own panic, and the main thread's, print as usual. `--nocapture`
/// prints everything.
mod held_panics {
    use std::cell::Cell;
    use std::sync::Mutex;

    static HELD: Mutex<Vec<String>> = Mutex::new(Vec::new());

    thread_local! {
        static A_TEST_THREAD: Cell<bool> = const { Cell::new(false) };
    }

    pub fn install() {
        let print = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if A_TEST_THREAD.with(Cell::get) || thread.name() == Some("main") {
                return print(info);
            }
            let location = info
                .location()
                .map_or(String::new(), |l| format!(" at {l}"));
            let report = format!(
                "thread '{}' panicked{location}:\n{}",
                thread.name().unwrap_or("<unnamed>"),
                super::panic_message(info.payload())
            );
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(report);
        }));
    }

    pub fn on_a_test_thread() {
        A_TEST_THREAD.with(|t| t.set(true));
    }

    pub fn count() -> usize {
        HELD.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn since(first: usize) -> Vec<String> {
        let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        held.get(first..).unwrap_or_default().to_vec()
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("(a panic without a message)")
}

/// This binary's tests that did not run, with their reasons, and the count so far.
fn closing_lines(not_run: &[(String, NotRun)], so_far: &record::SoFar) {
    let mut out = std::io::stdout().lock();
    if !not_run.is_empty() {
        let _ = writeln!(out, "not run here: {}", not_run.len());
        for (name, reason) in not_run {
            let _ = writeln!(out, "    {name}: {reason}");
        }
    }
    let _ = writeln!(out, "{so_far}");
}

/// The record of the tests that did not run in one `cargo test`, in
/// `$CARGO_TARGET_TMPDIR/not-run/`, one file per run of cargo: named after cargo's pid and
/// its start time (so that a pid used again by a later run starts a file of its own).
mod record {
    use super::*;

    /// The count so far: the tests that did not run, by reason.
    pub struct SoFar {
        /// In the whole cargo run (false: only this binary, as when run by hand).
        pub in_cargo: bool,
        pub by_why: BTreeMap<String, usize>,
        /// Why the record could not be kept, if it could not.
        pub unrecorded: Option<String>,
    }

    impl fmt::Display for SoFar {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let total: usize = self.by_why.values().sum();
            if self.in_cargo {
                write!(f, "not run so far in this cargo test: {total}")?;
            } else {
                write!(f, "not run in this test binary: {total}")?;
            }
            let mut groups: Vec<_> = self.by_why.iter().collect();
            // The commonest reason first.
            groups.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let groups: Vec<String> = groups.iter().map(|(w, n)| format!("{w}: {n}")).collect();
            if !groups.is_empty() {
                write!(f, " ({})", groups.join("; "))?;
            }
            if let Some(why) = &self.unrecorded {
                write!(f, " [this binary only: {why}]")?;
            }
            Ok(())
        }
    }

    /// Add `not_run` to this run's record and return the count so far.
    pub fn add(not_run: &[(String, NotRun)]) -> SoFar {
        let mine = || {
            let mut by_why = BTreeMap::new();
            for (_, reason) in not_run {
                *by_why.entry(reason.why.clone()).or_insert(0) += 1;
            }
            by_why
        };
        let Some(run) = cargo_run() else {
            return SoFar {
                in_cargo: false,
                by_why: mine(),
                unrecorded: None,
            };
        };
        match append_and_count(&run, not_run) {
            Ok(by_why) => SoFar {
                in_cargo: true,
                by_why,
                unrecorded: None,
            },
            Err(e) => SoFar {
                in_cargo: true,
                by_why: mine(),
                unrecorded: Some(format!(
                    "the record {} could not be kept: {e}",
                    run.display()
                )),
            },
        }
    }

    /// The record file of the cargo process that started this binary, or None when the
    /// parent is not cargo (a binary run by hand counts for itself).
    fn cargo_run() -> Option<PathBuf> {
        let parent = std::os::unix::process::parent_id();
        let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
        if !comm.trim().starts_with("cargo") {
            return None;
        }
        let started = start_time(parent)?;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("not-run");
        Some(dir.join(format!("{parent}-{started}.tsv")))
    }

    /// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks after boot.
    fn start_time(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ...: the command name may hold spaces and parentheses, and the
        // state is field 3.
        let (_, after) = stat.rsplit_once(')')?;
        after
            .split_whitespace()
            .nth(22 - 3)
            .and_then(|f| f.parse().ok())
    }

    fn append_and_count(
        run: &Path,
        not_run: &[(String, NotRun)],
    ) -> std::io::Result<BTreeMap<String, usize>> {
        let dir = run.parent().unwrap();
        std::fs::create_dir_all(dir)?;
        remove_stale(dir, run);
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        let mut lines = String::new();
        for (name, reason) in not_run {
            lines.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                env!("CARGO_CRATE_NAME"),
                clean(name),
                clean(&reason.why),
                clean(&reason.detail)
            ));
        }
        if !lines.is_empty() {
            // One write of whole lines; cargo runs the binaries one at a time anyway.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(run)?
                .write_all(lines.as_bytes())?;
        }
        let recorded = match std::fs::read_to_string(run) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            read => read?,
        };
        let mut by_why = BTreeMap::new();
        for line in recorded.lines() {
            if let Some(why) = line.split('\t').nth(2) {
                *by_why.entry(why.to_string()).or_insert(0) += 1;
            }
        }
        Ok(by_why)
    }

    /// Records of earlier runs, untouched for a day, go.
    fn remove_stale(dir: &Path, current: &Path) {
        let day = Duration::from_secs(24 * 60 * 60);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
            if old && path != current {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
