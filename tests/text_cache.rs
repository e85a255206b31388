//! `log` through the kernel's page cache, kept coherent (`docs/filesystem.md`, "How `log`
//! is cached"): an unchanged text is served from pages the kernel keeps; a turn's append,
//! a Snapshot that replaced the history with another (compaction; one of the same length),
//! and a watch that ended and started again each show exactly the new text, through
//! `cat`, `mmap`, `tail -f` and `stat`. `output`'s snapshots share the text they were
//! taken from, and read what they took whatever the text does after.
#[macro_use]
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn main() -> std::process::ExitCode {
    let fuse = Need::fuse();
    Suite::new()
        .add(
            &fuse,
            tests![
                an_unchanged_log_stays_in_the_page_cache,
                a_turn_appends_and_every_reader_sees_it_at_once,
                compaction_shows_only_the_new_text,
                a_same_length_snapshot_never_serves_the_old_pages,
                a_new_watch_never_keeps_pages_of_an_earlier_one,
                tail_f_follows_turns_and_a_compaction,
                mmap_reads_what_cat_reads,
                an_open_output_reads_its_snapshot_whatever_the_text_does,
            ],
        )
        .run()
}

/// Read `path` until the kernel keeps what was read: the first opens in a watch have the
/// kernel drop the file's pages, until podfs's own invalidation of them is delivered.
fn cached(path: &str) {
    let size = size(path);
    wait_for(Duration::from_secs(5), || {
        let _ = std::fs::read(path).unwrap();
        resident(path) >= size
    });
}

/// Bytes of `path` the kernel holds in its page cache (`fincore`).
fn resident(path: &str) -> u64 {
    ok(&format!("fincore --bytes --raw --noheadings -o RES {path}"))
        .trim()
        .parse()
        .unwrap()
}

fn size(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// A live demo child with some history, and the path of its directory.
fn demo_child(turn_ms: &str) -> (Home, PodProcess, Mount, String) {
    let home = Home::demo(&INSOMNIA, &["child1"]);
    let pod = PodProcess::start(
        &home,
        "child1",
        &["--turn-ms", turn_ms, "--history-bytes", "300000"],
    );
    let m = Mount::quick(&home, &[]);
    settle(&m, "child1");
    let c = format!("{}/parent/child1", m.s());
    (home, pod, m, c)
}

/// Ask the child `q` and wait for the reply (`output` waits for the turn).
fn ask(c: &str, q: &str) -> String {
    ok(&format!("echo '{q}' > {c}/input"));
    ok(&format!("cat {c}/output"))
}

/// Have the child compact its history (a reference pod's `compact` method), as a
/// client of its socket: past the Snapshot it sends first, until `compact_done`.
fn compact(home: &Home) {
    use std::io::BufRead;
    let s = UnixStream::connect(home.path().join("run/child1/sock")).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"snapshot\""));
    (&s).write_all(b"{\"method\":\"compact\"}\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("compact_done"), "{line}");
}

/// A read while the text may be changing: whatever it returns, never a zero byte.
fn without_zeros(path: &str) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    assert!(!bytes.contains(&0), "no zero byte from a stale page");
    bytes
}

/// A read of the whole file agrees with `stat` and holds no byte the text cannot have.
fn read_checked(path: &str) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len() as u64, size(path), "stat and read agree");
    assert!(!bytes.contains(&0), "no zero byte from a stale page");
    bytes
}

/// Read twice, and open without reading: the pages stay (`FOPEN_KEEP_CACHE`), so the
/// second read is served by the kernel. Without it, an open drops every page.
fn an_unchanged_log_stays_in_the_page_cache() {
    let (_home, _pod, _m, c) = demo_child("50");
    let log = format!("{c}/log");
    let first = read_checked(&log);
    assert!(first.len() > 200_000);
    cached(&log);
    let held = resident(&log);
    assert!(
        held >= first.len() as u64,
        "every page read is kept: {held}"
    );
    drop(std::fs::File::open(&log).unwrap());
    assert_eq!(resident(&log), held, "an open keeps what is unchanged");
    assert_eq!(read_checked(&log), first);
}

