//! Control files, listings and `ls -l`: podfs against both floors.

use std::io::Write;
use std::path::Path;

use crate::harness::*;

/// Control files, listings and `ls -l` against both floors.
pub fn run(quick: bool, rounds: usize, iters: usize, rows: &mut Vec<Row>) {
    let _ = quick;
    let shape: Vec<(String, usize)> = vec![
        ("p10".into(), 10),
        ("p1000".into(), 1000),
        ("p10000".into(), 10000),
    ];
    let home = make_home(&shape);
    let tmp = Tmpfs::new();
    make_tree(tmp.0.path(), &shape);
    let (floor, _) = Server::floor(&shape);
    let (pod, _) = Server::podfs(home.path());
    let roots: [&Path; 3] = [tmp.0.path(), floor.path(), pod.path()];

    let mut measure = |op: &str, target: Option<(&str, f64)>, f: &dyn Fn(&Path, usize)| {
        let t = per_op(&roots, rounds, iters, f);
        rows.push(Row::timed(op, &t, target));
    };
    for file in ["cursor", "socket", "scope"] {
        measure(
            &format!("open+read+close {file}"),
            Some(("≤1.25× floor", 1.25)),
            &|root, i| read_file(&root.join("p10000").join(child_name(i % 10000)).join(file)),
        );
    }
    measure("stat cursor", None, &|root, i| {
        std::fs::metadata(
            root.join("p10000")
                .join(child_name(i % 10000))
                .join("cursor"),
        )
        .unwrap();
    });
    measure("echo N > cursor", None, &|root, i| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(root.join("p1000").join(child_name(i % 1000)).join("cursor"))
            .unwrap();
        f.write_all(format!("{}\n", i % 7).as_bytes()).unwrap();
    });
    for (parent, n, iters) in [
        ("p10", 10, iters / 10),
        ("p1000", 1000, 20),
        ("p10000", 10000, 3),
    ] {
        let t = per_op(&roots, rounds, iters.max(2), |root, _| {
            assert_eq!(std::fs::read_dir(root.join(parent)).unwrap().count(), n)
        });
        rows.push(Row::timed(&format!("readdir, {n} children"), &t, None));
    }
    let t = per_op(&roots, rounds, 2, |root, _| {
        assert_eq!(ls_l(&root.join("p10000")), 10000)
    });
    rows.push(Row::timed(
        "ls -l (readdir + stat each), 10,000 children",
        &t,
        Some(("≤1.5× floor", 1.5)),
    ));
    drop((floor, pod));
}
