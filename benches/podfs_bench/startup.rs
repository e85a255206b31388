//! From `podfs mount` to the first answer, by home size.

use std::time::{Duration, Instant};

use crate::harness::*;

/// Start-up: from starting the server to the first successful ls of 1,000 unreachable
/// children.
pub fn run(quick: bool, rows: &mut Vec<Row>) {
    let mshape = vec![("m".to_string(), 1000)];
    let mhome = make_home(&mshape);
    let first_ls = |start: &dyn Fn() -> (Server, Duration)| -> Duration {
        let t = Instant::now();
        let (server, _) = start();
        while std::fs::read_dir(server.path().join("m"))
            .map(|d| d.count())
            .unwrap_or(0)
            != 1000
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        t.elapsed()
    };
    let samples = if quick { 2 } else { 5 };
    let median = |f: &dyn Fn() -> Duration| {
        let mut v: Vec<Duration> = (0..samples).map(|_| f()).collect();
        v.sort();
        v[v.len() / 2]
    };
    let t_floor = median(&|| first_ls(&|| Server::floor(&mshape)));
    let t_pod = median(&|| first_ls(&|| Server::podfs(mhome.path())));
    rows.push(Row::single(
        "start to first ls, 1,000 unreachable children",
        None,
        t_floor,
        t_pod,
        Some(("≤1 s", t_pod <= Duration::from_secs(1))),
    ));
}
