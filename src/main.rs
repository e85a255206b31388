use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

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
    // fuser warns when its own unmount finds the mount already gone, which is how podfs
    // ends every session; keep that out of the log.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},fuser::mnt=error", cli.log_level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &cli.log_file {
        Some(path) => {
            let file = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(file) => file,
                Err(e) => {
                    eprintln!("podfs: cannot open log file {}: {e}", path.display());
                    return ExitCode::from(1);
                }
            };
            std::env::set_var("PODFS_LOG_TO_FILE", "1");
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init()
        }
        None => {
            use std::io::IsTerminal;
            // Colour only for a terminal: logs redirected to a file stay plain text.
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init()
        }
    }
    match podfs::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podfs: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
