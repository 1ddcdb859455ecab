//! berth-shim: one process per container (pause containers included). It
//! is the container's parent, runs the OCI runtime, holds the container's
//! stdout and stderr and writes its CRI log, reaps it and keeps its exit
//! status on disk, so the container and what is known of it outlive berthd.
//!
//! ```text
//! berth-shim start --id ID --bundle DIR --socket PATH
//!                  [--runtime RUNC] [--runtime-root DIR] [--events SOCKET]
//! berth-shim --version
//! ```
//!
//! - `--id`: the container id, as runc knows it.
//! - `--bundle`: the OCI bundle (`config.json`, `rootfs/`), absolute; the
//!   shim's working directory and the home of its files (below).
//! - `--socket`: the unix socket the shim serves ttrpc on (mode 0600).
//! - `--runtime`: the OCI runtime binary, a path or a name looked up in
//!   `PATH` (default `runc`).
//! - `--runtime-root`: the runtime's `--root` state directory (default
//!   `/run/berth/runc`).
//! - `--events`: berthd's ttrpc socket for TaskExit events
//!   (`containerd.services.events.ttrpc.v1.Events/Forward`), best effort.
//!
//! `start` forks the shim proper, which detaches completely (new session,
//! forked twice so init adopts it, stdio on /dev/null, cwd the bundle),
//! becomes a child subreaper, binds the socket and writes `shim.pid`; only
//! then does `start` print the socket path and exit 0. On failure it
//! prints one line and exits 1.
//!
//! The shim serves `containerd.task.v3.Task` for that one container. Files
//! in the bundle: `shim.pid`, `shim.log` (the shim's own log), `init.pid`
//! and `runc.log` (runc's), and `exit`, the init's exit as
//! `{"status": N, "exited_at_unix_nanos": T}`, written atomically before
//! the exit is reported to anyone. SIGUSR1 reopens the container's log
//! file (log rotation); SIGTERM, SIGINT and SIGHUP are ignored, since the
//! shim must outlive whoever sends them. It exits on the `shutdown` call.
//!
//! No async runtime: a few threads and blocking calls keep its memory
//! small, as there is one shim per container on the node.

mod daemon;
mod error;
mod events;
mod io;
mod native;
mod pidfd;
mod reaper;
mod runc;
mod service;
mod shimlog;

fn main() {
    use berth_protocol::shim::{parse, Command, USAGE};
    match parse(std::env::args_os().skip(1)) {
        Ok(Command::Start(a)) => daemon::start(a),
        Ok(Command::Version) => println!("{}", service::VERSION),
        Ok(Command::Help) => println!("{USAGE}"),
        Err(e) => {
            eprintln!("berth-shim: {e}");
            std::process::exit(2);
        }
    }
}
