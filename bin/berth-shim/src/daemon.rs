//! `berth-shim start`: detaching the shim from whoever started it, then
//! serving.
//!
//! The first process forks and waits on a pipe; the child starts a new
//! session and forks again, and the grandchild, whose parent exits at once,
//! is adopted by init (or the nearest subreaper). Nothing of berthd is left
//! in it: no controlling terminal, no shared session or process group, no
//! inherited stdio. Once it serves, the grandchild writes `ok` to the pipe
//! and the first process prints the socket path; if set-up fails it writes
//! the reason, and an empty pipe means it died.

use crate::error::{Doing, Result, ShimError};
use crate::reaper::Reaper;
use crate::service::{Service, Shared};
use crate::shimlog;
use berth_protocol::shim::attach_socket;
use berth_protocol::shim::{ShimArgs as Args, SHIM_LOG_FILE, SHIM_PID_FILE};
use containerd_shim_protos::{create_task, ttrpc};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, ForkResult};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const READY: &str = "ok\n";

/// Signals taken by the signal loop instead of their default actions.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

fn fail(msg: &str) -> ! {
    eprintln!("berth-shim: {msg}");
    std::process::exit(1);
}

pub fn start(mut args: Args) -> ! {
    // What can be checked before forking fails here, on the caller's stderr.
    if !args.bundle.is_dir() {
        fail(&format!(
            "container {}: the bundle {} is not a directory",
            args.id,
            args.bundle.display()
        ));
    }
    args.runtime = match find_program(&args.runtime) {
        Some(p) => p,
        None => fail(&format!(
            "container {}: the runtime {} is not an executable file (PATH searched)",
            args.id,
            args.runtime.display()
        )),
    };
    let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(&format!("cannot make a pipe: {e}")),
    };
    // SAFETY: no other thread exists yet, so the child's copy of the
    // process is consistent (no lock can be held by a vanished thread).
    match unsafe { fork() } {
        Err(e) => fail(&format!("cannot fork: {e}")),
        Ok(ForkResult::Parent { child }) => {
            drop(write);
            let mut msg = String::new();
            let _ = File::from(read).read_to_string(&mut msg);
            // The middle process exits at once; do not leave it a zombie.
            let _ = nix::sys::wait::waitpid(child, None);
            if msg == READY {
                println!("{}", args.socket.display());
                std::process::exit(0);
            }
            let why = if msg.trim().is_empty() {
                format!(
                    "the shim of container {} died while starting; see {}",
                    args.id,
                    args.bundle.join(SHIM_LOG_FILE).display()
                )
            } else {
                msg.trim().to_string()
            };
            fail(&why);
        }
        Ok(ForkResult::Child) => {
            drop(read);
            if let Err(e) = nix::unistd::setsid() {
                let _ = File::from(write).write_all(format!("setsid: {e}\n").as_bytes());
                std::process::exit(1);
            }
            // SAFETY: still a single thread, as above.
            match unsafe { fork() } {
                Ok(ForkResult::Parent { .. }) => std::process::exit(0),
                Ok(ForkResult::Child) => serve(args, write),
                Err(e) => {
                    let _ = File::from(write).write_all(format!("cannot fork: {e}\n").as_bytes());
                    std::process::exit(1);
                }
            }
        }
    }
}

/// `program` itself if it names a path, else the first executable of that
/// name on `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return executable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// The detached shim: sets up, reports readiness, then runs the signal loop.
fn serve(args: Args, ready: OwnedFd) -> ! {
    let mut ready = File::from(ready);
    match set_up(&args) {
        Ok((server, shared, reaper)) => {
            let _ = ready.write_all(READY.as_bytes());
            drop(ready);
            log::info!(
                "serving container {} on {} ({})",
                args.id,
                args.socket.display(),
                crate::service::VERSION
            );
            signal_loop(server, &shared, &reaper)
        }
        Err(e) => {
            log::error!("start-up failed: {e}");
            let _ = ready.write_all(format!("container {}: {e}\n", args.id).as_bytes());
            std::process::exit(1);
        }
    }
}

fn set_up(args: &Args) -> Result<(ttrpc::Server, Arc<Shared>, Arc<Reaper>)> {
    std::env::set_current_dir(&args.bundle)
        .doing(|| format!("cannot enter the bundle {}", args.bundle.display()))?;
    let log_path = args.bundle.join(SHIM_LOG_FILE);
    shimlog::init(&log_path).doing(|| format!("cannot open {}", log_path.display()))?;
    detach_stdio()?;
    nix::sys::prctl::set_child_subreaper(true)
        .doing(|| "cannot become a child subreaper".to_string())?;
    // Blocked here, before any thread exists, so every thread inherits the
    // mask and only the signal loop receives them. Children get a clean mask
    // from std's spawn.
    handled_signals()
        .thread_block()
        .doing(|| "cannot block signals".to_string())?;
    // SAFETY: sets SIGCHLD's action to the default; no handler is involved.
    // An ignored SIGCHLD inherited from the caller would make the kernel
    // reap children itself, and their exit statuses would be lost.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGCHLD, nix::sys::signal::SigHandler::SigDfl);
    }
    // SAFETY: mallopt only tunes glibc's allocator. One arena instead of one
    // per thread keeps the resident memory of an idle shim down.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }

    let reaper = Arc::new(Reaper::default());
    let shared = Shared::new(args.clone(), reaper.clone());
    let listener = bind(&args.socket)?;
    let mut server = ttrpc::Server::new()
        .add_listener(listener.into_raw_fd())?
        .register_service(create_task(Arc::new(Service(shared.clone()))))
        // Two idle workers per connection, a third while one blocks in
        // `wait`: enough for berthd, which calls one thing at a time per
        // container, and each thread costs memory.
        .set_thread_count_min(1)
        .set_thread_count_default(2)
        .set_thread_count_max(3);
    server.start()?;
    let attach = bind(&attach_socket(&args.socket))?;
    shared.serve_attach(attach)?;
    write_atomically(
        &args.bundle.join(SHIM_PID_FILE),
        format!("{}\n", std::process::id()).as_bytes(),
    )
    .doing(|| "cannot write shim.pid".to_string())?;
    Ok((server, shared, reaper))
}

/// Points stdin, stdout and stderr at /dev/null: the caller's pipes must
/// close when `start` exits, and nothing may write to a terminal.
fn detach_stdio() -> Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .doing(|| "cannot open /dev/null".to_string())?;
    for fd in 0..3 {
        nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd)
            .doing(|| format!("cannot redirect fd {fd} to /dev/null"))?;
    }
    Ok(())
}

/// Binds the socket, replacing a stale one (nobody answering on it) but not
/// a live one.
fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ShimError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path)
            .doing(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).doing(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .doing(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reaps on SIGCHLD, reopens logs on SIGUSR1, ignores the rest. Never
/// returns: the shim ends by `shutdown`.
fn signal_loop(server: ttrpc::Server, shared: &Arc<Shared>, reaper: &Reaper) -> ! {
    // The server runs on its own threads; holding it here keeps it alive.
    let _server = server;
    let set = handled_signals();
    // Children that exited before the loop started left a pending SIGCHLD,
    // so nothing is missed.
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reaper.reap(),
            Ok(Signal::SIGUSR1) => shared.reopen_logs(),
            Ok(other) => log::info!("ignoring {other}: the shim stays with its container"),
            Err(e) => log::warn!("sigwait: {e}"),
        }
    }
}
