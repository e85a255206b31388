//! What podfs holds for a large home, in resident memory.

use crate::harness::*;

/// Memory: 100,000 children across 100 parents, every child directory and one file
/// looked up.
pub fn run(quick: bool) -> String {
    let per = if quick { 100 } else { 1000 };
    let bshape: Vec<(String, usize)> = (0..100).map(|i| (format!("b{i:03}"), per)).collect();
    let bhome = make_home(&bshape);
    let rss = |server: &Server| {
        for (parent, count) in &bshape {
            assert_eq!(ls_l(&server.path().join(parent)), *count);
            for j in (0..*count).step_by(10) {
                read_file(
                    &server
                        .path()
                        .join(parent)
                        .join(child_name(j))
                        .join("cursor"),
                );
            }
        }
        server.rss_kib()
    };
    let (bfloor, _) = Server::floor(&bshape);
    let (floor_rss, floor_hwm) = rss(&bfloor);
    drop(bfloor);
    let (bpod, _) = Server::podfs(bhome.path());
    let (pod_rss, pod_hwm) = rss(&bpod);
    drop(bpod);

    format!(
        "| resident memory, {} children in 100 parents | floor {} MiB (peak {}) | podfs {} MiB (peak {}) | {:.1}× floor | ≤150 MB: {} |",
        100 * per,
        floor_rss / 1024,
        floor_hwm / 1024,
        pod_rss / 1024,
        pod_hwm / 1024,
        pod_rss as f64 / floor_rss.max(1) as f64,
        if pod_hwm * 1024 <= 150_000_000 { "MET" } else { "MISSED" }
    )
}
