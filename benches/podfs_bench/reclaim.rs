//! `rm -r` of children, live and offline.

use std::path::Path;
use std::time::{Duration, Instant};

use podfs::generation::INSOMNIA_5472 as GEN;
use podfs::store::alloc::AllocTable;

use crate::harness::*;

/// Durable reclaim, parent not live: rm -r of 1,000 children, one at a time.
pub fn run(quick: bool, rows: &mut Vec<Row>) {
    let n = if quick { 100 } else { 1000 };
    let rshape = vec![("r".to_string(), n)];
    let rhome = make_home(&rshape);
    let rtmp = Tmpfs::new();
    make_tree(rtmp.0.path(), &rshape);
    let (rfloor, _) = Server::floor(&rshape);
    let (rpod, _) = Server::podfs(rhome.path());
    let remove_each = |root: &Path| -> Duration {
        let mut times: Vec<Duration> = (0..n)
            .map(|j| {
                let t = Instant::now();
                std::fs::remove_dir_all(root.join("r").join(child_name(j))).unwrap();
                t.elapsed()
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let (t_tmp, t_floor, t_pod) = (
        remove_each(rtmp.0.path()),
        remove_each(rfloor.path()),
        remove_each(rpod.path()),
    );
    let left = std::fs::read_to_string(rhome.path().join("pods/r/metadata.json")).unwrap();
    assert!(
        !left.contains("\"spawned_children\""),
        "every child must have been reclaimed"
    );
    // ... and its scope given back: only the parent's allocation, with no deny layer left.
    let table = AllocTable::parse(
        &std::fs::read(rhome.path().join("run/pods.json")).unwrap(),
        &GEN,
    )
    .unwrap();
    assert_eq!(table.names(), ["r"]);
    assert_eq!(table.deny("r"), Some(Vec::new()));
    rows.push(Row::single(
        &format!("rm -r child, parent not live (median of {n})"),
        Some(t_tmp),
        t_floor,
        t_pod,
        Some(("≤10 ms", t_pod <= Duration::from_millis(10))),
    ));
    drop((rfloor, rpod, rtmp));
}
