use std::process::ExitCode;

use clap::Parser;

/// Watches hold children's text for a long time, in blocks of up to tens of MiB, and free
/// it when a watch ends. glibc's malloc raises its mmap threshold after the first large
/// free, after which such blocks come from the heap and stay in the process when freed.
/// A fixed threshold keeps every block of 256 KiB or more in its own mapping, returned to
/// the system the moment it is freed, so the resident size follows the memory budget.
fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Every watched child holds a descriptor, and a thousand children are a normal tree: the
/// soft limit (often 1024) would run out long before the hard one. podfs raises it to the
/// hard limit, as it may without privilege.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn main() -> ExitCode {
    return_large_blocks_to_the_system();
    raise_descriptor_limit();
    let args = podfs::cli::from_mount_helper_convention(std::env::args_os().collect());
    let cli = match podfs::cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // --help and --version succeed; a bad command line is the user's to fix (1).
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let (level, file) = cli.log_settings();
    if let Err(e) = podfs::logs::init(&level, file.as_deref()) {
        eprintln!("podfs: {e}");
        return ExitCode::from(1);
    }
    match podfs::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podfs: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