/// A turn appends: a reader after it, and a descriptor opened before it, read the old
/// text followed by the new, with the size `stat` shows.
fn a_turn_appends_and_every_reader_sees_it_at_once() {
    let (_home, _pod, _m, c) = demo_child("50");
    let log = format!("{c}/log");
    let _ = ask(&c, "warm");
    let before = read_checked(&log);
    let mut held = std::fs::File::open(&log).unwrap();
    let mut through_held = Vec::new();
    held.read_to_end(&mut through_held).unwrap();
    assert_eq!(through_held, before);
    assert_eq!(ask(&c, "one more"), "echo: one more\n");
    let after = read_checked(&log);
    assert!(after.starts_with(&before), "the old text is unchanged");
    assert_eq!(&after[before.len()..], b"\necho: one more\n");
    // The descriptor opened before the turn reads on from where it stopped.
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, &after[before.len()..]);
}

/// Compaction replaces the history with a summary: `cat`, a descriptor opened before and
/// `stat` show the summary alone.
fn compaction_shows_only_the_new_text() {
    let (home, _pod, _m, c) = demo_child("50");
    let log = format!("{c}/log");
    let before = read_checked(&log);
    let held = std::fs::File::open(&log).unwrap();
    compact(&home);
    wait_for(Duration::from_secs(10), || {
        size(&log) != before.len() as u64
    });
    let after = read_checked(&log);
    assert!(
        after.starts_with(b"summary of ") && after.ends_with(b" entries\n"),
        "{:?}",
        String::from_utf8_lossy(&after[..after.len().min(80)])
    );
    let mut through_held = Vec::new();
    let mut held = held;
    std::io::Seek::rewind(&mut held).unwrap();
    held.read_to_end(&mut through_held).unwrap();
    assert_eq!(
        through_held, after,
        "a descriptor opened before reads the new text"
    );
}

/// A fake child whose `k`th connection gets a Snapshot of `texts[k]` (the last one from
/// then on); each connection stays open until the child's end or `cut` is set, which
/// closes the current one.
struct Texts {
    _fake: FakeChild,
    connections: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
}

