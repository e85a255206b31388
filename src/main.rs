use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = podfs::cli::from_mount_helper_convention(std::env::args_os().collect());
    let cli = podfs::cli::Cli::parse_from(args);
    // fuser warns when its own unmount finds the mount already gone, which is how podfs
    // ends every session (it unmounts first, lazily if busy); keep that out of the log.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},fuser::mnt=error", cli.log_level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let log_file = cli.log_file.as_ref().map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| {
                eprintln!("podfs: cannot open log file {}: {e}", path.display());
                std::process::exit(2)
            })
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log_file {
        Some(file) => {
            std::env::set_var("PODFS_LOG_TO_FILE", "1");
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init()
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    match podfs::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podfs: {e}");
            ExitCode::from(if matches!(e, podfs::error::Error::Usage(_)) {
                2
            } else {
                1
            })
        }
    }
}
