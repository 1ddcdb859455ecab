//! berthd: berth's daemon. Reads config.toml, starts berth's actors and
//! serves the CRI (kubelet, crictl) and berth's admin API on unix sockets.

// tonic's service traits return `Result<_, tonic::Status>`; the size of
// Status is theirs to choose.
#![allow(clippy::result_large_err)]

mod admin;
mod chaos;
mod cri;
mod daemon;
mod door;
mod events;
mod fsck;
mod metrics;
mod recover;
mod stream;

use berthd::{config, convert, rates};
use clap::Parser;
use config::Config;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "berthd",
    version,
    about = "berth: a Kubernetes container runtime (CRI)"
)]
struct Args {
    /// Configuration file; without it the built-in defaults are used (they
    /// equal the repository's config.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// A bare level applies to berth's own crates (libraries stay at warn); a
/// filter with directives is taken as written.
fn log_filter(level: &str) -> String {
    if level.contains(['=', ',']) {
        level.to_string()
    } else {
        format!("warn,berthd={level},berth_actors={level},berth_stream={level}")
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(log_filter(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Marks every descriptor berthd was started with, beyond stdio, as
/// close-on-exec. berthd opens its own that way; these came from whoever
/// started it, and would otherwise pass to every shim, CNI plugin and
/// runtime it runs, some of which outlive it.
fn close_inherited_on_exec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only change a descriptor flag; a number
        // that is not (or no longer) open fails with EBADF, which is fine.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn main() {
    // Before any thread exists to spawn a child.
    close_inherited_on_exec();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => fail(&e),
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berthd")
        .build()
    {
        Ok(r) => r,
        Err(e) => fail(&format!("tokio runtime: {e}")),
    };
    if let Err(e) = runtime.block_on(daemon::run(config)) {
        fail(&format!("{e:#}"));
    }
}

/// Start-up errors are one line on stderr and a non-zero exit.
fn fail(message: &str) -> ! {
    eprintln!("berthd: {}", message.replace('\n', " "));
    std::process::exit(1);
}
