//! Live children: what watching costs and how fast it follows the child. Reference pods
//! (`podfs pod`, one process for many pods) stand in for the runtime; the FUSE floor serves
//! the same tree shape with fixed content, so "÷floor" is what podfs adds per file read.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use podfs::protocol::wire::{Event, PodStatus};

use crate::harness::{child_name, fmt, read_file, Row, Server, GEN, PODFS};

/// A home whose parent `live` has `names` as children, with reference pods serving them.
pub struct LiveHome {
    dir: tempfile::TempDir,
    pods: Vec<Child>,
}

impl LiveHome {
    pub fn new(names: &[String]) -> LiveHome {
        let dir = tempfile::Builder::new()
            .prefix("podfs-bench-live-")
            .tempdir()
            .unwrap();
        podfs::demo::home::create(dir.path(), &GEN, "live", names).unwrap();
        LiveHome {
            dir,
            pods: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// One reference-pod process serving `names`, counting Snapshots into `stats`.
    /// Ready once the stats file lists every pod: connecting to check would cost each a
    /// Snapshot, and those are what is counted.
    pub fn serve(&mut self, names: &[String], stats: &Path, extra: &[&str]) {
        let mut cmd = Command::new(PODFS);
        cmd.args([
            "--log-level",
            "error",
            "pod",
            "--generation",
            GEN.id,
            "--home",
        ])
        .arg(self.path())
        .arg("--stats")
        .arg(stats)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        for n in names {
            cmd.args(["--name", n]);
        }
        self.pods.push(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(120);
        while snapshots(stats).len() < names.len() {
            assert!(Instant::now() < deadline, "reference pods did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LiveHome {
    fn drop(&mut self) {
        for p in &mut self.pods {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn snapshots(stats: &Path) -> Vec<u64> {
    std::fs::read(stats)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.as_object()
                .map(|o| o.values().filter_map(|n| n.as_u64()).collect())
        })
        .unwrap_or_default()
}

/// The numbers of podfs's report line (SIGUSR1), read from its log.
fn report(server: &Server, log: &Path) -> std::collections::BTreeMap<String, u64> {
    let count = || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches(" report ")
            .count()
    };
    let before = count();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.contains(" report "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at its closing ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The figures that are not a time per operation.
pub struct Figures {
    pub lines: Vec<String>,
}

impl Figures {
    fn add(&mut self, line: String) {
        println!("  {line}");
        self.lines.push(line);
    }
}

pub fn run(quick: bool, rows: &mut Vec<Row>) -> Figures {
    let mut figures = Figures { lines: Vec::new() };
    let n = if quick { 200 } else { 1000 };
    let names: Vec<String> = (0..n).map(child_name).collect();
    let mut all = names.clone();
    all.extend(["big".to_string(), "lat".to_string(), "slow".to_string()]);
    let mut home = LiveHome::new(&all);
    let stats = home.path().join("stats.json");
    let big_stats = home.path().join("big-stats.json");
    let lat_stats = home.path().join("lat-stats.json");
    let slow_stats = home.path().join("slow-stats.json");
    println!("live: starting {n} reference pods, one with a 10 MB history");
    home.serve(&names, &stats, &["--turn-ms", "20"]);
    home.serve(
        &["big".to_string()],
        &big_stats,
        &["--history-bytes", "10000000", "--turn-ms", "20"],
    );
    home.serve(&["lat".to_string()], &lat_stats, &["--turn-ms", "300"]);
    home.serve(&["slow".to_string()], &slow_stats, &["--turn-ms", "6000"]);

    let (floor, _) = Server::floor(&[("live".to_string(), n)]);
    let log = home.path().join("podfs.log");
    let pod = Server::podfs_logged(home.path(), &[], &log);
    let (f, p) = (floor.path().join("live"), pod.path().join("live"));

    // cat */status over every child, rounds 1.5 s apart, paired with the floor's.
    let cat_all = |root: &Path| {
        let t = Instant::now();
        for name in &names {
            read_file(&root.join(name).join("status"));
        }
        t.elapsed()
    };
    let first = cat_all(&p);
    assert_eq!(read_text(&p.join(&names[0]).join("status")), "idle\n");
    let rounds = if quick { 3 } else { 7 };
    let (mut tf, mut tp, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(1500));
        let a = cat_all(&f);
        let b = cat_all(&p);
        ratio.push(b.as_secs_f64() / a.as_secs_f64());
        tf.push(a);
        tp.push(b);
    }
    let r = median_f(ratio);
    rows.push(Row {
        op: format!("cat */status, {n} live children, 1.5 s apart"),
        tmpfs: None,
        floor: median(tf),
        podfs: median(tp),
        ratios: (r, None),
        target: Some(("≤2× floor".into(), r <= 2.0)),
    });
    figures.add(format!(
        "first cat */status over {n} children (starts {n} watches, one Snapshot each): {}",
        fmt(first)
    ));

    // The child with a 10 MB history: status, and output after a one-line turn.
    let big = p.join("big");
    assert_eq!(read_text(&big.join("status")), "idle\n");
    let iters = if quick { 200 } else { 1000 };
    let (mut tf, mut tp, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let per = |path: &Path| {
            let t = Instant::now();
            for _ in 0..iters {
                read_file(path);
            }
            t.elapsed() / iters
        };
        let a = per(&f.join(&names[0]).join("status"));
        let b = per(&big.join("status"));
        ratio.push(b.as_secs_f64() / a.as_secs_f64());
        tf.push(a);
        tp.push(b);
    }
    let floor_read = median(tf.clone());
    let r = median_f(ratio);
    rows.push(Row {
        op: "cat status, 10 MB history".into(),
        tmpfs: None,
        floor: floor_read,
        podfs: median(tp),
        ratios: (r, None),
        target: Some(("≤2× floor".into(), r <= 2.0)),
    });
    // Output: drain it, then one one-line turn at a time, each followed by a timed cat.
    let _ = read_text(&big.join("output"));
    let turns = if quick { 10 } else { 40 };
    let mut t_out = Vec::new();
    for i in 0..turns {
        let before = std::fs::metadata(big.join("log")).unwrap().len();
        let mut input = std::fs::OpenOptions::new()
            .write(true)
            .open(big.join("input"))
            .unwrap();
        writeln!(input, "line {i}").unwrap();
        drop(input);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(std::fs::metadata(big.join("log")).unwrap().len() > before
            && read_text(&big.join("status")) == "idle\n")
        {
            assert!(Instant::now() < deadline, "the turn did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        let text = read_text(&big.join("output"));
        t_out.push(t.elapsed());
        assert_eq!(text, format!("echo: line {i}\n"));
    }
    let out = median(t_out);
    let r = out.as_secs_f64() / floor_read.as_secs_f64();
    rows.push(Row {
        op: "cat output after a one-line turn, 10 MB history".into(),
        tmpfs: None,
        floor: floor_read,
        podfs: out,
        ratios: (r, None),
        target: Some(("≤3× floor".into(), r <= 3.0)),
    });

    // Latency: a direct subscriber of the child is the reference for "the child said so".
    let lat = p.join("lat");
    assert_eq!(read_text(&lat.join("status")), "idle\n");
    let (tx, rx) = mpsc::channel::<Instant>();
    let sock: PathBuf = home.path().join("run/lat/sock");
    // Connected, and past its Snapshot, before the first trial starts.
    let mut r = BufReader::new(UnixStream::connect(sock).unwrap());
    let mut line = Vec::new();
    loop {
        line.clear();
        assert!(r.read_until(b'\n', &mut line).unwrap() > 0, "lat closed");
        if Event::parse(&line).is_ok_and(|e| e.name == "snapshot") {
            break;
        }
    }
    let listener = std::thread::spawn(move || {
        let mut running = false;
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            let Ok(e) = Event::parse(&line) else { continue };
            if e.name != "status" {
                continue;
            }
            match e.status_word() {
                PodStatus::Running => running = true,
                PodStatus::Idle if running => {
                    running = false;
                    if tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
                _ => {}
            }
        }
    });
    let trials = if quick { 5 } else { 20 };
    let (mut after_write, mut after_end) = (Vec::new(), Vec::new());
    for i in 0..trials {
        let mut input = std::fs::OpenOptions::new()
            .write(true)
            .open(lat.join("input"))
            .unwrap();
        writeln!(input, "ping {i}").unwrap();
        let t0 = Instant::now();
        drop(input);
        while read_text(&lat.join("status")) != "running\n" {}
        after_write.push(t0.elapsed());
        while read_text(&lat.join("status")) != "idle\n" {}
        let seen = Instant::now();
        let said = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        after_end.push(seen.saturating_duration_since(said));
    }
    drop(rx);
    let (w, e) = (median(after_write.clone()), median(after_end.clone()));
    let (wmax, emax) = (
        *after_write.iter().max().unwrap(),
        *after_end.iter().max().unwrap(),
    );
    figures.add(format!(
        "status visible after a write to input: median {}, max {} (target ≤50 ms: {})",
        fmt(w),
        fmt(wmax),
        met(wmax <= Duration::from_millis(50))
    ));
    figures.add(format!(
        "status visible after the turn ends (behind a direct subscriber): median {}, max {} \
         (target ≤100 ms: {})",
        fmt(e),
        fmt(emax),
        met(emax <= Duration::from_millis(100))
    ));

    // Readers of `output` waiting for one long turn: what each costs podfs while it
    // waits, and how soon all are answered once the turn is over.
    let waiters = if quick { 200 } else { 1000 };
    let slow = p.join("slow");
    assert_eq!(read_text(&slow.join("status")), "idle\n");
    let _ = read_text(&slow.join("output"));
    let idle = report(&pod, &log);
    let (rss_idle, _) = pod.rss_kib();
    let mut input = std::fs::OpenOptions::new()
        .write(true)
        .open(slow.join("input"))
        .unwrap();
    writeln!(input, "a long question").unwrap();
    drop(input);
    while read_text(&slow.join("status")) != "running\n" {}
    let started = Instant::now();
    let readers: Vec<_> = (0..waiters)
        .map(|_| {
            let out = slow.join("output");
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    let text = read_text(&out);
                    (Instant::now(), text.len())
                })
                .unwrap()
        })
        .collect();
    // Every reader is inside podfs by the time the turn (6 s) ends; look while they wait.
    std::thread::sleep(Duration::from_millis(2500));
    let waiting = report(&pod, &log);
    let (rss_waiting, _) = pod.rss_kib();
    let answers: Vec<(Instant, usize)> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let turn_over = answers.iter().map(|a| a.0).min().unwrap();
    let last = answers.iter().map(|a| a.0).max().unwrap();
    let with_text = answers.iter().filter(|a| a.1 > 0).count();
    figures.add(format!(
        "{waiters} readers of output waiting for one turn: podfs threads {} -> {}, connects {} \
         -> {}, RSS {} -> {} KiB ({:.1} KiB per waiter); all answered {} after the first, {} \
         after the turn began; {with_text} got the reply (target: one; no thread and no \
         connection per waiter: {})",
        idle.get("threads").copied().unwrap_or(0),
        waiting.get("threads").copied().unwrap_or(0),
        idle.get("connects").copied().unwrap_or(0),
        waiting.get("connects").copied().unwrap_or(0),
        rss_idle,
        rss_waiting,
        rss_waiting.saturating_sub(rss_idle) as f64 / waiters as f64,
        fmt(last - turn_over),
        fmt(last - started),
        met(with_text == 1
            && waiting.get("threads") == idle.get("threads")
            && waiting.get("connects") == idle.get("connects")),
    ));

    // Snapshots per watch over everything above.
    let counts: Vec<u64> = snapshots(&stats)
        .into_iter()
        .chain(snapshots(&big_stats))
        .collect();
    let total: u64 = counts.iter().sum();
    let most = counts.iter().copied().max().unwrap_or(0);
    figures.add(format!(
        "Snapshots served per watched child: {:.2} on average, at most {most} ({} children, \
         {rounds} rounds of cat */status, {turns} turns; target 1: {})",
        total as f64 / counts.len() as f64,
        counts.len(),
        met(most == 1)
    ));
    let rep = report(&pod, &log);

    // Idle CPU with every child watched and idle.
    let secs = if quick { 3 } else { 10 };
    let before = cpu_time(pod.pid());
    std::thread::sleep(Duration::from_secs(secs));
    let used = cpu_time(pod.pid()) - before;
    let pct = 100.0 * used.as_secs_f64() / secs as f64;
    figures.add(format!(
        "idle CPU of podfs with {} watched idle children: {pct:.2}% of one core over {secs} s \
         (target ≤1%: {}); {} threads",
        rep.get("watches").copied().unwrap_or(0),
        met(pct <= 1.0),
        rep.get("threads").copied().unwrap_or(0),
    ));
    drop(listener);
    drop((pod, floor, home));

    // Memory: every child holding 1 MB of text, under the default budget.
    let budget_mib = 256;
    let mut home = LiveHome::new(&names);
    let stats = home.path().join("stats.json");
    println!("live: starting {n} reference pods with 1 MB of history each");
    home.serve(&names, &stats, &["--history-bytes", "1000000"]);
    let log = home.path().join("podfs.log");
    let pod = Server::podfs_logged(
        home.path(),
        &["--memory-budget-mib", &budget_mib.to_string()],
        &log,
    );
    let p = pod.path().join("live");
    for name in &names {
        read_file(&p.join(name).join("status"));
    }
    // Let the sweep run once (it runs every second).
    std::thread::sleep(Duration::from_secs(2));
    let (rss, hwm) = pod.rss_kib();
    let rep = report(&pod, &log);
    let limit_mib = budget_mib + 64;
    figures.add(format!(
        "RSS with {n} watched children of 1 MB each: {} MiB (peak {} MiB); text held {} MiB \
         by {} watches, {} dropped for the {budget_mib} MiB budget (target RSS ≤ budget + 64 \
         MiB = {limit_mib} MiB: {})",
        rss / 1024,
        hwm / 1024,
        rep.get("text_bytes").copied().unwrap_or(0) >> 20,
        rep.get("watches").copied().unwrap_or(0),
        rep.get("evicted_for_memory").copied().unwrap_or(0),
        met(rss / 1024 <= limit_mib as u64),
    ));
    figures
}

fn met(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}