fn texts(home: &Home, texts: &'static [&'static str]) -> Texts {
    let connections = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let (n, stop) = (connections.clone(), cut.clone());
    let fake = FakeChild::serve(home, "child1", move |mut s| {
        let k = n.fetch_add(1, Ordering::SeqCst);
        let text = texts[k.min(texts.len() - 1)];
        let _ = s.write_all(&snapshot_line(&[text]));
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut sink = [0u8; 256];
        loop {
            if stop.swap(false, Ordering::SeqCst) {
                return;
            }
            match s.read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    });
    Texts {
        _fake: fake,
        connections,
        cut,
    }
}

fn mtime_ns(path: &str) -> i128 {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// The child comes back with a history of exactly the same length (a rewind): the kernel
/// sees no new size, so only podfs can tell it the pages are stale. A reader after the
/// new Snapshot, and a descriptor opened before it, read the new text.
fn a_same_length_snapshot_never_serves_the_old_pages() {
    let home = Home::demo(&INSOMNIA, &[]);
    let child = texts(&home, &["first text", "other text"]);
    let m = Mount::quick(&home, &[]);
    let log = format!("{}/parent/child1/log", m.s());
    assert_eq!(read_checked(&log), b"first text\n");
    cached(&log);
    let held = std::fs::File::open(&log).unwrap();
    assert!(resident(&log) > 0);
    let changed = mtime_ns(&log);
    child.cut.store(true, Ordering::SeqCst);
    wait_for(Duration::from_secs(10), || {
        child.connections.load(Ordering::SeqCst) >= 2 && mtime_ns(&log) != changed
    });
    assert_eq!(read_checked(&log), b"other text\n");
    // The invalidation reaches descriptors opened before, too (it is sent once the new
    // text is in: wait for it, but the old text must never come back).
    let mut held = held;
    wait_for(Duration::from_secs(5), || {
        let mut got = Vec::new();
        std::io::Seek::rewind(&mut held).unwrap();
        held.read_to_end(&mut got).unwrap();
        got == b"other text\n"
    });
    assert_eq!(read_checked(&log), b"other text\n");
}

/// A watch ends (idle) and a new one starts with a text of the same length: the new
/// watch never keeps pages it did not see being read.
fn a_new_watch_never_keeps_pages_of_an_earlier_one() {
    let home = Home::demo(&INSOMNIA, &[]);
    let child = texts(&home, &["first text", "other text"]);
    let m = Mount::quick(&home, &["--watch-idle-secs", "1"]);
    let log = format!("{}/parent/child1/log", m.s());
    assert_eq!(read_checked(&log), b"first text\n");
    cached(&log);
    // An inotify watch holds the kernel's inode, and with it its pages, without an open
    // file (which would keep podfs's watch too).
    let pin = nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::empty()).unwrap();
    pin.add_watch(log.as_str(), nix::sys::inotify::AddWatchFlags::IN_ATTRIB)
        .unwrap();
    wait_for(Duration::from_secs(15), || m.report()["watches"] == 0);
    assert_eq!(read_checked(&log), b"other text\n");
    assert_eq!(child.connections.load(Ordering::SeqCst), 2);
}

/// `tail -f log` prints each turn as it comes, and, after a compaction, what follows it.
fn tail_f_follows_turns_and_a_compaction() {
    let (home, _pod, _m, c) = demo_child("50");
    let log = format!("{c}/log");
    let mut tail = Command::new("tail")
        .args(["-n", "1", "-f", &log])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tail.stdout.take().unwrap();
    let seen = Arc::new(parking_lot::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut out = out;
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let _ = ask(&c, "first question");
    wait_for(Duration::from_secs(10), || {
        seen.lock().contains("echo: first question\n")
    });
    compact(&home);
    wait_for(Duration::from_secs(10), || {
        without_zeros(&log).starts_with(b"summary of ")
    });
    let _ = ask(&c, "after compaction");
    wait_for(Duration::from_secs(10), || {
        seen.lock().contains("echo: after compaction\n")
    });
    let _ = tail.kill();
    let _ = tail.wait();
    reader.join().unwrap();
    assert!(!seen.lock().contains('\0'));
}

/// `mmap` of `log` reads the same bytes as `read`, before and after a turn.
fn mmap_reads_what_cat_reads() {
    let (_home, _pod, _m, c) = demo_child("50");
    let log = format!("{c}/log");
    let script = format!(
        "import mmap\nf = open('{log}', 'rb')\nm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\nprint(m[:] == open('{log}', 'rb').read(), len(m))"
    );
    let first = ok(&format!("python3 -c \"{script}\""));
    assert!(first.starts_with("True "), "{first}");
    let _ = ask(&c, "more");
    let second = ok(&format!("python3 -c \"{script}\""));
    assert!(second.starts_with("True "), "{second}");
    assert_ne!(first, second, "the second mapping is of the longer text");
}

/// `output`'s snapshot is a range of the watch's text, not a copy: what one open took is
/// what it reads, after a turn appended and after a compaction replaced the text, and a
/// second open meanwhile gets only what is new.
fn an_open_output_reads_its_snapshot_whatever_the_text_does() {
    let (home, _pod, _m, c) = demo_child("50");
    let out = format!("{c}/output");
    let log = read_checked(&format!("{c}/log"));
    ok(&format!("echo 0 > {c}/cursor"));
    let mut first = std::fs::File::open(&out).unwrap();
    let mut head = vec![0u8; 1000];
    first.read_exact(&mut head).unwrap();
    assert_eq!(head, log[..1000]);
    // A turn appends: a second open (the `cat` of `ask`) takes only the new text.
    assert_eq!(
        ask(&c, "after the first open"),
        "echo: after the first open\n"
    );
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).unwrap();
    assert_eq!(
        [head, rest].concat(),
        log,
        "the first open reads what it took"
    );
    // A compaction replaces the text while an open still holds a snapshot of it.
    let mut second = std::fs::File::open(&out).unwrap();
    ok(&format!("echo 0 > {c}/cursor"));
    let mut whole = std::fs::File::open(&out).unwrap();
    compact(&home);
    wait_for(Duration::from_secs(10), || {
        without_zeros(&format!("{c}/log")).starts_with(b"summary of ")
    });
    let mut taken = Vec::new();
    whole.read_to_end(&mut taken).unwrap();
    assert!(taken.starts_with(&log) && taken.ends_with(b"echo: after the first open\n"));
    let mut nothing = Vec::new();
    second.read_to_end(&mut nothing).unwrap();
    assert!(nothing.is_empty(), "nothing was new for that open");
}
