//! Whether a shim lives, and ending what a dead one leaves (its
//! container, with the runtime; its cgroup): used by recovery, the watcher
//! and fsck.

use super::actor::{Runtime, Shims};
use super::launch::EXIT_FILE;
use super::store::ShimRecord;
use crate::Result;
use actix::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every journalled shim and whether its process is there (admin API).
#[derive(Debug, Clone, Default)]
pub struct ListShims;

impl Message for ListShims {
    type Result = Result<Vec<ShimHealth>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimHealth {
    pub container_id: String,
    pub pid: u32,
    pub address: String,
    pub bundle: String,
    pub runtime_handler: String,
    pub alive: bool,
    /// The task's exit is on record (the shim's or recovery's).
    pub exited: bool,
}

/// Whether `pid` is the shim of container `id`: a living process (not a
/// zombie) whose command line names the container. After a reboot a
/// journalled pid may belong to anything.
pub fn shim_alive(pid: u32, id: &str) -> bool {
    if pid == 0 {
        return false;
    }
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'));
    running
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            c.split(|b| *b == 0)
                .any(|arg| arg == id.as_bytes() || arg.ends_with(format!("/{id}").as_bytes()))
        })
}

/// SIGKILL to `pid`; one that is gone already is fine.
/// A pidfd of the shim `pid` of container `id`, if that process is alive
/// and is that shim: opened first and checked after, so that it cannot
/// name a process that took over a recycled pid.
pub(super) fn shim_pidfd(pid: u32, id: &str) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    if pid == 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: a fresh fd this function alone owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    shim_alive(pid, id).then_some(pidfd)
}

/// Which of `pidfds` name processes that have ended (a pidfd turns
/// readable then): one poll for them all.
pub(super) fn ended(pidfds: &[&std::os::fd::OwnedFd]) -> Vec<bool> {
    use std::os::fd::AsRawFd;
    let mut polled: Vec<libc::pollfd> = pidfds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll on fds this caller holds open, with no wait.
    let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 0) };
    if n < 0 {
        return vec![false; pidfds.len()];
    }
    polled
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
        .collect()
}

/// Ends the shim `pid` of container `id`, told to shut down, and waits
/// (at most `limit`) until it is gone, so that nothing of it outlives the
/// removal that asked. The signal goes through a pidfd opened while the
/// process was checked to be the shim, so a recycled pid is never hit;
/// the pidfd turns readable when the process ends.
pub(super) async fn end_shim(pid: u32, id: &str, limit: Duration) {
    let Some(pidfd) = shim_pidfd(pid, id) else {
        return; // Gone, or the pid is another process's now.
    };
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal on an fd we own, no siginfo.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent < 0 {
        return;
    }
    // SAFETY: the AsyncFd owns the pidfd, which nothing else closes or
    // replaces while it is registered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    };
    let ended = match registered {
        Ok(fd) => tokio::time::timeout(limit, fd.readable()).await.is_ok(),
        Err(_) => false,
    };
    if !ended {
        tracing::warn!(shim = pid, container = %id, "shim still there {limit:?} after SIGKILL");
    }
}

pub(super) fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Ends container `id` in the runtime's state, whatever state it is in.
/// A container the runtime does not know is fine.
pub fn force_delete(runtime: &Runtime, id: &str) {
    // A v2 shim keeps the runtime's state per namespace under the root.
    let root = match runtime.v2_shim {
        Some(_) => runtime.root.join(super::v2::NAMESPACE),
        None => runtime.root.clone(),
    };
    let out = std::process::Command::new(&runtime.binary)
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", id])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if !err.contains("does not exist") && !err.contains("not exist") {
                tracing::warn!(container = %id, error = %err.trim(), "runtime delete --force failed");
            }
        }
        Err(e) => {
            tracing::warn!(container = %id, error = %e, runtime = %runtime.binary.display(), "cannot run the runtime")
        }
    }
}

/// Removes the cgroup at `cgroups_path` (as in the OCI spec) in every
/// hierarchy, after killing what is still in it: a runtime killed in the
/// middle of `create` can leave the cgroup, and a waiting init process in
/// it, without recording either in its state.
pub fn remove_cgroup(cgroups_path: &str) {
    let rel = cgroups_path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return;
    }
    let root = Path::new(crate::host::CGROUP_ROOT);
    let mut dirs = vec![root.join(rel)];
    for h in std::fs::read_dir(root).into_iter().flatten().flatten() {
        dirs.push(h.path().join(rel));
    }
    let dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
    for d in &dirs {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            sigkill(pid);
        }
    }
    for _ in 0..50 {
        let left: Vec<&PathBuf> = dirs
            .iter()
            .filter(|d| d.is_dir() && std::fs::remove_dir(d).is_err())
            .collect();
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(cgroup = %cgroups_path, "cannot remove a cgroup left by a failed create");
}

/// Every berth-shim process whose bundle is under `dir`: (pid, container).
pub fn shim_processes(dir: &Path) -> Vec<(u32, String)> {
    let prefix = format!("{}/", dir.display());
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("berth-shim")) {
            continue;
        }
        let bundle = args
            .windows(2)
            .find(|w| w[0] == "--bundle")
            .map(|w| w[1].clone());
        if let Some(id) = bundle.and_then(|b| b.strip_prefix(&prefix).map(str::to_string)) {
            if shim_alive(pid, &id) {
                found.push((pid, id));
            }
        }
    }
    found
}

impl Shims {
    pub(super) fn runtime_of(&self, record: &ShimRecord) -> Option<Runtime> {
        self.config.runtimes.get(&record.runtime_handler).cloned()
    }

    pub(super) fn list_shims(&self) -> Vec<ShimHealth> {
        self.records
            .iter()
            .map(|r| ShimHealth {
                container_id: r.container_id.clone(),
                pid: r.pid,
                address: r.address.clone(),
                bundle: r.bundle.clone(),
                runtime_handler: r.runtime_handler.clone(),
                alive: shim_alive(r.pid, r.shim_id()),
                exited: Path::new(&r.bundle).join(EXIT_FILE).exists(),
            })
            .collect()
    }
}
