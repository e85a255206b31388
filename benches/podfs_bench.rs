//! podfs against its floors: a minimal static FUSE filesystem of the same shape (same fuser,
//! same mount options, direct I/O, same TTLs, fixed content) and the same tree on tmpfs.
//! Every figure is printed with its ratio to the floors measured in the same run.
//!
//! One module per section around a shared harness ([`harness`], with the FUSE floor in
//! [`floor`]). Run: `cargo bench --bench podfs_bench` (as root, with /dev/fuse). `PODFS_BENCH_QUICK=1`
//! shrinks the iteration counts for a smoke run.

use std::path::Path;

use harness::print_rows;

#[path = "podfs_bench/files.rs"]
mod files;
#[path = "podfs_bench/floor.rs"]
mod floor;
#[path = "podfs_bench/harness.rs"]
mod harness;
#[path = "podfs_bench/hostile.rs"]
mod hostile;
#[path = "podfs_bench/live.rs"]
mod live;
#[path = "podfs_bench/memory.rs"]
mod memory;
#[path = "podfs_bench/reclaim.rs"]
mod reclaim;
#[path = "podfs_bench/startup.rs"]
mod startup;
#[path = "podfs_bench/text.rs"]
mod text;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("floor") {
        // Called as `floor <shape> <mnt>` (the mount point comes last).
        floor::serve_floor(Path::new(&args[2]), &args[1]);
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("podfs_bench: /dev/fuse is missing; nothing to measure");
        std::process::exit(1);
    }
    let quick = std::env::var_os("PODFS_BENCH_QUICK").is_some();
    let (rounds, iters) = if quick { (3, 500) } else { (11, 3000) };
    let mut rows = Vec::new();
    // PODFS_BENCH_ONLY=files|reclaim|startup|text|live|memory|hostile runs one section.
    let only = std::env::var("PODFS_BENCH_ONLY").ok();
    let want = |section: &str| only.as_deref().is_none_or(|o| o == section);
    if want("files") {
        files::run(quick, rounds, iters, &mut rows);
    }
    if want("reclaim") {
        reclaim::run(quick, &mut rows);
    }
    if want("startup") {
        startup::run(quick, &mut rows);
    }
    if want("text") {
        text::run(quick, &mut rows);
    }
    let live_figures = if want("live") {
        live::run(quick, &mut rows).lines
    } else {
        Vec::new()
    };
    let memory = if want("memory") {
        Some(memory::run(quick))
    } else {
        None
    };
    let hostile_figures = if want("hostile") {
        hostile::run(quick)
    } else {
        Vec::new()
    };

    println!();
    println!(
        "podfs benchmark ({} mode)",
        if quick { "quick" } else { "full" }
    );
    print_rows(&rows);
    println!();
    for line in &live_figures {
        println!("{line}");
    }
    if let Some(line) = memory {
        println!();
        println!("{line}");
    }
    if !hostile_figures.is_empty() {
        println!();
        for line in &hostile_figures {
            println!("{line}");
        }
    }
}
